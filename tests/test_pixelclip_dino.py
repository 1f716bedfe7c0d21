"""PixelCLIP's DINO mask source: Euclidean k-means of DINO patch tokens, on real weights and photos."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import ovss.methods.pixelclip as pc
from ovss.masks.kmeans import KMeansMaskGenerator, kmeans
from ovss.models.dino import DinoBackbone
from shared_paths import REAL_DINO


def test_random_init_kmeans_is_lloyd_from_distinct_rows():
    rng = np.random.default_rng(0)
    x = torch.tensor(np.concatenate([rng.normal(c, 0.1, (30, 2)) for c in (0, 5, 10)]), dtype=torch.float32)
    labels, centres = kmeans(x, 3, init="random", seed=1)
    assert len(set(labels.tolist())) == 3
    for c in range(3):  # each centre is the mean of its points, each point is nearest its centre
        assert torch.allclose(centres[c], x[labels == c].mean(0), atol=1e-5)
    assert torch.equal(torch.cdist(x, centres).argmin(1), labels)


def best_match_miou(masks: np.ndarray, gt: np.ndarray) -> float:
    """Mean over ground-truth classes of the best IoU any single mask reaches (255 ignored)."""
    valid = gt != 255
    ious = []
    for c in np.unique(gt[valid]):
        region = (gt == c) & valid
        inter = (masks & region).sum((1, 2))
        union = ((masks | region) & valid).sum((1, 2))
        ious.append(float((inter / np.maximum(union, 1)).max()))
    return float(np.mean(ious))


def test_dino_masks_run_in_training(tmp_path):
    from test_pixelclip_train import SMALL, write_world

    images, _ = write_world(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pc.train_pixelclip(
            images,
            tmp_path / "run",
            pc.train_settings({**SMALL, "max_steps": 1}),
            clip="tiny-random",
            dino="tiny-random",
            progress=False,
        )
    assert result["steps"] == 1 and (tmp_path / "run" / "config.json").is_file()


@pytest.mark.slow
def test_real_dino_kmeans_masks_follow_objects(evaldata):
    """Real DINOv2 ViT-S/14 k-means (16 clusters, Euclidean, random init) against a random DINOv2."""
    if not (REAL_DINO / "model.safetensors").is_file():
        pytest.skip(f"real DINOv2 weights not found at {REAL_DINO}")
    from transformers import Dinov2Config, Dinov2Model

    real = DinoBackbone(Dinov2Model.from_pretrained(REAL_DINO), "dinov2-small-imgfocus")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random = DinoBackbone(Dinov2Model(Dinov2Config.from_pretrained(REAL_DINO)), "random")
    root = evaldata / "vainf_voc_samples"
    stems = ["0", "1", "114", "120"]
    scores = {}
    for name, dino in (("real", real), ("random", random)):
        gen = KMeansMaskGenerator(dino, k=16, short_side=448, metric="euclidean", init="random")
        values = []
        for stem in stems:
            image = np.asarray(Image.open(root / "samples" / f"{stem}_image.png").convert("RGB"))
            gt = np.array(Image.open(root / "derived" / "SegmentationClass" / f"{stem}_target.png"))
            values.append(best_match_miou(gen.generate(image).masks(), gt))
        scores[name] = float(np.mean(values))
    print(
        f"best-match mIoU of 16 k-means masks on {len(stems)} VOC images: real {scores['real']:.3f}, "
        f"random {scores['random']:.3f}"
    )
    assert scores["real"] > scores["random"] + 0.1
