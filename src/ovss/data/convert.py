"""Label converters for the benchmarks that need one (docs/reference-protocol.md §3), and a COCO panoptic decoder.

Every converter is resumable: an output that already exists is skipped, and each output is
written to a temporary file that replaces the target only when complete, so an interrupted or
failed run never leaves a partial PNG. Each returns :class:`ConvertCounts`.

- :func:`convert_cityscapes`: ``gtFine`` ``*_labelIds.png`` (34 ids) -> ``*_labelTrainIds.png`` (19, 255).
- :func:`convert_coco_stuff`: raw ``stuffthingmaps`` -> ``*_labelTrainIds.png`` (0..170, 255).
- :func:`convert_coco_object`: raw ``stuffthingmaps`` -> ``*_instanceTrainIds.png`` (0 bg, 1..80).
- VOC20, PC59 and ADE20K-150 need no files: ``reduce_zero_label`` is applied when reading.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..io import atomic_path
from .classes import COCO_LAST_THING_ID, COCO_STUFF_IDS, COCO_THING_IDS
from .labels import IGNORE_INDEX, read_label_png


@dataclass(frozen=True)
class ConvertCounts:
    """What a converter did: files written now, files already present (skipped), output root."""

    converted: int
    skipped: int
    out: Path

    @property
    def total(self) -> int:
        return self.converted + self.skipped


# --------------------------------------------------------------------------- lookup tables

# Cityscapes label id -> train id (the 19 evaluated classes; every other id is ignored).
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
CITYSCAPES_NUM_IDS = 34  # label ids 0..33 (license plate, id -1, is never drawn into the PNGs)

_INVALID = -1


def _lut(mapping: Mapping[int, int]) -> np.ndarray:
    lut = np.full(256, _INVALID, dtype=np.int16)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def cityscapes_lut() -> np.ndarray:
    """256-entry table: Cityscapes label id -> train id (255 for ignored ids, -1 for impossible values)."""
    return _lut({i: CITYSCAPES_ID_TO_TRAIN_ID.get(i, IGNORE_INDEX) for i in range(CITYSCAPES_NUM_IDS)})


def coco_stuff_lut() -> np.ndarray:
    """256-entry table: stuffthingmaps value (category id - 1) -> COCO-Stuff-171 train id; 255 stays 255.

    The 171 category ids that occur in COCO-Stuff (ids 1..182 minus the 11 removed COCO thing ids)
    are numbered 0..170 in order. Values of removed ids cannot occur and are marked invalid (-1).
    """
    mapping = {cat - 1: train for train, cat in enumerate(COCO_STUFF_IDS)}
    mapping[IGNORE_INDEX] = IGNORE_INDEX
    return _lut(mapping)


def coco_object_lut(unlabelled: str = "background") -> np.ndarray:
    """256-entry table: stuffthingmaps value -> COCO-Object id (0 background, 1..80 things).

    The 80 thing categories become 1..80 in category-id order; every stuff category becomes 0.
    ``unlabelled`` says what the unlabelled value 255 becomes: ``"background"`` (0, what the
    GroupViT/SCLIP ``cvt_coco_object.py`` converter writes, so numbers match published ones) or
    ``"ignore"`` (255 kept, so unlabelled pixels are not scored).
    """
    # Our reading of docs/reference-protocol.md §2/§3 (which leaves the unlabelled pixels open, "[our choice]"):
    # in the GroupViT converter every source value above 90, including 255, is set to background,
    # so unlabelled pixels count as background in the published COCO-Object numbers. That is our
    # default; "ignore" is offered for those who prefer not to score unannotated pixels.
    if unlabelled not in ("background", "ignore"):
        raise InputError(f"unlabelled={unlabelled!r}; choose 'background' (0, as published) or 'ignore' (255)")
    mapping = {cat - 1: 0 for cat in COCO_STUFF_IDS if cat > COCO_LAST_THING_ID}
    mapping.update({cat - 1: k for k, cat in enumerate(COCO_THING_IDS, start=1)})
    mapping[IGNORE_INDEX] = 0 if unlabelled == "background" else IGNORE_INDEX
    return _lut(mapping)


def apply_lut(
    label: np.ndarray, lut: np.ndarray, path: str | os.PathLike = "<array>", what: str = "label"
) -> np.ndarray:
    """Map ``label`` through ``lut``; values the table marks invalid raise an InputError naming ``path``."""
    if label.size and (label.min() < 0 or label.max() >= len(lut)):
        raise InputError(f"{path}: values outside 0..{len(lut) - 1}; is this a {what} file?")
    out = lut[label]
    if (out == _INVALID).any():
        bad = np.unique(label[out == _INVALID])
        shown = ", ".join(str(v) for v in bad[:6]) + (", ..." if len(bad) > 6 else "")
        raise InputError(f"{path}: values {shown} cannot occur in a {what} file; is it the right kind of file?")
    return out.astype(np.uint8)


def cityscapes_to_train_ids(label_ids: np.ndarray, path: str | os.PathLike = "<array>") -> np.ndarray:
    """Cityscapes ``labelIds`` array -> ``labelTrainIds`` array (uint8, 255 ignored)."""
    return apply_lut(label_ids, cityscapes_lut(), path, "Cityscapes *_gtFine_labelIds.png")


def stuffthingmap_to_171(raw: np.ndarray, path: str | os.PathLike = "<array>") -> np.ndarray:
    """COCO-Stuff raw map (value = category id - 1, 255 unlabelled) -> train ids 0..170, 255."""
    return apply_lut(raw, coco_stuff_lut(), path, "COCO-Stuff stuffthingmaps")


def stuffthingmap_to_object(
    raw: np.ndarray, path: str | os.PathLike = "<array>", unlabelled: str = "background"
) -> np.ndarray:
    """COCO-Stuff raw map -> COCO-Object map (0 background, 1..80 things; see :func:`coco_object_lut`)."""
    return apply_lut(raw, coco_object_lut(unlabelled), path, "COCO-Stuff stuffthingmaps")


# --------------------------------------------------------------------------- the file loop


def _run(
    jobs: Sequence[tuple[Path, Path]],
    convert: Callable[[np.ndarray, Path], np.ndarray],
    desc: str,
    progress: bool,
    out: Path,
) -> ConvertCounts:
    from tqdm import tqdm

    todo = [(src, dst) for src, dst in jobs if not dst.exists()]
    for src, dst in tqdm(todo, desc=desc, unit="file", disable=not progress or not todo, file=sys.stderr):
        result = convert(read_label_png(src), src)
        with atomic_path(dst) as tmp:
            Image.fromarray(result.astype(np.uint8)).save(tmp, format="PNG")
    return ConvertCounts(converted=len(todo), skipped=len(jobs) - len(todo), out=out)


def _locate(root: str | os.PathLike, folder_name: str, marker: str, what: str) -> Path:
    base = Path(root).expanduser()
    if not base.is_dir():
        raise InputError(f"{base}: no such folder; pass the {what} folder (or the folder that contains it)")
    for candidate in (base / folder_name, base):
        if (candidate / marker).is_dir():
            return candidate
    raise InputError(f"{base / folder_name / marker} not found; is ROOT the folder that contains {folder_name}?")


def _split_dirs(parent: Path, splits: Iterable[str] | None, rename: Callable[[str], str]) -> list[Path]:
    if splits is None:
        return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    dirs = [parent / rename(s) for s in splits]
    for d in dirs:
        if not d.is_dir():
            raise InputError(f"{d} not found; choose splits that exist in {parent}")
    return dirs


def convert_cityscapes(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    splits: Iterable[str] | None = None,
    progress: bool = True,
) -> ConvertCounts:
    """Write ``gtFine/SPLIT/CITY/*_gtFine_labelTrainIds.png`` from the ``*_gtFine_labelIds.png`` files.

    ``root`` is the Cityscapes folder (with ``gtFine/``) or its parent. Outputs go beside the inputs,
    or under ``out`` with the same relative paths. ``splits`` defaults to every folder in ``gtFine``.
    """
    city = _locate(root, "cityscapes", "gtFine", "Cityscapes")
    target = Path(out) if out is not None else city
    jobs = []
    for split in _split_dirs(city / "gtFine", splits, lambda s: s):
        for src in sorted(split.glob("*/*_gtFine_labelIds.png")):
            dst = target / src.relative_to(city)
            jobs.append((src, dst.with_name(src.name.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))))
    if not jobs:
        raise InputError(
            f"no CITY/*_gtFine_labelIds.png files in {city / 'gtFine'}; unzip gtFine_trainvaltest.zip there"
        )
    return _run(jobs, cityscapes_to_train_ids, "cityscapes trainIds", progress, target)


def _coco_jobs(root: str | os.PathLike, out: str | os.PathLike | None, splits: Iterable[str] | None, suffix: str):
    coco = _locate(root, "coco_stuff164k", "annotations", "COCO-Stuff-164k")
    target = Path(out) if out is not None else coco
    ann = coco / "annotations"
    jobs = []
    for split in _split_dirs(ann, splits, lambda s: s if s.endswith("2017") else f"{s}2017"):
        for src in sorted(split.glob("*.png")):
            if "TrainIds" in src.name or src.name.startswith("."):
                continue  # our own outputs (and mmseg's) live beside the raw maps
            dst = target / src.relative_to(coco)
            jobs.append((src, dst.with_name(src.stem + suffix)))
    if not jobs:
        raise InputError(f"no raw stuffthingmaps PNGs in {ann}/*2017; unzip stuffthingmaps_trainval2017.zip into {ann}")
    return jobs, target


def convert_coco_stuff(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    splits: Iterable[str] | None = None,
    progress: bool = True,
) -> ConvertCounts:
    """Write ``annotations/SPLIT/N_labelTrainIds.png`` (0..170, 255) from the raw ``annotations/SPLIT/N.png``.

    ``root`` is the ``coco_stuff164k`` folder (raw ``stuffthingmaps`` unzipped into ``annotations/``)
    or its parent. ``splits`` ("val", "train2017", ...) defaults to every folder in ``annotations``.
    """
    jobs, target = _coco_jobs(root, out, splits, "_labelTrainIds.png")
    return _run(jobs, stuffthingmap_to_171, "coco-stuff 171", progress, target)


def convert_coco_object(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    splits: Iterable[str] | None = None,
    unlabelled: str = "background",
    progress: bool = True,
) -> ConvertCounts:
    """Write ``annotations/SPLIT/N_instanceTrainIds.png`` (COCO-Object) from the raw stuffthingmaps.

    80 things -> 1..80, all stuff -> 0 (background); ``unlabelled`` chooses what 255 becomes
    (see :func:`coco_object_lut`). The file names are those the SCLIP configs read.
    """
    lut = coco_object_lut(unlabelled)
    jobs, target = _coco_jobs(root, out, splits, "_instanceTrainIds.png")
    return _run(
        jobs, lambda raw, src: apply_lut(raw, lut, src, "COCO-Stuff stuffthingmaps"), "coco-object", progress, target
    )


# --------------------------------------------------------------------------- COCO panoptic


def read_panoptic_ids(panoptic: str | os.PathLike | np.ndarray) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG: ``id = R + 256 G + 65536 B`` as ``(H, W) int64`` (0 = unlabelled)."""
    if isinstance(panoptic, np.ndarray):
        rgb = panoptic
        name = "<array>"
    else:
        name = str(panoptic)
        try:
            with Image.open(panoptic) as im:
                if im.mode != "RGB":
                    raise InputError(f"{name}: panoptic PNG has mode {im.mode}; expected an RGB id image")
                rgb = np.asarray(im)
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"{name}: not a readable PNG ({str(e).splitlines()[0][:120]})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"{name}: panoptic ids need an (H, W, 3) RGB array, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _segments(segments_info: Sequence[Mapping[str, Any]] | Mapping[str, Any] | str | os.PathLike) -> list:
    if isinstance(segments_info, (str, os.PathLike)):
        segments_info = json.loads(Path(segments_info).read_text())
    if isinstance(segments_info, Mapping):
        segments_info = segments_info["segments_info"]
    return list(segments_info)  # a sequence of segment dicts here


def panoptic_segment_areas(panoptic: str | os.PathLike | np.ndarray, segments_info: Any) -> dict[int, int]:
    """Pixel count of every segment listed in ``segments_info`` (comparable with its ``area`` field)."""
    ids = read_panoptic_ids(panoptic)
    found, counts = np.unique(ids, return_counts=True)
    have = dict(zip(found.tolist(), counts.tolist()))
    return {int(s["id"]): int(have.get(int(s["id"]), 0)) for s in _segments(segments_info)}


def panoptic_to_semantic(
    panoptic: str | os.PathLike | np.ndarray,
    segments_info: Any,
    category_to_label: Mapping[int, int] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Semantic ``(H, W) int64`` map from a COCO panoptic PNG and its ``segments_info``.

    ``segments_info`` is the annotation's list of segments (or the annotation dict, or a JSON file).
    By default category id c becomes c - 1, the COCO-Stuff ``stuffthingmaps`` convention, so the
    result can go through :func:`stuffthingmap_to_171` or :func:`stuffthingmap_to_object`; the
    merged panoptic stuff categories (ids above 182) have no such value and need an explicit
    ``category_to_label``. Unlabelled pixels (id 0) become ``ignore_index``.
    """
    ids = read_panoptic_ids(panoptic)
    semantic = np.full(ids.shape, ignore_index, dtype=np.int64)
    listed = set()
    for seg in _segments(segments_info):
        cat = int(seg["category_id"])
        if category_to_label is not None:
            if cat not in category_to_label:
                raise InputError(f"panoptic category {cat} is missing from category_to_label")
            value = category_to_label[cat]
        elif 1 <= cat <= 182:
            value = cat - 1
        else:
            raise InputError(
                f"panoptic category {cat} is a merged stuff class with no COCO-Stuff value; pass category_to_label"
            )
        semantic[ids == int(seg["id"])] = value
        listed.add(int(seg["id"]))
    stray = set(np.unique(ids).tolist()) - listed - {0}
    if stray:
        raise InputError(f"panoptic PNG has segment ids {sorted(stray)[:5]} that segments_info does not list")
    return semantic
