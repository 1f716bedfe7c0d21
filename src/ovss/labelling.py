"""``ovss label``: auto-label a folder of photos into standard datasets (COCO, YOLO-seg, PNG,
Label Studio, CVAT) with any method and your class names. See docs/label.md.

The job runs in two stages. Segmenting writes a per-image cache (``OUT/cache``: label PNG,
confidence PNG where the method has probabilities, then a JSON marker, each atomically), so a
killed run resumes with the unfinished images, and each rank (``RANK``/``WORLD_SIZE``) takes its
share. Assembling (rank 0, once every image is done) builds every dataset from the cache in a
hidden folder and swaps it in, so no dataset file is ever half-written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .device import device_for_rank
from .distributed import wait_for_ranks
from .errors import InputError
from .jobs import register_job_kind

DEFAULT_FORMATS = "png,coco"
JOB_FILE = "label_job.json"
CONFIDENCE_SCALE = 65535  # confidence PNGs are 16-bit: value / 65535 is the probability

DESCRIPTION = """\
Label images with your class names and write training datasets. For each format F it writes
OUT/F/ (png: images/, labels/*.png, classes.txt for `ovss eval --dataset folder`; coco and
coco-rle: images/, annotations.json; yolo-seg: images/, labels/*.txt, data.yaml; labelstudio:
tasks.json, labeling_config.xml, images/; cvat: segmentation_mask.zip). OUT/cache holds the
per-image labels and confidence maps for review. Re-running resumes; under torchrun each process
takes a share of the images and rank 0 writes the datasets.

examples:
  ovss label photos/ --classes "cat; dog; sofa, couch" --clip openai/clip-vit-base-patch16 --out ds/
  ovss label photos/ --classes @classes.txt --background words --format coco,yolo-seg,cvat --out ds/
"""


register_job_kind(
    "label",
    ("cache/labels/{stem}.png", "cache/confidence/{stem}.png", "cache/done/{stem}.json"),
    "the images labelled so far are kept in OUT/cache, re-run the same command to continue and assemble the datasets",
)


def _cache_files(cache: Path, stem: str) -> dict[str, Path]:
    return {
        "labels": cache / "labels" / f"{stem}.png",
        "confidence": cache / "confidence" / f"{stem}.png",
        "marker": cache / "done" / f"{stem}.json",
    }


def _marker_state(marker: Path, job: dict[str, Any]) -> str | None:
    """``"done"``, ``"failed"`` (the image could not be labelled; retried on a re-run) or ``None``."""
    from .jobs import finished

    if not finished(marker, job):
        return None
    try:
        return "failed" if "error" in json.loads(marker.read_text()) else "done"
    except (OSError, ValueError):
        return None


def _check_folder_job(out: Path, job: dict[str, Any], overwrite: bool) -> None:
    """One folder holds one job's labels: another job's folder is refused before any model loads."""
    from .io import write_json

    path = out / JOB_FILE
    if path.exists() and not overwrite:
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous is not None and previous != job:
            raise InputError(
                f"{out} holds labels made with other classes, method or settings; "
                "choose another --out or pass --overwrite"
            )
    if not path.exists() or overwrite:
        write_json(path, job)


def _remove_stale_parts(files: dict[str, Path]) -> None:
    """Temporary files a killed run left for these outputs (io.atomic_path names them .NAME.*.part*)."""
    for path in files.values():
        if path.parent.is_dir():
            for stale in path.parent.glob(f".{path.name}.*.part*"):
                stale.unlink(missing_ok=True)


def label(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    classes: str | Sequence[str] | None,
    out: str | os.PathLike,
    formats: str | Sequence[str] = DEFAULT_FORMATS,
    method: str = "sclip",
    background: str | Sequence[str] | None = None,
    export: dict[str, Any] | None = None,
    overwrite: bool = False,
    confidence: bool = True,
    progress: bool = True,
    clip: Any = None,
    dino: Any = None,
    sam: Any = None,
    checkpoint: str | None = None,
    device: str | None = None,
    max_pixels: int | None = None,
    **settings: Any,
) -> dict[str, Any] | None:
    """Label ``images`` (files or folders) with ``classes`` and write datasets into ``out``.

    ``formats``: any of png, coco, coco-rle, yolo-seg, labelstudio, cvat (``"coco,png"`` or a
    list). ``export``: :class:`ovss.export.ExportSettings` fields (``min_area``,
    ``polygon_tolerance``, ...). Any other keyword is a method setting, as for
    :class:`ovss.Segmenter`. Returns a report on rank 0 (``None`` on the other ranks).

    >>> label("photos/", "cat; dog", "dataset/", formats="coco,yolo-seg", clip="openai/clip-vit-base-patch16")
    """
    from .distributed import init_if_launched, is_distributed
    from .export import ExportSettings, parse_formats
    from .io import DEFAULT_MAX_PIXELS
    from .jobs import dist_info, plan_images
    from .methods import get_method_spec
    from .vocab import build_vocabulary

    # Everything cheap is checked before any model loads.
    names = parse_formats(formats)
    export_settings = ExportSettings.from_dict(export)
    spec = get_method_spec(method)
    resolved = dataclasses.asdict(spec.make_settings(dict(settings)))
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    out = Path(out)
    inputs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    paths, stems, unreadable = plan_images(inputs, out, max_pixels, kind="label")
    # An output folder inside an input folder holds exported images: never label those again.
    own = [k for k, p in enumerate(paths) if out.resolve() not in p.resolve().parents]
    paths, stems = [paths[k] for k in own], [stems[k] for k in own]
    if not paths:
        raise InputError(f"no image to label outside the output folder {out}")
    if classes is None and not checkpoint:
        raise InputError('no class names given; pass them like --classes "cat; sofa, couch; plant"')
    vocab = build_vocabulary(classes, background) if classes is not None else None
    if "cvat" in names and vocab is not None:
        clash = next((n for n in vocab.names if ":" in n), None)
        if clash is not None:
            raise InputError(f"class name {clash!r} holds ':', which CVAT's labelmap.txt cannot; rename the class")
    models = {
        k: v if v is None or isinstance(v, str) else getattr(v, "name", type(v).__name__)
        for k, v in {"clip": clip, "dino": dino, "sam": sam, "checkpoint": checkpoint}.items()
    }
    rank, world = dist_info()
    init_if_launched()  # under torchrun the ranks meet at a bounded barrier before the export
    cache = out / "cache"
    items = [(p, s.as_posix()) for p, s in zip(paths, stems)]
    mine = items[rank::world]

    segmenter = None
    if vocab is None:  # a fitted classifier (tuss --checkpoint) brings its classes
        segmenter = _segmenter(method, clip, dino, sam, checkpoint, device, max_pixels, settings)
        vocab = getattr(segmenter.method, "vocabulary", None)
        if vocab is None:
            raise InputError(f"method {method!r} has no classes of its own; pass --classes")
    job = json.loads(
        json.dumps(
            {"method": spec.name, "models": models, "settings": resolved, "vocabulary": vocab.to_dict()}, default=str
        )
    )
    _check_folder_job(out, job, overwrite)

    for _, stem in mine:
        files = _cache_files(cache, stem)
        _remove_stale_parts(files)
        if overwrite:
            files["marker"].unlink(missing_ok=True)
    todo = [(p, s) for p, s in mine if _marker_state(_cache_files(cache, s)["marker"], job) != "done"]
    failed = 0
    if todo:
        if segmenter is None:
            segmenter = _segmenter(method, clip, dino, sam, checkpoint, device, max_pixels, settings)
        failed = _segment_all(segmenter, todo, vocab, cache, job, confidence, progress)
    skipped = len(mine) - len(todo)
    # under torchrun every rank meets at the barrier inside; otherwise only rank 0 waits for the files
    states = _wait_for_all(cache, items, job) if rank == 0 or is_distributed() else []
    if rank != 0:
        return None
    done = [(p, s) for (p, s), state in zip(items, states) if state == "done"]
    folders = {}
    if done:
        from .export import export_dataset

        folders = export_dataset(
            _cached_items(cache, done, list(vocab.names)),
            out,
            names,
            list(vocab.names),
            export_settings,
            progress=progress,
            total=len(done),
        )
    return {
        "images": len(items),
        "labelled": len(done),
        "skipped": skipped,
        "failed": sum(state == "failed" for state in states) + unreadable,
        "failed_here": failed,
        "formats": {k: str(v) for k, v in folders.items()},
        "classes": list(vocab.names),
        "out": str(out),
    }


def _segmenter(method, clip, dino, sam, checkpoint, device, max_pixels, settings):
    from .api import Segmenter

    return Segmenter(
        method,
        clip=clip,
        dino=dino,
        sam=sam,
        checkpoint=checkpoint,
        device=device_for_rank(device),
        max_pixels=max_pixels,
        **settings,
    )


def _segment_all(segmenter, todo, vocab, cache: Path, job: dict[str, Any], confidence: bool, progress: bool) -> int:
    """Segment and cache each image; returns how many failed (each with a marker saying why)."""
    from PIL import Image
    from tqdm import tqdm

    from .io import save_image, write_json
    from .jobs import stream_images

    failed = 0
    stream = stream_images(todo, desc="label", progress=progress)
    for path, stem, image, result, error in _segment_groups(segmenter, stream, vocab, confidence):
        files = _cache_files(cache, stem)
        if error is not None:
            tqdm.write(f"ovss: error: {path}: {error}", file=sys.stderr)
        elif image is None:
            error = "unreadable image"
        if error is not None:
            failed += 1
            write_json(files["marker"], {"job": job, "source": str(path), "error": error})
            continue
        save_image(files["labels"], result.to_pil())
        scores = result.label_confidence() if confidence else None
        if scores is not None:
            quantised = np.round(np.clip(scores, 0.0, 1.0) * CONFIDENCE_SCALE).astype(np.uint16)
            save_image(files["confidence"], Image.fromarray(quantised))
        else:
            files["confidence"].unlink(missing_ok=True)
        summary = result.summary()
        summary.update(job=job, source=str(path), confidence=scores is not None)
        write_json(files["marker"], summary)  # written last: marks the image done
    return failed


def _segment_groups(segmenter, stream, vocab, confidence: bool) -> Iterator[tuple[Any, str, Any, Any, str | None]]:
    """``(path, stem, image, result, error)`` per streamed image. Dense-CLIP methods take
    ``image_batch`` readable images per ``segment_many`` call (the labels of one at a time); a group
    that fails is redone one image at a time, so each error names its own image."""
    batch = getattr(segmenter.settings, "image_batch", 1)
    group: list[tuple[Any, str, Any]] = []
    for item in stream:
        group.append(item)
        if len(group) == batch:
            yield from _segment_group(segmenter, group, vocab, confidence)
            group = []
    yield from _segment_group(segmenter, group, vocab, confidence)


def _segment_group(segmenter, group, vocab, confidence: bool) -> list[tuple[Any, str, Any, Any, str | None]]:
    readable = [image for _, _, image in group if image is not None]
    if len(readable) > 1:
        try:
            results = iter(segmenter.segment_many(readable, vocab, return_probs=confidence))
            return [(p, s, im, None if im is None else next(results), None) for p, s, im in group]
        except InputError:
            pass  # one image at a time below: each error goes with its own image
    out = []
    for path, stem, image in group:
        result, error = None, None
        if image is not None:
            try:
                result = segmenter.segment(image, vocab, return_probs=confidence)
            except InputError as e:
                error = str(e)
        out.append((path, stem, image, result, error))
    return out


def _wait_for_all(cache: Path, items: list[tuple[Path, str]], job: dict[str, Any]) -> list[str]:
    """Each image's state once every rank has finished it (done or failed)."""

    def states() -> list[str | None]:
        return [_marker_state(_cache_files(cache, s)["marker"], job) for _, s in items]

    def missing() -> list[str]:
        return [stem for (_, stem), state in zip(items, states()) if state is None]

    wait_for_ranks(missing, "label: waiting for the other ranks' images")
    return states()  # type: ignore[return-value]


def _cached_items(cache: Path, done: list[tuple[Path, str]], class_names: list[str]) -> Iterator[Any]:
    """The cached results as export items, read one at a time."""
    from PIL import Image

    from .data.labels import read_label_png
    from .export import ExportItem
    from .result import SegResult

    for path, stem in done:
        files = _cache_files(cache, stem)
        labels = read_label_png(files["labels"]).astype(np.int32)
        scores = None
        if files["confidence"].is_file():
            with Image.open(files["confidence"]) as im:
                scores = np.asarray(im).astype(np.float32) / CONFIDENCE_SCALE
        yield ExportItem(stem, SegResult(labels, class_names, confidence=scores), image=path)


# --------------------------------------------------------------------------- command line


def add_label_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``label`` on an ``argparse`` sub-parser collection; returns the new parser."""
    from .cliargs import add_model_args, classes_arg, set_arg
    from .export import FORMATS

    p = subparsers.add_parser(
        "label",
        help="auto-label images into COCO, YOLO-seg, PNG, Label Studio or CVAT datasets",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    p.add_argument(
        "--classes",
        "-c",
        type=classes_arg,
        help='class names: "cat; sofa, couch; plant", or @FILE with one class per line',
    )
    p.add_argument("--method", "-m", default="sclip", help="method name (see `ovss methods`; default sclip)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument(
        "--format",
        "-f",
        default=DEFAULT_FORMATS,
        help=f"comma-separated formats: {', '.join(FORMATS)} (default {DEFAULT_FORMATS})",
    )
    p.add_argument(
        "--background",
        default="none",
        help="none, words (a 'background' class from 26 scene words), threshold, or words:a,b",
    )
    add_model_args(p)
    p.add_argument(
        "--set",
        type=set_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any method setting, e.g. --set prob_thd=0.3 (see `ovss methods -v`)",
    )
    p.add_argument("--min-area", type=int, default=None, help="smallest region exported as an instance (default 16 px)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="polygon simplification in pixels for coco and yolo-seg (default 1; 0 = every point)",
    )
    p.add_argument(
        "--export-set",
        type=set_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any export setting, e.g. --export-set include_background=True (see docs/label.md)",
    )
    p.add_argument("--no-confidence", action="store_true", help="keep no probabilities (less memory; no scores)")
    p.add_argument("--overwrite", action="store_true", help="redo every image, replacing another job's labels")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this (default 64e6)")
    p.set_defaults(func=cmd_label)
    return p


def cmd_label(args: argparse.Namespace) -> int:
    export = dict(args.export_set)
    if args.min_area is not None:
        export["min_area"] = args.min_area
    if args.tolerance is not None:
        export["polygon_tolerance"] = args.tolerance
    report = label(
        args.inputs,
        args.classes,
        args.out,
        formats=args.format,
        method=args.method,
        background=args.background,
        export=export,
        overwrite=args.overwrite,
        confidence=not args.no_confidence,
        clip=args.clip,
        dino=args.dino,
        sam=args.sam,
        checkpoint=args.checkpoint,
        device=args.device,
        max_pixels=args.max_pixels,
        **dict(args.set),
    )
    if report is None:
        return 0
    written = ", ".join(f"{k} -> {v}" for k, v in report["formats"].items()) or "no dataset (no image labelled)"
    print(
        f"ovss: labelled {report['labelled']} of {report['images']} images ({report['skipped']} already done); "
        f"{written}",
        file=sys.stderr,
    )
    if report["failed"]:
        print(f"ovss: error: {report['failed']} image(s) failed; see the messages above", file=sys.stderr)
        return 2
    return 0
