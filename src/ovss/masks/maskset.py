"""The one output type of every mask generator: a list of mask records plus the image size.

A :class:`MaskSet` behaves like the list of dicts Meta's ``SamAutomaticMaskGenerator``
returns (``len``, indexing, iteration), with the same keys: ``segmentation`` (an ``(H, W)``
bool array or a COCO RLE dict), ``area``, ``bbox`` (XYWH, Meta's inclusive convention),
``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box`` (XYWH), plus ``level``:
the multimask output index (0 sub-part, 1 part, 2 whole; ``None`` for single-mask output and
for masks that do not come from SAM). Fields a generator cannot fill are ``None``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from . import amg

FORMAT = "ovss-masks/1"


class MaskSet(Sequence):
    def __init__(self, records: list[dict[str, Any]], image_size: tuple[int, int], info: dict[str, Any] | None = None):
        self.records = list(records)
        self.image_size = (int(image_size[0]), int(image_size[1]))  # (H, W)
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return MaskSet(self.records[index], self.image_size, self.info)
        return self.records[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __repr__(self) -> str:
        return f"MaskSet({len(self)} masks, image {self.image_size[1]}x{self.image_size[0]})"

    # -- masks as arrays
    def mask(self, i: int) -> np.ndarray:
        seg = self.records[i]["segmentation"]
        return seg if isinstance(seg, np.ndarray) else amg.rle_decode(seg)

    def masks(self) -> np.ndarray:
        """``(N, H, W)`` bool."""
        if not self.records:
            return np.zeros((0, *self.image_size), dtype=bool)
        return np.stack([self.mask(i) for i in range(len(self))])

    def instance_map(self, order: str = "area") -> np.ndarray:
        """``(H, W)`` int32 map of mask ids (index + 1; 0 = no mask). Masks are painted largest
        first (``order="area"``) so smaller masks stay visible, or in list order (``"list"``)."""
        out = np.zeros(self.image_size, dtype=np.int32)
        idx = range(len(self))
        if order == "area":
            idx = sorted(idx, key=lambda i: -int(self.records[i]["area"]))
        for i in idx:
            out[self.mask(i)] = i + 1
        return out

    # -- files
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; segmentations become compressed COCO RLE (pycocotools-compatible)."""
        anns = []
        for i, rec in enumerate(self.records):
            seg = rec["segmentation"]
            if isinstance(seg, np.ndarray):
                seg = amg.to_coco_rle(amg.rle_encode(seg[None])[0])
            elif isinstance(seg.get("counts"), list):
                seg = amg.to_coco_rle(seg)
            anns.append({**rec, "segmentation": seg, "id": i})
        return {"format": FORMAT, "image_size": list(self.image_size), "info": self.info, "masks": anns}

    def save_json(self, path: str | os.PathLike) -> None:
        from ..io import write_json

        write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any] | str | os.PathLike) -> MaskSet:
        if not isinstance(data, dict):
            try:
                data = json.loads(Path(data).read_text())
            except (OSError, ValueError) as e:
                raise InputError(f"{data}: not a readable mask file ({e})") from None
        if data.get("format") != FORMAT:
            raise InputError(f"not an ovss mask file (format {data.get('format')!r}, expected {FORMAT!r})")
        records = [{k: v for k, v in m.items() if k != "id"} for m in data["masks"]]
        return cls(records, tuple(data["image_size"]), data.get("info"))

    def preview(self, image: np.ndarray | None = None, alpha: float = 0.55, seed: int = 0):
        """A PIL image: each mask in a random colour (largest first) over the photo or black."""
        from PIL import Image

        h, w = self.image_size
        ids = self.instance_map()
        rng = np.random.default_rng(seed)
        colours = np.concatenate([[[0, 0, 0]], rng.integers(40, 256, (len(self), 3))]).astype(np.uint8)
        painted = colours[ids]
        if image is None:
            return Image.fromarray(painted)
        base = np.asarray(image, dtype=np.float32)[..., :3]
        if base.shape[:2] != (h, w):
            raise InputError(f"preview image is {base.shape[1]}x{base.shape[0]}, masks are {w}x{h}")
        mix = np.where((ids > 0)[..., None], (1 - alpha) * base + alpha * painted, base)
        return Image.fromarray(np.clip(mix + 0.5, 0, 255).astype(np.uint8))
