"""ovss.masks: AMG rules against their definitions, the fused SAM decoder against transformers,
pooling and refinement against direct loops, k-means masks, the CLI hook, bad inputs.

Meta's generator itself is compared in tests/parity (it needs torchvision)."""

from __future__ import annotations

import argparse
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.errors import InputError, ModelLoadError
from ovss.masks import (
    PRESETS,
    KMeansMaskGenerator,
    MaskSet,
    SamMaskGenerator,
    amg,
    get_mask_generator,
    load_sam,
    make_settings,
    mask_pool,
    refine_labels,
)
from ovss.masks.decoder import SamCropState
from ovss.masks.sam import sam_image_embedding, sam_pixels
from ovss.models.sam import build_tiny_sam, save_tiny_sam
from ovss.models.sam_convert import hf_to_meta_state_dict, meta_to_hf_state_dict
from ovss.testing.standins import LOOSE_THRESHOLDS as LOOSE  # a few masks of the tiny random SAM pass

PHOTO = "ade20k_sceneparsing/sampleData/images/ADE_val_00000001.jpg"


@pytest.fixture(scope="module")
def photo(evaldata) -> np.ndarray:
    from ovss.io import load_image

    return load_image(evaldata / PHOTO)


@pytest.fixture(scope="module")
def small_photo(photo) -> np.ndarray:
    """The photo at 171x128: the generator tests exercise the rules, not the resolution."""
    from PIL import Image

    return np.asarray(Image.fromarray(photo).resize((171, 128), Image.BILINEAR))


# ------------------------------------------------------------------------------ NMS


def _nms_brute(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            x0, y0 = max(boxes[i][0], boxes[j][0]), max(boxes[i][1], boxes[j][1])
            x1, y1 = min(boxes[i][2], boxes[j][2]), min(boxes[i][3], boxes[j][3])
            inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
            a = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
            b = (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])
            if inter / (a + b - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.7, 1.0])
def test_nms_matches_brute_force(thr):
    rng = np.random.default_rng(1)
    xy = rng.integers(0, 60, (300, 2))
    wh = rng.integers(1, 40, (300, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.integers(0, 20, 300).astype(np.float32)  # many ties: the order must be stable
    keep = amg.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist()
    assert keep == _nms_brute(boxes, scores, thr)
    assert amg.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


# ------------------------------------------------------------------------ RLE, boxes


def test_rle_round_trip_and_areas():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 7, 5)) > 0.5
    masks[0] = False
    masks[1] = True
    masks[2, 0, 0] = True  # starts with a one: counts begin with a 0-run
    rles = amg.rle_encode(masks)
    for m, rle in zip(masks, rles):
        assert rle["size"] == [7, 5] and sum(rle["counts"]) == 35
        assert np.array_equal(amg.rle_decode(rle), m)
        assert amg.rle_area(rle) == m.sum()
        coco = amg.to_coco_rle(rle)
        assert isinstance(coco["counts"], str)
        assert amg.coco_string_to_counts(coco["counts"]) == rle["counts"]
        assert np.array_equal(amg.rle_decode(coco), m)
    assert rles[0]["counts"] == [35] and rles[1]["counts"] == [0, 35]
    # counts are column-major (pycocotools): a mask with only the top-right pixel set
    m = np.zeros((3, 4), bool)
    m[0, 3] = True
    assert amg.rle_encode(m[None])[0]["counts"] == [9, 1, 2]


def test_coco_string_known_value_and_large_counts():
    # small counts are one character each (value + 48); from the 4th on, the difference to the
    # count two places back is stored: [5, 3, 7, 2] -> 2 - 3 = -1 -> 31 + 48 = "O"
    assert amg.counts_to_coco_string([3, 4, 5]) == "345"
    assert amg.counts_to_coco_string([0, 12]) == "0<"
    assert amg.counts_to_coco_string([5, 3, 7, 2]) == "537O"
    counts = [0, 100000, 3, 70000, 1, 250000]
    assert amg.coco_string_to_counts(amg.counts_to_coco_string(counts)) == counts


def test_masks_to_boxes_inclusive_and_empty():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 7, 11] = True
    boxes = amg.masks_to_boxes(masks)
    assert boxes.tolist() == [[3, 2, 8, 4], [11, 7, 11, 7], [0, 0, 0, 0]]
    assert amg.xyxy_to_xywh(boxes[0]) == [3, 2, 5, 2]  # Meta's width = x1 - x0


def test_stability_score_is_the_iou_of_two_thresholds():
    torch.manual_seed(0)
    logits = torch.randn(5, 20, 30) * 3
    got = amg.stability_score(logits, 0.0, 1.0)
    for i in range(5):
        hi, lo = logits[i] > 1.0, logits[i] > -1.0
        iou = (hi & lo).sum() / (hi | lo).sum()
        assert got[i] == pytest.approx(float(iou))
    assert torch.isnan(amg.stability_score(torch.full((1, 4, 4), -5.0), 0.0, 1.0)).all()


# ------------------------------------------------------------------ grids and crops


def test_point_grid_formula():
    for n in (1, 2, 5, 32):
        g = amg.point_grid(n)
        side = [(i + 0.5) / n for i in range(n)]
        expect = [(x, y) for y in side for x in side]  # rows of constant y, x fastest
        assert np.allclose(g, expect)
    assert amg.point_grid(0).shape == (0, 2)
    grids = amg.layer_point_grids(32, 2, 2)
    assert [len(g) for g in grids] == [32 * 32, 16 * 16, 8 * 8]


def _meta_crop_boxes(h, w, n_layers, ratio):
    """Meta's documented rule, written out independently."""
    boxes = [[0, 0, w, h]]
    for i in range(n_layers):
        n = 2 ** (i + 1)
        overlap = int(ratio * min(h, w) * (2 / n))
        cw = math.ceil((overlap * (n - 1) + w) / n)
        ch = math.ceil((overlap * (n - 1) + h) / n)
        for x0 in [int((cw - overlap) * k) for k in range(n)]:
            for y0 in [int((ch - overlap) * k) for k in range(n)]:
                boxes.append([x0, y0, min(x0 + cw, w), min(y0 + ch, h)])
    return boxes


@pytest.mark.parametrize("hw", [(480, 640), (512, 683), (1000, 37), (3, 3)])
def test_crop_boxes_formula(hw):
    boxes, layers = amg.crop_boxes(hw, 2, 512 / 1500)
    assert boxes == _meta_crop_boxes(*hw, 2, 512 / 1500)
    assert layers == [0] + [1] * 4 + [2] * 16
    assert boxes[1:5] == [[0, 0, *boxes[1][2:]], boxes[2], boxes[3], boxes[4]]


def test_box_near_crop_edge():
    boxes = torch.tensor([[0, 0, 50, 50], [100, 100, 150, 150], [5, 30, 60, 70]])
    near = amg.box_near_crop_edge(boxes, [100, 0, 300, 200], [0, 0, 300, 400])
    # crop frame: box 0 touches the crop's left edge (x=100, not an image edge) -> dropped
    assert near.tolist() == [True, False, True]


# ------------------------------------------------------------ small regions, filters


def _flood_sizes(mask: np.ndarray) -> list[int]:
    seen = np.zeros_like(mask)
    sizes = []
    h, w = mask.shape
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                stack, n = [(y, x)], 0
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    n += 1
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                stack.append((ny, nx))
                sizes.append(n)
    return sizes


def test_connected_components_both_backends_match_flood_fill():
    rng = np.random.default_rng(3)
    mask = rng.random((40, 50)) > 0.6
    labels, sizes = amg.connected_components(mask)
    assert sizes.tolist() == _flood_sizes(mask)  # raster order of first pixels
    runs = amg._label_runs(mask)
    assert np.array_equal(runs, labels)


def test_remove_small_regions_holes_and_islands():
    mask = np.zeros((30, 30), bool)
    mask[2:20, 2:20] = True
    mask[8:10, 8:10] = False  # a 4-pixel hole
    mask[25, 25] = True  # a 1-pixel island
    filled, changed = amg.remove_small_regions(mask, 10, "holes")
    assert changed and filled[8:10, 8:10].all() and filled[25, 25]
    cleaned, changed = amg.remove_small_regions(filled, 10, "islands")
    assert changed and not cleaned[25, 25] and cleaned[2:20, 2:20].all()
    same, changed = amg.remove_small_regions(cleaned, 10, "islands")
    assert not changed and np.array_equal(same, cleaned)
    tiny = np.zeros((10, 10), bool)
    tiny[1, 1] = tiny[5, 5] = tiny[5, 6] = True  # every island small: the largest is kept
    kept, _ = amg.remove_small_regions(tiny, 10, "islands")
    assert kept.sum() == 2 and kept[5, 5] and kept[5, 6]


def test_containment_filter_rule():
    masks = torch.zeros(5, 20, 20, dtype=torch.bool)
    masks[0, :10, :] = True  # level 2, whole
    masks[1, :5, :5] = True  # level 1, inside mask 0 -> dropped
    masks[2, 12:, :] = True  # level 1, outside -> kept
    masks[3, 14:16, 0:2] = True  # level 0, inside kept level-1 mask 2 -> dropped
    masks[4, 8:12, 15:20] = True  # level 0: half covered by mask 0 (0.5 >= 0.3) -> dropped
    levels = [2, 1, 1, 0, 0]
    assert amg.containment_filter(masks, levels, 0.3) == [0, 2]
    assert amg.containment_filter(masks, levels, 0.6) == [0, 2, 4]
    # masks of one level are never tested against each other
    assert amg.containment_filter(masks[[1, 2]], [1, 1], 0.0) == [0, 1]


# ------------------------------------------------------------------ SAM decoder, exact


def test_fused_decoder_matches_transformers(tiny_sam, photo):
    model = tiny_sam.model
    pixels, hw = sam_pixels(photo, tiny_sam.input_size)
    pts = np.array([[3.0, 4.0], [120.5, 60.25], [250.0, 180.0], [17.0, 150.0], [99.0, 99.0]])
    with torch.no_grad():
        emb = sam_image_embedding(model, pixels, tiny_sam.input_size)
        ref = model(
            image_embeddings=emb,
            input_points=torch.tensor(pts, dtype=torch.float)[None, :, None, :],
            multimask_output=True,
        )
        single = model(
            image_embeddings=emb,
            input_points=torch.tensor(pts, dtype=torch.float)[None, :, None, :],
            multimask_output=False,
        )
        for micro in (1, 2, 5):
            state = SamCropState(model, emb, tiny_sam.input_size, hw, photo.shape[:2], micro_batch=micro)
            iou, pairs, logits = state.predict(pts, True, lambda i: torch.ones_like(i, dtype=torch.bool))
            assert torch.allclose(iou, ref.iou_scores[0], atol=1e-5)
            low = logits.view(5, 3, *logits.shape[-2:])
            assert torch.allclose(low, ref.pred_masks[0], atol=1e-4, rtol=1e-4)
        iou1, _, logits1 = state.predict(pts, False, lambda i: torch.ones_like(i, dtype=torch.bool))
        assert torch.allclose(iou1, single.iou_scores[0], atol=1e-5)
        assert torch.allclose(logits1, single.pred_masks[0][:, 0], atol=1e-4, rtol=1e-4)
        # The IoU filter skips the upscaling but keeps the order (point-major, then level).
        keep = lambda i: i > i.median()  # noqa: E731
        _, pairs, kept = state.predict(pts, True, keep)
        assert torch.equal(pairs, torch.nonzero(keep(ref.iou_scores[0])))
        assert torch.allclose(kept, ref.pred_masks[0][pairs[:, 0], pairs[:, 1]], atol=1e-4, rtol=1e-4)


def test_predict_points_equals_transformers_forward(tiny_sam, small_photo):
    gen = SamMaskGenerator(tiny_sam)
    pts = np.array([[10.0, 20.0], [100.0, 64.0]])
    masks, iou = gen.predict_points(small_photo, pts)
    assert masks.shape == (2, 3, 128, 171) and iou.shape == (2, 3)
    pixels, hw = sam_pixels(small_photo, 256)
    scaled = pts * np.array([[hw[1] / 171, hw[0] / 128]])
    with torch.no_grad():
        out = tiny_sam.model(pixel_values=pixels, input_points=torch.tensor(scaled, dtype=torch.float)[None, :, None])
    up = F.interpolate(out.pred_masks[0], (256, 256), mode="bilinear", align_corners=False)[..., : hw[0], : hw[1]]
    ref = F.interpolate(up, (128, 171), mode="bilinear", align_corners=False) > 0
    assert torch.allclose(torch.from_numpy(iou), out.iou_scores[0], atol=1e-5)
    assert (torch.from_numpy(masks) != ref).float().mean() < 1e-4
    again, _ = gen.predict_points(small_photo, pts[:1], multimask=False)  # cached embedding
    assert again.shape == (1, 1, 128, 171)
    assert gen.predict_points(small_photo, np.zeros((0, 2)))[0].shape == (0, 3, 128, 171)


def test_full_size_equals_meta_postprocess(tiny_sam, photo):
    pixels, hw = sam_pixels(photo, tiny_sam.input_size)
    with torch.no_grad():
        emb = sam_image_embedding(tiny_sam.model, pixels, tiny_sam.input_size)
    state = SamCropState(tiny_sam.model, emb, tiny_sam.input_size, hw, photo.shape[:2])
    logits = torch.randn(3, *state.low_hw) * 2
    s = tiny_sam.input_size
    up = F.interpolate(logits[None], (s, s), mode="bilinear", align_corners=False)[..., : hw[0], : hw[1]]
    ref = F.interpolate(up, photo.shape[:2], mode="bilinear", align_corners=False)[0]
    masks, stab = state.full_size(logits, 0.0, 1.0)
    assert (masks != (ref > 0)).float().mean() < 1e-4
    assert torch.allclose(stab, amg.stability_score(ref, 0.0, 1.0), atol=1e-3)


def test_preprocessing_follows_meta(photo):
    pixels, hw = sam_pixels(photo, 1024)
    assert hw == (768, 1024) and pixels.shape == (1, 3, 1024, 1024)  # 683x512 -> long side 1024
    assert torch.all(pixels[0, :, 768:] == 0)  # padded after normalisation


# ------------------------------------------------------------------------- generator


def test_generator_outputs_meta_records(tiny_sam, small_photo):
    gen = SamMaskGenerator(tiny_sam, points_per_side=5, box_nms_thresh=1.0, **LOOSE)
    out = gen.generate(small_photo)
    assert len(out) > 10
    for rec in out:
        assert set(rec) >= {
            "segmentation",
            "area",
            "bbox",
            "predicted_iou",
            "point_coords",
            "stability_score",
            "crop_box",
            "level",
        }
        assert rec["segmentation"].shape == small_photo.shape[:2] and rec["segmentation"].sum() == rec["area"]
        assert rec["predicted_iou"] > 0.5 and rec["stability_score"] >= 0.05 and rec["level"] in (0, 1, 2)
        assert rec["crop_box"] == [0, 0, 171, 128]
    rle = SamMaskGenerator(tiny_sam, points_per_side=5, box_nms_thresh=1.0, output_mode="coco_rle", **LOOSE)
    coded = rle.generate(small_photo)
    assert len(coded) == len(out)
    assert all(np.array_equal(amg.rle_decode(c["segmentation"]), o["segmentation"]) for c, o in zip(coded, out))
    # a stricter threshold on one side only changes the result
    strict = SamMaskGenerator(tiny_sam, points_per_side=5, box_nms_thresh=1.0, **dict(LOOSE, pred_iou_thresh=0.9))
    assert len(strict.generate(small_photo)) < len(out)


def test_level_offsets_and_nms_priority(tiny_sam, small_photo):
    base = dict(points_per_side=4, box_nms_thresh=1.0, **LOOSE)
    plain = SamMaskGenerator(tiny_sam, **base).generate(small_photo)
    boosted = SamMaskGenerator(tiny_sam, level_iou_offsets=(0, 0, 1.0), **base).generate(small_photo)
    n2 = lambda ms: sum(r["level"] == 2 for r in ms)  # noqa: E731
    assert n2(boosted) > n2(plain)
    assert sum(r["level"] != 2 for r in boosted) == sum(r["level"] != 2 for r in plain)
    first = SamMaskGenerator(tiny_sam, level_nms_offsets=(0, 0, 5.0), **dict(base, box_nms_thresh=0.7))
    out = first.generate(small_photo)
    if len(out) and any(r["level"] == 2 for r in plain):
        assert out[0]["level"] == 2


def test_tuss_preset_is_the_documented_one():
    s = make_settings("tuss")
    assert (s.points_per_side, s.pred_iou_thresh, s.stability_score_thresh, s.box_nms_thresh) == (32, 0.86, 0.92, 0.7)
    assert (s.crop_n_layers, s.crop_n_points_downscale_factor, s.min_mask_region_area) == (1, 2, 100)
    assert s.level_iou_offsets == (0, 0, 0.1) and s.level_nms_offsets == (0, 0, 1.0) and s.containment_thresh == 0.3
    assert s.points_per_batch == 256 and s.crop_overlap_ratio == 512 / 1500
    e = make_settings("exact")
    assert (e.points_per_side, e.points_per_batch, e.stability_score_thresh, e.box_nms_thresh) == (32, 64, 0.95, 0.7)
    assert e.pred_iou_thresh is None  # 0.88 for SAM, 0.8 for SAM2, resolved by the generator
    assert set(PRESETS) >= {"exact", "fast", "sparse", "tuss", "corrclip"}


def test_crops_small_regions_and_containment_run(tiny_sam, small_photo):
    gen = SamMaskGenerator(tiny_sam, preset="tuss", points_per_side=4, **LOOSE)
    out = gen.generate(small_photo)
    for rec in out:
        assert isinstance(rec["segmentation"], dict) and amg.rle_area(rec["segmentation"]) == rec["area"]


def test_lower_input_size_and_low_res_stability(tiny_sam, small_photo):
    gen = SamMaskGenerator(tiny_sam, points_per_side=4, input_size=128, stability_at="low", box_nms_thresh=1.0, **LOOSE)
    assert all(r["segmentation"].shape == small_photo.shape[:2] for r in gen.generate(small_photo))


def test_sam2_tiny_generator(small_photo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sam2 = load_sam("tiny-random-sam2")
    gen = SamMaskGenerator(sam2, points_per_side=3, box_nms_thresh=1.0, **LOOSE)
    assert gen.settings.pred_iou_thresh == 0.5
    assert SamMaskGenerator(sam2, points_per_side=3).settings.pred_iou_thresh == 0.8  # Meta's SAM2 default
    out = gen.generate(small_photo)
    assert all(r["segmentation"].shape == small_photo.shape[:2] for r in out)
    with pytest.raises(InputError, match="SAM2"):
        SamMaskGenerator(sam2, input_size=512)


# ------------------------------------------------------------------------ bad inputs


def test_bad_inputs(tiny_sam, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    gen = SamMaskGenerator(tiny_sam, points_per_side=2)
    with pytest.raises(InputError, match="not a readable image"):
        gen.generate(bad)
    with pytest.raises(InputError, match="points_per_side"):
        SamMaskGenerator(tiny_sam, points_per_side=0)
    with pytest.raises(InputError, match="unknown mask preset"):
        SamMaskGenerator(tiny_sam, preset="nope")
    with pytest.raises(InputError, match="unknown mask-generator setting"):
        SamMaskGenerator(tiny_sam, pointz=3)
    # an image smaller than the crops: 3x3 pixels with two crop layers gives empty crops, no crash
    tiny_img = np.full((3, 3, 3), 128, np.uint8)
    out = SamMaskGenerator(tiny_sam, points_per_side=2, crop_n_layers=2, **LOOSE).generate(tiny_img)
    assert isinstance(out, MaskSet)
    # a crop layer whose grid rounds down to 0 points contributes nothing
    out = SamMaskGenerator(
        tiny_sam, points_per_side=2, crop_n_layers=1, crop_n_points_downscale_factor=4, **LOOSE
    ).generate(tiny_img)
    assert isinstance(out, MaskSet)
    # nothing passes: an empty mask set, and everything downstream accepts it
    empty = SamMaskGenerator(tiny_sam, points_per_side=2, pred_iou_thresh=100.0).generate(tiny_img)
    assert len(empty) == 0 and empty.masks().shape == (0, 3, 3)
    assert mask_pool(torch.randn(4, 2, 2), empty)[0].shape == (0, 4)
    labels = np.arange(9).reshape(3, 3)
    assert np.array_equal(refine_labels(labels, empty), labels)
    assert MaskSet.from_json(json.loads(json.dumps(empty.to_json()))).image_size == (3, 3)


def test_model_loading(tmp_path):
    with pytest.warns(UserWarning, match="RANDOM"):
        load_sam("tiny-random")
    directory = save_tiny_sam(tmp_path / "sam")
    loaded = load_sam(str(directory))
    assert loaded.kind == "sam" and loaded.input_size == 256
    from ovss.models.dino import build_tiny_dino

    build_tiny_dino().save_pretrained(tmp_path / "dino")  # a checkpoint of another kind
    with pytest.raises(ModelLoadError, match="not SAM"):
        load_sam(str(tmp_path / "dino"))
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_sam(str(tmp_path))
    with pytest.raises(ModelLoadError, match="cannot find SAM model"):
        load_sam("nobody/no-such-sam")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable PyTorch checkpoint"):
        load_sam(str(junk))


def test_meta_key_mapping_round_trips(tmp_path):
    model = build_tiny_sam()
    state = model.state_dict()
    meta = hf_to_meta_state_dict(state)
    assert "image_encoder.blocks.1.attn.qkv.weight" in meta
    assert "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight" in meta
    assert "prompt_encoder.mask_downscaling.6.bias" in meta
    back = meta_to_hf_state_dict(meta)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


# ------------------------------------------------------------------ pooling, refinement


def test_mask_pool_matches_direct_loop():
    torch.manual_seed(0)
    feats = torch.randn(6, 5, 7)
    masks = torch.rand(4, 23, 31) > 0.5
    masks[3] = False
    pooled, area = mask_pool(feats, masks)
    up = F.interpolate(feats[None], (23, 31), mode="bilinear", align_corners=False)[0]
    for i in range(3):
        assert torch.allclose(pooled[i], up[:, masks[i]].mean(1), atol=1e-5)
        assert area[i] == masks[i].sum()
    assert torch.all(pooled[3] == 0) and area[3] == 0
    # area mode: masks at the feature resolution (x2 blocks) weight each cell by its coverage
    blocks = torch.zeros(1, 10, 14, dtype=torch.bool)
    blocks[0, :2, :4] = True  # covers cells (0,0) and (0,1) fully
    pooled_area, _ = mask_pool(feats, blocks, mode="area")
    assert torch.allclose(pooled_area[0], feats[:, 0, :2].mean(1), atol=1e-6)


def test_refine_labels_on_a_synthetic_map():
    labels = np.zeros((10, 10), np.int64)
    labels[:, 5:] = 2
    labels[1, 1] = 1  # noise inside region A
    labels[8, 8] = 1  # noise inside region B
    masks = np.zeros((3, 10, 10), bool)
    masks[0, :, :5] = True  # region A, mostly 0
    masks[1, :, 5:] = True  # region B, mostly 2
    masks[2, 0:2, 0:2] = True  # a small region inside A: 3 zeros, 1 one -> 0
    out = refine_labels(labels, masks)
    expect = np.zeros((10, 10), np.int64)
    expect[:, 5:] = 2
    assert np.array_equal(out, expect)
    # pixels outside all masks keep their label; small regions can be left alone
    partial = refine_labels(labels, masks[[1]])
    assert partial[1, 1] == 1 and partial[8, 8] == 2
    assert refine_labels(labels, masks[[1]], min_area=1000)[8, 8] == 1
    # logits vote: argmax of the summed logits in each region
    logits = np.zeros((3, 10, 10), np.float32)
    logits[1, :, :5] = 1.0
    logits[0, :, 5:] = 1.0
    voted = refine_labels(labels, masks[:2], logits=logits, vote="logits")
    assert np.all(voted[:, :5] == 1) and np.all(voted[:, 5:] == 0)
    # an instance-id map works as regions too
    ids = masks[0] * 1 + masks[1] * 2
    assert np.array_equal(refine_labels(labels, ids), expect)


# ---------------------------------------------------------------------------- k-means


def test_kmeans_masks_on_a_synthetic_image():
    from ovss.masks.kmeans import kmeans

    image = np.zeros((64, 96, 3), np.uint8)
    image[:, :48] = (200, 30, 30)
    image[:, 48:] = (20, 40, 220)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen = KMeansMaskGenerator("tiny-random", k=2, short_side=64)
    out = gen.generate(image)
    assert len(out) == 2 and sum(r["area"] for r in out) == 64 * 96
    union = out.masks().sum(0)
    assert np.all(union == 1)  # the clusters partition the image
    left = out.masks()[:, :, :40].mean(axis=(1, 2))
    assert sorted(left.round(2).tolist()) == [0.0, 1.0]  # each colour region is one cluster
    assert set(out[0]) >= {"segmentation", "area", "bbox", "predicted_iou", "stability_score", "level"}
    # plain k-means: two separated blobs
    x = torch.cat([torch.randn(50, 3) * 0.1, torch.randn(50, 3) * 0.1 + 5])
    lab, _ = kmeans(x, 2)
    assert len(set(lab[:50].tolist())) == 1 and lab[0] != lab[-1]
    assert get_mask_generator("kmeans", dino=gen.dino, k=3).k == 3
    with pytest.raises(InputError, match="unknown mask generator"):
        get_mask_generator("nope")


# -------------------------------------------------------------------------------- CLI


def test_cli_hook_writes_resumable_outputs(evaldata, tmp_path, capsys):
    from ovss.masks.cli import add_masks_parser

    parser = argparse.ArgumentParser(prog="ovss")
    add_masks_parser(parser.add_subparsers(dest="command"))
    image = evaldata / PHOTO
    argv = [
        "masks",
        str(image),
        "--out",
        str(tmp_path / "out"),
        "--sam",
        "tiny-random",
        "--device",
        "cpu",
        "--set",
        "points_per_side=4",
        "--set",
        "pred_iou_thresh=0.5",
        "--set",
        "stability_score_thresh=0.05",
        "--set",
        "stability_score_offset=0.3",
    ]
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert args.func(args) == 0
    out = tmp_path / "out" / "ADE_val_00000001.json"
    data = json.loads(out.read_text())
    masks = MaskSet.from_json(data)
    assert masks.image_size == (512, 683) and (tmp_path / "out" / "ADE_val_00000001.png").exists()
    for rec in masks:
        assert isinstance(rec["segmentation"]["counts"], str) and amg.rle_area(rec["segmentation"]) == rec["area"]
    stamp = out.stat().st_mtime_ns
    args = parser.parse_args(argv)
    assert args.func(args) == 0 and out.stat().st_mtime_ns == stamp  # skipped: already done
    assert "already done" in capsys.readouterr().err
    changed = parser.parse_args([*argv[:-1], "stability_score_offset=0.4"])
    with pytest.raises(InputError, match=r"other (classes or )?settings"):
        changed.func(changed)
    bad = parser.parse_args(["masks", str(image), "--out", str(tmp_path / "o2"), "--preset", "nope"])
    with pytest.raises(InputError, match="unknown mask preset"):
        bad.func(bad)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"garbage")
    bad = parser.parse_args(["masks", str(corrupt), "--out", str(tmp_path / "o3")])
    with pytest.raises(InputError, match="not a readable image"):
        bad.func(bad)
