"""Images per second of `ovss eval` with a full-size CLIP ViT-B/16 (random weights) on VOC-sized images.

Builds a VOC2012 layout from the real VOC samples in ../shared/evaldata (500x375-class images),
saves a full-size random CLIP with save_pretrained, and runs the harness (SCLIP protocol on
voc21: short side 336, 224/112 windows, 26 background words) against a baseline in the same
process: the bare Segmenter loop over the same images without the harness.

    python bench/eval.py [--images 8] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OVSS_CACHE_DIR", "")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dense_clip import full_size_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    from layouts import _voc
    from ovss import Segmenter
    from ovss.evaluate import EvalJob, run_eval
    from shared_paths import EVALDATA as evaldata

    work = Path(tempfile.mkdtemp(prefix="ovss-bench-"))
    try:
        _voc(evaldata, work / "data")
        clip = full_size_clip()
        clip.model.save_pretrained(work / "clip")
        clip.tokenizer.save_pretrained(work / "clip")
        from ovss.protocols import resolve

        settings = {"precision": args.precision}
        # the baseline runs the same protocol settings (voc21: logit 65, prob_thd 0.1, area_thd 0.1)
        seg = Segmenter(
            "sclip", clip=str(work / "clip"), device="cpu", **resolve("sclip", "voc21").settings, **settings
        )
        from ovss.data import open_dataset

        dataset = open_dataset("voc21", work / "data")
        images = [dataset[i].image for i in range(min(args.images, len(dataset)))]  # the harness's order
        seg.segment(images[0], "cat", background="words")  # warm-up; builds nothing cached for voc21
        job = EvalJob(
            "sclip",
            "voc21",
            work / "data",
            clip=str(work / "clip"),
            device="cpu",
            limit=args.images,
            out=work / "out",
            overrides=settings,
        )
        run_eval(EvalJob(**{**vars(job), "out": work / "warm", "limit": 1}), progress=False)  # text embeddings

        from ovss.evaluate import benchmark_vocabulary

        vocab = benchmark_vocabulary(job, resolve("sclip", "voc21").background, 21)
        start = time.perf_counter()
        for path in images:
            seg.segment(path, vocab)
        base = (time.perf_counter() - start) / len(images)

        start = time.perf_counter()
        report = run_eval(job, progress=False)
        wall = (time.perf_counter() - start) / len(images)
        print(
            f"{len(images)} VOC images, full-size CLIP ViT-B/16 (random weights), SCLIP protocol voc21, "
            f"{args.precision}"
        )
        print(
            f"ovss eval: {1 / wall:.2f} images/s wall ({report['images_per_second']:.2f} images/s inside the "
            f"segmenter); bare Segmenter loop: {1 / base:.2f} images/s; harness/bare time = {wall / base:.2f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
