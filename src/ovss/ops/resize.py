"""Resizing rules of the reference pipelines and exact, memory-bounded bilinear upsampling.

Each reference resizes the uint8 image with its own library, and the results differ by a grey
level on many pixels, so the backend is a choice (see docs/protocol.md):

- ``cv2``: OpenCV ``INTER_LINEAR`` on uint8 (fixed-point), as mmcv's ``imresize``/``imrescale`` do
  in the mmseg test pipelines of SCLIP, NACLIP, ClearCLIP and MaskCLIP;
- ``pil``: PIL ``BILINEAR`` on uint8 (antialiased when shrinking), as detectron2's
  ``ResizeShortestEdge`` does (PixelCLIP);
- ``torch``: ``F.interpolate`` in float, rounded to uint8 levels (ovss's earlier rule).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError

RESIZE_BACKENDS = ("cv2", "pil", "torch")
PIXEL_CONSTANTS = ("mmseg", "unrounded")


def keep_ratio_size(height: int, width: int, short_side: int, long_max: int = 2048) -> tuple[int, int]:
    """mmseg ``Resize(scale=(long_max, short_side), keep_ratio=True)``: the new ``(H, W)``."""
    scale = min(long_max / max(height, width), short_side / min(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _opencv():
    try:
        import cv2
    except ImportError:
        raise InputError(
            "resize_backend 'cv2' needs OpenCV: pip install opencv-python-headless (or set resize_backend='torch')"
        ) from None
    return cv2


def check_resize_backend(backend: str) -> str:
    if backend not in RESIZE_BACKENDS:
        raise InputError(f"resize_backend {backend!r} is unknown; choose one of {', '.join(RESIZE_BACKENDS)}")
    return backend


def resize_image(image: np.ndarray, size: tuple[int, int], backend: str = "torch") -> torch.Tensor:
    """``(H, W, 3) uint8`` -> ``(3, h, w)`` float 0-255, bilinear by ``backend`` (module docstring)."""
    check_resize_backend(backend)
    h, w = size
    if (h, w) == tuple(image.shape[:2]):
        out = image
    elif backend == "cv2":
        cv2 = _opencv()
        out = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_LINEAR)
    elif backend == "pil":
        out = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    else:
        x = torch.tensor(image).permute(2, 0, 1).float().unsqueeze(0)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round_().clamp_(0, 255)
        return x[0]
    return torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1).float()


def pixel_constants(
    mean: tuple[float, ...], std: tuple[float, ...], convention: str = "unrounded"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std on the 0-255 scale as float32 ``(C, 1, 1)`` tensors.

    ``mean``/``std`` are on the 0-1 scale (as model configs give them). ``"mmseg"`` rounds them to
    the 3 decimals that mmseg configs write on the 0-255 scale (OpenAI CLIP: 122.771, 116.746,
    104.094 / 68.501, 66.632, 70.323; ImageNet: 123.675, 116.28, 103.53 / 58.395, 57.12, 57.375);
    ``"unrounded"`` multiplies by 255 in float32.
    """
    if convention not in PIXEL_CONSTANTS:
        raise InputError(f"pixel_constants {convention!r} is unknown; choose one of {', '.join(PIXEL_CONSTANTS)}")
    if convention == "mmseg":
        m = torch.tensor([round(v * 255, 3) for v in mean], dtype=torch.float32)
        s = torch.tensor([round(v * 255, 3) for v in std], dtype=torch.float32)
    else:
        m = torch.tensor(mean, dtype=torch.float32) * 255
        s = torch.tensor(std, dtype=torch.float32) * 255
    return m.view(-1, 1, 1), s.view(-1, 1, 1)


def normalize(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], convention: str = "unrounded"
) -> torch.Tensor:
    """0-255 pixels -> model input, with mean/std given on the 0-1 scale (see :func:`pixel_constants`)."""
    m, s = pixel_constants(mean, std, convention)
    return (pixels - m.to(pixels.dtype)) / s.to(pixels.dtype)


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
