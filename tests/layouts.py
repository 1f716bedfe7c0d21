"""Tiny benchmark datasets in the standard on-disk layouts, built from ../shared/evaldata.

Shared by the reader/converter tests and the evaluation tests. PASCAL-Context and extra
COCO-Stuff maps are synthetic because no public sample exists.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ovss.data.classes import COCO_STUFF_IDS

CITY = "mmseg_cityscapes/tests/data/pseudo_cityscapes_dataset"
CITY_STEM = "frankfurt_000000_000294"
COCO = "hf_coco_fixtures/tests/fixtures/tests_samples/COCO"
COCO_STEM = "000000039769"


def _manifest(evaldata: Path, folder: str) -> dict:
    return json.loads((evaldata / folder / "manifest.json").read_text())


def _counts(label: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(label, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _jpeg(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").save(dst, format="JPEG", quality=90)


def _one_line_error(excinfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _voc(evaldata: Path, root: Path) -> dict[str, dict[int, int]]:
    """VOCdevkit/VOC2012 from the 14 real VOC val samples (index masks from derived/)."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    expected, names = {}, []
    for entry in _manifest(evaldata, "vainf_voc_samples")["entries"]:
        name = f"sample_{Path(entry['image']['file']).stem.split('_')[0]}"
        _jpeg(evaldata / "vainf_voc_samples" / entry["image"]["file"], voc / "JPEGImages" / f"{name}.jpg")
        shutil.copy(
            evaldata / "vainf_voc_samples" / entry["derived_index_mask"], voc / "SegmentationClass" / f"{name}.png"
        )
        expected[name] = {int(k): v for k, v in entry["class_ids_present"].items()}
        names.append(name)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    return expected


def _context(root: Path, n: int = 3) -> list[np.ndarray]:
    """VOCdevkit/VOC2010 with synthetic PASCAL-Context labels (0 = background, 1..59)."""
    voc = root / "VOCdevkit" / "VOC2010"
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    for d in ("JPEGImages", "SegmentationClassContext"):
        (voc / d).mkdir()
    rng = np.random.default_rng(0)
    labels, names = [], []
    for i in range(n):
        name = f"2008_00000{i}"
        label = rng.integers(0, 60, (24, 32)).astype(np.uint8)
        label[0, :4] = 255
        Image.fromarray(label).save(voc / "SegmentationClassContext" / f"{name}.png")
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        labels.append(label.astype(np.int64))
        names.append(name)
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("\n".join(names) + "\n")
    return labels


def _ade(evaldata: Path, root: Path) -> dict[str, dict[int, int]]:
    ade = root / "ADEChallengeData2016"
    src = evaldata / "ade20k_sceneparsing"
    expected = {}
    for entry in _manifest(evaldata, "ade20k_sceneparsing")["entries"]:
        if "mask" not in entry:
            continue
        for kind, folder in (("image", "images"), ("mask", "annotations")):
            file = Path(entry[kind]["file"])
            (ade / folder / "validation").mkdir(parents=True, exist_ok=True)
            shutil.copy(src / file, ade / folder / "validation" / file.name)
        expected[Path(entry["mask"]["file"]).stem] = {int(k): v for k, v in entry["class_ids_present"].items()}
    return expected


def _cityscapes(evaldata: Path, root: Path, with_train_ids: bool) -> Path:
    city = root / "cityscapes"
    src = evaldata / CITY
    img = city / "leftImg8bit" / "val" / "frankfurt"
    gt = city / "gtFine" / "val" / "frankfurt"
    img.mkdir(parents=True)
    gt.mkdir(parents=True)
    shutil.copy(src / "leftImg8bit" / f"{CITY_STEM}_leftImg8bit.png", img)
    kinds = ["labelIds", "instanceIds"] + (["labelTrainIds"] if with_train_ids else [])
    for kind in kinds:
        shutil.copy(src / "gtFine" / f"{CITY_STEM}_gtFine_{kind}.png", gt)
    return city


def _coco(evaldata: Path, root: Path) -> tuple[Path, np.ndarray]:
    """coco_stuff164k with raw stuffthingmaps: the real COCO image's map and one with every value."""
    coco = root / "coco_stuff164k"
    images, ann = coco / "images" / "val2017", coco / "annotations" / "val2017"
    ann.mkdir(parents=True)
    _jpeg(evaldata / COCO / f"{COCO_STEM}.png", images / f"{COCO_STEM}.jpg")
    shutil.copy(
        evaldata / "hf_coco_fixtures" / "derived_000000039769_semantic_cocostuff_index.png", ann / f"{COCO_STEM}.png"
    )
    every = np.array([c - 1 for c in COCO_STUFF_IDS] + [255] * 5, dtype=np.uint8).reshape(8, 22)
    Image.fromarray(np.zeros((8, 22, 3), np.uint8)).save(images / "000000999999.jpg")
    Image.fromarray(every).save(ann / "000000999999.png")
    return coco, every


# --------------------------------------------------------------------------- class names
