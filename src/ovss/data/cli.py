"""``ovss data``: list the benchmarks, convert their labels, check a dataset before evaluating.

``add_data_parser(subparsers)`` registers the ``data`` command on the main parser's subparsers.
Handlers return an exit code and raise :class:`ovss.errors.InputError` for user errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_PROBLEMS = 2

CONVERTERS = {
    "cityscapes": "Cityscapes gtFine *_labelIds.png -> *_labelTrainIds.png (19 classes, 255 ignored)",
    "coco_stuff": "COCO-Stuff-164k raw stuffthingmaps -> *_labelTrainIds.png (171 classes, 255 ignored)",
    "coco_object": "COCO-Stuff-164k raw stuffthingmaps -> *_instanceTrainIds.png (background + 80 things)",
}

DATA_DESCRIPTION = """\
Prepare the benchmark datasets. They stay in their standard (mmseg) layouts:
  VOCdevkit/VOC2012 (voc21, voc20), VOCdevkit/VOC2010 with SegmentationClassContext (pc60, pc59),
  coco_stuff164k (coco_stuff171, coco_object), cityscapes, ADEChallengeData2016 (ade20k150).
Cityscapes, COCO-Stuff and COCO-Object need one conversion of their label files first;
VOC20, PC59 and ADE20K-150 are remapped when read.
"""


def add_data_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ovss data {list,convert,check}`` on an argparse subparsers object."""
    data = subparsers.add_parser(
        "data",
        help="list, convert and check the benchmark datasets",
        description=DATA_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data.set_defaults(func=lambda args: _usage(data))
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")

    lst = sub.add_parser("list", help="list the benchmark keys, class counts and label rules")
    lst.set_defaults(func=cmd_data_list)

    conv = sub.add_parser(
        "convert",
        help="make the label files a benchmark reads (resumable)",
        description="Convert label files in place (beside the originals) or into --out with the same relative "
        "paths. Files already converted are skipped, so an interrupted run can simply be repeated.\n\n"
        + "\n".join(f"  {k:12s} {v}" for k, v in CONVERTERS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conv.add_argument("kind", choices=list(CONVERTERS), help="which conversion")
    conv.add_argument("root", metavar="ROOT", help="the cityscapes or coco_stuff164k folder (or its parent)")
    conv.add_argument("--out", "-o", help="write the converted labels under this folder instead of ROOT")
    conv.add_argument(
        "--split",
        action="append",
        dest="splits",
        metavar="SPLIT",
        help="convert only this split (repeatable; default: every split found)",
    )
    conv.add_argument(
        "--unlabelled",
        choices=["background", "ignore"],
        default="background",
        help="coco_object only: unlabelled COCO-Stuff pixels become background (0, as in the published "
        "converter; default) or stay ignored (255)",
    )
    conv.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    conv.set_defaults(func=cmd_data_convert)

    chk = sub.add_parser(
        "check",
        help="count a dataset's samples and report missing or wrongly encoded files",
        description="Open a dataset as the evaluator will, check that every image and label exists, and decode "
        "the first labels (all with --full) to check their values and sizes.",
    )
    chk.add_argument("key", metavar="KEY", help="benchmark key (see `ovss data list`) or 'folder'")
    chk.add_argument("--root", required=True, help="folder that contains the dataset (or the dataset folder)")
    chk.add_argument("--split", default="val", help="split to open (default val)")
    chk.add_argument("--labels", help="folder only: the folder of same-stem label PNGs")
    chk.add_argument("--full", action="store_true", help="decode every label, not only the first --decode")
    chk.add_argument("--decode", type=int, default=20, metavar="N", help="labels to decode (default 20)")
    chk.add_argument("--max-problems", type=int, default=10, metavar="N", help="problems to print (default 10)")
    chk.set_defaults(func=cmd_data_check)
    return data


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_PROBLEMS


def cmd_data_list(args: argparse.Namespace) -> int:
    from .datasets import DATASETS

    for key, info in DATASETS.items():
        rule = (
            "reduce_zero_label"
            if info.reduce_zero_label
            else ("0 = background" if info.has_background else "as stored")
        )
        print(f"{key:14s} {info.num_classes:4d} classes  {rule:17s} {info.description}")
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from .convert import convert_cityscapes, convert_coco_object, convert_coco_stuff

    common = {"out": args.out, "splits": args.splits, "progress": not args.quiet}
    if args.kind == "cityscapes":
        counts = convert_cityscapes(args.root, **common)
    elif args.kind == "coco_stuff":
        counts = convert_coco_stuff(args.root, **common)
    else:
        counts = convert_coco_object(args.root, unlabelled=args.unlabelled, **common)
    note = f", {counts.skipped} already done" if counts.skipped else ""
    print(f"ovss: converted {counts.converted} of {counts.total} label files into {counts.out}{note}", file=sys.stderr)
    if args.out is not None:
        print("ovss: note: only labels are written to --out; the images stay in ROOT", file=sys.stderr)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .check import check_dataset
    from .datasets import image_folder, open_dataset

    folder = args.key == "folder"
    ds = image_folder(args.root, args.labels) if folder else open_dataset(args.key, args.root, args.split)
    report = check_dataset(ds, decode=None if args.full else args.decode, max_problems=args.max_problems)
    print(f"{ds.key}: {report.samples} samples in {ds.root} ({report.decoded} labels decoded)")
    for line in report.problems:
        print(f"  problem: {line}")
    if report.problem_count > len(report.problems):
        print(f"  ... and {report.problem_count - len(report.problems)} more problems")
    if not report.ok:
        print(f"ovss: error: {report.problem_count} problem(s) in {ds.key}", file=sys.stderr)
        return EXIT_PROBLEMS
    return 0
