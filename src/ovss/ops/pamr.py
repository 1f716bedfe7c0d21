"""PAMR: pixel-adaptive mask refinement (docs/methods.md §5.7), written for bounded memory.

Each pixel's scores become an affinity-weighted sum of its 8 neighbours at every dilation; the
affinities come from local colour differences scaled by the local standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _shift(x: torch.Tensor, dy: int, dx: int, d: int) -> torch.Tensor:
    """``x[..., y + dy*d, x + dx*d]`` with replicate padding; ``x`` is ``(N, H, W)``."""
    h, w = x.shape[-2:]
    padded = F.pad(x.unsqueeze(0), [d] * 4, mode="replicate")[0]
    return padded[:, d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w]


def pamr(
    image: torch.Tensor, scores: torch.Tensor, iterations: int = 10, dilations: Sequence[int] = (8, 16)
) -> torch.Tensor:
    """Refine ``(C, H, W)`` ``scores`` with the ``(K, H, W)`` ``image`` (same size)."""
    if iterations <= 0:
        return scores
    image = image.float()
    # local std over the 3x3 neighbourhoods (centre included) of all dilations, per channel
    samples = [_shift(image, dy, dx, d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    std = torch.stack(samples).std(dim=0)
    del samples
    logits = torch.stack(
        [
            (-(image - _shift(image, dy, dx, d)).abs() / (1e-8 + 0.1 * std)).mean(dim=0)
            for d in dilations
            for dy, dx in _OFFSETS
        ]
    )
    affinity = logits.softmax(dim=0)  # (8 * len(dilations), H, W)
    neighbours = [(d, dy, dx) for d in dilations for dy, dx in _OFFSETS]
    out = scores.float()
    for _ in range(iterations):
        acc = torch.zeros_like(out)
        for weight, (d, dy, dx) in zip(affinity, neighbours):
            acc += weight * _shift(out, dy, dx, d)
        out = acc
    return out
