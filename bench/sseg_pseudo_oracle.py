"""Quality of S-Seg's pseudo-masks on real photos: K-means (K = 8) on DINO patch features, each
cluster labelled with the ground-truth class it overlaps most ("oracle" labelling), mIoU over the
VOC samples in ../shared/evaldata. A real DINOv2 ViT-S/14 against a random-weight one of the same
shape (the paper quotes 78.8 VOC mIoU for DINO ViT-S/8, K = 8, on the full val set).

    PYTHONPATH=src python bench/sseg_pseudo_oracle.py [--dino PATH] [--k 8] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from shared_paths import EVALDATA, REAL_DINO

ROOT = Path(__file__).resolve().parents[1]
VOC = EVALDATA / "vainf_voc_samples"
IGNORE = 255


def voc_pairs(limit: int | None = None) -> list[tuple[Path, Path]]:
    images = sorted((VOC / "samples").glob("*_image.png"), key=lambda p: int(p.name.split("_")[0]))
    pairs = [(p, VOC / "derived" / "SegmentationClass" / p.name.replace("_image", "_target")) for p in images]
    if not pairs:
        raise SystemExit(f"no VOC samples at {VOC}; set OVSS_EVALDATA to the evaldata folder")
    return pairs[:limit] if limit else pairs


def oracle_labels(clusters: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each cluster takes the ground-truth class most of its labelled pixels have."""
    out = np.full(truth.shape, IGNORE, dtype=np.int64)
    for c in np.unique(clusters):
        inside = (clusters == c) & (truth != IGNORE)
        if inside.any():
            out[clusters == c] = np.bincount(truth[inside]).argmax()
    return out


def oracle_miou(dino, pairs, k: int = 8, short_side: int = 448) -> tuple[float, float]:
    """Dataset mIoU (intersections and unions summed over images, classes present) and seconds per image."""
    from PIL import Image

    from ovss.masks.kmeans import KMeansMaskGenerator

    generator = KMeansMaskGenerator(dino, k=k, short_side=short_side)
    inter, union = np.zeros(256), np.zeros(256)
    start = time.perf_counter()
    for image_path, label_path in pairs:
        image = np.array(Image.open(image_path).convert("RGB"))
        truth = np.array(Image.open(label_path)).astype(np.int64)
        pred = oracle_labels(generator.cluster_map(image), truth)
        valid = truth != IGNORE
        for c in np.unique(np.concatenate([truth[valid], pred[valid]])):
            p, t = (pred == c) & valid, (truth == c) & valid
            inter[c] += (p & t).sum()
            union[c] += (p | t).sum()
    seconds = (time.perf_counter() - start) / len(pairs)
    present = union > 0
    return float((inter[present] / union[present]).mean()), seconds


def random_dino_like(path: Path, seed: int = 0):
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from ovss.models.dino import DinoBackbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Dinov2Model(Dinov2Config.from_pretrained(path))
    return DinoBackbone(model, "random-dinov2-small")


def main() -> None:
    from ovss.models.dino import load_dino

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dino", default=str(REAL_DINO))
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    pairs = voc_pairs(args.limit)
    real, real_s = oracle_miou(load_dino(args.dino), pairs, args.k)
    rand, rand_s = oracle_miou(random_dino_like(Path(args.dino)), pairs, args.k)
    print(
        json.dumps(
            {
                "images": len(pairs),
                "k": args.k,
                "real_dino_miou": round(real, 4),
                "random_dino_miou": round(rand, 4),
                "seconds_per_image_real": round(real_s, 3),
                "seconds_per_image_random": round(rand_s, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
