"""The interfaces every image/text backbone (real or synthetic stand-in) provides."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts into the joint embedding space."""

    name: str
    fingerprint: str  # identifies the weights; used as the text-embedding cache key

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """``(N, D)`` L2-normalised float32 embeddings."""
        ...


@runtime_checkable
class DenseImageEncoder(Protocol):
    """Maps normalised images to a language-aligned patch-feature grid."""

    name: str
    patch_size: int
    mean: tuple[float, float, float]  # on the 0-1 scale
    std: tuple[float, float, float]

    def dense_features(self, pixels: torch.Tensor, variant: str, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised pixels -> ``(B, D, H // P, W // P)`` L2-normalised features.

        ``bias``: an optional additive attention bias for the last block (mask-aware variants)."""
        ...
