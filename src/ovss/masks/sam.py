"""SAM and SAM2 from transformers, and an automatic mask generator with Meta's semantics.

``load_sam(name)`` accepts a hub id (``facebook/sam-vit-base``, ``facebook/sam2.1-hiera-tiny``),
a local ``save_pretrained`` directory, an original Meta SAM checkpoint (``sam_vit_b_01ec64.pth``),
or ``tiny-random`` / ``tiny-random-sam2``: small random models for tests and smoke runs.

:class:`SamMaskGenerator` is our own loop over the model (not transformers' mask-generation
pipeline, which needs torchvision). For SAM with ``decoder="meta"`` (the ``exact`` preset) it
reproduces Meta's ``SamAutomaticMaskGenerator`` pixel for pixel (tests/parity; ``meta_order.py``)
and is faster on CPUs: the image encoder runs once per image and crop, the decoder's
prompt-independent work once per crop, and the IoU filter runs before any mask is upscaled.
``decoder="fused"`` re-associates the decoder for more speed (``decoder.py`` explains each step).
Prompts run in batches, so memory stays bounded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError
from ..io import ImageInput, load_image
from ..models.loading import TINY_RANDOM
from ..models.sam import (
    SAM2_MEAN,
    SAM2_STD,
    SAM_MEAN,
    SAM_STD,
    SamBackbone,
    load_sam,
)
from . import amg
from . import meta_order as _meta
from .decoder import Sam2CropState, SamCropState
from .maskdata import MaskData
from .maskset import MaskSet
from .presets import AMGSettings, make_settings

# Loading lives in ovss.models.sam; the generator below only uses it.


# -------------------------------------------------------------------------- preprocessing


def resized_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """Meta's ``ResizeLongestSide.get_preprocess_shape``."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sam_pixels(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """SAM input: long side resized to ``size`` (PIL bilinear, as Meta's predictor), normalised
    with Meta's mean/std, zero-padded to ``size x size``. Returns pixels and the resized (h, w)."""
    h, w = resized_shape(image.shape[0], image.shape[1], size)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))  # type: ignore[attr-defined]
    x = torch.from_numpy(resized.copy()).permute(2, 0, 1).float()
    x = (x - torch.tensor(SAM_MEAN).view(3, 1, 1)) / torch.tensor(SAM_STD).view(3, 1, 1)
    x = F.pad(x, (0, size - w, 0, size - h))
    return x[None], (h, w)


def sam2_pixels(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """SAM2 input: squashed to ``size x size`` (bilinear with antialiasing on 0-1 floats), normalised
    with the ImageNet mean/std (Meta's ``SAM2Transforms``)."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(SAM2_MEAN).view(1, 3, 1, 1)) / torch.tensor(SAM2_STD).view(1, 3, 1, 1)
    return x, (size, size)


# ------------------------------------------------------------------------------ generator


@dataclass
class _Batch:
    rles: list[dict[str, Any]]
    boxes: torch.Tensor  # (M, 4) crop frame, inclusive XYXY
    iou: torch.Tensor
    stability: torch.Tensor
    points: np.ndarray  # (M, 2) crop frame
    levels: list[int | None]


class SamMaskGenerator:
    """Automatic masks from a point grid over the image and its crops (Meta's AMG semantics).

    ``SamMaskGenerator(sam, preset="exact", **overrides).generate(image) -> MaskSet``; ``sam`` is
    a :class:`SamBackbone` or a name for :func:`load_sam`. Settings: :class:`AMGSettings`.
    """

    name = "sam"

    def __init__(
        self,
        sam: SamBackbone | str = TINY_RANDOM,
        preset: str | None = "exact",
        device: torch.device | str | None = None,
        settings: AMGSettings | None = None,
        **overrides: Any,
    ) -> None:
        if isinstance(sam, str):
            from ..device import resolve_device

            sam = load_sam(sam, resolve_device(device))
        self.sam = sam
        base = settings if settings is not None else make_settings(preset)
        if overrides:
            base = base.replace(**overrides)
        if base.pred_iou_thresh is None:
            base = base.replace(pred_iou_thresh=0.8 if sam.kind == "sam2" else 0.88)
        if sam.kind == "sam2" and base.input_size not in (None, sam.input_size):
            raise InputError("input_size can only be changed for SAM (ViT) models, not SAM2")
        self.settings = base
        self.preset = preset
        self._cached: tuple[Any, Any] | None = None  # (image key, encoded state) for predict_points
        # False: the code path before the issue-15 speed-ups (the baseline of bench/amg.py and of
        # tests/test_sam_speed.py); the masks are the same either way.
        self._fast_paths = True
        s = base
        if s.point_grids is not None:
            self.point_grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in s.point_grids]
        else:
            self.point_grids = amg.layer_point_grids(
                s.points_per_side,  # type: ignore[arg-type]
                s.crop_n_layers,
                s.crop_n_points_downscale_factor,
            )

    @property
    def input_size(self) -> int:
        return self.settings.input_size or self.sam.input_size

    def info(self) -> dict[str, Any]:
        return {
            "generator": self.name,
            "model": self.sam.name,
            "preset": self.preset,
            "settings": self.settings.to_dict(),
        }

    # -- public
    @torch.no_grad()
    def generate(self, image: ImageInput) -> MaskSet:
        """Masks of one image (path, PIL image or array), as a :class:`MaskSet`."""
        img = load_image(image)
        s = self.settings
        h, w = img.shape[:2]
        boxes, layers = amg.crop_boxes((h, w), s.crop_n_layers, s.crop_overlap_ratio)
        parts: list[MaskData] = []
        for crop, layer in zip(boxes, layers):
            if crop[2] <= crop[0] or crop[3] <= crop[1]:
                continue  # an image smaller than the crop grid gives empty crops
            parts.append(self._process_crop(img, crop, layer))
        data = MaskData.cat(parts)
        if len(parts) > 1 and len(data.rles):
            crop_t = torch.tensor(data.crop_boxes, dtype=torch.float)
            keep = amg.nms(data.boxes.float(), 1 / amg.box_area(crop_t), s.crop_nms_thresh)
            data = data.select(keep)
        if s.min_mask_region_area > 0 and len(data.rles):
            data = self._clean_small_regions(data, max(s.box_nms_thresh, s.crop_nms_thresh))
        if s.containment_thresh is not None and len(data.rles):
            stacked = torch.from_numpy(np.stack([amg.rle_decode(r) for r in data.rles]))
            keep = amg.containment_filter(stacked, data.levels, s.containment_thresh)
            data = data.select(keep)
        return self._to_maskset(data, (h, w))

    @torch.no_grad()
    def predict_points(
        self, image: ImageInput, points: np.ndarray, multimask: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One prompt per point, as Meta's ``SamPredictor.predict`` with a single foreground point:
        ``(N, 2)`` xy pixel points -> masks ``(N, L, H, W)`` bool at the image size and predicted
        IoUs ``(N, L)`` (L = 3 with multimask output, else 1). The image embedding is cached, so
        several calls on one image encode it once."""
        img = load_image(image)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        multimask = self.settings.multimask_output if multimask is None else multimask
        n_levels = 3 if multimask else 1
        h, w = img.shape[:2]
        if len(pts) == 0:
            return np.zeros((0, n_levels, h, w), dtype=bool), np.zeros((0, n_levels), dtype=np.float32)
        key = (img.shape, hashlib.sha1(img.tobytes()).hexdigest())
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._encode(img))
        state = self._cached[1]
        if isinstance(state, SamCropState):
            ih, iw = state.input_hw
            in_points = pts * np.array([[iw / w, ih / h]])
        else:
            in_points = state.to_input_frame(pts)
        with self._autocast():
            iou, _, logits = state.predict(in_points, multimask, lambda i: torch.ones_like(i, dtype=torch.bool))
        masks, _ = state.full_size(logits, self.sam.mask_threshold, self.settings.stability_score_offset)
        return masks.reshape(len(pts), n_levels, h, w).numpy(), iou.numpy()

    # -- one crop
    def _process_crop(self, image: np.ndarray, crop: list[int], layer: int) -> MaskData:
        s = self.settings
        x0, y0, x1, y1 = crop
        cropped = image[y0:y1, x0:x1]
        ch, cw = cropped.shape[:2]
        grid = self.point_grids[layer]
        points = grid * np.array([[cw, ch]], dtype=np.float64)
        if len(points) == 0:
            return MaskData.empty()
        state = self._encode(cropped)
        batches = []
        for start in range(0, len(points), s.points_per_batch):
            batch = self._process_batch(state, points[start : start + s.points_per_batch], crop, image.shape[:2])
            if batch is not None:
                batches.append(batch)
        if not batches:
            return MaskData.empty()
        rles = [r for b in batches for r in b.rles]
        boxes = torch.cat([b.boxes for b in batches])
        iou = torch.cat([b.iou for b in batches])
        stab = torch.cat([b.stability for b in batches])
        pts = np.concatenate([b.points for b in batches])
        levels = [lv for b in batches for lv in b.levels]
        nms_offset = torch.tensor([0.0 if lv is None else s.level_nms_offsets[lv] for lv in levels])
        keep = amg.nms(boxes.float(), iou + nms_offset, s.box_nms_thresh)
        k = keep.tolist()
        offset = torch.tensor([x0, y0, x0, y0])
        return MaskData(
            [rles[i] for i in k],
            boxes[keep] + offset,
            iou[keep],
            stab[keep],
            pts[k] + np.array([[x0, y0]]),
            [levels[i] for i in k],
            [list(crop) for _ in k],
        )

    def _encode(self, cropped: np.ndarray):
        sam = self.sam
        size = self.input_size
        dev = sam.device
        if sam.kind == "sam2":
            pixels, _ = sam2_pixels(cropped, size)
            with self._autocast():
                embeddings = sam.model.get_image_embeddings(pixels.to(dev))
            state = Sam2CropState(sam.model, [e.float() for e in embeddings], size, cropped.shape[:2])
        else:
            pixels, input_hw = sam_pixels(cropped, size)
            meta = self.settings.decoder == "meta"
            with self._autocast():
                emb = sam_image_embedding(sam.model, pixels.to(dev), size, meta_order=meta)
                if meta:
                    # Meta decodes a whole points_per_batch batch at once, and the token-side
                    # products round differently at other batch sizes: the same batches here
                    # (the image-side work still runs decoder_micro_batch prompts at a time).
                    state = _meta.MetaOrderSamState(
                        sam.model,
                        emb,
                        size,
                        input_hw,
                        cropped.shape[:2],
                        self.settings.points_per_batch,
                        self.settings.decoder_micro_batch,
                    )
                    # Meta upsamples (batch, 3 levels, h, w) tensors, and F.interpolate's CPU kernel
                    # rounds (n, 3, h, w) differently from (n, 1, h, w): masks go in groups of 3.
                    state.upsample_group = 3 if self.settings.multimask_output else 1
                else:
                    state = SamCropState(
                        sam.model, emb, size, input_hw, cropped.shape[:2], self.settings.decoder_micro_batch
                    )
        state.upsample = self.settings.upsample
        state.fast_paths = self._fast_paths
        return state

    def _autocast(self):
        from ..device import autocast

        return autocast(self.sam.device, self.settings.precision)

    def _process_batch(self, state, points: np.ndarray, crop: list[int], image_hw: tuple[int, int]) -> _Batch | None:
        """One batch of points (crop frame): Meta's ``_process_batch`` with the IoU filter moved
        before the mask upsampling."""
        s = self.settings
        multimask = s.multimask_output
        levels: list[int | None] = [0, 1, 2] if multimask else [None]
        iou_offset = torch.tensor([0.0 if lv is None else s.level_iou_offsets[lv] for lv in levels])

        def keep(iou: torch.Tensor) -> torch.Tensor:
            if s.pred_iou_thresh > 0:  # type: ignore[operator]
                return (iou + iou_offset) > s.pred_iou_thresh  # type: ignore[operator]
            return torch.ones_like(iou, dtype=torch.bool)

        if isinstance(state, SamCropState):
            ih, iw = state.input_hw
            ch, cw = state.crop_hw
            in_points = points * np.array([[iw / cw, ih / ch]])  # Meta's apply_coords, float64
        else:
            in_points = state.to_input_frame(points)
        with self._autocast():
            iou, pairs, logits = state.predict(in_points, multimask, keep)
        if len(pairs) == 0:
            return None
        point_idx, level_idx = pairs[:, 0], pairs[:, 1]
        sel_iou = iou[point_idx, level_idx]
        sel_levels = [levels[int(v)] for v in level_idx]
        stab_offset = torch.tensor([0.0 if lv is None else s.level_stability_offsets[lv] for lv in sel_levels])
        thr, off = self.sam.mask_threshold, s.stability_score_offset
        if s.stability_at == "low":
            vh, vw = state.valid_low_res()
            stab = amg.stability_score(logits[:, :vh, :vw], thr, off).cpu()
            if s.stability_score_thresh > 0:
                k = (stab + stab_offset) >= s.stability_score_thresh
                logits, stab, point_idx, sel_iou = logits[k.to(logits.device)], stab[k], point_idx[k], sel_iou[k]
                sel_levels = [lv for lv, ok in zip(sel_levels, k.tolist()) if ok]
            masks, _ = state.full_size(logits, thr, off)
        elif s.stability_score_thresh > 0 and self._fast_paths:
            # The filter runs chunk by chunk inside full_size, so masks are thresholded and
            # copied only for the masks that pass it (same masks, same order).
            def stable(chunk: torch.Tensor, a: int) -> torch.Tensor:
                return (chunk + stab_offset[a : a + len(chunk)]) >= s.stability_score_thresh

            masks, stab = state.full_size(logits, thr, off, keep=stable)
            k = (stab + stab_offset) >= s.stability_score_thresh
            stab, point_idx, sel_iou = stab[k], point_idx[k], sel_iou[k]
            sel_levels = [lv for lv, ok in zip(sel_levels, k.tolist()) if ok]
        else:
            masks, stab = state.full_size(logits, thr, off)
            if s.stability_score_thresh > 0:
                k = (stab + stab_offset) >= s.stability_score_thresh
                masks, stab, point_idx, sel_iou = masks[k], stab[k], point_idx[k], sel_iou[k]
                sel_levels = [lv for lv, ok in zip(sel_levels, k.tolist()) if ok]
        if len(masks) == 0:
            return None
        boxes = amg.masks_to_boxes(masks)
        near = amg.box_near_crop_edge(boxes, crop, [0, 0, image_hw[1], image_hw[0]])
        if near.any():
            k = ~near
            masks, boxes, stab, point_idx, sel_iou = masks[k], boxes[k], stab[k], point_idx[k], sel_iou[k]
            sel_levels = [lv for lv, ok in zip(sel_levels, k.tolist()) if ok]
            if len(masks) == 0:
                return None
        rles = _uncropped_rles(masks, crop, image_hw)
        return _Batch(rles, boxes, sel_iou, stab, points[point_idx.numpy()], sel_levels)

    # -- clean-up of small regions (Meta's postprocess_small_regions)
    def _clean_small_regions(self, data: MaskData, nms_thresh: float) -> MaskData:
        area = self.settings.min_mask_region_area
        new_masks, unchanged = [], []
        for rle in data.rles:
            mask = amg.rle_decode(rle)
            mask, changed_holes = amg.remove_small_regions(mask, area, "holes")
            mask, changed_islands = amg.remove_small_regions(mask, area, "islands")
            new_masks.append(torch.from_numpy(mask))
            unchanged.append(not (changed_holes or changed_islands))
        stacked = torch.stack(new_masks)
        boxes = amg.masks_to_boxes(stacked)
        keep = amg.nms(boxes.float(), torch.tensor(unchanged, dtype=torch.float), nms_thresh)
        for i in keep.tolist():
            if not unchanged[i]:
                data.rles[i] = amg.rle_encode(stacked[i : i + 1])[0]
                data.boxes[i] = boxes[i]
        return data.select(keep)

    def _to_maskset(self, data: MaskData, image_hw: tuple[int, int]) -> MaskSet:
        mode = self.settings.output_mode
        records = []
        for i, rle in enumerate(data.rles):
            if mode == "binary_mask":
                seg: Any = amg.rle_decode(rle)
            elif mode == "coco_rle":
                seg = amg.to_coco_rle(rle)
            else:
                seg = rle
            records.append(
                {
                    "segmentation": seg,
                    "area": amg.rle_area(rle),
                    "bbox": [int(v) for v in amg.xyxy_to_xywh(data.boxes[i].tolist())],
                    "predicted_iou": float(data.iou[i]),
                    "point_coords": [[float(v) for v in data.points[i]]],
                    "stability_score": float(data.stability[i]),
                    "crop_box": [int(v) for v in amg.xyxy_to_xywh(data.crop_boxes[i])],  # type: ignore[arg-type]
                    "level": data.levels[i],
                }
            )
        return MaskSet(records, image_hw, info=self.info())


def sam_image_embedding(model, pixels: torch.Tensor, size: int, meta_order: bool = False) -> torch.Tensor:
    """The ViT image embedding; at another input size than the model's, the absolute position
    table is resized bicubically (the relative tables are resized by transformers itself).
    ``meta_order``: blocks and neck in the operation order of Meta's encoder (``meta_order.py``)."""
    enc = model.vision_encoder
    same_size = size == model.config.vision_config.image_size
    if same_size and not meta_order:
        return enc(pixels).last_hidden_state
    x = enc.patch_embed.projection(pixels).permute(0, 2, 3, 1)
    pos = enc.pos_embed
    if pos is not None and not same_size:
        pos = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=x.shape[1:3], mode="bicubic", align_corners=False)
        pos = pos.permute(0, 2, 3, 1).to(x.dtype)
    if meta_order:
        return _meta.image_embedding(enc, x, pos)
    if pos is not None:
        x = x + pos
    for layer in enc.layers:
        x = layer(x)
    return enc.neck(x)


def _uncropped_rles(masks: torch.Tensor, crop: list[int], image_hw: tuple[int, int]) -> list[dict[str, Any]]:
    x0, y0, x1, y1 = crop
    h, w = image_hw
    if (x0, y0, x1, y1) != (0, 0, w, h):
        masks = F.pad(masks, (x0, w - x1, y0, h - y1), value=False)
    return amg.rle_encode(masks)


def generate_masks(
    image: ImageInput, sam: SamBackbone | str = TINY_RANDOM, preset: str = "exact", **overrides: Any
) -> MaskSet:
    """One-call convenience: ``SamMaskGenerator(sam, preset, **overrides).generate(image)``."""
    return SamMaskGenerator(sam, preset=preset, **overrides).generate(image)
