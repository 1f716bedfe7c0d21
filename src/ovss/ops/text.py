"""Query text embeddings: fill templates, encode, normalise, average, normalise (docs/methods.md §0.4c).

Embeddings are cached per (model fingerprint, template set, query) in memory and, unless
``OVSS_CACHE_DIR`` is set to an empty string, on disk under ``~/.cache/ovss/text``; adding a
class to a list only encodes the new class.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io import atomic_path
from ..models.base import TextEncoder

# In-memory cache, bounded (least recently used first out) so that a long-running server does not grow.
MEMORY_LIMIT = int(os.environ.get("OVSS_TEXT_CACHE", "50000") or 50000)
_MEMORY: OrderedDict[tuple[str, str, str], torch.Tensor] = OrderedDict()


def _remember(key: tuple[str, str, str], vector: torch.Tensor) -> torch.Tensor:
    _MEMORY[key] = vector
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > MEMORY_LIMIT:
        _MEMORY.popitem(last=False)
    return vector


def clear_text_cache() -> None:
    """Forget the in-memory embeddings (the disk cache stays)."""
    _MEMORY.clear()


def cache_dir() -> Path | None:
    value = os.environ.get("OVSS_CACHE_DIR")
    if value == "":
        return None
    root = Path(value) if value else Path.home() / ".cache" / "ovss"
    return root / "text"


def _templates_key(templates: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(templates).encode()).hexdigest()[:16]


def _disk_path(fingerprint: str, tkey: str, query: str) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    qkey = hashlib.sha256(query.encode()).hexdigest()[:24]
    return root / fingerprint / tkey / f"{qkey}.npy"


def embed_queries(
    encoder: TextEncoder, queries: list[str] | tuple[str, ...], templates: tuple[str, ...]
) -> torch.Tensor:
    """``(Q, D)`` L2-normalised embeddings of ``queries``, each averaged over ``templates``."""
    tkey = _templates_key(templates)
    result: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for query in dict.fromkeys(queries):
        key = (encoder.fingerprint, tkey, query)
        if key in _MEMORY:
            _MEMORY.move_to_end(key)
            result[query] = _MEMORY[key]
            continue
        path = _disk_path(encoder.fingerprint, tkey, query)
        if path is not None and path.exists():
            try:
                result[query] = _remember(key, torch.from_numpy(np.load(path)))
                continue
            except (OSError, ValueError):
                pass  # a damaged cache entry is recomputed
        missing.append(query)
    if missing:
        texts = [t.format(q) for q in missing for t in templates]
        emb = encoder.encode_text(texts).float().cpu().view(len(missing), len(templates), -1)
        emb = F.normalize(F.normalize(emb, dim=-1).mean(dim=1), dim=-1)
        for query, vector in zip(missing, emb):
            result[query] = _remember((encoder.fingerprint, tkey, query), vector)
            path = _disk_path(encoder.fingerprint, tkey, query)
            if path is not None:
                try:
                    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                        np.save(fh, vector.numpy())
                except OSError:
                    pass  # the cache is an optimisation; a read-only home must not fail a run
    return torch.stack([result[q] for q in queries])
