"""The pipeline shared by every method that matches dense patch embeddings to text embeddings.

image -> keep-ratio resize -> sliding windows -> ``embed`` (B, D, h, w) -> cosine with the
query texts -> window average -> upsample to the original size -> optional PAMR -> the SCLIP
post-processing (docs/methods.md §0.4). Dense-CLIP methods, FMbSeg and others differ only in
``embed`` (and their default settings), so they subclass :class:`DenseMatchingMethod`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..device import autocast, check_precision
from ..errors import InputError
from ..models.base import TextEncoder
from ..ops.pamr import pamr
from ..ops.postprocess import postprocess
from ..ops.resize import (
    check_resize_backend,
    keep_ratio_size,
    normalize,
    pixel_constants,
    resize_image,
    row_bands,
    upsample_rows,
)
from ..ops.text import embed_queries
from ..ops.windows import slide_many
from ..templates import get_templates
from ..vocab import Vocabulary
from .base import Method, MethodOutput

# Probability below which a pixel becomes background when background="threshold" and the user
# gave no prob_thd (the protocol value 0 would never fire).
THRESHOLD_MODE_PROB = 0.5
PAMR_MAX_FLOATS = 1 << 29  # PAMR holds a few full-resolution score maps at once


@dataclass(frozen=True)
class DenseSettings:
    short_side: int = 336  # mmseg keep-ratio resize target (docs/reference-protocol.md §5.1)
    long_max: int = 2048
    size_multiple: int | None = None  # round both resized sides up to a multiple of this
    window: tuple[int, int] | None = (224, 112)  # (crop, stride); None = one whole-image pass
    pad_to: int | str | None = None  # zero-pad windows to a multiple of this; "patch" = patch size
    logit_scale: float = 40.0  # softmax temperature over all queries
    prob_thd: float = 0.0  # below this best-class probability a pixel becomes class 0
    area_thd: float | None = None  # foreground classes under this share of fg pixels are dropped
    pamr_iterations: int = 0  # PAMR refinement of the raw cosine map (docs/methods.md §5.7)
    pamr_dilations: tuple[int, ...] = (8, 16)
    templates: str = "openai_imagenet_80"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 on CUDA only)
    window_batch: int = 8  # windows per forward pass
    resize_backend: str = "torch"  # cv2 | pil | torch: whose uint8 bilinear resize (ops.resize)
    pixel_constants: str = "unrounded"  # mmseg = mean/std rounded as mmseg configs write them
    renormalize_probs: bool = False  # returned probabilities divided by their sum over classes (NACLIP)

    def validate(self) -> None:
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
        if self.pamr_iterations and (not self.pamr_dilations or min(self.pamr_dilations) < 1):
            raise InputError(
                f"pamr_dilations {self.pamr_dilations!r} must be one or more positive numbers", option="pamr_dilations"
            )
        check_resize_backend(self.resize_backend)
        pixel_constants((0.5,), (0.5,), self.pixel_constants)


def _check_pamr_memory(queries: int, size: tuple[int, int]) -> None:
    floats = queries * size[0] * size[1]
    if floats > PAMR_MAX_FLOATS:
        raise InputError(
            f"PAMR on a {size[1]}x{size[0]} image with {queries} text queries needs about "
            f"{floats * 16 / 2**30:.0f} GB; turn PAMR off (--pamr 0) or downscale the image"
        )


class DenseMatchingMethod(Method):
    """Subclasses set ``self.text_encoder``, ``self.mean``/``self.std`` and ``self.patch_size``,
    and implement :meth:`embed`."""

    text_encoder: TextEncoder
    batches_images = False  # segment_many shares window batches across images (needs the plain query_scores)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int

    def __init__(self, backbones, settings: DenseSettings, device: torch.device) -> None:
        settings.validate()
        super().__init__(backbones, settings, device)
        self.templates = get_templates(settings.templates)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised windows -> ``(B, D, h, w)`` L2-normalised embeddings."""
        raise NotImplementedError

    def text_embeddings(self, vocab: Vocabulary) -> torch.Tensor:
        return embed_queries(self.text_encoder, list(vocab.queries), self.templates)

    def effective_prob_thd(self, vocab: Vocabulary) -> float:
        s = self.settings
        if vocab.background == "threshold" and s.prob_thd == 0.0:
            return THRESHOLD_MODE_PROB
        return s.prob_thd

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.settings
        h, w = keep_ratio_size(height, width, s.short_side, s.long_max)
        if s.size_multiple:
            h, w = (-(-h // s.size_multiple) * s.size_multiple, -(-w // s.size_multiple) * s.size_multiple)
        return h, w

    def pixels(self, image: np.ndarray) -> torch.Tensor:
        s = self.settings
        resized = resize_image(image, self.resized_size(*image.shape[:2]), s.resize_backend)
        return normalize(resized, self.mean, self.std, s.pixel_constants)

    def precision_context(self) -> contextlib.AbstractContextManager:
        """How ``embed`` runs at ``settings.precision``: autocast here; a method that casts its
        image tower once (dense CLIP) runs it without."""
        return autocast(self.device, self.settings.precision)

    @torch.no_grad()
    def query_scores(self, image: np.ndarray, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window-averaged cosine scores ``(Q, h, w)`` at the resized size, and the resized pixels."""
        scores, pixels = self.query_scores_many([image], text)
        return scores[0], pixels[0]

    @torch.no_grad()
    def query_scores_many(
        self, images: Sequence[np.ndarray], text: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`query_scores` of several images, their windows batched together (``slide_many``)."""
        s = self.settings
        pixels = [self.pixels(image) for image in images]
        text = text.to(self.device)

        def score_fn(batch: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bdhw,qd->bqhw", self.embed(batch.to(self.device)).float(), text)

        for p in pixels:
            if s.window is not None and min(s.window[0], min(p.shape[-2:])) < self.patch_size:
                raise InputError(
                    f"window {s.window[0]} px (or the resized image {tuple(p.shape[-2:])}) is under one "
                    f"{self.patch_size}-pixel patch; use a crop of at least {self.patch_size}",
                    option="window",
                )
        pad = self.patch_size if s.pad_to == "patch" else s.pad_to
        with self.precision_context():
            scores = slide_many(pixels, score_fn, s.window, s.window_batch, pad)
        return scores, pixels

    @torch.no_grad()
    def segment(self, image: np.ndarray, vocab: Vocabulary, return_probs: bool = False) -> MethodOutput:
        scores, pixels = self.query_scores(image, self.text_embeddings(vocab))
        return self.labels_from_scores(image.shape[:2], scores, pixels, vocab, return_probs)

    @torch.no_grad()
    def segment_many(
        self, images: Sequence[np.ndarray], vocab: Vocabulary, return_probs: bool = False
    ) -> list[MethodOutput]:
        """:meth:`segment` of several images; methods with ``batches_images`` share window batches
        across them (the same labels as one at a time, tests/test_dense_speed.py)."""
        if not self.batches_images or len(images) < 2:
            return [self.segment(image, vocab, return_probs) for image in images]
        scores, pixels = self.query_scores_many(images, self.text_embeddings(vocab))
        return [
            self.labels_from_scores(image.shape[:2], sc, px, vocab, return_probs)
            for image, sc, px in zip(images, scores, pixels)
        ]

    def labels_from_scores(
        self, size: tuple[int, int], scores: torch.Tensor, pixels: torch.Tensor, vocab: Vocabulary, return_probs: bool
    ) -> MethodOutput:
        """Upsample (or PAMR) the resized-size ``scores`` to ``size`` and post-process them."""
        s = self.settings
        if s.pamr_iterations > 0:
            _check_pamr_memory(len(vocab.queries), size)
            # Score map and guide image upsampled with F.interpolate as SCLIP's and NACLIP's
            # segmentors do: PAMR divides by the guide's local std, so in flat regions even
            # float-rounding noise of another (equal in exact arithmetic) upsampling changes it.
            full_scores, guide = (
                F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False)[0]
                for x in (scores, pixels)
            )
            full = pamr(guide, full_scores, s.pamr_iterations, s.pamr_dilations)
            del full_scores, guide

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
            renormalize=s.renormalize_probs,
        )
        return MethodOutput(labels.numpy().astype(np.int32), None if probs is None else probs.numpy())

    @torch.no_grad()
    def dense_features(self, image: np.ndarray) -> np.ndarray:
        """The language-aligned ``(D, h, w)`` patch embeddings of the resized image (one pass)."""
        with self.precision_context():
            feats = self.embed(self.pixels(image).unsqueeze(0).to(self.device))
        return feats[0].float().cpu().numpy()
