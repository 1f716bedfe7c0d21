"""Class-agnostic mask proposals and what uses them.

* :class:`SamMaskGenerator` - SAM/SAM2 automatic masks with Meta's semantics (and TUSS's
  level-aware options), faster; presets in :data:`PRESETS`.
* :class:`KMeansMaskGenerator` - DINO/DINOv2 patch-feature k-means masks.
* :func:`mask_pool`, :func:`refine_labels` - mean feature per mask; SAM refinement of labels.
* :class:`MaskSet` - the common output (Meta-style records, COCO RLE JSON, previews).
"""

from ..models.sam import SamBackbone, load_sam
from .kmeans import DinoBackbone, KMeansMaskGenerator, load_dino
from .maskset import MaskSet
from .pooling import mask_pool, refine_labels, region_map
from .presets import PRESETS, AMGSettings, get_preset, make_settings
from .registry import available_mask_generators, get_mask_generator, register_mask_generator
from .sam import SamMaskGenerator, generate_masks

__all__ = [
    "PRESETS",
    "AMGSettings",
    "DinoBackbone",
    "KMeansMaskGenerator",
    "MaskSet",
    "SamBackbone",
    "SamMaskGenerator",
    "available_mask_generators",
    "generate_masks",
    "get_mask_generator",
    "get_preset",
    "load_dino",
    "load_sam",
    "make_settings",
    "mask_pool",
    "refine_labels",
    "region_map",
    "register_mask_generator",
]
