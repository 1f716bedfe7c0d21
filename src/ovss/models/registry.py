"""Every backbone by role: a loader registry, real default ids, and a bounded cache of loaded models.

``load_backbone("clip", "openai/clip-vit-base-patch16", device)`` loads through the role's
loader (hub id, local directory, or ``tiny-random`` when asked for) and keeps the model in a
:class:`ModelCache`; a server owns one of its own and calls :meth:`ModelCache.release`.
Loaders are named as ``module:function`` and imported on first use, so a method package can
add a role (``register_loader("sam3", "ovss.models.sam3:load_sam3")``) without importing torch
models it does not need.
"""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from ..errors import InputError

# role -> "module:function"; the function takes (name, device) and returns a backbone object
_LOADERS: dict[str, str] = {
    "clip": "ovss.models.clip:load_clip",
    "dino": "ovss.models.dino:load_dino",
    "sam": "ovss.models.sam:load_sam",
}

# The model a role loads when none is given: real weights (tiny-random only when asked for).
DEFAULT_MODELS: dict[str, str] = {
    "clip": "openai/clip-vit-base-patch16",
    "dino": "facebook/dinov2-base",
    "sam": "facebook/sam-vit-base",
}


def register_loader(role: str, target: str, default: str | None = None) -> None:
    """Add a backbone role: ``target`` is ``"package.module:function"``."""
    if ":" not in target:
        raise ValueError(f"loader {target!r} must be 'module:function'")
    _LOADERS[role] = target
    if default is not None:
        DEFAULT_MODELS[role] = default


def backbone_roles() -> tuple[str, ...]:
    return tuple(_LOADERS)


def loader_for(role: str) -> Callable[..., Any]:
    if role not in _LOADERS:
        raise InputError(f"unknown backbone {role!r}; known: {', '.join(_LOADERS)}")
    module, function = _LOADERS[role].split(":")
    return getattr(importlib.import_module(module), function)


def default_model(role: str, method_default: str | None = None) -> str:
    """The role's real default id (``method_default`` where a method's paper names another, e.g. S-Seg's
    DINO ViT-S/8); ``OVSS_DEFAULT_MODEL`` (e.g. ``tiny-random`` in a test suite) overrides all."""
    return os.environ.get("OVSS_DEFAULT_MODEL") or method_default or DEFAULT_MODELS.get(role, "tiny-random")


class ModelCache:
    """Loaded backbones keyed by (role, name, device), least recently used evicted past ``max_items``."""

    def __init__(self, max_items: int = 4) -> None:
        if max_items < 1:
            raise ValueError("a model cache holds at least one model")
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, str, str], Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, role: str, name: str, device: torch.device) -> Any:
        key = (role, name, str(device))
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        model = loader_for(role)(name, device=device)
        self._items[key] = model
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return model

    def items(self) -> list[tuple[tuple[str, str, str], Any]]:
        return list(self._items.items())

    def drop(self, key: tuple[str, str, str]) -> None:
        self._items.pop(key, None)

    def release(self, role: str | None = None) -> int:
        """Drop every cached model (or those of one role); returns how many were dropped."""
        keys = [k for k in self._items if role is None or k[0] == role]
        for k in keys:
            del self._items[k]
        if keys and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return len(keys)


# The process-wide cache behind load_backbone (OVSS_MODEL_CACHE models at most, default 4).
DEFAULT_CACHE = ModelCache(int(os.environ.get("OVSS_MODEL_CACHE", "4") or 4))


def load_backbone(role: str, spec: Any, device: torch.device, cache: ModelCache | None = None) -> Any:
    """A backbone by name (hub id, local directory, ``tiny-random``), or an already-built object as is."""
    if spec is None:
        spec = default_model(role)
    if not isinstance(spec, str):
        return spec  # a loaded backbone or a synthetic stand-in
    return (cache or DEFAULT_CACHE).get(role, spec, torch.device(device))
