"""The generator's working set of candidate masks: one list of fields, filtered and joined together.

Every field has one entry per mask; :meth:`MaskData.select` and :meth:`MaskData.cat` keep them in
step, so a new field is added here once (the role of Meta's ``MaskData`` in segment-anything).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch


@dataclass
class MaskData:
    rles: list[dict[str, Any]] = field(default_factory=list)  # uncompressed RLE at full image size
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))  # XYXY
    iou: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # predicted IoU
    stability: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # the prompt point, image pixels
    levels: list[int | None] = field(default_factory=list)  # multimask output index, None for single output
    crop_boxes: list[list[int]] = field(default_factory=list)  # XYXY of the crop each mask came from

    @classmethod
    def empty(cls) -> MaskData:
        return cls()

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, keep: torch.Tensor | list[int]) -> MaskData:
        """The masks at the indices ``keep``, every field alike."""
        index = torch.as_tensor(keep, dtype=torch.long)
        k = index.tolist()
        return MaskData(
            [self.rles[i] for i in k],
            self.boxes[index],
            self.iou[index],
            self.stability[index],
            self.points[k] if k else np.zeros((0, 2)),
            [self.levels[i] for i in k],
            [self.crop_boxes[i] for i in k],
        )

    @classmethod
    def cat(cls, parts: list[MaskData]) -> MaskData:
        if not parts:
            return cls.empty()
        joined: dict[str, Any] = {}
        for f in fields(cls):
            values = [getattr(p, f.name) for p in parts]
            if isinstance(values[0], torch.Tensor):
                joined[f.name] = torch.cat(values)
            elif isinstance(values[0], np.ndarray):
                joined[f.name] = np.concatenate(values)
            else:
                joined[f.name] = [v for part in values for v in part]
        return cls(**joined)
