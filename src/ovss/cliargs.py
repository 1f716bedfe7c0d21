"""Argument types and option groups shared by every ``ovss`` subcommand (and by method packages
that contribute their own subcommands). Library errors name the API keyword they are about
(``InputError(..., option="pamr_iterations")``); :data:`FLAGS` turns it into the flag."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

# API keyword -> the flag that sets it; any other setting is set with --set KEY=VALUE.
FLAGS = {
    "checkpoint": "--checkpoint",
    "classes": "--classes",
    "clip": "--clip",
    "dino": "--dino",
    "sam": "--sam",
    "device": "--device",
    "pamr_iterations": "--pamr",
    "prob_thd": "--prob-thd",
    "logit_scale": "--logit-scale",
    "short_side": "--short-side",
    "window": "--window",
    "templates": "--templates",
    "precision": "--precision",
    "background": "--background",
    "method": "--method",
    "out": "--out",
}


class OvssArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (and exit code 2), like every other ovss error."""

    def error(self, message: str):

        self.exit(2, f"ovss: error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def flag_for(option: str | None) -> str | None:
    if option is None:
        return None
    return FLAGS.get(option, f"--set {option}=...")


def parse_value(raw: str) -> Any:
    """A ``--set`` value: a Python literal (numbers, tuples, lists, dicts, None) or else the text itself.
    Only ``ast.literal_eval``: no user text is ever evaluated as code."""
    if raw.lower() in ("none", "null"):
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


def set_arg(value: str) -> tuple[str, Any]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"{value!r}: expected KEY=VALUE")
    key, raw = value.split("=", 1)
    if not key.strip():
        raise argparse.ArgumentTypeError(f"{value!r}: expected KEY=VALUE with a setting name before '='")
    return key.strip(), parse_value(raw.strip())


def classes_arg(value: str) -> str:
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{path}: class file not found (@FILE reads one class per line)")
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise argparse.ArgumentTypeError(
                f"{path}: unreadable class file ({e.__class__.__name__}); save it as UTF-8 text"
            ) from None
    return value


def window_arg(value: str) -> tuple[int, int] | None:
    if value.lower() in ("whole", "none"):
        return None
    try:
        crop, stride = (int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected CROP,STRIDE (e.g. 224,112) or 'whole'") from None
    return crop, stride


def add_model_args(parser: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    """The backbone and device options every model-running command shares."""
    parser.add_argument(
        "--clip",
        default=None,
        help="CLIP: hub id, local directory or tiny-random (default openai/clip-vit-base-patch16)",
    )
    parser.add_argument(
        "--dino",
        default=None,
        help="DINO/DINOv2/DINOv3: hub id, local directory or tiny-random (default facebook/dinov2-base)",
    )
    parser.add_argument(
        "--sam",
        default=None,
        help="SAM/SAM2 (or SAM 3 for sam3): hub id, local directory or tiny-random (default facebook/sam-vit-base)",
    )
    if checkpoint:
        parser.add_argument(
            "--checkpoint",
            "--classifier",
            dest="checkpoint",
            default=None,
            help="a trained or fitted run folder (ovss train / ovss fit), a file in it, or a hub id",
        )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")


def add_set_arg(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", type=set_arg, action="append", default=[], metavar="KEY=VALUE", help=help)
