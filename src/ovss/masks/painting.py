"""Mask-level labelling shared by methods that classify whole masks: paint masks with their best
class in a chosen order, and count the labelled pixels of each class inside each mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .maskset import MaskSet

IGNORE = 255


def paint(masks: torch.Tensor, levels: Sequence[int], scores: torch.Tensor, fill: np.ndarray) -> np.ndarray:
    """Paint each mask with its argmax class over ``scores`` (C, N), in ascending (level, confidence)
    order, so whole and sure masks are painted last (TUSS's order); ``fill`` holds the unpainted pixels."""
    labels = fill.astype(np.int32, copy=True)
    if len(masks) == 0:
        return labels
    conf, label = scores.max(0)
    for i in sorted(range(len(masks)), key=lambda i: (levels[i], float(conf[i]))):
        labels[masks[i].numpy()] = int(label[i])
    return labels


def mask_levels(maskset: MaskSet) -> list[int]:
    """SAM's multimask level per mask (0 sub-part, 1 part, 2 whole); masks without one count as whole."""
    return [2 if r.get("level") is None else int(r["level"]) for r in maskset]


def votes(masks: torch.Tensor, label: np.ndarray, num_classes: int) -> torch.Tensor:
    """(N, C): the fraction of each class among a mask's labelled pixels (``IGNORE`` pixels left out)."""
    lab = torch.from_numpy(label).long().flatten()
    known = lab != IGNORE
    onehot = F.one_hot(lab.clamp(max=num_classes - 1), num_classes).float() * known[:, None]
    counts = masks.flatten(1).float() @ onehot
    return counts / counts.sum(1, keepdim=True).clamp(min=1)
