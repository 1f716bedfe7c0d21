"""``ovss masks``: class-agnostic masks for images or folders, one COCO-RLE JSON and one PNG
preview per image, resumable. Wired into ``ovss.cli`` with :func:`add_masks_parser`.

User errors raise :class:`ovss.errors.InputError` (one line, exit code 2 in ``ovss.cli``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..cliargs import add_model_args, add_set_arg
from ..errors import InputError

DESCRIPTION = """\
Class-agnostic masks for images or folders. For each input NAME it writes NAME.json (the masks
as COCO RLE, with area, bbox XYWH, predicted_iou, stability_score, point_coords, crop_box and
the multimask level, plus every setting) and NAME.png (a colour preview over the photo).
Finished images are skipped on a re-run; outputs are written atomically, the JSON last.

examples:
  ovss masks photo.jpg --sam facebook/sam-vit-base --out masks/
  ovss masks photos/ --preset sparse --sam facebook/sam2.1-hiera-tiny --out masks/
  ovss masks photos/ --preset tuss --out masks_tuss/
  ovss masks photos/ --generator kmeans --dino facebook/dinov2-small --set k=16 --out kmeans/
"""


def add_masks_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``masks`` on an ``argparse`` sub-parser collection; returns the new parser."""
    from .presets import PRESETS

    p = subparsers.add_parser(
        "masks",
        help="class-agnostic masks (SAM/SAM2 automatic masks, DINO k-means) as COCO-RLE JSON",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--generator", "-g", default="sam", help="sam (default) or kmeans")
    p.add_argument("--preset", default="exact", help=f"SAM generator preset: {', '.join(PRESETS)} (default exact)")
    add_model_args(p, checkpoint=False)  # --sam (SAM/SAM2, or SAM 3 for --generator sam3), --dino (kmeans)
    add_set_arg(p, "any generator setting, e.g. --set points_per_side=16 or --set k=16")
    p.add_argument("--no-preview", action="store_true", help="do not write NAME.png")
    p.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this (default 64e6)")
    p.set_defaults(func=cmd_masks)
    return p


# generator -> (its keyword for the model, the backbone role that loads it, the option that names it)
_MODELS = {"sam": ("sam", "sam", "sam"), "kmeans": ("dino", "dino", "dino"), "sam3": ("sam3", "sam3", "sam")}


def _model_name(args: argparse.Namespace) -> str | None:
    """The model the generator runs: the option's value, or the role's default id."""
    from ..models.registry import default_model

    if args.generator not in _MODELS:
        return None
    _, role, option = _MODELS[args.generator]
    return getattr(args, option) or default_model(role)


def _build_generator(args: argparse.Namespace):
    from ..device import resolve_device
    from ..models.registry import load_backbone
    from .registry import get_mask_generator

    device = resolve_device(args.device)
    settings = dict(args.set)
    if args.generator == "sam":
        from .presets import make_settings

        make_settings(args.preset, **settings)  # validate before loading any model
        settings["preset"] = args.preset
    if args.generator not in _MODELS:
        return get_mask_generator(args.generator, device=device, **settings)
    keyword, role, _ = _MODELS[args.generator]
    model = load_backbone(role, _model_name(args), device)
    return get_mask_generator(args.generator, device=device, **{keyword: model}, **settings)


def _job(args: argparse.Namespace) -> dict[str, Any]:
    job: dict[str, Any] = {"generator": args.generator, "settings": dict(args.set), "model": _model_name(args)}
    if args.generator == "sam":
        job.update(preset=args.preset)
    return json.loads(json.dumps(job))


def cmd_masks(args: argparse.Namespace) -> int:
    from ..io import DEFAULT_MAX_PIXELS
    from ..jobs import output_lock, plan_images, running

    if args.generator not in ("sam", "kmeans"):
        from .registry import available_mask_generators

        if args.generator not in available_mask_generators():
            raise InputError(
                f"unknown mask generator {args.generator!r}; use one of {', '.join(available_mask_generators())}"
            )
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    out = Path(args.out)
    ok_paths, ok_stems, unreadable = plan_images(args.inputs, out, max_pixels, kind="masks")
    with output_lock(out, "masks"), running("masks"):
        return _run_masks(args, out, ok_paths, ok_stems, unreadable, max_pixels)


def _run_masks(args: argparse.Namespace, out: Path, ok_paths, ok_stems, unreadable: int, max_pixels: int) -> int:
    from tqdm import tqdm

    from ..io import load_image, remove_stale_parts, save_image
    from ..jobs import finished

    remove_stale_parts(out)  # what a killed run was writing; live processes' files are kept
    job = _job(args)

    def done(stem) -> bool:
        previews = [] if args.no_preview else [out / (str(stem) + ".png")]
        return finished(out / (str(stem) + ".json"), job, field="info.job", outputs=previews)

    todo = [(p, s) for p, s in zip(ok_paths, ok_stems) if args.overwrite or not done(s)]
    skipped = len(ok_paths) - len(todo)
    if not todo:
        print(f"ovss: all {len(ok_paths)} images already done in {out} (use --overwrite to redo)", file=sys.stderr)
        return 2 if unreadable else 0
    generator = _build_generator(args)
    failures = [""] * unreadable
    failed = 0
    total = 0
    for path, stem in tqdm(todo, desc="masks", unit="img", disable=len(todo) < 2, file=sys.stderr):
        try:
            image = load_image(path, max_pixels)
            masks = generator.generate(image)
        except InputError as e:
            failed += 1
            failures.append(str(e))
            tqdm.write(f"ovss: error: {e}", file=sys.stderr)
            continue
        masks.info["source"] = str(path)
        masks.info["job"] = job
        target = out / stem
        target.parent.mkdir(parents=True, exist_ok=True)
        if not args.no_preview:
            save_image(target.parent / (target.name + ".png"), masks.preview(image))
        masks.save_json(target.parent / (target.name + ".json"))  # written last: marks the image done
        total += len(masks)
    done = len(todo) - failed  # type: ignore[assignment]
    note = f", {skipped} already done" if skipped else ""
    print(f"ovss: {total} masks for {done} of {len(todo)} images in {out}{note}", file=sys.stderr)
    if failures:
        print(f"ovss: error: {len(failures)} image(s) failed; see the messages above", file=sys.stderr)
        return 2
    return 0
