"""The ``ovss`` command line. Errors in the user's input print one line and exit with code 2.

Subcommands that belong to methods (``train``, ``fit``, ``pseudo-label``) are generated from the
method registry: a method that declares a :class:`~ovss.methods.base.Command` under one of these
names gets ``ovss NAME --method METHOD`` with its own options and nothing here changes.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Any

from ._version import __version__
from .cliargs import OvssArgumentParser, add_model_args, add_set_arg, classes_arg, flag_for, window_arg
from .cliargs import parse_value as _parse_value  # noqa: F401  (kept for callers of the old name)
from .data.cli import add_data_parser
from .demo import add_demo_parser
from .distributed import DistributedError
from .errors import InputError, OvssError
from .labelling import add_label_parser
from .leaderboard import add_leaderboard_parser
from .masks.cli import add_masks_parser

EXIT_USAGE = 2
# Errors of the user's file system (a read-only or full output folder, a file where a folder should be):
# one line, not a traceback. Atomic writes leave no partial file behind.
_USER_OS_ERRORS = {
    errno.EACCES,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.EISDIR,
    errno.EPERM,
}

# The subcommands methods contribute, with what each is for.
METHOD_COMMANDS = {
    "train": "train a method from unlabeled data or pseudo-labels",
    "fit": "fit a method's classifier on a folder of images",
    "pseudo-label": "make training labels without annotation",
    "convert": "convert a method's official checkpoint to an ovss/transformers folder",
}

DESCRIPTION = """\
ovss labels every pixel of your images with any class names you give, using vision foundation
models (CLIP, SAM, DINOv2) and no human annotation.

quick start:
  ovss segment photo.jpg --classes "cat; sofa, couch; potted plant" --clip openai/clip-vit-base-patch16
  ovss segment photos/ --classes "person; car; tree" --background words --out results/
  ovss methods                      list the methods and their settings

class names: ';' separates classes, ',' separates synonyms of one class ("sofa, couch").
models: --clip takes a Hugging Face hub id (default openai/clip-vit-base-patch16), a local
directory (save_pretrained, safetensors) or 'tiny-random' (a small random model for tests; its
output is meaningless).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = OvssArgumentParser(
        prog="ovss", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"ovss {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OvssArgumentParser)
    add_segment_parser(sub)
    add_eval_parser(sub)
    add_leaderboard_parser(sub)
    for command, help in METHOD_COMMANDS.items():
        # parsed by method_command_parser once --method is known; listed here for `ovss --help`
        sub.add_parser(command, help=f"{help} (ovss {command} --method NAME --help)", add_help=False)
    add_label_parser(sub)
    add_demo_parser(sub)
    add_masks_parser(sub)
    add_data_parser(sub)
    met = sub.add_parser("methods", help="list the registered methods and their settings")
    met.add_argument("-v", "--verbose", action="store_true", help="show every setting with its default")
    met.set_defaults(func=cmd_methods)
    return parser


def add_segment_parser(sub: Any) -> argparse.ArgumentParser:
    seg = sub.add_parser(
        "segment",
        help="segment images with your class names",
        description="Segment images or folders of images. For each input NAME it writes NAME.png (indexed "
        "labels, VOC palette), NAME_overlay.png (colours and legend) and NAME.json (class areas, "
        "settings, models). Finished images are skipped on a re-run.",
    )
    seg.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    seg.add_argument(
        "--classes",
        "-c",
        type=classes_arg,
        help='class names: "cat; sofa, couch; plant", or @FILE with one class per line (may be left out with a '
        "checkpoint that fixes its classes, e.g. a fitted tuss classifier)",
    )
    seg.add_argument("--method", "-m", default="sclip", help="method name (see `ovss methods`; default sclip)")
    seg.add_argument("--out", "-o", default="ovss_out", help="output folder (default ./ovss_out)")
    add_model_args(seg)
    seg.add_argument(
        "--background",
        default="none",
        help="none: every pixel gets one of your classes; words: add a 'background' class queried by 26 "
        "scene words (sky, wall, road, ...); threshold: pixels whose best probability is under "
        "--prob-thd (default 0.5 in this mode) become background; words:sky,wall,...: your own words",
    )
    _add_dense_options(seg)
    add_set_arg(seg, "any other method setting, e.g. --set area_thd=0.1 (see `ovss methods -v`)")
    _add_refine_options(seg)
    seg.add_argument("--no-overlay", action="store_true", help="do not write NAME_overlay.png")
    seg.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    seg.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this (default 64e6)")
    seg.set_defaults(func=cmd_segment)
    return seg


def _add_dense_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prob-thd", type=float, help="probability under which a pixel becomes background")
    p.add_argument("--logit-scale", type=float, help="softmax temperature over the text queries")
    p.add_argument("--short-side", type=int, help="resize the short side to this many pixels first")
    p.add_argument(
        "--window",
        type=window_arg,
        default=argparse.SUPPRESS,
        help="sliding window CROP,STRIDE, or 'whole' for one pass over the whole image",
    )
    p.add_argument("--pamr", type=int, metavar="N", help="PAMR refinement iterations (0 = off)")
    p.add_argument("--templates", help="prompt template set (openai_imagenet_80, vild_14, simple, ...)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="trunk precision (default fp32)")


def _add_refine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--refine",
        choices=["none", "sam"],
        default="none",
        help="sam: every SAM mask takes the majority label inside it (OV-Stitcher, CorrCLIP)",
    )
    p.add_argument("--refine-preset", default="corrclip", help="SAM mask preset for --refine (default corrclip)")
    p.add_argument(
        "--refine-vote",
        choices=["labels", "logits"],
        default="labels",
        help="labels: majority label per mask; logits: argmax of the mean probabilities",
    )


def add_eval_parser(sub: Any) -> argparse.ArgumentParser:
    ev = sub.add_parser(
        "eval",
        help="evaluate a method on a benchmark (mIoU) under a protocol",
        description="Evaluate a method on one of the 8 benchmarks (or --suite all8) with the protocol's "
        "settings as data (src/ovss/protocols.py). Writes results.json and results.md with every setting and "
        "where it came from; resumes after a crash; under torchrun or accelerate launch each process takes a "
        "shard of the images.",
    )
    ev.add_argument("--method", "-m", default="sclip", help="method name, or 'ground-truth' to self-check a dataset")
    ev.add_argument(
        "--dataset",
        "-d",
        help="voc21, pc60, coco_object, voc20, pc59, coco_stuff171, cityscapes, ade20k150, or folder",
    )
    ev.add_argument("--suite", choices=["all8"], help="run the eight benchmarks and print the summary table")
    ev.add_argument("--root", required=True, help="dataset folder (standard mmseg layout; see `ovss data check`)")
    ev.add_argument("--labels", help="label folder, for --dataset folder")
    ev.add_argument("--protocol", "-p", help="protocol family (default: the method's own)")
    ev.add_argument("--names", type=classes_arg, help="class names replacing the benchmark's: 'a; b, c' or @FILE")
    ev.add_argument("--metric", choices=["union", "present"], help="mIoU convention (default: the protocol's)")
    ev.add_argument("--limit", type=int, help="evaluate only the first N images (a smoke test, not a result)")
    ev.add_argument("--out", "-o", default="ovss_eval", help="output folder (default ./ovss_eval)")
    add_model_args(ev)
    add_set_arg(ev, "override a protocol or method setting; recorded next to the result")
    _add_refine_options(ev)
    ev.set_defaults(func=cmd_eval)
    return ev


def method_command_parser(command: str, method: str) -> argparse.ArgumentParser:
    """``ovss COMMAND --method METHOD``: the shared options plus the method's own."""
    from .methods import get_method_spec

    spec = get_method_spec(method)
    hook = spec.commands.get(command)
    if hook is None:
        raise InputError(f"method {method!r} has no `ovss {command}`; {_methods_with(command)}", option="method")
    p = OvssArgumentParser(prog=f"ovss {command} --method {method}", description=hook.help)
    p.add_argument("--method", "-m", default=method, help=f"the method ({method})")
    p.add_argument("--out", "-o", required=True, help="output folder")
    add_model_args(p)
    add_set_arg(p, f"a {method} setting (see docs/ and `ovss methods -v`)")
    hook.add_arguments(p)
    p.set_defaults(func=hook.run)
    return p


def _methods_with(command: str) -> str:
    from .methods import available_methods

    names = [n for n, s in available_methods().items() if command in s.commands]
    return f"methods with it: {', '.join(names)}" if names else "no registered method has it"


def _method_command(argv: list[str]) -> argparse.Namespace:
    """Parse ``ovss train|fit|pseudo-label ...``; ``ovss fit tuss ...`` is read as ``--method tuss``."""
    from .methods import available_methods

    command, rest = argv[0], list(argv[1:])
    if rest and not rest[0].startswith("-") and rest[0] in available_methods():
        rest = ["--method", *rest]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", "-m")
    known, _ = pre.parse_known_args(rest)
    method = known.method
    if method is None:
        having = [n for n, s in available_methods().items() if command in s.commands]
        if len(having) == 1:
            method = having[0]
        elif any(a in ("-h", "--help") for a in rest):
            usage = f"usage: ovss {command} --method NAME [options]\n\n{METHOD_COMMANDS[command]}"
            print(f"{usage}; {_methods_with(command)}")
            raise SystemExit(0)
        else:
            raise InputError(f"`ovss {command}` needs --method NAME; {_methods_with(command)}", option="method")
    args = method_command_parser(command, method).parse_args(rest)
    args.command = command
    return args


def _settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    named = {
        "prob_thd": args.prob_thd,
        "logit_scale": args.logit_scale,
        "short_side": args.short_side,
        "pamr_iterations": args.pamr,
        "templates": args.templates,
        "precision": args.precision,
    }
    settings.update({k: v for k, v in named.items() if v is not None})
    if hasattr(args, "window"):  # 'whole' gives None, which must still override the default
        settings["window"] = args.window
    settings.update(dict(args.set))
    return settings


def _refine_arg(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.refine == "none":
        return None
    return {"sam": args.sam, "preset": args.refine_preset, "vote": args.refine_vote}


def cmd_segment(args: argparse.Namespace) -> int:

    from .api import Segmenter
    from .io import DEFAULT_MAX_PIXELS, remove_stale_parts
    from .jobs import finished, output_lock, plan_images, running
    from .methods import get_method_spec
    from .methods.settings import fixed_vocabulary, resolve_settings

    # Check everything cheap before loading any model.
    spec = get_method_spec(args.method)
    settings = _settings_from_args(args)
    resolved = resolve_settings(spec, checkpoint=args.checkpoint, overrides=settings)
    vocab = fixed_vocabulary(resolved.checkpoint, args.classes, args.background)
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    out = Path(args.out)
    paths, stems, unreadable = plan_images(args.inputs, out, max_pixels, kind="segment")
    job = {
        "method": spec.name,
        "clip": args.clip,
        "dino": args.dino,
        "sam": args.sam,
        "checkpoint": args.checkpoint,
        "settings": settings,
        "vocabulary": vocab.to_dict(),
        "refine": _refine_arg(args) or "none",
    }

    def outputs(stem: Path) -> list[Path]:
        png = out / f"{stem}.png"
        return [png] if args.no_overlay else [png, out / f"{stem}_overlay.png"]

    todo = [
        (p, s)
        for p, s in zip(paths, stems)
        if args.overwrite or not finished(out / f"{s}.json", job, outputs=outputs(s))
    ]
    skipped = len(paths) - len(todo)
    if not todo:
        print(f"ovss: all {len(paths)} images already done in {out} (use --overwrite to redo)", file=sys.stderr)
        return EXIT_USAGE if unreadable else 0

    segmenter = Segmenter(
        args.method,
        clip=args.clip,
        dino=args.dino,
        sam=args.sam,
        checkpoint=resolved.checkpoint,
        device=args.device,
        max_pixels=max_pixels,
        refine=_refine_arg(args),
        **settings,
    )
    with output_lock(out, "segment"), running("segment"):
        remove_stale_parts(out)
        failed = _segment_all(segmenter, todo, vocab, job, out, args.no_overlay) + unreadable
    done = len(todo) - (failed - unreadable)
    note = f", {skipped} already done" if skipped else ""
    print(f"ovss: segmented {done} of {len(todo)} images into {out}{note}", file=sys.stderr)
    if failed:
        print(f"ovss: error: {failed} image(s) failed; see the messages above", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _segment_all(segmenter: Any, todo: list, vocab: Any, job: dict[str, Any], out: Path, no_overlay: bool) -> int:
    """Segment and write each image (PNG, overlay, then the JSON that marks it done); returns the failures."""
    from tqdm import tqdm

    failed = 0
    for path, stem in tqdm(todo, desc="segment", unit="img", disable=len(todo) < 2, file=sys.stderr):
        try:
            result = segmenter.segment(path, vocab)
        except InputError as e:
            failed += 1
            tqdm.write(f"ovss: error: {e.with_flag(flag_for(e.option))}", file=sys.stderr)
            continue
        result.info["source"] = str(path)
        result.info["job"] = job
        target = out / stem
        result.save_png(target.parent / (target.name + ".png"))
        if not no_overlay:
            result.save_overlay(target.parent / (target.name + "_overlay.png"))
        result.save_json(target.parent / (target.name + ".json"))  # written last: marks the image as done
    return failed


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalJob, run_eval, summary_table
    from .protocols import BENCHMARKS

    if bool(args.suite) == bool(args.dataset):
        raise InputError("give either --dataset NAME or --suite all8")
    benchmarks = list(BENCHMARKS) if args.suite else [args.dataset]
    rows = {}
    for bench in benchmarks:
        out = Path(args.out) / bench if args.suite else Path(args.out)
        job = EvalJob(
            args.method,
            bench,
            Path(args.root),
            protocol=args.protocol,
            clip=args.clip,
            device=args.device,
            limit=args.limit,
            out=out,
            overrides=dict(args.set),
            names=args.names,
            metric=args.metric,
            labels=Path(args.labels) if args.labels else None,
            dino=args.dino,
            checkpoint=args.checkpoint,
            sam=args.sam,
            refine=_refine_arg(args),
        )
        report = run_eval(job)
        if report is None:  # not rank 0
            continue
        rows[bench] = report
        print(
            f"{bench}: {report['method']} ({report['protocol']['family']} protocol, {report['images']} images, "
            f"{report['metric']} convention)\n{report['table']}\nresults: {out / 'results.json'}"
        )
    if args.suite and rows:
        print(summary_table(rows))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from .methods import available_methods

    for name, spec in available_methods().items():
        commands = f"; commands: {', '.join(spec.commands)}" if spec.commands else ""
        print(
            f"{name:12s} {spec.description}  [{spec.reference}]; needs: {', '.join(spec.needs)}; "
            f"protocol: {spec.family}; tier {spec.tier}; checkpoint: {spec.checkpoint}{commands}"
        )
        if args.verbose:
            for field in dataclasses.fields(spec.settings):
                print(f"    {field.name} = {getattr(spec.settings, field.name)!r}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message)
    print(f"ovss: warning: {text.removeprefix('ovss: ')}", file=sys.stderr)


def _parse(argv: list[str] | None) -> argparse.Namespace | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in METHOD_COMMANDS:
        return _method_command(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return None
    return args


def main(argv: list[str] | None = None) -> int:
    import warnings

    from .jobs import interrupt_message, set_threads_per_process

    warnings.showwarning = _show_warning
    set_threads_per_process()
    try:
        args = _parse(argv)
        if args is None:
            return EXIT_USAGE
        return int(args.func(args))
    except OvssError as e:
        print(f"ovss: error: {e.with_flag(flag_for(e.option))}", file=sys.stderr)
        if isinstance(e, DistributedError):
            global _GROUP_BROKEN
            _GROUP_BROKEN = True
        return EXIT_USAGE
    except OSError as e:
        if e.errno not in _USER_OS_ERRORS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"ovss: error: {where}{e.strerror or e}; choose another output folder (--out) or free space",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(interrupt_message(), file=sys.stderr)
        return 130


_GROUP_BROKEN = False  # a collective failed: the process group cannot be torn down cleanly


def _exit(code: int) -> None:
    """Exit with ``code``. After a failed collective, gloo's worker threads are still running and the
    interpreter's teardown aborts the process (SIGABRT, "terminate called without an active
    exception", seen under load), which would hide the exit code 2: leave without the teardown."""
    if _GROUP_BROKEN:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _entry() -> None:  # pragma: no cover
    _exit(main())


if __name__ == "__main__":  # pragma: no cover
    _exit(main())
