"""The eight benchmarks in their standard (mmseg) on-disk layouts, and plain image folders.

``open_dataset(key, root)`` finds the dataset under ``root`` and lists its samples;
``SegDataset.load_label`` returns the ground truth already in the benchmark's training-id
encoding (docs/reference-protocol.md §2-§3): values ``0..num_classes-1`` and ``255`` (ignored).

Layouts (``root`` may be the parent folder, or the dataset folder itself):

=============  =========================================================================
key            files
=============  =========================================================================
voc21, voc20   VOCdevkit/VOC2012/{JPEGImages/N.jpg, SegmentationClass/N.png,
               ImageSets/Segmentation/val.txt}
pc60, pc59     VOCdevkit/VOC2010/{JPEGImages/N.jpg, SegmentationClassContext/N.png,
               ImageSets/SegmentationContext/val.txt}
coco_stuff171  coco_stuff164k/{images/val2017/N.jpg, annotations/val2017/N_labelTrainIds.png}
coco_object    coco_stuff164k/{images/val2017/N.jpg, annotations/val2017/N_instanceTrainIds.png}
cityscapes     cityscapes/{leftImg8bit/val/CITY/N_leftImg8bit.png,
               gtFine/val/CITY/N_gtFine_labelTrainIds.png}
ade20k150      ADEChallengeData2016/{images/validation/N.jpg, annotations/validation/N.png}
=============  =========================================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import InputError
from ..io import IMAGE_SUFFIXES, load_image
from .classes import CLASS_NAMES
from .labels import IGNORE_INDEX, check_label_values, read_label_png, reduce_zero_label


@dataclass(frozen=True)
class Sample:
    """One image and its label file (``None`` when the dataset has no labels)."""

    name: str
    image: Path
    label: Path | None


class DatasetInfo(NamedTuple):
    num_classes: int
    description: str
    reduce_zero_label: bool
    has_background: bool


# The eight benchmarks (docs/reference-protocol.md §2). ``has_background``: class 0 is "background" and is
# predicted. ``reduce_zero_label``: the file's 0 becomes 255 (ignored) and k becomes k - 1.
DATASETS: dict[str, DatasetInfo] = {
    "voc21": DatasetInfo(21, "PASCAL VOC 2012 val (1,449 images), background + 20 classes", False, True),
    "pc60": DatasetInfo(60, "PASCAL-Context val on VOC2010 (5,105 images), background + 59 classes", False, True),
    "coco_object": DatasetInfo(
        81, "COCO val2017 (5,000 images), background + 80 things (converted from COCO-Stuff)", False, True
    ),
    "voc20": DatasetInfo(20, "PASCAL VOC 2012 val (1,449 images), 20 classes, background ignored", True, False),
    "pc59": DatasetInfo(
        59, "PASCAL-Context val on VOC2010 (5,105 images), 59 classes, background ignored", True, False
    ),
    "coco_stuff171": DatasetInfo(171, "COCO-Stuff-164k val2017 (5,000 images), 171 classes", False, False),
    "cityscapes": DatasetInfo(19, "Cityscapes val gtFine (500 images), 19 train classes", False, False),
    "ade20k150": DatasetInfo(150, "ADE20K SceneParsing validation (2,000 images), 150 classes", True, False),
}


class SegDataset:
    """A list of samples plus the rule that turns a label file into training ids."""

    def __init__(
        self,
        key: str,
        samples: Sequence[Sample],
        num_classes: int,
        *,
        reduce_zero_label: bool = False,
        ignore_index: int = IGNORE_INDEX,
        root: Path | None = None,
        split: str | None = None,
        class_names: Sequence[str] = (),
        label_hint: Callable[[Sample], str] | None = None,
    ) -> None:
        self.key = key
        self.samples = list(samples)
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        self.root = root
        self.split = split
        self.class_names = tuple(class_names)
        self._label_hint = label_hint

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return f"SegDataset(key={self.key!r}, samples={len(self)}, num_classes={self.num_classes}, root={self.root})"

    def load_image(self, sample: Sample) -> np.ndarray:
        """The sample's image as ``(H, W, 3) uint8`` RGB."""
        return load_image(sample.image)

    def load_label(self, sample: Sample) -> np.ndarray:
        """The sample's ground truth as ``(H, W) int64`` training ids (0..num_classes-1, 255 ignored)."""
        if sample.label is None:
            raise InputError(f"{sample.image}: this {self.key} dataset has no label for it")
        if not sample.label.is_file():
            hint = self._label_hint(sample) if self._label_hint else ""
            raise InputError(f"{sample.label}: label file not found{hint}")
        raw = read_label_png(sample.label)
        if self.num_classes > 0:
            raw_classes = self.num_classes + 1 if self.reduce_zero_label else self.num_classes
            check_label_values(raw, raw_classes, sample.label, self.key, self.ignore_index)
        return reduce_zero_label(raw, self.ignore_index) if self.reduce_zero_label else raw


# --------------------------------------------------------------------------- locating the data


def _root(root: str | os.PathLike, parent_of: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "no such folder" if not path.exists() else "not a folder"
        raise InputError(f"{path}: {what}; pass --root the folder that contains {parent_of}")
    return path


def _find_dir(candidates: Sequence[Path], marker: str | Path) -> Path | None:
    """The first candidate folder that holds ``marker`` (a relative path)."""
    return next((c for c in candidates if (c / marker).exists()), None)


def _need(path: Path, fix: str, kind: str = "folder") -> Path:
    if kind == "folder" and not path.is_dir():
        raise InputError(f"{path} not found; {fix}")
    if kind == "file" and not path.is_file():
        raise InputError(f"{path} not found; {fix}")
    return path


def _read_list(path: Path) -> list[str]:
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise InputError(f"{path} is empty; it should list one image name per line")
    return names


def _first_sample_exists(ds: SegDataset, fix: str) -> SegDataset:
    """Catch a wrong layout early: the first sample's image and label must exist."""
    first = ds.samples[0]
    if not first.image.is_file():
        raise InputError(f"{first.image} not found; {fix}")
    if first.label is not None and not first.label.is_file():
        hint = ds._label_hint(first) if ds._label_hint else ""
        raise InputError(f"{first.label} not found{hint or '; ' + fix}")
    return ds


def _voc_like(key: str, root: Path, split: str, year: str, label_dir: str, list_dir: str) -> SegDataset:
    base = _root(root, "VOCdevkit")
    candidates = [base / "VOCdevkit" / year, base / year]
    # The folder itself, unless it is another year's folder: VOC2010 and VOC2012 look alike inside.
    if not (base.name.upper().startswith("VOC20") and base.name.upper() != year):
        candidates.append(base)
    voc = _find_dir(candidates, "ImageSets") or _find_dir(candidates, "JPEGImages")
    split_file = Path("ImageSets") / list_dir / f"{split}.txt"
    if voc is None:
        raise InputError(f"{candidates[0] / split_file} not found; is --root the folder that contains VOCdevkit?")
    listed = _need(voc / split_file, f"the {year} folder needs the split list {split_file}", "file")
    images = _need(voc / "JPEGImages", f"the {year} folder needs JPEGImages/ with the .jpg images")
    fix = (
        "unzip the PASCAL-Context labels (mmseg tools/dataset_converters/pascal_context.py) into it"
        if label_dir == "SegmentationClassContext"
        else f"the {year} folder needs {label_dir}/ with the label PNGs"
    )
    labels = _need(voc / label_dir, fix)
    info = DATASETS[key]
    samples = [Sample(n, images / f"{n}.jpg", labels / f"{n}.png") for n in _read_list(listed)]
    ds = SegDataset(
        key,
        samples,
        info.num_classes,
        reduce_zero_label=info.reduce_zero_label,
        root=voc,
        split=split,
        class_names=CLASS_NAMES[key],
    )
    return _first_sample_exists(ds, f"{listed} names images that should be in {images} and {labels}")


def _coco(key: str, root: Path, split: str) -> SegDataset:
    base = _root(root, "coco_stuff164k")
    folder = split if split.endswith("2017") else f"{split}2017"
    candidates = [base / "coco_stuff164k", base]
    coco = _find_dir(candidates, Path("images") / folder)
    if coco is None:
        expected = candidates[0] / "images" / folder
        raise InputError(f"{expected} not found; is --root the folder that contains coco_stuff164k?")
    images = coco / "images" / folder
    labels = _need(coco / "annotations" / folder, "unzip stuffthingmaps_trainval2017.zip into annotations/")
    suffix, convert = (
        ("_labelTrainIds.png", "coco_stuff") if key == "coco_stuff171" else ("_instanceTrainIds.png", "coco_object")
    )
    files = sorted(p for p in images.iterdir() if p.suffix == ".jpg")
    if not files:
        raise InputError(f"{images} holds no .jpg images; unzip the COCO {folder}.zip images into it")

    def hint(sample: Sample) -> str:
        raw = labels / f"{sample.name}.png"
        if raw.is_file():
            return f"; make it from the raw stuffthingmaps with `ovss data convert {convert} {coco}`"
        return f"; unzip stuffthingmaps_trainval2017.zip into {labels} and run `ovss data convert {convert} {coco}`"

    info = DATASETS[key]
    samples = [Sample(p.stem, p, labels / f"{p.stem}{suffix}") for p in files]
    ds = SegDataset(
        key, samples, info.num_classes, root=coco, split=folder, class_names=CLASS_NAMES[key], label_hint=hint
    )
    return _first_sample_exists(ds, f"labels go in {labels}")


def _cityscapes(key: str, root: Path, split: str) -> SegDataset:
    base = _root(root, "cityscapes")
    candidates = [base / "cityscapes", base]
    city = _find_dir(candidates, "leftImg8bit")
    if city is None:
        expected = candidates[0] / "leftImg8bit" / split
        raise InputError(f"{expected} not found; is --root the folder that contains cityscapes?")
    images = _need(city / "leftImg8bit" / split, "unzip leftImg8bit_trainvaltest.zip into the cityscapes folder")
    labels = _need(city / "gtFine" / split, "unzip gtFine_trainvaltest.zip into the cityscapes folder")
    files = sorted(images.glob("*/*_leftImg8bit.png"))
    if not files:
        raise InputError(f"{images} holds no CITY/*_leftImg8bit.png images; unzip leftImg8bit_trainvaltest.zip")

    def label_of(p: Path) -> Path:
        return labels / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")

    def hint(sample: Sample) -> str:
        assert sample.label is not None
        if sample.label.with_name(sample.label.name.replace("labelTrainIds", "labelIds")).is_file():
            return f"; make the trainIds files with `ovss data convert cityscapes {city}`"
        return "; unzip gtFine_trainvaltest.zip into the cityscapes folder"

    samples = [Sample(p.name.removesuffix("_leftImg8bit.png"), p, label_of(p)) for p in files]
    ds = SegDataset(
        key, samples, DATASETS[key].num_classes, root=city, split=split, class_names=CLASS_NAMES[key], label_hint=hint
    )
    return _first_sample_exists(ds, f"labels go in {labels}")


def _ade(key: str, root: Path, split: str) -> SegDataset:
    base = _root(root, "ADEChallengeData2016")
    folder = {"val": "validation", "train": "training"}.get(split, split)
    candidates = [base / "ADEChallengeData2016", base / "ade" / "ADEChallengeData2016", base]
    ade = _find_dir(candidates, Path("images") / folder)
    if ade is None:
        expected = candidates[0] / "images" / folder
        raise InputError(f"{expected} not found; is --root the folder that contains ADEChallengeData2016?")
    images = ade / "images" / folder
    labels = _need(ade / "annotations" / folder, "unzip ADEChallengeData2016.zip again; its annotations/ is missing")
    files = sorted(p for p in images.iterdir() if p.suffix == ".jpg")
    if not files:
        raise InputError(f"{images} holds no .jpg images; unzip ADEChallengeData2016.zip")
    info = DATASETS[key]
    samples = [Sample(p.stem, p, labels / f"{p.stem}.png") for p in files]
    ds = SegDataset(
        key, samples, info.num_classes, reduce_zero_label=True, root=ade, split=folder, class_names=CLASS_NAMES[key]
    )
    return _first_sample_exists(ds, f"labels go in {labels}")


def open_dataset(key: str, root: str | os.PathLike, split: str = "val") -> SegDataset:
    """Open benchmark ``key`` (see :data:`DATASETS`) stored under ``root`` in its standard layout."""
    key = key.lower().replace("-", "_")
    if key not in DATASETS:
        raise InputError(f"unknown dataset {key!r}; choose one of {', '.join(DATASETS)} (or an image folder)")
    root = Path(root)
    if key in ("voc21", "voc20"):
        return _voc_like(key, root, split, "VOC2012", "SegmentationClass", "Segmentation")
    if key in ("pc60", "pc59"):
        return _voc_like(key, root, split, "VOC2010", "SegmentationClassContext", "SegmentationContext")
    if key in ("coco_stuff171", "coco_object"):
        return _coco(key, root, split)
    if key == "cityscapes":
        return _cityscapes(key, root, split)
    return _ade(key, root, split)


def image_folder(
    images: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] = (),
) -> SegDataset:
    """A folder of images (searched recursively), optionally with same-stem label PNGs in ``labels``.

    Labels are read as stored (palette indices or grey values, 255 ignored), with no remapping.
    ``num_classes`` defaults to ``len(class_names)``, else to the largest label value below 255
    plus one (read from every label file), else 0 (unknown: values are not checked).
    """
    images = Path(images)
    if not images.is_dir():
        raise InputError(f"{images}: no such folder; pass a folder of images")
    label_dir = Path(labels) if labels is not None else None
    if label_dir is not None and not label_dir.is_dir():
        raise InputError(f"{label_dir}: no such folder; pass the folder with one label PNG per image")
    files = sorted(
        p
        for p in images.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.startswith(".")
        and (label_dir is None or label_dir.resolve() not in p.resolve().parents)
    )
    if not files:
        raise InputError(f"{images}: folder holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
    samples = []
    for p in files:
        rel = p.relative_to(images).with_suffix("")
        label = None if label_dir is None else label_dir / rel.with_suffix(".png")
        if label is not None and not label.is_file():
            raise InputError(f"{label} not found (the label of {p}); every image needs a same-stem PNG in {label_dir}")
        samples.append(Sample(rel.as_posix(), p, label))
    if num_classes is None:
        num_classes = len(class_names) if class_names else 0
        if not num_classes and label_dir is not None:
            top = -1
            for s in samples:
                values = read_label_png(s.label)  # type: ignore[arg-type]
                values = values[values != IGNORE_INDEX]
                top = max(top, int(values.max()) if values.size else -1)
            num_classes = top + 1
    return SegDataset("folder", samples, num_classes, root=images, class_names=class_names)
