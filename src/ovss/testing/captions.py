"""Synthetic image-caption pairs for S-Seg-style training: scenes of coloured shapes from
:func:`ovss.testing.synthetic.make_scene`, each with a caption naming the colours in it
("a red shape and a blue shape on green"), written as a caption folder or webdataset shards."""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic import SyntheticScene, make_scene


def caption_for(scene: SyntheticScene, rng: random.Random | None = None) -> str:
    """Name every region colour (in a random order) and the background colour."""
    rng = rng or random.Random(scene.seed)
    regions = sorted({scene.class_names[i] for i in scene.instance_labels})
    rng.shuffle(regions)
    parts = [f"a {c} shape" for c in regions]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{text} on {scene.background}" if scene.background else text


def make_captioned_scenes(
    n: int, seed: int = 0, classes: Sequence[str] | None = None, size: int = 64, n_regions: int = 2, **kwargs
) -> list[tuple[SyntheticScene, str]]:
    out = []
    for i in range(n):
        scene = make_scene(seed * 100_003 + i, size=(size, size), classes=classes, n_regions=n_regions, **kwargs)
        out.append((scene, caption_for(scene)))
    return out


def write_caption_folder(pairs: Sequence[tuple[SyntheticScene, str]], root: str | os.PathLike) -> Path:
    """``root/images/NNNN.png`` and ``root/captions.jsonl`` with paths relative to it."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with (root / "captions.jsonl").open("w") as fh:
        for i, (scene, caption) in enumerate(pairs):
            Image.fromarray(scene.image).save(root / "images" / f"{i:05d}.png")
            fh.write(json.dumps({"image": f"images/{i:05d}.png", "caption": caption}) + "\n")
    return root


def write_shards(
    samples: Sequence[tuple[np.ndarray | bytes, str]], root: str | os.PathLike, per_shard: int = 8, ext: str = "jpg"
) -> list[Path]:
    """img2dataset-style tars: ``NNNNN.jpg`` + ``NNNNN.txt`` per sample (images as arrays or raw bytes)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, len(samples), per_shard):
        path = root / f"{start // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, (image, caption) in enumerate(samples[start : start + per_shard], start):
                if isinstance(image, bytes):
                    data = image
                else:
                    buf = io.BytesIO()
                    Image.fromarray(image).save(buf, format="JPEG" if ext == "jpg" else "PNG", quality=95)
                    data = buf.getvalue()
                for name, payload in ((f"{i:05d}.{ext}", data), (f"{i:05d}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        shards.append(path)
    return shards
