"""SAM 3 as a semantic segmenter (method ``sam3``): every class name as a text prompt over one
image encoding, SegEarth-OV3's instance + semantic + presence fusion. See docs/sam3.md.

SAM 3 is trained on SA-Co concept masks: it is NOT annotation-free, and its results belong in
their own tier (:data:`TIER`).
"""

from __future__ import annotations

from ..base import MethodSpec, register_method
from .fusion import detection_scores, fuse_prompt_maps, mask_probabilities
from .method import TIER, Sam3Method, Sam3Settings

SPEC = register_method(
    MethodSpec(
        "sam3",
        f"SAM 3 prompted with every class, SegEarth-OV3 fusion (instance max, semantic map, presence) [{TIER}]",
        Sam3Method,
        Sam3Settings(),
        ("sam3",),
        "Carion et al., SAM 3, arXiv 2511.16719; Li et al., SegEarth-OV3, arXiv 2512.08730",
    )
)
object.__setattr__(SPEC, "tier", TIER)  # MethodSpec is frozen and has no tier field yet

__all__ = ["SPEC", "TIER", "Sam3Method", "Sam3Settings", "detection_scores", "fuse_prompt_maps", "mask_probabilities"]
