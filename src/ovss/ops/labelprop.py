"""Label propagation over a kNN graph, and its inductive read-out for new points.

A cosine kNN graph (faiss when importable, else an exact chunked torch top-k), the transductive
propagation (I - alpha W) F = Y solved by conjugate gradient (Zhou et al., "Learning with Local and
Global Consistency", NIPS 2003), and a k-nearest-neighbour read-out that extends the propagated
scores to points outside the graph. TUSS's GLCC (``ovss.methods.tuss.glcc``) chains them with a
linear probe; any method with mask or patch embeddings and a few seeds can use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import InputError


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
    """"auto" = faiss when importable, else an exact chunked torch top-k (same neighbours up to ties)."""
    knn_chunk_elements: int = 1 << 25
    """Bound on the query × key similarity block of the torch search (128 MB in float32)."""


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


def knn_search(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    backend: Literal["auto", "faiss", "torch"] = "auto",
    chunk_elements: int = 1 << 25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` inner-product neighbours of each query among ``keys``.

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
    faiss = _faiss() if backend in ("auto", "faiss") else None
    if backend == "faiss" and faiss is None:
        raise InputError("knn backend 'faiss' asked for, but faiss is not installed")
    if faiss is not None:
        return _knn_faiss(faiss, queries, keys, k_eff, exclude_self)
    return _knn_torch(queries, keys, k_eff, exclude_self, chunk_elements)


def _knn_faiss(faiss, queries: torch.Tensor, keys: torch.Tensor, k: int, exclude_self: bool):
    import numpy as np

    x = np.ascontiguousarray(keys.detach().float().cpu().numpy())
    q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(q, k + int(exclude_self))
    if exclude_self:  # drop the row's own index; if a duplicate pushed it out, drop the last hit
        own = idx == np.arange(q.shape[0])[:, None]
        drop = np.where(own.any(1), own.argmax(1), k)
        keep = np.ones_like(own)
        keep[np.arange(q.shape[0]), drop] = False
        sims, idx = sims[keep].reshape(-1, k), idx[keep].reshape(-1, k)
    device = queries.device
    return torch.from_numpy(sims).to(device), torch.from_numpy(idx.astype(np.int64)).to(device)


def _knn_torch(queries: torch.Tensor, keys: torch.Tensor, k: int, exclude_self: bool, chunk_elements: int):
    n_q, n_keys = queries.shape[0], keys.shape[0]
    rows = max(1, chunk_elements // max(n_keys, 1))
    sims_out = torch.empty(n_q, k, dtype=queries.dtype, device=queries.device)
    idx_out = torch.empty(n_q, k, dtype=torch.long, device=queries.device)
    keys_t = keys.to(queries.dtype).T
    for start in range(0, n_q, rows):
        stop = min(start + rows, n_q)
        block = queries[start:stop] @ keys_t
        if exclude_self:
            r = torch.arange(stop - start, device=block.device)
            block[r, r + start] = -math.inf
        s, i = block.topk(k, dim=1)
        sims_out[start:stop], idx_out[start:stop] = s, i
    return sims_out, idx_out


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
            x, x, k or cfg.k, exclude_self=True, backend=cfg.knn_backend, chunk_elements=cfg.knn_chunk_elements
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
