"""The public API: ``Segmenter(method=..., clip=...).segment(image, classes) -> SegResult``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .device import resolve_device
from .io import DEFAULT_MAX_PIXELS, ImageInput, load_image
from .methods.settings import build_method
from .models.loading import TINY_RANDOM
from .models.registry import ModelCache, load_backbone
from .result import SegResult
from .vocab import Vocabulary, build_vocabulary, no_classes


class Segmenter:
    """Open-vocabulary semantic segmentation of images with any class names.

    >>> seg = Segmenter(method="sclip", clip="openai/clip-vit-base-patch16")
    >>> result = seg.segment("photo.jpg", "cat; sofa, couch; potted plant", background="words")
    >>> result.save_png("photo_labels.png")

    ``clip`` and ``dino`` take a Hugging Face hub id, a local directory or ``"tiny-random"``
    (methods with a trained ``checkpoint`` default to the backbones it records); ``device``
    defaults to CUDA when present. Any method setting can be overridden by keyword
    (``Segmenter("sclip", logit_scale=50, window=(448, 224))``); see ``ovss methods``.
    """

    def __init__(
        self,
        method: str = "sclip",
        clip: Any = None,
        device: str | torch.device | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        dino: Any = None,
        sam: Any = None,
        checkpoint: Any = None,
        refine: dict[str, Any] | None = None,
        benchmark: str | None = None,
        protocol: str | None = None,
        cache: ModelCache | None = None,
        **settings: Any,
    ) -> None:
        self.device = resolve_device(device)
        self.max_pixels = max_pixels
        # protocol (with a benchmark) < checkpoint < the caller's own settings; every origin recorded
        built = build_method(
            method,
            self.device,
            {"clip": clip, "dino": dino, "sam": sam},
            checkpoint,
            benchmark,
            protocol,
            cache,
            **settings,
        )
        self.spec, self.method, self.backbone_names = built.spec, built.method, built.backbone_names
        self.settings, self.provenance = built.resolved.settings, built.resolved.provenance
        self.protocol, self.checkpoint = built.resolved.protocol, built.resolved.checkpoint
        self.refine = self._refiner(refine, cache)

    def _refiner(self, refine: dict[str, Any] | None, cache: ModelCache | None = None):
        """SAM mask refinement (docs/methods.md §5.8): ``{"sam": name, "preset": ..., "vote": "labels"|"logits"}``."""
        if not refine:
            return None
        from .errors import InputError
        from .masks.sam import SamMaskGenerator

        unknown = set(refine) - {"sam", "preset", "vote", "min_area", "generator"}
        if unknown or refine.get("vote", "labels") not in ("labels", "logits"):
            raise InputError("refine takes sam=, preset=, vote='labels'|'logits', min_area= or generator=")
        generator = refine.get("generator")  # any object with .generate(image) -> MaskSet
        if generator is None:
            sam = load_backbone("sam", refine.get("sam"), self.device, cache)
            generator = SamMaskGenerator(sam, preset=refine.get("preset", "corrclip"), device=self.device)
        self.backbone_names["sam"] = getattr(getattr(generator, "sam", None), "name", None) or getattr(  # type: ignore[assignment]
            generator, "name", "custom"
        )
        return {
            "generator": generator,
            "vote": refine.get("vote", "labels"),
            "min_area": refine.get("min_area", 0),
            "preset": refine.get("preset", "corrclip"),
        }

    def segment(
        self,
        image: ImageInput,
        classes: str | list[str] | Vocabulary | None = None,
        background: str | list[str] | None = None,
        return_probs: bool = False,
    ) -> SegResult:
        """Label every pixel of ``image`` with one of ``classes``.

        ``classes``: ``"cat; sofa, couch; plant"`` (``;`` between classes, ``,`` between synonyms)
        or a list. ``background``: ``None`` (no background class), ``"words"`` (class 0 queried by
        26 background words), ``"threshold"`` (class 0 below ``prob_thd``) or a list of words.
        ``classes`` may be left out with a fitted classifier (``tuss`` with a checkpoint): its classes.
        """
        vocab = self._vocabulary(classes, background)
        rgb = load_image(image, self.max_pixels)
        start = time.perf_counter()
        vote_logits = bool(self.refine) and self.refine["vote"] == "logits"
        out = self.method.segment(rgb, vocab, return_probs=return_probs or vote_logits)
        if self.refine:
            from .masks.pooling import refine_labels

            masks = self.refine["generator"].generate(rgb)
            out.labels = refine_labels(
                out.labels, masks, out.probs if vote_logits else None, self.refine["vote"], self.refine["min_area"]
            ).astype(np.int32)
            if not return_probs:
                out.probs = None
        seconds = time.perf_counter() - start
        return SegResult(out.labels, list(vocab.names), out.probs, rgb, self._info(vocab, seconds))

    def segment_many(
        self,
        images: Sequence[ImageInput],
        classes: str | list[str] | Vocabulary | None = None,
        background: str | list[str] | None = None,
        return_probs: bool = False,
    ) -> list[SegResult]:
        """:meth:`segment` of several images at once: dense-CLIP methods share window batches across
        them (the same labels as one call per image, docs/speed.md); other methods, and SAM
        refinement, take them one at a time. Every image is loaded and checked first. Each result's
        ``info["seconds"]`` is the batch's time divided by the number of images."""
        if self.refine or not hasattr(self.method, "segment_many"):
            return [self.segment(image, classes, background, return_probs) for image in images]
        vocab = self._vocabulary(classes, background)
        rgbs = [load_image(image, self.max_pixels) for image in images]
        start = time.perf_counter()
        outs = self.method.segment_many(rgbs, vocab, return_probs=return_probs)
        info = self._info(vocab, (time.perf_counter() - start) / max(len(rgbs), 1))
        return [SegResult(o.labels, list(vocab.names), o.probs, rgb, dict(info)) for o, rgb in zip(outs, rgbs)]

    def _vocabulary(
        self, classes: str | list[str] | Vocabulary | None, background: str | list[str] | None
    ) -> Vocabulary:
        if classes is not None:
            return build_vocabulary(classes, background)
        fixed = getattr(self.method, "vocabulary", None)  # a fitted classifier knows its classes
        if fixed is None:
            raise no_classes()
        return fixed

    def refine_settings(self) -> dict[str, Any] | None:
        if not self.refine:
            return None
        keys = ("preset", "vote", "min_area")
        return {"method": "sam", **{k: self.refine[k] for k in keys}, "model": self.backbone_names.get("sam")}

    def dense_features(self, image: ImageInput) -> np.ndarray:
        """The method's language-aligned ``(D, h, w)`` patch embeddings, where it has them."""
        if not hasattr(self.method, "dense_features"):
            raise NotImplementedError(f"method {self.spec.name!r} has no dense feature map")
        return self.method.dense_features(load_image(image, self.max_pixels))

    def _info(self, vocab: Vocabulary, seconds: float) -> dict[str, Any]:
        settings = {k: v for k, v in vars(self.settings).items()}
        if hasattr(self.method, "effective_prob_thd"):
            settings["prob_thd"] = self.method.effective_prob_thd(vocab)
        models = dict(self.backbone_names)
        if self.refine:
            settings["refine"] = self.refine_settings()
        if self.checkpoint is not None:
            models["checkpoint"] = str(self.checkpoint.path)
        return {
            "method": self.spec.name,
            "tier": self.spec.tier,
            "settings": settings,
            "provenance": dict(self.provenance),
            "vocabulary": vocab.to_dict(),
            "models": models,
            "random_weights": [k for k, v in models.items() if v == TINY_RANDOM],
            "device": str(self.device),
            "ovss_version": __version__,
            "seconds": round(seconds, 4),
        }
