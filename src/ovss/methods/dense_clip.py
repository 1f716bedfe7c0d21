"""Training-free dense-CLIP methods: vanilla CLIP, MaskCLIP, SCLIP, ClearCLIP, NACLIP.

They differ only in the last ViT block (models.dense_clip.LAST_BLOCKS) and in their protocol
defaults (short side, windows, logit scale, PAMR), which come from their protocol family's table
in ``ovss.protocols``, so one class serves all and each value is written once.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..device import precision_dtype
from ..errors import InputError
from ..models.dense_clip import check_variant
from .base import MethodSpec, register_method
from .dense import DenseMatchingMethod, DenseSettings
from .settings import family_defaults


@dataclass(frozen=True)
class DenseCLIPSettings(DenseSettings):
    variant: str = "sclip"  # last-block variant (docs/methods.md §5.1)
    # All five references run mmseg's test pipeline: OpenCV resize of the uint8 image and the
    # data preprocessor's rounded 0-255 constants (docs/protocol.md).
    resize_backend: str = "cv2"
    pixel_constants: str = "mmseg"
    # bf16/fp16: run a copy of the image tower cast once to that dtype instead of autocasting every
    # op (on the CPU autocast's arithmetic, but for LayerNorm parameters rounded to bf16 and scores
    # taken in fp32); False = the autocast path. docs/speed.md
    cast_weights: bool = True
    # torch.compile the image tower with frozen weights (inductor freezing); opt-in: it compiles for
    # minutes once per process and window size, and did not pay on the CPU of docs/speed.md
    compile: bool = False
    # images per call in `ovss eval` and `ovss label` (Segmenter.segment_many): their windows share
    # forward passes of window_batch windows; the labels of one at a time (tests/test_dense_speed.py)
    image_batch: int = 1

    def validate(self) -> None:
        check_variant(self.variant)
        super().validate()
        if self.image_batch < 1:
            raise InputError(f"image_batch {self.image_batch} must be 1 or more", option="image_batch")


class DenseCLIPMethod(DenseMatchingMethod):
    needs = ("clip",)
    batches_images = True

    def __init__(self, backbones, settings: DenseCLIPSettings, device: torch.device) -> None:
        super().__init__(backbones, settings, device)
        self.clip = self.text_encoder = backbones["clip"]
        self.mean, self.std, self.patch_size = self.clip.mean, self.clip.std, self.clip.patch_size
        self._compiled: dict[tuple[str, torch.dtype | None], Callable[[torch.Tensor], torch.Tensor]] = {}

    def tower_dtype(self) -> torch.dtype | None:
        """The dtype the image tower's weights are cast to, or None (as loaded; autocast applies)."""
        s = self.settings
        if s.precision == "fp32" or not s.cast_weights or not hasattr(self.clip, "tower"):
            return None  # a backbone without a castable tower (e.g. ovss.testing's) runs under autocast
        return precision_dtype(self.device, s.precision)

    def precision_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.tower_dtype() is not None else super().precision_context()

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        s, dtype = self.settings, self.tower_dtype()
        if not s.compile:
            return self._features(pixels, s.variant, dtype)
        key = (s.variant, dtype)
        if key not in self._compiled:
            variant = s.variant

            def features(x: torch.Tensor) -> torch.Tensor:
                return self._features(x, variant, dtype)

            # freezing folds the weights into the graph as constants (prepacked for oneDNN on the CPU)
            self._compiled[key] = torch.compile(features, options={"freezing": True})
        pixels = pixels.to(self.device)
        if pixels.shape[0] > 1:  # one graph for every window count above one (no recompile per count)
            torch._dynamo.mark_dynamic(pixels, 0)
        return self._compiled[key](pixels)

    def _features(self, pixels: torch.Tensor, variant: str, dtype: torch.dtype | None) -> torch.Tensor:
        if dtype is None:
            return self.clip.dense_features(pixels, variant)
        return self.clip.dense_features(pixels, variant, dtype=dtype)


def _register(name: str, description: str, reference: str, family: str, **behaviour) -> None:
    # the protocol values (short side, windows, logit scale, PAMR, padding) come from the family's table;
    # ``behaviour`` holds what the method itself does differently
    settings = family_defaults(dataclasses.replace(DenseCLIPSettings(), variant=name, **behaviour), family)
    register_method(
        MethodSpec(name, description, DenseCLIPMethod, settings, ("clip",), reference, family=family, tier="A")
    )


_register("sclip", "SCLIP: correlative self-attention (q-q + k-k) in the last block", "Wang et al., ECCV 2024", "sclip")
_register(
    "naclip",
    "NACLIP: k-k attention with a Gaussian neighbourhood prior, PAMR on",
    "Hajimiri et al., WACV 2025",
    "naclip",
    renormalize_probs=True,  # NACLIP's segmentor divides the class probabilities by their sum
)
_register("clearclip", "ClearCLIP: q-q attention without residual or FFN", "Lan et al., ECCV 2024", "clearclip")
_register(
    "maskclip", "MaskCLIP: each token attends only to itself (value embeddings)", "Zhou et al., ECCV 2022", "sclip"
)
_register("vanilla", "Plain CLIP last block (baseline)", "Radford et al., ICML 2021", "sclip")
