"""PixelCLIP in a synthetic world: does training from unlabeled masks improve segmentation?

A tiny random transformers CLIP is trained with ``ovss.methods.pixelclip`` on synthetic scenes
(coloured shapes) with their instance masks as the class-agnostic masks; nothing sees a label.
Measure on held-out scenes: each pixel takes the learned prompt (cluster) whose embedding is
closest to its dense feature; *global cluster purity* is the share of pixels whose cluster's
majority class (over all held-out images) is their true class. Random prompts on the random
tower give the baseline; the ablations drop Sinkhorn equipartition or the teacher.

    PYTHONPATH=src python bench/pixelclip_synthetic.py --steps 150
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

WORLD = dict(
    short_side=96,
    crop=96,
    clip_resolution=128,
    mask_resolution=32,
    num_prompts=16,
    batch_size=8,
    micro_batch=8,
    lr=2e-3,
    clip_multiplier=1.0,
    prompt_multiplier=10.0,
    grad_clip=1.0,
    momentum=0.99,
    eps=100.0,
    state_every=10_000,
    checkpoint_every=10_000,
    color_aug_ssd=False,
    strong_aug=False,
)


def write_scenes(root: Path, n: int, seed: int) -> tuple[Path, Path, list]:
    from ovss.testing.synthetic import make_dataset

    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    from ovss.masks.maskset import MaskSet

    scenes = make_dataset(n, seed=seed, size=(96, 96), n_regions=3, noise=4.0)
    for scene in scenes:
        Image.fromarray(scene.image).save(images / f"{scene.name}.png")
        background = ~np.any(np.stack(scene.instance_masks), 0) if scene.instance_masks else None
        ms = [*scene.instance_masks, *([background] if background is not None and background.any() else [])]
        records = [{"segmentation": m, "area": int(m.sum())} for m in ms]
        MaskSet(records, scene.image.shape[:2]).save_json(masks / f"{scene.name}.json")
    return images, masks, scenes


@torch.no_grad()
def cluster_purity(model, scenes, settings, mean, std) -> float:
    """Global purity of the per-pixel nearest-prompt assignment on ``scenes``."""
    from ovss.methods.pixelclip.model import dense_features
    from ovss.ops.resize import normalize

    clusters = F.normalize(model.cluster_embeddings().float(), dim=-1)
    k = clusters.shape[0]
    n_classes = len(scenes[0].class_names)
    counts = np.zeros((k, n_classes), dtype=np.int64)
    for scene in scenes:
        x = normalize(torch.tensor(scene.image).permute(2, 0, 1).float(), mean, std)[None]
        x = F.interpolate(x, size=(settings.clip_resolution,) * 2, mode="bilinear", align_corners=False)
        feats = F.normalize(dense_features(model.clip.vision_model, model.clip.visual_projection, x, 16), dim=1)
        assign = torch.einsum("kd,bdhw->bkhw", clusters, feats).argmax(1, keepdim=True).float()
        assign = F.interpolate(assign, size=scene.labels.shape, mode="nearest")[0, 0].long().numpy()
        valid = scene.labels < n_classes
        np.add.at(counts, (assign[valid], scene.labels[valid]), 1)
    return float(counts.max(1).sum() / counts.sum())


def load_run(run: Path, settings, clip):
    """The saved checkpoint back into a model: fine-tuned tower weights and prompts."""
    from ovss.checkpoints import load_checkpoint
    from ovss.methods.pixelclip.model import PixelCLIPModel
    from ovss.models.clip import build_tiny_clip

    tensors = load_checkpoint(run, method="pixelclip").tensors()
    model = PixelCLIPModel(build_tiny_clip()[0], clip.tokenizer, settings)
    model.clip.load_state_dict({k: v for k, v in tensors.items() if k.startswith("vision_model.")}, strict=False)
    with torch.no_grad():
        model.prompts.prompt_tokens.copy_(tensors["pixelclip.prompt_tokens"])
    return model.eval()


def run(
    steps: int, train_images: int = 32, test_images: int = 16, variant: str = "full", seed: int = 0, **overrides_extra
) -> dict:
    import ovss.methods.pixelclip as pc
    from ovss.methods.pixelclip.model import PixelCLIPModel
    from ovss.models.clip import build_tiny_clip, load_clip

    overrides = {**WORLD, "max_steps": steps, "seed": seed, **overrides_extra}
    if variant == "no_equipartition":
        overrides["equipartition"] = False
    elif variant == "no_teacher":
        overrides["use_teacher"] = False
    settings = pc.train_settings(overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = load_clip("tiny-random")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, masks, _ = write_scenes(root / "train", train_images, seed=1000 + seed)
        _, _, held_out = write_scenes(root / "test", test_images, seed=5000 + seed)
        torch.manual_seed(seed)
        untrained = PixelCLIPModel(build_tiny_clip()[0], clip.tokenizer, settings)
        before = cluster_purity(untrained, held_out, settings, clip.mean, clip.std)
        start = time.perf_counter()
        pc.train_pixelclip(images, root / "run", settings, clip=clip, masks=masks, progress=False)
        seconds = time.perf_counter() - start
        trained = load_run(root / "run", settings, clip)
        after = cluster_purity(trained, held_out, settings, clip.mean, clip.std)
        losses = [json.loads(x)["loss"] for x in (root / "run" / "loss_log.jsonl").read_text().splitlines()]
    return {
        "variant": variant,
        "steps": steps,
        "purity_before": round(before, 4),
        "purity_after": round(after, 4),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for variant in ("full", "no_equipartition", "no_teacher"):
        for seed in range(args.seeds):
            print(json.dumps(run(args.steps, variant=variant, seed=seed)), flush=True)


if __name__ == "__main__":
    main()
