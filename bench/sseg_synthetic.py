"""S-Seg in a synthetic world with captions: does it learn to name regions from captions alone?

Scenes of coloured shapes (ovss.testing.synthetic) with captions naming the colours present
("a red shape and a blue shape on green"). S-Seg is trained from its own k-means pseudo-masks on
a DINO stand-in (colour features in a random basis, ovss.testing.standins.SyntheticDINO) and the
captions; held-out scenes are then segmented by colour name. Controls: the same run without the
contrastive loss, and with captions shuffled within each batch (both cannot tie names to regions).
S-Seg+ then trains a UperNet on S-Seg's labels of the training images.

    PYTHONPATH=src python bench/sseg_synthetic.py            # full version (minutes on a CPU)
    PYTHONPATH=src python bench/sseg_synthetic.py --quick    # the size the test runs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "cyan", "magenta")
MODEL = dict(
    backbone="swin-test",
    num_queries=8,
    decoder_layers=2,
    hidden=32,
    decoder_heads=2,
    embed_dim=32,
    text_layers=2,
    text_width=32,
    text_heads=2,
    context_length=40,
    k=3,
    dino_size=64,
    size=64,
    shuffle_buffer=64,
    lr=2e-3,
    weight_decay=0.0,
    warmup_epochs=0.0,
)
TEMPLATE = ("a {} shape",)  # the caption style of this world


def miou(pred: np.ndarray, truth: np.ndarray, n: int) -> float:
    ious = []
    for c in range(n):
        p, t = pred == c, truth == c
        if t.any() or p.any():
            ious.append((p & t).sum() / max(1, (p | t).sum()))
    return float(np.mean(ious))


def scenes(n: int, seed: int):
    from ovss.testing.captions import make_captioned_scenes

    return make_captioned_scenes(n, seed=seed, classes=COLOURS, size=64, n_regions=2)


def evaluate(run: Path, method: str, test) -> dict[str, float]:
    import ovss

    seg = ovss.Segmenter(
        method,
        checkpoint=str(run),
        device="cpu",
        **({"window": None, "templates": TEMPLATE} if method == "sseg" else {}),
    )
    scores, accs = [], []
    for scene, _ in test:
        labels = seg.segment(scene.image, list(COLOURS) if method == "sseg" else None).labels
        scores.append(miou(labels, scene.labels, len(COLOURS)))
        accs.append(float((labels == scene.labels).mean()))
    return {"miou": float(np.mean(scores)), "pixel_acc": float(np.mean(accs))}


def run(quick: bool, out: Path) -> dict[str, dict[str, float]]:
    from ovss.methods.sseg.train import make_train_settings, train_sseg
    from ovss.testing.captions import write_caption_folder
    from ovss.testing.standins import SyntheticDINO

    n_train, steps, n_test = (192, 150, 16) if quick else (512, 600, 48)
    train, test = scenes(n_train, 0), scenes(n_test, 1)
    data = write_caption_folder(train, out / "data")
    dino = SyntheticDINO(patch_size=8, noise=0.02)
    results: dict[str, dict[str, float]] = {}
    variants = {
        "sseg": {},
        "no_contrastive": {"contrastive_weight": 0.0},
        "shuffled_captions": {"shuffle_captions": True},
    }
    for name, extra in variants.items():
        start = time.time()
        settings = make_train_settings(
            {**MODEL, "batch_size": 16, "max_steps": steps, "epochs": 1000, "save_every": steps, **extra}
        )
        train_sseg(data, out / name, settings, dino=dino, device="cpu", progress=False)
        results[name] = {**evaluate(out / name, "sseg", test), "train_s": round(time.time() - start, 1)}
        print(name, results[name], file=sys.stderr)
    try:
        from ovss.methods.sseg.plus import PlusSettings, train_sseg_plus
    except ImportError:
        return results
    start = time.time()
    plus = PlusSettings(backbone="convnext-test", size=64, batch_size=8, max_steps=steps, lr=2e-3)
    train_sseg_plus(
        [s.image for s, _ in train],
        out / "sseg",
        list(COLOURS),
        out / "plus",
        plus,
        device="cpu",
        teacher_settings={"window": None, "templates": TEMPLATE},
        progress=False,
    )
    results["sseg_plus"] = {**evaluate(out / "plus", "sseg-plus", test), "train_s": round(time.time() - start, 1)}
    print("sseg_plus", results["sseg_plus"], file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.quick, Path(args.out or tmp))
    results["chance_miou_uniform"] = {"miou": 1 / len(COLOURS)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
