"""Each last-block variant against a plain re-implementation of docs/methods.md §0.4(b) and §5.1.

The reference below is written from the formulas with explicit per-head loops; it shares no
code with ovss.models.dense_clip. Perturbing a weight the variant depends on must break agreement.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ovss.models.clip import CLIPBackbone
from ovss.models.dense_clip import LAST_BLOCKS, resize_position_embedding

TOL = 2e-5


def _ln(x, mod):
    return F.layer_norm(x, (x.shape[-1],), mod.weight, mod.bias, mod.eps)


def _lin(x, mod):
    return x @ mod.weight.T + (mod.bias if mod.bias is not None else 0)


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _mlp(x, mlp):
    return _lin(_quick_gelu(_lin(x, mlp.fc1)), mlp.fc2)


def _softmax_rows(a):
    a = a - a.max(dim=-1, keepdim=True).values
    e = a.exp()
    return e / e.sum(dim=-1, keepdim=True)


def _attention_output(y, attn, kind, grid, bias=None):
    """Per-head loop: weights A from the variant's rule, output out_proj(concat_h A_h v_h)."""
    n_heads = attn.num_heads
    d = y.shape[-1] // n_heads
    s = d**-0.5
    q, k, v = _lin(y, attn.q_proj), _lin(y, attn.k_proj), _lin(y, attn.v_proj)
    t = y.shape[0]
    extra = torch.zeros(t, t) if bias is None else bias
    outs = []
    for h in range(n_heads):
        qh, kh, vh = (m[:, h * d : (h + 1) * d] for m in (q, k, v))
        if kind == "vanilla":
            a = _softmax_rows(s * qh @ kh.T)
        elif kind == "maskclip":
            a = torch.eye(t)
        elif kind == "sclip":
            a = _softmax_rows(s * qh @ qh.T + extra) + _softmax_rows(s * kh @ kh.T + extra)
        elif kind == "clearclip":
            a = _softmax_rows(s * qh @ qh.T)
        elif kind == "naclip":
            omega = torch.zeros(t, t)
            gh, gw = grid
            rows = torch.arange(gh * gw) // gw  # token i sits at grid position divmod(i, gw)
            cols = torch.arange(gh * gw) % gw
            dist2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
            omega[1:, 1:] = torch.exp(-dist2.double() / (2 * 5.0**2)).float()
            a = _softmax_rows(s * kh @ kh.T + omega)
        outs.append(a @ vh)
    return _lin(torch.cat(outs, dim=-1), attn.out_proj)


def reference_dense(model, pixels, kind, bias=None):
    """(3, H, W) normalised pixels -> (D, h, w) normalised patch embeddings, from the formulas."""
    vis = model.vision_model
    p = model.config.vision_config.patch_size
    conv = vis.embeddings.patch_embedding.weight
    gh, gw = pixels.shape[1] // p, pixels.shape[2] // p
    patches = torch.stack(
        [pixels[:, i * p : (i + 1) * p, j * p : (j + 1) * p].flatten() for i in range(gh) for j in range(gw)]
    )
    tokens = patches @ conv.flatten(1).T
    pos = vis.embeddings.position_embedding.weight
    side = round(math.sqrt(pos.shape[0] - 1))
    if (gh, gw) == (side, side):
        patch_pos = pos[1:]
    else:  # bicubic with scale factors (h + 0.1)/sqrt(N), (w + 0.1)/sqrt(N)
        grid = pos[1:].T.reshape(1, -1, side, side)
        grid = F.interpolate(grid, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic")
        patch_pos = grid[0].reshape(pos.shape[1], -1).T
    x = torch.cat([vis.embeddings.class_embedding[None] + pos[:1], tokens + patch_pos])
    x = _ln(x, vis.pre_layrnorm)
    layers = vis.encoder.layers
    for layer in layers[:-1]:
        x = x + _attention_output(_ln(x, layer.layer_norm1), layer.self_attn, "vanilla", (gh, gw))
        x = x + _mlp(_ln(x, layer.layer_norm2), layer.mlp)
    last = layers[-1]
    out = _attention_output(_ln(x, last.layer_norm1), last.self_attn, kind, (gh, gw), bias)
    if kind in ("vanilla", "sclip"):  # residual and FFN kept
        x = x + out
        x = x + _mlp(_ln(x, last.layer_norm2), last.mlp)
    else:
        x = out
    x = _lin(_ln(x, vis.post_layernorm), model.visual_projection)[1:]
    x = x / x.norm(dim=-1, keepdim=True)
    return x.T.reshape(-1, gh, gw)


# Which last-block weights each variant's attention must depend on.
SENSITIVE = {
    "vanilla": "q_proj",
    "maskclip": "v_proj",
    "sclip": "k_proj",
    "clearclip": "q_proj",
    "naclip": "k_proj",
}


@pytest.fixture(scope="module")
def pixels():
    g = torch.Generator().manual_seed(3)
    return {size: torch.randn(3, *size, generator=g) for size in [(224, 224), (160, 288), (100, 130)]}


@pytest.mark.parametrize("variant", list(LAST_BLOCKS))
@pytest.mark.parametrize("size", [(224, 224), (160, 288), (100, 130)])
def test_variant_matches_reference(tiny_clip, pixels, variant, size):
    x = pixels[size]
    ours = tiny_clip.dense_features(x[None], variant)[0]
    ref = reference_dense(tiny_clip.model, x, variant)
    assert ours.shape == ref.shape == (32, size[0] // 16, size[1] // 16)
    assert (ours - ref).abs().max().item() < TOL


@pytest.mark.parametrize("variant", list(LAST_BLOCKS))
def test_parity_check_can_fail(tiny_clip, pixels, variant):
    x = pixels[(160, 288)]
    ref = reference_dense(tiny_clip.model, x, variant)
    model = copy.deepcopy(tiny_clip.model)
    weight = getattr(model.vision_model.encoder.layers[-1].self_attn, SENSITIVE[variant]).weight
    with torch.no_grad():
        weight[0, 0] += 5.0
    perturbed = CLIPBackbone(model, tiny_clip.tokenizer, "perturbed")
    ours = perturbed.dense_features(x[None], variant)[0]
    assert (ours - ref).abs().max().item() > 100 * TOL


def test_variants_differ(tiny_clip, pixels):
    x = pixels[(224, 224)][None]
    outs = {v: tiny_clip.dense_features(x, v) for v in LAST_BLOCKS}
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (outs[a] - outs[b]).abs().max() > 1e-3, (a, b)


def test_trunk_matches_transformers_at_native_size(tiny_clip, pixels):
    """At the native grid, vanilla equals transformers' own forward (post-LN + projection)."""
    x = pixels[(224, 224)][None]
    with torch.no_grad():
        hidden = tiny_clip.model.vision_model(pixel_values=x).last_hidden_state
        theirs = F.normalize(
            tiny_clip.model.visual_projection(tiny_clip.model.vision_model.post_layernorm(hidden)), dim=-1
        )
    ours = tiny_clip.dense_features(x, "vanilla")
    assert (ours.flatten(2).transpose(1, 2) - theirs[:, 1:]).abs().max() < TOL


def test_position_resize_gives_exact_grid_and_keeps_native():
    pos = torch.randn(1 + 14 * 14, 8)
    assert torch.equal(resize_position_embedding(pos, (14, 14)), pos)
    for h in range(1, 48):
        for w in (1, 7, 13, 21, 35, 47):
            out = resize_position_embedding(pos, (h, w))
            assert out.shape == (1 + h * w, 8)
            assert torch.equal(out[0], pos[0])


def test_bf16_trunk_is_close(tiny_clip, pixels):
    x = pixels[(224, 224)][None]
    ref = tiny_clip.dense_features(x, "sclip")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = tiny_clip.dense_features(x, "sclip")
    cos = (ref * low.float()).sum(1)
    assert cos.min() > 0.99
