"""Self-supervised ViTs (DINOv2, DINOv2 with registers, DINO) from transformers: patch features.

``load_dino(name)`` takes a hub id (``facebook/dinov2-large``), a local directory or
``tiny-random``. ``patch_features`` returns the last layer's patch tokens after the final
norm, as a ``(B, C, H/P, W/P)`` grid; CLS and register tokens are dropped.
"""

from __future__ import annotations

import torch

from ..errors import ModelLoadError
from .loading import TINY_RANDOM, load_config, quiet_hub, warn_tiny_random

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_MODEL_TYPES = ("dinov2", "dinov2_with_registers", "vit")


class DinoBackbone:
    def __init__(self, model, name: str, device: torch.device | str = "cpu") -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.name = name
        self.device = torch.device(device)
        config = model.config
        self.patch_size: int = config.patch_size
        self.dim: int = config.hidden_size
        self.prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.is_tiny_random = name == TINY_RANDOM

    @torch.no_grad()
    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` ImageNet-normalised pixels -> ``(B, C, H // P, W // P)`` patch features."""
        p = self.patch_size
        h, w = pixels.shape[-2] // p, pixels.shape[-1] // p
        pixels = pixels[..., : h * p, : w * p].to(self.device)
        kwargs = {"interpolate_pos_encoding": True} if self.model.config.model_type == "vit" else {}
        tokens = self.model(pixel_values=pixels, **kwargs).last_hidden_state[:, self.prefix_tokens :]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w).float()


def build_tiny_dino(seed: int = 0):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                          image_size=56, patch_size=14)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Dinov2Model(config)


def load_dino(name: str = TINY_RANDOM, device: torch.device | str = "cpu") -> DinoBackbone:
    if name == TINY_RANDOM:
        warn_tiny_random("dino")
        return DinoBackbone(build_tiny_dino(), name, device)
    from transformers import AutoConfig, AutoModel

    with quiet_hub():
        config = load_config(name, AutoConfig, "DINO")
    if config.model_type not in DINO_MODEL_TYPES:
        raise ModelLoadError(
            f"{name!r} is a {config.model_type!r} model, not DINOv2/DINO; pass one such as facebook/dinov2-large"
        )
    try:
        with quiet_hub():
            model = (
                AutoModel.from_pretrained(name, add_pooling_layer=False)
                if config.model_type == "vit"
                else (AutoModel.from_pretrained(name))
            )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load DINO weights from {name!r}: {str(e).splitlines()[0][:160]}") from None
    return DinoBackbone(model, name, device)
