"""Reading label PNGs as class indices, and the ``reduce_zero_label`` encoding."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError

IGNORE_INDEX = 255

# PIL modes whose pixel values are class indices. Palette ('P') images are read as their palette
# *indices* (VOC, labelme): never convert them to RGB and look colours up.
_INDEX_MODES = ("P", "L", "I;16", "I;16L", "I;16B", "I")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Return the class indices stored in a label image as an ``(H, W) int64`` array.

    Palette PNGs give their palette indices, greyscale PNGs their values. Colour (RGB) images are
    refused: a colour-coded mask is not a label map.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: label file not found")
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in _INDEX_MODES:
                hint = (
                    " (a colour-coded mask; labels must be palette-indexed or greyscale PNGs)" if "RGB" in mode else ""
                )
                raise InputError(f"{path}: label image has mode {mode}{hint}; expected class indices (P or L mode)")
            arr = np.asarray(im)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: not a readable label image ({str(e).splitlines()[0][:120]})") from None
    if arr.ndim != 2:
        raise InputError(f"{path}: label image has shape {arr.shape}; expected one channel")
    return arr.astype(np.int64)


def reduce_zero_label(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """mmseg ``reduce_zero_label``: 0 -> ignore, k -> k - 1, ignore stays ignore."""
    out = label.astype(np.int64) - 1
    out[(label == 0) | (label == ignore_index)] = ignore_index
    return out


def check_label_values(label: np.ndarray, num_classes: int, path: Path, what: str, ignore_index: int = IGNORE_INDEX):
    """Raise an InputError if ``label`` holds values other than 0..num_classes-1 and ``ignore_index``."""
    bad = (label != ignore_index) & ((label < 0) | (label >= num_classes))
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise InputError(
            f"{path}: label values {shown} are outside 0..{num_classes - 1} and {ignore_index}; "
            f"is this a {what} label file in the expected encoding?"
        )
