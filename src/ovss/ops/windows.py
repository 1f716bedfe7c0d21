"""Sliding-window inference with the exact grid rule of the mmseg protocol (docs/reference-protocol.md §5.3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    return _slide([pixels], score_fn, window, batch_size, pad_to, with_boxes)[0]


def slide_many(
    images: Sequence[torch.Tensor],
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    window: tuple[int, int] | None,
    batch_size: int = 8,
    pad_to: int | None = None,
) -> list[torch.Tensor]:
    """:func:`slide` over several images at once: windows of consecutive images share forward
    passes of ``batch_size`` windows (fuller batches), and each image's scores are summed in the
    same window order as :func:`slide` sums them."""
    return _slide(images, score_fn, window, batch_size, pad_to, False)


def _slide(
    images: Sequence[torch.Tensor],
    score_fn: Callable,
    window: tuple[int, int] | None,
    batch_size: int,
    pad_to: int | None,
    with_boxes: bool,
) -> list[torch.Tensor]:
    jobs = []  # (image index, window box) in slide's order
    for i, pixels in enumerate(images):
        _, height, width = pixels.shape
        boxes = [(0, height, 0, width)] if window is None else window_grid(height, width, *window)
        jobs += [(i, box) for box in boxes]
    totals: list[torch.Tensor | None] = [None] * len(images)
    counts = [torch.zeros(1, *pixels.shape[-2:]) for pixels in images]

    def run(chunk: list[tuple[int, tuple[int, int, int, int]]]) -> None:
        crops = torch.stack([images[i][:, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in chunk])
        boxes = [box for _, box in chunk]
        fn = (lambda b: score_fn(b, boxes)) if with_boxes else score_fn
        scores = _window_scores(crops, fn, pad_to)
        for (i, (y1, y2, x1, x2)), s in zip(chunk, scores):
            total = totals[i]
            if total is None:
                total = totals[i] = torch.zeros(s.shape[0], *images[i].shape[-2:])
            total[:, y1:y2, x1:x2] += s
            counts[i][:, y1:y2, x1:x2] += 1

    chunk: list[tuple[int, tuple[int, int, int, int]]] = []
    for job in jobs:
        # one batch holds windows of one size (images smaller than the crop give smaller windows)
        if chunk and (len(chunk) == batch_size or _size(job[1]) != _size(chunk[0][1])):
            run(chunk)
            chunk = []
        chunk.append(job)
    if chunk:
        run(chunk)
    out = []
    for total, count in zip(totals, counts):
        assert total is not None and bool((count > 0).all())
        out.append(total / count)
    return out


def _size(box: tuple[int, int, int, int]) -> tuple[int, int]:
    y1, y2, x1, x2 = box
    return y2 - y1, x2 - x1


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
