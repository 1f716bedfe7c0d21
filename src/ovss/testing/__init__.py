"""Test fixtures shared by ovss's own tests and by anyone testing a pipeline built on ovss.

:mod:`ovss.testing.synthetic` is a synthetic world with known answers: images of coloured regions
and a deterministic CLIP stand-in whose embeddings encode colour names.
"""

from .synthetic import (
    IGNORE_INDEX,
    PALETTE,
    SHAPES,
    SYNONYMS,
    SyntheticCLIP,
    SyntheticScene,
    make_dataset,
    make_scene,
    pixel_accuracy,
    write_dataset,
)

__all__ = [
    "IGNORE_INDEX",
    "PALETTE",
    "SHAPES",
    "SYNONYMS",
    "SyntheticCLIP",
    "SyntheticScene",
    "make_dataset",
    "make_scene",
    "pixel_accuracy",
    "write_dataset",
]
