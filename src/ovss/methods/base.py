"""The method contract and the string registry.

A method is built from loaded backbones and a settings dataclass, and maps an ``(H, W, 3)``
uint8 image plus a :class:`Vocabulary` to a label map (and class probabilities on demand).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import InputError
from ..typecheck import check_settings
from ..vocab import Vocabulary


@dataclass
class MethodOutput:
    labels: np.ndarray  # (H, W) int32 class indices into the vocabulary
    probs: np.ndarray | None = None  # (C, H, W) float32, when asked for


class Method:
    """Base class: subclasses set ``settings`` and implement :meth:`segment`."""

    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbones: dict[str, Any], settings: Any, device: torch.device) -> None:
        self.backbones = backbones
        self.settings = settings
        self.device = device

    def segment(self, image: np.ndarray, vocab: Vocabulary, return_probs: bool = False) -> MethodOutput:
        raise NotImplementedError


@dataclass(frozen=True)
class Command:
    """A subcommand a method contributes (``ovss train|fit|pseudo-label --method NAME``).

    ``add_arguments`` adds the method's own options to the parser the CLI made (which already has
    ``--method``, ``--out``, the backbone options, ``--device`` and ``--set``); ``run`` does the job
    and returns the exit code. Errors are raised as ``InputError``; the CLI prints them.
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# Tiers for comparisons, as the field groups its results: what supervision stands behind a method's models.
TIERS = {
    "A": "CLIP only",
    "B": "CLIP plus label-free DINO/SAM",
    "C": "label-trained mask generators or unlabeled retrieval banks",
    "D": "supervised concept segmenter (trained on human concept masks, not annotation-free)",
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    factory: Callable[..., Method]
    settings: Any  # a dataclass instance holding this method's defaults
    needs: tuple[str, ...]
    reference: str = ""
    family: str = "sclip"  # the protocol family it is evaluated under unless --protocol says otherwise
    tier: str = "A"  # a key of TIERS
    checkpoint: str = "none"  # "none" (refused), "optional" or "required"
    commands: Mapping[str, Command] = field(default_factory=dict)  # "train", "fit", "pseudo-label"
    loaders: Mapping[str, str] = field(default_factory=dict)  # backbone role -> loader kind, e.g. {"sam": "sam3"}
    # How a checkpoint argument becomes an ovss.checkpoints.Checkpoint; None: the standard folder reader.
    read_checkpoint: Callable[[str], Any] | None = None

    def make_settings(self, overrides: dict[str, Any]) -> Any:
        known = {f.name: f for f in dataclasses.fields(self.settings)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise InputError(
                f"method {self.name!r} has no setting {unknown[0]!r}; its settings are: {', '.join(known)}",
                option=unknown[0],
            )
        check_settings(type(self.settings), overrides, f"{self.name} setting")
        try:
            settings = dataclasses.replace(self.settings, **overrides)
        except TypeError as e:
            raise InputError(f"bad settings for {self.name}: {e}") from None
        if hasattr(settings, "validate"):
            settings.validate()
        return settings


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def available_methods() -> dict[str, MethodSpec]:
    return dict(_REGISTRY)


def get_method_spec(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; choose one of: {', '.join(_REGISTRY)} (see `ovss methods`)")
    return _REGISTRY[name]
