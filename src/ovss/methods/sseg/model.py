"""S-Seg's network (Lai, CVPR 2025, arXiv 2401.12217): a MaskFormer without a classification head
plus a caption encoder, meeting in one joint embedding space.

* Image side: a transformers ``MaskFormerModel`` (Swin backbone, FPN pixel decoder, DETR-style
  transformer decoder) with ``num_queries`` queries. Each query gives a mask (its mask embedding
  dotted with the per-pixel embeddings, as in MaskFormer) and a *mask feature* (the decoder output).
* Joint space: the image embedding is the mean of the mask features through a 2-layer MLP;
  at test time each mask feature goes through the same MLP and is compared with class-name texts.
* Text side: a CLIP-style causal transformer trained from scratch (transformers ``CLIPTextModel``
  built from a config, pooled at the end-of-text token), or a frozen pretrained CLIP text tower
  (``text="clip:NAME"``; not faithful to the paper, which uses no CLIP anywhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError, ModelLoadError

# Swin-S (Liu et al., ICCV 2021, Table 1): C = 96, depths 2-2-18-2, heads 3-6-12-24, window 7.
BACKBONE_PRESETS: dict[str, dict[str, Any]] = {
    "swin-small": {"embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24], "window_size": 7},
    "swin-tiny": {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7},
    # a few thousand parameters, for tests and smoke runs only
    "swin-test": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4},
}
MASK_FEATURES = ("queries", "embeddings", "pooled", "local")
TOKENIZERS = ("bytes",)  # built offline; any other value is a CLIPTokenizer id or folder


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "swin-small"  # a preset above, or a transformers backbone config id / folder (random init)
    # "maskformer" (the paper's MaskFormer: DETR decoder, FPN pixel decoder) or "mask2former" (masked
    # attention: each query attends only inside its own predicted mask, so its feature is the region's)
    decoder: str = "maskformer"
    num_queries: int = 64  # N
    decoder_layers: int = 6
    hidden: int = 256  # decoder width = pixel-embedding width (MaskFormer's default)
    decoder_heads: int = 8
    embed_dim: int = 256  # joint image-text space
    # what a "mask feature" is (unknown): "queries" = the transformer decoder's query outputs (MaskFormer's
    # mask embeddings); "pooled" = the pixel-decoder embeddings averaged under the mask's sigmoid (at random
    # init these are nearly equal across images, cosine 0.9997 in the synthetic world, and InfoNCE stalls);
    # "embeddings" = MaskFormer's mask embeddings (the MLP of the query that is dotted with the pixel
    # embeddings to draw the mask), so the feature that names a mask is the one that draws it;
    # "local" = the backbone's first-stage features averaged over the pixels the query's mask wins
    # (argmax over queries, detached), then a linear map to the decoder width: a feature of the
    # region's own pixels. Queries see the whole image, and the contrastive loss fixes only the mean
    # of the mask features, so with "queries" every mask of an image gets the image's feature and
    # one name (measured, docs/sseg.md); "local" cannot carry what lies outside its region.
    mask_features: str = "queries"
    # "batch": BatchNorm in the image projection's hidden layer (as self-supervised projection heads,
    # SimCLR); it removes what all mask features share, which dominates mask-pooled features at init
    projection_norm: str = "none"
    text: str = "scratch"  # "scratch" (faithful) | "clip:NAME" (frozen pretrained CLIP text tower, non-faithful)
    text_layers: int = 12
    text_width: int = 256
    text_heads: int = 4
    context_length: int = 77
    tokenizer: str = "bytes"  # "bytes": CLIP tokenizer over byte-level characters (no merges), or a tokenizer id
    temperature_init: float = 0.07  # CLIP's initial temperature
    max_logit_scale: float = 100.0  # CLIP clamps exp(logit_scale) at 100

    def validate(self) -> None:
        for name in (
            "num_queries",
            "decoder_layers",
            "hidden",
            "decoder_heads",
            "embed_dim",
            "text_layers",
            "text_width",
            "text_heads",
            "context_length",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"setting {name}={value!r} must be a positive integer")
        if self.hidden % self.decoder_heads or self.text_width % self.text_heads:
            raise InputError("hidden must be a multiple of decoder_heads and text_width of text_heads")
        if self.mask_features not in MASK_FEATURES:
            raise InputError(f"setting mask_features={self.mask_features!r} must be one of {', '.join(MASK_FEATURES)}")
        if self.decoder not in ("maskformer", "mask2former"):
            raise InputError(f"setting decoder={self.decoder!r} must be 'maskformer' or 'mask2former'")
        if self.projection_norm not in ("none", "batch"):
            raise InputError(f"setting projection_norm={self.projection_norm!r} must be 'none' or 'batch'")
        if not (self.text == "scratch" or self.text.startswith("clip:")):
            raise InputError(f"setting text={self.text!r} must be 'scratch' or 'clip:NAME' (a CLIP id or folder)")
        if not 0 < self.temperature_init < 1:
            raise InputError(f"setting temperature_init={self.temperature_init} must lie in (0, 1)")


def backbone_config(name: str):
    from transformers import SwinConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if name in BACKBONE_PRESETS:
        return SwinConfig(**BACKBONE_PRESETS[name], out_features=stages)  # type: ignore[call-arg]
    from transformers import AutoConfig

    from ...models.loading import quiet_hub

    try:
        with quiet_hub():
            config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        raise ModelLoadError(
            f"backbone {name!r} is neither a preset ({', '.join(BACKBONE_PRESETS)}) nor a readable transformers "
            "config id or folder"
        ) from None
    if hasattr(config, "out_features") and getattr(config, "stage_names", None):
        config.out_features = list(config.stage_names[-4:])
    return config


def build_tokenizer(spec: str = "bytes"):
    if spec == "bytes":
        from ...models.clip import _byte_level_tokenizer

        return _byte_level_tokenizer()
    from transformers import CLIPTokenizer

    from ...models.loading import quiet_hub

    try:
        with quiet_hub():
            return CLIPTokenizer.from_pretrained(spec)
    except (OSError, ValueError):
        raise ModelLoadError(
            f"tokenizer {spec!r} is neither 'bytes' nor a readable CLIPTokenizer id or folder"
        ) from None


WEIGHTINGS = ("uniform", "area", "won")


def mask_weights(masks: torch.Tensor, weighting: str) -> torch.Tensor | None:
    """``(B, N, h, w)`` mask logits -> ``(B, N)`` pooling weights summing to one, or None (uniform).

    "area": each mask weighs by its soft area (mean sigmoid), detached so that only the mask loss
    draws the masks. A query whose mask is empty in this image then adds nothing to the image
    embedding: with a uniform mean, queries bound to one colour each give the same mean for every
    image, whatever it contains (measured: InfoNCE stays at log(batch) in the synthetic world).

    "won": each mask weighs by the share of pixels where its logit is the highest (the partition that
    ``mask_features="local"`` pools over), so a query that wins no pixel weighs nothing; its soft
    area is never exactly zero."""
    if weighting == "uniform":
        return None
    if weighting == "won":
        return partition(masks.detach()).float().mean((2, 3))
    area = masks.detach().float().sigmoid().mean((2, 3))
    return area / area.sum(1, keepdim=True).clamp(min=1e-6)


def partition(masks: torch.Tensor) -> torch.Tensor:
    """``(B, N, h, w)`` mask logits -> one-hot ``(B, N, h, w)``: each pixel to the query whose logit is highest."""
    return F.one_hot(masks.argmax(1), masks.shape[1]).permute(0, 3, 1, 2)


class FeatureBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last dimension of ``(..., C)`` inputs (every mask of the batch is a sample)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def _mlp(dims: list[int], activation: type[nn.Module] = nn.GELU, norm: str = "none") -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            if norm == "batch":
                layers.append(FeatureBatchNorm(dims[i + 1]))
            layers.append(activation())
    return nn.Sequential(*layers)


class SSegModel(nn.Module):
    """MaskFormer masks and mask features, caption embeddings, and a learnable temperature."""

    def __init__(self, config: ModelConfig, clip: Any = None) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel, DetrConfig, MaskFormerConfig, MaskFormerModel

        config.validate()
        self.config = config
        if config.decoder == "mask2former":
            from transformers import Mask2FormerConfig, Mask2FormerModel

            m2f = Mask2FormerConfig(
                backbone_config=backbone_config(config.backbone),
                num_queries=config.num_queries,
                decoder_layers=config.decoder_layers,
                hidden_dim=config.hidden,
                mask_feature_size=config.hidden,
                feature_size=config.hidden,
                num_attention_heads=config.decoder_heads,
                dim_feedforward=8 * config.hidden,
                encoder_feedforward_dim=4 * config.hidden,
            )
            self.maskformer: Any = Mask2FormerModel(m2f)
            self.mask_embedder = None  # Mask2Former draws its masks with its own mask predictor
        else:
            decoder = DetrConfig(
                num_queries=config.num_queries,
                decoder_layers=config.decoder_layers,
                d_model=config.hidden,
                decoder_attention_heads=config.decoder_heads,
                decoder_ffn_dim=8 * config.hidden,
            )
            mf = MaskFormerConfig(
                backbone_config=backbone_config(config.backbone),
                decoder_config=decoder,
                fpn_feature_size=config.hidden,
                mask_feature_size=config.hidden,
            )
            self.maskformer = MaskFormerModel(mf)
            # MaskFormer's 3-layer mask-embedding head (Cheng et al., NeurIPS 2021)
            self.mask_embedder = _mlp([config.hidden] * 4, nn.ReLU)
        # the mask decoders read the Swin stage outputs; the backbone's final LayerNorm never runs, so it
        # is frozen (DistributedDataParallel refuses parameters that receive no gradient)
        encoder = self.maskformer.pixel_level_module.encoder
        for trunk in ("model", "swin"):  # MaskFormer's Swin wrapper / transformers' SwinBackbone
            final_norm = getattr(getattr(encoder, trunk, None), "layernorm", None)
            if final_norm is not None:
                final_norm.requires_grad_(False)
        self.local_projection = None
        if config.mask_features == "local":
            first_stage = int(encoder.channels[0])
            self.local_projection = nn.Linear(first_stage, config.hidden)
        # the paper's 2-layer projections, with GELU (unknown; a ReLU projection collapsed to a constant
        # embedding in the synthetic world, its dead units never recovering)
        self.image_projection = _mlp([config.hidden, config.hidden, config.embed_dim], norm=config.projection_norm)
        self.tokenizer = build_tokenizer(config.tokenizer) if clip is None else clip.tokenizer
        if config.text == "scratch":
            tok = self.tokenizer
            text_cfg = CLIPTextConfig(
                vocab_size=len(tok),
                hidden_size=config.text_width,
                intermediate_size=4 * config.text_width,
                num_hidden_layers=config.text_layers,
                num_attention_heads=config.text_heads,
                max_position_embeddings=config.context_length,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
            self.text_model = CLIPTextModel(text_cfg)
            text_width = config.text_width
            self.frozen_clip = None
        else:
            if clip is None:
                raise InputError(f"text={config.text!r} needs the CLIP model passed in (clip=...)")
            self.text_model = None  # type: ignore[assignment]
            self.frozen_clip = clip  # not a submodule: frozen, not saved, recorded by name
            text_width = clip.model.config.text_config.hidden_size
        self.text_projection = _mlp([text_width, config.embed_dim, config.embed_dim])  # 2-layer MLP on [EOS]
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.temperature_init)))

    def forward(
        self,
        pixels: torch.Tensor,
        tokens: dict[str, torch.Tensor],
        pooling: str = "mean_then_mlp",
        weighting: str = "uniform",
    ):
        """Training pass (one call, so DistributedDataParallel sees every parameter):
        mask logits, image embeddings, caption embeddings and the logit scale."""
        masks, features = self.forward_image(pixels)
        weights = mask_weights(masks, weighting)
        return masks, self.image_embedding(features, pooling, weights), self.encode_tokens(tokens), self.scale()

    # --- image side -----------------------------------------------------------------------------
    def forward_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` -> mask logits ``(B, N, H/4, W/4)`` and mask features ``(B, N, hidden)``."""
        local = self.config.mask_features == "local"
        out = self.maskformer(pixel_values=pixels, output_hidden_states=local)
        queries = out.transformer_decoder_last_hidden_state
        pixel_embeddings = out.pixel_decoder_last_hidden_state
        if self.mask_embedder is None:  # Mask2Former: its last mask prediction, from the normalised queries
            decoder = self.maskformer.transformer_module.decoder
            masks = out.masks_queries_logits[-1]
            if pixel_embeddings.shape[-2:] != masks.shape[-2:]:
                pixel_embeddings = F.interpolate(pixel_embeddings, size=masks.shape[-2:], mode="bilinear")
            embeddings = decoder.mask_predictor.mask_embedder(decoder.layernorm(queries))
        else:
            embeddings = self.mask_embedder(queries)
            masks = torch.einsum("bqc,bchw->bqhw", embeddings, pixel_embeddings)
        if self.config.mask_features == "queries":
            return masks, queries
        if self.config.mask_features == "embeddings":
            return masks, embeddings
        if local:
            return masks, self.local_features(masks, out.encoder_hidden_states[0])
        weights = masks.sigmoid()
        pooled = torch.einsum("bqhw,bchw->bqc", weights, pixel_embeddings)
        return masks, pooled / weights.sum((2, 3))[..., None].clamp(min=1e-6)

    def local_features(self, masks: torch.Tensor, stage: torch.Tensor) -> torch.Tensor:
        """``(B, N, h, w)`` mask logits and ``(B, C, h', w')`` first-stage features -> ``(B, N, hidden)``:
        each query's mean feature over the pixels where its mask logit is the highest of all queries
        (zeros for a query that wins no pixel)."""
        assert self.local_projection is not None
        if stage.shape[-2:] != masks.shape[-2:]:
            stage = F.interpolate(stage, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        won = partition(masks.detach()).to(stage.dtype)
        pooled = torch.einsum("bqhw,bchw->bqc", won, stage) / won.sum((2, 3))[..., None].clamp(min=1)
        return self.local_projection(pooled)

    def image_embedding(
        self, mask_features: torch.Tensor, pooling: str = "mean_then_mlp", weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One L2-normalised embedding per image from its ``(B, N, hidden)`` mask features, averaged
        uniformly or with ``(B, N)`` weights that sum to one per image."""
        if weights is None:
            weights = mask_features.new_full(mask_features.shape[:2], 1 / mask_features.shape[1])
        weights = weights.to(mask_features.dtype)[..., None]
        if pooling == "mean_then_mlp":
            return F.normalize(self.image_projection((weights * mask_features).sum(1)), dim=-1)
        return F.normalize((weights * self.image_projection(mask_features)).sum(1), dim=-1)

    def mask_embeddings(self, mask_features: torch.Tensor) -> torch.Tensor:
        """Each mask feature in the joint space ``(B, N, D)``, L2-normalised (test time)."""
        return F.normalize(self.image_projection(mask_features), dim=-1)

    # --- text side ------------------------------------------------------------------------------
    def tokenize(self, texts: list[str], device: torch.device | str) -> dict[str, torch.Tensor]:
        length = self.config.context_length if self.text_model is not None else self.frozen_clip.context_length
        tokens = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return {"input_ids": tokens["input_ids"].to(device), "attention_mask": tokens["attention_mask"].to(device)}

    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.text_model is not None:
            pooled = self.text_model(**tokens).pooler_output
        else:
            with torch.no_grad():
                pooled = self.frozen_clip.model.text_model(**tokens).pooler_output.float()
        return F.normalize(self.text_projection(pooled), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.encode_tokens(self.tokenize(texts, self.logit_scale.device))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)
