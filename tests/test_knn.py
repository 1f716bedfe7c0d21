"""kNN graphs at scale (docs/tuss.md): faiss exact/IVF/HNSW and the bf16/fp16 search with fp32 re-ranking,
each against a plain numpy brute-force search; recall@k; the LP/GLCC output of the faiss backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.errors import InputError
from ovss.methods.tuss.fit import FitSettings, fit_settings, glcc_for
from ovss.ops import labelprop
from ovss.ops.labelprop import (
    KNNIndexConfig,
    LabelPropagator,
    LPConfig,
    build_knn_index,
    knn_recall,
    knn_search,
    recall_at_k,
)

K = 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clustered(n: int, d: int = 64, clusters: int = 20, noise: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Unit vectors around random cluster centres (cos to the own centre ~1/√(1+noise²))."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, d, generator=gen), dim=1)
    labels = torch.randint(0, clusters, (n,), generator=gen)
    return F.normalize(centres[labels] + noise * torch.randn(n, d, generator=gen) / math.sqrt(d), dim=1)


def brute(x: np.ndarray, q_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy: all similarities in float64, own index removed, stable sort."""
    sims = x[q_ids].astype(np.float64) @ x.astype(np.float64).T
    sims[np.arange(len(q_ids)), q_ids] = -np.inf
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, 1), idx


def brute_recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def data():
    x = clustered(3000)
    ref_s, ref_i = brute(x.numpy(), np.arange(3000), K)
    return x, ref_s, ref_i


def _check_contract(sims: torch.Tensor, idx: torch.Tensor, x: torch.Tensor) -> None:
    n = x.shape[0]
    assert sims.shape == idx.shape == (n, K)
    assert idx.dtype == torch.long and int(idx.min()) >= 0 and int(idx.max()) < n
    assert not bool((idx == torch.arange(n)[:, None]).any()), "a row lists itself"
    assert bool((sims[:, :-1] >= sims[:, 1:]).all()), "rows are not sorted by decreasing similarity"
    # the similarities are the true fp32 inner products of the listed pairs
    torch.testing.assert_close(sims, (x[:, None, :] * x[idx]).sum(-1), atol=1e-5, rtol=0)


def test_auto_exact_is_the_torch_search(data, monkeypatch):
    x, _, _ = data
    monkeypatch.setattr(labelprop, "_faiss", lambda: pytest.fail("auto must not use faiss for the exact search"))
    s_auto, i_auto = knn_search(x, x, K, exclude_self=True)
    s_torch, i_torch = knn_search(x, x, K, exclude_self=True, backend="torch")
    assert torch.equal(i_auto, i_torch) and torch.equal(s_auto, s_torch)


def test_faiss_exact_equals_brute_force(data):
    pytest.importorskip("faiss")
    x, ref_s, ref_i = data
    sims, idx = knn_search(x, x, K, exclude_self=True, backend="faiss", index=KNNIndexConfig("exact"))
    _check_contract(sims, idx, x)
    assert np.array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(sims.numpy(), ref_s, atol=1e-5)


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_low_precision_rerank_vs_brute_force(data, kind):
    x, _, ref_i = data
    sims, idx = knn_search(x, x, K, exclude_self=True, index=KNNIndexConfig(kind, rerank=4))
    _check_contract(sims, idx, x)
    good = brute_recall(idx.numpy(), ref_i)
    assert good >= 0.99, f"{kind} + rerank 4: recall {good:.3f}"
    # no re-ranking room (k' = k): the low-precision order alone, which loses neighbours
    _, idx1 = knn_search(x, x, K, exclude_self=True, index=KNNIndexConfig(kind, rerank=1))
    bad = brute_recall(idx1.numpy(), ref_i)
    assert bad < good, f"{kind}: rerank 1 recall {bad:.3f} is not below rerank 4's {good:.3f}"


def test_low_precision_with_every_key_a_candidate_is_exact():
    x = clustered(40, d=16)
    ref_s, ref_i = brute(x.numpy(), np.arange(40), K)
    sims, idx = knn_search(x, x, K, exclude_self=True, index=KNNIndexConfig("bf16", rerank=100))
    assert np.array_equal(idx.numpy(), ref_i)  # every key re-ranked in fp32: exact, own index excluded
    np.testing.assert_allclose(sims.numpy(), ref_s, atol=1e-5)


def test_ivf_recall_and_a_bad_setting(data):
    pytest.importorskip("faiss")
    x, _, ref_i = data
    sims, idx = knn_search(x, x, K, exclude_self=True, index=KNNIndexConfig("ivf", nlist=16, nprobe=8))
    _check_contract(sims, idx, x)
    good = brute_recall(idx.numpy(), ref_i)
    assert good >= 0.95, f"IVF nlist 16, nprobe 8: recall {good:.3f}"
    _, idx_bad = knn_search(x, x, K, exclude_self=True, index=KNNIndexConfig("ivf", nlist=64, nprobe=1))
    bad = brute_recall(idx_bad.numpy(), ref_i)
    assert bad < 0.7 and bad < good - 0.2, f"nprobe 1 of 64 lists: recall {bad:.3f} (good setting {good:.3f})"


def test_hnsw_recall(data):
    pytest.importorskip("faiss")
    x, _, ref_i = data
    sims, idx = knn_search(x, x, K, exclude_self=True, index=KNNIndexConfig("hnsw", hnsw_m=16, ef_search=64))
    _check_contract(sims, idx, x)
    assert brute_recall(idx.numpy(), ref_i) >= 0.95


def test_ivf_rows_with_too_few_candidates_are_searched_exactly():
    pytest.importorskip("faiss")
    x = clustered(300, d=16, clusters=30, noise=0.3)
    _, ref_i = brute(x.numpy(), np.arange(300), 50)
    # 30 tight lists of ~10 keys and one probed: no row can find 50 neighbours in its list
    sims, idx = knn_search(x, x, 50, exclude_self=True, index=KNNIndexConfig("ivf", nlist=7, nprobe=1))
    assert int(idx.min()) >= 0 and not bool((idx == torch.arange(300)[:, None]).any())
    torch.testing.assert_close(sims, (x[:, None, :] * x[idx]).sum(-1), atol=1e-5, rtol=0)
    assert brute_recall(idx.numpy(), ref_i) > 0.3


def test_queries_that_are_not_the_keys(data):
    x, _, _ = data
    q = clustered(50, seed=5)
    truth = np.argsort(-(q.double() @ x.double().T).numpy(), axis=1, kind="stable")[:, :K]
    kinds = ["bf16"] + (["exact", "hnsw"] if labelprop._faiss() is not None else [])
    for kind in kinds:
        _, idx = knn_search(q, x, K, index=KNNIndexConfig(kind))
        assert brute_recall(idx.numpy(), truth) >= 0.97, kind


def test_recall_at_k_by_hand():
    truth = torch.tensor([[0, 1, 2], [3, 4, 5]])
    found = torch.tensor([[2, 9, 0], [5, 4, 3]])
    assert recall_at_k(found, truth) == pytest.approx(5 / 6)
    with pytest.raises(InputError):
        recall_at_k(found[:1], truth)


def test_knn_recall_against_brute_force(data):
    x, _, ref_i = data
    assert knn_recall(x, K, KNNIndexConfig("exact"), queries=300, backend="torch") == 1.0
    index = build_knn_index(x, index=KNNIndexConfig("bf16", rerank=1))
    r = knn_recall(x, K, index, queries=3000)  # every key a query: the brute-force recall of the same search
    _, idx = index.search(x, K, torch.arange(3000))
    assert r == pytest.approx(brute_recall(idx.numpy(), ref_i), abs=1e-6)
    assert r < 1.0  # the estimate can tell a lossy index apart
    sample = knn_recall(x, K, index, queries=500, seed=3)
    assert abs(sample - r) < 0.05


def test_index_settings_are_checked(monkeypatch):
    x = clustered(100, d=8)
    with pytest.raises(InputError, match="unknown kNN index"):
        knn_search(x, x, 5, index=KNNIndexConfig("annoy"))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="nprobe"):
        knn_search(x, x, 5, index=KNNIndexConfig("ivf", nprobe=0))
    with pytest.raises(InputError, match="needs faiss"):
        knn_search(x, x, 5, backend="torch", index=KNNIndexConfig("hnsw"))
    with pytest.raises(InputError, match="torch only"):
        knn_search(x, x, 5, backend="faiss", index=KNNIndexConfig("bf16"))
    monkeypatch.setattr(labelprop, "_faiss", lambda: None)
    with pytest.raises(InputError, match="pip install faiss-cpu"):
        knn_search(x, x, 5, index=KNNIndexConfig("ivf"))
    assert knn_search(x, x, 5, index=KNNIndexConfig("exact"))[1].shape == (100, 5)  # torch without faiss


def test_fit_settings_carry_the_index():
    fs = fit_settings({"knn_index": "ivf", "knn_settings": {"nprobe": 32}})
    glcc = glcc_for("wsss", fs)
    assert all(r.lp.knn_index == KNNIndexConfig("ivf", nprobe=32) for r in glcc.config.rounds)
    assert glcc_for("sss", FitSettings()).config.rounds[0].lp.knn_index.kind == "exact"  # the default stays exact
    with pytest.raises(InputError, match="no field 'nprob'"):
        fit_settings({"knn_index": "ivf", "knn_settings": {"nprob": 32}})
    with pytest.raises(InputError, match="unknown kNN index"):
        fit_settings({"knn_index": "lsh"})


def test_lp_and_glcc_with_faiss_exact_equal_torch():
    pytest.importorskip("faiss")
    from ovss.methods.tuss.glcc import GLCC, ProbeConfig, RoundConfig, glcc_config

    x = clustered(600, d=32, clusters=6, seed=1)
    gen = torch.Generator().manual_seed(2)
    seeds = torch.zeros(600, 6)
    lab = torch.randperm(600, generator=gen)[:60]
    seeds[lab, torch.randint(0, 6, (60,), generator=gen)] = 1.0
    res = {}
    for backend in ("torch", "faiss"):
        cfg = LPConfig(k=12, knn_backend=backend)  # type: ignore[arg-type]
        lp = LabelPropagator(cfg)(x, seeds)
        glcc = glcc_config("sss", probe=ProbeConfig(base_iters=200, base_warmup_iters=20), rounds=(RoundConfig(cfg),))
        fitted = GLCC(glcc).fit(x, None, seeds)
        res[backend] = (lp, fitted.predict(clustered(50, d=32, clusters=6, seed=9)))
    (lp_t, pred_t), (lp_f, pred_f) = res["torch"], res["faiss"]
    torch.testing.assert_close(lp_f.degree, lp_t.degree, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp_f.scores, lp_t.scores, atol=1e-6, rtol=0)
    assert torch.equal(lp_f.scores.argmax(1), lp_t.scores.argmax(1))
    torch.testing.assert_close(pred_f, pred_t, atol=1e-5, rtol=0)


def test_lp_on_an_approximate_graph_keeps_the_labels():
    x = clustered(1500, d=32, clusters=6, seed=4)
    seeds = torch.zeros(1500, 6)
    seeds[torch.arange(0, 1500, 10), torch.randint(0, 6, (150,), generator=torch.Generator().manual_seed(0))] = 1.0
    exact = LabelPropagator(LPConfig(k=20, knn_backend="torch"))(x, seeds).scores.argmax(1)
    approx = LabelPropagator(LPConfig(k=20, knn_index=KNNIndexConfig("bf16")))(x, seeds).scores.argmax(1)
    assert float((exact == approx).float().mean()) >= 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_low_precision_on_cuda_matches_cpu(data):
    x, _, ref_i = data
    _, idx = knn_search(x.cuda(), x.cuda(), K, exclude_self=True, index=KNNIndexConfig("bf16"))
    assert idx.device.type == "cuda"
    assert brute_recall(idx.cpu().numpy(), ref_i) >= 0.99
