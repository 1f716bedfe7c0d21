"""Per-crop mask prediction: SAM's decoder with its prompt-independent work done once, and SAM2's.

Both states answer the same question for a batch of point prompts (in the crop's pixel frame):
the predicted IoU of every (point, level) pair, and low-resolution mask logits for the pairs a
filter keeps; then they map logits to the crop's full size. ``upsample="interpolate"`` does it
with ``F.interpolate`` as Meta's ``postprocess_masks`` does (SAM: to the padded square input,
crop the unpadded part, to the crop size; SAM2: once, to the crop size), pixel for pixel;
``"matrix"`` folds the same linear map into one row and one column matrix, equal in exact
arithmetic but rounded differently, which flips a few pixels next to the threshold.

SAM's decoder (two-way transformer, then two stride-2 transposed convolutions and a
hypernetwork product) is re-expressed with the same weights so that per-prompt work is small:

* block 0 sees the same image tokens for every prompt, so their key/value projections (prompt
  tokens attending to the image) and query projection (image attending to prompts) are computed
  once per crop;
* in later blocks, attention to per-prompt image tokens ``x`` is folded into the 7 prompt tokens:
  ``q . (W x + b) = (W^T q) . x + q . b`` (the ``q . b`` term is constant along a softmax over
  image tokens and cancels), and ``sum_n p_n (W x_n + b) = W (sum_n p_n x_n) + b``; the
  image-to-token update folds the output projection into the token values. No per-prompt
  4096 x 128 projection is ever formed;
* only the IoU token and the needed mask tokens go through the final attention;
* the IoU head runs before the mask upscaling, which is skipped for points whose levels all fail
  the IoU filter; the transposed convolutions are per-pixel matrix products (channels-last);
* prompts run in micro-batches of a few points so that the per-prompt (4096, 256) tensors stay
  in cache (the decoder is memory-bound on CPUs otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..ops.resize import bilinear_matrix
from . import amg

KeepFn = Callable[[torch.Tensor], torch.Tensor]  # (b, L) IoU predictions -> (b, L) bool
UPSCALE_ROWS_PER_THREAD = 512  # image tokens per CPU thread upscaled at a time (SamCropState.upscale)


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(B, T, h*d) -> (B, h, T, d)."""
    b, t, c = x.shape
    return x.view(b, t, h, c // h).transpose(1, 2)


class _CropState:
    """What both model families share: sizes and the exact low-res -> crop-size mapping."""

    input_size: int
    input_hw: tuple[int, int]  # the resized crop inside the square input
    crop_hw: tuple[int, int]
    low_hw: tuple[int, int]  # low-resolution logits size
    upsample: str = "interpolate"  # "interpolate" (Meta's steps) | "matrix" (one product)
    # False: the code path before the issue-15 speed-ups (whole-size interpolation, unchunked
    # upscaling, masks for every IoU survivor); kept as the baseline of bench/amg.py and the tests.
    fast_paths: bool = True
    # Masks per F.interpolate channel axis on the "interpolate" route: its CPU kernel rounds
    # (n, 3, h, w) inputs differently from (n, 1, h, w), and Meta's generator upsamples
    # (batch, 3 levels, h, w), so the pixel-exact decoder sets 3 (1 keeps the fused path's bits).
    upsample_group: int = 1
    _mats: tuple[torch.Tensor, torch.Tensor] | None = None

    def valid_low_res(self) -> tuple[int, int]:
        """The part of the low-res logits that covers the image (not the padding)."""
        lh, lw = self.low_hw
        ih, iw = self.input_hw
        s = self.input_size
        return max(1, min(lh, math.ceil(ih * lh / s))), max(1, min(lw, math.ceil(iw * lw / s)))

    def _matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _interpolate(self, logits: torch.Tensor) -> torch.Tensor:
        """(k, lh, lw) -> (k, ch, cw) with Meta's interpolation steps."""
        return self._interpolate_grouped(logits[:, None])[:, 0]

    def _interpolate_grouped(self, logits: torch.Tensor) -> torch.Tensor:
        """(n, g, lh, lw) -> (n, g, ch, cw) with Meta's interpolation steps."""
        raise NotImplementedError

    def _largest_step(self) -> int:
        """Floats per mask held at once on the interpolation route."""
        return self.crop_hw[0] * self.crop_hw[1]

    def upsample_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(k, lh, lw) low-res logits -> (k, ch, cw) full-size logits by the chosen route."""
        if self.upsample == "interpolate":
            g = self.upsample_group
            if g == 1:
                return self._interpolate(logits.float())
            k = logits.shape[0]
            pad = -k % g  # copies of the last mask fill the last group
            x = torch.cat([logits, logits[-1:].expand(pad, -1, -1)]) if pad else logits
            x = x.float().reshape(-1, g, *x.shape[1:])
            return self._interpolate_grouped(x).flatten(0, 1)[:k]
        if self._mats is None:
            my, mx = self._matrices()
            self._mats = (my.to(logits.device), mx.T.contiguous().to(logits.device))
        my, mxt = self._mats
        return my @ logits.float() @ mxt

    def full_size(
        self,
        logits: torch.Tensor,
        threshold: float,
        offset: float,
        keep: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (M, lh, lw) -> boolean masks at the crop's size and their stability
        scores, chunked so that at most ~64 MB of full-size logits exist at once.

        With ``keep`` ((stability scores (k,) of a chunk, index of its first row) -> bool (k,)),
        masks are made only for the kept logits: one row per True, in order."""
        ch, cw = self.crop_hw
        if logits.shape[0] == 0:
            return torch.zeros(0, ch, cw, dtype=torch.bool), torch.zeros(0)
        step = max(1, (1 << 24) // max(1, self._largest_step()))
        masks, stabs = [], []
        for a in range(0, logits.shape[0], step):
            full = self.upsample_logits(logits[a : a + step])  # (k, ch, cw)
            stab = amg.stability_score(full, threshold, offset)
            stabs.append(stab.cpu())
            if keep is not None:
                full = full[keep(stabs[-1], a).to(full.device)]
            masks.append((full > threshold).cpu())
        return torch.cat(masks), torch.cat(stabs)


class SamCropState(_CropState):
    """A SAM-encoded crop and everything its decoder computes from the image alone."""

    def __init__(self, model, embedding: torch.Tensor, input_size: int, input_hw, crop_hw, micro_batch: int = 2):
        self.model = model
        self.input_size = input_size
        self.input_hw = tuple(input_hw)
        self.crop_hw = tuple(crop_hw)
        self.micro_batch = max(1, micro_batch)
        dec = model.mask_decoder
        _, c, gh, gw = embedding.shape
        self.grid = (gh, gw)
        self.low_hw = (4 * gh, 4 * gw)
        ys = (torch.arange(gh, dtype=torch.float32) + 0.5) / gh
        xs = (torch.arange(gw, dtype=torch.float32) + 0.5) / gw
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).to(embedding.device)
        pe = model.shared_image_embedding(coords.to(embedding.dtype))  # (gh, gw, C), x first as SAM
        self.pe = pe.reshape(1, gh * gw, c)
        dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, 1, c)
        self.src = embedding.flatten(2).transpose(1, 2) + dense  # image tokens + "no mask" prompt
        src_pe = self.src + self.pe
        first = dec.transformer.layers[0] if len(dec.transformer.layers) else None
        if first is not None:
            t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
            self.k0 = _heads(t2i.k_proj(src_pe), t2i.num_attention_heads)[0]  # (H, N, d)
            self.v0 = _heads(t2i.v_proj(self.src), t2i.num_attention_heads)[0]
            self.q0 = _heads(i2t.q_proj(src_pe), i2t.num_attention_heads)[0] * i2t.scaling
            self.src_plus_bias = self.src + i2t.out_proj.bias
        self.tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)  # (5, C)
        # Transposed convolutions as (C_in, 4 * C_out) matrices, (dy, dx, channel) column order.
        w1, w2 = dec.upscale_conv1.weight, dec.upscale_conv2.weight
        self.c4, self.c8 = w1.shape[1], w2.shape[1]
        self.w1 = w1.permute(0, 2, 3, 1).reshape(c, 4 * self.c4)
        self.b1 = dec.upscale_conv1.bias.repeat(4)
        self.w2 = w2.permute(0, 2, 3, 1).reshape(self.c4, 4 * self.c8)
        self.b2 = dec.upscale_conv2.bias.repeat(4)
        # Image tokens upscaled at a time on CPUs (cache-sized, more with more threads so each
        # thread keeps a few hundred rows); GPUs take all tokens at once.
        self.upscale_rows: int | None = (
            None if embedding.is_cuda else UPSCALE_ROWS_PER_THREAD * max(1, torch.get_num_threads())
        )

    def _matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Meta's ``postprocess_masks``: bilinear to input_size^2, crop the unpadded part, bilinear
        to the crop size; as one row and one column matrix (float64 products, then float32)."""
        lh, lw = self.low_hw
        s, (ih, iw), (ch, cw) = self.input_size, self.input_hw, self.crop_hw
        my = bilinear_matrix(ch, ih).double() @ bilinear_matrix(s, lh).double()[:ih]
        mx = bilinear_matrix(cw, iw).double() @ bilinear_matrix(s, lw).double()[:iw]
        return my.float(), mx.float()

    def _interpolate_grouped(self, logits: torch.Tensor) -> torch.Tensor:
        (ih, iw), s = self.input_hw, self.input_size
        lh, lw = self.low_hw
        if self.fast_paths and 4 * lh == s and 4 * lw == s:
            # Only the unpadded (ih, iw) corner of the s x s step is kept, so only it is computed:
            # bilinear output pixels are independent, and with scale_factor 4 (no recomputation)
            # the source coordinates are the same as for size (s, s) (scale 1/4 = lh / s exactly),
            # so the values are bit for bit those of the whole step (tests/test_sam_speed.py). One
            # more low-res row/column than ceil(ih / 4) keeps the last output row's upper neighbour.
            rows, cols = min(lh, ih // 4 + 2), min(lw, iw // 4 + 2)
            x = F.interpolate(
                logits[..., :rows, :cols],
                scale_factor=4.0,
                mode="bilinear",
                align_corners=False,
                recompute_scale_factor=False,
            )
        else:
            x = F.interpolate(logits, size=(s, s), mode="bilinear", align_corners=False)
        return F.interpolate(x[..., :ih, :iw], size=self.crop_hw, mode="bilinear", align_corners=False)

    def _largest_step(self) -> int:
        return max(self.crop_hw[0] * self.crop_hw[1], self.input_size**2)

    # -- prompts
    def point_tokens(self, coords: np.ndarray) -> torch.Tensor:
        """(B, 2) points in the resized-input frame -> (B, 7, C) decoder tokens (SAM's prompt
        encoder: Fourier features of the pixel centre, plus the foreground embedding, plus the
        padding point that SAM adds when no box is given)."""
        dev, dtype = self.src.device, self.src.dtype
        norm = torch.from_numpy((coords + 0.5) / self.input_size).float()  # float64, then float32 as Meta
        point = self.model.shared_image_embedding(norm[:, None, :].to(dev, dtype))[:, 0]
        prompt = self.model.prompt_encoder
        point = point + prompt.point_embed[1].weight
        pad = prompt.not_a_point_embed.weight.expand(point.shape[0], -1)
        sparse = torch.stack([point, pad], dim=1)
        return torch.cat([self.tokens.expand(point.shape[0], -1, -1), sparse], dim=1)

    # -- decoder
    def predict(self, points: np.ndarray, multimask: bool, keep: KeepFn):
        """Points in the resized-input frame -> (IoU (B, L), [(point, level)] kept, their logits)."""
        ious, pairs, logits = [], [], []
        for a in range(0, len(points), self.micro_batch):
            tokens = self.point_tokens(points[a : a + self.micro_batch])
            iou, hyper, keys = self.run(tokens, multimask)
            iou = iou.float().cpu()
            ious.append(iou)
            passed = keep(iou)
            rows = torch.nonzero(passed.any(dim=1)).flatten()
            if len(rows) == 0:
                continue
            if len(rows) < keys.shape[0]:
                keys, hyper = keys[rows.to(keys.device)], hyper[rows.to(keys.device)]
            low = self.upscale(keys, hyper)
            sel = torch.nonzero(passed[rows])  # (m, 2): row in ``rows``, level
            logits.append(low[sel[:, 0].to(low.device), sel[:, 1].to(low.device)].float())
            pairs.append(torch.stack([rows[sel[:, 0]] + a, sel[:, 1]], dim=1))
        iou_all = torch.cat(ious) if ious else torch.zeros(0, 3 if multimask else 1)
        if not pairs:
            return iou_all, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, *self.low_hw)
        return iou_all, torch.cat(pairs), torch.cat(logits)

    def run(self, tokens: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens -> (IoU predictions (B, L), hypernetwork vectors (B, L, C/8), image tokens (B, N, C))."""
        dec = self.model.mask_decoder
        qpe = tokens
        queries = tokens
        keys = None
        for i, block in enumerate(dec.transformer.layers):
            if i == 0 and block.skip_first_layer_pe:
                queries = _attend(block.self_attn, queries, queries, queries)
            else:
                q = queries + qpe
                queries = queries + _attend(block.self_attn, q, q, queries)
            queries = block.layer_norm1(queries)
            t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
            if keys is None:
                queries = queries + _t2i_shared(t2i, queries + qpe, self.k0, self.v0, self.fast_paths)
            else:
                keys_pe = keys + self.pe
                queries = queries + _t2i_folded(t2i, queries + qpe, keys_pe, keys)
            queries = block.layer_norm2(queries)
            queries = block.layer_norm3(queries + block.mlp(queries))
            if keys is None:
                keys = _i2t_shared(i2t, queries + qpe, queries, self.q0, self.src_plus_bias, self.fast_paths)
            else:
                keys = _i2t_folded(i2t, queries + qpe, queries, keys_pe, keys, self.fast_paths)
            keys = block.layer_norm4(keys)
        if keys is None:  # a decoder without two-way blocks
            keys = self.src.expand(tokens.shape[0], -1, -1)
        wanted = [0, 2, 3, 4] if multimask else [0, 1]  # IoU token, then the mask tokens used
        sel = queries[:, wanted]
        final = dec.transformer.final_attn_token_to_image
        sel = sel + _t2i_folded(final, sel + qpe[:, wanted], keys + self.pe, keys)
        sel = dec.transformer.layer_norm_final_attn(sel)
        iou = dec.iou_prediction_head(sel[:, 0])
        iou = iou[:, 1:4] if multimask else iou[:, 0:1]
        first = 1 if multimask else 0
        hyper = torch.stack(
            [dec.output_hypernetworks_mlps[first + j](sel[:, 1 + j]) for j in range(len(wanted) - 1)], dim=1
        )
        return iou, hyper, keys

    def upscale(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, N, C) and hypernetwork vectors (B, L, C/8) -> logits (B, L, 4gh, 4gw).

        The 2x2 sub-pixel positions of both transposed convolutions are interleaved only at the
        end, on the small (B, L, ...) logits.
        """
        b, n, c = keys.shape
        gh, gw = self.grid
        levels = hyper.shape[1]
        rows = self.upscale_rows
        if not self.fast_paths or rows is None or rows >= n:
            y = self._upscale_features(keys.reshape(b * n, c))  # (B*N*4, 4*C8)
            logits = y.view(b, n * 16, self.c8) @ hyper.transpose(1, 2)  # (B, N*16, L)
        else:
            # The same products, a few hundred image tokens at a time: the (tokens * 16, C8)
            # intermediates then stay in cache instead of streaming ~16 MB per prompt through
            # memory. Rows are independent, so the values are bit for bit the unchunked ones.
            # Equal chunks: a tiny last chunk would take another (gemv-like) BLAS kernel, whose
            # rounding differs from the unchunked product's.
            rows = -(-n // -(-n // rows))
            logits = torch.empty(b, n * 16, levels, dtype=keys.dtype, device=keys.device)
            for i in range(b):
                hyper_t = hyper[i].T
                for a in range(0, n, rows):
                    y = self._upscale_features(keys[i, a : a + rows])
                    torch.mm(y.view(-1, self.c8), hyper_t, out=logits[i, 16 * a : 16 * a + y.shape[0] * 4])
        logits = logits.view(b, gh, gw, 2, 2, 2, 2, levels)  # (i, j, dy1, dx1, dy2, dx2, L)
        logits = logits.permute(0, 7, 1, 3, 5, 2, 4, 6)  # (L, i, dy1, dy2, j, dx1, dx2)
        return logits.reshape(b, levels, 4 * gh, 4 * gw)

    def _upscale_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(R, C) image tokens -> (R * 4, 4 * C8) features of both transposed convolutions."""
        ln = self.model.mask_decoder.upscale_layer_norm
        y = torch.addmm(self.b1, tokens, self.w1).view(-1, self.c4)
        y = F.gelu(F.layer_norm(y, (self.c4,), ln.weight, ln.bias, ln.eps))
        return F.gelu(torch.addmm(self.b2, y, self.w2))


def _attend(mod, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention of a transformers ``SamAttention`` (tokens with tokens)."""
    h = mod.num_attention_heads
    q, k, v = _heads(mod.q_proj(q_in), h), _heads(mod.k_proj(k_in), h), _heads(mod.v_proj(v_in), h)
    p = torch.softmax((q @ k.transpose(-1, -2)) * mod.scaling, dim=-1)
    out = (p @ v).transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], -1)
    return mod.out_proj(out)


def _t2i_shared(mod, q_in: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Prompt tokens attend to image tokens whose keys/values (H, N, d) all prompts share."""
    q = _heads(mod.q_proj(q_in), mod.num_attention_heads) * mod.scaling  # (B, H, T, d)
    b, h, t, d = q.shape
    if fast:
        # One product per head with the prompts' tokens stacked, (H, B*T, d): broadcasting the
        # shared (H, N, d) keys/values over B would copy them once per prompt.
        p = torch.softmax(q.transpose(0, 1).reshape(h, b * t, d) @ k.transpose(-1, -2), dim=-1)  # (H, B*T, N)
        return mod.out_proj((p @ v).view(h, b, t, d).permute(1, 2, 0, 3).reshape(b, t, h * d))
    p = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # (B, H, T, N)
    out = (p @ v).transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], -1)
    return mod.out_proj(out)


def _t2i_folded(mod, q_in: torch.Tensor, keys_pe: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Prompt tokens attend to per-prompt image tokens without projecting them (module docstring)."""
    h = mod.num_attention_heads
    b, t, c = q_in.shape
    q = _heads(mod.q_proj(q_in), h) * mod.scaling  # (B, H, T, d)
    d = q.shape[-1]
    qk = torch.einsum("bhtd,hdc->bhtc", q, mod.k_proj.weight.view(h, d, c)).reshape(b, h * t, c)
    p = torch.softmax(qk @ keys_pe.transpose(1, 2), dim=-1)  # (B, H*T, N)
    z = (p @ keys).view(b, h, t, c)
    out = torch.einsum("bhtc,hdc->bhtd", z, mod.v_proj.weight.view(h, d, c)) + mod.v_proj.bias.view(h, 1, d)
    return mod.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


def _token_values(mod, tok: torch.Tensor) -> torch.Tensor:
    """Per-head token values with the output projection folded in: (B, H*T, C), plus the output
    bias spread over the heads (each head's weights sum to one, so the bias is added once)."""
    h = mod.num_attention_heads
    b, t, c = tok.shape
    v = _heads(mod.v_proj(tok), h)  # (B, H, T, d)
    d = v.shape[-1]
    vo = torch.einsum("bhtd,chd->bhtc", v, mod.out_proj.weight.view(c, h, d))
    return vo.reshape(b, h * t, c)


def _i2t_shared(mod, tok_pe, tok, q0: torch.Tensor, src_plus_bias: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Block 0: image tokens (queries shared by all prompts, pre-scaled) attend to the prompt
    tokens; returns the image tokens plus the update (before the norm). Scores are laid out
    (B, H, T, N) so the softmax over the 7 tokens runs along a strided axis, which is ~20x
    faster on CPUs than a softmax over rows of length 7."""
    h = mod.num_attention_heads
    b, t, _ = tok.shape
    k = _heads(mod.k_proj(tok_pe), h)  # (B, H, T, d)
    if fast:  # one product per head, as in _t2i_shared; the softmax still runs over the T axis
        d = k.shape[-1]
        scores = (k.transpose(0, 1).reshape(h, b * t, d) @ q0.transpose(-1, -2)).view(h, b, t, -1)
        p = torch.softmax(scores, dim=2).transpose(0, 1)  # (B, H, T, N), strided
    else:
        p = torch.softmax(k @ q0.transpose(-1, -2), dim=2)  # (B, H, T, N)
    return torch.baddbmm(
        src_plus_bias.expand(b, -1, -1), p.reshape(b, h * t, -1).transpose(1, 2), _token_values(mod, tok)
    )


def _i2t_folded(mod, tok_pe, tok, keys_pe: torch.Tensor, keys: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Later blocks: (W_q x + b_q) . k = x . (W_q^T k) + b_q . k with per-prompt image tokens x."""
    h = mod.num_attention_heads
    b, t, c = tok.shape
    k = _heads(mod.k_proj(tok_pe), h) * mod.scaling  # (B, H, T, d)
    d = k.shape[-1]
    kq = torch.einsum("bhtd,hdc->bhtc", k, mod.q_proj.weight.view(h, d, c)).reshape(b, h * t, c)
    bias = torch.einsum("bhtd,hd->bht", k, mod.q_proj.bias.view(h, d)).reshape(b, h * t, 1)
    scores = torch.baddbmm(bias, kq, keys_pe.transpose(1, 2))  # (B, H*T, N)
    p = torch.softmax(scores.view(b, h, t, -1), dim=2).reshape(b, h * t, -1)
    vo = _token_values(mod, tok) + mod.out_proj.bias / h
    if fast and keys.dtype == p.dtype == vo.dtype:
        # In place: the caller has no further use for this block's input tokens (the same
        # product and sum, without copying (B, N, C) first).
        return keys.baddbmm_(p.transpose(1, 2), vo)
    return torch.baddbmm(keys, p.transpose(1, 2), vo)


class Sam2CropState(_CropState):
    """A SAM2-encoded crop; transformers' own decoder runs on the precomputed image features."""

    def __init__(self, model, embeddings: list[torch.Tensor], input_size: int, crop_hw, micro_batch: int = 16):
        self.model = model
        self.embeddings = embeddings
        self.input_size = input_size
        self.input_hw = (input_size, input_size)  # SAM2 squashes the crop to a square
        self.crop_hw = tuple(crop_hw)
        gh, gw = embeddings[-1].shape[-2:]
        self.low_hw = (4 * gh, 4 * gw)
        self.micro_batch = max(1, micro_batch)

    def _matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Meta's SAM2 ``postprocess_masks``: one bilinear resize from low-res to the crop size."""
        (lh, lw), (ch, cw) = self.low_hw, self.crop_hw
        return bilinear_matrix(ch, lh), bilinear_matrix(cw, lw)

    def _interpolate_grouped(self, logits: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits, size=self.crop_hw, mode="bilinear", align_corners=False)

    def to_input_frame(self, points: np.ndarray) -> np.ndarray:
        ch, cw = self.crop_hw
        return points / np.array([[cw, ch]]) * self.input_size

    def predict(self, points: np.ndarray, multimask: bool, keep: KeepFn):
        ious, pairs, logits = [], [], []
        dev = self.embeddings[-1].device
        for a in range(0, len(points), self.micro_batch):
            pts = torch.from_numpy(points[a : a + self.micro_batch]).float().to(dev)[None, :, None, :]
            labels = torch.ones(pts.shape[:3], dtype=torch.int, device=dev)
            out = self.model(
                image_embeddings=self.embeddings, input_points=pts, input_labels=labels, multimask_output=multimask
            )
            iou = out.iou_scores[0].float().cpu()
            ious.append(iou)
            sel = torch.nonzero(keep(iou))
            if len(sel):
                low = out.pred_masks[0]
                logits.append(low[sel[:, 0].to(dev), sel[:, 1].to(dev)].float())
                pairs.append(torch.stack([sel[:, 0] + a, sel[:, 1]], dim=1))
        iou_all = torch.cat(ious) if ious else torch.zeros(0, 3 if multimask else 1)
        if not pairs:
            return iou_all, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, *self.low_hw)
        return iou_all, torch.cat(pairs), torch.cat(logits)
