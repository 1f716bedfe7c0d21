"""Resizing rules of the mmseg protocol and exact, memory-bounded bilinear upsampling."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def keep_ratio_size(height: int, width: int, short_side: int, long_max: int = 2048) -> tuple[int, int]:
    """mmseg ``Resize(scale=(long_max, short_side), keep_ratio=True)``: the new ``(H, W)``."""
    scale = min(long_max / max(height, width), short_side / min(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``(H, W, 3) uint8`` -> ``(3, h, w)`` float 0-255, bilinear without antialiasing, rounded to
    uint8 levels as OpenCV's resize of a uint8 image does in mmseg's pipeline."""
    x = torch.tensor(image).permute(2, 0, 1).float().unsqueeze(0)
    if tuple(size) != tuple(image.shape[:2]):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round_().clamp_(0, 255)
    return x[0]


def normalize(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """0-255 pixels -> model input, with mean/std given on the 0-1 scale."""
    m = torch.tensor(mean, dtype=pixels.dtype).view(-1, 1, 1) * 255
    s = torch.tensor(std, dtype=pixels.dtype).view(-1, 1, 1) * 255
    return (pixels - m) / s


def bilinear_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """``(out, in)`` matrix ``M`` with ``M @ x`` equal to 1-D bilinear resizing, align_corners=False."""
    scale = in_size / out_size
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = src - lo
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    m[torch.arange(out_size), lo] += 1 - frac
    m[torch.arange(out_size), hi] += frac
    return m.float()


def upsample_rows(scores: torch.Tensor, size: tuple[int, int], rows: slice | None = None) -> torch.Tensor:
    """Bilinearly resize ``(C, h, w)`` to ``(C, H, W)``, or only the output ``rows`` of it.

    Equal to ``F.interpolate(..., mode="bilinear", align_corners=False)`` but computed as two
    small matrix products, so a band of rows of a huge output never needs the whole output.
    """
    my = bilinear_matrix(size[0], scores.shape[-2]).to(scores.device)
    mx = bilinear_matrix(size[1], scores.shape[-1]).to(scores.device)
    if rows is not None:
        my = my[rows]
    return torch.einsum("yh,chw,xw->cyx", my, scores.float(), mx)


def row_bands(height: int, width: int, channels: int, budget: int = 1 << 26):
    """Slices of output rows such that ``channels * rows * width`` stays under ``budget`` floats."""
    step = max(1, budget // max(1, channels * width))
    for start in range(0, height, step):
        yield slice(start, min(height, start + step))
