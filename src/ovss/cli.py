"""The ``ovss`` command line. Errors in the user's input print one line and exit with code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._version import __version__
from .data.cli import add_data_parser
from .errors import InputError, OvssError
from .masks.cli import add_masks_parser

EXIT_USAGE = 2

DESCRIPTION = """\
ovss labels every pixel of your images with any class names you give, using vision foundation
models (CLIP, SAM, DINOv2) and no human annotation.

quick start:
  ovss segment photo.jpg --classes "cat; sofa, couch; potted plant" --clip openai/clip-vit-base-patch16
  ovss segment photos/ --classes "person; car; road" --background words --out results/
  ovss methods                      list the methods and their settings

class names: ';' separates classes, ',' separates synonyms of one class ("sofa, couch").
models: --clip takes a Hugging Face hub id, a local directory (save_pretrained, safetensors)
or 'tiny-random' (a small random model for tests; its output is meaningless).
"""


def _classes_arg(value: str) -> str:
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise InputError(f"{path}: class file not found (--classes @FILE reads one class per line)")
        return path.read_text()
    return value


def _window_arg(value: str) -> tuple[int, int] | None:
    if value.lower() in ("whole", "none"):
        return None
    try:
        crop, stride = (int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected CROP,STRIDE (e.g. 224,112) or 'whole'") from None
    return crop, stride


def _set_arg(value: str) -> tuple[str, Any]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"{value!r}: expected KEY=VALUE")
    key, raw = value.split("=", 1)
    return key.strip(), _parse_value(raw.strip())


def _parse_value(raw: str) -> Any:
    import ast

    if raw.lower() in ("none", "null"):
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _model_args(parser: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    """The backbone and device options every command shares."""
    parser.add_argument("--clip", default=None, help="CLIP: hub id, local directory or tiny-random")
    parser.add_argument("--dino", default=None, help="DINOv2/DINO: hub id, local directory or tiny-random")
    parser.add_argument("--sam", default=None, help="SAM/SAM2 (tuss, fmbseg stage 1, --refine sam): hub id, local dir")
    if checkpoint:
        parser.add_argument("--checkpoint", "--classifier", dest="checkpoint", default=None,
                            help="trained weights (fmbseg) or a classifier folder from `ovss fit tuss`")  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovss", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"ovss {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser(
        "segment",
        help="segment images with your class names",
        description="Segment images or folders of images. For each input NAME it writes NAME.png (indexed "
        "labels, VOC palette), NAME_overlay.png (colours and legend) and NAME.json (class areas, "
        "settings, models). Finished images are skipped on a re-run.",
    )
    seg.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    seg.add_argument("--classes", "-c", type=_classes_arg,
                     help='class names: "cat; sofa, couch; plant", or @FILE with one class per line (may be left '
                     "out with a fitted tuss --classifier: its classes)")  # fmt: skip
    seg.add_argument("--method", "-m", default="sclip", help="method name (see `ovss methods`; default sclip)")
    seg.add_argument("--out", "-o", default="ovss_out", help="output folder (default ./ovss_out)")
    _model_args(seg)
    seg.add_argument(
        "--background",
        default="none",
        help="none: every pixel gets one of your classes; words: add a 'background' class queried by 26 "
        "scene words (sky, wall, road, ...); threshold: pixels whose best probability is under "
        "--prob-thd (default 0.5 in this mode) become background; words:sky,wall,...: your own words",
    )
    seg.add_argument("--prob-thd", type=float, help="probability under which a pixel becomes background")
    seg.add_argument("--logit-scale", type=float, help="softmax temperature over the text queries")
    seg.add_argument("--short-side", type=int, help="resize the short side to this many pixels first")
    seg.add_argument("--window", type=_window_arg, default=argparse.SUPPRESS,
                     help="sliding window CROP,STRIDE, or 'whole' for one pass over the whole image")  # fmt: skip
    seg.add_argument("--pamr", type=int, metavar="N", help="PAMR refinement iterations (0 = off)")
    seg.add_argument("--templates", help="prompt template set (openai_imagenet_80, vild_14, simple, ...)")
    seg.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="trunk precision (default fp32)")
    seg.add_argument("--set", type=_set_arg, action="append", default=[], metavar="KEY=VALUE",
                     help="any other method setting, e.g. --set area_thd=0.1 (see `ovss methods -v`)")  # fmt: skip
    seg.add_argument("--refine", choices=["none", "sam"], default="none",
                     help="sam: every SAM mask takes the majority label inside it (OV-Stitcher, CorrCLIP)")  # fmt: skip
    seg.add_argument("--refine-preset", default="corrclip", help="SAM mask preset for --refine (default corrclip)")
    seg.add_argument("--refine-vote", choices=["labels", "logits"], default="labels",
                     help="labels: majority label per mask; logits: argmax of the mean probabilities")  # fmt: skip
    seg.add_argument("--no-overlay", action="store_true", help="do not write NAME_overlay.png")
    seg.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    seg.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this (default 64e6)")
    seg.set_defaults(func=cmd_segment)

    ev = sub.add_parser(
        "eval",
        help="evaluate a method on a benchmark (mIoU) under a protocol",
        description="Evaluate a method on one of the 8 benchmarks (or --suite all8) with the protocol's "
        "settings as data (PROTOCOL.md). Writes results.json and results.md with every setting; resumes "
        "after a crash; under torchrun or accelerate launch each process takes a shard of the images.",
    )
    ev.add_argument("--method", "-m", default="sclip", help="method name, or 'ground-truth' to self-check a dataset")
    ev.add_argument("--dataset", "-d", help="voc21, pc60, coco_object, voc20, pc59, coco_stuff171, cityscapes, "
                    "ade20k150, or folder")  # fmt: skip
    ev.add_argument("--suite", choices=["all8"], help="run the eight benchmarks and print the summary table")
    ev.add_argument("--root", required=True, help="dataset folder (standard mmseg layout; see `ovss data check`)")
    ev.add_argument("--labels", help="label folder, for --dataset folder")
    ev.add_argument("--protocol", "-p", help="protocol family (default: the method's own)")
    ev.add_argument("--names", type=_classes_arg, help="class names replacing the benchmark's: 'a; b, c' or @FILE")
    ev.add_argument("--metric", choices=["union", "present"], help="mIoU convention (default: the protocol's)")
    ev.add_argument("--limit", type=int, help="evaluate only the first N images (a smoke test, not a result)")
    ev.add_argument("--out", "-o", default="ovss_eval", help="output folder (default ./ovss_eval)")
    _model_args(ev)
    ev.add_argument("--set", type=_set_arg, action="append", default=[], metavar="KEY=VALUE",
                    help="override a protocol or method setting; recorded next to the result")  # fmt: skip
    ev.set_defaults(func=cmd_eval)

    pl = sub.add_parser(
        "pseudo-label",
        help="make training labels without annotation (fmbseg stage 1)",
        description="FMbSeg stage 1: CLIP tags each image, CLIP-guided SAM point prompts and SAM automatic masks "
        "labelled by CLIP give a label map per image (OUT/NAME.png, 255 = unlabelled) and OUT/NAME.json (tags, "
        "points, per-mask scores), plus OUT/vocabulary.json. Streams any number of images, resumes after a crash, "
        "and shards across processes under torchrun or accelerate launch.",
    )
    pl.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    pl.add_argument("--method", "-m", default="fmbseg", choices=["fmbseg"], help="the method (fmbseg)")
    pl.add_argument("--vocab", required=True, type=_classes_arg,
                    help="a benchmark (voc21, coco_stuff171, ...), classes 'a; b, c', or @FILE")  # fmt: skip
    pl.add_argument("--background", default=None, help="for your own classes: none, words, words:a,b")
    pl.add_argument("--out", "-o", required=True, help="output folder")
    _model_args(pl, checkpoint=False)
    pl.add_argument("--preset", default=None, help="SAM mask preset (see `ovss masks --help`; default exact)")
    pl.add_argument("--set", type=_set_arg, action="append", default=[], metavar="KEY=VALUE",
                    help="any stage-1 setting (docs/fmbseg.md), e.g. --set tag_tau=0.3")  # fmt: skip
    pl.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    pl.set_defaults(func=cmd_pseudo_label)

    tr = sub.add_parser(
        "train",
        help="train a method's module on pseudo-labels (fmbseg)",
        description="Train FMbSeg's alignment module on frozen DINOv2 features with TSupCon, from the pseudo-labels "
        "of `ovss pseudo-label`. Writes OUT/checkpoint.safetensors (with its full config) after every epoch, "
        "OUT/loss_log.jsonl, and a resumable state: re-run the same command to continue after a crash. Runs under "
        "`accelerate launch` on several GPUs or nodes unchanged.",
    )
    tr.add_argument("--method", "-m", default="fmbseg", choices=["fmbseg"], help="the method to train")
    tr.add_argument("--images", required=True, help="folder of training images")
    tr.add_argument("--labels", required=True, help="folder of label PNGs (same names) with vocabulary.json")
    tr.add_argument("--out", "-o", required=True, help="output folder")
    _model_args(tr, checkpoint=False)
    tr.add_argument("--epochs", type=int, help="training epochs (default 10)")
    tr.add_argument("--loss", choices=["tsupcon", "supcon", "text", "ce"], help="loss (default tsupcon)")
    tr.add_argument("--module", choices=["block", "mlp", "linear"], help="alignment module (default block)")
    tr.add_argument("--set", type=_set_arg, action="append", default=[], metavar="KEY=VALUE",
                    help="any training setting (docs/fmbseg.md), e.g. --set tau=0.1")  # fmt: skip
    tr.set_defaults(func=cmd_train)

    fit = sub.add_parser(
        "fit",
        help="fit a method's classifier on a folder of images (tuss: ovss, wsss, sss, fsss)",
        description="TUSS without fine-tuning anything: SAM masks of every training image embedded by DBA-CLIP "
        "(OUT/bank, resumable: re-run to continue), then the classifier of one supervision setting: ovss (class "
        "names only), wsss (image tags: --tags FILE, a JSON object {image name: [class names]}), sss (pixel labels "
        "for some images: --labels DIR), fsss (pixel labels for all). Label PNGs hold class indices in --vocab "
        "order (background first when there is one; 255 = ignore). Writes OUT/classifier.safetensors for "
        "`ovss segment --method tuss --classifier OUT`, OUT/seeds/NAME.png (training images painted with the "
        "fitted scores: WSSS pseudo-masks) and OUT/fit.json.",
    )
    fit.add_argument("method", choices=["tuss"], help="the method (tuss)")
    fit.add_argument("--setting", required=True, choices=["ovss", "wsss", "sss", "fsss"], help="supervision setting")
    fit.add_argument("--images", required=True, nargs="+", help="training images or folders")
    fit.add_argument("--tags", help="wsss: JSON file {image file name: [class names]}")
    fit.add_argument("--labels", help="sss/fsss: folder of label PNGs named like the images")
    fit.add_argument("--vocab", required=True, type=_classes_arg,
                     help="a benchmark (voc21, coco_object, ...), classes 'a; b, c', or @FILE")  # fmt: skip
    fit.add_argument("--background", default=None, help="for your own classes: none, words, words:a,b")
    fit.add_argument("--out", "-o", required=True, help="output folder")
    _model_args(fit, checkpoint=False)
    fit.add_argument("--preset", default=None, help="SAM mask preset (default tuss; see `ovss masks --help`)")
    fit.add_argument("--set", type=_set_arg, action="append", default=[], metavar="KEY=VALUE",
                     help="a fit setting (heldout, lp_weight, k_bar, probe_iters, iter_factor, lp_k, lp_alpha, "
                     "weighting, seed) or a tuss method setting (short_side, window, templates, ...)")  # fmt: skip
    fit.set_defaults(func=cmd_fit)

    add_masks_parser(sub)
    add_data_parser(sub)

    met = sub.add_parser("methods", help="list the registered methods and their settings")
    met.add_argument("-v", "--verbose", action="store_true", help="show every setting with its default")
    met.set_defaults(func=cmd_methods)
    return parser


def _settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    named = {"prob_thd": args.prob_thd, "logit_scale": args.logit_scale, "short_side": args.short_side,
             "pamr_iterations": args.pamr, "templates": args.templates, "precision": args.precision}  # fmt: skip
    settings.update({k: v for k, v in named.items() if v is not None})
    if hasattr(args, "window"):  # 'whole' gives None, which must still override the default
        settings["window"] = args.window
    settings.update(dict(args.set))
    return settings


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .api import Segmenter
    from .io import DEFAULT_MAX_PIXELS
    from .jobs import finished, plan_images
    from .methods import get_method_spec

    # Check everything cheap before loading any model.
    spec = get_method_spec(args.method)
    settings = _settings_from_args(args)
    spec.make_settings(settings)
    vocab = _segment_vocabulary(spec, args)
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    out = Path(args.out)
    paths, stems, unreadable = plan_images(args.inputs, out, max_pixels)
    job = {"method": spec.name, "clip": args.clip, "dino": args.dino, "sam": args.sam, "checkpoint": args.checkpoint,
           "settings": settings, "vocabulary": vocab.to_dict(), "refine": args.refine}  # fmt: skip
    if args.refine != "none":
        job["refine"] = {"sam": args.sam, "preset": args.refine_preset, "vote": args.refine_vote}
    todo = [(p, s) for p, s in zip(paths, stems) if args.overwrite or not finished((out / s).with_suffix(".json"), job)]
    skipped = len(paths) - len(todo)
    if not todo:
        print(f"ovss: all {len(paths)} images already done in {out} (use --overwrite to redo)", file=sys.stderr)
        return EXIT_USAGE if unreadable else 0

    refine = None
    if args.refine == "sam":
        refine = {"sam": args.sam or "tiny-random", "preset": args.refine_preset, "vote": args.refine_vote}
    segmenter = Segmenter(args.method, clip=args.clip, dino=args.dino, sam=args.sam, checkpoint=args.checkpoint,
                          device=args.device, max_pixels=max_pixels, refine=refine, **settings)  # fmt: skip
    failed = unreadable
    for path, stem in tqdm(todo, desc="segment", unit="img", disable=len(todo) < 2, file=sys.stderr):
        try:
            result = segmenter.segment(path, vocab)
        except InputError as e:
            failed += 1
            tqdm.write(f"ovss: error: {e}", file=sys.stderr)
            continue
        result.info["source"] = str(path)
        result.info["job"] = job
        target = out / stem
        result.save_png(target.with_suffix(".png"))
        if not args.no_overlay:
            result.save_overlay(target.parent / (target.name + "_overlay.png"))
        result.save_json(target.with_suffix(".json"))  # written last: marks the image as done
    done = len(todo) - (failed - unreadable)
    note = f", {skipped} already done" if skipped else ""
    print(f"ovss: segmented {done} of {len(todo)} images into {out}{note}", file=sys.stderr)
    if failed:
        print(f"ovss: error: {failed} image(s) failed; see the messages above", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _segment_vocabulary(spec, args: argparse.Namespace):
    from .vocab import build_vocabulary

    fixed = None
    if spec.name == "tuss" and args.checkpoint:
        from .methods.tuss.classifier import TUSSClassifier

        fixed = TUSSClassifier.load(args.checkpoint, tensors=False)
    if args.classes is not None:
        vocab = build_vocabulary(args.classes, args.background)
        if fixed is not None:
            fixed.check_vocabulary(vocab)
        return vocab
    if fixed is not None:
        return fixed.vocabulary
    raise InputError('no class names given; pass them like --classes "cat; sofa, couch; plant"')


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
        )
        report = run_eval(job)
        if report is None:  # not rank 0
            continue
        rows[bench] = report
        print(f"{bench}: {report['method']} ({report['protocol']['family']} protocol, {report['images']} images, "
              f"{report['metric']} convention)\n{report['table']}\nresults: {out / 'results.json'}")  # fmt: skip
    if args.suite and rows:
        print(summary_table(rows))
    return 0


def _vocabulary_arg(value: str, background: str | None, family: str = "sclip"):
    """A benchmark key gives its class names and the ``family`` protocol's background; anything else is a class list."""
    from .protocols import BENCHMARKS
    from .vocab import build_vocabulary

    if value.strip() in BENCHMARKS:
        from .data.classes import benchmark_class_names
        from .protocols import resolve

        names = benchmark_class_names(value.strip())
        bg = resolve(family, value.strip()).background
        if bg != "none":
            names = names[1:]
        return build_vocabulary(list(names), bg if bg != "none" else None, allow_overlap=True)
    return build_vocabulary(value, background)


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    import dataclasses

    from .api import load_backbone
    from .device import resolve_device
    from .io import DEFAULT_MAX_PIXELS
    from .jobs import plan_images
    from .masks.sam import SamMaskGenerator
    from .methods.fmbseg.pseudo import FMbSegPseudoLabeler, PseudoLabelSettings, run_pseudo_labels

    known = {f.name for f in dataclasses.fields(PseudoLabelSettings)}
    unknown = sorted(set(dict(args.set)) - known)
    if unknown:
        raise InputError(f"pseudo-labelling has no setting {unknown[0]!r}; settings: {', '.join(sorted(known))}")
    settings = PseudoLabelSettings(**dict(args.set))
    if args.preset:
        settings = dataclasses.replace(settings, amg_preset=args.preset)
    settings.validate()
    vocab = _vocabulary_arg(args.vocab, args.background)
    paths, stems, unreadable = plan_images(args.inputs, Path(args.out), DEFAULT_MAX_PIXELS)
    device = resolve_device(args.device)
    clip = load_backbone("clip", args.clip or "tiny-random", device)
    generator = SamMaskGenerator(args.sam or "tiny-random", preset=settings.amg_preset, device=device)
    labeler = FMbSegPseudoLabeler(clip, generator, generator, settings, device)
    job = {"method": "fmbseg", "clip": args.clip, "sam": args.sam, "settings": dataclasses.asdict(settings),
           "vocabulary": vocab.to_dict()}  # fmt: skip
    stats = run_pseudo_labels(paths, stems, vocab, Path(args.out), labeler, job, overwrite=args.overwrite)
    print(f"ovss: pseudo-labelled {stats['done']} images into {args.out} ({stats['skipped']} already done, "
          f"{stats['failed']} failed)", file=sys.stderr)  # fmt: skip
    return EXIT_USAGE if stats["failed"] or unreadable else 0


def cmd_train(args: argparse.Namespace) -> int:
    from .methods.fmbseg.train import settings_from_overrides, train_fmbseg

    overrides = dict(args.set)
    overrides.update({k: v for k, v in {"epochs": args.epochs, "loss": args.loss, "module": args.module}.items()
                      if v is not None})  # fmt: skip
    settings = settings_from_overrides(overrides)
    result = train_fmbseg(Path(args.images), Path(args.labels), Path(args.out), settings,
                          dino_name=args.dino or "tiny-random", clip_name=args.clip or "tiny-random",
                          device=args.device)  # fmt: skip
    print(f"ovss: trained {result['epochs']} epochs ({result['steps']} steps); checkpoint {result['checkpoint']}",
          file=sys.stderr)  # fmt: skip
    return 0


def _benchmark_settings(vocab: str) -> dict[str, Any]:
    from .protocols import BENCHMARKS, resolve

    return dict(resolve("tuss", vocab.strip()).settings) if vocab.strip() in BENCHMARKS else {}


def cmd_fit(args: argparse.Namespace) -> int:
    import dataclasses

    from ._version import __version__
    from .api import Segmenter
    from .io import DEFAULT_MAX_PIXELS
    from .jobs import plan_images
    from .methods import get_method_spec
    from .methods.tuss.fit import FitSettings, fit_settings, fit_tuss

    # Check everything cheap before loading any model.
    spec = get_method_spec(args.method)
    given = dict(args.set)
    fit_keys = {f.name for f in dataclasses.fields(FitSettings)}
    method_keys = {f.name for f in dataclasses.fields(spec.settings)}
    unknown = sorted(set(given) - fit_keys - method_keys)
    if unknown:
        raise InputError(f"ovss fit tuss has no setting {unknown[0]!r}; fit settings: {', '.join(sorted(fit_keys))}; "
                         f"method settings: {', '.join(sorted(method_keys))}")  # fmt: skip
    method_settings = _benchmark_settings(args.vocab)  # a benchmark vocabulary embeds as its eval protocol does
    method_settings.update({k: v for k, v in given.items() if k not in fit_keys})
    if args.preset:
        method_settings["sam_preset"] = args.preset
    spec.make_settings(method_settings).validate()
    fs = fit_settings({k: v for k, v in given.items() if k in fit_keys})
    vocab = _vocabulary_arg(args.vocab, args.background, family="tuss")
    out = Path(args.out)
    paths, stems, unreadable = plan_images(args.images, out, DEFAULT_MAX_PIXELS)
    if unreadable:
        raise InputError(f"{unreadable} training image(s) are unreadable (listed above); remove them and re-run")
    models = {"clip": args.clip or "tiny-random", "sam": args.sam or "tiny-random"}
    seg = Segmenter(args.method, clip=models["clip"], sam=models["sam"], device=args.device, **method_settings)
    job = {"method": spec.name, "models": models, "settings": dataclasses.asdict(seg.settings),
           "ovss_version": __version__}  # fmt: skip
    report = fit_tuss(seg.method, paths, [str(s) for s in stems], out, vocab, args.setting, fs,
                      tags=Path(args.tags) if args.tags else None, labels=Path(args.labels) if args.labels else None,
                      job=job, models=models)  # fmt: skip
    if report is None:
        return 0
    chosen = f", selected lp_weight {report['lp_weight']} k_bar {report['k_bar']}" if "selection" in report else ""
    print(f"ovss: fitted tuss ({args.setting}) on {report['images']} images, {report['masks']} masks{chosen}; "
          f"classifier {report['classifier']}", file=sys.stderr)  # fmt: skip
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from .methods import available_methods

    for name, spec in available_methods().items():
        print(f"{name:12s} {spec.description}  [{spec.reference}]; needs: {', '.join(spec.needs)}")
        if args.verbose:
            for field in dataclasses.fields(spec.settings):
                print(f"    {field.name} = {getattr(spec.settings, field.name)!r}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message)
    print(f"ovss: warning: {text.removeprefix('ovss: ')}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except OvssError as e:
        print(f"ovss: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ovss: interrupted; finished images are kept, re-run to continue", file=sys.stderr)
        return 130


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
