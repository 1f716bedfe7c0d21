"""TUSS in its four supervision settings on the synthetic world, where the right answer is known.

The synthetic CLIP's text is bent so zero-shot (OVSS) confuses two pairs of classes; image tags
(WSSS), labels on a quarter of the images (SSS) or on all (FSSS) can correct it. Each setting is
fitted with ``fit_tuss`` and scored on held-out scenes (see ``bench/tuss_world.py``).

    python bench/tuss_synthetic.py [--train 60] [--test 12] [--labelled 0.25] [--merge 0.3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings

import torch

os.environ.setdefault("OVSS_CACHE_DIR", "")
warnings.simplefilter("ignore")


def main() -> None:
    from tuss_world import SETTINGS, compare_settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--test", type=int, default=12)
    ap.add_argument("--labelled", type=float, default=0.25, help="share of training images with labels (sss)")
    ap.add_argument("--merge", type=float, default=0.3, help="probability that a SAM-like mask merges two regions")
    ap.add_argument("--probe-iters", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 2))
    with tempfile.TemporaryDirectory() as tmp:
        r = compare_settings(tmp, args.train, args.test, args.labelled, args.merge, args.seed, args.probe_iters)
    print(json.dumps(r, indent=1))
    print(f"\n{'setting':8s} {'test mIoU':>10s} {'train seeds':>12s}")
    for s in SETTINGS:
        print(f"{s:8s} {r[s]['test_mIoU']:10.1f} {r[s]['train_seed_mIoU']:12.1f}")


if __name__ == "__main__":
    main()
