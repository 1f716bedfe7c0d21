"""SAM mask upsampling against Meta's interpolation rule, pixel for pixel.

Meta's ``Sam.postprocess_masks`` (facebookresearch/segment-anything, ``modeling/sam.py``)
bilinearly resizes the low-res logits to the padded square input, crops the unpadded part and
resizes that to the original size; SAM2's ``SAM2Transforms.postprocess_masks`` resizes once
(``align_corners=False`` everywhere). The reference below is written from that rule; the low-res
logits come from ovss's decoder, which tests/parity compares with Meta's separately.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.io import load_image
from ovss.masks import SamMaskGenerator
from ovss.masks.presets import PRESETS, make_settings

POINTS = np.array([[100.5, 50.25], [400.0, 300.0], [10.0, 350.0], [250.0, 181.0]])
NON_SQUARE = "ade20k_sceneparsing/sampleData/images/ADE_val_00000002.jpg"  # 364x500


def meta_sam_postprocess(low: torch.Tensor, input_size: int, input_hw, original_hw) -> torch.Tensor:
    """On Meta's (points, 3 levels, h, w) layout: F.interpolate's CPU kernel rounds it differently
    from a (masks, 1, h, w) one (docs/masks.md, "Parity with Meta's generator")."""
    masks = F.interpolate(low.view(-1, 3, *low.shape[-2:]), (input_size,) * 2, mode="bilinear", align_corners=False)
    masks = masks[..., : input_hw[0], : input_hw[1]]
    return F.interpolate(masks, original_hw, mode="bilinear", align_corners=False).flatten(0, 1)


def meta_sam2_postprocess(low: torch.Tensor, original_hw) -> torch.Tensor:
    return F.interpolate(low[:, None], original_hw, mode="bilinear", align_corners=False)[:, 0]


def meta_preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """``ResizeLongestSide.get_preprocess_shape``."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _generator(sam: str, **settings) -> SamMaskGenerator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SamMaskGenerator(sam, device="cpu", **settings)


def _masks_and_reference(gen: SamMaskGenerator, image: np.ndarray):
    masks, _ = gen.predict_points(image, POINTS)
    h, w = image.shape[:2]
    state = gen._cached[1]
    if gen.sam.kind == "sam":
        ih, iw = state.input_hw
        assert (ih, iw) == meta_preprocess_shape(h, w, state.input_size)
        in_points = POINTS * np.array([[iw / w, ih / h]])
    else:
        in_points = state.to_input_frame(POINTS)
    _, _, low = state.predict(in_points, True, lambda iou: torch.ones_like(iou, dtype=torch.bool))
    if gen.sam.kind == "sam":
        full = meta_sam_postprocess(low, state.input_size, state.input_hw, (h, w))
    else:
        full = meta_sam2_postprocess(low, (h, w))
    return masks.reshape(-1, h, w), full, low, gen.sam.mask_threshold


@pytest.mark.parametrize("sam", ["tiny-random", "tiny-random-sam2"])
def test_exact_upsampling_is_metas_pixel_for_pixel(evaldata, sam):
    image = load_image(evaldata / NON_SQUARE)
    masks, full, _, threshold = _masks_and_reference(_generator(sam, preset="exact"), image)
    ref = (full > threshold).numpy()
    assert ref.any() and (~ref).any()  # a real comparison, not all-empty masks
    assert np.array_equal(masks, ref), f"{int((masks != ref).sum())} pixels differ"


def test_matrix_route_is_the_same_map_up_to_rounding(evaldata):
    image = load_image(evaldata / NON_SQUARE)
    gen = _generator("tiny-random", preset="exact", upsample="matrix")
    masks, full, low, threshold = _masks_and_reference(gen, image)
    assert torch.allclose(gen._cached[1].upsample_logits(low), full, atol=1e-4)  # logits ~ +-3
    # At most a few pixels next to the threshold flip (here 1 pixel in 3 of 12 masks, which is
    # what the pixel-for-pixel test above would catch on this route).
    flipped = (masks != (full > threshold).numpy()).sum(axis=(1, 2))
    assert flipped.max() <= 0.001 * masks[0].size


def test_presets_choose_the_route():
    assert make_settings("exact").upsample == "interpolate"
    for name in ("fast", "sparse", "small-input"):
        assert PRESETS[name].settings["upsample"] == "matrix"
    with pytest.raises(Exception, match="upsample"):
        make_settings("exact", upsample="nearest")
