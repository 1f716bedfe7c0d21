"""S-Seg cost at full size with random weights (speed does not depend on weight values).

* Training: Swin-S MaskFormer (64 queries, 6 decoder layers) + 12-layer text transformer, full
  loss (Hungarian mask loss + InfoNCE) and AdamW step, images/s and peak memory per batch size,
  fp32 and bf16; same-run baseline: the forward pass alone at the same batch.
* Pseudo-masks: K = 8 k-means on DINO ViT-S/8 tokens of a 448 crop (56 x 56 tokens), seconds per
  image, against the DINO forward alone.
* Inference: seconds per 500 x 375 image (short side 448, windows 448 / 224, 20 classes), against
  one forward pass of a single 448 window.
* The paper recipe (26M pairs x 30 epochs) on 8 devices, extrapolated from the measured rate.

    PYTHONPATH=src python bench/sseg.py [--device cuda] [--batches 1,2] [--steps 2]

On CUDA the batch doubles from --batches' first value until memory runs out (the largest that fits).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings

import numpy as np
import torch

warnings.simplefilter("ignore")
VOC20 = (
    "aeroplane; bicycle; bird; boat; bottle; bus; car; cat; chair; cow; dining table; dog; horse; motorbike; "
    "person; potted plant; sheep; sofa; train; tv monitor"
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    try:  # this process's own peak RSS (ru_maxrss would carry a parent's peak into a child)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def isolated_train_rate(batch: int, size: int, steps: int, precision: str, threads: int) -> dict:
    """One configuration in a fresh process, so that its peak RSS is its own (CPU peaks never go down)."""
    from ovss.methods.sseg.model import ModelConfig, SSegModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return train_rate(SSegModel(ModelConfig()), batch, size, steps, precision, torch.device("cpu"))


def batch_inputs(model, batch: int, size: int, device: torch.device):
    g = torch.Generator().manual_seed(batch)
    pixels = torch.randn(batch, 3, size, size, generator=g).to(device)
    tokens = model.tokenize([f"a photo of a thing number {i} on a table" for i in range(batch)], device)
    grid = torch.randint(0, 8, (batch, size // 32, size // 32), generator=g)
    from ovss.methods.sseg.pseudo import masks_from_clusters

    targets = [t.to(device) for t in masks_from_clusters(grid, (size // 4, size // 4))]
    return pixels, tokens, targets


def train_rate(model, batch: int, size: int, steps: int, precision: str, device: torch.device) -> dict:
    from ovss.device import autocast
    from ovss.methods.sseg.losses import contrastive_loss, mask_loss

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    pixels, tokens, targets = batch_inputs(model, batch, size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with autocast(device, precision):
            masks, image, text, scale = model(pixels, tokens)
            loss = mask_loss(masks.float(), targets) + contrastive_loss(image.float(), text.float(), scale.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    train_s = (time.perf_counter() - start) / steps
    with torch.no_grad(), autocast(device, precision):
        model(pixels, tokens)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            model(pixels, tokens)
        sync(device)
    forward_s = (time.perf_counter() - start) / steps
    return {
        "batch": batch,
        "precision": precision,
        "images_per_s": round(batch / train_s, 3),
        "step_s": round(train_s, 3),
        "forward_only_s": round(forward_s, 3),
        "peak_memory_gb": round(peak_memory_gb(device), 2),
    }


def kmeans_cost(device: torch.device, images: int = 4) -> dict:
    from transformers import ViTConfig, ViTModel

    from ovss.methods.sseg.pseudo import cluster_maps
    from ovss.models.dino import DinoBackbone

    torch.manual_seed(0)  # DINO ViT-S/8: 384 wide, 12 layers, 6 heads, patch 8
    vit = ViTModel(
        ViTConfig(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            patch_size=8,
            image_size=224,
        ),
        add_pooling_layer=False,
    )
    dino = DinoBackbone(vit, "dino-vits8-random", device)
    pixels = torch.randint(0, 255, (images, 3, 448, 448), dtype=torch.uint8)
    cluster_maps(dino, pixels[:1], 8, 448, seed=0)
    sync(device)
    start = time.perf_counter()
    cluster_maps(dino, pixels, 8, 448, seed=0)
    sync(device)
    total = (time.perf_counter() - start) / images
    x = (pixels.float() / 255).to(device)
    start = time.perf_counter()
    dino.patch_features(x)
    sync(device)
    forward = (time.perf_counter() - start) / images
    return {"seconds_per_image": round(total, 4), "dino_forward_only_s": round(forward, 4), "batch": images}


def inference_cost(model, device: torch.device) -> dict:
    from ovss.methods.base import get_method_spec
    from ovss.methods.sseg import SSegMethod
    from ovss.vocab import build_vocabulary

    method = SSegMethod.__new__(SSegMethod)  # reuse the built model without a checkpoint on disk
    method.model, method.settings, method.device = model.eval(), get_method_spec("sseg").settings, device
    method.mean, method.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    method.templates = ("a photo of a {}.",)
    image = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    vocab = build_vocabulary(VOC20, "threshold")
    method.segment(image, vocab)
    sync(device)
    start = time.perf_counter()
    method.segment(image, vocab)
    sync(device)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x = torch.randn(1, 3, 448, 448, device=device)
        start = time.perf_counter()
        model.forward_image(x)
        sync(device)
    return {"seconds_per_image": round(seconds, 3), "one_window_forward_s": round(time.perf_counter() - start, 3)}


def main() -> None:
    from ovss.methods.sseg.model import ModelConfig, SSegModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = SSegModel(ModelConfig()).to(device)
    params = sum(p.numel() for p in model.parameters())
    report: dict = {"device": str(device), "parameters_m": round(params / 1e6, 1), "train": []}
    if not args.skip_train:
        batches = [int(b) for b in args.batches.split(",")]
        for precision in ("fp32", "bf16"):
            if device.type == "cuda":  # double until out of memory: the largest batch that fits
                batch = batches[0]
                while True:
                    try:
                        report["train"].append(train_rate(model, batch, args.size, args.steps, precision, device))
                    except torch.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        break
                    batch *= 2
            else:  # each batch in its own process: a peak RSS per configuration
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                for batch in batches:
                    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                        job = pool.submit(
                            isolated_train_rate, batch, args.size, args.steps, precision, torch.get_num_threads()
                        )
                        report["train"].append(job.result())
            print(json.dumps(report["train"][-1]), file=sys.stderr)
    fp32 = [r for r in report["train"] if r["precision"] == "fp32"]
    if device.type == "cpu" and len(fp32) >= 2:
        # peak RSS grows linearly in the batch: the largest that fits this machine's memory, by extrapolation
        (b0, m0), (b1, m1) = [(r["batch"], r["peak_memory_gb"]) for r in (fp32[0], fp32[-1])]
        per_image = (m1 - m0) / (b1 - b0)
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        report["largest_cpu_batch_extrapolated"] = {
            "note": "EXTRAPOLATION from the measured fp32 peaks, linear in the batch, 90% of physical memory",
            "gb_per_image": round(per_image, 2),
            "memory_gb": round(total, 1),
            "batch": int((0.9 * total - (m0 - per_image * b0)) // per_image) if per_image > 0 else None,
        }
    report["kmeans_pseudo_masks"] = kmeans_cost(device)
    report["inference"] = inference_cost(model, device)
    if report["train"]:
        best = max(r["images_per_s"] for r in report["train"])
        samples = 26e6 * 30
        report["paper_recipe_extrapolation"] = {
            "note": "EXTRAPOLATION, not measured: 26M pairs x 30 epochs at the best measured rate x 8 devices, "
            "no data loading or k-means in the loop",
            "hours_on_8_devices": round(samples / (best * 8) / 3600, 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
