"""Dense CLIP patch embeddings at any input size, with the field's last-block variants.

docs/methods.md §0.4(b) and §5.1. The trunk (patch embedding, bicubic position-embedding resize,
``ln_pre``, blocks 1..L-1) is shared; only the last block changes per method. Every variant
ends with ``ln_post`` and the visual projection applied to every token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError

# transformers' CLIP submodules: their attributes (q_proj, layer_norm1, ...) resolve at run time
HFModule = Any


@dataclass(frozen=True)
class LastBlock:
    """How the last ViT block attends, and whether its residual and FFN are kept."""

    attention: str  # "qk" | "identity" | "qq+kk" | "qq" | "kk+gauss"
    residual: bool
    ffn: bool


# docs/methods.md §5.1: the last-block variants as data.
LAST_BLOCKS: dict[str, LastBlock] = {
    "vanilla": LastBlock("qk", residual=True, ffn=True),
    "maskclip": LastBlock("identity", residual=False, ffn=False),  # ClearCLIP's re-implementation
    "sclip": LastBlock("qq+kk", residual=True, ffn=True),
    "clearclip": LastBlock("qq", residual=False, ffn=False),
    "naclip": LastBlock("kk+gauss", residual=False, ffn=False),
}

NACLIP_SIGMA = 5.0


def resize_position_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize CLIP's ``(1 + N, C)`` position table to a ``grid`` of patches.

    The square patch table is resized bicubically with scale factors ``(h + 0.1) / sqrt(N)`` and
    ``(w + 0.1) / sqrt(N)`` as the reference code does (not to an exact output size, which
    resamples differently); at the native grid the table is used unchanged.
    """
    n = pos.shape[0] - 1
    side = round(math.sqrt(n))
    h, w = grid
    if (h, w) == (side, side):
        return pos
    table = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    table = F.interpolate(
        table.float(), scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic", align_corners=False
    )
    if table.shape[-2:] != (h, w):  # pragma: no cover - guards the rounding trick
        raise RuntimeError(f"position-embedding resize gave {tuple(table.shape[-2:])}, expected {(h, w)}")
    table = table.permute(0, 2, 3, 1).reshape(h * w, -1).to(pos.dtype)
    return torch.cat([pos[:1], table], dim=0)


@lru_cache(maxsize=16)
def _gaussian_prior(h: int, w: int, sigma: float, device: str) -> torch.Tensor:
    """NACLIP's neighbourhood prior over ``1 + h*w`` tokens; the CLS row and column are 0."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()
    d2 = torch.cdist(coords, coords).pow(2)
    prior = torch.zeros(h * w + 1, h * w + 1)
    prior[1:, 1:] = torch.exp(-d2 / (2 * sigma**2))
    return prior.to(device)


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` whose bf16 CPU forward hands the bias to oneDNN with the product (the op
    inductor's frozen graphs call): ``F.linear`` first copies the broadcast bias into the output,
    which cost 10% of a bf16 image (docs/speed.md). Bit-identical to ``F.linear``
    (tests/test_dense_speed.py); every other device and dtype takes ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under torch.compile, F.linear: inductor's freezing passes prepack it themselves
        if x.is_cpu and x.dtype == torch.bfloat16 == self.weight.dtype and _HAS_ONEDNN_LINEAR and not _compiling():
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


_HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_compiling = torch.compiler.is_compiling


def use_onednn_linears(module: torch.nn.Module) -> torch.nn.Module:
    """Turn every plain ``nn.Linear`` in ``module`` into :class:`OneDNNLinear` (same weights), in place."""
    for m in module.modules():
        if type(m) is torch.nn.Linear:
            m.__class__ = OneDNNLinear
    return module


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.view(b, t, num_heads, c // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, nh, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, nh * d)


def _block(x: torch.Tensor, layer: HFModule) -> torch.Tensor:
    """A standard pre-norm CLIP block (the trunk), using fused attention."""
    attn = layer.self_attn
    y = layer.layer_norm1(x)
    q, k, v = (_heads(proj(y), attn.num_heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    x = x + attn.out_proj(_merge(F.scaled_dot_product_attention(q, k, v)))
    return x + layer.mlp(layer.layer_norm2(x))


def last_block(
    x: torch.Tensor,
    layer: HFModule,
    spec: LastBlock,
    grid: tuple[int, int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply the last block in the form ``spec`` describes.

    ``bias`` is an optional additive attention bias ``(B or 1, T, T)`` added inside each softmax
    (used by mask-aware variants such as TUSS's DBA).
    """
    attn = layer.self_attn
    y = layer.layer_norm1(x)
    q, k, v = (_heads(proj(y), attn.num_heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    mask = None if bias is None else bias.unsqueeze(1).to(q.dtype)
    kind = spec.attention
    if kind == "identity":
        out = v
    elif kind == "qk":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    elif kind == "qq":
        out = F.scaled_dot_product_attention(q, q, v, attn_mask=mask)
    elif kind == "qq+kk":  # SCLIP: a sum (not a mean) of two softmaxes
        out = F.scaled_dot_product_attention(q, q, v, attn_mask=mask) + F.scaled_dot_product_attention(
            k, k, v, attn_mask=mask
        )
    elif kind == "kk+gauss":  # NACLIP: the prior is added unscaled to the scaled logits
        prior = _gaussian_prior(grid[0], grid[1], NACLIP_SIGMA, str(x.device)).to(q.dtype)
        prior = prior if mask is None else prior + mask
        out = F.scaled_dot_product_attention(k, k, v, attn_mask=prior)
    else:
        raise ValueError(f"unknown last-block attention {kind!r}")
    out = attn.out_proj(_merge(out))
    x = x + out if spec.residual else out
    if spec.ffn:
        x = x + layer.mlp(layer.layer_norm2(x))
    return x


def resize_position_embedding_to_size(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """PixelCLIP's rule (cvlab-kaist/PixelCLIP ``resized_pos_embed``): bicubic to an exact output
    size, align_corners False, applied whenever the grid differs from the native one."""
    n = pos.shape[0] - 1
    side = round(math.sqrt(n))
    if tuple(grid) == (side, side):
        return pos
    table = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table.float(), size=tuple(grid), mode="bicubic", align_corners=False)
    table = table.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:1], table], dim=0)


def pixelclip_last_block(x: torch.Tensor, layer: HFModule) -> torch.Tensor:
    """PixelCLIP's dense last block: each token's value goes through the out-projection, the CLS
    token's *block input* is added to every token as the residual, then the MLP with its residual.
    The value path is per head and linear, so it equals ``out_proj(v_proj(ln_1(x)))`` on all heads."""
    attn = layer.self_attn
    x = attn.out_proj(attn.v_proj(layer.layer_norm1(x))) + x[:, :1]
    return x + layer.mlp(layer.layer_norm2(x))


def trunk_tokens(
    vision: HFModule,
    pixels: torch.Tensor,
    patch_size: int,
    position_resize: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] = resize_position_embedding,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Tokens entering the last block: patch embed, position table, ``ln_pre``, blocks 1..L-1."""
    emb = vision.embeddings
    x = emb.patch_embedding(pixels.to(emb.patch_embedding.weight.dtype))
    grid = (x.shape[-2], x.shape[-1])
    if min(grid) < 1:
        raise InputError(f"image window {tuple(pixels.shape[-2:])} is smaller than one {patch_size}px patch")
    x = x.flatten(2).transpose(1, 2)
    cls = emb.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + position_resize(emb.position_embedding.weight, grid).to(x.dtype)
    x = vision.pre_layrnorm(x)
    for layer in vision.encoder.layers[:-1]:
        x = _block(x, layer)
    return x, grid


def dense_clip_features(
    vision: HFModule,
    projection: HFModule,
    pixels: torch.Tensor,
    variant: str | LastBlock,
    patch_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, 3, H, W)`` normalised pixels -> ``(B, D, H//P, W//P)`` L2-normalised patch embeddings."""
    spec = LAST_BLOCKS[variant] if isinstance(variant, str) else variant
    x, grid = trunk_tokens(vision, pixels, patch_size)
    x = last_block(x, vision.encoder.layers[-1], spec, grid, bias=bias)
    x = projection(vision.post_layernorm(x))[:, 1:]
    x = F.normalize(x.float(), dim=-1)
    return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)


def check_variant(variant: str) -> str:
    if variant not in LAST_BLOCKS:
        raise InputError(f"unknown last-block variant {variant!r}; choose one of {', '.join(LAST_BLOCKS)}")
    return variant


def last_block_values(vision: HFModule, pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The last block's value vectors of the patch tokens (heads concatenated): ``(B, C, h, w)``.

    For methods that replace the last block's attention with an external affinity shared by all
    heads (ProxyCLIP, CorrCLIP): then ``concat_h(A v_h) = A concat_h(v_h)``, so the heads never
    need to be split."""
    x, grid = trunk_tokens(vision, pixels, patch_size)
    layer = vision.encoder.layers[-1]
    v = layer.self_attn.v_proj(layer.layer_norm1(x))[:, 1:]
    return v.transpose(1, 2).reshape(v.shape[0], -1, *grid)


def project_values(vision: HFModule, projection: HFModule, values: torch.Tensor) -> torch.Tensor:
    """Attended ``(B, C, h, w)`` values -> out_proj (no residual, no FFN), ``ln_post``, projection:
    ``(B, D, h, w)`` L2-normalised embeddings."""
    b, _, h, w = values.shape
    x = values.flatten(2).transpose(1, 2)
    x = vision.encoder.layers[-1].self_attn.out_proj(x.to(vision.post_layernorm.weight.dtype))
    x = F.normalize(projection(vision.post_layernorm(x)).float(), dim=-1)
    return x.transpose(1, 2).reshape(b, -1, h, w)
