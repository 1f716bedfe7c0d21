"""Image-caption data that scales: a caption file (JSONL or CSV: image, caption) or webdataset tar
shards in the img2dataset layout (``KEY.jpg`` + ``KEY.txt`` per sample), streamed.

The stream is split into ``world_size * num_workers`` parts without duplicates: by shard when
there are at least as many shards as parts, else by sample (every part reads all shards and keeps
every ``parts``-th sample). Each part shuffles its records per epoch (shard order, or the record
order of a caption file) and then through a bounded buffer (webdataset-style), all seeded by
(seed, epoch, part), so the order is a pure function of those. Every record that leaves the buffer
has a *position*; a resumed run skips the positions a part already delivered (raw bytes only, no
decoding). Unreadable images, missing files and empty captions are skipped with a warning line and
counted; they still use up their position, so resuming stays exact.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import InputError
from ...io import IMAGE_SUFFIXES, load_image

CAPTION_FILES = ("captions.jsonl", "captions.csv")
IMAGE_EXTS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)
TEXT_EXTS = ("txt", "caption", "text")


@dataclass(frozen=True)
class Source:
    """What ``--data`` names: a caption file's records, or a list of tar shards."""

    kind: str  # "captions" | "shards"
    path: Path
    records: tuple[tuple[str, str], ...] = ()  # (image path, caption) for "captions"
    shards: tuple[Path, ...] = ()
    missing: int = 0  # caption-file rows whose image file does not exist (skipped)

    def describe(self) -> str:
        return f"{len(self.records)} captioned images" if self.kind == "captions" else f"{len(self.shards)} shards"


def open_source(data: str | Path) -> Source:
    """Read ``--data``: a .jsonl/.csv caption file, a folder holding one, a .tar shard or a folder of shards."""
    path = Path(data)
    if not path.exists():
        raise InputError(f"{path}: --data not found; pass a caption file (.jsonl/.csv) or a folder of .tar shards")
    if path.is_dir():
        found = [path / name for name in CAPTION_FILES if (path / name).is_file()]
        if found:
            return _caption_source(found[0])
        shards = sorted(path.glob("*.tar"))
        if not shards:
            raise InputError(f"{path}: holds neither {' nor '.join(CAPTION_FILES)} nor .tar shards")
        return Source("shards", path, shards=tuple(shards))
    if path.suffix == ".tar":
        return Source("shards", path, shards=(path,))
    if path.suffix in (".jsonl", ".csv"):
        return _caption_source(path)
    raise InputError(f"{path}: unknown data file type; pass a .jsonl or .csv caption file or .tar shards")


def _caption_source(path: Path) -> Source:
    rows: list[tuple[Any, Any]] = []
    try:
        if path.suffix == ".jsonl":
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    item = json.loads(line)
                    if not isinstance(item, dict) or "image" not in item:
                        raise InputError(f"{path}:{number}: each line must be an object with 'image' and 'caption'")
                    rows.append((item["image"], item.get("caption", "")))
        else:
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or "image" not in reader.fieldnames or "caption" not in reader.fieldnames:
                    raise InputError(f"{path}: the CSV needs a header with the columns image and caption")
                rows = [(r["image"], r["caption"]) for r in reader]
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: unreadable caption file ({str(e).splitlines()[0][:80]})") from None
    records, missing = [], 0
    for image, caption in rows:
        image_path = (path.parent / str(image)).resolve()
        if not image_path.is_file():
            missing += 1
            print(f"ovss: warning: {path}: image {image} not found (skipped; {missing} so far)", file=sys.stderr)
            continue
        records.append((str(image_path), str(caption or "")))
    if not records:
        raise InputError(f"{path}: no row names an existing image; paths are relative to the caption file")
    return Source("captions", path, records=tuple(records), missing=missing)


def count_samples(source: Source) -> int:
    """Samples per epoch (img2dataset's ``*_stats.json`` when present, else the tar headers)."""
    if source.kind == "captions":
        return len(source.records)
    total = 0
    for shard in source.shards:
        stats = shard.with_name(shard.stem + "_stats.json")
        if stats.is_file():
            try:
                total += int(json.loads(stats.read_text())["successes"])
                continue
            except (ValueError, KeyError, TypeError):
                pass
        total += sum(1 for _ in _tar_samples(shard, warn=False))
    return total


def iter_samples(source: Source) -> Iterator[tuple[str, Any, Any]]:
    """Every ``(key, image, caption)`` in file order (no shuffling): for precomputing per-sample caches."""
    if source.kind == "captions":
        for path, caption in source.records:
            yield path, path, caption
        return
    for shard in source.shards:
        yield from _counted(shard, _tar_samples(shard))


def decode_image(image: Any) -> np.ndarray:
    """A record's image (a path or raw bytes) as ``(H, W, 3) uint8``; InputError if unreadable."""
    return load_image(image if isinstance(image, str) else _pil(image))


def _tar_samples(shard: Path, warn: bool = True) -> Iterator[tuple[str, bytes | None, str | None]]:
    """``(key, image bytes, caption)`` per sample key of a tar, in file order (streamed)."""
    current: str | None = None
    image: bytes | None = None
    caption: str | None = None
    try:
        with tarfile.open(shard, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                key, _, ext = name.partition(".")
                key = member.name.rsplit("/", 1)[0] + "/" + key if "/" in member.name else key
                if key != current:
                    if current is not None:
                        yield current, image, caption
                    current, image, caption = key, None, None
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else b""
                if ext.lower() in IMAGE_EXTS:
                    image = data
                elif ext.lower() in TEXT_EXTS:
                    caption = data.decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError, EOFError) as e:
        if warn:
            print(f"ovss: warning: {shard}: unreadable tar ({str(e)[:80]}); the rest of it is skipped", file=sys.stderr)
    if current is not None:
        yield current, image, caption


class CaptionStream(torch.utils.data.IterableDataset):
    """Yields ``(pixels uint8 (3, S, S), caption, part, position, key, crop box)``; see the module docstring."""

    def __init__(
        self, source: Source, size: int, seed: int = 0, buffer: int = 1000, rank: int = 0, world_size: int = 1
    ) -> None:
        super().__init__()
        self.source, self.size, self.seed, self.buffer = source, size, seed, max(1, buffer)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip: dict[int, int] = {}  # part -> positions already delivered (resume)
        self.rotation = 0  # worker w serves local part (w + rotation) % workers (resume keeps the batch order)

    def set_epoch(self, epoch: int, skip: dict[int, int] | None = None, rotation: int = 0) -> None:
        self.epoch, self.skip, self.rotation = epoch, dict(skip or {}), rotation

    def parts(self, num_workers: int) -> int:
        return self.world_size * max(1, num_workers)

    def _records(self, part: int, parts: int) -> Iterator[tuple[str, Any, Any]]:
        rng = random.Random(f"{self.seed}-{self.epoch}-order")
        if self.source.kind == "captions":
            order = list(range(len(self.source.records)))
            rng.shuffle(order)
            for i in order[part::parts]:
                path, caption = self.source.records[i]
                yield path, path, caption
            return
        shards = list(self.source.shards)
        rng.shuffle(shards)
        if len(shards) >= parts:
            for shard in shards[part::parts]:
                yield from _counted(shard, _tar_samples(shard))
        else:
            index = 0
            for shard in shards:
                for sample in _counted(shard, _tar_samples(shard)):
                    if index % parts == part:
                        yield sample
                    index += 1

    def _buffered(self, part: int, parts: int) -> Iterator[tuple[int, tuple[str, Any, Any]]]:
        rng = random.Random(f"{self.seed}-{self.epoch}-{part}-buffer")
        pool: list[tuple[str, Any, Any]] = []
        position = 0
        for record in self._records(part, parts):
            pool.append(record)
            if len(pool) >= self.buffer:
                j = rng.randrange(len(pool))
                pool[j], pool[-1] = pool[-1], pool[j]
                yield position, pool.pop()
                position += 1
        rng.shuffle(pool)
        for record in pool:
            yield position, record
            position += 1

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        parts = self.world_size * workers
        part = self.rank * workers + (worker + self.rotation) % workers
        start = self.skip.get(part, 0)
        for position, (key, image, caption) in self._buffered(part, parts):
            if position < start:
                continue
            sample = self._decode(key, image, caption)
            if sample is not None:
                yield sample[0], sample[1], part, position, key, sample[2]
            else:  # a skip still uses its position
                yield torch.zeros(0, dtype=torch.uint8), "", part, position, key, ()

    def _decode(self, key: str, image: Any, caption: Any) -> tuple[torch.Tensor, str, tuple[int, ...]] | None:
        caption = " ".join(str(caption or "").split())
        if not caption:
            _warn(f"sample {key}: empty caption")
            return None
        if image is None:
            _warn(f"sample {key}: no image")
            return None
        try:
            arr = decode_image(image)
        except InputError as e:
            _warn(f"sample {key}: {e}")
            return None
        rng = random.Random(f"{self.seed}-{self.epoch}-{key}-crop")
        pixels, box = square_crop(arr, self.size, rng)
        return pixels, caption, box


def _pil(data: bytes):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"not a readable image ({str(e)[:80]})") from None


def _counted(shard: Path, samples: Iterator[tuple[str, Any, Any]]) -> Iterator[tuple[str, Any, Any]]:
    """Pass samples through; a shard without a single image is reported once."""
    images = 0
    for sample in samples:
        images += sample[1] is not None
        yield (f"{shard.name}:{sample[0]}", *sample[1:])
    if images == 0:
        _warn(f"{shard}: holds no images (webdataset samples need KEY.jpg beside KEY.txt)")


def _warn(message: str) -> None:
    print(f"ovss: warning: {message} (skipped)", file=sys.stderr)


def square_crop(image: np.ndarray, size: int, rng: random.Random) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Resize the short side to ``size`` (bilinear, antialiased), then a random ``size`` x ``size`` crop.
    Returns the crop and its geometry ``(resized h, resized w, top, left)`` (to crop cached masks alike)."""
    import torch.nn.functional as F

    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    y0, x0 = rng.randint(0, nh - size), rng.randint(0, nw - size)
    return x[:, y0 : y0 + size, x0 : x0 + size].round().clamp(0, 255).to(torch.uint8), (nh, nw, y0, x0)


def collate(batch: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Keep the decodable samples; positions of all of them (skips included) go to the resume state."""
    good = [b for b in batch if b[0].numel()]
    return {
        "pixels": torch.stack([b[0] for b in good]) if good else torch.zeros(0, 3, 1, 1, dtype=torch.uint8),
        "captions": [b[1] for b in good],
        "positions": [(b[2], b[3]) for b in batch],
        "keys": [b[4] for b in good],
        "boxes": [b[5] for b in good],
        "skipped": len(batch) - len(good),
    }
