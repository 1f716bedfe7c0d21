"""FMbSeg cost at full size with random weights (speed does not depend on weight values).

Stage 1 seconds per image on a 500x375 photo (CLIP ViT-L/14 for tagging and dense maps, SAM
ViT-B for points and automatic masks; VOC vocabulary with background words), with SAM's exact
preset and the fastest preset; stage 2 training throughput (labelled patches per second in the
loss) with DINOv2 ViT-S/14 and ViT-L/14 at 448; inference images per second with ViT-L/14.
SAM's thresholds are calibrated on the image (as bench/amg.py does) so that the filters do
realistic work; the text embeddings are built once and timed separately.

    python bench/fmbseg.py [--skip-stage1] [--presets exact,small-input] [--dinos small,large]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("OVSS_CACHE_DIR", "")
warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

DINOS = {  # transformers Dinov2Config sizes
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
VOC = (
    "aeroplane; bicycle; bird; boat; bottle; bus; car; cat; chair; cow; dining table; dog; horse; motorbike; "
    "person; potted plant; sheep; sofa; train; tv monitor"
)


def dinov2(size: str):
    from transformers import Dinov2Config, Dinov2Model

    from ovss.models.dino import DinoBackbone

    torch.manual_seed(0)
    return DinoBackbone(Dinov2Model(Dinov2Config(image_size=518, patch_size=14, **DINOS[size])), f"dinov2-{size}")


def photo() -> np.ndarray:
    from PIL import Image

    from shared_paths import ADE_IMAGES as path

    if path.is_dir():
        return np.asarray(Image.open(path / "ADE_val_00000002.jpg").convert("RGB").resize((500, 375)))
    return np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)


def stage1(clip, presets: list[str]) -> None:
    from amg import calibrate, vit_b_sam
    from ovss.masks import SamBackbone, SamMaskGenerator
    from ovss.methods.fmbseg.pseudo import FMbSegPseudoLabeler, PseudoLabelSettings
    from ovss.ops.text import embed_queries
    from ovss.templates import get_templates
    from ovss.vocab import build_vocabulary

    image = photo()
    vocab = build_vocabulary(VOC, "words")
    t0 = time.perf_counter()
    embed_queries(clip, list(vocab.queries), get_templates("openai_imagenet_80"))
    print(
        f"text embeddings: {len(vocab.queries)} queries x 80 templates, CLIP ViT-L/14: "
        f"{time.perf_counter() - t0:.1f} s (once per vocabulary, cached)"
    )
    sam = SamBackbone(vit_b_sam(), "sam-vit-b-random")
    thresholds = calibrate(sam, image)
    for preset in presets:
        generator = SamMaskGenerator(sam, preset=preset, **thresholds)
        labeler = FMbSegPseudoLabeler(
            clip,
            generator,
            generator,
            PseudoLabelSettings(amg_preset=preset, tag_tau=0.04, min_pred_iou=thresholds["pred_iou_thresh"]),
            torch.device("cpu"),
        )
        start = time.perf_counter()
        _, record = labeler(image, vocab)
        total = time.perf_counter() - start
        start = time.perf_counter()
        masks = generator.generate(image)
        amg_s = time.perf_counter() - start
        print(
            f"stage 1, SAM preset {preset}: {total:.1f} s/image ({len(record['detected'])} classes detected, "
            f"{len(record['masks'])} masks painted); SAM AMG alone {amg_s:.1f} s ({len(masks)} masks)"
        )


def stage2(dinos: list[str], clip, work: Path) -> dict:
    from PIL import Image

    from ovss.methods.fmbseg.train import TrainSettings, train_fmbseg

    images, labels = work / "images", work / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(images / f"{i}.png")
        Image.fromarray(np.kron(rng.integers(0, 21, (15, 20)), np.ones((32, 32))).astype(np.uint8)).save(
            labels / f"{i}.png"
        )
    names = ["background", *VOC.split("; ")]
    (labels / "vocabulary.json").write_text(
        json.dumps({"names": names, "synonyms": [[n] for n in names], "background": "none"})
    )
    checkpoints = {}
    for size in dinos:
        dino = dinov2(size)
        settings = TrainSettings(batch_images=4, epochs=1, log_every=1)
        start = time.perf_counter()
        result = train_fmbseg(
            images, labels, work / f"run-{size}", settings, dino=dino, clip=clip, device="cpu", progress=False
        )
        seconds = time.perf_counter() - start
        log = [json.loads(line) for line in (work / f"run-{size}" / "loss_log.jsonl").read_text().splitlines()]
        patches = sum(entry["patches"] for entry in log)
        print(
            f"stage 2, DINOv2 {size} at 448, B=4, N=128, transformer block + TSupCon: {result['steps']} steps in "
            f"{seconds:.1f} s -> {patches / seconds:.0f} labelled patches/s, {8 / seconds:.2f} images/s"
        )
        checkpoints[size] = (dino, work / f"run-{size}")  # the run folder is the checkpoint
    return checkpoints


def inference(checkpoints: dict, clip) -> None:
    from ovss import Segmenter

    image = photo()
    for size, (dino, ckpt) in checkpoints.items():
        seg = Segmenter("fmbseg", clip=clip, dino=dino, checkpoint=str(ckpt), device="cpu")
        seg.segment(image, VOC, background="words")
        start = time.perf_counter()
        seg.segment(image, VOC, background="words")
        seconds = time.perf_counter() - start
        print(f"inference, DINOv2 {size}: {1 / seconds:.2f} images/s (500x375 -> 448x602, windows 448/224)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-stage1", action="store_true")
    parser.add_argument("--presets", default="small-input,exact")
    parser.add_argument("--dinos", default="small,large")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, random weights, full-size architectures")
    from dense_clip import full_size_clip

    clip = full_size_clip("L/14")
    if not args.skip_stage1:
        stage1(clip, args.presets.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = stage2(args.dinos.split(","), clip, Path(tmp))
        inference(checkpoints, clip)


if __name__ == "__main__":
    main()
