"""Mask generators by name: ``get_mask_generator("sam", sam="facebook/sam-vit-base", preset="fast")``.

Every generator has ``generate(image) -> MaskSet`` and ``info() -> dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from .maskset import MaskSet


@runtime_checkable
class MaskGenerator(Protocol):
    """What SAM, SAM2, k-means, SAM 3 and the synthetic stand-ins share: masks for one image."""

    def generate(self, image: np.ndarray) -> MaskSet: ...

    def info(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    description: str
    factory: Callable[..., Any]


_REGISTRY: dict[str, GeneratorSpec] = {}


def register_mask_generator(name: str, factory: Callable[..., Any], description: str) -> None:
    _REGISTRY[name] = GeneratorSpec(name, description, factory)


def available_mask_generators() -> dict[str, GeneratorSpec]:
    return dict(_REGISTRY)


def get_mask_generator(name: str, **kwargs: Any):
    if name not in _REGISTRY:
        raise InputError(f"unknown mask generator {name!r}; use one of {', '.join(_REGISTRY)}")
    try:
        return _REGISTRY[name].factory(**kwargs)
    except TypeError as e:  # an unknown keyword: name it, one line
        detail = str(e).split(")", 1)[-1].strip() or str(e)
        raise InputError(f"mask generator {name!r}: {detail}; see `ovss masks --help` for its settings") from None


def _sam(**kwargs: Any):
    from .sam import SamMaskGenerator

    return SamMaskGenerator(**kwargs)


def _sam3(**kwargs: Any):
    from .sam3 import Sam3MaskGenerator

    return Sam3MaskGenerator(**kwargs)


def _kmeans(**kwargs: Any):
    from .kmeans import KMeansMaskGenerator

    return KMeansMaskGenerator(**kwargs)


register_mask_generator("sam", _sam, "SAM or SAM2 automatic masks: point grid, crops, IoU/stability filters, NMS")
register_mask_generator("sam3", _sam3, "SAM 3 instance masks for text prompts (a generic 'object' by default)")
register_mask_generator("kmeans", _kmeans, "k-means on DINO/DINOv2 patch features, one mask per cluster")
