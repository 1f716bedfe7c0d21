"""FMbSeg end to end on the synthetic world, where the right answer is known.

Stage 1 (tagging, CLIP-guided point prompts, automatic masks labelled by pooled CLIP scores)
runs with the synthetic CLIP, SAM and DINO stand-ins on training scenes; stage 2 trains the
alignment module on those noisy pseudo-labels; the trained segmenter is scored on held-out
scenes. Prints mIoU of the pseudo-labels (unlabelled pixels count as wrong, and on labelled
pixels only) and of the segmenter for each loss.

    python bench/fmbseg_synthetic.py [--train 32] [--test 16] [--epochs 12] [--losses tsupcon,supcon,text,ce]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("OVSS_CACHE_DIR", "")
warnings.simplefilter("ignore")


def miou(preds, truths, k: int, ignore_unlabelled: bool) -> float:
    """mIoU (union convention); unlabelled predictions (255) count as wrong unless ignored."""
    from ovss.metrics import ConfusionMatrix

    cm = ConfusionMatrix(k + 1)
    for p, t in zip(preds, truths):
        p = p.astype(np.int64).copy()
        t = t.astype(np.int64)
        if ignore_unlabelled:
            t = np.where(p == 255, 255, t)
        p[p == 255] = k
        cm.update(p, np.where(t == 255, 255, t))
    iou = cm.results("union")["per_class_iou"][:k]
    return float(np.nanmean(iou))


def run(
    n_train: int, n_test: int, epochs: int, losses: list[str], merge_prob: float, seed: int, text_weight: float
) -> dict:
    from PIL import Image

    from ovss import Segmenter
    from ovss.io import save_image
    from ovss.methods.fmbseg.pseudo import FMbSegPseudoLabeler, PseudoLabelSettings, run_pseudo_labels
    from ovss.methods.fmbseg.train import TrainSettings, train_fmbseg
    from ovss.testing import PALETTE, SyntheticCLIP, make_dataset
    from ovss.testing.standins import SyntheticDINO, SyntheticMaskGenerator, SyntheticPointPrompter
    from ovss.vocab import build_vocabulary

    names = list(PALETTE)
    kw = dict(size=(160, 160), classes=names, n_regions=6, noise=25, texture=20, colour_jitter=8)
    train = make_dataset(n_train, seed=seed, prefix="train", **kw)
    test = make_dataset(n_test, seed=seed + 1000, prefix="test", **kw)
    vocab = build_vocabulary("; ".join(names))
    clip = SyntheticCLIP(pooling="mean_colour")  # harsher aliasing: realistic boundary errors
    dino = SyntheticDINO()
    work = Path(tempfile.mkdtemp(prefix="ovss-fmbseg-"))
    images = work / "images"
    images.mkdir()
    for scene in train:
        save_image(images / f"{scene.name}.png", Image.fromarray(scene.image))

    settings = PseudoLabelSettings(tag_templates="simple", dense_short_side=160, dense_window=None, tag_tau=0.3)
    labeler = FMbSegPseudoLabeler(
        clip, SyntheticPointPrompter(), SyntheticMaskGenerator(merge_prob, seed), settings, torch.device("cpu")
    )
    t0 = time.perf_counter()
    paths = sorted(images.glob("*.png"))
    run_pseudo_labels(paths, [p.stem for p in paths], vocab, work / "labels", labeler, {"exp": 1}, progress=False)
    stage1_s = (time.perf_counter() - t0) / len(paths)
    pseudo = [np.array(Image.open(work / "labels" / f"{s.name}.png")) for s in train]
    truth = [s.labels for s in train]
    out = {
        "pseudo_miou": miou(pseudo, truth, len(names), False),
        "pseudo_miou_labelled": miou(pseudo, truth, len(names), True),
        "pseudo_coverage": float(np.mean([(p != 255).mean() for p in pseudo])),
        "stage1_seconds_per_image": stage1_s,
    }
    for loss in losses:
        ts = TrainSettings(
            size=112,
            batch_images=8,
            patches_per_image=64,
            epochs=epochs,
            lr=1e-3,
            loss=loss,
            templates="simple",
            seed=seed,
            log_every=1000,
            text_weight=text_weight,
        )
        t0 = time.perf_counter()
        train_fmbseg(
            images, work / "labels", work / f"run-{loss}", ts, dino=dino, clip=clip, device="cpu", progress=False
        )
        train_s = time.perf_counter() - t0
        seg = Segmenter(
            "fmbseg",
            clip=clip,
            dino=dino,
            checkpoint=str(work / f"run-{loss}"),
            device="cpu",
            short_side=154,
            window=None,
            templates="simple",
        )
        preds = [seg.segment(s.image, vocab).labels for s in test]
        out[f"{loss}_test_miou"] = miou(preds, [s.labels for s in test], len(names), False)
        out[f"{loss}_train_seconds"] = train_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=32)
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--merge-prob", type=float, default=0.7)
    parser.add_argument("--text-weight", type=float, default=1.0, help="lambda on TSupCon's l_t term (L6)")
    parser.add_argument("--losses", default="tsupcon,supcon,text,ce")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    r = run(args.train, args.test, args.epochs, args.losses.split(","), args.merge_prob, args.seed, args.text_weight)
    print(
        f"stage 1 pseudo-labels on {args.train} training scenes: mIoU {r['pseudo_miou']:.1f} "
        f"(unlabelled = wrong), {r['pseudo_miou_labelled']:.1f} on labelled pixels, coverage "
        f"{r['pseudo_coverage']:.1%}, {r['stage1_seconds_per_image']:.2f} s/image"
    )
    for loss in args.losses.split(","):
        print(
            f"stage 2 {loss:8s}: held-out mIoU {r[f'{loss}_test_miou']:.1f} on {args.test} scenes "
            f"({args.epochs} epochs, {r[f'{loss}_train_seconds']:.0f} s)"
        )


if __name__ == "__main__":
    main()
