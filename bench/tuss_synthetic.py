"""TUSS in its four supervision settings on the synthetic world, where the right answer is known.

The synthetic CLIP's text side is bent (``text_drift``): the text of some colours leans toward
others, so the zero-shot text classifier (OVSS) confuses those classes, as real CLIP confuses
near classes. The image side stays exact, so image tags (WSSS), a few labelled images (SSS)
or labels everywhere (FSSS) can correct it. Every setting is fitted by ``fit_tuss`` on the
training scenes and scored on held-out test scenes through ``Segmenter("tuss", checkpoint=...)``
(mIoU, gt-present convention as TUSS reports). Also printed: the mIoU of the painted training
seeds (WSSS pseudo-masks).

    python bench/tuss_synthetic.py [--train 24] [--test 12] [--labelled 0.25] [--merge 0.3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("OVSS_CACHE_DIR", "")
warnings.simplefilter("ignore")

CLASSES = ["red", "orange", "yellow", "green", "cyan", "blue", "magenta", "white"]
# red's text leans to orange and orange's to yellow: orange regions read as "red" zero-shot;
# green's leans to cyan and cyan's to blue: cyan regions read as "green".
DRIFT = {"red": {"orange": 1.5}, "orange": {"yellow": 1.5}, "green": {"cyan": 1.5}, "cyan": {"blue": 1.5}}


def world(seed: int, merge: float):
    from ovss.testing import PALETTE, SyntheticCLIP
    from ovss.testing.standins import SyntheticMaskGenerator

    palette = {k: v for k, v in PALETTE.items() if k in CLASSES}
    return SyntheticCLIP(palette=palette, text_drift=DRIFT), SyntheticMaskGenerator(merge_prob=merge, seed=seed)


def miou(preds, truths, k: int) -> float:
    from ovss.metrics import ConfusionMatrix

    cm = ConfusionMatrix(k)
    for p, t in zip(preds, truths):
        cm.update(np.where(p == 255, 0, p), t)
    return float(cm.results("present")["mIoU"])


def run(n_train: int, n_test: int, labelled: float, merge: float, seed: int, probe_iters: int) -> dict:
    from PIL import Image

    from ovss import Segmenter
    from ovss.jobs import output_stems
    from ovss.methods.tuss.fit import fit_settings, fit_tuss
    from ovss.testing import make_dataset, write_dataset
    from ovss.vocab import build_vocabulary

    torch.manual_seed(seed)
    kw = dict(size=(160, 192), classes=CLASSES, n_regions=4, noise=20, texture=15)
    train = make_dataset(n_train, seed=seed, prefix="train", **kw)
    test = make_dataset(n_test, seed=seed + 1000, prefix="test", **kw)
    vocab = build_vocabulary("; ".join(CLASSES))
    clip, sam = world(seed, merge)
    method_kw = dict(templates="simple", short_side=160, window=(96, 32))
    fs_kw = dict(probe_iters=probe_iters, probe_warmup=probe_iters // 10, seed=seed)
    results: dict = {"train": n_train, "test": n_test, "labelled": labelled, "merge_prob": merge, "seed": seed,
                     "probe_iters": probe_iters, "drift": DRIFT}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(train, Path(tmp) / "data")
        paths = sorted((root / "images").glob("*.png"))
        stems = [str(s) for s in output_stems(paths, [root / "images"])]
        tags = Path(tmp) / "tags.json"
        tags.write_text(json.dumps({f"{s.name}.png": s.present_classes for s in train}))
        n_lab = max(2, round(labelled * n_train))
        partial = Path(tmp) / "partial"
        partial.mkdir()
        for s in train[:n_lab]:
            (partial / f"{s.name}.png").write_bytes((root / "labels" / f"{s.name}.png").read_bytes())
        supervision = {"ovss": {}, "wsss": {"tags": tags}, "sss": {"labels": partial},
                       "fsss": {"labels": root / "labels"}}  # fmt: skip
        bank = None
        for setting, extra in supervision.items():
            out = Path(tmp) / setting
            if bank is not None:  # the mask bank does not depend on the setting: reuse it
                (out / "bank").parent.mkdir(parents=True, exist_ok=True)
                os.symlink(bank, out / "bank")
            seg = Segmenter("tuss", clip=clip, sam=sam, device="cpu", **method_kw)
            t0 = time.perf_counter()
            report = fit_tuss(seg.method, paths, stems, out, vocab, setting, fit_settings(fs_kw), progress=False,
                              **extra)  # fmt: skip
            fit_s = time.perf_counter() - t0
            bank = bank or (out / "bank")
            seeds = [np.asarray(Image.open(out / "seeds" / f"{s.name}.png")) for s in train]
            fitted = Segmenter("tuss", clip=clip, sam=sam, device="cpu", checkpoint=str(out))
            preds = [fitted.segment(s.image).labels for s in test]
            results[setting] = {
                "test_mIoU": round(miou(preds, [s.labels for s in test], len(CLASSES)), 1),
                "train_seed_mIoU": round(miou(seeds, [s.labels for s in train], len(CLASSES)), 1),
                "fit_seconds": round(fit_s, 1),
                "masks": report["masks"],
                "lp_weight": report.get("lp_weight"),
                "k_bar": report.get("k_bar"),
                "selected": "selection" in report,
            }
        results["labelled_images"] = n_lab
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=24)
    ap.add_argument("--test", type=int, default=12)
    ap.add_argument("--labelled", type=float, default=0.25, help="share of training images with labels (sss)")
    ap.add_argument("--merge", type=float, default=0.3, help="probability that a SAM-like mask merges two regions")
    ap.add_argument("--probe-iters", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    r = run(args.train, args.test, args.labelled, args.merge, args.seed, args.probe_iters)
    print(json.dumps(r, indent=1))
    print(f"\n{'setting':8s} {'test mIoU':>10s} {'train seeds':>12s}")
    for s in ("ovss", "wsss", "sss", "fsss"):
        print(f"{s:8s} {r[s]['test_mIoU']:10.1f} {r[s]['train_seed_mIoU']:12.1f}")


if __name__ == "__main__":
    main()
