"""ovss's SAM automatic mask generator against Meta's ``segment_anything`` on the same weights.

Needs ``segment_anything`` (and so torchvision), which the main environment lacks; the whole
module is skipped there. Run it in a side venv (docs/masks.md):

    python -m venv /tmp/samenv
    /tmp/samenv/bin/pip install torch==2.14.1 torchvision==0.29.1 segment-anything transformers \
        pillow numpy pytest opencv-python-headless tqdm safetensors huggingface_hub
    /tmp/samenv/bin/pip install -e . --no-deps
    /tmp/samenv/bin/python -m pytest -q tests/parity

The model: a small random SAM (ViT width 64, 2 layers, 512-pixel input, decoder width 64) built
from one transformers ``SamConfig``, its weights copied into Meta's modules with the key mapping
of ``ovss.models.sam_convert``. Random weights give noise-like masks that cover the image, so NMS
would keep one mask; the main comparison therefore switches NMS off (``box_nms_thresh=1.0``)
and compares every mask that passes the filters, one by one and in order.
"""

from __future__ import annotations

import os
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

segment_anything = pytest.importorskip(
    "segment_anything", reason="segment_anything (needs torchvision) is not installed; see docs/masks.md"
)

from segment_anything import SamAutomaticMaskGenerator  # noqa: E402
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer  # noqa: E402
from segment_anything.utils import amg as meta_amg  # noqa: E402

from ovss.io import load_image  # noqa: E402
from ovss.masks import SamBackbone, SamMaskGenerator, amg  # noqa: E402
from ovss.models.sam import randomize_sam  # noqa: E402
from ovss.models.sam_convert import hf_to_meta_state_dict  # noqa: E402

SHARED = Path(os.environ.get("OVSS_EVALDATA", Path(__file__).resolve().parents[3] / "shared" / "evaldata"))
PHOTO = SHARED / "ade20k_sceneparsing/sampleData/images/ADE_val_00000001.jpg"
# Random weights: IoU predictions lie around -0.6..0.4 and mask logits around +-1, so the
# thresholds are loosened to let a few hundred masks through both filters.
LOOSE = dict(points_per_side=16, pred_iou_thresh=0.1, stability_score_thresh=0.15, stability_score_offset=0.3)
CONFIGS = {
    "no-nms": dict(LOOSE, box_nms_thresh=1.0),
    "defaults-nms": dict(LOOSE),
    "crops-small-regions": dict(
        LOOSE,
        box_nms_thresh=1.0,
        crop_nms_thresh=1.0,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        min_mask_region_area=60,
    ),
}


@pytest.fixture(scope="module")
def models():
    from transformers import SamConfig, SamModel

    config = SamConfig(
        vision_config=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=128,
            image_size=512,
            patch_size=16,
            window_size=8,
            global_attn_indexes=[1],
            output_channels=64,
            num_pos_feats=32,
        ),
        prompt_encoder_config=dict(hidden_size=64, image_size=512, patch_size=16),
        mask_decoder_config=dict(
            hidden_size=64, mlp_dim=128, num_attention_heads=4, iou_head_hidden_dim=64, layer_norm_eps=1e-5
        ),  # Meta's decoder norms use nn.LayerNorm's default
    )
    hf = randomize_sam(SamModel(config), seed=0).eval()
    vc = config.vision_config
    meta = Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=64,
            img_size=512,
            mlp_ratio=2.0,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[1],
            window_size=vc.window_size,
            out_chans=64,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=64, image_embedding_size=(32, 32), input_image_size=(512, 512), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer_dim=64,
            iou_head_depth=3,
            iou_head_hidden_dim=64,
            transformer=TwoWayTransformer(depth=2, embedding_dim=64, mlp_dim=128, num_heads=4),
        ),
    )
    meta.load_state_dict(hf_to_meta_state_dict(hf.state_dict()), strict=True)
    return SamBackbone(hf, "parity-sam"), meta.eval()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    if not PHOTO.is_file():
        pytest.skip(f"{PHOTO} not found; set OVSS_EVALDATA")
    return load_image(PHOTO)


def match(ref: list[dict], ours) -> list[int]:
    """For each Meta mask, the ovss mask from the same point and crop with the closest predicted
    IoU (the three levels of a point differ in it)."""
    by_key: dict = {}
    for j, b in enumerate(ours):
        by_key.setdefault((tuple(map(tuple, b["point_coords"])), tuple(b["crop_box"])), []).append(j)
    out = []
    for a in ref:
        cands = by_key.get((tuple(map(tuple, a["point_coords"])), tuple(a["crop_box"])), [])
        assert cands, f"no ovss mask from point {a['point_coords']}"
        out.append(min(cands, key=lambda j: abs(ours[j]["predicted_iou"] - a["predicted_iou"])))
    return out


def compare(ref: list[dict], ours, iou_min: float = 0.99, tie: float = 1e-5, max_pixel_diff: int = 0) -> dict:
    """Mask-by-mask agreement; raises AssertionError with the first difference.

    Masks are paired by point, crop and level (closest predicted IoU). The output order (NMS
    sorts by predicted IoU) must be the same except between masks whose scores differ by less
    than ``tie``: float rounding may swap those, on either side. Each mask must equal Meta's
    pixel for pixel (up to ``max_pixel_diff`` differing pixels), as well as by IoU."""
    assert len(ours) == len(ref), f"{len(ours)} masks from ovss, {len(ref)} from segment_anything"
    pairs = match(ref, ours)
    assert len(set(pairs)) == len(pairs), "two Meta masks matched one ovss mask"
    swapped = 0
    for i, j in enumerate(pairs):
        if i != j:
            swapped += 1
            assert abs(ref[i]["predicted_iou"] - ours[i]["predicted_iou"]) < tie, f"order differs at {i}"
    ious, pixel_diffs = [], []
    for i, j in enumerate(pairs):
        a, b = ref[i], ours[j]
        ma, mb = a["segmentation"], b["segmentation"]
        iou = float((ma & mb).sum() / max(1, (ma | mb).sum()))
        ious.append(iou)
        pixel_diffs.append(int((ma != mb).sum()))
        assert iou > iou_min, f"mask {i}: IoU {iou:.4f}"
        assert pixel_diffs[-1] <= max_pixel_diff, f"mask {i}: {pixel_diffs[-1]} pixels differ from Meta's"
        assert abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-4, f"mask {i}: predicted_iou"
        assert abs(a["stability_score"] - b["stability_score"]) < 1e-3, f"mask {i}: stability_score"
        assert np.allclose(a["point_coords"], b["point_coords"]), f"mask {i}: point_coords"
        assert list(a["crop_box"]) == list(b["crop_box"]), f"mask {i}: crop_box"
        assert abs(a["area"] - b["area"]) <= max(2, 0.001 * a["area"]), f"mask {i}: area"
        assert np.abs(np.subtract(a["bbox"], b["bbox"])).max() <= 1, f"mask {i}: bbox"
    return {
        "masks": len(ref),
        "tie_swaps": swapped,
        "min_iou": min(ious) if ious else None,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "max_pixel_diff": max(pixel_diffs) if pixel_diffs else None,
    }


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_masks_as_segment_anything(models, photo, name, record_property):
    ovss_sam, meta = models
    settings = CONFIGS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = SamAutomaticMaskGenerator(meta, **settings).generate(photo)
    ours = SamMaskGenerator(ovss_sam, **settings).generate(photo)
    stats = compare(ref, ours)
    record_property("parity", stats)
    print(f"\n{name}: {stats}")
    if name == "no-nms":
        assert stats["masks"] > 100  # a real comparison, not two empty lists


def test_one_sided_threshold_change_is_detected(models, photo):
    ovss_sam, meta = models
    settings = CONFIGS["no-nms"]
    ref = SamAutomaticMaskGenerator(meta, **settings).generate(photo)
    for change in (dict(pred_iou_thresh=0.2), dict(stability_score_thresh=0.3), dict(stability_score_offset=0.5)):
        ours = SamMaskGenerator(ovss_sam, **dict(settings, **change)).generate(photo)
        with pytest.raises(AssertionError):
            compare(ref, ours)


def test_nms_equals_torchvision():
    from torchvision.ops import batched_nms, nms

    rng = np.random.default_rng(0)
    xy = rng.integers(0, 500, (2000, 2))
    boxes = torch.from_numpy(np.concatenate([xy, xy + rng.integers(1, 300, (2000, 2))], 1)).float()
    scores = torch.from_numpy(rng.integers(0, 50, 2000).astype(np.float32))  # ties everywhere
    for thr in (0.3, 0.7, 0.95):
        assert torch.equal(amg.nms(boxes, scores, thr), nms(boxes, scores, thr))
        # Above 1000 boxes torchvision's batched_nms (used by Meta) re-sorts the kept boxes with an
        # unstable sort: the same boxes, but ties may come out in another order.
        batched = batched_nms(boxes, scores, torch.zeros(2000), thr)
        assert sorted(amg.nms(boxes, scores, thr).tolist()) == sorted(batched.tolist())
        small = batched_nms(boxes[:900], scores[:900], torch.zeros(900), thr)
        assert torch.equal(amg.nms(boxes[:900], scores[:900], thr), small)


def test_rules_equal_meta_utilities():
    for n, layers, factor in ((32, 0, 1), (32, 1, 2), (16, 2, 2), (7, 1, 1)):
        ours = amg.layer_point_grids(n, layers, factor)
        ref = meta_amg.build_all_layer_point_grids(n, layers, factor)
        assert all(np.array_equal(a, b) for a, b in zip(ours, ref))
    for hw in ((480, 640), (512, 683), (1000, 37), (1500, 2000)):
        assert amg.crop_boxes(hw, 2, 512 / 1500) == meta_amg.generate_crop_boxes(hw, 2, 512 / 1500)
    rng = np.random.default_rng(1)
    masks = torch.from_numpy(rng.random((20, 37, 53)) > 0.7)
    masks[0] = False
    assert [r["counts"] for r in amg.rle_encode(masks)] == [r["counts"] for r in meta_amg.mask_to_rle_pytorch(masks)]
    assert torch.equal(amg.masks_to_boxes(masks), meta_amg.batched_mask_to_box(masks))
    logits = torch.from_numpy(rng.normal(size=(20, 37, 53)).astype(np.float32))
    assert torch.allclose(amg.stability_score(logits, 0.0, 0.5), meta_amg.calculate_stability_score(logits, 0.0, 0.5))
    boxes = amg.masks_to_boxes(masks)
    for crop in ([0, 0, 53, 37], [10, 5, 40, 30]):
        ours = amg.box_near_crop_edge(boxes, crop, [0, 0, 60, 40])
        assert torch.equal(ours, meta_amg.is_box_near_crop_edge(boxes, crop, [0, 0, 60, 40]))


def test_small_region_removal_equals_opencv():
    pytest.importorskip("cv2", reason="Meta's remove_small_regions needs opencv")
    rng = np.random.default_rng(2)
    for _ in range(20):
        mask = rng.random((60, 80)) > rng.uniform(0.3, 0.8)
        for mode in ("holes", "islands"):
            for area in (1, 5, 30):
                ours, changed = amg.remove_small_regions(mask, area, mode)
                ref, ref_changed = meta_amg.remove_small_regions(mask, area, mode)
                assert changed == ref_changed and np.array_equal(ours, ref)


def test_coco_rle_equals_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is not installed")
    rng = np.random.default_rng(3)
    masks = rng.random((10, 41, 29)) > 0.6
    for m, rle in zip(masks, amg.rle_encode(masks)):
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert amg.to_coco_rle(rle)["counts"] == ref["counts"].decode()
