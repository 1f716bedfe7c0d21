"""Stand-ins for DINO and SAM in the synthetic world, behind the real interfaces.

* :class:`SyntheticDINO` gives patch features that carry colour but live in their own random
  basis (not aligned with any text), like a self-supervised ViT: a module must learn the mapping.
* :class:`SyntheticMaskGenerator` proposes the connected regions of the image's nearest-palette
  colour map, like SAM's automatic masks; ``merge_prob`` fuses neighbouring regions so that some
  proposals straddle two classes (controlled, reproducible proposal errors).
* :class:`SyntheticPointPrompter` answers a point with three nested masks (region, region grown,
  whole image) and decreasing predicted IoUs, like SAM's multimask output.
* :data:`LOOSE_THRESHOLDS`: SAM filter thresholds that let a few of the tiny random SAM's masks through.
* :data:`EVERY_MASK_SETTINGS`: SAM generator settings that keep every mask of a 4 x 4 point grid.
  The tiny random SAM's IoU predictions and stability scores are near zero, so every real preset
  keeps none of its masks; tests and benches of mask banks use these instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..masks.amg import connected_components
from ..masks.maskset import MaskSet
from .synthetic import PALETTE

LOOSE_THRESHOLDS: dict[str, float] = {
    "pred_iou_thresh": 0.5,
    "stability_score_thresh": 0.05,
    "stability_score_offset": 0.3,
}
EVERY_MASK_SETTINGS: dict[str, Any] = {
    "points_per_side": 4,
    "pred_iou_thresh": -10.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
    "stability_at": "low",
}


def every_mask_preset(name: str):
    """A :class:`ovss.masks.presets.Preset` of :data:`EVERY_MASK_SETTINGS` (register it under ``name``)."""
    from ..masks.presets import Preset

    return Preset(name, "tests: every mask of the tiny random SAM", dict(EVERY_MASK_SETTINGS))


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def nearest_colour_map(image: np.ndarray, palette: Mapping[str, tuple[int, int, int]] = PALETTE) -> np.ndarray:
    """``(H, W)`` index of the nearest palette colour after a 5x5 box blur (noise-robust)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None]
    x = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, 1)[0]
    rgb = torch.tensor(list(palette.values()), dtype=torch.float32)
    dist = torch.linalg.vector_norm(x[None] - rgb[:, :, None, None], dim=1)
    return dist.argmin(0).numpy()


def colour_regions(image: np.ndarray, min_area: int = 16) -> list[np.ndarray]:
    """Connected regions of equal nearest colour, as boolean masks (largest first)."""
    colours = nearest_colour_map(image)
    regions = []
    for k in np.unique(colours):
        labels, areas = connected_components(colours == k)
        regions += [labels == i + 1 for i, a in enumerate(areas) if a >= min_area]
    return sorted(regions, key=lambda m: -int(m.sum()))


class SyntheticDINO:
    name = "synthetic-dino"

    def __init__(
        self, dim: int = 24, seed: int = 0, patch_size: int = 14, temperature: float = 20.0, noise: float = 0.05
    ) -> None:
        self.dim, self.patch_size, self.temperature, self.noise = dim, patch_size, temperature, noise
        self.mean, self.std = _IMAGENET_MEAN, _IMAGENET_STD
        g = torch.Generator().manual_seed(seed)
        self._rgb = torch.tensor(list(PALETTE.values()), dtype=torch.float32)
        self._basis = torch.randn(len(PALETTE), dim, generator=g)
        self._seed = seed

    @torch.no_grad()
    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        gh, gw = pixels.shape[-2] // p, pixels.shape[-1] // p
        mean = torch.tensor(self.mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std).view(1, 3, 1, 1) * 255
        rgb = (pixels.float().cpu() * std + mean)[..., : gh * p, : gw * p]
        dist = torch.linalg.vector_norm(rgb.unsqueeze(1) - self._rgb.view(1, -1, 3, 1, 1), dim=2)
        weights = F.avg_pool2d((-dist / self.temperature).softmax(1), p)
        feats = torch.einsum("bkhw,kd->bdhw", weights, self._basis)
        # deterministic per-content noise: same patch content, same feature
        seed = int(hashlib.sha256(feats.numpy().round(3).tobytes()).hexdigest()[:8], 16)
        g = torch.Generator().manual_seed(seed + self._seed)
        return feats + self.noise * torch.randn(feats.shape, generator=g)


class SyntheticMaskGenerator:
    name = "synthetic-masks"

    def __init__(self, merge_prob: float = 0.0, seed: int = 0, predicted_iou: float = 0.95) -> None:
        self.merge_prob, self.seed, self.predicted_iou = merge_prob, seed, predicted_iou

    def info(self) -> dict[str, Any]:
        return {"generator": "synthetic", "merge_prob": self.merge_prob, "seed": self.seed}

    def generate(self, image: np.ndarray) -> MaskSet:
        regions = colour_regions(image)
        rng = np.random.default_rng([self.seed, int(image.sum()) % (2**31)])
        merged: list[np.ndarray] = []
        used = set()
        for i, region in enumerate(regions):
            if i in used:
                continue
            mask = region.copy()
            if rng.random() < self.merge_prob:  # fuse with a touching neighbour
                grown = F.max_pool2d(torch.from_numpy(region)[None, None].float(), 5, 1, 2)[0, 0].numpy() > 0
                for j in range(i + 1, len(regions)):
                    if j not in used and (grown & regions[j]).any():
                        mask |= regions[j]
                        used.add(j)
                        break
            merged.append(mask)
        h, w = image.shape[:2]
        records = [
            {
                "segmentation": m,
                "area": int(m.sum()),
                "predicted_iou": self.predicted_iou,
                "stability_score": 1.0,
                "bbox": None,
                "point_coords": None,
                "crop_box": [0, 0, w, h],
                "level": None,
            }
            for m in merged
        ]
        return MaskSet(records, (h, w), {"generator": self.name})


class SyntheticPointPrompter:
    name = "synthetic-points"

    def predict_points(self, image: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regions = colour_regions(image, min_area=1)
        h, w = image.shape[:2]
        masks = np.zeros((len(points), 3, h, w), dtype=bool)
        for n, (x, y) in enumerate(points):
            yi, xi = min(h - 1, max(0, int(y))), min(w - 1, max(0, int(x)))
            region = next((r for r in regions if r[yi, xi]), np.zeros((h, w), bool))
            grown = F.max_pool2d(torch.from_numpy(region)[None, None].float(), 9, 1, 4)[0, 0].numpy() > 0
            masks[n] = np.stack([region, grown, np.ones((h, w), bool)])
        ious = np.tile(np.array([0.95, 0.8, 0.6], dtype=np.float32), (len(points), 1))
        return masks, ious
