"""TUSS mask embeddings, the text classifier and painting (docs/methods.md §1.2-1.4); method ``tuss``.

1. SAM masks with the level-aware ``tuss`` preset.
2. DBA-CLIP: SCLIP's correlative last block with the discrimination bias built from the masks
   (per window: masks cropped to it), on a global view and sliding windows (224/56 for VOC and
   COCO; several window sizes mixed with momentum 0.5 for Cityscapes), global and sliding maps
   averaged with ``global_weight``; each mask's embedding is the mean of the upsampled map over
   its pixels.
3. Classification: without a fitted classifier (the open-vocabulary setting), the text classifier:
   softmax over all queries of (CLIP logit scale x gamma x cosine), synonyms by max, background by
   ``pow`` (bg = (1 - max foreground)^p) or ``prompt`` (bg = p_background^alpha). With a classifier
   from ``ovss fit tuss`` (``checkpoint=DIR``), the GLCC scores of the WSSS/SSS/FSSS settings.
4. Painting in ascending (level, confidence) order; pixels under no mask get class 0 as the
   reference code does (``unpainted="zero"``), their own per-pixel label (``"dense"``), or the
   ignore value 255 (``"ignore"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...device import autocast, check_precision
from ...errors import InputError
from ...masks.maskset import MaskSet
from ...masks.painting import mask_levels, paint
from ...masks.pooling import mask_pool
from ...ops.dba import discrimination_bias
from ...ops.postprocess import class_probabilities
from ...ops.resize import bilinear_matrix, keep_ratio_size, normalize, resize_image, upsample_rows
from ...ops.text import embed_queries
from ...ops.windows import window_grid
from ...templates import get_templates
from ...vocab import Vocabulary
from ..base import Method, MethodOutput, MethodSpec, register_method
from . import protocol as _protocol  # noqa: F401  (registers the tuss family)
from .cli import FIT

IGNORE = 255
Window = tuple[int, int]


@dataclass(frozen=True)
class TUSSSettings:
    short_side: int = 448  # §1.3: short side 448, long side rounded up to a multiple of 16
    size_multiple: int = 16
    # (crop, stride), several of them mixed with momentum 0.5 (Cityscapes: ((448, 224), (224, 112))), or None
    window: Window | tuple[Window, ...] | None = (224, 56)
    global_weight: float = 0.5  # final map = w * global + (1 - w) * sliding
    patches_see_cls: bool = True  # False: Cityscapes OV configuration
    templates: str = "vild_14"  # §1.4 default ("origami" for the final-looking VOC configs)
    logit_scale: float = 100.0  # exp(CLIP logit scale) for OpenAI CLIP
    gamma: float = 1.0
    background_method: str = "pow"  # pow: (1 - max fg)^p; prompt: p_bg^alpha (an explicit background query)
    background_power: float = 1.0  # p or alpha (swept in the reference on the test split; fixed here)
    norm: bool = False  # per-class min-max of the foreground scores across one image's masks
    unpainted: str = "zero"  # zero (reference code) | dense (per-pixel classification) | ignore (255)
    sam_preset: str = "tuss"
    sam_settings: dict[str, Any] | None = None  # mask-generator fields over the preset, e.g. {"points_per_side": 16}
    precision: str = "fp32"
    window_batch: int = 8

    def windows(self) -> list[Window]:
        w = self.window
        if w is None:
            return []
        return [tuple(w)] if isinstance(w[0], int) else [tuple(x) for x in w]  # type: ignore[list-item, misc]

    def validate(self) -> None:
        check_precision(self.precision)
        get_templates(self.templates)
        if self.unpainted not in ("zero", "dense", "ignore"):
            raise InputError(f"unpainted {self.unpainted!r} must be zero, dense or ignore")
        if self.sam_settings:
            from ...masks.presets import make_settings

            make_settings(self.sam_preset, **self.sam_settings)  # unknown fields and bad values fail here
        if self.background_method not in ("pow", "prompt"):
            raise InputError(f"background_method {self.background_method!r} must be pow or prompt")
        try:
            windows = self.windows()
            ok = all(len(w) == 2 and 0 < w[1] <= w[0] for w in windows)
        except (TypeError, IndexError):
            ok = False
        if not ok:
            raise InputError(f"window {self.window!r}: give (crop, stride), several of them, or None")
        if not 0.0 <= self.global_weight <= 1.0 or (not windows and self.global_weight < 1.0):
            raise InputError("global_weight must lie in [0, 1], and be 1 without windows")


@dataclass
class MaskEmbeddings:
    """One image's SAM masks with their DBA-CLIP embeddings."""

    maskset: MaskSet
    masks: torch.Tensor  # (N, H, W) bool
    embeddings: torch.Tensor  # (N, D) L2-normalised
    areas: torch.Tensor  # (N,) pixels
    levels: list[int]  # 0 sub-part, 1 part, 2 whole (masks without a level count as whole)
    feature_map: torch.Tensor | None = None  # (D, h, w) at the resized size, when kept


class TUSSMethod(Method):
    needs = ("clip", "sam")

    def __init__(self, backbones, settings: TUSSSettings, device: torch.device, checkpoint: Any = None) -> None:
        from ...masks.sam import SamMaskGenerator

        settings.validate()
        super().__init__(backbones, settings, device)
        self.clip = backbones["clip"]
        sam = backbones["sam"]
        # a ready mask generator (anything with .generate(image) -> MaskSet) is used as it is
        if hasattr(sam, "generate"):
            self.generator = sam
        else:
            self.generator = SamMaskGenerator(
                sam, preset=settings.sam_preset, device=device, **(settings.sam_settings or {})
            )
        self.templates = get_templates(settings.templates)
        self.classifier = None
        if checkpoint is not None:
            from .classifier import TUSSClassifier

            self.classifier = TUSSClassifier.load(checkpoint)

    @property
    def vocabulary(self) -> Vocabulary | None:
        """The classes a fitted classifier was trained for (None in the open-vocabulary setting)."""
        return None if self.classifier is None else self.classifier.vocabulary

    # -- DBA-CLIP embeddings
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """§1.3: short side to ``short_side``, both sides rounded up to ``size_multiple``."""
        s = self.settings
        h, w = keep_ratio_size(height, width, s.short_side)
        return -(-h // s.size_multiple) * s.size_multiple, -(-w // s.size_multiple) * s.size_multiple

    def embedding_map(self, image: np.ndarray, masks: torch.Tensor) -> torch.Tensor:
        """DBA-CLIP ``(D, h, w)`` map at the resized size (global and sliding views combined)."""
        h, w = self.resized_size(*image.shape[:2])
        out: torch.Tensor | None = None
        for views, weight, boxes in self._views(image, masks, (h, w)):
            if boxes is None:
                m = F.interpolate(views, size=(h, w), mode="bilinear", align_corners=False)[0]
            else:  # windows upsampled to their pixels and averaged where they overlap
                total, count = torch.zeros(views[0][1].shape[0], h, w), torch.zeros(1, h, w)
                for (y1, y2, x1, x2), f in views:
                    total[:, y1:y2, x1:x2] += F.interpolate(
                        f[None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False
                    )[0]
                    count[:, y1:y2, x1:x2] += 1
                m = total / count
            out = weight * m if out is None else out + weight * m
        assert out is not None
        return out

    def pooled_embeddings(self, image: np.ndarray, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask_pool(embedding_map(image, masks), masks)`` without building the map.

        Upsampling, window averaging, the view mixture and pooling are all linear, so each mask's
        pixel weights are carried down to every view's patch grid instead (bilinear matrices),
        and each view's patch features are pooled there: the same numbers up to float rounding,
        without the (D, h, w) map or the 512-channel upsampling of every window.
        """
        big_h, big_w = masks.shape[-2:]
        h, w = self.resized_size(big_h, big_w)
        n = masks.shape[0]
        areas = masks.flatten(1).sum(1).float()
        # each mask's weight on every resized pixel: what mask_pool's bilinear upsampling gives it
        my, mx = bilinear_matrix(big_h, h), bilinear_matrix(big_w, w)
        weights = torch.zeros(n, h, w)
        for a in range(0, n, 64):
            weights[a : a + 64] = my.T @ masks[a : a + 64].float() @ mx
        out = torch.zeros(n, 0)

        def pool(part: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:  # (n, y, x) weights, (D, gy, gx) cells
            by, bx = bilinear_matrix(part.shape[-2], feats.shape[-2]), bilinear_matrix(part.shape[-1], feats.shape[-1])
            return (by.T @ part @ bx).flatten(1) @ feats.flatten(1).T

        def add(term: torch.Tensor) -> None:
            nonlocal out
            out = term if out.shape[1] == 0 else out + term

        for views, weight, scale in self._views(image, masks, (h, w)):
            if scale is None:  # the global view
                add(weight * pool(weights, views[0]))
                continue
            count = torch.zeros(h, w)
            for y1, y2, x1, x2 in scale:
                count[y1:y2, x1:x2] += 1
            shared = weights / count
            for (y1, y2, x1, x2), feats in views:
                add(weight * pool(shared[:, y1:y2, x1:x2], feats))
        return out / areas.clamp(min=1)[:, None], areas

    def _views(self, image: np.ndarray, masks: torch.Tensor, size: tuple[int, int]):
        """Yield (patch features, weight in the final map, window boxes or None for the global view)."""
        s, clip = self.settings, self.clip
        h, w = size
        pixels = normalize(resize_image(image, (h, w)), clip.mean, clip.std)
        small = F.interpolate(masks[:, None].to(torch.uint8), size=(h, w), mode="nearest")[:, 0] > 0
        p = clip.patch_size

        def biased(batch: torch.Tensor, boxes) -> torch.Tensor:
            grid = (batch.shape[-2] // p, batch.shape[-1] // p)
            bias = torch.stack(
                [
                    discrimination_bias(small[:, y1:y2, x1:x2], grid, patches_see_cls=s.patches_see_cls)
                    for y1, y2, x1, x2 in boxes
                ]
            )
            return clip.dense_features(batch.to(self.device), "sclip", bias=bias.to(self.device)).float().cpu()

        with autocast(self.device, s.precision):
            if s.global_weight > 0:
                yield biased(pixels[None], [(0, h, 0, w)]), s.global_weight, None
            if s.global_weight < 1:
                windows = s.windows()
                for k, window in enumerate(windows):  # running mixture m <- 0.5 m + 0.5 m_k, as weights
                    mix = 0.5 ** (len(windows) - 1) if k == 0 else 0.5 ** (len(windows) - k)
                    boxes = window_grid(h, w, *window)
                    feats = []  # type: ignore[var-annotated]
                    for a in range(0, len(boxes), s.window_batch):
                        chunk = boxes[a : a + s.window_batch]
                        crops = torch.stack([pixels[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
                        feats.extend(zip(chunk, biased(crops, chunk)))
                    yield feats, (1 - s.global_weight) * mix, boxes

    def embed(self, image: np.ndarray, keep_map: bool = False) -> MaskEmbeddings:
        """SAM masks of ``image`` and one L2-normalised DBA-CLIP embedding per mask; ``keep_map``
        also returns the DBA-CLIP map (for per-pixel scores), otherwise it is never built."""
        h, w = image.shape[:2]
        maskset = self.generator.generate(image)
        masks = torch.from_numpy(maskset.masks()) if len(maskset) else torch.zeros(0, h, w, dtype=torch.bool)
        fmap = None
        if keep_map:
            fmap = self.embedding_map(image, masks)
            pooled, areas = mask_pool(fmap, masks, mode="upsample")
        else:
            pooled, areas = self.pooled_embeddings(image, masks)
        return MaskEmbeddings(maskset, masks, F.normalize(pooled, dim=-1), areas, mask_levels(maskset), fmap)

    # -- classification
    def text_scores(
        self, embeddings: torch.Tensor, vocab: Vocabulary, candidates: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(N, D)`` normalised embeddings -> ``(C, N)`` text-classifier probabilities (§1.4).

        ``candidates`` (C,) or (N, C) bool limits the softmax to those classes' queries (WSSS image
        tags); background queries always take part.
        """
        s = self.settings
        text = embed_queries(self.clip, list(vocab.queries), self.templates)
        qc = torch.tensor(vocab.query_class)
        cos = text @ embeddings.T  # (Q, N)
        if candidates is not None:
            cand = candidates if candidates.ndim == 2 else candidates[None].expand(len(embeddings), -1)
            allowed = cand.T[qc.clamp(min=0)] | (qc < 0)[:, None]  # (Q, N)
            if vocab.has_background:
                allowed = allowed | (qc == 0)[:, None]
            cos = cos.masked_fill(~allowed, -1e4)
        probs = class_probabilities(cos, qc, vocab.num_classes, s.logit_scale * s.gamma)
        first = 1 if vocab.has_background else 0
        if s.norm and probs.shape[1] > 1:  # per-class min-max across this image's masks
            fg = probs[first:]
            lo, hi = fg.amin(1, keepdim=True), fg.amax(1, keepdim=True)
            probs[first:] = (fg - lo) / (hi - lo).clamp(min=1e-12)
        if candidates is not None:  # exactly 0 outside the candidates (the min-max above may lift them)
            keep = cand.T.clone()
            keep[0] |= vocab.has_background
            probs = probs * keep
        if vocab.has_background:
            if s.background_method == "pow":
                probs[0] = (1 - probs[1:].amax(0)).clamp(min=0) ** s.background_power
            else:
                probs[0] = probs[0] ** s.background_power
        return probs

    def class_scores(self, embeddings: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """``(C, N)`` scores of the fitted classifier if there is one, else of the text classifier."""
        if self.classifier is not None and self.classifier.glcc is not None:
            self.classifier.check_vocabulary(vocab)
            return self.classifier.glcc.predict(embeddings).T
        return self.text_scores(embeddings, vocab)

    def _pixel_scores(self, fmap: torch.Tensor, vocab: Vocabulary, size: tuple[int, int]) -> torch.Tensor:
        flat = F.normalize(upsample_rows(fmap, size).flatten(1).T, dim=-1)
        if self.classifier is not None and self.classifier.glcc is not None:
            return self.classifier.glcc.probe.scores(flat).T.reshape(-1, *size)  # type: ignore[union-attr]  # the probe: kNN per pixel is too slow
        return self.text_scores(flat, vocab).view(-1, *size)

    @torch.no_grad()
    def segment(self, image: np.ndarray, vocab: Vocabulary, return_probs: bool = False) -> MethodOutput:
        h, w = image.shape[:2]
        s = self.settings
        if self.classifier is not None:  # before any model runs, and whether or not SAM finds masks
            self.classifier.check_vocabulary(vocab)
        me = self.embed(image, keep_map=s.unpainted == "dense" or return_probs)
        fill = np.full((h, w), IGNORE if s.unpainted == "ignore" else 0, dtype=np.int32)
        dense = None
        if s.unpainted == "dense" or return_probs:
            assert me.feature_map is not None
            dense = self._pixel_scores(me.feature_map, vocab, (h, w))
            if s.unpainted == "dense":
                fill = dense.argmax(0).numpy().astype(np.int32)
        scores = self.class_scores(me.embeddings, vocab) if len(me.masks) else torch.zeros(vocab.num_classes, 0)
        labels = paint(me.masks, me.levels, scores, fill)
        return MethodOutput(labels, dense.numpy() if return_probs and dense is not None else None)


SPEC = register_method(
    MethodSpec(
        "tuss",
        "TUSS: SAM level-aware masks, DBA-CLIP mask embeddings, text classifier or a fitted GLCC, painting",
        TUSSMethod,
        TUSSSettings(),
        ("clip", "sam"),
        "Yang & Gong, arXiv 2405.14294",
        family="tuss",
        tier="B",
        checkpoint="optional",
        commands={"fit": FIT},
    )
)
