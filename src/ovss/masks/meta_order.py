"""SAM's image encoder and mask decoder in the operation order of Meta's ``segment_anything``.

transformers' SAM modules compute the same functions as Meta's but not with the same float
operations: the encoder's attention goes through ``scaled_dot_product_attention`` (or adds the
two relative-position terms to each other before the scores), its neck and the decoder's
upscaling use ``F.layer_norm`` where Meta's ``LayerNorm2d`` computes mean and variance by hand,
and the decoder's attention multiplies by ``d ** -0.5`` where Meta divides by ``sqrt(d)``. Each
moves values by float rounding, and a full-size logit next to the mask threshold then flips a
pixel (docs/masks.md, "Parity with Meta's generator"). The functions here run transformers'
weights through Meta's own steps (``segment_anything/modeling/image_encoder.py``,
``transformer.py``, ``mask_decoder.py`` of facebookresearch/segment-anything), so the ``exact``
preset reproduces Meta's masks pixel for pixel (tests/parity).

Kept from the fused decoder (``decoder.py``) because they do not change a bit (checked against
Meta's modules in tests/parity and against the plain port in tests/test_sam_speed.py): the
image positional embedding and the "no mask" prompt computed once per crop, block 0's key/value
and query projections of the image tokens (the same rows for every prompt) computed once per
crop, the IoU filter before the mask upscaling, and prompts in micro-batches.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .decoder import KeepFn, SamCropState

# ----------------------------------------------------------------------------- encoder


def _layer_norm_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Meta's ``LayerNorm2d`` (channels first, mean and variance by hand)."""
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + eps)
    return weight[:, None, None] * x + bias[:, None, None]


def _rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Meta's ``get_rel_pos`` (the table is resized only when its length differs)."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        )
        resized = resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        resized = rel_pos
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return resized[relative.long()]


def _vision_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """Meta's ``image_encoder.Attention`` with a transformers ``SamVisionAttention``'s weights."""
    b, h, w, _ = x.shape
    heads = attn.num_attention_heads
    qkv = attn.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, h * w, -1).unbind(0)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if attn.use_rel_pos:
        rh, rw = _rel_pos(h, h, attn.rel_pos_h), _rel_pos(w, w, attn.rel_pos_w)
        r_q = q.reshape(b * heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
        scores = (scores.view(b * heads, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(
            b * heads, h * w, h * w
        )
    scores = scores.softmax(dim=-1)
    out = (scores @ v).view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(out)


def _vision_block(layer, x: torch.Tensor) -> torch.Tensor:
    """Meta's ``image_encoder.Block`` (window partitioning is data movement only: transformers' own)."""
    shortcut = x
    x = layer.layer_norm1(x)
    if layer.window_size > 0:
        hw = (x.shape[1], x.shape[2])
        x, pad_hw = layer.window_partition(x, layer.window_size)
    x = _vision_attention(layer.attn, x)
    if layer.window_size > 0:
        x = layer.window_unpartition(x, layer.window_size, pad_hw, hw)
    x = shortcut + x
    return x + layer.mlp(layer.layer_norm2(x))


def image_embedding(enc, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """Patch tokens (B, h, w, C) after the patch embedding, plus the absolute position table
    ``pos`` (or None), through the blocks and the neck in Meta's order -> (B, C_out, h, w)."""
    if pos is not None:
        x = x + pos
    for layer in enc.layers:
        x = _vision_block(layer, x)
    neck = enc.neck
    x = neck.conv1(x.permute(0, 3, 1, 2))
    x = _layer_norm_2d(x, neck.layer_norm1.weight, neck.layer_norm1.bias, neck.layer_norm1.eps)
    x = neck.conv2(x)
    return _layer_norm_2d(x, neck.layer_norm2.weight, neck.layer_norm2.bias, neck.layer_norm2.eps)


# ----------------------------------------------------------------------------- decoder


def _attention(mod, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Meta's ``transformer.Attention`` (divides by sqrt(d); transformers multiplies by d ** -0.5)."""
    heads = mod.num_attention_heads
    q, k, v = _split(mod.q_proj(q), heads), _split(mod.k_proj(k), heads), _split(mod.v_proj(v), heads)
    return _attend(mod, q, k, v)


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def _attend(mod, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Heads already projected and split: scores, softmax, values, output projection."""
    scores = (q @ k.permute(0, 1, 3, 2)) / math.sqrt(q.shape[-1])
    out = torch.softmax(scores, dim=-1) @ v
    b, h, n, d = out.shape
    return mod.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


def _scores_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-prompt part of Meta's attention: heads (n, H, T, d) in, (n, H, T, d) out."""
    return torch.softmax((q @ k.permute(0, 1, 3, 2)) / math.sqrt(q.shape[-1]), dim=-1) @ v


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class MetaOrderSamState(SamCropState):
    """A SAM crop decoded in Meta's operation order (pixel-exact), see the module docstring.

    ``batch`` prompts are decoded together, as Meta's generator does with ``points_per_batch``:
    the products on the prompt tokens (B x 7 rows) round differently at other batch sizes on
    CPUs. The per-prompt work on the 4,096 image tokens (projections, scores, softmax, norms,
    upscaling) gives the same values whatever the number of prompts, so it runs ``micro_batch``
    prompts at a time, keeping its tensors in cache (tests/test_sam_meta_order.py)."""

    def __init__(
        self, model, embedding: torch.Tensor, input_size: int, input_hw, crop_hw, batch: int = 64, micro_batch: int = 2
    ):
        super().__init__(model, embedding, input_size, input_hw, crop_hw, micro_batch)
        self.batch = max(1, batch)
        dec = model.mask_decoder
        c = embedding.shape[1]
        # Meta: image_pe from PositionEmbeddingRandom, src = embedding + dense "no mask" prompt,
        # both (B, N, C) per prompt; their rows are the same for every prompt, so computed once.
        self.src = embedding.flatten(2).permute(0, 2, 1) + model.prompt_encoder.no_mask_embed.weight.reshape(1, 1, c)
        first = dec.transformer.layers[0] if len(dec.transformer.layers) else None
        if first is not None:
            t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
            k = self.src + self.pe
            self.k0 = _split(t2i.k_proj(k), t2i.num_attention_heads)  # (1, H, N, d)
            self.v0 = _split(t2i.v_proj(self.src), t2i.num_attention_heads)
            self.q0 = _split(i2t.q_proj(k), i2t.num_attention_heads)

    def run_meta(
        self, tokens: torch.Tensor, chunk: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Tokens (B, 7, C) -> (IoU predictions (B, 4), hypernetwork inputs (B, 4, C/8), image
        tokens as a list of (n, N, C) chunks of ``chunk`` prompts; None: one chunk)."""
        dec = self.model.mask_decoder
        tf = dec.transformer
        b = tokens.shape[0]
        step = chunk or b
        spans = [(a, min(b, a + step)) for a in range(0, b, step)]
        queries = tokens
        keys: list[torch.Tensor] | None = None
        for block in tf.layers:
            if block.skip_first_layer_pe:
                queries = _attention(block.self_attn, queries, queries, queries)
            else:
                q = queries + tokens
                queries = queries + _attention(block.self_attn, q, q, queries)
            queries = block.layer_norm1(queries)
            t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
            h = t2i.num_attention_heads
            qh = _split(t2i.q_proj(queries + tokens), h)
            heads = []
            for i, (a, e) in enumerate(spans):
                if keys is None:
                    k0, v0 = self.k0.expand(e - a, -1, -1, -1), self.v0.expand(e - a, -1, -1, -1)
                    heads.append(_scores_out(qh[a:e], k0, v0))
                else:
                    kc = keys[i]
                    heads.append(_scores_out(qh[a:e], _split(t2i.k_proj(kc + self.pe), h), _split(t2i.v_proj(kc), h)))
            queries = block.layer_norm2(queries + t2i.out_proj(_merge(torch.cat(heads))))
            queries = block.layer_norm3(queries + block.mlp(queries))
            h = i2t.num_attention_heads
            q = queries + tokens
            kt, vt = _split(i2t.k_proj(q), h), _split(i2t.v_proj(queries), h)
            new = []
            for i, (a, e) in enumerate(spans):
                if keys is None:
                    qi, base = self.q0.expand(e - a, -1, -1, -1), self.src
                else:
                    qi, base = _split(i2t.q_proj(keys[i] + self.pe), h), keys[i]
                new.append(block.layer_norm4(base + i2t.out_proj(_merge(_scores_out(qi, kt[a:e], vt[a:e])))))
            keys = new
        if keys is None:  # a decoder without two-way blocks
            keys = [self.src.expand(e - a, -1, -1) for a, e in spans]
        final = tf.final_attn_token_to_image
        h = final.num_attention_heads
        qh = _split(final.q_proj(queries + tokens), h)
        heads = [
            _scores_out(qh[a:e], _split(final.k_proj(kc + self.pe), h), _split(final.v_proj(kc), h))
            for (a, e), kc in zip(spans, keys)
        ]
        queries = tf.layer_norm_final_attn(queries + final.out_proj(_merge(torch.cat(heads))))
        iou = dec.iou_prediction_head(queries[:, 0, :])
        n_masks = dec.num_mask_tokens
        hyper = torch.stack([dec.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in range(n_masks)], dim=1)
        return iou, hyper, keys

    def upscale_meta(self, keys: torch.Tensor, hyper: torch.Tensor, meta_batch: int = 2) -> torch.Tensor:
        """Meta's ``output_upscaling`` and hypernetwork product: (B, N, C), (B, 4, C8) -> (B, 4, 4gh, 4gw).

        ``meta_batch``: the number of prompts Meta's generator upscales together here. The first
        transposed convolution returns channels-last memory for two or more prompts and contiguous
        memory for one, and the norm after it rounds differently on the two layouts; so a single
        prompt is upscaled as two (itself twice) unless Meta's batch had one prompt too."""
        if keys.shape[0] == 1 and meta_batch > 1:
            return self.upscale_meta(torch.cat([keys, keys]), torch.cat([hyper, hyper]))[:1]
        dec = self.model.mask_decoder
        b, _, c = keys.shape
        gh, gw = self.grid
        x = dec.upscale_conv1(keys.transpose(1, 2).view(b, c, gh, gw))
        ln = dec.upscale_layer_norm
        x = dec.activation(_layer_norm_2d(x, ln.weight, ln.bias, ln.eps))
        x = dec.activation(dec.upscale_conv2(x))
        _, c8, h, w = x.shape
        return (hyper @ x.view(b, c8, h * w)).view(b, -1, h, w)

    def predict(self, points: np.ndarray, multimask: bool, keep: KeepFn):
        ious, pairs, logits = [], [], []
        levels = slice(1, None) if multimask else slice(0, 1)
        for a in range(0, len(points), self.batch):
            tokens = self.point_tokens(points[a : a + self.batch])
            iou, hyper, chunks = self.run_meta(tokens, self.micro_batch)
            iou = iou[:, levels].float().cpu()
            ious.append(iou)
            passed = keep(iou)
            start = 0
            for keys in chunks:  # upscaled chunk by chunk, only the points with a level that passed
                n = keys.shape[0]
                rows = torch.nonzero(passed[start : start + n].any(dim=1)).flatten()
                if len(rows):
                    r = rows.to(keys.device)
                    low = self.upscale_meta(keys[r] if len(rows) < n else keys, hyper[start + r], len(tokens))
                    low = low[:, levels]
                    sel = torch.nonzero(passed[start + rows])
                    logits.append(low[sel[:, 0].to(low.device), sel[:, 1].to(low.device)].float())
                    pairs.append(torch.stack([rows[sel[:, 0]] + a + start, sel[:, 1]], dim=1))
                start += n
        iou_all = torch.cat(ious) if ious else torch.zeros(0, 3 if multimask else 1)
        if not pairs:
            return iou_all, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, *self.low_hw)
        return iou_all, torch.cat(pairs), torch.cat(logits)
