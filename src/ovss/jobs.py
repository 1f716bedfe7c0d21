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
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise InputError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} are not whole numbers; "
            "launch with torchrun or unset them"
        ) from None
    if not 0 <= rank < world:
        raise InputError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world


def my_shard(items: Sequence[T]) -> list[T]:
    rank, world = dist_info()
    return list(items[rank::world])


def output_stems(paths: Sequence[Path], inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Output stem per image: its path relative to the folder given, or its name; clashes are errors."""
    roots = [Path(i) for i in inputs if Path(i).is_dir()]
    stems = [next((p.relative_to(r) for r in roots if r in p.parents), Path(p.name)).with_suffix("") for p in paths]
    seen: dict[Path, Path] = {}
    for stem, path in zip(stems, paths):
        # "..jpg" gives the stem "." and "...jpg" the stem "..": outputs would land beside or
        # above the output folder.
        if stem.is_absolute() or stem.name in ("", ".", "..") or ".." in stem.parts:
            raise InputError(f"{path}: its name gives no usable output name inside the output folder; rename it")
        if stem in seen:
            raise InputError(f"{seen[stem]} and {path} would write the same outputs ({stem}); rename one")
        seen[stem] = path
    return stems


def plan_images(inputs: Sequence[str | os.PathLike], out: Path, max_pixels: int) -> tuple[list[Path], list[Path], int]:
    """Images to process, their output stems and how many inputs were unreadable, checked from
    their headers before any model loads. Unreadable images are reported (one line each) and
    left out; if none is readable, that is the error."""
    import sys

    from .io import check_image_file, find_images

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another --out")
    paths = find_images(list(inputs))
    stems = output_stems(paths, inputs)
    good, failures = [], []
    for path, stem in zip(paths, stems):
        try:
            check_image_file(path, max_pixels)
            good.append((path, stem))
        except InputError as e:
            failures.append(str(e))
    if failures and not good:
        raise InputError(failures[0] if len(failures) == 1 else f"no input is readable; first: {failures[0]}")
    for message in failures:
        print(f"ovss: error: {message} (skipped)", file=sys.stderr)
    return [p for p, _ in good], [s for _, s in good], len(failures)


def finished(marker: Path, job: dict[str, Any], field: str = "job") -> bool:
    """True if ``marker`` (a JSON written last, atomically) exists and records the same ``job``.

    A marker from another job is an error rather than a silent mix of results; a damaged
    marker means the item is redone.
    """
    if not marker.exists():
        return False
    try:
        previous: Any = json.loads(marker.read_text())
        for key in field.split("."):  # e.g. "info.job" for mask files
            previous = previous.get(key)
    except (OSError, ValueError, AttributeError):
        return False
    if previous != json.loads(json.dumps(job, default=str)):
        raise InputError(f"{marker} was made with other classes or settings; pass --overwrite or choose another --out")
    return True


def stream_images(todo: Sequence[tuple[Path, Any]], desc: str, progress: bool = True):
    """Yield ``(path, stem, image)`` for each item with a progress bar; an image that cannot be read
    prints one error line and comes as ``None``, so the job goes on with the others."""
    import sys

    from tqdm import tqdm

    from .io import load_image

    for path, stem in tqdm(todo, desc=desc, unit="img", disable=not progress or len(todo) < 2, file=sys.stderr):
        try:
            image = load_image(path)
        except InputError as e:
            tqdm.write(f"ovss: error: {e}", file=sys.stderr)
            image = None
        yield path, stem, image
