"""S-Seg in a synthetic world with captions: does it learn to name regions from captions alone?

Scenes of two coloured shapes on a coloured background (ovss.testing.synthetic) with captions
naming the region colours in a random order and the background ("a red shape and a blue shape on
green"). S-Seg is trained from its own k-means pseudo-masks on a DINO stand-in (colour features in
a random basis, ovss.testing.standins.SyntheticDINO) and the captions; held-out scenes are then
segmented with the six colour names as classes. Controls: the same run without the contrastive
loss, and with captions shuffled within each batch (both cannot tie names to regions).
S-Seg+ then trains a UperNet on S-Seg's labels of the training images.

    PYTHONPATH=src python bench/sseg_synthetic.py            # full version (minutes on a CPU)
    PYTHONPATH=src python bench/sseg_synthetic.py --quick    # the size the test runs
    PYTHONPATH=src python bench/sseg_synthetic.py --captions partial --variants sseg_local,local_no_contrastive \
        --plus-of sseg_local                                    # region features, captions naming a subset
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
BACKGROUND = "grey"  # with NAMED_BACKGROUND off: not a class, its pixels are ignored by the scores
# On: the background is one of COLOURS at random and the caption names it ("... on green"). Off, every
# image shares the grey background and the captions differ only in two colour words: the randomly
# initialised towers then map all images (and all captions) to nearly one point and InfoNCE stays at
# log(batch) for hundreds of steps (measured), so the default world varies the background.
NAMED_BACKGROUND = True
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
# "all": captions name every colour ("a red shape and a blue shape on green"); "partial": a random subset,
# as web captions name some of what an image holds ("a red shape", "a shape on green", ...; --captions)
CAPTIONS = "all"
TEMPLATES = {"all": ("a {} shape",), "partial": ("a {} shape", "a shape on {}")}  # class prompts in caption style
# A real CLIP BPE holds colour names as single tokens; the offline byte-level tokenizer spells them
# out, so the world gets a word-level BPE (ovss.testing.captions.word_tokenizer). Measured at 250
# steps: InfoNCE 1.1 with it, 1.45 with bytes; naming accuracy within the run-to-run spread.
WORDS = ("a", "shape", "and", "on", *COLOURS)


def scores(pred: np.ndarray, truth: np.ndarray, n: int) -> tuple[float, float]:
    """mIoU over the classes present in either map and pixel accuracy, on labelled pixels only."""
    valid = truth < n
    ious = []
    for c in range(n):
        p, t = (pred == c) & valid, (truth == c) & valid
        if t.any() or p.any():
            ious.append((p & t).sum() / max(1, (p | t).sum()))
    return float(np.mean(ious)), float((pred[valid] == truth[valid]).mean())


def scenes(n: int, seed: int):
    from ovss.testing.captions import make_captioned_scenes

    if NAMED_BACKGROUND:
        return make_captioned_scenes(n, seed=seed, classes=COLOURS, size=64, n_regions=2, mention=CAPTIONS)
    pairs = make_captioned_scenes(
        n, seed=seed, classes=(*COLOURS, BACKGROUND), background=BACKGROUND, size=64, n_regions=2
    )
    return [(scene, caption.removesuffix(f" on {BACKGROUND}")) for scene, caption in pairs]


def region_names(labels: np.ndarray, truth: np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """Each true region's majority predicted label, and its true label (the regions of one scene)."""
    named, true = [], []
    for c in np.unique(truth):
        if c < n:
            named.append(int(np.bincount(labels[truth == c], minlength=n).argmax()))
            true.append(int(c))
    return named, true


def inference_options(variant: str) -> dict:
    """The Segmenter settings of an S-Seg run: the training resolution (64; the groupvit family's 448
    would enlarge the shapes 7x), caption-style prompts, and the variant's inference settings."""
    from dataclasses import fields

    from ovss.methods.sseg import SSegSettings

    names = {f.name for f in fields(SSegSettings)}
    own = {k: v for k, v in VARIANTS[variant].items() if k in names}
    return {"window": None, "templates": TEMPLATES[CAPTIONS], "short_side": 64, **own}


def training_settings(variant: str) -> dict:
    from dataclasses import fields

    from ovss.methods.sseg import SSegSettings

    names = {f.name for f in fields(SSegSettings)}
    return {k: v for k, v in VARIANTS[variant].items() if k not in names}


def evaluate(run: Path, method: str, test, options: dict | None = None) -> dict[str, float]:
    """Pixel accuracy and mIoU, plus what separates naming regions from naming the image:
    ``region_acc`` (a region's majority label is its colour) and ``distinct`` (distinct names over
    regions per scene: 1/3 means every region of a scene got one name, the image's)."""
    import ovss

    seg = ovss.Segmenter(method, checkpoint=str(run), device="cpu", **(options or {}))
    mious, accs, region_hits, distinct = [], [], [], []
    for scene, _ in test:
        labels = seg.segment(scene.image, list(COLOURS) if method == "sseg" else None).labels
        m, a = scores(labels, scene.labels, len(COLOURS))
        mious.append(m)
        accs.append(a)
        named, true = region_names(labels, scene.labels, len(COLOURS))
        region_hits += [p == t for p, t in zip(named, true)]
        distinct.append(len(set(named)) / len(named))
    return {
        "miou": round(float(np.mean(mious)), 4),
        "pixel_acc": round(float(np.mean(accs)), 4),
        "region_acc": round(float(np.mean(region_hits)), 4),
        "distinct": round(float(np.mean(distinct)), 4),
    }


LOCAL = {"mask_features": "local", "pooling": "mlp_then_mean", "mask_weighting": "area"}
# a variant: training settings, and inference settings (SSegSettings fields, e.g. mask_assignment)
VARIANTS = {
    "sseg": {},
    "sseg_mlp_then_mean": {"pooling": "mlp_then_mean"},
    "sseg_pooled_features": {"mask_features": "pooled"},
    "sseg_area_weighted": {"mask_weighting": "area"},
    # MaskFormer's mask embeddings as features, area-weighted, projected per mask with BatchNorm
    "sseg_embeddings_bn": {
        "mask_features": "embeddings",
        "mask_weighting": "area",
        "pooling": "mlp_then_mean",
        "projection_norm": "batch",
    },
    "no_contrastive": {"contrastive_weight": 0.0},
    "shuffled_captions": {"shuffle_captions": True},
    # region features (first-stage features over the pixels each mask wins), projected per mask and
    # averaged by mask area; at test time each pixel takes its winning query's class (mask_assignment=auto)
    "sseg_local": LOCAL,
    "local_no_contrastive": {**LOCAL, "contrastive_weight": 0.0},
    # each change alone: region features with MaskFormer's soft semantic inference, and hard assignment
    # over the paper's query features
    "sseg_local_soft": {**LOCAL, "mask_assignment": "soft"},
    "sseg_hard": {"mask_assignment": "hard"},
    "local_shuffled_captions": {**LOCAL, "shuffle_captions": True},
    # region features averaged by the share of pixels each mask wins (a query that wins none adds nothing)
    "sseg_local_won": {**LOCAL, "mask_weighting": "won"},
}


STEPS: int | None = None  # --steps: overrides the optimisation steps of both sizes
SEED = 0  # --seed: the training seed (initial weights, data order); the scenes stay the same


def sizes(quick: bool) -> tuple[int, int, int]:
    n_train, steps, n_test = (256, 250, 16) if quick else (384, 250, 32)  # training scenes, steps, test scenes
    return n_train, STEPS or steps, n_test


def train_variant(name: str, quick: bool, out: Path) -> dict[str, float]:
    from ovss.methods.sseg.train import make_train_settings, train_sseg
    from ovss.testing.captions import word_tokenizer, write_caption_folder
    from ovss.testing.standins import SyntheticDINO

    n_train, steps, n_test = sizes(quick)
    data = out / f"data-{CAPTIONS}"  # the captions differ by mode, the scenes do not
    if not (data / "captions.jsonl").is_file():
        write_caption_folder(scenes(n_train, 0), data)
    tokenizer = str(word_tokenizer(WORDS, out / "tokenizer"))
    start = time.time()
    settings = make_train_settings(
        {
            **MODEL,
            "tokenizer": tokenizer,
            "batch_size": 16,
            "seed": SEED,
            "max_steps": steps,
            "epochs": 1000,
            "save_every": steps,
            **training_settings(name),
        }
    )
    train_sseg(data, out / name, settings, dino=SyntheticDINO(patch_size=8, noise=0.02), device="cpu", progress=False)
    result = evaluate(out / name, "sseg", scenes(n_test, 1), inference_options(name))
    return {**result, "train_s": round(time.time() - start, 1)}


def train_plus(teacher: str, quick: bool, out: Path) -> dict[str, float]:
    from ovss.methods.sseg.plus import PlusSettings, train_sseg_plus

    n_train, steps, n_test = sizes(quick)
    start = time.time()
    plus = PlusSettings(
        backbone="convnext-test",
        hidden=32,
        size=64,
        short_side=64,
        batch_size=8,
        steps=steps,
        lr=2e-3,
        weight_decay=0.0,
    )
    train_sseg_plus(
        [s.image for s, _ in scenes(n_train, 0)],
        out / teacher,
        list(COLOURS),
        out / f"{teacher}_plus",
        plus,
        device="cpu",
        teacher_settings=inference_options(teacher),
        progress=False,
    )
    return {
        **evaluate(out / f"{teacher}_plus", "sseg-plus", scenes(n_test, 1)),
        "train_s": round(time.time() - start, 1),
    }


def run(quick: bool, out: Path, variants: list[str], plus_of: str | None) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name in variants:
        results[name] = train_variant(name, quick, out)
        print(name, results[name], file=sys.stderr)
    if plus_of:
        results[f"{plus_of}_plus"] = train_plus(plus_of, quick, out)
        print(f"{plus_of}_plus", results[f"{plus_of}_plus"], file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--plus-of", default="sseg", help="the variant S-Seg+ trains on ('' = none)")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps (default 250)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (weights, data order)")
    parser.add_argument("--captions", choices=tuple(TEMPLATES), default="all", help="what captions name (above)")
    args = parser.parse_args()
    global STEPS, CAPTIONS, SEED
    STEPS, CAPTIONS, SEED = args.steps, args.captions, args.seed
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    teacher_kept = args.out is not None and (Path(args.out) / args.plus_of).is_dir()
    if args.plus_of and args.plus_of not in variants and not teacher_kept:
        parser.error(f"--plus-of {args.plus_of} is neither trained in this run nor in --out; add it to --variants")
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.quick, Path(args.out or tmp), variants, args.plus_of or None)
    results["chance"] = {"pixel_acc": round(1 / len(COLOURS), 4)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
