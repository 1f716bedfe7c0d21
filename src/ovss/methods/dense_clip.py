"""Training-free dense-CLIP methods: vanilla CLIP, MaskCLIP, SCLIP, ClearCLIP, NACLIP.

They differ only in the last ViT block (models.dense_clip.LAST_BLOCKS) and in their protocol
defaults (short side, windows, logit scale, PAMR), which come from their protocol family's table
in ``ovss.protocols``, so one class serves all and each value is written once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..models.dense_clip import check_variant
from .base import MethodSpec, register_method
from .dense import DenseMatchingMethod, DenseSettings
from .settings import family_defaults


@dataclass(frozen=True)
class DenseCLIPSettings(DenseSettings):
    variant: str = "sclip"  # last-block variant (docs/methods.md §5.1)
    # All five references run mmseg's test pipeline: OpenCV resize of the uint8 image and the
    # data preprocessor's rounded 0-255 constants (docs/protocol.md).
    resize_backend: str = "cv2"
    pixel_constants: str = "mmseg"

    def validate(self) -> None:
        check_variant(self.variant)
        super().validate()


class DenseCLIPMethod(DenseMatchingMethod):
    needs = ("clip",)

    def __init__(self, backbones, settings: DenseCLIPSettings, device: torch.device) -> None:
        super().__init__(backbones, settings, device)
        self.clip = self.text_encoder = backbones["clip"]
        self.mean, self.std, self.patch_size = self.clip.mean, self.clip.std, self.clip.patch_size

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.dense_features(pixels, self.settings.variant)


def _register(name: str, description: str, reference: str, family: str, **behaviour) -> None:
    # the protocol values (short side, windows, logit scale, PAMR, padding) come from the family's table;
    # ``behaviour`` holds what the method itself does differently
    settings = family_defaults(dataclasses.replace(DenseCLIPSettings(), variant=name, **behaviour), family)
    register_method(
        MethodSpec(name, description, DenseCLIPMethod, settings, ("clip",), reference, family=family, tier="A")
    )


_register("sclip", "SCLIP: correlative self-attention (q-q + k-k) in the last block", "Wang et al., ECCV 2024", "sclip")
_register(
    "naclip",
    "NACLIP: k-k attention with a Gaussian neighbourhood prior, PAMR on",
    "Hajimiri et al., WACV 2025",
    "naclip",
    renormalize_probs=True,  # NACLIP's segmentor divides the class probabilities by their sum
)
_register("clearclip", "ClearCLIP: q-q attention without residual or FFN", "Lan et al., ECCV 2024", "clearclip")
_register(
    "maskclip", "MaskCLIP: each token attends only to itself (value embeddings)", "Zhou et al., ECCV 2022", "sclip"
)
_register("vanilla", "Plain CLIP last block (baseline)", "Radford et al., ICML 2021", "sclip")
