"""Class-agnostic masks from k-means on DINO / DINOv2 patch features (S-Seg: K = 8 on DINO
ViT-S/8; PixelCLIP: K = 16 on DINO ViT-S/16), behind the same MaskSet output as the SAM generator.

Defaults (docs/methods.md §4.2, [our choice] there): short side resized to 448, last-layer patch
tokens, L2-normalised, Euclidean k-means (= cosine) with k-means++ seeding, the cluster map
upsampled to the image with nearest interpolation, one mask per non-empty cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..io import ImageInput, load_image
from ..models.dino import DinoBackbone, build_tiny_dino, load_dino
from ..models.loading import TINY_RANDOM
from . import amg
from .maskset import MaskSet


def kmeans(
    x: torch.Tensor, k: int, iters: int = 100, seed: int = 0, tol: float = 1e-6, init: str = "kmeans++"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on ``(n, d)`` rows; returns (labels, centres). ``init``: "kmeans++" seeding, or
    "random" (k distinct rows, as fast_pytorch_kmeans does for PixelCLIP's DINO masks).
    An empty cluster is re-seeded with the point farthest from its centre."""
    n = x.shape[0]
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if init not in ("kmeans++", "random"):
        raise InputError(f"k-means init must be 'kmeans++' or 'random', got {init!r}")
    k = min(k, n)
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(n, generator=gen)[:k]] if init == "random" else _kmeanspp(x, k, gen)
    return _lloyd(x, centres, k, iters, tol)


def _kmeanspp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    centres = x[torch.randint(n, (1,), generator=gen)]
    d2 = torch.cdist(x, centres).squeeze(1) ** 2
    for _ in range(1, k):
        total = d2.sum()
        # k-means++: the next centre is drawn with probability proportional to the squared distance
        idx = torch.multinomial(d2 / total, 1, generator=gen) if total > 0 else torch.randint(n, (1,), generator=gen)
        centres = torch.cat([centres, x[idx]])
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    return centres


def _lloyd(x: torch.Tensor, centres: torch.Tensor, k: int, iters: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        dist = torch.cdist(x, centres)
        labels = dist.argmin(1)
        new = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).float()
        empty = counts == 0
        if empty.any():
            far = dist.gather(1, labels[:, None]).squeeze(1).argsort(descending=True)
            for j, e in enumerate(torch.nonzero(empty).flatten().tolist()):
                new[e], counts[e] = x[far[j]], 1.0
        new = new / counts[:, None]
        shift = (new - centres).pow(2).sum(1).max()
        centres = new
        if shift <= tol:
            break
    return torch.cdist(x, centres).argmin(1), centres


class KMeansMaskGenerator:
    """``KMeansMaskGenerator(dino, k=8).generate(image) -> MaskSet`` (one mask per cluster)."""

    name = "kmeans"

    def __init__(
        self,
        dino: DinoBackbone | str = TINY_RANDOM,
        k: int = 8,
        short_side: int = 448,
        iters: int = 100,
        seed: int = 0,
        device: torch.device | str | None = None,
        output_mode: str = "binary_mask",
        metric: str = "cosine",
        init: str = "kmeans++",
    ) -> None:
        if isinstance(dino, str):
            from ..device import resolve_device

            dino = load_dino(dino, resolve_device(device))
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        if short_side < 1:
            raise InputError(f"short_side must be >= 1, got {short_side}")
        if output_mode not in ("binary_mask", "uncompressed_rle", "coco_rle"):
            raise InputError(f"unknown output_mode {output_mode!r}")
        self.dino, self.k, self.short_side, self.iters, self.seed = dino, k, short_side, iters, seed
        self.output_mode = output_mode
        if metric not in ("cosine", "euclidean"):
            raise InputError(f"k-means metric must be 'cosine' or 'euclidean', got {metric!r}")
        self.metric, self.init = metric, init

    def info(self) -> dict[str, Any]:
        settings = {
            "k": self.k,
            "short_side": self.short_side,
            "iters": self.iters,
            "seed": self.seed,
            "metric": self.metric,
            "init": self.init,
        }
        return {"generator": self.name, "model": self.dino.name, "settings": settings}

    def cluster_map(self, image: np.ndarray) -> np.ndarray:
        """``(H, W)`` int cluster id per pixel."""
        h, w = image.shape[:2]
        p = self.dino.patch_size
        scale = self.short_side / min(h, w)
        th = max(p, round(h * scale / p) * p)
        tw = max(p, round(w * scale / p) * p)
        x = torch.from_numpy(image.copy()).permute(2, 0, 1).float()[None] / 255.0
        x = F.interpolate(x, (th, tw), mode="bilinear", align_corners=False, antialias=True)
        mean, std = torch.tensor(self.dino.mean).view(1, 3, 1, 1), torch.tensor(self.dino.std).view(1, 3, 1, 1)
        x = (x - mean) / std
        feats = self.dino.patch_features(x)[0]  # (D, gh, gw)
        d, gh, gw = feats.shape
        flat = feats.reshape(d, -1).T.cpu()
        if self.metric == "cosine":  # Euclidean k-means on unit vectors
            flat = F.normalize(flat, dim=1)
        labels, _ = kmeans(flat, self.k, self.iters, self.seed, init=self.init)
        grid = labels.reshape(1, 1, gh, gw).float()
        return F.interpolate(grid, (h, w), mode="nearest")[0, 0].long().numpy()

    @torch.no_grad()
    def generate(self, image: ImageInput) -> MaskSet:
        img = load_image(image)
        h, w = img.shape[:2]
        cmap = self.cluster_map(img)
        ids = [c for c in np.unique(cmap)]
        masks = np.stack([cmap == c for c in ids]) if ids else np.zeros((0, h, w), bool)
        rles = amg.rle_encode(masks)
        boxes = amg.masks_to_boxes(torch.from_numpy(masks))
        records = []
        for i, rle in enumerate(rles):
            if self.output_mode == "binary_mask":
                seg: Any = masks[i]
            elif self.output_mode == "coco_rle":
                seg = amg.to_coco_rle(rle)
            else:
                seg = rle
            records.append(
                {
                    "segmentation": seg,
                    "area": amg.rle_area(rle),
                    "bbox": [int(v) for v in amg.xyxy_to_xywh(boxes[i].tolist())],
                    "predicted_iou": None,
                    "point_coords": None,
                    "stability_score": None,
                    "crop_box": [0, 0, w, h],
                    "level": None,
                    "cluster": int(ids[i]),
                }
            )
        return MaskSet(records, (h, w), info=self.info())


def save_tiny_dino(directory: str | Path, seed: int = 0) -> Path:
    build_tiny_dino(seed).save_pretrained(directory, safe_serialization=True)
    return Path(directory)
