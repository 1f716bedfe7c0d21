"""The pipeline shared by every method that matches dense patch embeddings to text embeddings.

image -> keep-ratio resize -> sliding windows -> ``embed`` (B, D, h, w) -> cosine with the
query texts -> window average -> upsample to the original size -> optional PAMR -> the SCLIP
post-processing (docs/methods.md §0.4). Dense-CLIP methods, FMbSeg and others differ only in
``embed`` (and their default settings), so they subclass :class:`DenseMatchingMethod`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..device import autocast, check_precision
from ..errors import InputError
from ..memory import check_fits
from ..models.base import TextEncoder
from ..ops.pamr import halo, pamr_rows
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
# PAMR refines bands of rows (with a halo, exact: ops/pamr.py) whose queries x rows x width stay under this
# many floats, a chunk of queries at a time; an image that fits in one band is refined whole, as before.
PAMR_BAND_FLOATS = 1 << 27
PAMR_CHUNK_FLOATS = 1 << 26  # one query chunk's working maps (band plus halo, and its full-size upsampling)
PAMR_COPIES = 5  # maps alive per refined chunk: input, result, accumulator, padded shift, product
AFFINITY_MAPS = 16 + 54  # the affinity weights and, briefly, the 18 shifted RGB guides of its std
POSTPROCESS_COPIES = 3  # per band of postprocess: scaled scores, softmax, class probabilities
# Upsampling and post-processing go by bands of rows of at most this many floats per map. PAMR's
# bands are runs of these: torch's softmax rounds the last bits of a band's tail differently when
# its size changes, so the post-processing bands stay the ones the whole-image path uses.
BAND_FLOATS = 1 << 26


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


def pamr_plan(queries: int, size: tuple[int, int], iterations: int, dilations) -> tuple[list[slice], int]:
    """PAMR's row bands and query chunk for a ``size`` output: one band of all queries when it fits."""
    height, width = size
    if queries * height * width <= PAMR_BAND_FLOATS:
        return [slice(0, height)], queries
    target = max(1, PAMR_BAND_FLOATS // (queries * width))
    bands: list[slice] = []
    for band in row_bands(height, width, queries, BAND_FLOATS):
        if bands and band.stop - bands[-1].start <= target:
            bands[-1] = slice(bands[-1].start, band.stop)
        else:
            bands.append(band)
    rows = max(b.stop - b.start for b in bands)
    extended = min(height, rows + 2 * halo(iterations, dilations))
    chunk = max(1, min(queries, PAMR_CHUNK_FLOATS // (PAMR_COPIES * extended * width + height * width)))
    return bands, chunk


def segment_bytes(
    queries: int, classes: int, size: tuple[int, int], settings: DenseSettings, return_probs: bool
) -> dict[str, int]:
    """Estimated bytes of the full-resolution stage of :meth:`DenseMatchingMethod.segment` (fp32 maps)."""
    height, width = size
    pixels = height * width
    parts = {"labels": 16 * pixels, "probabilities": 4 * classes * pixels if return_probs else 0}
    band = min(queries * pixels, BAND_FLOATS)
    parts["bands"] = 4 * (POSTPROCESS_COPIES + 1) * band
    if settings.pamr_iterations > 0:
        bands, chunk = pamr_plan(queries, size, settings.pamr_iterations, settings.pamr_dilations)
        rows = max(b.stop - b.start for b in bands)
        extended = min(height, rows + 2 * halo(settings.pamr_iterations, settings.pamr_dilations))
        working = PAMR_COPIES * chunk * extended * width + (chunk * pixels if len(bands) > 1 else 0)
        parts["PAMR"] = 4 * (queries * rows * width + working + AFFINITY_MAPS * extended * width + 3 * pixels)
    return parts


def check_segment_memory(
    queries: int,
    classes: int,
    size: tuple[int, int],
    settings: DenseSettings,
    return_probs: bool,
    device: torch.device | str = "cpu",
    available: int | None = None,
) -> None:
    """One line naming the size and the fixes when the full-resolution maps cannot fit in free memory."""
    parts = segment_bytes(queries, classes, size, settings, return_probs)
    what = f"a {size[1]}x{size[0]} image with {queries} text queries"
    fixes = ["fewer classes", "a smaller image"]
    if settings.pamr_iterations > 0:
        fixes.append("PAMR off (--pamr 0)")
    if return_probs:
        fixes.append("no probabilities (return_probs=False, no --confidence)")
    fix = "use " + ", ".join(fixes[:-1]) + " or " + fixes[-1]
    if torch.device(device).type == "cpu":
        check_fits(parts, what, fix, device, available)
        return
    host = {k: parts.pop(k) for k in ("labels", "probabilities")}  # assembled on the host
    check_fits(host, what, fix, "cpu", available)
    check_fits(parts, what, fix, device, available)


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
        self.check_memory(image.shape[:2], vocab, return_probs)  # before any work
        scores, pixels = self.query_scores(image, self.text_embeddings(vocab))
        return self.labels_from_scores(image.shape[:2], scores, pixels, vocab, return_probs)

    def check_memory(self, size: tuple[int, int], vocab: Vocabulary, return_probs: bool) -> None:
        check_segment_memory(len(vocab.queries), vocab.num_classes, size, self.settings, return_probs, self.device)

    @torch.no_grad()
    def segment_many(
        self, images: Sequence[np.ndarray], vocab: Vocabulary, return_probs: bool = False
    ) -> list[MethodOutput]:
        """:meth:`segment` of several images; methods with ``batches_images`` share window batches
        across them (the same labels as one at a time, tests/test_dense_speed.py)."""
        if not self.batches_images or len(images) < 2:
            return [self.segment(image, vocab, return_probs) for image in images]
        for image in images:
            self.check_memory(image.shape[:2], vocab, return_probs)
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
        queries = len(vocab.queries)
        if s.pamr_iterations > 0:
            band_fn, bands = self._pamr_bands(scores, pixels, size, queries)
        else:

            def band_fn(rows: slice) -> torch.Tensor:
                return upsample_rows(scores, size, rows)

            bands = list(row_bands(size[0], size[1], queries, BAND_FLOATS))
        labels, probs = postprocess(
            band_fn,
            size,
            vocab.query_class,
            vocab.num_classes,
            logit_scale=s.logit_scale,
            prob_thd=self.effective_prob_thd(vocab),
            area_thd=s.area_thd,
            has_background=vocab.has_background,
            bands=bands,
            return_probs=return_probs,
            renormalize=s.renormalize_probs,
        )
        return MethodOutput(labels.numpy().astype(np.int32), None if probs is None else probs.numpy())

    def _pamr_bands(
        self, scores: torch.Tensor, pixels: torch.Tensor, size: tuple[int, int], queries: int
    ) -> tuple[Callable[[slice], torch.Tensor], list[slice]]:
        """PAMR-refined full-resolution scores by bands of rows, and postprocess's bands (runs of which are PAMR's)."""
        s = self.settings
        pamr_bands, chunk = pamr_plan(queries, size, s.pamr_iterations, s.pamr_dilations)

        # Score map and guide image upsampled with F.interpolate as SCLIP's and NACLIP's
        # segmentors do: PAMR divides by the guide's local std, so in flat regions even
        # float-rounding noise of another (equal in exact arithmetic) upsampling changes it.
        # A band's score rows are cut from the whole upsampled map of its chunk of queries, so
        # they are the very numbers the whole-image computation refines.
        def upsampled(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False)[0]

        guide = upsampled(pixels.to(self.device))

        def chunk_scores(channels: slice, rows: slice) -> torch.Tensor:
            full = upsampled(scores[channels])
            return full if rows == slice(0, size[0]) else full[:, rows].contiguous()

        done: dict[int, torch.Tensor] = {}  # the refined PAMR band last asked for

        def band_fn(rows: slice) -> torch.Tensor:
            index = next(i for i, b in enumerate(pamr_bands) if b.start <= rows.start < b.stop)
            band = pamr_bands[index]
            if index not in done:
                done.clear()
                done[index] = pamr_rows(guide, chunk_scores, queries, band, s.pamr_iterations, s.pamr_dilations, chunk)
            return done[index][:, rows.start - band.start : rows.stop - band.start]

        bands = list(row_bands(size[0], size[1], queries, BAND_FLOATS))  # each inside one PAMR band
        return band_fn, bands

    @torch.no_grad()
    def dense_features(self, image: np.ndarray) -> np.ndarray:
        """The language-aligned ``(D, h, w)`` patch embeddings of the resized image (one pass)."""
        with self.precision_context():
            feats = self.embed(self.pixels(image).unsqueeze(0).to(self.device))
        return feats[0].float().cpu().numpy()
