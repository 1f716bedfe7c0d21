"""A CorrCLIP-style method (after Zhang et al., ICCV 2025; github.com/zdk258/CorrCLIP).

Three of CorrCLIP's parts, on top of the ProxyCLIP machinery (docs/corrclip.md lists every
choice and what is left out):

1. SAM/SAM2 masks of the whole image from ovss's own generator at CorrCLIP's settings (the
   ``corrclip`` preset: 8x8 points, IoU and stability thresholds 0.4, one mask per point; pass
   ``mask_points=32`` for the accurate option), painted into one region map (largest first).
2. The last block attends with the VFM's cosine affinity times ``tau`` ("DINO-guided
   correlation"), restricted to patches of the same region ("scope reconstruction"), over
   CLIP's values resized to twice CLIP's token grid; out_proj, ln_post, projection.
3. Map correction after ``prob_thd``: every region takes the most frequent label inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...device import autocast
from ...errors import InputError
from ...masks.pooling import refine_labels, region_map
from ...ops.affinity import attend, corr_attention
from ...ops.windows import slide
from ...vocab import Vocabulary
from ..base import MethodOutput, MethodSpec, register_method
from ..proxyclip import ProxyCLIPSettings, VFMGuidedMethod
from ..settings import family_defaults


@dataclass(frozen=True)
class CorrCLIPSettings(ProxyCLIPSettings):
    tau: float = 4.0  # temperature on the cosine affinity
    feature_scale: int = 2  # the affinity grid is this many times CLIP's token grid
    mask_preset: str = "corrclip"
    mask_points: int | None = None  # points per side of the SAM grid; None = the preset's (8); 32 = accurate
    scope: bool = True  # restrict the correlation to patches of the same mask
    map_correction: bool = True

    def validate(self) -> None:
        if self.tau <= 0 or self.feature_scale < 1:
            raise InputError(f"tau ({self.tau}) must be positive and feature_scale ({self.feature_scale}) >= 1")
        if self.mask_points is not None and self.mask_points < 1:
            raise InputError(f"mask_points must be >= 1, got {self.mask_points}")
        super().validate()


def window_regions(
    regions: torch.Tensor, box: tuple[int, int, int, int], padded_hw: tuple[int, int], grid: tuple[int, int]
) -> torch.Tensor:
    """A window's region ids at the affinity ``grid``: cropped, padded like the pixels (the
    padding becomes one region of its own, as in CorrCLIP's code) and nearest-resized."""
    y1, y2, x1, x2 = box
    crop = regions[y1:y2, x1:x2]
    ph, pw = padded_hw[0] - crop.shape[0], padded_hw[1] - crop.shape[1]
    if ph or pw:
        fill = int(regions.max()) + 1
        crop = F.pad(crop, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
    return F.interpolate(crop[None, None].float(), size=grid, mode="nearest")[0, 0].long()


class CorrCLIPMethod(VFMGuidedMethod):
    needs = ("clip", "dino", "sam")

    def __init__(self, backbones, settings: CorrCLIPSettings, device: torch.device) -> None:
        super().__init__(backbones, settings, device)
        sam = backbones["sam"]
        if hasattr(sam, "generate"):  # already a mask generator (e.g. a synthetic stand-in)
            self.mask_generator = sam
        else:
            from ...masks.sam import SamMaskGenerator

            extra = {} if settings.mask_points is None else {"points_per_side": settings.mask_points}
            self.mask_generator = SamMaskGenerator(sam, preset=settings.mask_preset, **extra)  # type: ignore[arg-type]
        self._regions: torch.Tensor | None = None  # the current image's region map at the resized size

    def regions(self, image: np.ndarray) -> np.ndarray:
        """``(H, W)`` region ids of ``image`` (0 = no mask)."""
        return region_map(self.mask_generator.generate(image), image.shape[:2])

    def embed_windows(self, pixels: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
        s = self.settings
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        grid = (h * s.feature_scale, w * s.feature_scale)
        feats = F.interpolate(self.vfm_features(pixels).float(), size=grid, mode="bilinear", align_corners=False)
        regions = None
        if s.scope and self._regions is not None:
            regions = torch.stack([window_regions(self._regions, b, pixels.shape[-2:], grid) for b in boxes])  # type: ignore[arg-type]
        weights = corr_attention(feats, regions, s.tau)
        return self.clip.project_values(attend(self.clip.value_features(pixels), weights, grid))

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:  # one pass without regions (dense_features)
        boxes = [(0, pixels.shape[-2], 0, pixels.shape[-1])] * pixels.shape[0]
        return self.embed_windows(pixels, boxes)

    @torch.no_grad()
    def query_scores(self, image: np.ndarray, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.settings
        pixels = self.pixels(image)
        text = text.to(self.device)

        def score_fn(batch: torch.Tensor, boxes) -> torch.Tensor:
            feats = self.embed_windows(batch.to(self.device), boxes).float()
            return torch.einsum("bdhw,qd->bqhw", feats, text)

        pad = self.patch_size if s.pad_to == "patch" else s.pad_to
        with autocast(self.device, s.precision):
            scores = slide(pixels, score_fn, s.window, s.window_batch, pad, with_boxes=True)  # type: ignore[arg-type]
        return scores, pixels

    @torch.no_grad()
    def segment(self, image: np.ndarray, vocab: Vocabulary, return_probs: bool = False) -> MethodOutput:
        s = self.settings
        regions = self.regions(image)
        size = self.resized_size(*image.shape[:2])
        full = torch.from_numpy(regions)[None, None].float()
        self._regions = F.interpolate(full, size=size, mode="nearest")[0, 0].long()
        try:
            out = super().segment(image, vocab, return_probs)
        finally:
            self._regions = None
        if s.map_correction:
            out.labels = refine_labels(out.labels, regions).astype(np.int32)
        return out


register_method(
    MethodSpec(
        "corrclip",
        "CorrCLIP-style: SAM-mask-scoped, DINO-guided last-block correlation and SAM map correction",
        CorrCLIPMethod,
        family_defaults(CorrCLIPSettings(), "proxyclip_corrclip"),
        ("clip", "dino", "sam"),
        "after Zhang et al., ICCV 2025",
        family="proxyclip_corrclip",
        tier="B",
    )
)
