"""SAM 3 (Segment Anything with Concepts) from transformers: one image encoding, many text prompts.

``load_sam3(name)`` accepts the hub id ``facebook/sam3`` (gated: accept the licence on the hub
and log in first), a local directory saved with ``save_pretrained`` (safetensors), or
``tiny-random``: a small random ``Sam3Model`` built from a config, for tests and smoke runs.

:class:`Sam3Backbone` splits transformers' one-prompt ``Sam3Model.forward`` into its two halves
so that the ViT runs once per image and every text prompt reuses its features:
``encode_image`` (the vision tower and FPN neck) and ``ground`` (DETR encoder/decoder, scoring,
presence token and mask heads) for a batch of prompts over the same features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelLoadError
from .loading import TINY_RANDOM, load_config, quiet_hub, warn_tiny_random

SAM3_MODEL_TYPES = ("sam3", "sam3_video")
SAM3_MEAN = (0.5, 0.5, 0.5)  # 0-1 scale (Sam3Processor's image_mean/std)
SAM3_STD = (0.5, 0.5, 0.5)
SAM3_HUB_ID = "facebook/sam3"
TEXT_LENGTH = 32  # Sam3Processor pads every phrase to 32 tokens


@dataclass
class GroundingOutput:
    """Raw SAM 3 outputs for ``P`` prompts over one image (logits, not probabilities)."""

    pred_masks: torch.Tensor  # (P, N, h, w) instance mask logits at the mask-head resolution
    pred_logits: torch.Tensor  # (P, N) query classification logits
    presence_logits: torch.Tensor  # (P, 1) "is this concept in the image" logit
    semantic_seg: torch.Tensor  # (P, 1, h, w) semantic-head logits
    pred_boxes: torch.Tensor  # (P, N, 4) normalised XYXY


class Sam3Backbone:
    """A transformers ``Sam3Model`` and its CLIP tokenizer, split into image and prompt halves."""

    def __init__(self, model, tokenizer, name: str, device: torch.device | str = "cpu") -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        self.image_size: int = int(model.config.vision_config.backbone_config.image_size)
        self.mean, self.std = SAM3_MEAN, SAM3_STD
        self.is_tiny_random = name == TINY_RANDOM
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"Sam3Backbone({self.name!r}, image_size={self.image_size})"

    @property
    def fingerprint(self) -> str:
        """A short hash identifying the weights (for caches keyed on the model)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.name.encode())
            digest.update(self.model.text_projection.weight.detach().float().cpu().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def pixels(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, 3) uint8`` -> ``(1, 3, S, S)`` model input: squashed to the model's square size
        (bilinear with antialiasing, rounded to uint8 levels as a resize of a uint8 image is), then
        mean/std 0.5, as SAM 3's own processor does."""
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None]
        size = (self.image_size, self.image_size)
        if tuple(image.shape[:2]) != size:
            x = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True).round_().clamp_(0, 255)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x / 255.0 - mean) / std).to(self.device)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token prompt features ``(N, L, D)`` (projected to the DETR width) and their mask ``(N, L)``.

        Padded to the longest prompt rather than to 32 tokens as SAM 3's processor does: the same
        result (the text tower is causal and every later use of the tokens is masked) at a fraction
        of the cost for short class names."""
        tokens = self.tokenizer(
            list(texts), padding=True, max_length=TEXT_LENGTH, truncation=True, return_tensors="pt"
        ).to(self.device)
        feats = []
        for start in range(0, len(texts), batch_size):
            rows = slice(start, start + batch_size)
            ids, mask = tokens["input_ids"][rows], tokens["attention_mask"][rows]
            feats.append(self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output)
        return torch.cat(feats), tokens["attention_mask"]

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> Any:
        """The vision tower and FPN neck on ``(1, 3, S, S)`` pixels (a ``Sam3VisionEncoderOutput``)."""
        return self.model.get_vision_features(pixel_values=pixels.to(self.device))

    @torch.no_grad()
    def ground(self, vision: Any, text_features: torch.Tensor, text_mask: torch.Tensor) -> GroundingOutput:
        """Run the prompt half of SAM 3 for ``P`` prompts over one image's shared vision features."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        count = text_features.shape[0]
        # A view per prompt, no copy: the DETR encoder fuses each prompt into its own copy anyway.
        shared = Sam3VisionEncoderOutput(
            fpn_hidden_states=tuple(f.expand(count, *f.shape[1:]) for f in vision.fpn_hidden_states),
            fpn_position_encoding=tuple(p.expand(count, *p.shape[1:]) for p in vision.fpn_position_encoding),
        )
        out = self.model(
            vision_embeds=shared,
            text_embeds=BaseModelOutputWithPooling(pooler_output=text_features.to(self.device)),
            attention_mask=text_mask.to(self.device),
        )
        return GroundingOutput(out.pred_masks, out.pred_logits, out.presence_logits, out.semantic_seg, out.pred_boxes)


def tiny_sam3_config():
    """Every dimension of SAM 3 shrunk: a 112-pixel ViT of width 32, 16 DETR queries, 1-layer heads."""
    from transformers import Sam3Config

    size, patch = 112, 14
    grid = size // patch
    vit = dict(
        model_type="sam3_vit_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=size,
        patch_size=patch,
        window_size=grid // 2,
        global_attn_indexes=[1],
        pretrain_image_size=size,
    )
    text = dict(
        model_type="clip_text_model",
        vocab_size=514,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=TEXT_LENGTH,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_layers=1)
    return Sam3Config(
        vision_config=dict(
            backbone_config=vit, fpn_hidden_size=32, backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2]
        ),
        text_config=text,
        geometry_encoder_config=small,
        detr_encoder_config=small,
        detr_decoder_config={**small, "num_queries": 16},
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )


def build_tiny_sam3(seed: int = 0):
    """A small random ``Sam3Model`` and a byte-level CLIP tokenizer (offline, deterministic).

    transformers' own initialisation (std 0.02) leaves every logit near 0, so all queries, prompts
    and pixels score alike; the weights are redrawn at unit activation scale (as for tiny SAM) so
    that scores, masks and presence differ between prompts and thresholds have something to cut."""
    from transformers import Sam3Model

    from .clip import _byte_level_tokenizer
    from .sam import randomize_sam

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam3Model(tiny_sam3_config())
    return randomize_sam(model, seed), _byte_level_tokenizer()


def save_tiny_sam3(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random SAM 3 as a normal ``from_pretrained`` directory (safetensors)."""
    model, tokenizer = build_tiny_sam3(seed)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def _gated_hint(name: str) -> str:
    return (
        f"cannot load SAM 3 model {name!r}: not a local directory and not in the Hugging Face cache (offline?). "
        f"SAM 3 weights are gated: accept the licence at https://huggingface.co/{SAM3_HUB_ID}, log in "
        "(hf auth login) while online, or pass a local save_pretrained folder or 'tiny-random'"
    )


def load_sam3(name: str = TINY_RANDOM, device: torch.device | str = "cpu") -> Sam3Backbone:
    """Load SAM 3 by hub id, local directory or ``tiny-random``."""
    if name == TINY_RANDOM:
        warn_tiny_random("sam3")
        model, tokenizer = build_tiny_sam3()
        return Sam3Backbone(model, tokenizer, name, device)
    from transformers import AutoConfig, AutoTokenizer, Sam3Model

    is_local = Path(name).exists()
    try:
        with quiet_hub():
            config = load_config(name, AutoConfig, "SAM 3")
    except ModelLoadError:
        if is_local:
            raise
        raise ModelLoadError(_gated_hint(name)) from None
    if config.model_type not in SAM3_MODEL_TYPES:
        raise ModelLoadError(
            f"{name!r} is a {config.model_type!r} model, not SAM 3; pass {SAM3_HUB_ID} or a folder saved from "
            "transformers' Sam3Model"
        )
    try:
        with quiet_hub():
            model = Sam3Model.from_pretrained(name, use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        if not is_local:
            raise ModelLoadError(_gated_hint(name)) from None
        raise ModelLoadError(f"could not load SAM 3 weights from {name!r}: {str(e).splitlines()[0][:160]}") from None
    return Sam3Backbone(model, tokenizer, name, device)


# Reading SAM 3's outputs (what both the sam3 method and the SAM 3 mask generator need)


def detection_scores(out: GroundingOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query scores ``(P, N)`` (class probability times presence) and presence ``(P,)``."""
    presence = out.presence_logits.float().sigmoid()
    return out.pred_logits.float().sigmoid() * presence, presence[:, 0]


def mask_probabilities(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(K, h, w)`` mask logits -> ``(K, H, W)`` probabilities at ``size`` (upsample, then sigmoid)."""
    up = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return up.sigmoid()
