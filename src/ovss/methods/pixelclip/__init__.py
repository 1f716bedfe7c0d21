"""PixelCLIP (Shin et al., NeurIPS 2024, arXiv 2409.19846): fine-tune CLIP's image tower from
unlabeled images and class-agnostic masks (SAM masks or DINO k-means), with learnable class
prompts clustering the masks online (Sinkhorn) and a ConvHead decoding the cost volume.

Inference is plain dense-CLIP cosine with the fine-tuned tower (``method.py``); training is
``train.py`` (``ovss train --method pixelclip``); ``convert.py`` reads the official checkpoints.
See docs/pixelclip.md.
"""

from __future__ import annotations

import argparse
import sys

from ...protocols import FAMILIES, register_family
from ..base import Command, MethodSpec, register_method
from .convert import CONVERT_HELP, add_convert_arguments, cmd_convert, convert_pixelclip
from .method import PixelCLIPMethod, read_checkpoint
from .settings import PixelCLIPSettings, TrainSettings, train_settings
from .train import train_pixelclip

# detectron2 / CAT-Seg protocol: no background, 8 imagenet_select templates, synonyms averaged in the
# embedding, detectron2 SemSegEvaluator (numerically the union convention). The official resize
# (shortest edge 640, squash to 320) is the method's own default pipeline.
FAMILY = {
    "source": "cvlab-kaist/PixelCLIP eval.sh and PixelCLIP.forward (detectron2 convention); docs/pixelclip.md",
    "pipeline": {"default": "official"},
    "templates": {"default": "imagenet_select_8"},
    "background": {"default": "none"},
    "metric": "union",
    "notes": {"voc20": "the official VOC-20 converter drops images that are all background"},
}
if "pixelclip" not in FAMILIES:
    register_family("pixelclip", FAMILY)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="folder of unlabeled images (or a .txt list of paths)")
    parser.add_argument("--masks", help="folder of `ovss masks` JSON files, one per image")
    parser.add_argument(
        "--mask-source",
        choices=["files", "dino"],
        default=None,
        help="dino: k-means masks of DINO features computed online (--dino picks the model)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


DEFAULT_DINO = "facebook/dino-vits16"  # the official DINO-mask model (DINO ViT-S/16)


def run_train(args: argparse.Namespace) -> int:
    from ...models.registry import default_model

    settings = train_settings(dict(getattr(args, "set", None) or []))
    source = args.mask_source or ("files" if args.masks else None)
    if source is None:
        raise_input("pass --masks DIR (from `ovss masks`) or --mask-source dino")
    if source == "files" and not args.masks:
        raise_input("--mask-source files needs --masks DIR")
    if source == "dino" and args.masks:
        raise_input("pass either --masks DIR or --mask-source dino, not both")
    if not getattr(args, "out", None):
        raise_input("pass --out RUN (the run folder)")
    dino = (getattr(args, "dino", None) or DEFAULT_DINO) if source == "dino" else None
    result = train_pixelclip(
        args.images,
        args.out,
        settings,
        clip=getattr(args, "clip", None) or default_model("clip"),
        masks=args.masks if source == "files" else None,
        dino=dino,
        device=getattr(args, "device", None),
        progress=not args.no_progress,
    )
    print(f"ovss: pixelclip run in {result['checkpoint']} ({result['steps']} steps)", file=sys.stderr)
    return 0


def raise_input(message: str) -> None:
    from ...errors import InputError

    raise InputError(message)


SPEC = register_method(
    MethodSpec(
        "pixelclip",
        "PixelCLIP: CLIP image tower fine-tuned on unlabeled masks; dense-CLIP cosine at test time",
        PixelCLIPMethod,
        PixelCLIPSettings(),
        ("clip",),
        "Shin et al., NeurIPS 2024, arXiv 2409.19846; github.com/cvlab-kaist/PixelCLIP",
        family="pixelclip",
        tier="B",
        checkpoint="required",
        commands={
            "train": Command("train PixelCLIP on unlabeled images and masks", add_train_arguments, run_train),
            "convert": Command(CONVERT_HELP, add_convert_arguments, cmd_convert),
        },
        read_checkpoint=read_checkpoint,
    )
)

__all__ = [
    "FAMILY",
    "SPEC",
    "PixelCLIPMethod",
    "PixelCLIPSettings",
    "TrainSettings",
    "add_convert_arguments",
    "cmd_convert",
    "convert_pixelclip",
    "train_pixelclip",
    "train_settings",
]
