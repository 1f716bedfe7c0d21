"""PAMR: pixel-adaptive mask refinement (docs/methods.md §5.7), written for bounded memory.

Each pixel's scores become an affinity-weighted sum of its 8 neighbours at every dilation; the
affinities come from local colour differences scaled by the local standard deviation.

A refined row depends only on rows within ``iterations * max(dilations)`` of it (each iteration
reaches ``max(dilations)`` further, and the affinities need ``max(dilations)``), and each query
channel is refined on its own: :func:`pamr_rows` refines a band of rows from that band plus this
halo, a few query channels at a time, and gives exactly the rows :func:`pamr` gives for the whole map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _shift(x: torch.Tensor, dy: int, dx: int, d: int) -> torch.Tensor:
    """``x[..., y + dy*d, x + dx*d]`` with replicate padding; ``x`` is ``(N, H, W)``."""
    h, w = x.shape[-2:]
    padded = F.pad(x.unsqueeze(0), [d] * 4, mode="replicate")[0]
    return padded[:, d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w]


def halo(iterations: int, dilations: Sequence[int]) -> int:
    """Rows on each side of a band that its refined rows depend on."""
    return iterations * max(dilations) if iterations > 0 else 0


def affinity(image: torch.Tensor, dilations: Sequence[int] = (8, 16)) -> torch.Tensor:
    """``(8 * len(dilations), H, W)`` neighbour weights of the ``(K, H, W)`` guide ``image``."""
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
    return logits.softmax(dim=0)


def refine(weights: torch.Tensor, scores: torch.Tensor, iterations: int, dilations: Sequence[int]) -> torch.Tensor:
    """``iterations`` PAMR steps of ``(C, H, W)`` ``scores`` with the :func:`affinity` ``weights``."""
    neighbours = [(d, dy, dx) for d in dilations for dy, dx in _OFFSETS]
    out = scores.float()
    del scores  # a caller's temporary is freed after the first step
    for _ in range(iterations):
        acc = torch.zeros_like(out)
        for weight, (d, dy, dx) in zip(weights, neighbours):
            acc += weight * _shift(out, dy, dx, d)
        out = acc
    return out


def pamr(
    image: torch.Tensor, scores: torch.Tensor, iterations: int = 10, dilations: Sequence[int] = (8, 16)
) -> torch.Tensor:
    """Refine ``(C, H, W)`` ``scores`` with the ``(K, H, W)`` ``image`` (same size)."""
    if iterations <= 0:
        return scores
    return refine(affinity(image, dilations), scores, iterations, dilations)


def pamr_rows(
    image: torch.Tensor,
    scores: Callable[[slice, slice], torch.Tensor],
    channels: int,
    rows: slice,
    iterations: int = 10,
    dilations: Sequence[int] = (8, 16),
    chunk: int | None = None,
) -> torch.Tensor:
    """Rows ``rows`` of ``pamr(image, full_scores)`` as ``(channels, rows, W)``, holding only the band plus its halo.

    ``scores(channel_slice, row_slice)`` returns those rows of the full-resolution ``(channels, H, W)``
    score map; ``chunk`` query channels are refined at a time (all when None).
    """
    height = image.shape[-2]
    reach = halo(iterations, dilations)
    top, bottom = max(0, rows.start - reach), min(height, rows.stop + reach)
    weights = affinity(image[:, top:bottom], dilations)
    inner = slice(rows.start - top, rows.stop - top)
    step = chunk or channels
    if step >= channels:  # the whole map at once: no copy of the result
        return refine(weights, scores(slice(0, channels), slice(top, bottom)), iterations, dilations)[:, inner]
    out = torch.empty(channels, rows.stop - rows.start, image.shape[-1], device=image.device)
    for start in range(0, channels, step):
        queries = slice(start, min(channels, start + step))
        out[queries] = refine(weights, scores(queries, slice(top, bottom)), iterations, dilations)[:, inner]
    return out
