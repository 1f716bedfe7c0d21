"""TUSS, open-vocabulary setting: nothing trained (METHODS.md §1.2-1.4).

1. SAM masks with the level-aware ``tuss`` preset.
2. DBA-CLIP: SCLIP's correlative last block with the discrimination bias built from the masks
   (per window: masks cropped to it), on a global view and 224/56 sliding windows, averaged
   half and half; each mask's embedding is the mean of the upsampled map over its pixels.
3. Text classifier: softmax over all queries of (CLIP logit scale x gamma x cosine), synonyms
   by max; background by the ``pow`` rule, bg = (1 - max foreground)^p.
4. Painting in ascending (level, confidence) order; pixels under no mask get class 0 as the
   reference code does (``unpainted="zero"``) or their own per-pixel label (``"dense"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...device import autocast, check_precision
from ...errors import InputError
from ...masks.pooling import mask_pool
from ...ops.dba import discrimination_bias
from ...ops.postprocess import class_probabilities
from ...ops.resize import keep_ratio_size, normalize, resize_image, upsample_rows
from ...ops.text import embed_queries
from ...ops.windows import slide
from ...templates import get_templates
from ...vocab import Vocabulary
from ..base import Method, MethodOutput, MethodSpec, register_method


@dataclass(frozen=True)
class TUSSSettings:
    short_side: int = 448  # §1.3: short side 448, long side rounded up to a multiple of 16
    size_multiple: int = 16
    window: tuple[int, int] | None = (224, 56)
    global_weight: float = 0.5  # final map = w * global + (1 - w) * sliding
    patches_see_cls: bool = True  # False: Cityscapes OV configuration
    templates: str = "vild_14"  # §1.4 default ("origami" for the final-looking VOC configs)
    logit_scale: float = 100.0  # exp(CLIP logit scale) for OpenAI CLIP
    gamma: float = 1.0
    background_power: float = 1.0  # pow rule p (swept in the reference on the test split; fixed here)
    unpainted: str = "zero"  # zero (reference code) | dense (per-pixel classification)
    sam_preset: str = "tuss"
    precision: str = "fp32"
    window_batch: int = 8

    def validate(self) -> None:
        check_precision(self.precision)
        get_templates(self.templates)
        if self.unpainted not in ("zero", "dense"):
            raise InputError(f"unpainted {self.unpainted!r} must be zero or dense")
        if not 0.0 <= self.global_weight <= 1.0 or (self.window is None and self.global_weight < 1.0):
            raise InputError("global_weight must lie in [0, 1], and be 1 without windows")


class TUSSMethod(Method):
    needs = ("clip", "sam")

    def __init__(self, backbones, settings: TUSSSettings, device: torch.device) -> None:
        from ...masks.sam import SamMaskGenerator

        settings.validate()
        super().__init__(backbones, settings, device)
        self.clip = backbones["clip"]
        sam = backbones["sam"]
        # a ready mask generator (anything with .generate(image) -> MaskSet) is used as it is
        self.generator = sam if hasattr(sam, "generate") else SamMaskGenerator(sam, preset=settings.sam_preset,
                                                                              device=device)  # fmt: skip
        self.templates = get_templates(settings.templates)

    def embedding_map(self, image: np.ndarray, masks: torch.Tensor) -> torch.Tensor:
        """DBA-CLIP ``(D, h, w)`` map at the resized size (global and sliding views averaged)."""
        s, clip = self.settings, self.clip
        h, w = keep_ratio_size(*image.shape[:2], s.short_side)
        h, w = -(-h // s.size_multiple) * s.size_multiple, -(-w // s.size_multiple) * s.size_multiple
        pixels = normalize(resize_image(image, (h, w)), clip.mean, clip.std)
        small = F.interpolate(masks[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5
        p = clip.patch_size

        def biased(batch: torch.Tensor, boxes) -> torch.Tensor:
            grid = (batch.shape[-2] // p, batch.shape[-1] // p)
            bias = torch.stack([discrimination_bias(small[:, y1:y2, x1:x2], grid, patches_see_cls=s.patches_see_cls)
                                for y1, y2, x1, x2 in boxes])  # fmt: skip
            return clip.dense_features(batch.to(self.device), "sclip", bias=bias.to(self.device)).float()

        with autocast(self.device, s.precision):
            whole = biased(pixels[None], [(0, h, 0, w)])
            views = F.interpolate(whole, size=(h, w), mode="bilinear", align_corners=False)[0].cpu()
            if s.window is not None and s.global_weight < 1.0:
                sliding = slide(pixels, biased, s.window, s.window_batch, with_boxes=True)
                views = s.global_weight * views + (1 - s.global_weight) * sliding
        return views

    def class_scores(self, embeddings: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """``(N, D)`` normalised embeddings -> ``(C, N)`` class probabilities (background by pow)."""
        s = self.settings
        text = embed_queries(self.clip, list(vocab.queries), self.templates)
        probs = class_probabilities(text @ embeddings.T, torch.tensor(vocab.query_class), vocab.num_classes,
                                    s.logit_scale * s.gamma)  # fmt: skip
        if vocab.has_background:
            probs[0] = (1 - probs[1:].amax(0)).clamp(min=0) ** s.background_power
        return probs

    @torch.no_grad()
    def segment(self, image: np.ndarray, vocab: Vocabulary, return_probs: bool = False) -> MethodOutput:
        h, w = image.shape[:2]
        maskset = self.generator.generate(image)
        masks = torch.from_numpy(maskset.masks())
        emb = self.embedding_map(image, masks if len(masks) else torch.zeros(0, h, w, dtype=torch.bool))
        labels = np.zeros((h, w), dtype=np.int32)
        if self.settings.unpainted == "dense" or return_probs:
            flat = F.normalize(upsample_rows(emb, (h, w)).flatten(1).T, dim=-1)
            dense = self.class_scores(flat, vocab).view(-1, h, w)
            if self.settings.unpainted == "dense":
                labels = dense.argmax(0).numpy().astype(np.int32)
        if len(masks):
            pooled, _ = mask_pool(emb, masks, mode="upsample")
            probs = self.class_scores(F.normalize(pooled, dim=-1), vocab)
            conf, label = probs.max(0)
            levels = [2 if r.get("level") is None else int(r["level"]) for r in maskset]
            for i in sorted(range(len(masks)), key=lambda i: (levels[i], float(conf[i]))):  # whole, sure masks last
                labels[masks[i].numpy()] = int(label[i])
        return MethodOutput(labels, dense.numpy() if return_probs else None)


register_method(
    MethodSpec(
        "tuss",
        "TUSS open-vocabulary: SAM level-aware masks, DBA-CLIP mask embeddings, text classifier, painting",
        TUSSMethod,
        TUSSSettings(),
        ("clip", "sam"),
        "Yang & Gong, arXiv 2405.14294",
    )
)
