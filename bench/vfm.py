"""Seconds per image and peak memory: ProxyCLIP and the CorrCLIP-style pipeline against SCLIP.

Full-size architectures with random weights (speed and memory do not depend on them): CLIP
ViT-B/16, DINOv2 ViT-B/14 as the proxy, SAM2 Hiera-tiny masks at CorrCLIP's 8x8 preset. Each
method keeps its own protocol: SCLIP short side 336 with 224/112 windows; ProxyCLIP and CorrCLIP
short side 336 with 336/112 windows padded to 56. A 500x375 image (-> 448x336), 21 VOC classes
with background words; text embeddings are built before the clock starts (with one template by
default: they are not timed, and 80 templates cost minutes of text encoding per process on a
loaded CPU). Each method runs in its own process, so each peak RSS is its own; one warm-up
image, then ``--images`` timed ones.

    python bench/vfm.py [--images 2] [--threads 2] [--templates openai_imagenet_80]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("OVSS_CACHE_DIR", "")
sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ("sclip", "proxyclip", "corrclip")
VOC = (
    "aeroplane; bicycle; bird; boat; bottle; bus; car; cat; chair; cow; dining table; dog; horse; motorbike; "
    "person; potted plant; sheep; sofa; train; tv monitor"
)


def dinov2_base():
    from transformers import Dinov2Config, Dinov2Model

    from ovss.models.dino import DinoBackbone

    torch.manual_seed(0)
    return DinoBackbone(Dinov2Model(Dinov2Config()), "dinov2-vitb14-random")  # Dinov2Config() is ViT-B/14


def build(method: str, templates: str):
    from amg import hiera_tiny_sam2
    from dense_clip import full_size_clip
    from ovss.api import Segmenter
    from ovss.masks.sam import SamBackbone
    from ovss.methods import corrclip as _corrclip  # noqa: F401  (registers corrclip)
    from ovss.methods import proxyclip as _proxyclip  # noqa: F401  (registers proxyclip)

    clip = full_size_clip("B/16")
    common = {"device": "cpu", "templates": templates}
    if method == "sclip":
        return Segmenter("sclip", clip=clip, **common, logit_scale=65.0, prob_thd=0.1, area_thd=0.1)
    if method == "proxyclip":
        return Segmenter("proxyclip", clip=clip, dino=dinov2_base(), **common, prob_thd=0.2)
    sam = SamBackbone(hiera_tiny_sam2(), "sam2-hiera-tiny-random")
    return Segmenter("corrclip", clip=clip, dino=dinov2_base(), sam=sam, **common, prob_thd=0.2)


def run_one(method: str, images: int, templates: str) -> dict:
    from amg import _reset_peak, _rss_mb
    from dense_clip import test_image

    segmenter = build(method, templates)
    image = test_image()
    segmenter.segment(image, VOC, background="words")  # warm-up; text embeddings built and cached
    model_mb = _rss_mb("VmRSS")
    _reset_peak()
    times, masks = [], None
    for i in range(images):
        frame = image if i % 2 == 0 else np.ascontiguousarray(image[:, ::-1])
        start = time.perf_counter()
        segmenter.segment(frame, VOC, background="words")
        times.append(time.perf_counter() - start)
    inner = segmenter.method
    if hasattr(inner, "mask_generator"):
        masks = len(inner.mask_generator.generate(image))
    return {
        "method": method,
        "seconds": float(np.mean(times)),
        "peak_rss_mb": _rss_mb("VmHWM"),
        "model_rss_mb": model_mb,
        "masks": masks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--templates", default="simple", help="template set for the (untimed) text embeddings")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one, args.images, args.templates)))
        return
    print(f"torch {torch.__version__}, {args.threads} threads, 500x375 -> 448x336, {args.images} images per method")
    for method in METHODS:
        cmd = [sys.executable, __file__, "--one", method, "--images", str(args.images), "--threads", str(args.threads)]
        cmd += ["--templates", args.templates]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        res = json.loads(out)
        extra = f", {res['masks']} SAM2 masks" if res["masks"] is not None else ""
        print(
            f"{method:10s} {res['seconds']:7.2f} s/image  peak RSS {res['peak_rss_mb']:6.0f} MB "
            f"(after loading and one image: {res['model_rss_mb']:5.0f} MB){extra}"
        )


if __name__ == "__main__":
    main()
