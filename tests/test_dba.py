"""TUSS's discrimination bias against a direct construction, and the biased last block."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovss.ops.dba import discrimination_bias


def _direct(masks, grid, patches_see_cls=True):
    h, w = grid
    small = F.interpolate(masks[:, None].float(), size=grid, mode="nearest")[:, 0].bool()
    t = h * w
    bias = torch.zeros(t + 1, t + 1)
    for i in range(t):
        for j in range(t):
            yi, xi, yj, xj = i // w, i % w, j // w, j % w
            both = any(bool(m[yi, xi] and m[yj, xj]) for m in small)
            bias[1 + i, 1 + j] = 0.0 if both else -4.0
        if not patches_see_cls:
            bias[1 + i, 0] = -4.0
    return bias


def test_bias_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 48, 64, generator=g) > 0.6
    masks[0, :20, :20] = True
    for see in (True, False):
        assert torch.equal(discrimination_bias(masks, (6, 8), patches_see_cls=see), _direct(masks, (6, 8), see))
    assert (discrimination_bias(torch.zeros(0, 48, 64, dtype=torch.bool), (6, 8))[1:, 1:] == -4).all()


def test_a_patch_in_no_mask_is_unbiased_among_patches():
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, :16] = True  # the top half of a 2x2 grid
    bias = discrimination_bias(masks, (2, 2))
    assert bias[1, 2] == 0 and bias[3, 4] == -4 and bias[3, 3] == -4 and bias[1, 3] == -4


def test_biased_block_equals_per_head_reference(tiny_clip):
    """SCLIP block + bias = softmax(s q q^T + B) + softmax(s k k^T + B), residual and FFN kept."""
    from test_dense_clip import reference_dense  # the independent reference of the variant tests

    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 96, 128, generator=g)
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[0, :48, :64] = True
    masks[1, 40:, 50:] = True
    bias = discrimination_bias(masks, (6, 8))
    ours = tiny_clip.dense_features(pixels[None], "sclip", bias=bias[None])[0]
    ref = reference_dense(tiny_clip.model, pixels, "sclip", bias=bias)
    assert (ours - ref).abs().max() < 2e-5
    assert (ours - tiny_clip.dense_features(pixels[None], "sclip")[0]).abs().max() > 1e-3  # the bias matters
