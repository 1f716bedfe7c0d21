"""S-Seg pseudo-masks: K-means (K = 8) on self-supervised ViT patch features, per image, in batches.

The DINO forward runs batched on the device; k-means is :func:`ovss.masks.kmeans.kmeans` per image
(L2-normalised features, k-means++ seeding, so Euclidean = cosine k-means). The cluster map is
resized with nearest interpolation to the mask-loss resolution and split into one binary mask per
non-empty cluster. ``ovss pseudo-label --method sseg`` precomputes them into a cache (see
:func:`run_pseudo_cache`); training computes them online otherwise.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import InputError
from ...io import save_image
from ...masks.kmeans import kmeans

# the paper's pseudo-mask network (DINO ViT-S/8, Caron et al. 2021); any DINO/DINOv2/DINOv3 id works
PAPER_DINO = "facebook/dino-vits8"


def pseudo_mask_dino(name: str | None) -> str:
    """The DINO to use: the one named, else the paper's (``OVSS_DEFAULT_MODEL`` overrides, as everywhere)."""
    from ...models.registry import default_model

    return name or default_model("dino", PAPER_DINO)


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


# --------------------------------------------------------------------------------------------------
# the precomputed cache (`ovss pseudo-label --method sseg`)
# --------------------------------------------------------------------------------------------------

JOB_FILE = "job.json"


def cache_path(cache: Path, key: str) -> Path:
    digest = hashlib.sha1(key.encode()).hexdigest()
    return cache / digest[:2] / f"{digest}.png"


def run_pseudo_cache(
    data: str | Path,
    dino: Any,
    out: str | Path,
    k: int = 8,
    short_side: int = 448,
    iters: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Cluster maps of every sample (full image, nearest-upsampled, PNG per sample), this rank's
    share (sample index modulo WORLD_SIZE); samples already in the cache are kept (resumable)."""
    from tqdm import tqdm

    from ...io import write_json
    from ...jobs import dist_info
    from ...masks.kmeans import KMeansMaskGenerator
    from .data import decode_image, iter_samples, open_source

    source = open_source(data)
    out = Path(out)
    job = {"dino": getattr(dino, "name", "custom"), "k": k, "short_side": short_side, "iters": iters, "seed": seed}
    marker = out / JOB_FILE
    if marker.is_file():
        if json.loads(marker.read_text()) != job:
            raise InputError(f"{out} holds pseudo-masks made with other settings ({marker}); choose another --out")
    else:
        write_json(marker, job)
    generator = KMeansMaskGenerator(dino, k=k, short_side=short_side, iters=iters, seed=seed)
    rank, world = dist_info()
    stats = {"done": 0, "kept": 0, "skipped": 0}
    samples = iter_samples(source)
    for index, (key, image, _caption) in enumerate(
        tqdm(samples, desc="sseg pseudo-masks", unit="img", file=sys.stderr, disable=not progress)
    ):
        if index % world != rank:
            continue
        path = cache_path(out, key)
        if path.is_file():
            stats["kept"] += 1
            continue
        try:
            if image is None:
                raise InputError("no image")
            arr = decode_image(image)
        except InputError as e:
            stats["skipped"] += 1
            print(f"ovss: warning: sample {key}: {e} (skipped)", file=sys.stderr)
            continue
        clusters = generator.cluster_map(arr).astype(np.uint8)
        save_image(path, Image.fromarray(clusters))
        stats["done"] += 1
    return stats


def cached_masks(
    cache: Path, keys: list[str], boxes: list[tuple[int, ...]], size: int, mask_size: tuple[int, int]
) -> list[torch.Tensor]:
    """The cached cluster maps of a batch, cropped exactly as its images were, as binary masks."""
    maps = []
    for key, (nh, nw, y0, x0) in zip(keys, boxes):
        path = cache_path(cache, key)
        if not path.is_file():
            raise InputError(f"sample {key} has no pseudo-mask in {cache}; run `ovss pseudo-label --method sseg` first")
        with Image.open(path) as im:
            grid = torch.from_numpy(np.array(im)).long()
        grid = F.interpolate(grid[None, None].float(), (nh, nw), mode="nearest")[0, 0]
        maps.append(grid[y0 : y0 + size, x0 : x0 + size])
    return masks_from_clusters(torch.stack(maps).long(), mask_size) if maps else []
