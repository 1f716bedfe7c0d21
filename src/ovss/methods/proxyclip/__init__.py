"""ProxyCLIP (Lan et al., ECCV 2024): CLIP's last block attends with a VFM's patch affinity.

github.com/mc-lan/ProxyCLIP, re-implemented (docs/proxyclip.md). Per window: the CLIP-normalised
pixels are re-normalised to the VFM's statistics; the VFM's last-layer patch features give the
thresholded, sharpened affinity of :func:`ovss.ops.affinity.proxy_attention`, shared by all heads;
CLIP's last-block value vectors, bilinearly resized to the VFM grid, are mixed by it, then
out_proj (no residual, no FFN), ln_post and the projection. Scores come out at the VFM grid.

Both grid sides are computed from the window's own height and width (the official code takes
the VFM grid, and the order of CLIP's token grid, from a square window), so non-square windows
and whole-image passes are correct.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InputError
from ...ops.affinity import attend, proxy_attention
from ..base import MethodSpec, register_method
from ..dense import DenseMatchingMethod, DenseSettings
from ..settings import family_defaults


@dataclass(frozen=True)
class ProxyCLIPSettings(DenseSettings):
    # short side 336, windows 336/112, zero-padding to a multiple of 56 come from the proxyclip_corrclip family
    # (registered with family_defaults); the reference runs mmseg's test pipeline (OpenCV resize, rounded constants)
    resize_backend: str = "cv2"
    pixel_constants: str = "mmseg"
    beta: float = 1.2  # affinity threshold, as a multiple of the mean affinity
    gamma: float = 3.0  # sharpening of the kept affinities

    def validate(self) -> None:
        if self.gamma <= 0:
            raise InputError(f"gamma {self.gamma} must be positive")
        super().validate()


def renormalize(pixels: torch.Tensor, source: tuple, target: tuple) -> torch.Tensor:
    """Pixels normalised with ``source`` (mean, std) -> normalised with ``target`` (0-1 scale)."""
    (m0, s0), (m1, s1) = source, target

    def col(v):
        return torch.tensor(v, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)

    return (pixels * col(s0) + col(m0) - col(m1)) / col(s1)


class VFMGuidedMethod(DenseMatchingMethod):
    """The shared part of ProxyCLIP and CorrCLIP: CLIP values, a VFM, and an affinity."""

    def __init__(self, backbones, settings, device: torch.device) -> None:
        super().__init__(backbones, settings, device)
        self.clip = self.text_encoder = backbones["clip"]
        self.vfm = backbones["dino"]
        for attr in ("value_features", "project_values"):
            if not hasattr(self.clip, attr):
                raise InputError(f"{type(self.clip).__name__} has no {attr}(); this method needs a ViT CLIP")
        self.mean, self.std, self.patch_size = self.clip.mean, self.clip.std, self.clip.patch_size

    def vfm_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """VFM patch features ``(B, C, I, J)`` of CLIP-normalised windows."""
        vfm_pixels = renormalize(pixels, (self.mean, self.std), (self.vfm.mean, self.vfm.std))
        return self.vfm.patch_features(vfm_pixels).to(pixels.device)


class ProxyCLIPMethod(VFMGuidedMethod):
    needs = ("clip", "dino")

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        s = self.settings
        feats = self.vfm_features(pixels)
        weights = proxy_attention(feats, s.beta, s.gamma)
        mixed = attend(self.clip.value_features(pixels), weights, (int(feats.shape[-2]), int(feats.shape[-1])))
        return self.clip.project_values(mixed)


register_method(
    MethodSpec(
        "proxyclip",
        "ProxyCLIP: CLIP's last block attends with a VFM's (DINO, DINOv2, DINOv3, SAM) patch affinity",
        ProxyCLIPMethod,
        family_defaults(ProxyCLIPSettings(), "proxyclip_corrclip"),
        ("clip", "dino"),
        "Lan et al., ECCV 2024",
        family="proxyclip_corrclip",
        tier="B",
    )
)
