"""Milliseconds per mask of SAM's low-res -> full-size step, Meta's interpolation route against
the one-matrix route (``AMGSettings.upsample``), stability score and threshold included.

Protocol: 64 random 256x256 low-res logit maps (SAM ViT at 1024 input) and 128x128 (512 input),
mapped to a 480x640 crop whose resized input is 768x1024 (resp. 384x512); one warm-up, then the
mean of ``--repeats`` runs.

    OMP_NUM_THREADS=2 PYTHONPATH=src python bench/sam_upsample.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from ovss.masks.decoder import SamCropState


def _state(input_size: int, low: int, input_hw, crop_hw, route: str) -> SamCropState:
    state = SamCropState.__new__(SamCropState)  # only the sizes matter for upsampling
    state.input_size, state.input_hw, state.crop_hw = input_size, tuple(input_hw), tuple(crop_hw)
    state.low_hw, state.upsample, state._mats = (low, low), route, None
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    for input_size, low, input_hw in [(1024, 256, (768, 1024)), (512, 128, (384, 512))]:
        logits = torch.randn(args.masks, low, low, generator=gen)
        for route in ("interpolate", "matrix"):
            state = _state(input_size, low, input_hw, (480, 640), route)
            state.full_size(logits[:2], 0.0, 1.0)
            start = time.perf_counter()
            for _ in range(args.repeats):
                state.full_size(logits, 0.0, 1.0)
            ms = (time.perf_counter() - start) / args.repeats / args.masks * 1000
            print(f"input {input_size}, {route:11s}: {ms:6.2f} ms per mask")


if __name__ == "__main__":
    main()
