"""Seconds per image and peak memory of the ``sam3`` method at full size, against SCLIP, in one run.

SAM 3 is built from the default ``Sam3Config`` (the released architecture: ViT-L-like 32-layer
vision tower at 1008 x 1008, CLIP-L text tower, 200 DETR queries, 288 x 288 masks) with random
weights; speed and memory do not depend on the weights. One 683x512 ADE20K photo (one pass, no
windows). Vocabularies: 21 classes (the 20 VOC names + threshold background: 20 prompts) and the
150 ADE20K names (150 prompts).

What is measured, in this order, in one process:

* the vision tower once (``encode_image``) and the text tower over all prompts;
* one chunk of ``--prompt-batch`` prompts grounded and fused over the shared vision features, and
  one single prompt over the same features (chunk size 1);
* one plain ``Sam3Model`` call with one prompt (the image encoded again: what calling SAM 3 once
  per class costs, as in transformers' example and SegEarth-OV3's loop over ``set_image``);
* SCLIP with a full-size CLIP ViT-B/16 on the same photo and vocabularies (text embeddings cached,
  as in a benchmark run).

On a small CPU a full pass over 150 prompts takes tens of minutes, so by default the per-image
time for N prompts is composed from the measured parts: vision + text + ceil(N / P) x chunk time
(stated as such in the output). ``--full`` runs ``Sam3Method.segment`` end to end for both
vocabularies instead (use it on a GPU). Peak memory is the process's resident set (CPU) or
``torch.cuda.max_memory_allocated`` (CUDA) during each step.

    python bench/sam3.py [--threads 2] [--prompt-batch 4] [--device cpu] [--full] [--smoke]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("OVSS_CACHE_DIR", "")
sys.path.insert(0, str(Path(__file__).resolve().parent))


class PeakMemory:
    """Peak resident memory (GiB) of this process while the block runs, sampled every 20 ms; on
    CUDA the allocator's peak instead."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        proc = psutil.Process()
        self._stop = threading.Event()
        self.peak = proc.memory_info().rss / 2**30

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss / 2**30)
                time.sleep(0.02)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**30
            return
        self._stop.set()
        self._thread.join()


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """``fn()``, its wall seconds and peak memory (GiB)."""
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return out, seconds, mem.peak


def full_size_sam3(device: torch.device):
    """SAM 3 of the released architecture (default ``Sam3Config``) with random weights."""
    from transformers import Sam3Config, Sam3Model

    from ovss.models.clip import _byte_level_tokenizer
    from ovss.models.sam3 import Sam3Backbone

    torch.manual_seed(0)
    return Sam3Backbone(Sam3Model(Sam3Config()), _byte_level_tokenizer(), "sam3-default-config", device)


def measure_sam3(args: argparse.Namespace, image: np.ndarray, vocabs: dict, device: torch.device) -> dict:
    """Seconds per image and peak memory of ``sam3`` for each vocabulary (see the module docstring)."""
    from ovss.methods.sam3 import Sam3Method, Sam3Settings, fuse_prompt_maps
    from ovss.models.sam3 import TEXT_LENGTH

    size = image.shape[:2]
    results: dict[str, dict[str, float]] = {}
    if args.smoke:
        from ovss.models.sam3 import load_sam3

        sam3, build_s, _ = timed(lambda: load_sam3("tiny-random", device), device)
    else:
        sam3, build_s, _ = timed(lambda: full_size_sam3(device), device)
    params = sum(p.numel() for p in sam3.model.parameters()) / 1e6
    print(f"SAM 3 {sam3.name} (random weights): {params:.1f}M parameters, built in {build_s:.0f} s")
    settings = Sam3Settings(prompt_batch=args.prompt_batch)
    method = Sam3Method({"sam3": sam3}, settings, device)

    if args.full:
        for key, vocab in vocabs.items():
            _, seconds, peak = timed(lambda vocab=vocab: method.segment(image, vocab), device)
            results[key] = {"seconds": seconds, "peak": peak}
            print(
                f"sam3 {key} classes ({len(vocab.queries)} prompts), end to end: {seconds:.1f} s/image, "
                f"peak {peak:.2f} GiB"
            )
    else:
        vision, vision_s, vision_peak = timed(lambda: sam3.encode_image(sam3.pixels(image)), device)
        print(f"vision tower once: {vision_s:.1f} s, peak {vision_peak:.2f} GiB")
        queries = list(vocabs["150"].queries)
        text, text_s, _ = timed(lambda: sam3.encode_text(queries), device)
        print(f"text tower: {len(queries)} prompts in {text_s:.1f} s ({text_s / len(queries):.3f} s/prompt)")

        def chunk(count: int):
            out = sam3.ground(vision, text[0][:count], text[1][:count])
            return fuse_prompt_maps(out, size, settings.confidence_threshold)

        _, batch_s, batch_peak = timed(lambda: chunk(args.prompt_batch), device)
        _, single_s, single_peak = timed(lambda: chunk(1), device)
        per_batched, per_single = batch_s / args.prompt_batch, single_s
        print(
            f"grounding + fusion, shared vision features: chunk of {args.prompt_batch}: {batch_s:.1f} s "
            f"({per_batched:.1f} s/prompt), peak {batch_peak:.2f} GiB; chunk of 1: {per_single:.1f} s/prompt, "
            f"peak {single_peak:.2f} GiB"
        )

        def plain_call():
            tokens = sam3.tokenizer(
                [queries[0]], padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt"
            ).to(device)
            with torch.no_grad():
                return sam3.model(pixel_values=sam3.pixels(image), **tokens)

        _, call_s, call_peak = timed(plain_call, device)
        print(f"one plain Sam3Model call (image re-encoded, one prompt): {call_s:.1f} s, peak {call_peak:.2f} GiB")
        for key, vocab in vocabs.items():
            n = len(vocab.queries)
            share = text_s * n / len(queries)
            batched = vision_s + share + math.ceil(n / args.prompt_batch) * batch_s
            single = vision_s + share + n * per_single
            per_call = n * call_s
            results[key] = {"seconds": batched, "peak": max(vision_peak, batch_peak)}
            print(
                f"sam3 {key} classes ({n} prompts), composed from the measured parts: batched "
                f"{batched:.0f} s/image; chunks of 1 {single:.0f} s ({single / batched:.2f}x); one plain call "
                f"per class {per_call:.0f} s ({per_call / batched:.1f}x the batched time)"
            )

    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompt-batch", type=int, default=4, help="prompts per grounding chunk (default 4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="run every prompt of both vocabularies end to end")
    parser.add_argument("--smoke", action="store_true", help="tiny random models: checks the script in seconds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    from dense_clip import full_size_clip
    from ovss.data.classes import ADE20K_150, VOC20
    from ovss.methods.dense_clip import DenseCLIPMethod, DenseCLIPSettings
    from ovss.ops.text import embed_queries
    from ovss.vocab import build_vocabulary

    device = torch.device(args.device)
    image = _photo()
    size = image.shape[:2]
    vocabs = {"21": build_vocabulary(list(VOC20), "threshold"), "150": build_vocabulary(list(ADE20K_150))}
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}, image {size[1]}x{size[0]}")

    results = measure_sam3(args, image, vocabs, device)
    gc.collect()  # SAM 3's weights are gone: SCLIP's peak memory below is its own
    if args.smoke:
        from ovss.models.clip import load_clip

        clip = load_clip("tiny-random")
    else:
        clip = full_size_clip("B/16")
    clip.model.to(device)
    clip.device = device
    sclip_settings = DenseCLIPSettings(variant="sclip", logit_scale=40.0)
    sclip = DenseCLIPMethod({"clip": clip}, sclip_settings, device)
    for key, vocab in vocabs.items():
        embed_queries(clip, list(vocab.queries), sclip.templates)  # cached: excluded from the image time
        sclip.segment(image, vocab)  # warm-up
        _, seconds, peak = timed(lambda vocab=vocab: sclip.segment(image, vocab), device)
        ratio = results[key]["seconds"] / seconds
        print(
            f"sclip ViT-B/16 {key} classes: {seconds:.2f} s/image, peak {peak:.2f} GiB; "
            f"sam3 / sclip = {ratio:.1f}x the time"
        )


def _photo() -> np.ndarray:
    from PIL import Image

    from shared_paths import ADE_IMAGES as path

    if path.is_dir():
        return np.asarray(Image.open(path / "ADE_val_00000001.jpg").convert("RGB"))
    return np.random.default_rng(0).integers(0, 255, (512, 683, 3), dtype=np.uint8)


if __name__ == "__main__":
    main()
