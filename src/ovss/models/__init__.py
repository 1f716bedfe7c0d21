"""Backbones over transformers, loaded by hub id, local directory or ``tiny-random``."""

from .base import DenseImageEncoder, TextEncoder
from .clip import TINY_RANDOM, CLIPBackbone, load_clip, save_tiny_clip

__all__ = ["TINY_RANDOM", "CLIPBackbone", "DenseImageEncoder", "TextEncoder", "load_clip", "save_tiny_clip"]
