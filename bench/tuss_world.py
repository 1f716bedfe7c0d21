"""TUSS's four supervision settings on a synthetic world with a known answer.

The synthetic CLIP's text side is bent (``text_drift``): the text of some colours leans toward
others, so the zero-shot text classifier (the OVSS setting) confuses those classes, as real CLIP
confuses near classes. The image side stays exact, so image tags (WSSS), a few labelled images
(SSS) or labels everywhere (FSSS) can correct it. Each setting is fitted by
:func:`ovss.methods.tuss.fit.fit_tuss` on training scenes and scored on held-out test scenes
through ``Segmenter("tuss", checkpoint=...)`` (mIoU, gt-present convention, as TUSS reports).
Used by ``bench/tuss_synthetic.py`` and by the tests.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ("red", "orange", "yellow", "green", "cyan", "blue", "magenta", "white")
# red's text leans to orange and orange's to yellow: orange regions read as "red" zero-shot;
# green's leans to cyan and cyan's to blue: cyan regions read as "green".
DRIFT = {"red": {"orange": 1.5}, "orange": {"yellow": 1.5}, "green": {"cyan": 1.5}, "cyan": {"blue": 1.5}}
SETTINGS = ("ovss", "wsss", "sss", "fsss")


def drifted_world(seed: int = 0, merge_prob: float = 0.3):
    """(CLIP stand-in with text drift, SAM-like mask generator that merges neighbours with ``merge_prob``)."""
    from ovss.testing.standins import SyntheticMaskGenerator
    from ovss.testing.synthetic import PALETTE, SyntheticCLIP

    palette = {k: v for k, v in PALETTE.items() if k in CLASSES}
    return SyntheticCLIP(palette=palette, text_drift=DRIFT), SyntheticMaskGenerator(merge_prob=merge_prob, seed=seed)


def _miou(preds, truths, k: int) -> float:
    from ovss.metrics import ConfusionMatrix

    cm = ConfusionMatrix(k)
    for p, t in zip(preds, truths):
        cm.update(np.where(p == 255, 0, p), t)
    return float(cm.results("present")["mIoU"])


def compare_settings(
    workdir: str | os.PathLike,
    n_train: int = 60,
    n_test: int = 12,
    labelled: float = 0.25,
    merge_prob: float = 0.3,
    seed: int = 0,
    probe_iters: int = 1000,
    settings: tuple[str, ...] = SETTINGS,
) -> dict[str, Any]:
    """Fit each setting on ``n_train`` scenes (SSS: the first ``labelled`` share has labels) and
    score it on ``n_test`` new scenes; every number comes with the settings that produced it."""
    from PIL import Image

    from ovss.api import Segmenter
    from ovss.jobs import output_stems
    from ovss.methods.tuss.fit import fit_settings, fit_tuss
    from ovss.testing.synthetic import make_dataset, write_dataset
    from ovss.vocab import build_vocabulary

    work = Path(workdir)
    kw = dict(size=(160, 192), classes=list(CLASSES), n_regions=4, noise=20, texture=15)
    train = make_dataset(n_train, seed=seed, prefix="train", **kw)
    test = make_dataset(n_test, seed=seed + 1000, prefix="test", **kw)
    vocab = build_vocabulary("; ".join(CLASSES))
    clip, sam = drifted_world(seed, merge_prob)
    method_kw = dict(templates="simple", short_side=160, window=(96, 32))
    fs = fit_settings(dict(probe_iters=probe_iters, probe_warmup=max(1, probe_iters // 10), seed=seed))
    root = write_dataset(train, work / "data")
    paths = sorted((root / "images").glob("*.png"))
    stems = [str(s) for s in output_stems(paths, [root / "images"])]
    tags = work / "tags.json"
    tags.write_text(json.dumps({f"{s.name}.png": s.present_classes for s in train}))
    n_lab = max(2, round(labelled * n_train))
    partial = work / "partial_labels"
    partial.mkdir(exist_ok=True)
    for s in train[:n_lab]:
        (partial / f"{s.name}.png").write_bytes((root / "labels" / f"{s.name}.png").read_bytes())
    supervision = {"ovss": {}, "wsss": {"tags": tags}, "sss": {"labels": partial}, "fsss": {"labels": root / "labels"}}
    results: dict[str, Any] = {
        "train_images": n_train,
        "test_images": n_test,
        "labelled_images": n_lab,
        "merge_prob": merge_prob,
        "seed": seed,
        "probe_iters": probe_iters,
        "text_drift": DRIFT,
        "method_settings": method_kw,
    }
    bank = None
    for setting in settings:
        out = work / setting
        if bank is not None:  # the mask bank does not depend on the setting: share it
            out.mkdir(parents=True, exist_ok=True)
            if not (out / "bank").exists():
                os.symlink(bank.resolve(), out / "bank")
        seg = Segmenter("tuss", clip=clip, sam=sam, device="cpu", **method_kw)
        start = time.perf_counter()
        report = fit_tuss(seg.method, paths, stems, out, vocab, setting, fs, progress=False, **supervision[setting])
        seconds = time.perf_counter() - start
        bank = bank or out / "bank"
        seeds = [np.asarray(Image.open(out / "seeds" / f"{s.name}.png")) for s in train]
        fitted = Segmenter("tuss", clip=clip, sam=sam, device="cpu", checkpoint=str(out))
        preds = [fitted.segment(s.image).labels for s in test]
        assert report is not None
        results[setting] = {
            "test_mIoU": round(_miou(preds, [s.labels for s in test], len(CLASSES)), 1),
            "train_seed_mIoU": round(_miou(seeds, [s.labels for s in train], len(CLASSES)), 1),
            "seconds": round(seconds, 1),
            "masks": report["masks"],
            "lp_weight": report.get("lp_weight"),
            "k_bar": report.get("k_bar"),
            "selected_on_heldout": "selection" in report,
        }
    # the ceiling the masks allow: every test mask painted with its true majority class
    import torch

    from ovss.masks.painting import mask_levels, paint, votes

    preds = []
    for s in test:
        ms = sam.generate(s.image)
        masks = torch.from_numpy(ms.masks())
        preds.append(paint(masks, mask_levels(ms), votes(masks, s.labels, len(CLASSES)).T, np.zeros_like(s.labels)))
    results["mask_oracle_test_mIoU"] = round(_miou(preds, [s.labels for s in test], len(CLASSES)), 1)
    return results
