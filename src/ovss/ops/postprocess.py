"""The SCLIP-family post-processing as one function (docs/methods.md §0.4f).

Raw cosine scores per query -> logit scale -> softmax over all queries -> a class's probability
is the max over its synonyms -> optional ``area_thd`` -> argmax -> pixels under ``prob_thd``
become class 0 (background, when there is one). Runs in bands of rows so huge images stay within memory.

NACLIP's segmentor (sinahmr/NACLIP ``naclip.py``, ``postprocess_result``) then divides the
returned class probabilities by their sum over classes, after the labels are taken; with
``renormalize=True`` the returned probabilities do the same (labels are unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

BandFn = Callable[[slice], torch.Tensor]  # output rows -> (Q, rows, W) raw scores


def class_probabilities(scores: torch.Tensor, query_class: torch.Tensor, num_classes: int, logit_scale: float):
    """``(Q, ...)`` raw scores -> ``(C, ...)`` class probabilities (synonym max after softmax).

    Queries owned by no class (``query_class == -1``) still take part in the softmax.
    """
    probs = (scores.float() * logit_scale).softmax(dim=0)
    out = probs.new_zeros((num_classes, *probs.shape[1:]))
    for c in range(num_classes):
        members = (query_class == c).nonzero().flatten()
        if len(members):
            out[c] = probs[members].amax(dim=0)
    return out


def postprocess(
    band_scores: BandFn,
    size: tuple[int, int],
    query_class: Sequence[int],
    num_classes: int,
    *,
    logit_scale: float,
    prob_thd: float = 0.0,
    area_thd: float | None = None,
    has_background: bool = False,
    bands: Sequence[slice] | None = None,
    return_probs: bool = False,
    renormalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels ``(H, W)`` (int64) and, if asked, class probabilities ``(C, H, W)``."""
    height, width = size
    qc = torch.as_tensor(list(query_class))
    bands = list(bands) if bands is not None else [slice(0, height)]
    first = 1 if has_background else 0  # area_thd acts on foreground classes only
    keep = torch.ones(num_classes, dtype=torch.bool)
    kept: torch.Tensor | None = None  # one band (the usual case): reuse its probabilities
    if area_thd is not None:
        counts = torch.zeros(num_classes, dtype=torch.float64)
        for rows in bands:
            probs = class_probabilities(band_scores(rows), qc, num_classes, logit_scale)
            counts += torch.bincount(probs.argmax(0).flatten(), minlength=num_classes).double()
            kept = probs if len(bands) == 1 else None
        fg = counts[first:]
        keep[first:] = fg > area_thd * fg.sum()
    labels = torch.empty(height, width, dtype=torch.long)
    full = torch.empty(num_classes, height, width) if return_probs else None
    for rows in bands:
        probs = kept if kept is not None else class_probabilities(band_scores(rows), qc, num_classes, logit_scale)
        probs[~keep] = 0
        best, lab = probs.max(dim=0)
        if has_background:  # without a background class there is nothing to fall back to
            lab[best < prob_thd] = 0
        labels[rows] = lab
        if full is not None:
            full[:, rows] = probs / probs.sum(dim=0, keepdim=True) if renormalize else probs
    return labels, full
