"""Key mapping between transformers' ``SamModel`` state dict and Meta's ``segment_anything`` one.

Written from the two libraries' module names (both are listed by ``state_dict().keys()``); it
lets the parity test and the benchmark run Meta's generator on exactly the weights ovss uses,
and lets ovss load an original Meta checkpoint (``sam_vit_b_01ec64.pth``) into ``SamModel``.
"""

from __future__ import annotations

import re

import torch

# (transformers pattern, Meta pattern); "#" stands for an index, kept as is.
_RULES: tuple[tuple[str, str], ...] = (
    ("shared_image_embedding.positional_embedding", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    ("vision_encoder.pos_embed", "image_encoder.pos_embed"),
    ("vision_encoder.patch_embed.projection.", "image_encoder.patch_embed.proj."),
    ("vision_encoder.layers.#.layer_norm1.", "image_encoder.blocks.#.norm1."),
    ("vision_encoder.layers.#.layer_norm2.", "image_encoder.blocks.#.norm2."),
    ("vision_encoder.layers.#.attn.", "image_encoder.blocks.#.attn."),
    ("vision_encoder.layers.#.mlp.", "image_encoder.blocks.#.mlp."),
    ("vision_encoder.neck.conv1.", "image_encoder.neck.0."),
    ("vision_encoder.neck.layer_norm1.", "image_encoder.neck.1."),
    ("vision_encoder.neck.conv2.", "image_encoder.neck.2."),
    ("vision_encoder.neck.layer_norm2.", "image_encoder.neck.3."),
    ("prompt_encoder.point_embed.#.", "prompt_encoder.point_embeddings.#."),
    ("prompt_encoder.not_a_point_embed.", "prompt_encoder.not_a_point_embed."),
    ("prompt_encoder.no_mask_embed.", "prompt_encoder.no_mask_embed."),
    ("prompt_encoder.mask_embed.conv1.", "prompt_encoder.mask_downscaling.0."),
    ("prompt_encoder.mask_embed.layer_norm1.", "prompt_encoder.mask_downscaling.1."),
    ("prompt_encoder.mask_embed.conv2.", "prompt_encoder.mask_downscaling.3."),
    ("prompt_encoder.mask_embed.layer_norm2.", "prompt_encoder.mask_downscaling.4."),
    ("prompt_encoder.mask_embed.conv3.", "prompt_encoder.mask_downscaling.6."),
    ("mask_decoder.iou_token.", "mask_decoder.iou_token."),
    ("mask_decoder.mask_tokens.", "mask_decoder.mask_tokens."),
    ("mask_decoder.upscale_conv1.", "mask_decoder.output_upscaling.0."),
    ("mask_decoder.upscale_layer_norm.", "mask_decoder.output_upscaling.1."),
    ("mask_decoder.upscale_conv2.", "mask_decoder.output_upscaling.3."),
    ("mask_decoder.transformer.layers.#.layer_norm1.", "mask_decoder.transformer.layers.#.norm1."),
    ("mask_decoder.transformer.layers.#.layer_norm2.", "mask_decoder.transformer.layers.#.norm2."),
    ("mask_decoder.transformer.layers.#.layer_norm3.", "mask_decoder.transformer.layers.#.norm3."),
    ("mask_decoder.transformer.layers.#.layer_norm4.", "mask_decoder.transformer.layers.#.norm4."),
    ("mask_decoder.transformer.layers.#.", "mask_decoder.transformer.layers.#."),
    ("mask_decoder.transformer.final_attn_token_to_image.", "mask_decoder.transformer.final_attn_token_to_image."),
    ("mask_decoder.transformer.layer_norm_final_attn.", "mask_decoder.transformer.norm_final_attn."),
    ("mask_decoder.output_hypernetworks_mlps.#.", "mask_decoder.output_hypernetworks_mlps.#."),
    ("mask_decoder.iou_prediction_head.", "mask_decoder.iou_prediction_head."),
)

# transformers' 3-layer feed-forward heads name their layers proj_in / layers.0 / proj_out,
# Meta's MLP names them layers.0 / layers.1 / layers.2.
_MLP_HF = ("proj_in.", "layers.0.", "proj_out.")
_MLP_META = ("layers.0.", "layers.1.", "layers.2.")
_MLP_OWNERS = ("mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head.")


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(pattern).replace("\\#", r"(\d+)").replace("#", r"(\d+)"))


_HF_TO_META = [(_compile(a), b) for a, b in _RULES]
_META_TO_HF = [(_compile(b), a) for a, b in _RULES]
# Skipped in the transformers -> Meta direction: a tied copy of the Fourier matrix.
_HF_ONLY = ("prompt_encoder.shared_embedding.positional_embedding",)


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            out = target
            for group in match.groups():
                out = out.replace("#", group, 1)
            return out + key[match.end() :]
    return None


def _swap_mlp(key: str, src: tuple[str, ...], dst: tuple[str, ...]) -> str:
    for owner in _MLP_OWNERS:
        if key.startswith(owner):
            head, rest = key[: len(owner)], key[len(owner) :]
            if owner.endswith("mlps."):  # an index follows
                index, rest = rest.split(".", 1)
                head, rest = head + index + ".", rest
            for a, b in zip(src, dst):
                if rest.startswith(a):
                    return head + b + rest[len(a) :]
    return key


def hf_to_meta_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``SamModel.state_dict()`` -> Meta ``Sam.state_dict()`` key names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _HF_ONLY:
            continue
        new = _rename(key, _HF_TO_META)
        if new is None:
            raise KeyError(f"no Meta name for transformers key {key!r}")
        out[_swap_mlp(new, _MLP_HF, _MLP_META)] = value
    return out


def meta_to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta ``Sam.state_dict()`` -> transformers ``SamModel.state_dict()`` key names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):  # buffers that are constants in transformers
            continue
        key = _swap_mlp(key, _MLP_META, _MLP_HF)
        new = _rename(key, _META_TO_HF)
        if new is None:
            raise KeyError(f"no transformers name for Meta key {key!r}")
        out[new] = value
        if new == "shared_image_embedding.positional_embedding":
            out[_HF_ONLY[0]] = value
    return out
