"""Prompt template sets, selected by name (``templates="openai_imagenet_80"``)."""

from __future__ import annotations

from .errors import InputError

# The 80 prompts of OpenAI CLIP's ImageNet zero-shot evaluation, in their original order
# (SCLIP family, FMbSeg; docs/reference-protocol.md §5.4).
OPENAI_IMAGENET_80 = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# TCL / CLIP-DINOiser "sub-ImageNet" set (docs/reference-protocol.md §4.1).
SUB_IMAGENET_7 = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# PixelCLIP / CAT-Seg test-time set (docs/methods.md §2.9).
IMAGENET_SELECT_8 = (*SUB_IMAGENET_7, "A photo of a {} in the scene")

# ViLD's 14 prompts (TUSS default, docs/methods.md §1.4).
VILD_14 = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai_imagenet_80": OPENAI_IMAGENET_80,
    "sub_imagenet_7": SUB_IMAGENET_7,
    "imagenet_select_8": IMAGENET_SELECT_8,
    "vild_14": VILD_14,
    "simple": ("a photo of a {}.",),
    "origami": ("a clean origami {}.",),
    "bare": ("{}",),
}


def get_templates(templates: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A template set by name, or a sequence of templates each containing ``{}``."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            known = ", ".join(TEMPLATE_SETS)
            raise InputError(f"unknown template set {templates!r}; choose one of: {known}")
        return TEMPLATE_SETS[templates]
    result = tuple(templates)
    if not result or any("{}" not in t for t in result):
        raise InputError("every template must contain '{}' where the class name goes")
    return result
