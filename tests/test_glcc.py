"""TUSS GLCC (docs/methods.md §1.5): kNN search, label propagation, inductive read-out, probe, bootstrapping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.methods.tuss.glcc import (
    GLCC,
    InductiveConfig,
    LabelPropagator,
    LinearProbe,
    LPClassifier,
    LPConfig,
    ProbeConfig,
    RoundConfig,
    glcc_config,
    knn_search,
    probe_lr,
)

SHORT = ProbeConfig(base_iters=600, base_warmup_iters=60)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU benchmarks run beside the tests
    yield
    torch.set_num_threads(before)


def _brute_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, 1), idx


@pytest.mark.parametrize("chunk", [1 << 25, 1000])  # one block, and 10-row blocks
def test_knn_matches_brute_force(chunk):
    x = F.normalize(torch.randn(100, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=1)
    sims, idx = knn_search(x, x, 7, exclude_self=True, backend="torch", chunk_elements=chunk)
    ref_s, ref_i = _brute_knn(x.numpy(), 7)
    assert np.array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(sims.numpy(), ref_s, atol=1e-12)
    # queries that are not the keys: nearest neighbour of a key copy is the key itself
    s2, i2 = knn_search(x[:5] * 1.0, x, 3, backend="torch", chunk_elements=chunk)
    assert i2[:, 0].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(s2[:, 0].numpy(), 1.0)


def test_knn_faiss_matches_torch():
    pytest.importorskip("faiss")
    x = F.normalize(torch.randn(200, 16, generator=torch.Generator().manual_seed(2)), dim=1)
    s_f, i_f = knn_search(x, x, 9, exclude_self=True, backend="faiss")
    s_t, i_t = knn_search(x, x, 9, exclude_self=True, backend="torch")
    assert torch.equal(i_f, i_t)
    torch.testing.assert_close(s_f, s_t, atol=1e-5, rtol=0)


def _dense_lp(x: np.ndarray, y: np.ndarray, k: int, alpha: float, gamma: float) -> np.ndarray:
    """Zhou et al. in closed form with dense numpy: F = (I − αŴ)^−1 Y."""
    n = x.shape[0]
    sims, idx = _brute_knn(x, k)
    w = np.zeros((n, n))
    for i in range(n):
        w[i, idx[i]] = np.clip(sims[i], 0, None) ** gamma
    w = w + w.T
    np.fill_diagonal(w, 0)
    d = w.sum(1)
    d[d == 0] = 1
    w_hat = w / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    return np.clip(np.linalg.solve(np.eye(n) - alpha * w_hat, y), 0, None)


@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_label_propagation_matches_closed_form(gamma):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(150, 12, generator=g, dtype=torch.float64)
    y = torch.zeros(150, 4, dtype=torch.float64)
    y[torch.arange(0, 150, 7), torch.randint(0, 4, (22,), generator=g)] = 1.0
    cfg = LPConfig(k=8, alpha=0.9, gamma=gamma, cg_tol=1e-12, cg_max_iter=1000, knn_backend="torch")
    res = LabelPropagator(cfg)(x, y)
    ref = _dense_lp(F.normalize(x, dim=1).numpy(), y.numpy(), k=8, alpha=0.9, gamma=gamma)
    assert bool(res.converged.all())
    np.testing.assert_allclose(res.scores.numpy(), ref, atol=1e-9)
    # the default tolerance (1e-6, relative) still lands within 1e-5 of the exact solution
    loose = LabelPropagator(LPConfig(k=8, gamma=gamma, knn_backend="torch"))(x, y)
    np.testing.assert_allclose(loose.scores.numpy(), ref, atol=1e-5 * np.abs(ref).max())
    # degrees are the row sums of the symmetrised graph
    assert res.k == 8 and res.degree.shape == (150,)


def test_inductive_classifier_by_hand():
    # four training masks on the unit circle, classes [0, 1, 1, 0], degrees given
    keys = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    y_star = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    degree = torch.tensor([2.0, 4.0, 1.0, 1.0])
    query = torch.tensor([[0.8, 0.6]])  # cos: 0.8, 0.96, 0.6, -0.8 → k̄=2 picks masks 1 (0.96) and 0 (0.8)
    l1 = LPClassifier(keys, y_star, degree, graph_k=4, config=InductiveConfig(k_bar=2, weighting="l1"))(query)
    torch.testing.assert_close(l1, torch.tensor([[0.8 / 1.76, 0.96 / 1.76]]))
    # rigorous: a_j / sqrt(0.5 · (2/4) · d_j · 1.76) → class 0: 0.8/sqrt(0.88), class 1: 0.96/sqrt(1.76)
    rig = LPClassifier(keys, y_star, degree, graph_k=4, config=InductiveConfig(k_bar=2, weighting="rigorous"))(query)
    torch.testing.assert_close(rig, torch.tensor([[0.8 / math.sqrt(0.88), 0.96 / math.sqrt(1.76)]]))
    assert l1.argmax().item() == 1 and rig.argmax().item() == 0  # the degree correction flips this one


def test_probe_schedule():
    cfg = ProbeConfig()
    assert (cfg.total_iters, cfg.warmup_iters) == (60_000, 6_000)
    assert ProbeConfig(iter_factor=0.25).total_iters == 240_000
    assert probe_lr(0, cfg) == pytest.approx(1e-5)
    assert probe_lr(6_000, cfg) == pytest.approx(0.02)
    assert probe_lr(3_000, cfg) == pytest.approx((1e-5 + 0.02) / 2)
    assert probe_lr(33_000, cfg) == pytest.approx(0.01)
    assert probe_lr(59_999, cfg) < 1e-7


def _clusters(n_per: int, n_cls: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_cls, dim, generator=g), dim=1)
    labels = torch.arange(n_cls).repeat_interleave(n_per)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g) / math.sqrt(dim)
    return x, labels, centres, g


def test_probe_recovers_separable_clusters():
    x, lab, _, g = _clusters(60, 4, 32, 0.5, seed=4)
    xt, labt, _, _ = _clusters(60, 4, 32, 0.5, seed=4)
    perm = torch.randperm(len(lab), generator=g)
    x, lab = x[perm], lab[perm]
    probe = LinearProbe(SHORT).fit(x, F.one_hot(lab, 4).float(), areas=torch.rand(len(lab), generator=g) + 0.1)
    assert (probe.logits(xt).argmax(1) == labt).float().mean() > 0.97
    assert torch.allclose(probe.scores(xt).sum(1), torch.ones(len(labt)))
    # same seed, same weights
    again = LinearProbe(SHORT).fit(x, F.one_hot(lab, 4).float(), areas=None)
    other = LinearProbe(SHORT).fit(x, F.one_hot(lab, 4).float(), areas=None)
    assert torch.equal(again.weight, other.weight)


def test_probe_starts_from_text_embeddings():
    x, lab, centres, _ = _clusters(30, 3, 16, 0.3, seed=5)
    zero = ProbeConfig(base_iters=1, base_warmup_iters=1, lr=0.0, warmup_start_lr=0.0)
    probe = LinearProbe(zero).fit(x, F.one_hot(lab, 3).float(), text_embeddings=centres * 3)
    torch.testing.assert_close(F.normalize(probe.weight, dim=1), centres)


def _noisy_seeds(lab: torch.Tensor, n_cls: int, fraction: float, wrong: float, g: torch.Generator):
    n = len(lab)
    seeded = torch.randperm(n, generator=g)[: int(n * fraction)]
    seed_lab = lab[seeded].clone()
    flip = torch.rand(len(seeded), generator=g) < wrong
    seed_lab[flip] = (seed_lab[flip] + torch.randint(1, n_cls, (int(flip.sum()),), generator=g)) % n_cls
    seeds = torch.full((n,), -1)
    seeds[seeded] = seed_lab
    return seeds, seeded, seed_lab


def test_glcc_beats_seeds_and_probe_on_mixture():
    # 10 well-separated classes in 64-d, 5% of the masks seeded, 20% of those seeds wrong
    n_cls = 10
    x, lab, centres, g = _clusters(200, n_cls, 64, 0.3, seed=0)
    xt = centres[lab] + 0.3 * torch.randn(x.shape, generator=g) / 8
    seeds, seeded, seed_lab = _noisy_seeds(lab, n_cls, 0.05, 0.2, g)
    areas = torch.rand(len(lab), generator=g) * 100 + 10
    seed_acc = (seed_lab == lab[seeded]).float().mean().item()
    assert seed_acc < 0.9

    seed_soft = torch.zeros(len(lab), n_cls)
    seed_soft[seeded, seed_lab] = 1.0
    probe_only = LinearProbe(SHORT).fit(x, seed_soft, areas)  # the global part alone, on the seeds
    probe_acc = (probe_only.logits(xt).argmax(1) == lab).float().mean().item()

    cfg = glcc_config("sss", probe=SHORT, rounds=(RoundConfig(LPConfig(alpha=0.8, k=10, knn_backend="torch")),))
    glcc = GLCC(cfg).fit(x, areas, seeds, num_classes=n_cls)
    scores = glcc.predict(xt)
    assert scores.shape == (len(lab), n_cls)
    glcc_acc = (scores.argmax(1) == lab).float().mean().item()
    train_acc = (glcc.train_scores.argmax(1) == lab).float().mean().item()
    assert glcc_acc > seed_acc + 0.05, (glcc_acc, seed_acc)
    assert glcc_acc > probe_acc + 0.03, (glcc_acc, probe_acc)
    assert train_acc > seed_acc + 0.05


def test_wsss_bootstrapping_cleans_noisy_text_scores():
    # every mask has a (noisy) zero-shot score; image labels restrict the classes; two LP↔probe rounds
    n_cls = 6
    x, lab, _, g = _clusters(80, n_cls, 32, 0.4, seed=6)
    noisy = torch.softmax(3 * torch.randn(len(lab), n_cls, generator=g) + 2.0 * F.one_hot(lab, n_cls), dim=1)
    cand = torch.rand(len(lab), n_cls, generator=g) < 0.5
    cand[torch.arange(len(lab)), lab] = True
    seed_acc = ((noisy * cand).argmax(1) == lab).float().mean().item()
    rounds = (
        RoundConfig(LPConfig(k=10, knn_backend="torch"), SHORT),
        RoundConfig(LPConfig(k=6, knn_backend="torch"), SHORT),
        RoundConfig(LPConfig(k=6, knn_backend="torch"), None),
    )
    glcc = GLCC(glcc_config("wsss", rounds=rounds)).fit(x, None, noisy, candidates=cand)
    assert len(glcc.history) == 3
    train_acc = (glcc.train_scores.argmax(1) == lab).float().mean().item()
    assert train_acc > seed_acc + 0.1, (train_acc, seed_acc)
    assert bool(((glcc.train_scores > 0) <= cand).all())  # never a class outside the image labels
    assert (glcc.predict(x).argmax(1) == lab).float().mean().item() > seed_acc + 0.1


def test_fsss_and_suppression():
    x, lab, _, _ = _clusters(40, 3, 16, 0.3, seed=7)
    cfg = glcc_config("fsss", probe=SHORT, rounds=(RoundConfig(LPConfig(k=10, knn_backend="torch")),))
    glcc = GLCC(cfg).fit(x, torch.ones(len(lab)), F.one_hot(lab, 3).float())
    lp, probe = glcc.predict_parts(x)
    scores = glcc.predict(x)
    assert (scores.argmax(1) == lab).float().mean() > 0.97
    zeroed = (cfg.lp_weight * lp < 1e-8) | (probe < 1e-8)
    assert zeroed.any()  # tight clusters: the inductive LP gives exact zeros to absent classes
    assert torch.all(scores[zeroed] == 0)
    torch.testing.assert_close(scores[~zeroed], (cfg.lp_weight * lp + probe)[~zeroed])


def test_settings_defaults():
    assert glcc_config("sss").rounds[0].lp.alpha == 0.8
    assert glcc_config("fsss").probe.iter_factor == 0.5
    w = glcc_config("wsss")
    assert [r.lp.k for r in w.rounds] == [50, 12, 12]
    assert [r.probe.iter_factor if r.probe else None for r in w.rounds] == [0.25, 0.25, None]
    assert w.inductive == InductiveConfig(k_bar=12, weighting="rigorous")
    assert LPConfig() == LPConfig(k=50, gamma=1.0, alpha=0.9, cg_tol=1e-6, cg_max_iter=200)
    with pytest.raises(ValueError):
        glcc_config("ovss")  # type: ignore[arg-type]


def test_probe_weights_masks_by_area():
    # three masks at one embedding: class 1 twice with area 1, class 0 once with area 10
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = F.one_hot(torch.tensor([1, 1, 0, 1]), 2).float()
    areas = torch.tensor([1.0, 1.0, 10.0, 1.0])
    probe = LinearProbe(SHORT).fit(x, labels, areas)
    assert probe.logits(x[:1]).argmax().item() == 0  # 10 pixels outvote 2
    flat = LinearProbe(SHORT).fit(x, labels, None)
    assert flat.logits(x[:1]).argmax().item() == 1  # equal weights: two masks outvote one


def test_wsss_next_lp_starts_from_probe_scores():
    n_cls = 4
    x, lab, _, g = _clusters(40, n_cls, 16, 0.4, seed=8)
    noisy = torch.softmax(2 * torch.randn(len(lab), n_cls, generator=g) + F.one_hot(lab, n_cls), dim=1)
    cand = torch.ones(len(lab), n_cls, dtype=torch.bool)
    cand[:20, 3] = False
    lp1, lp2 = LPConfig(k=8, knn_backend="torch"), LPConfig(k=5, knn_backend="torch")
    cfg = glcc_config("wsss", rounds=(RoundConfig(lp1, SHORT), RoundConfig(lp2, None)))
    glcc = GLCC(cfg).fit(x, None, noisy, candidates=cand)
    first = LabelPropagator(lp1)(x, noisy * cand)
    torch.testing.assert_close(glcc.history[0].scores, first.scores)
    second = LabelPropagator(lp2)(x, glcc.probe.scores(x, cand))
    torch.testing.assert_close(glcc.history[1].scores, second.scores)
    assert not torch.allclose(second.scores, LabelPropagator(lp2)(x, noisy * cand).scores)


def test_one_knn_search_serves_graphs_of_smaller_k():
    """The bootstrapping rounds share one search at the largest k: same LP as a search per graph."""
    gen = torch.Generator().manual_seed(3)
    emb = F.normalize(torch.randn(300, 16, generator=gen, dtype=torch.float64), dim=1)
    seeds = torch.zeros(300, 4, dtype=torch.float64)
    seeds[torch.arange(0, 300, 7), torch.arange(0, 300, 7) % 4] = 1.0
    lp12 = LabelPropagator(LPConfig(k=12, knn_backend="torch"))
    shared = LabelPropagator(LPConfig(k=50, knn_backend="torch")).neighbours(emb)
    assert shared[0].shape == (300, 50)
    torch.testing.assert_close(lp12(emb, seeds, shared).scores, lp12(emb, seeds).scores)
    assert not torch.allclose(
        LabelPropagator(LPConfig(k=50, knn_backend="torch"))(emb, seeds).scores, lp12(emb, seeds).scores
    )
