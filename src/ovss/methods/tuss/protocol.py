"""TUSS's protocol family: only what differs from :class:`TUSSSettings` for a benchmark, the
background words, and the gt-present mIoU the reference reports (AlchemyCat's convention)."""

from __future__ import annotations

from ...protocols import register_family

# TUSS's VOC "dust-bin" background words (Yang & Gong, arXiv 2405.14294, official configs), queried
# as class 0 by the pow rule.
TUSS_VOC_BACKGROUND_25 = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley",
    "bridge", "sign",
)  # fmt: skip

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
