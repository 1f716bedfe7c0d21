"""Synthetic image-caption pairs for S-Seg-style training: scenes of coloured shapes from
:func:`ovss.testing.synthetic.make_scene`, each with a caption naming the colours in it
("a red shape and a blue shape on green"), written as a caption folder or webdataset shards."""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic import SyntheticScene, make_scene

MENTIONS = ("all", "partial")


def caption_for(scene: SyntheticScene, rng: random.Random | None = None, mention: str = "all") -> str:
    """A caption of ``scene``.

    ``mention="all"``: every region colour (in a random order) and the background colour, "a red
    shape and a blue shape on green". ``"partial"``: a random subset, as web captions name some of
    what an image holds (often one salient thing): 0 to all region colours, the background with
    probability 1/2 (always when no region is named), "a red shape", "a shape on green", ...; the
    class prompts "a {} shape" / "a shape on {}" are then captions of this world."""
    if mention not in MENTIONS:
        raise ValueError(f"mention={mention!r} must be one of {', '.join(MENTIONS)}")
    rng = rng or random.Random(scene.seed)
    regions = sorted({scene.class_names[i] for i in scene.instance_labels})
    rng.shuffle(regions)
    if not regions:  # a scene of its background only
        return f"a {scene.background} scene" if scene.background else "an empty scene"
    with_background = scene.background is not None
    if mention == "partial":
        regions = regions[: rng.randint(0, len(regions))]
        with_background = with_background and (not regions or rng.random() < 0.5)
        if not regions and not with_background:  # no named background to fall back on
            regions = [scene.class_names[scene.instance_labels[0]]]
    parts = [f"a {c} shape" for c in regions] or ["a shape"]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{text} on {scene.background}" if with_background else text


def make_captioned_scenes(
    n: int,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    size: int = 64,
    n_regions: int = 2,
    mention: str = "all",
    **kwargs,
) -> list[tuple[SyntheticScene, str]]:
    out = []
    for i in range(n):
        scene = make_scene(seed * 100_003 + i, size=(size, size), classes=classes, n_regions=n_regions, **kwargs)
        out.append((scene, caption_for(scene, mention=mention)))
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


def word_tokenizer(words: Sequence[str], folder: str | os.PathLike) -> Path:
    """A real ``CLIPTokenizer`` (saved to ``folder``) whose BPE merges make each of ``words`` one token.

    CLIP's own BPE vocabulary holds common words such as colour names as single tokens; the offline
    byte-level tokenizer has no merges, so a from-scratch text tower would first have to learn to
    spell. This gives a synthetic world the word-level tokens a real tokenizer has. Merges are added
    pair by pair until every word encodes to one token (checked)."""
    from ..models.clip import _byte_level_tokenizer

    base = _byte_level_tokenizer()
    vocab = dict(base.get_vocab())
    merges: list[tuple[str, str]] = []
    targets = sorted({w.lower() for w in words if w.strip()})

    def pieces(word: str) -> list[str]:
        # greedy BPE with the merges so far, as CLIPTokenizer applies them (lowest rank first)
        parts = [*word[:-1], word[-1] + "</w>"]
        ranks = {pair: i for i, pair in enumerate(merges)}
        while len(parts) > 1:
            pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
            rank, i = min(pairs)
            if rank == len(ranks):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts

    for _ in range(sum(len(w) for w in targets) + 1):
        unfinished = [(w, p) for w in targets if len(p := pieces(w)) > 1]
        if not unfinished:
            break
        _, parts = unfinished[0]
        merges.append((parts[0], parts[1]))
        vocab.setdefault(parts[0] + parts[1], len(vocab))
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "vocab.json").open("w") as fh:
        json.dump(vocab, fh)
    with (folder / "merges.txt").open("w") as fh:
        fh.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    for word in targets:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"word tokenizer: {word!r} encodes to {len(ids)} tokens")
    tokenizer.save_pretrained(folder)
    return folder
