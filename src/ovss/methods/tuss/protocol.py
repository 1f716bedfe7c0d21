"""TUSS's protocol family: only what differs from :class:`TUSSSettings` for a benchmark, the
background words, and the gt-present mIoU the reference reports (AlchemyCat's convention)."""

from __future__ import annotations

from ...masks.presets import Preset, register_preset
from ...protocols import register_family

# TUSS's VOC "dust-bin" background words (Yang & Gong, arXiv 2405.14294, official configs), queried
# as class 0 by the pow rule.
TUSS_VOC_BACKGROUND_25 = (
    "ground",
    "land",
    "grass",
    "tree",
    "building",
    "wall",
    "sky",
    "lake",
    "water",
    "river",
    "sea",
    "railway",
    "railroad",
    "keyboard",
    "helmet",
    "cloud",
    "house",
    "mountain",
    "ocean",
    "road",
    "rock",
    "street",
    "valley",
    "bridge",
    "sign",
)

FAMILY = {
    "source": "docs/reference-protocol.md §4.2 (TUSS row), §9 families.tuss; docs/methods.md §1.3-1.4",
    "short_side": {"cityscapes": 512},
    # Cityscapes: windows 448 and 224 at stride window/2 mixed with momentum 0.5, no global view, CLS hidden
    "window": {"cityscapes": ((448, 224), (224, 112))},
    "global_weight": {"cityscapes": 0.0},
    "patches_see_cls": {"cityscapes": False},
    # VOC: TUSS's own 25 words; COCO-Object: its 23 words are not in the spec, SCLIP's 26 stand in
    "background": {
        "default": "none",
        "voc21": list(TUSS_VOC_BACKGROUND_25),
        "coco_object": "words",
        "pc60": ["background"],
    },
    "metric": "present",
}

register_family("tuss", FAMILY)

# TUSS's level-aware SAM mode as a mask preset (``ovss masks --preset tuss``, ``TUSSSettings.sam_preset``)
register_preset(
    Preset(
        "tuss",
        "TUSS l2_nmsf_s1_rsw3 (Yang & Gong, official configs; docs/methods.md §1.2): 32 points, IoU 0.86 "
        "(+0.1 for level 2), stability 0.92, 1 crop layer with 16x16 points, min area 100, level-2 NMS priority +1, "
        "containment filter 0.3",
        {
            "points_per_side": 32,
            "points_per_batch": 256,
            "pred_iou_thresh": 0.86,
            "stability_score_thresh": 0.92,
            "stability_score_offset": 1.0,
            "box_nms_thresh": 0.7,
            "crop_n_layers": 1,
            "crop_nms_thresh": 0.7,
            "crop_overlap_ratio": 512 / 1500,
            "crop_n_points_downscale_factor": 2,
            "min_mask_region_area": 100,
            "output_mode": "uncompressed_rle",
            "decoder": "fused",  # TUSS's own rules are not Meta's; the faster decoder keeps its masks as before
            "level_iou_offsets": (0.0, 0.0, 0.1),
            "level_stability_offsets": (0.0, 0.0, 0.0),
            "level_nms_offsets": (0.0, 0.0, 1.0),
            "containment_thresh": 0.3,
        },
    )
)
