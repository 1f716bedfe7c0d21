"""The S-Seg subcommands (``ovss train --method sseg``, ``ovss pseudo-label --method sseg``) as
``Command`` parts: the shared parser brings --method, --out, --clip, --dino, --sam, --device,
--set KEY=VALUE and --checkpoint; these add only S-Seg's own options."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ...cliargs import classes_arg
from ...errors import InputError


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = getattr(args, "set", None) or []
    overrides = {}
    for item in pairs:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InputError(f"--set {item!r}: expected KEY=VALUE")
        overrides[str(item[0])] = item[1]
    if getattr(args, "recipe", None):
        if "recipe" in overrides and overrides["recipe"] != args.recipe:
            raise InputError("--recipe and --set recipe=... disagree; give one")
        overrides["recipe"] = args.recipe
    return overrides


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="caption file (.jsonl/.csv: image, caption) or .tar shards")
    parser.add_argument(
        "--recipe",
        choices=("paper", "small"),
        default=None,
        help="settings preset (same as --set recipe=...); paper: batch 4096, 30 epochs",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    from .train import make_train_settings, train_sseg

    if not getattr(args, "out", None):
        raise InputError("--out RUN is required: the run folder (checkpoint, resume state, loss log)")
    settings = make_train_settings(_overrides(args))
    result = train_sseg(
        args.data,
        args.out,
        settings,
        dino=getattr(args, "dino", None),  # None: the paper's DINO ViT-S/8
        device=getattr(args, "device", None),
        progress=not getattr(args, "no_progress", False),
    )
    print(
        f"ovss: trained S-Seg for {result['steps']} steps into {result['run']} ({result['skipped']} samples skipped)",
        file=sys.stderr,
    )
    return 0


def add_plus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="the target dataset's training images (folder or files)")
    parser.add_argument("--teacher", required=True, help="an S-Seg run folder (from `ovss train --method sseg`)")
    parser.add_argument(
        "--classes", required=True, type=classes_arg, help='the target classes ("cat; sofa, couch") or @FILE'
    )
    parser.add_argument("--background", default=None, help="none | threshold | words | a comma list of words")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_plus(args: argparse.Namespace) -> int:
    from ...io import find_images
    from .plus import make_plus_settings, train_sseg_plus

    if not getattr(args, "out", None):
        raise InputError("--out RUN is required: the S-Seg+ run folder")
    settings = make_plus_settings(_overrides(args))
    images = find_images([args.images])
    result = train_sseg_plus(
        images,
        args.teacher,
        args.classes,
        args.out,
        settings,
        background=args.background,
        device=getattr(args, "device", None),
        progress=not args.no_progress,
    )
    print(
        f"ovss: trained S-Seg+ ({result['rounds']} round(s), {result['steps']} steps each) into {result['run']}",
        file=sys.stderr,
    )
    return 0


def add_pseudo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="caption file (.jsonl/.csv) or .tar shards, as for training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_pseudo(args: argparse.Namespace) -> int:
    """Uses the training settings k, dino_size, kmeans_iters and seed, so ``--set`` reads the same."""
    from ...device import resolve_device
    from ...models.registry import load_backbone
    from .pseudo import pseudo_mask_dino, run_pseudo_cache
    from .train import make_train_settings

    if not getattr(args, "out", None):
        raise InputError("--out CACHE is required: the pseudo-mask folder (then train with --set pseudo_cache=CACHE)")
    s = make_train_settings(_overrides(args))
    dino = load_backbone("dino", pseudo_mask_dino(getattr(args, "dino", None)), resolve_device(args.device))
    stats = run_pseudo_cache(
        args.data, dino, args.out, s.k, s.dino_size, s.kmeans_iters, s.seed, progress=not args.no_progress
    )
    print(
        f"ovss: pseudo-masks for {stats['done']} samples into {args.out} ({stats['kept']} already there, "
        f"{stats['skipped']} unreadable)",
        file=sys.stderr,
    )
    return 0
