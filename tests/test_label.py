"""``SegResult.instances``, the dataset exporters and ``ovss label``, on real VOC photos.

Exporters are fed VOC ground truth treated as predictions (several classes, real shapes, 255
void pixels) and read back with independent readers: pycocotools, a YOLO line parser written
here from the Ultralytics convention, a Label Studio brush-RLE decoder written here from the
format's rules, and CVAT's labelmap colours. ``ovss label`` runs with tiny-random CLIP: its
labels are meaningless, but the files are real.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ovss.data.classes import CLASS_NAMES
from ovss.errors import InputError
from ovss.export import ExportItem, export_dataset, parse_formats
from ovss.io import is_scratch_file
from ovss.labelling import add_label_parser, cmd_label, label
from ovss.result import SegResult, palette

VOC = "vainf_voc_samples"
MULTI = ("120", "294", "582", "0")  # VOC samples with two classes, or one class in several pieces
VOC_NAMES = list(CLASS_NAMES["voc21"])


def voc_items(evaldata: Path, ids=MULTI, probs: bool = False) -> list[ExportItem]:
    rng = np.random.default_rng(0)
    items = []
    for n in ids:
        labels = np.array(Image.open(evaldata / VOC / "derived" / "SegmentationClass" / f"{n}_target.png"))
        p = rng.dirichlet(np.ones(21), size=labels.shape).transpose(2, 0, 1).astype(np.float32) if probs else None
        result = SegResult(labels.astype(np.int32), VOC_NAMES, probs=p)
        items.append(ExportItem(f"{n}_image", result, image=evaldata / VOC / "samples" / f"{n}_image.png"))
    return items


def components(labels: np.ndarray, class_id: int, min_area: int) -> list[np.ndarray]:
    """8-connected components of one class, by scipy (independent of the cv2 code under test)."""
    found, count = ndimage.label(labels == class_id, structure=np.ones((3, 3), dtype=int))
    masks = [found == k for k in range(1, count + 1)]
    return [m for m in masks if m.sum() >= min_area]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# --------------------------------------------------------------------------- instances


def test_instances_are_the_connected_components_with_mean_probability(evaldata):
    for item in voc_items(evaldata, probs=True):
        result = item.result
        found = result.instances(min_area=50)
        expected = [(c, m) for c in range(1, 21) for m in components(result.labels, c, 50)]
        assert len(found) == len(expected) > 0
        keyed = {(i.class_id, i.mask.tobytes()): i for i in found}
        for class_id, mask in expected:
            inst = keyed[(class_id, mask.tobytes())]
            x, y, w, h = inst.bbox
            assert np.array_equal(inst.crop, mask[y : y + h, x : x + w])
            assert inst.class_name == VOC_NAMES[class_id] and inst.area == mask.sum()
            ys, xs = np.nonzero(mask)
            assert inst.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert inst.score == pytest.approx(float(result.probs[class_id][mask].mean()), rel=1e-5)
        # background (class 0) is left out by default, kept on request; void (255) never is an instance
        assert all(i.class_id != 0 for i in found)
        with_bg = result.instances(min_area=50, include_background=True)
        assert len(with_bg) == len(found) + len(components(result.labels, 0, 50))
        assert all(i.class_id < 21 for i in with_bg)
    small = voc_items(evaldata, ids=("0",))[0].result
    everything = small.instances(min_area=1)
    assert all(i.score is None for i in everything)
    assert len(everything) == sum(len(components(small.labels, c, 1)) for c in range(1, 21))


def test_to_supervision_detections(evaldata, monkeypatch):
    import supervision as sv

    result = voc_items(evaldata, ids=("120",), probs=True)[0].result
    det = result.to_supervision(min_area=50)
    found = result.instances(min_area=50)
    assert isinstance(det, sv.Detections) and len(det) == len(found) >= 2
    assert np.array_equal(det.mask, np.stack([i.mask for i in found]))
    np.testing.assert_allclose(det.xyxy, sv.mask_to_xyxy(det.mask))  # supervision's own box convention
    assert det.class_id.tolist() == [i.class_id for i in found]
    assert list(det.data["class_name"]) == [VOC_NAMES[i.class_id] for i in found]
    np.testing.assert_allclose(det.confidence, [i.score for i in found], rtol=1e-6)
    empty = SegResult(np.zeros((8, 9), np.int32), ["background", "cat"]).to_supervision()
    assert len(empty) == 0 and empty.mask.shape == (0, 8, 9) and empty.confidence is None
    monkeypatch.setitem(sys.modules, "supervision", None)
    with pytest.raises(InputError, match=r'pip install "ovss\[supervision\]"'):
        result.to_supervision()


# --------------------------------------------------------------------------- formats


def test_format_names():
    assert parse_formats("coco, png,coco") == ["coco", "png"]
    with pytest.raises(InputError, match="unknown export format 'voc'; formats: png, coco, coco-rle, yolo-seg"):
        parse_formats("png,voc")


def test_png_export_reads_back_as_an_eval_dataset_at_100_miou(evaldata, tmp_path, capsys):
    from ovss.cli import main

    items = voc_items(evaldata)
    folders = export_dataset(items, tmp_path / "ds", "png", VOC_NAMES, progress=False)
    png = folders["png"]
    assert (png / "classes.txt").read_text().splitlines() == VOC_NAMES
    for item in items:
        stored = Image.open(png / "labels" / f"{item.stem}.png")
        assert stored.mode == "P" and np.array_equal(np.array(stored), item.result.labels)
        assert (png / "images" / item.file_name).read_bytes() == item.image.read_bytes()
    code = main(
        [
            "eval",
            "--method",
            "ground-truth",
            "--dataset",
            "folder",
            "--root",
            str(png / "images"),
            "--labels",
            str(png / "labels"),
            "--names",
            f"@{png / 'classes.txt'}",
            "--out",
            str(tmp_path / "ev"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert report["images"] == len(items) and report["mIoU"] == pytest.approx(100.0)


@pytest.mark.parametrize("variant", ["coco-rle", "coco"])
def test_coco_export_loads_in_pycocotools(evaldata, tmp_path, variant):
    from pycocotools.coco import COCO

    items = voc_items(evaldata, probs=True)
    folder = export_dataset(items, tmp_path, variant, VOC_NAMES, {"min_area": 20}, progress=False)[variant]
    coco = COCO(str(folder / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == VOC_NAMES[1:]  # ids 1..20 as in VOC
    assert sorted(coco.getImgIds()) == list(range(1, len(items) + 1))
    ann_ids = coco.getAnnIds()
    assert len(set(ann_ids)) == len(ann_ids)
    ious = []
    for image_id, item in zip(sorted(coco.getImgIds()), items):
        info = coco.loadImgs(image_id)[0]
        h, w = item.result.size
        assert (info["file_name"], info["width"], info["height"]) == (item.file_name, w, h)
        assert (folder / "images" / info["file_name"]).is_file()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        expected = [(c, m) for c in range(1, 21) for m in components(item.result.labels, c, 20)]
        assert len(anns) == len(expected)
        for ann in anns:
            class_id = ann["category_id"]  # VOC ids: background 0 is not a category
            decoded = coco.annToMask(ann).astype(bool)
            truth = max((m for c, m in expected if c == class_id), key=lambda m: iou(decoded, m))
            assert ann["iscrowd"] == 0 and ann["area"] == truth.sum()
            assert ann["score"] == pytest.approx(float(item.result.probs[class_id][truth].mean()), abs=1e-5)
            if variant == "coco-rle":
                assert np.array_equal(decoded, truth)
            else:
                assert isinstance(ann["segmentation"], list) and len(ann["segmentation"][0]) >= 6
                ious.append((iou(decoded, truth), truth.sum()))
    if variant == "coco":  # polygons lose holes and a border of thin parts: big regions stay close
        big = [v for v, area in ious if area >= 1000]
        assert big and min(big) > 0.85, ious
        assert np.average([v for v, _ in ious], weights=[a for _, a in ious]) > 0.9, ious


def parse_yolo_line(line: str, n_classes: int) -> tuple[int, np.ndarray]:
    """Ultralytics segment label: class index, then an even number (>= 6) of normalised coordinates."""
    fields = line.split()
    class_id = int(fields[0])
    coords = np.array([float(v) for v in fields[1:]])
    assert 0 <= class_id < n_classes and coords.size >= 6 and coords.size % 2 == 0
    assert ((coords >= 0) & (coords <= 1)).all()
    return class_id, coords.reshape(-1, 2)


def test_yolo_seg_export(evaldata, tmp_path):
    import yaml

    items = voc_items(evaldata)
    folder = export_dataset(items, tmp_path, "yolo-seg", VOC_NAMES, {"min_area": 20}, progress=False)["yolo-seg"]
    data = yaml.safe_load((folder / "data.yaml").read_text())
    assert Path(data["path"]) == folder.resolve() and data["train"] == data["val"] == "images"
    assert data["names"] == dict(enumerate(VOC_NAMES[1:]))
    ious = []
    for item in items:
        h, w = item.result.size
        assert (folder / data["train"] / item.file_name).is_file()
        lines = (folder / "labels" / f"{item.stem}.txt").read_text().splitlines()
        expected = [(c, m) for c in range(1, 21) for m in components(item.result.labels, c, 20)]
        assert len(lines) == len(expected)
        for line in lines:
            class_id, points = parse_yolo_line(line, 20)
            drawn = np.zeros((h, w), np.uint8)  # rasterised as Ultralytics does: fillPoly of pixel points
            cv2.fillPoly(drawn, [(points * [w, h]).astype(np.int32)], 1)
            best = max((m for c, m in expected if c == class_id + 1), key=lambda m: iou(drawn > 0, m))
            ious.append((iou(drawn > 0, best), best.sum()))
    big = [v for v, area in ious if area >= 1000]
    assert big and min(big) > 0.85, ious
    assert np.average([v for v, _ in ious], weights=[a for _, a in ious]) > 0.9, ious


def test_yolo_names_survive_yaml(tmp_path):
    tricky = ["yes", "no: 1", "#hash", 'say "hi"', "it's", "café", "back\\slash", "null", "1e3", "[x]", "- dash"]
    labels = np.arange(len(tricky), dtype=np.int32).repeat(4).reshape(1, -1).repeat(6, axis=0)
    item = ExportItem("tricky", SegResult(labels, tricky, image=np.zeros((6, labels.shape[1], 3), np.uint8)))
    import yaml

    folder = export_dataset([item], tmp_path, "yolo-seg", tricky, {"min_area": 1}, progress=False)["yolo-seg"]
    assert yaml.safe_load((folder / "data.yaml").read_text(encoding="utf-8"))["names"] == dict(enumerate(tricky))
    assert (folder / "images" / "tricky.png").is_file()  # an array-only result still gets its image


def decode_brush_rle(data: list[int]) -> np.ndarray:
    """Label Studio brush RLE, from the format's rules: 32-bit count, word size - 1 (5 bits),
    four field sizes - 1 (4 bits each), then chunks [repeat bit][2-bit field][count - 1][words]."""
    bits = "".join(f"{b:08b}" for b in data)
    pos = 0

    def take(n: int) -> int:
        nonlocal pos
        value = int(bits[pos : pos + n], 2)
        pos += n
        return value

    count, word = take(32), take(5) + 1
    fields = [take(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.int64)
    i = 0
    while i < count:
        repeat = take(1)
        n = take(fields[take(2)]) + 1
        if repeat:
            out[i : i + n] = take(word)
        else:
            for k in range(n):
                out[i + k] = take(word)
        i += n
    assert len(bits) - pos < 8  # only padding is left
    return out


def test_brush_rle_round_trip():
    from ovss.export.labelstudio import brush_rle, encode_brush_rle

    rng = np.random.default_rng(1)
    masks = [
        np.zeros((5, 7), bool),
        np.ones((300, 301), bool),
        rng.random((40, 33)) > 0.5,
        np.indices((20, 20)).sum(0) % 2 == 0,
    ]  # empty, one run over 2**16 values, noise, checkerboard
    band = np.zeros((9, 6), bool)
    band[2:5] = True  # whole rows: runs that go on across the right edge
    band[5, :2] = band[1, 4:] = True
    masks.append(band)
    for mask in masks:
        rgba = decode_brush_rle(encode_brush_rle(mask)).reshape(*mask.shape, 4)
        assert np.array_equal(rgba[..., 3] > 0, mask) and set(np.unique(rgba)) <= {0, 255}
        assert (rgba == rgba[..., :1]).all()
    for _ in range(20):  # an object's box-sized crop placed in a larger image
        h, w = rng.integers(1, 12, size=2)
        big = np.zeros((int(h) + rng.integers(0, 5), int(w) + rng.integers(0, 5)), bool)
        y, x = rng.integers(0, big.shape[0] - h + 1), rng.integers(0, big.shape[1] - w + 1)
        crop = rng.random((h, w)) > 0.4
        big[y : y + h, x : x + w] = crop
        decoded = decode_brush_rle(brush_rle(crop, (int(x), int(y)), big.shape)).reshape(*big.shape, 4)
        assert np.array_equal(decoded[..., 3] > 0, big)


def test_brush_rle_matches_label_studio_converter(evaldata):
    brush = pytest.importorskip("label_studio_converter.brush")  # Label Studio's own decoder, when installed
    from ovss.export.labelstudio import brush_rle

    for item in voc_items(evaldata, ids=("120", "582")):
        for inst in item.result.instances(1):
            h, w = item.result.size
            decoded = brush.decode_rle(brush_rle(inst.crop, inst.bbox[:2], (h, w))).reshape(h, w, 4)[..., 3]
            assert np.array_equal(decoded > 0, inst.mask)


def test_labelstudio_export(evaldata, tmp_path):
    items = voc_items(evaldata, probs=True)
    folder = export_dataset(items, tmp_path, "labelstudio", VOC_NAMES, {"min_area": 20}, progress=False)["labelstudio"]
    tasks = json.loads((folder / "tasks.json").read_text())
    assert len(tasks) == len(items)
    config = (folder / "labeling_config.xml").read_text()
    assert '<BrushLabels name="label" toName="image">' in config and 'value="aeroplane"' in config
    for task, item in zip(tasks, items):
        h, w = item.result.size
        assert task["data"]["image"] == f"/data/local-files/?d=images/{item.file_name}"
        assert (folder / "images" / item.file_name).is_file()
        regions = task["predictions"][0]["result"]
        expected = [(c, m) for c in range(1, 21) for m in components(item.result.labels, c, 20)]
        assert len(regions) == len(expected)
        for region in regions:
            assert region["type"] == "brushlabels" and region["value"]["format"] == "rle"
            assert (region["from_name"], region["to_name"]) == ("label", "image")
            assert (region["original_width"], region["original_height"]) == (w, h)
            mask = decode_brush_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0
            class_id = VOC_NAMES.index(region["value"]["brushlabels"][0])
            assert any(c == class_id and np.array_equal(mask, m) for c, m in expected)


def rgb_code(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]).ravel()


def test_cvat_segmentation_mask_zip(evaldata, tmp_path):
    items = voc_items(evaldata)
    folder = export_dataset(items, tmp_path, "cvat", VOC_NAMES, {"min_area": 20}, progress=False)["cvat"]
    with zipfile.ZipFile(folder / "segmentation_mask.zip") as z:
        names = z.namelist()
        labelmap = {}
        for line in z.read("labelmap.txt").decode().splitlines():
            if line.startswith("#"):
                continue
            name, colour, _parts, _actions = line.split(":")
            labelmap[tuple(int(v) for v in colour.split(","))] = name
        assert list(labelmap.values()) == VOC_NAMES and labelmap[(0, 0, 0)] == "background"
        assert z.read("ImageSets/Segmentation/default.txt").decode().split() == [i.stem for i in items]
        for item in items:
            assert f"SegmentationClass/{item.stem}.png" in names
            classes = np.array(Image.open(z.open(f"SegmentationClass/{item.stem}.png")).convert("RGB"))
            codes, index = np.unique(rgb_code(classes), return_inverse=True)
            ids = np.array([VOC_NAMES.index(labelmap[(c >> 16, (c >> 8) & 255, c & 255)]) for c in codes.tolist()])
            decoded = ids[index].reshape(classes.shape[:2])
            labels = item.result.labels
            assert np.array_equal(decoded[labels != 255], labels[labels != 255])
            assert (decoded[labels == 255] == 0).all()  # void: black, as "background"
            objects = np.array(Image.open(z.open(f"SegmentationObject/{item.stem}.png")).convert("RGB"))
            expected = [m for c in range(1, 21) for m in components(labels, c, 20)]
            allowed = {tuple(c) for c in palette(len(expected) + 1)[1:].tolist()}
            used = {(c >> 16, (c >> 8) & 255, c & 255) for c in np.unique(rgb_code(objects)).tolist()} - {(0, 0, 0)}
            assert used == allowed  # one VOC colour per instance, by its 1-based index
            for colour in used:
                drawn = (objects == colour).all(-1)
                assert any(np.array_equal(drawn, m) for m in expected)
            assert ((objects == 0).all(-1) == ~np.any(expected, axis=0)).all()


def test_an_image_without_objects_gives_empty_annotations(tmp_path):
    item = ExportItem(
        "empty", SegResult(np.zeros((12, 10), np.int32), ["background", "cat"], image=np.zeros((12, 10, 3), np.uint8))
    )
    everything = "png,coco,coco-rle,yolo-seg,labelstudio,cvat"
    folders = export_dataset([item], tmp_path, everything, ["background", "cat"], progress=False)
    coco = json.loads((folders["coco"] / "annotations.json").read_text())
    assert len(coco["images"]) == 1 and coco["annotations"] == []
    assert (folders["yolo-seg"] / "labels" / "empty.txt").read_text() == ""
    assert json.loads((folders["labelstudio"] / "tasks.json").read_text())[0]["predictions"][0]["result"] == []
    with zipfile.ZipFile(folders["cvat"] / "segmentation_mask.zip") as z:
        assert not np.array(Image.open(z.open("SegmentationObject/empty.png"))).any()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no build folders left behind


def test_a_failed_export_keeps_the_previous_dataset(evaldata, tmp_path, monkeypatch):
    from ovss.export.cvat import CvatExporter

    items = voc_items(evaldata, ids=("0", "120"))
    export_dataset(items, tmp_path, "coco,cvat", VOC_NAMES, progress=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    calls = []

    def crash(self, item):
        calls.append(item.stem)
        if len(calls) == 2:
            raise RuntimeError("killed in the middle of the export")

    monkeypatch.setattr(CvatExporter, "add", crash)
    with pytest.raises(RuntimeError):
        export_dataset(voc_items(evaldata, ids=("294", "582")), tmp_path, "coco,cvat", VOC_NAMES, progress=False)
    assert {p: p.read_bytes() for p in before} == before  # the finished datasets are untouched
    monkeypatch.undo()
    export_dataset(items[:1], tmp_path, "coco", VOC_NAMES, progress=False)
    assert len(json.loads((tmp_path / "coco" / "annotations.json").read_text())["images"]) == 1
    assert not (tmp_path / "coco" / "images" / "120_image.png").exists()  # rebuilt, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "cvat"]


def test_export_settings_are_checked():
    from ovss.export import ExportSettings

    with pytest.raises(InputError, match="no export setting 'min_areas'"):
        ExportSettings.from_dict({"min_areas": 3})
    with pytest.raises(InputError, match="min_area must be"):
        ExportSettings.from_dict({"min_area": -1})


# --------------------------------------------------------------------------- ovss label


def label_args(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ovss")
    add_label_parser(parser.add_subparsers())
    return parser.parse_args(["label", *[str(a) for a in argv]])


def photos(evaldata: Path, tmp_path: Path, ids=("0", "120", "294")) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir(exist_ok=True)
    for n in ids:
        os.link(evaldata / VOC / "samples" / f"{n}_image.png", folder / f"{n}_image.png")
    return folder


def test_label_command_on_real_photos(evaldata, tmp_path, capsys):
    from pycocotools.coco import COCO

    folder = photos(evaldata, tmp_path)
    out = tmp_path / "ds"
    common = ["--classes", "cat; dog; person", "--background", "words", "--out", out, "--device", "cpu"]
    assert cmd_label(label_args(folder, *common, "--format", "png,coco-rle,yolo-seg")) == 0
    err = capsys.readouterr().err
    assert "labelled 3 of 3 images (0 already done)" in err
    names = ["background", "cat", "dog", "person"]
    assert (out / "png" / "classes.txt").read_text().splitlines() == names
    coco = COCO(str(out / "coco-rle" / "annotations.json"))
    for stem in ("0_image", "120_image", "294_image"):
        labels = np.array(Image.open(out / "png" / "labels" / f"{stem}.png"))
        assert np.array_equal(labels, np.array(Image.open(out / "cache" / "labels" / f"{stem}.png")))
        confidence = np.array(Image.open(out / "cache" / "confidence" / f"{stem}.png")) / 65535
        assert labels.shape == confidence.shape == (513, 513) and 0 < confidence.min() <= confidence.max() <= 1
        image_id = next(i["id"] for i in coco.dataset["images"] if i["file_name"] == f"{stem}.png")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        painted = np.zeros_like(labels)
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            assert (painted[mask] == 0).all() and (labels[mask] == ann["category_id"]).all()
            assert ann["score"] == pytest.approx(confidence[mask].mean(), abs=1e-4)
            painted[mask] = ann["category_id"]
        kept = labels > 0
        assert (painted[kept] > 0).mean() > 0.95  # only regions under min_area are left out
    # a re-run does no segmenting and may add formats from the cache
    before = (out / "cache" / "done" / "0_image.json").stat().st_mtime_ns
    assert cmd_label(label_args(folder, *common, "--format", "cvat,labelstudio")) == 0
    assert "(3 already done)" in capsys.readouterr().err
    assert (out / "cache" / "done" / "0_image.json").stat().st_mtime_ns == before
    assert (out / "cvat" / "segmentation_mask.zip").is_file() and (out / "labelstudio" / "tasks.json").is_file()
    # another job's folder is refused with one line, before any model loads
    with pytest.raises(InputError, match="holds labels made with other classes, method or settings"):
        cmd_label(label_args(folder, "--classes", "car", "--out", out))
    with pytest.raises(InputError, match="unknown export format 'voc'"):
        cmd_label(label_args(folder, "--classes", "car", "--out", tmp_path / "x", "--format", "voc"))
    with pytest.raises(InputError, match="holds ':'"):
        cmd_label(label_args(folder, "--classes", "a:b", "--out", tmp_path / "y", "--format", "cvat"))


def test_label_shards_by_rank_and_rank0_assembles(evaldata, tmp_path, monkeypatch):
    folder = photos(evaldata, tmp_path)
    kwargs = dict(classes="cat; dog", out=tmp_path / "sharded", formats="coco-rle", device="cpu", progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert label(folder, **kwargs) is None
    assert sorted(p.name for p in (tmp_path / "sharded" / "cache" / "done").iterdir()) == ["120_image.json"]
    assert not (tmp_path / "sharded" / "coco-rle").exists()  # only rank 0 writes datasets
    monkeypatch.setenv("RANK", "0")
    report = label(folder, **kwargs)
    assert report["labelled"] == 3 and report["skipped"] == 0
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    single = label(folder, **{**kwargs, "out": tmp_path / "single"})
    assert single["labelled"] == 3
    a = json.loads((tmp_path / "sharded" / "coco-rle" / "annotations.json").read_text())
    b = json.loads((tmp_path / "single" / "coco-rle" / "annotations.json").read_text())
    assert a == b


def test_label_nested_folders_and_an_output_folder_inside_the_inputs(evaldata, tmp_path):
    folder = photos(evaldata, tmp_path, ids=("0",))
    (folder / "sub").mkdir()
    os.link(evaldata / VOC / "samples" / "8_image.png", folder / "sub" / "8_image.png")
    kwargs = dict(formats="png,coco", device="cpu", progress=False, export={"copy_images": True})
    first = label(folder, "cat; dog", folder / "ds", **kwargs)
    assert first["labelled"] == 2 and (folder / "ds" / "png" / "labels" / "sub" / "8_image.png").is_file()
    again = label(folder, "cat; dog", folder / "ds", **kwargs)  # the exported images are not inputs
    assert again["images"] == 2 and again["skipped"] == 2
    coco = json.loads((folder / "ds" / "coco" / "annotations.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["0_image.png", "sub/8_image.png"]
    copied = folder / "ds" / "coco" / "images" / "sub" / "8_image.png"
    assert copied.read_bytes() == (folder / "sub" / "8_image.png").read_bytes()
    assert copied.stat().st_ino != (folder / "sub" / "8_image.png").stat().st_ino


CHILD = """
import sys, time
import ovss.api
segment = ovss.api.Segmenter.segment
def slow(self, *args, **kwargs):  # slow enough to be killed in the middle of the job
    time.sleep(float(sys.argv[3]))
    return segment(self, *args, **kwargs)
ovss.api.Segmenter.segment = slow
import argparse
from ovss.labelling import add_label_parser, cmd_label
parser = argparse.ArgumentParser()
add_label_parser(parser.add_subparsers())
args = parser.parse_args(["label", sys.argv[1], "--classes", "cat; dog; person", "--background", "words",
                          "--out", sys.argv[2], "--format", "coco,coco-rle,yolo-seg,png,labelstudio,cvat",
                          "--device", "cpu"])
sys.exit(cmd_label(args))
"""


@pytest.mark.slow
def test_label_survives_kill_9(evaldata, tmp_path):
    """kill -9 in the middle of the job, re-run: no duplicates, no .part files, the same datasets."""
    ids = ("0", "1", "8", "20", "23", "60", "114", "120")
    folder = photos(evaldata, tmp_path, ids)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}

    def run(out: Path, delay: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, script, folder, out, delay], env=env, capture_output=True, text=True, timeout=600
        )

    whole = run(tmp_path / "whole", "0")
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, script, folder, out, "0.5"], env=env, stderr=subprocess.DEVNULL)

    def markers() -> int:  # not the hidden .NAME.json.*.part.json a write in flight holds
        return len([p for p in (out / "cache" / "done").glob("*.json") if not is_scratch_file(p.name)])

    deadline = time.time() + 300
    while time.time() < deadline and markers() < 3:
        time.sleep(0.05)
    child.kill()  # SIGKILL
    child.wait()
    done_before = markers()
    assert 3 <= done_before < len(ids)
    assert not (out / "coco").exists()
    again = run(out, "0")
    assert again.returncode == 0, again.stderr
    assert f"({done_before} already done)" in again.stderr
    assert not [p for p in out.rglob("*") if ".part" in p.name or p.name.startswith((".building", ".old"))]
    for name in ("coco/annotations.json", "coco-rle/annotations.json", "labelstudio/tasks.json"):
        assert (out / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    coco = json.loads((out / "coco-rle" / "annotations.json").read_text())
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert sorted(i["file_name"] for i in coco["images"]) == sorted(f"{n}_image.png" for n in ids)
    for n in ids:
        for sub in ("png/labels", "yolo-seg/labels"):
            suffix = ".png" if sub.startswith("png") else ".txt"
            path = f"{sub}/{n}_image{suffix}"
            assert (out / path).read_bytes() == (tmp_path / "whole" / path).read_bytes(), path
