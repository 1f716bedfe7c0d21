"""SAM 3 as a semantic segmenter (method ``sam3``): every class name as a text prompt over one
image encoding, SegEarth-OV3's instance + semantic + presence fusion. See docs/sam3.md.

SAM 3 is trained on SA-Co concept masks: it is NOT annotation-free, and its results belong in
their own tier (:data:`TIER`).
"""

from __future__ import annotations

from ...models.registry import register_loader
from ...protocols import register_family
from ..base import MethodSpec, register_method
from .fusion import detection_scores, fuse_prompt_maps, mask_probabilities
from .method import TIER, Sam3Method, Sam3Settings

register_loader("sam3", "ovss.models.sam3:load_sam3", default="facebook/sam3")
register_family(
    "sam3",
    {  # SegEarth-OV3 evaluates every class prompt and turns low fused scores into background
        "source": "Li et al., SegEarth-OV3, arXiv 2512.08730 (its evaluation settings); docs/sam3.md",
        "background": {"default": "none", "voc21": "threshold", "pc60": "threshold", "coco_object": "threshold"},
        "metric": "union",
    },
)

SPEC = register_method(
    MethodSpec(
        "sam3",
        f"SAM 3 prompted with every class, SegEarth-OV3 fusion (instance max, semantic map, presence) [{TIER}]",
        Sam3Method,
        Sam3Settings(),
        ("sam",),
        "Carion et al., SAM 3, arXiv 2511.16719; Li et al., SegEarth-OV3, arXiv 2512.08730",
        family="sam3",
        tier="D",
        loaders={"sam": "sam3"},  # --sam takes a SAM 3 model for this method
    )
)

__all__ = ["SPEC", "TIER", "Sam3Method", "Sam3Settings", "detection_scores", "fuse_prompt_maps", "mask_probabilities"]
