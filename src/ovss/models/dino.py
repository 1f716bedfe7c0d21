"""Vision foundation models (VFMs) from transformers behind one interface: patch features.

``load_dino(name)`` takes a hub id, a local directory or a ``tiny-random`` name and returns a
:class:`DinoBackbone` whatever the family:

=========================  ====================  =======================================  =========
family                     ``model_type``        tokens before the patches                patch
=========================  ====================  =======================================  =========
DINO v1 (facebook/dino-*)  ``vit``               CLS                                      8 or 16
DINOv2                     ``dinov2``            CLS                                      14
DINOv2 with registers      ``dinov2_with_regi``  CLS + 4 registers                        14
DINOv3 ViT                 ``dinov3_vit``        CLS + 4 registers (RoPE: no table)       16
SAM image encoder          ``sam``               none (the neck's 256-d 64x64 map)        16
=========================  ====================  =======================================  =========

``patch_features`` returns the last layer's patch tokens after the final norm, as a
``(B, C, H/P, W/P)`` grid; CLS and register tokens are dropped. DINO v1 and DINOv2 resize their
position table to the input (transformers' ``interpolate_pos_encoding``; DINOv2 always does);
DINOv3 uses rotary position embeddings, so nothing is resized. SAM's encoder only works at its
square input size, so windows are squashed to it (as ProxyCLIP does with SAM as the proxy) and
the grid is always ``input_size / 16`` on both sides.

Tiny random variants, built from configs (tests and smoke runs): ``tiny-random`` (DINOv2, the
default), ``tiny-random-dinov2-reg``, ``tiny-random-dino`` (v1, patch 8), ``tiny-random-dinov3``
(patch 16) and ``tiny-random-sam``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ModelLoadError
from .loading import TINY_RANDOM, load_config, quiet_hub, warn_tiny_random

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_MODEL_TYPES = ("dinov2", "dinov2_with_registers", "vit", "dinov3_vit", "sam")
TINY_KINDS = ("dinov2", "dinov2-reg", "dino", "dinov3", "sam")
TINY_NAMES = {TINY_RANDOM: "dinov2", **{f"{TINY_RANDOM}-{k}": k for k in TINY_KINDS}}
# Hub repositories that need an accepted licence and a login (Meta's DINOv3 release).
GATED_PREFIXES = ("facebook/dinov3-",)


class DinoBackbone:
    """A transformers ViT-style VFM; ``patch_features`` is the one interface its users call."""

    def __init__(self, model, name: str, device: torch.device | str = "cpu") -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.name = name
        self.device = torch.device(device)
        config = model.config
        self.model_type: str = config.model_type
        self.patch_size: int = config.patch_size
        self.dim: int = config.hidden_size
        self.prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.is_tiny_random = name.startswith(TINY_RANDOM)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid of a ``height x width`` input."""
        return height // self.patch_size, width // self.patch_size

    @torch.no_grad()
    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` ImageNet-normalised pixels -> ``(B, C, H // P, W // P)`` patch features."""
        p = self.patch_size
        h, w = self.grid(*pixels.shape[-2:])
        pixels = pixels[..., : h * p, : w * p].to(self.device)
        kwargs = {"interpolate_pos_encoding": True} if self.model_type == "vit" else {}
        tokens = self.model(pixel_values=pixels, **kwargs).last_hidden_state[:, self.prefix_tokens :]
        if tokens.shape[1] != h * w:  # pragma: no cover - a family with other extra tokens
            raise RuntimeError(f"{self.name}: {tokens.shape[1]} patch tokens for a {h}x{w} grid")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w).float()


class SamEncoderBackbone:
    """SAM's image encoder as a VFM: windows squashed to its square input, neck features."""

    def __init__(self, model, name: str, device: torch.device | str = "cpu") -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.name = name
        self.device = torch.device(device)
        vision = model.config.vision_config
        self.model_type = "sam"
        self.input_size: int = vision.image_size
        self.patch_size: int = vision.patch_size
        self.dim: int = vision.output_channels
        self.prefix_tokens = 0
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD  # SAM's own statistics are ImageNet's
        self.is_tiny_random = name.startswith(TINY_RANDOM)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        side = self.input_size // self.patch_size
        return side, side

    @torch.no_grad()
    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        size = (self.input_size, self.input_size)
        pixels = F.interpolate(pixels.to(self.device).float(), size=size, mode="bilinear", align_corners=False)
        return self.model.vision_encoder(pixels).last_hidden_state.float()


def _tiny_config(kind: str):
    from transformers import Dinov2Config, Dinov2WithRegistersConfig, DINOv3ViTConfig, ViTConfig

    common: dict[str, Any] = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
    if kind == "dinov2":
        return Dinov2Config(**common, image_size=56, patch_size=14)
    if kind == "dinov2-reg":
        return Dinov2WithRegistersConfig(**common, image_size=56, patch_size=14, num_register_tokens=4)
    if kind == "dino":
        return ViTConfig(**common, image_size=64, patch_size=8)
    if kind == "dinov3":
        return DINOv3ViTConfig(**common, image_size=64, patch_size=16, num_register_tokens=4)
    raise ModelLoadError(f"unknown tiny VFM kind {kind!r}; use one of {', '.join(TINY_KINDS)}")


def build_tiny_dino(seed: int = 0, kind: str = "dinov2"):
    """A small random VFM of the given family (``TINY_KINDS``), the same for the same seed."""
    from transformers import AutoModel

    if kind == "sam":
        from .sam import build_tiny_sam

        return build_tiny_sam(seed, "sam")
    config = _tiny_config(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "dino":
            from transformers import ViTModel

            return ViTModel(config, add_pooling_layer=False)
        return AutoModel.from_config(config)


def _wrap(model, name: str, device) -> DinoBackbone | SamEncoderBackbone:
    if model.config.model_type == "sam":
        return SamEncoderBackbone(model, name, device)
    return DinoBackbone(model, name, device)


def _gated_error(name: str) -> ModelLoadError:
    return ModelLoadError(
        f"{name!r} is gated on the Hugging Face hub and not in the local cache: accept its licence on the "
        "model page, run `hf auth login` (or set HF_TOKEN) while online, or pass a local directory"
    )


def load_dino(name: str = TINY_RANDOM, device: torch.device | str = "cpu") -> DinoBackbone | SamEncoderBackbone:
    """A VFM by hub id, local directory or tiny-random name (see the module docstring)."""
    if name in TINY_NAMES:
        warn_tiny_random("dino", name)
        return _wrap(build_tiny_dino(kind=TINY_NAMES[name]), name, device)
    from transformers import AutoConfig, AutoModel

    gated = name.startswith(GATED_PREFIXES)
    try:
        with quiet_hub():
            config = load_config(name, AutoConfig, "DINO")
    except ModelLoadError:
        if gated:
            raise _gated_error(name) from None
        raise
    if config.model_type not in DINO_MODEL_TYPES:
        raise ModelLoadError(
            f"{name!r} is a {config.model_type!r} model, not a vision foundation model; pass DINO "
            "(facebook/dino-vitb8), DINOv2 (facebook/dinov2-base), DINOv3 or SAM weights"
        )
    try:
        with quiet_hub():
            if config.model_type == "vit":
                model = AutoModel.from_pretrained(name, add_pooling_layer=False)
            elif config.model_type == "sam":
                from transformers import SamModel

                model = SamModel.from_pretrained(name)
            else:
                model = AutoModel.from_pretrained(name)
    except (OSError, ValueError) as e:
        text = str(e)
        if gated or "gated" in text.lower() or "401" in text:
            raise _gated_error(name) from None
        raise ModelLoadError(f"could not load DINO weights from {name!r}: {text.splitlines()[0][:160]}") from None
    return _wrap(model, name, device)
