"""SAM 3's text-prompted instance masks as a mask source: ``Sam3MaskGenerator(...).generate(image) -> MaskSet``.

SAM 3 finds every instance of a concept named in text. With a generic prompt (``"object"``) or a
list of prompts it serves as a class-agnostic proposal generator for label refinement
(``Segmenter(refine={"generator": Sam3MaskGenerator(...)})``) and for mask-based methods.
The image is encoded once and all prompts are grounded over the shared features in chunks.

A record's ``predicted_iou`` holds SAM 3's detection score (class probability times presence), the
closest thing SAM 3 has to SAM's predicted IoU; ``prompt`` names the text that found it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io import ImageInput, load_image
from ..models.loading import TINY_RANDOM
from ..models.sam3 import Sam3Backbone, load_sam3
from . import amg
from .maskset import MaskSet

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


class Sam3MaskGenerator:
    """Instance masks of SAM 3 for the given text prompts, highest score first.

    ``confidence_threshold``: detection score a query needs; ``mask_threshold``: probability
    above which a pixel is in the mask; ``min_area``: smaller masks (and empty ones) are dropped; ``nms_thresh``:
    box-IoU non-maximum suppression across all prompts (``None`` = off; SAM 3's queries are already
    de-duplicated within a prompt); ``max_masks``: keep at most this many.
    """

    name = "sam3"

    def __init__(
        self,
        sam3: Sam3Backbone | str = TINY_RANDOM,
        prompts: Sequence[str] | str = ("object",),
        confidence_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        min_area: int = 0,
        nms_thresh: float | None = None,
        max_masks: int | None = None,
        prompt_batch: int = 16,
        device: torch.device | str | None = None,
        output_mode: str = "binary_mask",
    ) -> None:
        if isinstance(sam3, str):
            from ..device import resolve_device

            sam3 = load_sam3(sam3, resolve_device(device))
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        prompts = [" ".join(p.split()) for p in prompts if isinstance(p, str) and p.strip()]
        if not prompts:
            raise InputError('Sam3MaskGenerator needs at least one text prompt, e.g. prompts=["object"]')
        for name, value in (("confidence_threshold", confidence_threshold), ("mask_threshold", mask_threshold)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} {value} must be between 0 and 1")
        if nms_thresh is not None and not 0.0 < nms_thresh <= 1.0:
            raise InputError(f"nms_thresh {nms_thresh} must be in (0, 1] or None")
        if min_area < 0 or prompt_batch < 1 or (max_masks is not None and max_masks < 1):
            raise InputError("min_area must be >= 0, prompt_batch >= 1 and max_masks >= 1 (or None)")
        if output_mode not in OUTPUT_MODES:
            raise InputError(f"unknown output_mode {output_mode!r}; use one of {', '.join(OUTPUT_MODES)}")
        self.sam3 = sam3
        self.prompts = prompts
        self.confidence_threshold = confidence_threshold
        self.mask_threshold = mask_threshold
        self.min_area = min_area
        self.nms_thresh = nms_thresh
        self.max_masks = max_masks
        self.prompt_batch = prompt_batch
        self.output_mode = output_mode

    def info(self) -> dict[str, Any]:
        settings = {
            "prompts": self.prompts,
            "confidence_threshold": self.confidence_threshold,
            "mask_threshold": self.mask_threshold,
            "min_area": self.min_area,
            "nms_thresh": self.nms_thresh,
            "max_masks": self.max_masks,
        }
        return {"generator": self.name, "model": self.sam3.name, "settings": settings}

    @torch.no_grad()
    def generate(self, image: ImageInput) -> MaskSet:
        from ..models.sam3 import detection_scores, mask_probabilities

        img = load_image(image)
        h, w = img.shape[:2]
        vision = self.sam3.encode_image(self.sam3.pixels(img))
        feats, text_mask = self.sam3.encode_text(self.prompts, batch_size=max(self.prompt_batch, 64))
        found: list[tuple[float, str, np.ndarray]] = []
        for start in range(0, len(self.prompts), self.prompt_batch):
            chunk = slice(start, start + self.prompt_batch)
            out = self.sam3.ground(vision, feats[chunk], text_mask[chunk])
            scores, _ = detection_scores(out)
            for p, prompt in enumerate(self.prompts[chunk]):
                for q in (scores[p] > self.confidence_threshold).nonzero().flatten().tolist():
                    mask = (mask_probabilities(out.pred_masks[p, q : q + 1], (h, w))[0] > self.mask_threshold).cpu()
                    area = int(mask.sum())
                    if area > 0 and area >= self.min_area:
                        found.append((float(scores[p, q]), prompt, mask.numpy()))
        found.sort(key=lambda item: -item[0])
        if self.nms_thresh is not None and len(found) > 1:
            stacked = torch.from_numpy(np.stack([m for _, _, m in found]))
            keep = amg.nms(amg.masks_to_boxes(stacked).float(), torch.tensor([s for s, _, _ in found]), self.nms_thresh)
            found = [found[i] for i in sorted(keep.tolist())]
        if self.max_masks is not None:
            found = found[: self.max_masks]
        return MaskSet(
            [self._record(score, prompt, mask, (h, w)) for score, prompt, mask in found], (h, w), self.info()
        )

    def _record(self, score: float, prompt: str, mask: np.ndarray, image_hw: tuple[int, int]) -> dict[str, Any]:
        rle = amg.rle_encode(mask[None])[0]
        box = amg.masks_to_boxes(torch.from_numpy(mask[None]))[0].tolist()
        if self.output_mode == "binary_mask":
            seg: Any = mask
        elif self.output_mode == "coco_rle":
            seg = amg.to_coco_rle(rle)
        else:
            seg = rle
        return {
            "segmentation": seg,
            "area": amg.rle_area(rle),
            "bbox": [int(v) for v in amg.xyxy_to_xywh(box)],
            "predicted_iou": score,
            "point_coords": None,
            "stability_score": None,
            "crop_box": [0, 0, image_hw[1], image_hw[0]],
            "level": None,
            "prompt": prompt,
        }
