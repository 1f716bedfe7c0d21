"""The ``sam3`` method: SAM 3 prompted with every class name, fused as SegEarth-OV3 does.

Per image (or per sliding window of a large image) the SAM 3 vision tower runs once; all text
queries (class names, synonyms, background words) are encoded once per call and grounded over the
shared vision features in chunks of at most ``prompt_batch`` prompts, so memory does not grow
with the number of classes. Each prompt gives a fused map (:mod:`.fusion`); a class takes the max
over its synonyms; the label is the argmax over classes, and with a background class, pixels whose
best value is under ``prob_thd`` become class 0.

Without windows and without ``return_probs`` the argmax runs as a running max over chunks (one
``H x W`` map, whatever the number of classes). With windows, per-query maps are averaged over
the windows covering each pixel before the synonym max (the official sliding-window order).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ...device import autocast, check_precision
from ...errors import InputError
from ...memory import check_fits
from ...models.sam3 import Sam3Backbone
from ...ops.windows import window_grid
from ...vocab import Vocabulary
from ..base import Method, MethodOutput
from .fusion import fuse_prompt_maps

TIER = "supervised concept segmenter, trained on SA-Co (not annotation-free)"


@dataclass(frozen=True)
class Sam3Settings:
    confidence_threshold: float = 0.5  # a query is an instance when class prob x presence exceeds this
    prob_thd: float = 0.0  # with a background class: pixels whose best fused value is below this -> class 0
    threshold_mode_prob: float = 0.5  # prob_thd used for background="threshold" when prob_thd is 0
    use_instances: bool = True  # the score-weighted instance masks (DETR head)
    use_semantic: bool = True  # the semantic head's map
    use_presence: bool = True  # multiply by the presence score
    window: tuple[int, int] | None = (1008, 672)  # (crop, stride) for images with a side over crop; None = never
    prompt_batch: int = 16  # most text prompts grounded in one pass (the memory bound)
    mask_batch: int = 32  # most instance masks upsampled at once
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 on CUDA only)

    def validate(self) -> None:
        check_precision(self.precision)
        for name in ("confidence_threshold", "prob_thd", "threshold_mode_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} {value} must be between 0 and 1")
        if self.window is not None and (
            len(self.window) != 2 or min(self.window) < 1 or self.window[1] > self.window[0]
        ):
            raise InputError(f"window {self.window} must be (crop, stride) with 1 <= stride <= crop, or None")
        if self.prompt_batch < 1 or self.mask_batch < 1:
            raise InputError("prompt_batch and mask_batch must be at least 1")
        if not (self.use_instances or self.use_semantic):
            raise InputError("use_instances and use_semantic are both off; turn at least one on")


class Sam3Method(Method):
    needs = ("sam",)
    tier = TIER

    def __init__(self, backbones, settings: Sam3Settings, device: torch.device) -> None:
        settings.validate()
        super().__init__(backbones, settings, device)
        self.sam3: Sam3Backbone = backbones["sam"]

    def effective_prob_thd(self, vocab: Vocabulary) -> float:
        s = self.settings
        if vocab.background == "threshold" and s.prob_thd == 0.0:
            return s.threshold_mode_prob
        return s.prob_thd

    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """``(y1, y2, x1, x2)`` boxes: the whole image unless a side exceeds the window's crop."""
        w = self.settings.window
        if w is None or (height <= w[0] and width <= w[0]):
            return [(0, height, 0, width)]
        return window_grid(height, width, *w)

    @torch.no_grad()
    def query_maps(
        self, image: np.ndarray, text: tuple[torch.Tensor, torch.Tensor]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first query index, fused maps (P, H, W))`` per chunk of prompts, on the CPU.

        The image is encoded once; every chunk reuses its vision features."""
        s = self.settings
        feats, mask = text
        size = image.shape[:2]
        with autocast(self.device, s.precision):
            vision = self.sam3.encode_image(self.sam3.pixels(image))
        for start in range(0, feats.shape[0], s.prompt_batch):
            with autocast(self.device, s.precision):
                chunk = slice(start, start + s.prompt_batch)
                out = self.sam3.ground(vision, feats[chunk], mask[chunk])
            maps = fuse_prompt_maps(
                out, size, s.confidence_threshold, s.use_instances, s.use_semantic, s.use_presence, s.mask_batch
            )
            yield start, maps.cpu()

    @torch.no_grad()
    def segment(self, image: np.ndarray, vocab: Vocabulary, return_probs: bool = False) -> MethodOutput:
        from tqdm import tqdm

        queries = list(vocab.queries)
        if not queries:
            raise InputError('sam3 needs at least one class name to prompt; pass classes like "cat; sofa, couch"')
        height, width = image.shape[:2]
        boxes = self.windows(height, width)
        if len(boxes) > 1 or return_probs:  # per-query maps at full size: refused in one line if they cannot fit
            pixels = height * width
            check_fits(
                {"query maps": 4 * len(queries) * pixels, "class probabilities": 4 * vocab.num_classes * pixels},
                f"a {width}x{height} image with {len(queries)} text queries",
                "downscale the image, use fewer classes, or drop return_probs / set window=None",
            )
        text = self.sam3.encode_text(queries, batch_size=max(self.settings.prompt_batch, 64))
        owner = torch.tensor(vocab.query_class, dtype=torch.long)
        chunks = -(-len(queries) // self.settings.prompt_batch)
        bar = tqdm(
            total=len(boxes) * chunks,
            desc="sam3 prompts",
            unit="chunk",
            file=sys.stderr,
            leave=False,
            disable=len(boxes) * chunks < 4,
        )
        probs = None
        if len(boxes) == 1 and not return_probs:
            best = torch.zeros(height, width)
            labels = torch.zeros(height, width, dtype=torch.long)
            for start, maps in self.query_maps(image, text):
                value, arg = maps.max(0)
                better = value > best  # strict: ties keep the earlier query, hence the lower class
                best = torch.where(better, value, best)
                labels = torch.where(better, owner[start + arg], labels)
                bar.update()
        else:
            total = torch.zeros(len(queries), height, width)
            count = torch.zeros(height, width)
            for y1, y2, x1, x2 in boxes:
                for start, maps in self.query_maps(image[y1:y2, x1:x2], text):
                    total[start : start + maps.shape[0], y1:y2, x1:x2] += maps
                    bar.update()
                count[y1:y2, x1:x2] += 1
            total /= count
            # A class's map is the max over its synonyms (fused values are >= 0, so zeros are neutral).
            probs = torch.zeros(vocab.num_classes, height, width)
            for query, owner_class in enumerate(vocab.query_class):
                torch.maximum(probs[owner_class], total[query], out=probs[owner_class])
            best, labels = probs.max(0)
        bar.close()
        if vocab.has_background:
            labels[best < self.effective_prob_thd(vocab)] = 0
        return MethodOutput(labels.numpy().astype(np.int32), None if probs is None else probs.numpy())
