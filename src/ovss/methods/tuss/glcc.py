"""TUSS GLCC: the global–local consistent classifier over SAM-mask embeddings (docs/methods.md §1.5, §1.6).

Every SAM mask is one embedding with a pixel area; some masks carry (soft or hard) labels.
Two classifiers bootstrap each other:

* global — a cosine linear probe trained with area-weighted soft cross-entropy (§1.5 i);
* local — label propagation on a cosine kNN graph of all training masks, solved by conjugate
  gradient (§1.5 ii), extended to unseen masks by a k̄-nearest-neighbour read-out (§1.5 iii).

:class:`GLCC` chains them (§1.5 iv) and sums the two at prediction time (§1.5 v). Everything runs
in torch on the device of the embeddings; the kNN search is exact (torch, or faiss when asked) unless
LPConfig.knn_index picks an approximate one (ops/labelprop.py).
Clean-room implementation from docs/methods.md (TUSS has no licence).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ...errors import InputError
from ...ops.labelprop import (
    InductiveConfig,
    KNNIndexConfig,
    LabelPropagator,
    LPClassifier,
    LPConfig,
    LPResult,
    conjugate_gradient,
    knn_recall,
    knn_search,
)

__all__ = [
    "GLCC",
    "GLCCConfig",
    "InductiveConfig",
    "KNNIndexConfig",
    "LPClassifier",
    "LPConfig",
    "LPResult",
    "LabelPropagator",
    "LinearProbe",
    "ProbeConfig",
    "RoundConfig",
    "conjugate_gradient",
    "glcc_config",
    "knn_recall",
    "knn_search",
    "probe_lr",
]

Setting = Literal["fsss", "sss", "wsss"]


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeConfig:
    """The global part: a cosine linear probe on frozen mask embeddings (docs/methods.md §1.5 i)."""

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
    schedule: Literal["epochs", "fixed"] = "epochs"
    """"epochs": the counts scale with the number of training masks, so that a bank of ``reference_masks``
    gets exactly the reference's counts and a small bank a few seconds [our choice]; "fixed": the
    reference's counts whatever the bank (§1.5 i)."""
    reference_masks: int = 614_400
    """The bank the reference counts are made for: 60k steps of 512 masks is 50 epochs over 614,400 masks."""
    min_iters: int = 200
    """Fewest steps under "epochs" (a tiny bank still converges)."""

    @property
    def total_iters(self) -> int:
        """The reference's fixed count (``schedule="fixed"``)."""
        return max(1, round(self.base_iters / self.iter_factor))

    @property
    def warmup_iters(self) -> int:
        return min(self.total_iters, round(self.base_warmup_iters / self.iter_factor))

    def iterations(self, n_masks: int | None = None) -> tuple[int, int]:
        """(steps, warm-up steps) for a probe trained on ``n_masks`` masks."""
        if self.schedule == "fixed" or n_masks is None:
            return self.total_iters, self.warmup_iters
        share = n_masks / self.reference_masks
        total = min(self.total_iters, max(self.min_iters, round(self.total_iters * share)))
        return total, min(total, round(self.warmup_iters * total / self.total_iters))


@dataclass(frozen=True)
class RoundConfig:
    """One bootstrapping round (docs/methods.md §1.5 iv): an LP, then optionally a probe trained on its output."""

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
    """The whole GLCC: setting, bootstrapping chain, inductive read-out and combination (docs/methods.md §1.5–1.6)."""

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


def probe_lr(iteration: int, config: ProbeConfig, n_masks: int | None = None) -> float:
    """Learning rate of step ``iteration`` (0-based): linear warm-up, then cosine decay to 0 (§1.5 i)."""
    total, warm = config.iterations(n_masks)
    if iteration < warm:
        return config.warmup_start_lr + (config.lr - config.warmup_start_lr) * iteration / warm
    span = max(total - warm, 1)
    return 0.5 * config.lr * (1 + math.cos(math.pi * (iteration - warm) / span))


class LinearProbe:
    """Cosine linear probe: logits = scale · normalize(x) · normalize(W)ᵀ, no bias (docs/methods.md §1.5 i)."""

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
        steps, _ = cfg.iterations(m)
        bar = _bar(steps, "probe", progress)
        for it in range(steps):
            if pos + batch > m:  # reshuffle each epoch, dropping the incomplete last batch
                order, pos = torch.randperm(m, generator=gen), 0
            sel = order[pos : pos + batch].to(device)
            pos += batch
            for group in opt.param_groups:
                group["lr"] = probe_lr(it, cfg, m)
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
    """Global–local consistent classifier with mutual bootstrapping (docs/methods.md §1.5, §1.6).

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
        y_star: Any = None  # type: ignore[no-redef]
        res: Any = None  # type: ignore[no-redef]
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
        meta = {
            "setting": self.config.setting,
            "probe_logit_scale": self.probe.config.logit_scale,
            "graph_k": lpc.graph_k,
            "inductive": asdict(lpc.config),
            "lp_weight": self.config.lp_weight,
            "suppress_eps": self.config.suppress_eps,
            "knn_backend": lpc.knn_backend,
        }
        return {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> GLCC:
        try:
            glcc = cls(
                replace(
                    GLCCConfig(),
                    setting=meta["setting"],
                    lp_weight=float(meta["lp_weight"]),
                    suppress_eps=float(meta["suppress_eps"]),
                )
            )
            glcc.probe = LinearProbe(ProbeConfig(logit_scale=float(meta["probe_logit_scale"])))
            glcc.probe.weight = tensors["probe_weight"].float()
            glcc.lp_classifier = LPClassifier(
                tensors["keys"],
                tensors["y_star"],
                tensors.get("degree"),
                int(meta["graph_k"]),
                InductiveConfig(**meta["inductive"]),
                knn_backend=meta.get("knn_backend", "auto"),
            )
        except (KeyError, TypeError) as e:
            raise InputError(f"not a complete GLCC state (missing or wrong {e}); refit with `ovss fit tuss`") from None
        glcc.train_scores = glcc.lp_classifier.y_star
        return glcc


def _bar(total: int, desc: str, enabled: bool):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="it", disable=not enabled, mininterval=1.0, file=sys.stderr)


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
