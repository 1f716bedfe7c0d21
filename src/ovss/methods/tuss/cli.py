"""TUSS's subcommand: ``ovss fit --method tuss`` (also ``ovss fit tuss``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ...cliargs import classes_arg
from ...errors import InputError
from ..base import Command


def add_fit_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "TUSS without fine-tuning anything: SAM masks of every training image embedded by DBA-CLIP (OUT/bank, "
        "resumable: re-run to continue), then the classifier of one supervision setting: ovss (class names only), "
        "wsss (image tags: --tags FILE, a JSON object {image name: [class names]}), sss (pixel labels for some "
        "images: --labels DIR), fsss (pixel labels for all). Label PNGs hold class indices in --vocab order "
        "(background first when there is one; 255 = ignore). OUT becomes a checkpoint folder for "
        "`ovss segment --method tuss --checkpoint OUT`, with OUT/seeds/NAME.png (training images painted with the "
        "fitted scores: WSSS pseudo-masks) and OUT/fit.json. --set takes a fit setting (heldout, lp_weight, k_bar, "
        "probe_iters, iter_factor, lp_k, lp_alpha, weighting, seed) or a tuss method setting."
    )
    p.add_argument("--setting", required=True, choices=["ovss", "wsss", "sss", "fsss"], help="supervision setting")
    p.add_argument("--images", required=True, nargs="+", help="training images or folders")
    p.add_argument("--tags", help="wsss: JSON file {image file name: [class names]}")
    p.add_argument("--labels", help="sss/fsss: folder of label PNGs named like the images")
    p.add_argument(
        "--vocab", required=True, type=classes_arg, help="a benchmark (voc21, coco_object, ...), 'a; b, c' or @FILE"
    )
    p.add_argument("--background", default=None, help="for your own classes: none, words, words:a,b")
    p.add_argument("--preset", default=None, help="SAM mask preset (default tuss; see `ovss masks --help`)")


def run_fit(args: argparse.Namespace) -> int:
    from ..._version import __version__
    from ...device import resolve_device
    from ...io import DEFAULT_MAX_PIXELS
    from ...jobs import plan_images
    from ...models.registry import default_model, load_backbone
    from ...protocols import BENCHMARKS
    from ...vocab import vocabulary_for
    from ..settings import resolve_settings
    from .fit import FitSettings, fit_settings, fit_tuss
    from .ov import SPEC

    # Check everything cheap before loading any model.
    given = dict(args.set)
    fit_keys = {f.name for f in dataclasses.fields(FitSettings)}
    method_keys = {f.name for f in dataclasses.fields(SPEC.settings)}
    unknown = sorted(set(given) - fit_keys - method_keys)
    if unknown:
        raise InputError(
            f"ovss fit --method tuss has no setting {unknown[0]!r}; fit settings: {', '.join(sorted(fit_keys))}; "
            f"method settings: {', '.join(sorted(method_keys))}",
            option=unknown[0],
        )
    overrides = {k: v for k, v in given.items() if k not in fit_keys}
    if args.preset:
        overrides["sam_preset"] = args.preset
    # a benchmark vocabulary embeds as its eval protocol does
    benchmark = args.vocab.strip() if args.vocab.strip() in BENCHMARKS else None
    settings = resolve_settings(SPEC, benchmark=benchmark, overrides=overrides).settings  # bad keys/values fail here
    fs = fit_settings({k: v for k, v in given.items() if k in fit_keys})
    vocab = vocabulary_for(args.vocab, args.background, family=SPEC.family)
    out = Path(args.out)
    paths, stems, unreadable = plan_images(args.images, out, DEFAULT_MAX_PIXELS, kind="bank")
    if unreadable:
        raise InputError(f"{unreadable} training image(s) are unreadable (listed above); remove them and re-run")
    models = {"clip": args.clip or default_model("clip"), "sam": args.sam or default_model("sam")}
    device = resolve_device(args.device)
    backbones = {role: load_backbone(role, models[role], device) for role in SPEC.needs}
    method = SPEC.factory(backbones, settings, device)
    job = {"method": "tuss", "models": models, "settings": dataclasses.asdict(settings), "ovss_version": __version__}
    report = fit_tuss(
        method,  # type: ignore[arg-type]
        paths,
        [str(s) for s in stems],
        out,
        vocab,
        args.setting,
        fs,
        tags=Path(args.tags) if args.tags else None,
        labels=Path(args.labels) if args.labels else None,
        job=job,
        models=models,
    )
    if report is None:
        return 0
    chosen = f", selected lp_weight {report['lp_weight']} k_bar {report['k_bar']}" if "selection" in report else ""
    print(
        f"ovss: fitted tuss ({args.setting}) on {report['images']} images, {report['masks']} masks{chosen}; "
        f"classifier {report['classifier']}",
        file=sys.stderr,
    )
    return 0


FIT = Command("fit a classifier on a folder of images (ovss, wsss, sss, fsss)", add_fit_arguments, run_fit)
