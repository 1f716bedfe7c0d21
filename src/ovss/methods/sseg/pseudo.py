"""S-Seg pseudo-masks: K-means (K = 8) on self-supervised ViT patch features, per image, in batches.

The DINO forward runs batched on the device; k-means is :func:`ovss.masks.kmeans.kmeans` per image
(L2-normalised features, k-means++ seeding, so Euclidean = cosine k-means). The cluster map is
resized with nearest interpolation to the mask-loss resolution and split into one binary mask per
non-empty cluster. ``ovss pseudo-label --method sseg`` precomputes them into a cache (see
:func:`run_pseudo_cache`); training computes them online otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ...masks.kmeans import kmeans


@torch.no_grad()
def cluster_maps(
    dino: Any, pixels: torch.Tensor, k: int, dino_size: int, iters: int = 100, seed: int = 0
) -> torch.Tensor:
    """``(B, 3, S, S)`` uint8 crops -> ``(B, g, g)`` cluster ids on DINO's patch grid at ``dino_size``."""
    p = dino.patch_size
    side = max(p, round(dino_size / p) * p)
    x = pixels.float() / 255.0
    if x.shape[-1] != side or x.shape[-2] != side:
        x = F.interpolate(x, (side, side), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(dino.mean).view(1, 3, 1, 1)
    std = torch.tensor(dino.std).view(1, 3, 1, 1)
    feats = dino.patch_features(((x - mean) / std).to(getattr(dino, "device", "cpu")))  # (B, D, g, g)
    b, d, gh, gw = feats.shape
    out = torch.empty(b, gh, gw, dtype=torch.long)
    for i in range(b):
        flat = F.normalize(feats[i].reshape(d, -1).T.float().cpu(), dim=1)
        labels, _ = kmeans(flat, k, iters, seed)
        out[i] = labels.reshape(gh, gw)
    return out


def masks_from_clusters(clusters: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
    """``(B, g, g)`` cluster ids -> per image ``(K_b, h, w)`` binary masks (non-empty clusters only)."""
    grid = F.interpolate(clusters[:, None].float(), size, mode="nearest")[:, 0].long()
    out = []
    for ids in grid:
        present = torch.unique(ids)
        out.append(ids[None] == present[:, None, None])
    return out


def pseudo_masks(
    dino: Any, pixels: torch.Tensor, k: int, dino_size: int, size: tuple[int, int], iters: int = 100, seed: int = 0
) -> list[torch.Tensor]:
    return masks_from_clusters(cluster_maps(dino, pixels, k, dino_size, iters, seed), size)
