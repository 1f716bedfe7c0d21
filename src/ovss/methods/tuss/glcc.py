"""TUSS GLCC: the global–local consistent classifier over SAM-mask embeddings (METHODS.md §1.5, §1.6).

Every SAM mask is one embedding with a pixel area; some masks carry (soft or hard) labels.
Two classifiers bootstrap each other:

* global — a cosine linear probe trained with area-weighted soft cross-entropy (§1.5 i);
* local — label propagation on a cosine kNN graph of all training masks, solved by conjugate
  gradient (§1.5 ii), extended to unseen masks by a k̄-nearest-neighbour read-out (§1.5 iii).

:class:`GLCC` chains them (§1.5 iv) and sums the two at prediction time (§1.5 v). Everything runs
in torch on the device of the embeddings; faiss is used for the kNN search when it is importable.
Clean-room implementation from METHODS.md (TUSS has no licence).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ...errors import InputError

__all__ = [
    "GLCC",
    "GLCCConfig",
    "InductiveConfig",
    "LPClassifier",
    "LPConfig",
    "LPResult",
    "LabelPropagator",
    "LinearProbe",
    "ProbeConfig",
    "RoundConfig",
    "conjugate_gradient",
    "glcc_config",
    "knn_search",
    "probe_lr",
]

Setting = Literal["fsss", "sss", "wsss"]


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeConfig:
    """The global part: a cosine linear probe on frozen mask embeddings (METHODS.md §1.5 i)."""

    logit_scale: float = 100.0
    """Logits = scale · cos; 100 is CLIP's own exp(logit_scale), so text-initialised weights score as CLIP."""
    lr: float = 0.02
    """Peak SGD learning rate (§1.5 i)."""
    warmup_start_lr: float = 1e-5
    """Linear warm-up starts here and reaches ``lr`` after the warm-up (§1.5 i)."""
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 512
    """Masks per step (§1.5 i); a set smaller than this is used whole every step."""
    base_iters: int = 60_000
    """VOC length, about 50 epochs (§1.5 i); COCO uses 120k/180k — pass them for COCO."""
    base_warmup_iters: int = 6_000
    iter_factor: float = 1.0
    """Divides both counts (§1.5 i): 0.25 → 240k, 0.5 → 120k, 4 → 15k iterations."""
    seed: int = 0
    """Seeds the weight init and the batch order, so a fit is reproducible on one device."""
    init_from_text: bool = True
    """Start from the class text embeddings when given [our choice]; the reference initialises at random."""

    @property
    def total_iters(self) -> int:
        return max(1, round(self.base_iters / self.iter_factor))

    @property
    def warmup_iters(self) -> int:
        return min(self.total_iters, round(self.base_warmup_iters / self.iter_factor))


@dataclass(frozen=True)
class LPConfig:
    """The local part: transductive label propagation on a kNN graph (METHODS.md §1.5 ii)."""

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
    """The inductive LP classifier for masks outside the graph (METHODS.md §1.5 iii)."""

    k_bar: int = 12
    """k̄ nearest training masks; 12 in the VOC WSSS chain (§1.5 iv), swept {12, 25, 50, 100}."""
    weighting: Literal["rigorous", "l1"] = "rigorous"
    """"rigorous" = a_j / √(½·(k̄/k)·d_j·Σa), the VOC choice; "l1" = a_j / Σa (§1.5 iii)."""


@dataclass(frozen=True)
class RoundConfig:
    """One bootstrapping round (METHODS.md §1.5 iv): an LP, then optionally a probe trained on its output."""

    lp: LPConfig = field(default_factory=LPConfig)
    probe: ProbeConfig | None = None


def _voc_wsss_rounds() -> tuple[RoundConfig, ...]:
    # §1.5 iv, VOC WSSS chain: LP(α .9, k 50) → probe(f .25) → LP(k 12) → probe(f .25) → LP(k 12)
    return (
        RoundConfig(LPConfig(k=50), ProbeConfig(iter_factor=0.25)),
        RoundConfig(LPConfig(k=12), ProbeConfig(iter_factor=0.25)),
        RoundConfig(LPConfig(k=12), None),
    )


@dataclass(frozen=True)
class GLCCConfig:
    """The whole GLCC: setting, bootstrapping chain, inductive read-out and combination (METHODS.md §1.5–1.6)."""

    setting: Setting = "wsss"
    """"wsss": seeds are text scores for every mask, LP and probe bootstrap each other;
    "sss": seeds on labelled masks only, one LP then one probe; "fsss": every mask labelled, no LP (§1.6)."""
    rounds: tuple[RoundConfig, ...] = field(default_factory=_voc_wsss_rounds)
    """Used by "wsss"; "sss"/"fsss" use the first round's LP (graph) and ``probe`` (see :func:`glcc_config`)."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """The probe of the "sss"/"fsss" settings (FSSS configs use iter_factor 0.5, §1.6)."""
    inductive: InductiveConfig = field(default_factory=InductiveConfig)
    lp_weight: float = 1.5
    """w_LP in score = w_LP·s_LP + s_probe; the reference tunes it on val in {0.7, 0.9, 1.5, 2, 2.5, 3} —
    we fix a middle value and leave selection to a held-out split (§1.5 v, §1.7 risk 1) [our choice]."""
    suppress_eps: float = 1e-8
    """Classes that either weighted classifier scores below this are zeroed (§1.5 v)."""
    label_scale: float = 100.0
    """WSSS probe soft labels = softmax(100 · LP score) over the candidate classes (§1.5 i)."""
    background_index: int | None = None
    """Column that gets the α-power after the L1 seeding of LP scores (§1.5 ii step 6); None = no such step."""
    background_power: float = 1.0


def glcc_config(setting: Setting, **overrides: object) -> GLCCConfig:
    """The §1.6 defaults for one supervision setting; ``overrides`` replace fields of the result."""
    if setting == "wsss":
        cfg = GLCCConfig(setting="wsss")
    elif setting == "sss":  # LP α 0.8, k 50, γ 1, then a probe on its output (§1.6)
        cfg = GLCCConfig(setting="sss", rounds=(RoundConfig(LPConfig(alpha=0.8, k=50)),), probe=ProbeConfig())
    elif setting == "fsss":  # probe with iter_factor 0.5; the graph is only built for the degrees (§1.6)
        cfg = GLCCConfig(setting="fsss", rounds=(RoundConfig(LPConfig(k=50)),), probe=ProbeConfig(iter_factor=0.5))
    else:
        raise InputError(f"unknown GLCC setting {setting!r}; use 'fsss', 'sss' or 'wsss'")
    return replace(cfg, **overrides)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# kNN search
# --------------------------------------------------------------------------------------------


def _faiss():
    try:
        import faiss  # type: ignore[import-not-found]
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
    """Zhou-style diffusion on a cosine kNN graph (METHODS.md §1.5 ii).

    Graph: W_ij = max(cos, 0)^γ for the k nearest neighbours j of i, W ← W + Wᵀ, no self-loops,
    Ŵ = D^−½ W D^−½. Then (I − αŴ) F_c = Y_c is solved for every class c by conjugate gradient.
    """

    def __init__(self, config: LPConfig | None = None) -> None:
        self.config = config or LPConfig()

    def neighbours(self, embeddings: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each mask's ``k`` (default: the config's) nearest other masks, sorted: (similarities, indices)."""
        cfg = self.config
        x = F.normalize(_real(embeddings), dim=1)
        return knn_search(x, x, k or cfg.k, exclude_self=True, backend=cfg.knn_backend,
                          chunk_elements=cfg.knn_chunk_elements)  # fmt: skip

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
    """Scores unseen masks from their k̄ nearest training masks' seeded LP scores Y* (METHODS.md §1.5 iii).

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
            denom = (0.5 * k_ratio * self.degree[idx] * total).clamp_min(1e-12).sqrt()
            weights = a / denom
        else:
            raise InputError(f"unknown inductive weighting {self.config.weighting!r}; use 'rigorous' or 'l1'")
        return torch.einsum("nk,nkc->nc", weights, self.y_star[idx]).to(embeddings.device)


# --------------------------------------------------------------------------------------------
# linear probe
# --------------------------------------------------------------------------------------------


def probe_lr(iteration: int, config: ProbeConfig) -> float:
    """Learning rate of step ``iteration`` (0-based): linear warm-up, then cosine decay to 0 (§1.5 i)."""
    warm, total = config.warmup_iters, config.total_iters
    if iteration < warm:
        return config.warmup_start_lr + (config.lr - config.warmup_start_lr) * iteration / warm
    span = max(total - warm, 1)
    return 0.5 * config.lr * (1 + math.cos(math.pi * (iteration - warm) / span))


class LinearProbe:
    """Cosine linear probe: logits = scale · normalize(x) · normalize(W)ᵀ, no bias (METHODS.md §1.5 i)."""

    def __init__(self, config: ProbeConfig | None = None) -> None:
        self.config = config or ProbeConfig()
        self.weight: torch.Tensor | None = None

    def fit(
        self,
        embeddings: torch.Tensor,
        soft_labels: torch.Tensor,
        areas: torch.Tensor | None = None,
        text_embeddings: torch.Tensor | None = None,
        progress: bool = False,
    ) -> LinearProbe:
        """Train on masks with label mass; each row of ``soft_labels`` is L1-normalised first [our choice].

        Rows with no label mass are left out. The loss is the soft cross-entropy weighted by pixel
        area, the weights normalised to sum to 1 in each batch.
        """
        cfg = self.config
        device = embeddings.device
        n, dim = embeddings.shape
        n_cls = soft_labels.shape[1]
        if soft_labels.shape[0] != n:
            raise InputError(f"{n} embeddings but {soft_labels.shape[0]} label rows")
        areas = torch.ones(n, device=device) if areas is None else areas.to(device).float()
        mass = soft_labels.float().clamp_min(0).sum(1)
        labelled = (mass > 0).nonzero().squeeze(1).to(device)
        if labelled.numel() == 0:
            raise InputError("the probe needs at least one mask with a label")
        x = F.normalize(embeddings.float(), dim=1)[labelled]
        y = (soft_labels.float().clamp_min(0)[labelled] / mass[labelled, None]).to(device)
        area = areas[labelled]

        gen = torch.Generator().manual_seed(cfg.seed)
        if text_embeddings is not None and cfg.init_from_text:
            if text_embeddings.shape != (n_cls, dim):
                raise InputError(f"text embeddings must be ({n_cls}, {dim}), got {tuple(text_embeddings.shape)}")
            w0 = text_embeddings.detach().float().clone()
        else:  # nn.Linear's default: U(−1/√D, 1/√D)
            w0 = (torch.rand(n_cls, dim, generator=gen) * 2 - 1) / math.sqrt(dim)
        weight = w0.to(device).requires_grad_(True)
        opt = torch.optim.SGD([weight], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

        m = x.shape[0]
        batch = min(cfg.batch_size, m)
        order = torch.randperm(m, generator=gen)
        pos = 0
        bar = _bar(cfg.total_iters, "probe", progress)
        for it in range(cfg.total_iters):
            if pos + batch > m:  # reshuffle each epoch, dropping the incomplete last batch
                order, pos = torch.randperm(m, generator=gen), 0
            sel = order[pos : pos + batch].to(device)
            pos += batch
            for group in opt.param_groups:
                group["lr"] = probe_lr(it, cfg)
            logits = cfg.logit_scale * x[sel] @ F.normalize(weight, dim=1).T
            per_mask = -(y[sel] * F.log_softmax(logits, dim=1)).sum(1)
            w = area[sel]
            loss = (per_mask * w).sum() / w.sum().clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
        bar.close()
        self.weight = weight.detach()
        return self

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            raise RuntimeError("LinearProbe.fit must run before logits")
        x = F.normalize(embeddings.float(), dim=1).to(self.weight.device)
        out = self.config.logit_scale * x @ F.normalize(self.weight, dim=1).T
        return out.to(embeddings.device)

    def scores(self, embeddings: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax of the logits, over the ``candidates`` classes only when given (N, C bool)."""
        return _masked_softmax(self.logits(embeddings), candidates)


def _masked_softmax(logits: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
    if candidates is not None:
        logits = logits.masked_fill(~candidates.to(logits.device), -math.inf)
    out = torch.softmax(logits, dim=1)
    return torch.nan_to_num(out, nan=0.0)  # a row with no candidate gets all zeros


# --------------------------------------------------------------------------------------------
# GLCC
# --------------------------------------------------------------------------------------------


class GLCC:
    """Global–local consistent classifier with mutual bootstrapping (METHODS.md §1.5, §1.6).

    >>> glcc = GLCC(glcc_config("sss")).fit(train_emb, areas, seeds)     # doctest: +SKIP
    >>> scores = glcc.predict(val_emb)          # (M, C) = w_LP · inductive LP + probe softmax
    """

    def __init__(self, config: GLCCConfig | None = None, progress: bool = False) -> None:
        self.config = config or GLCCConfig()
        self.progress = progress  # a progress bar for each probe fit
        self.probe: LinearProbe | None = None
        self.lp_classifier: LPClassifier | None = None
        self.train_scores: torch.Tensor | None = None  # seeded Y* of the last LP, (N, C)
        self.history: list[LPResult] = []

    # seeding of LP scores (§1.5 ii step 6): candidates only, L1 rows, α-power on the background
    def _seed(self, scores: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        y = scores.clamp_min(0)
        if candidates is not None:
            y = y * candidates.to(y.device, y.dtype)
        y = y / y.sum(1, keepdim=True).clamp_min(1e-12)
        if cfg.background_index is not None and cfg.background_power != 1.0:
            y = y.clone()
            y[:, cfg.background_index] = y[:, cfg.background_index] ** cfg.background_power
        return y

    def fit(
        self,
        embeddings: torch.Tensor,
        areas: torch.Tensor | None,
        seeds: torch.Tensor,
        *,
        candidates: torch.Tensor | None = None,
        text_embeddings: torch.Tensor | None = None,
        num_classes: int | None = None,
        knn: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> GLCC:
        """Fit on all training masks.

        ``embeddings`` (N, D); ``areas`` (N,) pixel areas (None = equal); ``seeds`` (N, C) soft or
        hard labels with all-zero rows for unlabelled masks, or (N,) integer labels with −1 for
        none; ``candidates`` (N, C) bool restricts each mask's classes (WSSS image labels);
        ``text_embeddings`` (C, D) initialise the probe; ``num_classes`` sizes integer seeds (default:
        the text embeddings' count, else the largest label + 1). The kNN search over the masks is
        the costly step: it runs once, at the largest k of the rounds, and every round's graph
        takes its first k columns; ``knn`` (from :meth:`LabelPropagator.neighbours` with at least
        that k) skips it altogether.
        """
        cfg = self.config
        if num_classes is None and text_embeddings is not None:
            num_classes = text_embeddings.shape[0]
        y0 = _as_soft(seeds, embeddings.shape[0], num_classes)
        y0 = y0.to(embeddings.device)
        if candidates is not None:
            candidates = candidates.to(embeddings.device, torch.bool)
            y0 = y0 * candidates
        self.history = []
        if not cfg.rounds:
            raise InputError(f"the {cfg.setting} setting needs at least one round")
        if knn is None or knn[0].shape[1] < min(max(r.lp.k for r in cfg.rounds), embeddings.shape[0] - 1):
            knn = self.neighbours(embeddings)

        if cfg.setting == "fsss":
            lp_cfg = cfg.rounds[0].lp
            _, degree, k = LabelPropagator(lp_cfg).graph(embeddings, knn)
            y_star = self._seed(y0, candidates)
            self.probe = LinearProbe(cfg.probe).fit(embeddings, y0, areas, text_embeddings, self.progress)
            self._set_inductive(embeddings, y_star, degree.float(), k, lp_cfg)
            return self

        if cfg.setting == "sss":
            lp_cfg = cfg.rounds[0].lp
            res = LabelPropagator(lp_cfg)(embeddings, y0, knn)
            self.history.append(res)
            y_star = self._seed(res.scores, candidates)
            self.probe = LinearProbe(cfg.probe).fit(embeddings, y_star, areas, text_embeddings, self.progress)
            self._set_inductive(embeddings, y_star, res.degree, res.k, lp_cfg)
            return self

        if cfg.setting != "wsss":
            raise InputError(f"unknown GLCC setting {cfg.setting!r}; use 'fsss', 'sss' or 'wsss'")
        y = y0
        y_star = res = None
        for rnd in cfg.rounds:
            res = LabelPropagator(rnd.lp)(embeddings, y, knn)
            self.history.append(res)
            y_star = self._seed(res.scores, candidates)
            if rnd.probe is not None:
                soft = _masked_softmax(cfg.label_scale * y_star, candidates)
                self.probe = LinearProbe(rnd.probe).fit(embeddings, soft, areas, text_embeddings, self.progress)
                y = self.probe.scores(embeddings, candidates)  # the next LP starts from the probe
        if self.probe is None:  # a chain without any probe: train the default one on the last LP
            soft = _masked_softmax(cfg.label_scale * y_star, candidates)
            self.probe = LinearProbe(cfg.probe).fit(embeddings, soft, areas, text_embeddings, self.progress)
        self._set_inductive(embeddings, y_star, res.degree, res.k, cfg.rounds[-1].lp)
        return self

    def neighbours(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The kNN search every round of this GLCC can share (at the rounds' largest k)."""
        rounds = self.config.rounds
        return LabelPropagator(rounds[0].lp).neighbours(embeddings, max(r.lp.k for r in rounds))

    def _set_inductive(self, embeddings, y_star, degree, k, lp_cfg: LPConfig) -> None:
        self.train_scores = y_star
        self.lp_classifier = LPClassifier(
            embeddings, y_star, degree, k, self.config.inductive, knn_backend=lp_cfg.knn_backend
        )

    def predict_parts(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inductive LP scores, probe softmax scores), each (M, C), before weighting."""
        if self.probe is None or self.lp_classifier is None:
            raise RuntimeError("GLCC.fit must run before predict")
        return self.lp_classifier(embeddings), self.probe.scores(embeddings)

    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Per-class scores (M, C): w_LP · inductive LP + 1 · probe softmax, suppressed classes zeroed (§1.5 v)."""
        lp, probe = self.predict_parts(embeddings)
        lp = self.config.lp_weight * lp
        eps = self.config.suppress_eps
        out = lp + probe
        return out.masked_fill((lp < eps) | (probe < eps), 0.0)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-ready settings) that :meth:`from_state` turns back into a fitted classifier."""
        if self.probe is None or self.probe.weight is None or self.lp_classifier is None:
            raise RuntimeError("GLCC.fit must run before state")
        lpc = self.lp_classifier
        tensors = {"probe_weight": self.probe.weight, "keys": lpc.keys, "y_star": lpc.y_star}
        if lpc.degree is not None:
            tensors["degree"] = lpc.degree
        meta = {"setting": self.config.setting, "probe_logit_scale": self.probe.config.logit_scale,
                "graph_k": lpc.graph_k, "inductive": asdict(lpc.config), "lp_weight": self.config.lp_weight,
                "suppress_eps": self.config.suppress_eps, "knn_backend": lpc.knn_backend}  # fmt: skip
        return {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> GLCC:
        try:
            glcc = cls(replace(GLCCConfig(), setting=meta["setting"], lp_weight=float(meta["lp_weight"]),
                               suppress_eps=float(meta["suppress_eps"])))  # fmt: skip
            glcc.probe = LinearProbe(ProbeConfig(logit_scale=float(meta["probe_logit_scale"])))
            glcc.probe.weight = tensors["probe_weight"].float()
            glcc.lp_classifier = LPClassifier(tensors["keys"], tensors["y_star"], tensors.get("degree"),
                                              int(meta["graph_k"]), InductiveConfig(**meta["inductive"]),
                                              knn_backend=meta.get("knn_backend", "auto"))  # fmt: skip
        except (KeyError, TypeError) as e:
            raise InputError(f"not a complete GLCC state (missing or wrong {e}); refit with `ovss fit tuss`") from None
        glcc.train_scores = glcc.lp_classifier.y_star
        return glcc


def _bar(total: int, desc: str, enabled: bool):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="it", disable=not enabled, mininterval=1.0, file=sys.stderr)


def _real(t: torch.Tensor) -> torch.Tensor:
    """float64 stays float64 (exact tests); anything else computes in float32."""
    return t if t.dtype == torch.float64 else t.float()


def _as_soft(seeds: torch.Tensor, n: int, n_cls: int | None) -> torch.Tensor:
    if seeds.shape[0] != n:
        raise InputError(f"{n} embeddings but {seeds.shape[0]} seed rows")
    if seeds.ndim == 2:
        return seeds.float()
    if seeds.ndim == 1 and not seeds.is_floating_point():
        n_cls = n_cls if n_cls is not None else int(seeds.max()) + 1
        out = torch.zeros(n, n_cls, device=seeds.device)
        has = seeds >= 0
        out[has.nonzero().squeeze(1), seeds[has].long()] = 1.0
        return out
    raise InputError("seeds must be (N, C) scores or (N,) integer labels with -1 for unlabelled")
