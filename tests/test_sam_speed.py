"""The issue-15 speed-ups of the SAM generator against the code path they replace.

``SamMaskGenerator._fast_paths = False`` (``SamCropState.fast_paths``) is the code path from
before: the whole square first interpolation step, the unchunked mask upscaling, and masks
thresholded for every IoU survivor before the stability filter. Each speed-up must give the same
values bit for bit (``torch.equal``), and the generator the same masks, scores and order.
Meta's generator itself is compared in tests/parity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovss.masks import SamMaskGenerator, decoder
from ovss.masks.decoder import SamCropState
from ovss.testing.standins import LOOSE_THRESHOLDS as LOOSE  # a few masks of the tiny random SAM pass

PHOTO = "ade20k_sceneparsing/sampleData/images/ADE_val_00000001.jpg"


@pytest.fixture(scope="module")
def photo(evaldata) -> np.ndarray:
    from ovss.io import load_image

    return load_image(evaldata / PHOTO)


def _state(model, grid: int, input_hw, crop_hw, fast: bool) -> SamCropState:
    torch.manual_seed(1)
    emb = torch.randn(1, model.config.mask_decoder_config.hidden_size, grid, grid)
    state = SamCropState(model, emb, 16 * grid, input_hw, crop_hw)
    state.fast_paths = fast
    return state


@torch.no_grad()
@pytest.mark.parametrize("rows", [300, 512, 4095])
def test_chunked_upscale_is_bit_identical(full_width_decoder, rows):
    plain = _state(full_width_decoder, 64, (768, 1024), (480, 640), fast=False)
    fast = _state(full_width_decoder, 64, (768, 1024), (480, 640), fast=True)
    fast.upscale_rows = rows  # 300 and 4095 do not divide 4096: the chunks are evened out
    points = np.array([[100.5, 50.25], [700.0, 600.0], [10.0, 350.0]])
    _, hyper, keys = plain.run(plain.point_tokens(points), multimask=True)
    calls = []
    original = fast._upscale_features
    fast._upscale_features = lambda t: calls.append(len(t)) or original(t)  # type: ignore[method-assign]
    out = fast.upscale(keys, hyper)
    assert len(calls) == 3 * -(-4096 // rows) and min(calls) > rows // 2  # chunked, no tiny last chunk
    assert torch.equal(out, plain.upscale(keys, hyper))


@torch.no_grad()
def test_decoder_attention_paths_are_bit_identical(full_width_decoder):
    """Block 0's per-head products (no per-prompt copy of the shared image keys) and the
    in-place update of the image tokens give the decoder's exact numbers."""
    plain = _state(full_width_decoder, 64, (768, 1024), (480, 640), fast=False)
    fast = _state(full_width_decoder, 64, (768, 1024), (480, 640), fast=True)
    points = np.array([[100.5, 50.25], [700.0, 600.0], [10.0, 350.0]])
    for new, old in zip(fast.run(fast.point_tokens(points), True), plain.run(plain.point_tokens(points), True)):
        assert torch.equal(new, old)
    keep = lambda iou: iou > iou.median()  # noqa: E731
    for new, old in zip(fast.predict(points, True, keep), plain.predict(points, True, keep)):
        assert torch.equal(new, old)


@torch.no_grad()
@pytest.mark.parametrize(
    "input_hw, crop_hw",
    [((768, 1024), (480, 640)), ((1024, 745), (500, 364)), ((1024, 1024), (300, 300)), ((391, 1024), (171, 448))],
)
def test_cropped_first_interpolation_is_bit_identical(full_width_decoder, input_hw, crop_hw):
    plain = _state(full_width_decoder, 64, input_hw, crop_hw, fast=False)
    fast = _state(full_width_decoder, 64, input_hw, crop_hw, fast=True)
    logits = torch.randn(3, 256, 256) * 8
    ref = plain.upsample_logits(logits)
    assert ref.shape == (3, *crop_hw)
    assert torch.equal(fast.upsample_logits(logits), ref)


@torch.no_grad()
def test_full_size_with_the_stability_filter_inside(full_width_decoder):
    state = _state(full_width_decoder, 64, (768, 1024), (480, 640), fast=True)
    logits = torch.randn(7, 256, 256) * 4
    masks, stab = state.full_size(logits, 0.0, 1.0)
    keep = stab > stab.median()
    kept, stab_k = state.full_size(logits, 0.0, 1.0, keep=lambda s, a: s > stab.median())
    assert torch.equal(stab_k, stab) and torch.equal(kept, masks[keep]) and 0 < len(kept) < 7


def _records(gen: SamMaskGenerator, image: np.ndarray, fast: bool) -> list[dict]:
    gen._fast_paths = fast
    return list(gen.generate(image))


@pytest.mark.parametrize(
    "preset, settings",
    [("exact", dict(points_per_side=6, box_nms_thresh=1.0)), ("exact", dict(points_per_side=6)), ("tuss", {})],
)
def test_generator_same_masks_as_the_plain_path(tiny_sam, photo, monkeypatch, preset, settings):
    import ovss.methods.tuss  # noqa: F401  (registers the tuss preset)

    monkeypatch.setattr(decoder, "UPSCALE_ROWS_PER_THREAD", 37)  # chunks on the tiny model's 256 tokens
    if preset == "tuss":
        settings = dict(points_per_side=4, min_mask_region_area=20)
    gen = SamMaskGenerator(tiny_sam, preset=preset, output_mode="uncompressed_rle", **LOOSE, **settings)
    new, old = _records(gen, photo, fast=True), _records(gen, photo, fast=False)
    assert len(new) == len(old) > 0
    for a, b in zip(new, old):
        assert a == b  # segmentation, scores, point, crop box, level: all equal, in the same order
