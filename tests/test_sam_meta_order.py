"""SAM in Meta's operation order (``ovss.masks.meta_order``, the ``exact`` preset's ``decoder="meta"``).

Meta's modules themselves are compared pixel for pixel in tests/parity (they need torchvision).
Here: the work the pixel-exact decoder still shares or skips (block 0's image-side projections
once per crop, the IoU filter before the upscaling) gives the plain per-prompt computation's
bits; the grouped upsampling gives F.interpolate's bits on Meta's (batch, 3, h, w) layout; and
the Meta-order encoder/decoder compute transformers' functions (up to rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.errors import InputError
from ovss.masks import SamMaskGenerator, meta_order
from ovss.masks.decoder import SamCropState
from ovss.masks.sam import sam_image_embedding

POINTS = np.array([[100.5, 50.25], [700.0, 600.0], [10.0, 350.0], [512.0, 512.0], [3.0, 1000.0]])


def _embedding(model, grid: int = 64) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, model.config.mask_decoder_config.hidden_size, grid, grid)


def _plain_meta(state: meta_order.MetaOrderSamState, tokens: torch.Tensor):
    """Meta's TwoWayTransformer as written: every block on per-prompt copies of the image tokens."""
    dec = state.model.mask_decoder
    tf = dec.transformer
    b = tokens.shape[0]
    queries, keys = tokens, state.src.expand(b, -1, -1).contiguous()
    pe = state.pe.expand(b, -1, -1).contiguous()
    att = meta_order._attention
    for block in tf.layers:
        if block.skip_first_layer_pe:
            queries = att(block.self_attn, queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + att(block.self_attn, q, q, queries)
        queries = block.layer_norm1(queries)
        q, k = queries + tokens, keys + pe
        queries = block.layer_norm2(queries + att(block.cross_attn_token_to_image, q, k, keys))
        queries = block.layer_norm3(queries + block.mlp(queries))
        q, k = queries + tokens, keys + pe
        keys = block.layer_norm4(keys + att(block.cross_attn_image_to_token, k, q, queries))
    q, k = queries + tokens, keys + pe
    queries = tf.layer_norm_final_attn(queries + att(tf.final_attn_token_to_image, q, k, keys))
    iou = dec.iou_prediction_head(queries[:, 0, :])
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in range(4)], dim=1)
    return iou, state.upscale_meta(keys, hyper)


@torch.no_grad()
@pytest.mark.parametrize("micro_batch", [1, 2])
def test_shared_block0_chunks_and_iou_filter_keep_the_plain_bits(full_width_decoder, micro_batch):
    state = meta_order.MetaOrderSamState(
        full_width_decoder, _embedding(full_width_decoder), 1024, (768, 1024), (480, 640), len(POINTS), micro_batch
    )
    iou_ref, low_ref = _plain_meta(state, state.point_tokens(POINTS))
    iou, hyper, chunks = state.run_meta(state.point_tokens(POINTS), micro_batch)
    assert len(chunks) == -(-len(POINTS) // micro_batch)
    assert torch.equal(iou, iou_ref)
    assert torch.equal(state.upscale_meta(torch.cat(chunks), hyper), low_ref)

    def keep(i: torch.Tensor) -> torch.Tensor:  # points 1 and 3 are never upscaled
        return (i > i.median()) & (torch.arange(len(i))[:, None] % 2 == 0)

    ious, pairs, logits = state.predict(POINTS, True, keep)
    assert torch.equal(ious, iou_ref[:, 1:])
    assert 0 < len(pairs) < 3 * len(POINTS) and len(torch.unique(pairs[:, 0])) < len(POINTS)
    assert torch.equal(logits, low_ref[:, 1:][pairs[:, 0], pairs[:, 1]])


@torch.no_grad()
def test_meta_order_decoder_is_the_fused_function(full_width_decoder):
    emb = _embedding(full_width_decoder)
    meta = meta_order.MetaOrderSamState(full_width_decoder, emb, 1024, (768, 1024), (480, 640), 5, 2)
    fused = SamCropState(full_width_decoder, emb, 1024, (768, 1024), (480, 640))
    everything = lambda i: torch.ones_like(i, dtype=torch.bool)  # noqa: E731
    (iou_m, _, low_m), (iou_f, _, low_f) = (
        meta.predict(POINTS, True, everything),
        fused.predict(POINTS, True, everything),
    )
    torch.testing.assert_close(iou_m, iou_f, rtol=0, atol=1e-4)
    torch.testing.assert_close(low_m, low_f, rtol=0, atol=1e-3 * float(low_f.abs().max()))


@torch.no_grad()
def test_meta_order_encoder_is_transformers_function(tiny_sam):
    torch.manual_seed(2)
    size = tiny_sam.input_size
    pixels = torch.randn(1, 3, size, size)
    ref = sam_image_embedding(tiny_sam.model, pixels, size)
    torch.testing.assert_close(
        sam_image_embedding(tiny_sam.model, pixels, size, meta_order=True), ref, rtol=0, atol=1e-4
    )


@torch.no_grad()
@pytest.mark.parametrize("k", [3, 7, 8])
def test_grouped_upsampling_has_metas_layout_bits(full_width_decoder, k):
    """Meta upsamples (batch, 3, h, w); the grouped route pads k masks to groups of 3 and must
    give the bits of that layout (the (k, 1, h, w) layout rounds differently on CPUs)."""
    state = SamCropState(full_width_decoder, _embedding(full_width_decoder), 1024, (768, 1024), (480, 640))
    state.upsample_group = 3
    torch.manual_seed(3)
    low = torch.randn(9, 256, 256) * 4  # Meta's (3, 3, 256, 256) batch
    ref = F.interpolate(low.view(3, 3, 256, 256), (1024, 1024), mode="bilinear", align_corners=False)
    ref = F.interpolate(ref[..., :768, :], (480, 640), mode="bilinear", align_corners=False).reshape(9, 480, 640)
    assert torch.equal(state.upsample_logits(low[:k]), ref[:k])


def test_generator_decoders_agree_and_setting_is_checked(tiny_sam, evaldata):
    from ovss.io import load_image

    photo = load_image(evaldata / "ade20k_sceneparsing/sampleData/images/ADE_val_00000001.jpg")
    loose = dict(points_per_side=6, pred_iou_thresh=0.5, stability_score_thresh=0.05, stability_score_offset=0.3)
    meta = SamMaskGenerator(tiny_sam, box_nms_thresh=1.0, **loose).generate(photo)
    fused = SamMaskGenerator(tiny_sam, preset="fast-decoder", box_nms_thresh=1.0, **loose).generate(photo)
    assert SamMaskGenerator(tiny_sam).settings.decoder == "meta"
    assert len(meta) == len(fused) > 0
    for a, b in zip(meta, fused):
        ma, mb = a["segmentation"], b["segmentation"]
        assert a["point_coords"] == b["point_coords"] and (ma & mb).sum() / max(1, (ma | mb).sum()) > 0.99
    with pytest.raises(InputError, match="decoder must be"):
        SamMaskGenerator(tiny_sam, decoder="meta-ish")
