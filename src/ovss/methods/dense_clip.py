"""Training-free dense-CLIP methods: vanilla CLIP, MaskCLIP, SCLIP, ClearCLIP, NACLIP.

They differ only in the last ViT block (ops.dense_clip.LAST_BLOCKS) and in their protocol
defaults (PROTOCOL.md §4: short side, windows, logit scale, PAMR), so one class serves all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..device import autocast, check_precision
from ..errors import InputError
from ..ops.dense_clip import check_variant
from ..ops.pamr import pamr
from ..ops.postprocess import postprocess
from ..ops.resize import keep_ratio_size, normalize, resize_image, row_bands, upsample_rows
from ..ops.text import embed_queries
from ..ops.windows import slide
from ..templates import get_templates
from ..vocab import Vocabulary
from .base import Method, MethodOutput, MethodSpec, register_method

# Probability below which a pixel becomes background when background="threshold" and the user
# gave no prob_thd (the method's protocol value is 0, which would never fire).
THRESHOLD_MODE_PROB = 0.5


@dataclass(frozen=True)
class DenseCLIPSettings:
    variant: str = "sclip"  # last-block variant (METHODS.md §5.1)
    short_side: int = 336  # mmseg keep-ratio resize target (PROTOCOL.md §5.1)
    long_max: int = 2048
    window: tuple[int, int] | None = (224, 112)  # (crop, stride); None = one whole-image pass
    pad_to: int | str | None = None  # zero-pad windows to a multiple of this; "patch" = patch size
    logit_scale: float = 40.0  # softmax temperature over all queries
    prob_thd: float = 0.0  # below this best-class probability a pixel becomes class 0
    area_thd: float | None = None  # foreground classes under this share of fg pixels are dropped
    pamr_iterations: int = 0  # PAMR refinement of the raw cosine map (METHODS.md §5.7)
    pamr_dilations: tuple[int, ...] = (8, 16)
    templates: str = "openai_imagenet_80"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 on CUDA only)
    window_batch: int = 8  # windows per forward pass

    def validate(self) -> None:
        check_variant(self.variant)
        check_precision(self.precision)
        get_templates(self.templates)
        if self.short_side < 1 or self.long_max < 1:
            raise InputError("short_side and long_max must be positive")
        if self.window is not None:
            crop, stride = self.window
            if crop < 1 or stride < 1:
                raise InputError(f"window {self.window} must be two positive numbers (crop, stride)")
        if not 0.0 <= self.prob_thd <= 1.0:
            raise InputError(f"prob_thd {self.prob_thd} must be between 0 and 1")
        if self.area_thd is not None and not 0.0 <= self.area_thd <= 1.0:
            raise InputError(f"area_thd {self.area_thd} must be between 0 and 1")
        if self.pad_to not in (None, "patch") and not (isinstance(self.pad_to, int) and self.pad_to > 0):
            raise InputError(f"pad_to {self.pad_to!r} must be a positive number, 'patch' or None")
        if self.pamr_iterations < 0 or self.window_batch < 1:
            raise InputError("pamr_iterations must be >= 0 and window_batch >= 1")


class DenseCLIPMethod(Method):
    needs = ("clip",)

    def __init__(self, backbones, settings: DenseCLIPSettings, device: torch.device) -> None:
        settings.validate()
        super().__init__(backbones, settings, device)
        self.clip = backbones["clip"]
        self.templates = get_templates(settings.templates)

    def effective_prob_thd(self, vocab: Vocabulary) -> float:
        s = self.settings
        if vocab.background == "threshold" and s.prob_thd == 0.0:
            return THRESHOLD_MODE_PROB
        return s.prob_thd

    def _pixels(self, image: np.ndarray) -> torch.Tensor:
        size = keep_ratio_size(*image.shape[:2], self.settings.short_side, self.settings.long_max)
        return normalize(resize_image(image, size), self.clip.mean, self.clip.std)

    @torch.no_grad()
    def query_scores(self, image: np.ndarray, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window-averaged cosine scores ``(Q, h, w)`` at the resized size, and the resized pixels."""
        s = self.settings
        pixels = self._pixels(image)
        text = text.to(self.device)

        def score_fn(batch: torch.Tensor) -> torch.Tensor:
            feats = self.clip.dense_features(batch.to(self.device), s.variant)
            return torch.einsum("bdhw,qd->bqhw", feats.float(), text)

        pad = self.clip.patch_size if s.pad_to == "patch" else s.pad_to
        with autocast(self.device, s.precision):
            scores = slide(pixels, score_fn, s.window, s.window_batch, pad)
        return scores, pixels

    @torch.no_grad()
    def segment(self, image: np.ndarray, vocab: Vocabulary, return_probs: bool = False) -> MethodOutput:
        s = self.settings
        text = embed_queries(self.clip, list(vocab.queries), self.templates)
        scores, pixels = self.query_scores(image, text)
        size = image.shape[:2]
        if s.pamr_iterations > 0:
            _check_pamr_memory(len(vocab.queries), size)
            full = upsample_rows(scores, size)
            guide = upsample_rows(pixels, size)
            full = pamr(guide, full, s.pamr_iterations, s.pamr_dilations)

            def band_fn(rows: slice) -> torch.Tensor:
                return full[:, rows]
        else:

            def band_fn(rows: slice) -> torch.Tensor:
                return upsample_rows(scores, size, rows)

        labels, probs = postprocess(
            band_fn,
            size,
            vocab.query_class,
            vocab.num_classes,
            logit_scale=s.logit_scale,
            prob_thd=self.effective_prob_thd(vocab),
            area_thd=s.area_thd,
            has_background=vocab.has_background,
            bands=list(row_bands(size[0], size[1], len(vocab.queries))),
            return_probs=return_probs,
        )
        return MethodOutput(labels.numpy().astype(np.int32), None if probs is None else probs.numpy())

    @torch.no_grad()
    def dense_features(self, image: np.ndarray) -> np.ndarray:
        """The language-aligned ``(D, h, w)`` patch embeddings of the resized image (one pass)."""
        pixels = self._pixels(image).unsqueeze(0)
        with autocast(self.device, self.settings.precision):
            feats = self.clip.dense_features(pixels.to(self.device), self.settings.variant)
        return feats[0].float().cpu().numpy()


PAMR_MAX_FLOATS = 1 << 29  # PAMR holds a few full-resolution score maps at once


def _check_pamr_memory(queries: int, size: tuple[int, int]) -> None:
    floats = queries * size[0] * size[1]
    if floats > PAMR_MAX_FLOATS:
        raise InputError(
            f"PAMR on a {size[1]}x{size[0]} image with {queries} text queries needs about "
            f"{floats * 16 / 2**30:.0f} GB; turn PAMR off (--pamr 0) or downscale the image"
        )


def _register(name: str, description: str, reference: str, **defaults) -> None:
    settings = dataclasses.replace(DenseCLIPSettings(), variant=name, **defaults)
    register_method(MethodSpec(name, description, DenseCLIPMethod, settings, ("clip",), reference))


# Defaults: each family's protocol values for benchmarks without per-dataset overrides
# (PROTOCOL.md §4.2-4.3); per-benchmark values come from the protocol table.
_register("sclip", "SCLIP: correlative self-attention (q-q + k-k) in the last block", "Wang et al., ECCV 2024")
_register("naclip", "NACLIP: k-k attention with a Gaussian neighbourhood prior, PAMR on",
          "Hajimiri et al., WACV 2025", pamr_iterations=10)  # fmt: skip
_register("clearclip", "ClearCLIP: q-q attention without residual or FFN", "Lan et al., ECCV 2024",
          short_side=448, window=(448, 224), logit_scale=50.0, pad_to="patch")  # fmt: skip
_register("maskclip", "MaskCLIP: each token attends only to itself (value embeddings)", "Zhou et al., ECCV 2022")
_register("vanilla", "Plain CLIP last block (baseline)", "Radford et al., ICML 2021")
