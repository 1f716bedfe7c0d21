"""Label propagation over a kNN graph, and its inductive read-out for new points.

A cosine kNN graph (exact by default: a chunked torch top-k, or faiss's IndexFlatIP; optionally
an approximate faiss IVF or HNSW index, or a bf16/fp16 search re-ranked in fp32), the transductive
propagation (I - alpha W) F = Y solved by conjugate gradient (Zhou et al., "Learning with Local and
Global Consistency", NIPS 2003), and a k-nearest-neighbour read-out that extends the propagated
scores to points outside the graph. TUSS's GLCC (``ovss.methods.tuss.glcc``) chains them with a
linear probe; any method with mask or patch embeddings and a few seeds can use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F

from ..errors import InputError

KNNIndexKind = Literal["exact", "ivf", "hnsw", "bf16", "fp16"]
KNN_INDEX_KINDS: tuple[str, ...] = ("exact", "ivf", "hnsw", "bf16", "fp16")


@dataclass(frozen=True)
class KNNIndexConfig:
    """How the kNN graph is searched: exactly (the default) or approximately (docs/tuss.md, "kNN graphs at scale").

    "exact": every key is scored (faiss ``IndexFlatIP`` or the chunked torch top-k, see ``knn_backend``).
    "ivf": faiss ``IndexIVFFlat`` (inner product); keys fall into ``nlist`` k-means lists and a query
    scans the ``nprobe`` nearest lists (Jégou et al., "Product quantization for nearest neighbor search",
    TPAMI 2011). "hnsw": faiss ``IndexHNSWFlat`` (Malkov & Yashunin, TPAMI 2018).
    "bf16" / "fp16": pure torch (CUDA too): similarities in that precision, the ``rerank`` · k best
    candidates re-scored exactly in float32. The approximate kinds' recall is measured by :func:`knn_recall`.
    """

    kind: KNNIndexKind = "exact"
    nlist: int = 0
    """IVF lists; 0 = √N (rounded, at most N/39 so that k-means has faiss's 39 points per list)."""
    nprobe: int = 16
    """IVF lists scanned per query."""
    hnsw_m: int = 32
    """HNSW links per node."""
    ef_construction: int = 64
    """HNSW candidate list while building."""
    ef_search: int = 128
    """HNSW candidate list while searching (at least k + 1 is used)."""
    rerank: int = 4
    """bf16/fp16: k' = rerank · k candidates are re-ranked in float32."""
    seed: int = 1234
    """Seed of IVF's k-means (faiss's default)."""

    def validate(self) -> None:
        if self.kind not in KNN_INDEX_KINDS:
            raise InputError(f"unknown kNN index {self.kind!r}; use one of {', '.join(KNN_INDEX_KINDS)}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search", "rerank"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"kNN index setting {name}={getattr(self, name)!r} must be a positive integer")
        if not isinstance(self.nlist, int) or self.nlist < 0:
            raise InputError(f"kNN index setting nlist={self.nlist!r} must be 0 (automatic) or a positive integer")


@dataclass(frozen=True)
class LPConfig:
    """The local part: transductive label propagation on a kNN graph (TUSS: Yang & Gong, arXiv 2405.14294)."""

    k: int = 50
    """Neighbours per mask in the graph (§1.5 ii; swept 6–100, later bootstrap rounds use 12)."""
    gamma: float = 1.0
    """Edge weight = similarity^γ with γ = 1 (§1.5 ii; the reference constructor default of 3 is not used)."""
    alpha: float = 0.9
    """Diffusion strength in (I − αŴ)F = Y; 0.8 in the SSS configs (§1.5 ii, §1.6)."""
    cg_tol: float = 1e-6
    """Relative residual tolerance of conjugate gradient (§1.5 ii)."""
    cg_max_iter: int = 200
    knn_backend: Literal["auto", "faiss", "torch"] = "auto"
    """Exact search: "auto" = "torch" (chunked top-k; 1.5-3x faster than faiss-cpu's IndexFlatIP on the
    CPU of docs/tuss.md, and on the GPU when the embeddings are), "faiss" = IndexFlatIP (same neighbours
    up to ties). The faiss indexes ("ivf", "hnsw") need "auto" or "faiss"."""
    knn_chunk_elements: int = 1 << 25
    """Bound on the query × key similarity block of the torch search (128 MB in float32)."""
    knn_index: KNNIndexConfig = field(default_factory=KNNIndexConfig)
    """Exact search by default; an approximate index for banks of millions of masks (see KNNIndexConfig)."""


@dataclass(frozen=True)
class InductiveConfig:
    """The inductive LP classifier for masks outside the graph (TUSS)."""

    k_bar: int = 12
    """k̄ nearest training masks; 12 in the VOC WSSS chain (§1.5 iv), swept {12, 25, 50, 100}."""
    weighting: Literal["rigorous", "l1"] = "rigorous"
    """"rigorous" = a_j / √(½·(k̄/k)·d_j·Σa), the VOC choice; "l1" = a_j / Σa (§1.5 iii)."""


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class KNNIndex(Protocol):
    """Keys indexed once, searched by any number of query batches (:func:`build_knn_index`)."""

    n_keys: int

    def search(
        self, queries: torch.Tensor, k: int, self_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(similarities, indices), each (Q, k), sorted by decreasing similarity. ``self_ids`` (Q,):
        the key index each query is, left out of its own row. Needs k < n_keys (k ≤ n_keys without)."""
        ...


def knn_search(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    backend: Literal["auto", "faiss", "torch"] = "auto",
    chunk_elements: int = 1 << 25,
    index: KNNIndexConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner-product neighbours of each query among ``keys`` (exact unless ``index`` says otherwise).

    Returns (similarities, indices), each (Q, k), sorted by decreasing similarity, on the queries'
    device. ``exclude_self`` (queries are the keys) drops each row's own index. The torch backend
    holds at most ``chunk_elements`` similarities at once, so 100k × 100k masks stay within memory.
    """
    n_keys = keys.shape[0]
    k_eff = min(k, n_keys - 1 if exclude_self else n_keys)
    if k_eff <= 0:
        raise InputError(f"kNN needs at least {2 if exclude_self else 1} keys, got {n_keys}")
    if exclude_self and queries.shape[0] != n_keys:
        raise InputError("exclude_self needs the queries to be the keys")
    built = build_knn_index(keys, backend=backend, chunk_elements=chunk_elements, index=index)
    self_ids = torch.arange(n_keys, device=queries.device) if exclude_self else None
    return built.search(queries, k_eff, self_ids)


def build_knn_index(
    keys: torch.Tensor,
    *,
    backend: Literal["auto", "faiss", "torch"] = "auto",
    chunk_elements: int = 1 << 25,
    index: KNNIndexConfig | None = None,
) -> KNNIndex:
    """Index ``keys`` (N, D) for inner-product search as ``index`` says (default: exact).

    ``backend`` chooses the exact search ("auto" = torch, see ``LPConfig.knn_backend``); "ivf"/"hnsw"
    need faiss, "bf16"/"fp16" are torch (on the keys' device).
    """
    cfg = index or KNNIndexConfig()
    cfg.validate()
    if keys.ndim != 2 or keys.shape[0] == 0:
        raise InputError(f"kNN keys must be a non-empty (N, D) matrix, got shape {tuple(keys.shape)}")
    if cfg.kind in ("bf16", "fp16"):
        if backend == "faiss":
            raise InputError(f"the {cfg.kind} kNN index is torch only; use knn_backend 'auto' or 'torch'")
        return _LowPrecisionIndex(keys, cfg, chunk_elements)
    # exact + "auto" is torch: faster than faiss-cpu's IndexFlatIP (bench/knn.py), and it stays on the GPU
    faiss = _faiss() if backend == "faiss" or cfg.kind != "exact" else None
    if cfg.kind != "exact":
        if backend == "torch":
            raise InputError(f"the {cfg.kind} kNN index needs faiss; use knn_backend 'auto' or 'faiss'")
        if faiss is None:
            raise InputError(f"the {cfg.kind} kNN index needs faiss: pip install faiss-cpu (or use knn index 'exact')")
    if backend == "faiss" and faiss is None:
        raise InputError("knn backend 'faiss' asked for, but faiss is not installed")
    if faiss is not None:
        return _FaissIndex(faiss, keys, cfg, chunk_elements)
    return _TorchExactIndex(keys, chunk_elements)


def _drop_self(
    sims: torch.Tensor, idx: torch.Tensor, self_ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """From k + 1 hits per row, drop the row's own index; if a duplicate pushed it out, drop the last hit."""
    own = idx == self_ids[:, None]
    drop = torch.where(own.any(1), own.int().argmax(1), torch.full_like(self_ids, k))
    keep = torch.ones_like(own)
    keep[torch.arange(idx.shape[0], device=idx.device), drop] = False
    return sims[keep].reshape(-1, k), idx[keep].reshape(-1, k)


class _TorchExactIndex:
    """Exact chunked top-k in torch: today's search, and the ground truth of :func:`knn_recall`."""

    def __init__(self, keys: torch.Tensor, chunk_elements: int) -> None:
        self.keys, self.n_keys, self.chunk_elements = keys, keys.shape[0], chunk_elements

    def search(self, queries: torch.Tensor, k: int, self_ids: torch.Tensor | None = None):
        n_q, n_keys = queries.shape[0], self.n_keys
        rows = max(1, self.chunk_elements // max(n_keys, 1))
        sims_out = torch.empty(n_q, k, dtype=queries.dtype, device=queries.device)
        idx_out = torch.empty(n_q, k, dtype=torch.long, device=queries.device)
        keys_t = self.keys.to(queries.device, queries.dtype).T
        for start in range(0, n_q, rows):
            stop = min(start + rows, n_q)
            block = queries[start:stop] @ keys_t
            if self_ids is not None:
                r = torch.arange(stop - start, device=block.device)
                block[r, self_ids[start:stop].to(block.device)] = -math.inf
            s, i = block.topk(k, dim=1)
            sims_out[start:stop], idx_out[start:stop] = s, i
        return sims_out, idx_out


class _FaissIndex:
    """faiss on the CPU: IndexFlatIP (exact), IndexIVFFlat or IndexHNSWFlat, all inner product."""

    def __init__(self, faiss: Any, keys: torch.Tensor, cfg: KNNIndexConfig, chunk_elements: int) -> None:
        import numpy as np

        self.keys, self.n_keys, self.cfg, self.chunk_elements = keys, keys.shape[0], cfg, chunk_elements
        x = np.ascontiguousarray(keys.detach().float().cpu().numpy())
        d = x.shape[1]
        if cfg.kind == "ivf":
            nlist = cfg.nlist or ivf_auto_nlist(x.shape[0])
            if nlist > x.shape[0]:
                raise InputError(f"IVF nlist {nlist} exceeds the {x.shape[0]} keys; lower nlist (0 = automatic)")
            self.quantizer = faiss.IndexFlatIP(d)  # kept alive: the IVF index holds only a pointer to it
            index = faiss.IndexIVFFlat(self.quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = cfg.seed
            index.verbose = False
            index.train(x)
            index.nprobe = min(cfg.nprobe, nlist)
        elif cfg.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
        else:
            index = faiss.IndexFlatIP(d)
        index.add(x)
        self.index = index

    def search(self, queries: torch.Tensor, k: int, self_ids: torch.Tensor | None = None):
        import numpy as np

        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        want = k + int(self_ids is not None)
        if self.cfg.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.cfg.ef_search, want)
        sims_np, idx_np = self.index.search(q, want)
        sims, idx = torch.from_numpy(sims_np), torch.from_numpy(idx_np.astype(np.int64))
        short = (idx < 0).any(1)  # IVF: the probed lists held fewer than k keys
        if bool(short.any()):  # search those rows exactly, so every row has k real neighbours
            rows = short.nonzero().squeeze(1)
            exact = _TorchExactIndex(self.keys.detach().float().cpu(), self.chunk_elements)
            sub_ids = None if self_ids is None else self_ids.cpu()[rows]
            ex_s, ex_i = exact.search(queries.detach().float().cpu()[rows], want - int(self_ids is not None), sub_ids)
            if self_ids is not None:  # pad the row to k + 1 with its own index, dropped below
                ex_s = torch.cat([torch.full_like(ex_s[:, :1], math.inf), ex_s], 1)
                ex_i = torch.cat([sub_ids[:, None], ex_i], 1)  # type: ignore[index]
            sims[rows], idx[rows] = ex_s, ex_i
        if self_ids is not None:
            sims, idx = _drop_self(sims, idx, self_ids.cpu(), k)
        device = queries.device
        return sims.to(device), idx.to(device)


class _LowPrecisionIndex:
    """Similarities in bf16/fp16, then the rerank · k best candidates re-scored exactly (pure torch)."""

    def __init__(self, keys: torch.Tensor, cfg: KNNIndexConfig, chunk_elements: int) -> None:
        self.keys, self.n_keys, self.cfg, self.chunk_elements = keys, keys.shape[0], cfg, chunk_elements
        dtype = torch.bfloat16 if cfg.kind == "bf16" else torch.float16
        self.keys_low_t = keys.to(dtype).T.contiguous()

    def search(self, queries: torch.Tensor, k: int, self_ids: torch.Tensor | None = None):
        n_q, n_keys = queries.shape[0], self.n_keys
        k_cand = min(max(self.cfg.rerank * k, k), n_keys)
        dim = self.keys.shape[1]
        rows = max(1, self.chunk_elements // max(n_keys, k_cand * dim))  # the block and the gathered candidates
        exact_dtype = queries.dtype if queries.dtype == torch.float64 else torch.float32
        keys = self.keys.to(queries.device, exact_dtype)
        keys_low_t = self.keys_low_t.to(queries.device)
        sims_out = torch.empty(n_q, k, dtype=exact_dtype, device=queries.device)
        idx_out = torch.empty(n_q, k, dtype=torch.long, device=queries.device)
        for start in range(0, n_q, rows):
            stop = min(start + rows, n_q)
            q = queries[start:stop]
            block = q.to(keys_low_t.dtype) @ keys_low_t
            if self_ids is not None:
                r = torch.arange(stop - start, device=block.device)
                block[r, self_ids[start:stop].to(block.device)] = -math.inf
            cand = block.topk(k_cand, dim=1).indices
            del block
            exact = torch.einsum("qd,qcd->qc", q.to(exact_dtype), keys[cand])
            if self_ids is not None and k_cand == n_keys:  # every key is a candidate, the row's own included
                exact = exact.masked_fill(cand == self_ids[start:stop, None].to(cand.device), -math.inf)
            s, j = exact.topk(k, dim=1)
            sims_out[start:stop], idx_out[start:stop] = s, cand.gather(1, j)
        return sims_out, idx_out


def ivf_auto_nlist(n_keys: int) -> int:
    """IVF lists when ``nlist`` is 0: √N, and at most N/39 (faiss warns below 39 training points per list)."""
    return max(1, min(round(math.sqrt(n_keys)), n_keys // 39))


def recall_at_k(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of the true neighbours (Q, k) that ``found`` (Q, k' ≥ 1) also lists, over all rows."""
    if found.shape[0] != truth.shape[0]:
        raise InputError(f"recall needs the same queries: {found.shape[0]} rows against {truth.shape[0]}")
    hits = (found[:, :, None] == truth[:, None, :]).any(1)
    return float(hits.float().mean())


def knn_recall(
    keys: torch.Tensor,
    k: int,
    index: KNNIndexConfig | KNNIndex,
    *,
    queries: int = 1000,
    seed: int = 0,
    backend: Literal["auto", "faiss", "torch"] = "auto",
    chunk_elements: int = 1 << 25,
) -> float:
    """recall@k of ``index`` on the self-search of ``keys`` (the graph's case), on ``queries`` random keys.

    The truth is the exact chunked torch search for the same keys (own index excluded). ``index``: a
    configuration (built here over ``keys``) or an index already built over them.
    """
    n = keys.shape[0]
    k = min(k, n - 1)
    if k < 1:
        raise InputError(f"recall@k needs at least 2 keys, got {n}")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(n, generator=gen)[: min(queries, n)].to(keys.device)
    q = keys[ids]
    _, truth = _TorchExactIndex(keys, chunk_elements).search(q, k, ids)
    built = (
        build_knn_index(keys, backend=backend, chunk_elements=chunk_elements, index=index)
        if isinstance(index, KNNIndexConfig)
        else index
    )
    _, found = built.search(q, k, ids)
    return recall_at_k(found, truth)


# --------------------------------------------------------------------------------------------
# label propagation
# --------------------------------------------------------------------------------------------


def conjugate_gradient(
    matvec, b: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve A X = B column by column for a symmetric positive-definite A given as ``matvec``.

    All columns run together; a column stops once ‖r‖ ≤ tol·‖b‖ (scipy's relative criterion).
    Returns (X, converged) with ``converged`` a bool per column.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(0)
    threshold = (tol**2) * rs  # ‖r‖² ≤ tol²‖b‖²
    active = rs > threshold
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        ap = matvec(p)
        pap = (p * ap).sum(0)
        step = torch.where(active, rs / torch.where(active, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x += step * p
        r -= step * ap
        rs_new = (r * r).sum(0)
        beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
        active = active & (rs > threshold)
    return x, ~active


@dataclass
class LPResult:
    """Label-propagation output over the training masks."""

    scores: torch.Tensor  # (N, C) propagated scores F, negatives clipped to 0
    degree: torch.Tensor  # (N,) degree of the symmetrised graph (isolated masks get 1)
    k: int  # the graph's k, needed by the "rigorous" inductive weighting
    converged: torch.Tensor  # (C,) bool, CG convergence per class


class LabelPropagator:
    """Zhou-style diffusion on a cosine kNN graph (docs/methods.md §1.5 ii).

    Graph: W_ij = max(cos, 0)^γ for the k nearest neighbours j of i, W ← W + Wᵀ, no self-loops,
    Ŵ = D^−½ W D^−½. Then (I − αŴ) F_c = Y_c is solved for every class c by conjugate gradient.
    """

    def __init__(self, config: LPConfig | None = None) -> None:
        self.config = config or LPConfig()

    def neighbours(self, embeddings: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each mask's ``k`` (default: the config's) nearest other masks, sorted: (similarities, indices)."""
        cfg = self.config
        x = F.normalize(_real(embeddings), dim=1)
        return knn_search(
            x,
            x,
            k or cfg.k,
            exclude_self=True,
            backend=cfg.knn_backend,
            chunk_elements=cfg.knn_chunk_elements,
            index=cfg.knn_index,
        )

    def graph(
        self, embeddings: torch.Tensor, knn: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(normalised sparse COO Ŵ, degree, k) over L2-normalised ``embeddings``.

        ``knn``: neighbours from :meth:`neighbours` with at least ``k`` columns, searched once and
        shared by graphs of smaller k (the bootstrapping rounds); the first k columns are used.
        """
        cfg = self.config
        x = F.normalize(_real(embeddings), dim=1)
        n = x.shape[0]
        sims, idx = knn if knn is not None else self.neighbours(embeddings)
        sims, idx = sims[:, : cfg.k].to(x.dtype), idx[:, : cfg.k]
        k = sims.shape[1]
        w = sims.clamp_min(0).double() ** cfg.gamma  # negative cosine → no edge [our choice]
        rows = torch.arange(n, device=x.device).repeat_interleave(k)
        cols = idx.reshape(-1)
        both_r, both_c = torch.cat([rows, cols]), torch.cat([cols, rows])
        vals = torch.cat([w.reshape(-1), w.reshape(-1)])
        off_diag = both_r != both_c
        coo = torch.sparse_coo_tensor(
            torch.stack([both_r[off_diag], both_c[off_diag]]), vals[off_diag], (n, n), check_invariants=False
        ).coalesce()  # duplicates add up: mutual neighbours get 2·w, as W + Wᵀ does
        (r, c), v = coo.indices(), coo.values()
        degree = torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(0, r, v)
        degree = torch.where(degree > 0, degree, torch.ones_like(degree))
        d_isqrt = degree.rsqrt()
        w_hat = torch.sparse_coo_tensor(
            coo.indices(), v * d_isqrt[r] * d_isqrt[c], (n, n), is_coalesced=True, check_invariants=False
        )
        return w_hat, degree, k

    def __call__(
        self, embeddings: torch.Tensor, seeds: torch.Tensor, knn: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> LPResult:
        """Propagate ``seeds`` (N, C; zero rows = unlabelled) over the graph of ``embeddings`` (N, D)."""
        if embeddings.shape[0] != seeds.shape[0]:
            raise InputError(f"{embeddings.shape[0]} embeddings but {seeds.shape[0]} seed rows")
        w_hat, degree, k = self.graph(embeddings, knn)
        alpha = self.config.alpha

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return v - alpha * torch.sparse.mm(w_hat, v)

        f, converged = conjugate_gradient(
            matvec, seeds.double().to(w_hat.device), tol=self.config.cg_tol, max_iter=self.config.cg_max_iter
        )
        scores = f.clamp_min(0).to(seeds.dtype if seeds.is_floating_point() else torch.float32)
        return LPResult(scores=scores, degree=degree.float(), k=k, converged=converged)


# --------------------------------------------------------------------------------------------
# inductive LP classifier
# --------------------------------------------------------------------------------------------


class LPClassifier:
    """Scores unseen masks from their k̄ nearest training masks' seeded LP scores Y* (docs/methods.md §1.5 iii).

    ``keys``: training embeddings (normalised here); ``y_star``: (N, C); ``degree``: (N,) degrees of
    the training graph, built with ``graph_k`` neighbours (only used by the "rigorous" weighting).
    """

    def __init__(
        self,
        keys: torch.Tensor,
        y_star: torch.Tensor,
        degree: torch.Tensor | None,
        graph_k: int,
        config: InductiveConfig | None = None,
        knn_backend: Literal["auto", "faiss", "torch"] = "auto",
    ) -> None:
        self.config = config or InductiveConfig()
        if self.config.weighting == "rigorous" and degree is None:
            raise InputError("the 'rigorous' inductive weighting needs the training graph's degrees")
        self.keys = F.normalize(keys.float(), dim=1)
        self.y_star = y_star.float().to(self.keys.device)
        self.degree = None if degree is None else degree.float().to(self.keys.device)
        self.graph_k = graph_k
        self.knn_backend = knn_backend

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings.float(), dim=1).to(self.keys.device)
        a, idx = knn_search(x, self.keys, self.config.k_bar, backend=self.knn_backend)
        a = a.clamp_min(0)  # as in the graph: negative cosine carries no weight [our choice]
        total = a.sum(1, keepdim=True)
        if self.config.weighting == "l1":
            weights = a / total.clamp_min(1e-12)
        elif self.config.weighting == "rigorous":
            k_ratio = a.shape[1] / self.graph_k  # k̄ / k
            assert self.degree is not None  # set by fit
            denom = (0.5 * k_ratio * self.degree[idx] * total).clamp_min(1e-12).sqrt()
            weights = a / denom
        else:
            raise InputError(f"unknown inductive weighting {self.config.weighting!r}; use 'rigorous' or 'l1'")
        return torch.einsum("nk,nkc->nc", weights, self.y_star[idx]).to(embeddings.device)


# --------------------------------------------------------------------------------------------
# linear probe
# --------------------------------------------------------------------------------------------


def _real(t: torch.Tensor) -> torch.Tensor:
    """float64 stays float64 (exact tests); anything else computes in float32."""
    return t if t.dtype == torch.float64 else t.float()
