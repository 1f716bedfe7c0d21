"""The S-Seg subcommands (``ovss train --method sseg``, ``ovss pseudo-label --method sseg``) as
``Command`` parts: the shared parser brings --method, --out, --clip, --dino, --sam, --device,
--set KEY=VALUE and --checkpoint; these add only S-Seg's own options."""

from __future__ import annotations

import argparse
import sys
from typing import Any

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
        dino=getattr(args, "dino", None) or "tiny-random",
        device=getattr(args, "device", None),
        progress=not getattr(args, "no_progress", False),
    )
    print(
        f"ovss: trained S-Seg for {result['steps']} steps into {result['run']} ({result['skipped']} samples skipped)",
        file=sys.stderr,
    )
    return 0
