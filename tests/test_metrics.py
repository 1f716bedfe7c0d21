"""Confusion-matrix evaluation: the conventions of docs/reference-protocol.md §6, ignore handling, shards,
persistence, real ADE20K masks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ovss.errors import InputError
from ovss.metrics import CONVENTIONS, ConfusionMatrix, format_table, to_markdown


def _reference(pred: np.ndarray, gt: np.ndarray, k: int, ignore: int, convention: str) -> dict:
    """Straightforward per-class loop over boolean masks, independent of the module (docs/reference-protocol.md §6)."""
    keep = gt != ignore
    p, g = pred[keep], gt[keep]
    ious, accs, counted, weights = [], [], [], []
    for c in range(k):
        tp = int(np.sum((p == c) & (g == c)))
        n_pred = int(np.sum(p == c))
        n_gt = int(np.sum(g == c))
        union = n_pred + n_gt - tp
        in_mean = union > 0 if convention == "union" else n_gt > 0
        ious.append(100.0 * tp / union if in_mean else math.nan)
        accs.append(100.0 * tp / n_gt if n_gt else math.nan)
        if in_mean:
            counted.append(ious[-1])
        if n_gt:
            weights.append((n_gt, 100.0 * tp / union))
    total = len(g)
    return {
        "mIoU": sum(counted) / len(counted),
        "aAcc": 100.0 * int(np.sum(p == g)) / total,
        "mAcc": float(np.mean([a for a in accs if not math.isnan(a)])),
        "fwIoU": sum(n * iou for n, iou in weights) / total,
        "per_class_iou": ious,
        "per_class_acc": accs,
        "num_pixels": total,
    }


def _random_case(seed: int, k: int = 7, shape=(3, 37, 53), ignore: int = 255):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, k - 1, shape)  # class k-1 never in gt: predicted-but-absent exercises the conventions
    gt[rng.random(shape) < 0.15] = ignore
    pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, k, shape))
    pred[gt == ignore] = rng.integers(0, k, int((gt == ignore).sum()))
    return pred, gt


def _assert_results_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_equal(a[key], b[key])


# -- docs/reference-protocol.md §6.3 and exact cases ----------------------------------------------------------------


def test_worked_example_of_protocol_6_3():
    gt = np.array([0] * 6 + [1] * 4)
    pred = np.array([0] * 5 + [2] + [1] * 4)
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    assert cm.matrix.tolist() == [[5, 0, 1], [0, 4, 0], [0, 0, 0]]  # rows gt, columns prediction
    union, present = cm.results("union"), cm.results("present")
    assert union["mIoU"] == pytest.approx(61.1, abs=0.05)
    assert present["mIoU"] == pytest.approx(91.7, abs=0.05)
    assert union["per_class_iou"][:2] == pytest.approx([500 / 6, 100.0])
    assert union["per_class_iou"][2] == 0.0 and math.isnan(present["per_class_iou"][2])
    assert union["aAcc"] == present["aAcc"] == pytest.approx(90.0)
    assert union["mAcc"] == pytest.approx((500 / 6 + 100) / 2)
    assert union["convention"] == "union" and present["convention"] == "present"
    assert union["num_pixels"] == 10 and union["num_classes_in_mean"] == 3 and present["num_classes_in_mean"] == 2


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_ground_truth_as_prediction_scores_100(convention):
    _, gt = _random_case(1)
    pred = np.where(gt == 255, 0, gt)
    cm = ConfusionMatrix(7)
    cm.update(pred, gt)
    r = cm.results(convention)
    assert r["mIoU"] == r["aAcc"] == r["mAcc"] == r["fwIoU"] == 100.0
    assert np.count_nonzero(cm.matrix - np.diag(np.diag(cm.matrix))) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_random_predictions_match_a_per_class_loop(seed, convention):
    pred, gt = _random_case(seed)
    cm = ConfusionMatrix(7)
    cm.update(pred, gt)
    got, want = cm.results(convention), _reference(pred, gt, 7, 255, convention)
    for key in ("mIoU", "aAcc", "mAcc", "fwIoU"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    np.testing.assert_allclose(got["per_class_iou"], want["per_class_iou"], rtol=1e-12)
    np.testing.assert_allclose(got["per_class_acc"], want["per_class_acc"], rtol=1e-12)
    assert got["num_pixels"] == want["num_pixels"]
    assert math.isnan(got["per_class_acc"][6])  # never in gt
    if convention == "union":
        assert got["per_class_iou"][6] == 0.0  # predicted, absent from gt: counted as 0
    else:
        assert math.isnan(got["per_class_iou"][6])


def test_inputs_of_any_integer_dtype_torch_and_batches_agree():
    pred, gt = _random_case(3)
    ref = ConfusionMatrix(7)
    for p, g in zip(pred, gt):  # one image at a time
        ref.update(p, g)
    for p, g in [
        (pred.astype(np.uint8), gt.astype(np.uint8)),
        (pred.astype(np.int32), gt.astype(np.int16)),
        (torch.from_numpy(pred), torch.from_numpy(gt).to(torch.uint8)),
    ]:
        cm = ConfusionMatrix(7)
        cm.update(p, g)  # the whole (3, H, W) batch
        np.testing.assert_array_equal(cm.matrix, ref.matrix)
        assert cm.num_images == ref.num_images == 3
    assert ref.matrix.dtype == np.int64


# -- ignore pixels -----------------------------------------------------------------------------------


def test_predictions_at_ignored_pixels_change_nothing():
    pred, gt = _random_case(4)
    a, b = ConfusionMatrix(7), ConfusionMatrix(7)
    a.update(pred, gt)
    other = pred.copy()
    other[gt == 255] = (other[gt == 255] + 3) % 7
    b.update(other, gt)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    garbage = pred.copy()
    garbage[gt == 255] = 200  # even out-of-range predictions are fine where the ground truth is ignored
    b.reset()
    b.update(garbage, gt)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert a.matrix.sum() == np.sum(gt != 255)


def test_all_ignore_input_leaves_the_matrix_empty():
    cm = ConfusionMatrix(5)
    cm.update(np.full((4, 6), 3), np.full((4, 6), 255))
    assert cm.matrix.sum() == 0 and cm.num_images == 1
    r = cm.results()
    assert r["num_pixels"] == 0
    assert all(math.isnan(r[k]) for k in ("mIoU", "aAcc", "mAcc", "fwIoU"))
    assert all(math.isnan(v) for v in r["per_class_iou"] + r["per_class_acc"])


def test_custom_and_absent_ignore_index():
    cm = ConfusionMatrix(3, ignore_index=-1)
    cm.update(np.array([0, 1, 2]), np.array([0, -1, 2]))
    assert cm.matrix.trace() == 2 and cm.matrix.sum() == 2
    cm = ConfusionMatrix(3, ignore_index=None)
    with pytest.raises(InputError, match="255"):
        cm.update(np.array([0, 1]), np.array([0, 255]))


# -- shards and persistence --------------------------------------------------------------------------


def test_merging_shards_equals_one_pass():
    pred, gt = _random_case(5, shape=(6, 31, 29))
    whole = ConfusionMatrix(7)
    whole.update(pred, gt)
    shards = []
    for part in (slice(0, 1), slice(1, 4), slice(4, 6)):
        shard = ConfusionMatrix(7)
        shard.update(pred[part], gt[part])
        shards.append(shard)
    summed = ConfusionMatrix(7)
    for shard in shards:
        summed += shard
    np.testing.assert_array_equal(summed.matrix, whole.matrix)
    assert summed.num_images == whole.num_images == 6
    via_json = ConfusionMatrix(7)  # as from worker processes sending their shard as JSON
    for shard in shards:
        via_json.merge(ConfusionMatrix.from_dict(json.loads(json.dumps(shard.to_dict()))))
    np.testing.assert_array_equal(via_json.matrix, whole.matrix)
    added = shards[0] + shards[1] + shards[2]
    np.testing.assert_array_equal(added.matrix, whole.matrix)
    assert shards[0].matrix.sum() < whole.matrix.sum()  # `+` did not modify its operands
    _assert_results_equal(summed.results("present"), whole.results("present"))


def test_merge_refuses_mismatched_matrices():
    with pytest.raises(InputError, match="cannot merge"):
        ConfusionMatrix(7).merge(ConfusionMatrix(8))
    with pytest.raises(InputError, match="cannot merge"):
        ConfusionMatrix(7) + ConfusionMatrix(7, ignore_index=-1)


def test_to_dict_round_trip_is_compact_and_exact():
    pred, gt = _random_case(6)
    cm = ConfusionMatrix(7)
    cm.update(pred, gt)
    d = cm.to_dict()
    text = json.dumps(d)
    assert len(d["count"]) == np.count_nonzero(cm.matrix) and 0 not in d["count"]
    back = ConfusionMatrix.from_dict(json.loads(text))
    np.testing.assert_array_equal(back.matrix, cm.matrix)
    assert (back.num_classes, back.ignore_index, back.num_images) == (7, 255, 3)
    empty = ConfusionMatrix.from_dict(ConfusionMatrix(171).to_dict())
    assert empty.matrix.shape == (171, 171) and empty.matrix.sum() == 0


def test_save_load_round_trip_and_atomic_overwrite(tmp_path, monkeypatch):
    pred, gt = _random_case(7)
    cm = ConfusionMatrix(7)
    cm.update(pred, gt)
    path = tmp_path / "eval" / "confusion.npz"
    cm.save(path)
    back = ConfusionMatrix.load(path)
    np.testing.assert_array_equal(back.matrix, cm.matrix)
    assert (back.num_classes, back.ignore_index, back.num_images) == (7, 255, 3)
    _assert_results_equal(back.results(), cm.results())

    # A crash while writing a newer checkpoint leaves the previous one intact and no stray files.
    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    cm.update(pred, gt)
    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(RuntimeError):
        cm.save(path)
    monkeypatch.undo()
    np.testing.assert_array_equal(ConfusionMatrix.load(path).matrix, back.matrix)
    assert sorted(p.name for p in path.parent.iterdir()) == ["confusion.npz"]


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gt", "message"),
    [
        ([0, 7], [0, 1], "prediction contains the value 7"),
        ([0, -2], [0, 1], "prediction contains the value -2"),
        ([0, 1], [0, 9], "ground truth contains the value 9"),
        ([0, 1], [-1, 1], "ground truth contains the value -1"),
        ([0, 1, 2], [0, 1], r"shape \(3,\).*shape \(2,\)"),
        ([0.0, 1.0], [0, 1], "dtype float64; pass integer class indices"),
    ],
)
def test_bad_values_raise_input_error_naming_them(pred, gt, message):
    cm = ConfusionMatrix(7)
    with pytest.raises(InputError, match=message):
        cm.update(np.array(pred), np.array(gt))
    assert cm.matrix.sum() == 0  # nothing was counted


def test_bad_construction_convention_and_files(tmp_path):
    with pytest.raises(InputError, match="positive integer"):
        ConfusionMatrix(0)
    with pytest.raises(InputError, match="ignore_index 255 is a valid class index"):
        ConfusionMatrix(256)
    with pytest.raises(InputError, match="unknown mIoU convention 'mmseg'; choose one of: union, present") as e:
        ConfusionMatrix(3).results("mmseg")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="no such file"):
        ConfusionMatrix.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a saved confusion matrix"):
        ConfusionMatrix.load(junk)
    with pytest.raises(InputError, match="not a saved confusion matrix"):
        ConfusionMatrix.from_dict({"num_classes": 3})
    bad = ConfusionMatrix(3).to_dict() | {"gt": [0, 5], "pred": [0, 0], "count": [1, 1]}
    with pytest.raises(InputError, match="outside"):
        ConfusionMatrix.from_dict(bad)


# -- tables ------------------------------------------------------------------------------------------


def test_text_and_markdown_tables():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0] * 5 + [2] + [1] * 4), np.array([0] * 6 + [1] * 4))
    names = ["sky", "tree | bush", "car"]
    text = format_table(cm.results("present"), names)
    lines = text.splitlines()
    assert lines[0].split() == ["class", "IoU", "Acc"]
    assert lines[2].split() == ["sky", "83.33", "83.33"]
    assert lines[4].split() == ["car", "-", "-"]
    assert lines[6].split() == ["mIoU", "(present", "convention)", "91.67"]
    assert lines[7].split() == ["aAcc", "90.00"] and lines[8].split() == ["mAcc", "91.67"]
    md = to_markdown(cm.results("union"), names)
    assert "| tree \\| bush | 100.00 | 100.00 |" in md
    assert "| car | 0.00 | - |" in md
    assert "| mIoU (union convention) | 61.11 |" in md
    with pytest.raises(InputError, match="2 class names given for a matrix of 3 classes"):
        format_table(cm.results(), names[:2])


# -- real data: ADE20K-150 ground truth --------------------------------------------------------------


def test_damaged_ade20k_prediction_has_hand_computable_ious(evaldata):
    root = evaldata / "ade20k_sceneparsing"
    manifest = json.loads((root / "manifest.json").read_text())
    entries = [e for e in manifest["entries"] if "mask" in e]
    assert len(entries) == 3

    # Raw ids (1-based objectInfo150) and the pixel totals the manifest lists over the three masks.
    tree, grass, car, person = 5, 10, 21, 13

    def total(raw_id: int) -> int:
        return sum(e["class_ids_present"].get(str(raw_id), 0) for e in entries)

    n_tree, n_grass, n_car = total(tree), total(grass), total(car)
    assert (n_tree, n_grass, n_car, total(person)) == (31125, 53099, 2330, 0)
    present = {int(k) for e in entries for k in e["class_ids_present"] if k != "0"}
    labelled = sum(n for e in entries for k, n in e["class_ids_present"].items() if k != "0")

    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(150)
    for e in entries:
        raw = np.array(Image.open(root / e["mask"]["file"]))
        assert {str(v): int(n) for v, n in zip(*np.unique(raw, return_counts=True))} == e["class_ids_present"]
        gt = np.where(raw == 0, 255, raw.astype(np.int64) - 1)  # reduce_zero_label: 0 -> 255, k -> k-1
        pred = gt.copy()
        pred[raw == tree] = grass - 1  # every tree pixel called grass
        pred[raw == car] = person - 1  # every car pixel called person, a class absent from the gt
        pred[raw == 0] = rng.integers(0, 150, int((raw == 0).sum()))  # anything at ignored pixels
        cm.update(pred, gt)

    grass_iou = 100.0 * n_grass / (n_grass + n_tree)
    for convention in CONVENTIONS:
        r = cm.results(convention)
        iou = r["per_class_iou"]
        assert iou[tree - 1] == 0.0 and iou[car - 1] == 0.0
        assert iou[grass - 1] == pytest.approx(grass_iou)  # 63.04
        assert all(iou[c - 1] == 100.0 for c in present - {tree, grass, car})
        assert r["num_pixels"] == labelled
        assert r["aAcc"] == pytest.approx(100.0 * (labelled - n_tree - n_car) / labelled)
        assert r["mAcc"] == pytest.approx(100.0 * (len(present) - 2) / len(present))
    assert len(present) == 15
    union, gt_present = cm.results("union"), cm.results("present")
    assert union["per_class_iou"][person - 1] == 0.0  # predicted, not in gt: counted under "union"
    assert math.isnan(gt_present["per_class_iou"][person - 1])
    assert union["mIoU"] == pytest.approx((12 * 100.0 + grass_iou) / 16)
    assert gt_present["mIoU"] == pytest.approx((12 * 100.0 + grass_iou) / 15)
    assert union["num_images"] == 3
