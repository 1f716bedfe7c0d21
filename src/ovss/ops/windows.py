"""Sliding-window inference with the exact grid rule of the mmseg protocol (docs/reference-protocol.md §5.3)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def window_grid(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)``; the last row/column is shifted back to end at the border."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


def slide(
    pixels: torch.Tensor,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    window: tuple[int, int] | None,
    batch_size: int = 8,
    pad_to: int | None = None,
    with_boxes: bool = False,
) -> torch.Tensor:
    """Average per-window score maps over the image.

    ``pixels`` is ``(3, H, W)``; ``score_fn`` maps ``(B, 3, h, w)`` windows to ``(B, Q, h', w')``
    scores at the token grid, which are bilinearly upsampled to the window size. ``window`` is
    ``(crop, stride)`` or ``None`` for one whole-image pass. ``pad_to`` zero-pads each window
    symmetrically to a multiple of that size first and crops the scores back (ClearCLIP, ProxyCLIP).
    ``with_boxes`` also passes each batch's ``(y1, y2, x1, x2)`` windows, for per-window inputs
    such as TUSS's mask bias.
    """
    _, height, width = pixels.shape
    boxes = [(0, height, 0, width)] if window is None else window_grid(height, width, *window)
    total: torch.Tensor | None = None
    count = torch.zeros(1, height, width)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        crops = torch.stack([pixels[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        fn = (lambda b, chunk=chunk: score_fn(b, chunk)) if with_boxes else score_fn  # type: ignore[call-arg]
        scores = _window_scores(crops, fn, pad_to)
        if total is None:
            total = torch.zeros(scores.shape[1], height, width)
        for (y1, y2, x1, x2), s in zip(chunk, scores):
            total[:, y1:y2, x1:x2] += s
            count[:, y1:y2, x1:x2] += 1
    assert total is not None and bool((count > 0).all())
    return total / count


def _window_scores(crops: torch.Tensor, score_fn: Callable, pad_to: int | None) -> torch.Tensor:
    h, w = crops.shape[-2:]
    if pad_to:
        ph, pw = (-h) % pad_to, (-w) % pad_to
        top, left = ph // 2, pw // 2
        padded = F.pad(crops, (left, pw - left, top, ph - top))
        scores = score_fn(padded).float()
        scores = F.interpolate(scores, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return scores[..., top : top + h, left : left + w].cpu()
    scores = score_fn(crops).float()
    return F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=False).cpu()
