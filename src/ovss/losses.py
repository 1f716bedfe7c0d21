"""Supervised contrastive losses over patch embeddings: SupCon, FMbSeg's TSupCon and its l_t term.

docs/methods.md §3.6. ``z`` are L2-normalised patch embeddings ``(M, D)`` with pseudo-classes ``y``;
``t`` are the frozen, L2-normalised text embeddings ``(K, D)`` of the whole training vocabulary.
Every dot product is divided by the temperature ``tau`` (L1). The reconstruction choices L2-L6
are the keyword arguments; the defaults are the register's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError

LOSSES = ("tsupcon", "supcon", "text", "ce")


@dataclass(frozen=True)
class ContrastiveTerms:
    """Per-term sums and counts, so callers can log the parts of the loss."""

    text_sum: torch.Tensor  # sum over present classes of l_t(t_k)
    text_count: int
    image_sum: torch.Tensor  # sum over anchors of l_im(z_i)
    image_count: int


def contrastive_terms(
    z: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor,
    tau: float = 0.07,
    literal: bool = False,
    present_texts_only: bool = False,
) -> ContrastiveTerms:
    """The two TSupCon terms, vectorised over all patches of the batch."""
    m = z.shape[0]
    k = t.shape[0]
    if y.numel() != m or (m and (int(y.min()) < 0 or int(y.max()) >= k)):
        raise InputError(f"patch labels must lie in [0, {k}) and match the {m} embeddings")
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    zz = (z @ z.T) / tau
    zt = (z @ t.T) / tau
    if present_texts_only:  # L4 alternative: only the classes of this batch in the denominator
        zt = zt.masked_fill(~torch.isin(torch.arange(k, device=z.device), y)[None], float("-inf"))
    zz_others = zz.masked_fill(eye, float("-inf"))  # j != i everywhere

    # patch-text term: positive = own class text; denominator = all texts + all other patches
    log_den_t = torch.logsumexp(torch.cat([zt, zz_others], dim=1), dim=1)
    per_patch_t = -zt.gather(1, y[:, None])[:, 0] + log_den_t
    present, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    per_class_t = torch.zeros(len(present), dtype=z.dtype, device=z.device).index_add_(0, inverse, per_patch_t)
    text_sum = (per_class_t / counts).sum()

    # patch-patch term (SupCon): positives = same-class patches; denominator = other patches
    same = y[:, None] == y[None, :]
    positives = same if literal else same & ~eye
    log_den_im = torch.logsumexp(zz_others, dim=1)
    # -z_i.z_l + log den, summed over positives l (l = i included only when literal)
    pos_sum = -(zz * positives).sum(1) + positives.sum(1) * log_den_im
    n_pos = positives.sum(1)
    if literal:
        # divide by N_{y_i} (the class count, which includes i itself)
        per_anchor = pos_sum / counts[inverse]
        valid = torch.ones(m, dtype=torch.bool, device=z.device)
    else:
        valid = n_pos > 0  # anchors with no other positive contribute nothing (L2)
        per_anchor = pos_sum / n_pos.clamp(min=1)
    image_sum = per_anchor[valid].sum()
    return ContrastiveTerms(text_sum, len(present), image_sum, int(valid.sum()))


def tsupcon_loss(
    z: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor,
    tau: float = 0.07,
    literal: bool = False,
    present_texts_only: bool = False,
    text_weight: float = 1.0,
) -> torch.Tensor:
    """TSupCon = (sum_k l_t(t_k) + sum_i l_im(z_i)) / normaliser (L5: terms summed, or B*N + K)."""
    terms = contrastive_terms(z, y, t, tau, literal, present_texts_only)
    norm = (z.shape[0] + t.shape[0]) if literal else max(1, terms.text_count + terms.image_count)
    return (text_weight * terms.text_sum + terms.image_sum) / norm


def supcon_loss(z: torch.Tensor, y: torch.Tensor, tau: float = 0.07, literal: bool = False) -> torch.Tensor:
    """Patch-patch SupCon alone (the l_im term; the ablation's "SupCon" row, our reading)."""
    dummy = torch.zeros(int(y.max()) + 1 if y.numel() else 1, z.shape[1], dtype=z.dtype, device=z.device)
    terms = contrastive_terms(z, y, dummy, tau, literal)
    return terms.image_sum / max(1, terms.image_count)


def text_loss(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor, tau: float = 0.07, **kwargs) -> torch.Tensor:
    """The patch-text term l_t alone, averaged over the classes present (the ablation's l_t row)."""
    terms = contrastive_terms(z, y, t, tau, **kwargs)
    return terms.text_sum / max(1, terms.text_count)


def text_ce_loss(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Plain cross-entropy of patches against the class texts (a baseline, not in the paper)."""
    return torch.nn.functional.cross_entropy((z @ t.T) / tau, y)


def loss_by_name(name: str, z: torch.Tensor, y: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
    if name == "tsupcon":
        return tsupcon_loss(z, y, t, **kwargs)
    if name == "supcon":
        return supcon_loss(z, y, kwargs.get("tau", 0.07), kwargs.get("literal", False))
    if name == "text":
        return text_loss(z, y, t, **{k: v for k, v in kwargs.items() if k != "text_weight"})
    if name == "ce":
        return text_ce_loss(z, y, t, kwargs.get("tau", 0.07))
    raise InputError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
