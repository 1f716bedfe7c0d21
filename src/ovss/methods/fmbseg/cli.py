"""FMbSeg's subcommands: ``ovss pseudo-label --method fmbseg`` (stage 1), ``ovss train --method fmbseg`` (stage 2)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ...cliargs import classes_arg
from ...errors import InputError
from ...typecheck import check_settings
from ..base import Command


def add_pseudo_label_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "FMbSeg stage 1: CLIP tags each image, CLIP-guided SAM point prompts and SAM automatic masks labelled by "
        "CLIP give a label map per image (OUT/NAME.png, 255 = unlabelled) and OUT/NAME.json (tags, points, "
        "per-mask scores), plus OUT/vocabulary.json. Streams any number of images, resumes after a crash, and "
        "shards across processes under torchrun or accelerate launch."
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument(
        "--vocab", required=True, type=classes_arg, help="a benchmark (voc21, coco_stuff171, ...), 'a; b, c' or @FILE"
    )
    p.add_argument("--background", default=None, help="for your own classes: none, words, words:a,b")
    p.add_argument("--preset", default=None, help="SAM mask preset (see `ovss masks --help`; default exact)")
    p.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")


def run_pseudo_label(args: argparse.Namespace) -> int:
    from ...device import resolve_device
    from ...io import DEFAULT_MAX_PIXELS
    from ...jobs import plan_images
    from ...masks.sam import SamMaskGenerator
    from ...models.registry import load_backbone
    from ...vocab import vocabulary_for
    from .pseudo import FMbSegPseudoLabeler, PseudoLabelSettings, run_pseudo_labels

    known = {f.name for f in dataclasses.fields(PseudoLabelSettings)}
    unknown = sorted(set(dict(args.set)) - known)
    if unknown:
        raise InputError(
            f"pseudo-labelling has no setting {unknown[0]!r}; settings: {', '.join(sorted(known))}", option=unknown[0]
        )
    check_settings(PseudoLabelSettings, dict(args.set), "pseudo-labelling setting")
    try:
        settings = PseudoLabelSettings(**dict(args.set))
    except TypeError as e:
        raise InputError(f"bad pseudo-labelling settings: {e}") from None
    if args.preset:
        settings = dataclasses.replace(settings, amg_preset=args.preset)
    settings.validate()
    vocab = vocabulary_for(args.vocab, args.background)
    paths, stems, unreadable = plan_images(args.inputs, Path(args.out), DEFAULT_MAX_PIXELS, kind="pseudo-label")
    device = resolve_device(args.device)
    clip = load_backbone("clip", args.clip, device)
    generator = SamMaskGenerator(load_backbone("sam", args.sam, device), preset=settings.amg_preset, device=device)
    labeler = FMbSegPseudoLabeler(clip, generator, generator, settings, device)
    job = {
        "method": "fmbseg",
        "clip": args.clip,
        "sam": args.sam,
        "settings": dataclasses.asdict(settings),
        "vocabulary": vocab.to_dict(),
    }
    stats = run_pseudo_labels(paths, stems, vocab, Path(args.out), labeler, job, overwrite=args.overwrite)
    print(
        f"ovss: pseudo-labelled {stats['done']} images into {args.out} ({stats['skipped']} already done, "
        f"{stats['failed']} failed)",
        file=sys.stderr,
    )
    return 2 if stats["failed"] or unreadable else 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Train FMbSeg's alignment module on frozen DINOv2 features with TSupCon, from the pseudo-labels of "
        "`ovss pseudo-label --method fmbseg`. OUT becomes a checkpoint folder (for `--checkpoint OUT`) when training "
        "ends; OUT/loss_log.jsonl and the resume state OUT/state/ are written as it goes: re-run the same command to "
        "continue exactly after a crash. "
        "Runs under `accelerate launch` on several GPUs or nodes unchanged."
    )
    p.add_argument("--images", required=True, help="folder of training images")
    p.add_argument("--labels", required=True, help="folder of label PNGs (same names) with vocabulary.json")
    p.add_argument("--epochs", type=int, help="training epochs (default 10)")
    p.add_argument("--loss", choices=["tsupcon", "supcon", "text", "ce"], help="loss (default tsupcon)")
    p.add_argument("--module", choices=["block", "mlp", "linear"], help="alignment module (default block)")


def run_train(args: argparse.Namespace) -> int:
    from ...models.registry import default_model
    from .train import TrainSettings, settings_from_overrides, train_fmbseg

    overrides = dict(args.set)
    named = {"epochs": args.epochs, "loss": args.loss, "module": args.module}
    overrides.update({k: v for k, v in named.items() if v is not None})
    check_settings(TrainSettings, overrides, "training setting")
    settings = settings_from_overrides(overrides)
    result = train_fmbseg(
        Path(args.images),
        Path(args.labels),
        Path(args.out),
        settings,
        dino_name=args.dino or default_model("dino"),
        clip_name=args.clip or default_model("clip"),
        device=args.device,
    )
    print(
        f"ovss: trained {result['epochs']} epochs ({result['steps']} steps); checkpoint {result['checkpoint']}",
        file=sys.stderr,
    )
    return 0


PSEUDO_LABEL = Command("make training labels from CLIP + SAM (stage 1)", add_pseudo_label_arguments, run_pseudo_label)
TRAIN = Command(
    "train FMbSeg's alignment module on pseudo-labels with TSupCon (stage 2): the run folder becomes a checkpoint "
    "(--checkpoint RUN); kill it at any point and re-run the same command to resume exactly",
    add_train_arguments,
    run_train,
)
