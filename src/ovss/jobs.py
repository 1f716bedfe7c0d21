"""The long-job pattern shared by pseudo-labelling, mask banks, evaluation and segmentation:
shard inputs by rank under torchrun/accelerate, and tell finished items from unfinished ones."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import InputError

T = TypeVar("T")


def dist_info() -> tuple[int, int]:
    """(rank, world size) from ``RANK``/``WORLD_SIZE`` (torchrun, accelerate launch); (0, 1) otherwise."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise InputError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world


def my_shard(items: Sequence[T]) -> list[T]:
    rank, world = dist_info()
    return list(items[rank::world])


def finished(marker: Path, job: dict[str, Any]) -> bool:
    """True if ``marker`` (a JSON written last, atomically) exists and records the same ``job``.

    A marker from another job is an error rather than a silent mix of results; a damaged
    marker means the item is redone.
    """
    if not marker.exists():
        return False
    try:
        previous = json.loads(marker.read_text()).get("job")
    except (OSError, ValueError):
        return False
    if previous != json.loads(json.dumps(job, default=str)):
        raise InputError(f"{marker} was made with other classes or settings; pass --overwrite or choose another --out")
    return True
