"""PixelCLIP at full size (CLIP ViT-B/16, random weights): training-step time and peak memory, and
inference seconds per image, each beside a same-run baseline (the dense-CLIP forward alone).

    PYTHONPATH=src python bench/pixelclip.py --batch 1 --steps 2 --device cpu
    PYTHONPATH=src python bench/pixelclip.py --batch 12 --steps 5 --device cuda   # the official per-GPU batch

Training uses the official resolution (320 input, 256 mask resolution, 64 prompts, ConvHead) on
random 640 crops with random masks; peak memory is CUDA's max allocated, or the process's peak RSS
growth on CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from dense_clip import full_size_clip, test_image


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_time(backbone, batch: int, steps: int, precision: str, device: torch.device) -> dict:
    import ovss.methods.pixelclip as pc
    from ovss.methods.pixelclip.model import PixelCLIPModel, cluster_targets, mask_logits, masked_bce, sinkhorn

    s = pc.train_settings({"precision": precision, "micro_batch": batch, "batch_size": batch})
    model = PixelCLIPModel(backbone.model.train(), backbone.tokenizer, s).to(device)
    from ovss.methods.pixelclip.train import _autocast, build_optimizer

    optimizer, scheduler = build_optimizer(model, s)
    gen = torch.Generator().manual_seed(0)
    views = torch.randn(batch, 3, s.clip_resolution, s.clip_resolution, generator=gen).to(device)
    masks = [
        (torch.rand(24, 40, 40, generator=gen) > 0.7).repeat_interleave(16, 1).repeat_interleave(16, 2).to(device)
        for _ in range(batch)
    ]
    size = (s.mask_resolution, s.mask_resolution)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps + 1):
        sync(device)
        start = time.perf_counter()
        with torch.no_grad(), _autocast(device, precision):
            teacher = model.teacher_features(views).float()
        with _autocast(device, precision):
            clusters = model.cluster_embeddings()
        logits, kept = mask_logits(teacher, masks, clusters.detach(), s.eps, size)
        targets = cluster_targets(kept, sinkhorn(logits).argmax(-1), s.num_prompts)
        with _autocast(device, precision):
            pred = model.mask_logits(model.student_features(views), clusters, size)
        masked_bce(pred.float(), targets).backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], s.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    return {"step_s": float(np.median(times[1:])), "peak_mb": round(peak_mb(device), 1)}


def dense_forward_time(backbone, batch: int, steps: int, precision: str, device: torch.device) -> float:
    from ovss.methods.pixelclip.model import dense_features
    from ovss.methods.pixelclip.train import _autocast

    x = torch.randn(batch, 3, 320, 320, device=device)
    times = []
    for _ in range(steps + 1):
        sync(device)
        start = time.perf_counter()
        with torch.no_grad(), _autocast(device, precision):
            dense_features(backbone.model.vision_model, backbone.model.visual_projection, x, 16)
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def inference_time(backbone, repeats: int, device: torch.device) -> dict:
    import ovss.methods.pixelclip as pc
    from ovss.methods.pixelclip.method import PixelCLIPMethod
    from ovss.methods.pixelclip.train import checkpoint_tensors
    from ovss.vocab import build_vocabulary

    s = pc.train_settings({})
    model = pc.model.PixelCLIPModel(backbone.model, backbone.tokenizer, s)
    import tempfile

    from ovss.checkpoints import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(
            tmp + "/run",
            "pixelclip",
            checkpoint_tensors(model),
            {},
            {"clip": backbone.name},
            {"base_clip_fingerprint": backbone.fingerprint},
        )
        method = PixelCLIPMethod({"clip": backbone}, pc.PixelCLIPSettings(), device, checkpoint=tmp + "/run")
    image = test_image()
    vocab = build_vocabulary([f"class {i}" for i in range(20)])
    text = method.text_embeddings(vocab)
    times, base = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        method.segment(image, vocab)
        sync(device)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        method.official_scores(image, text)
        sync(device)
        base.append(time.perf_counter() - start)
    return {"segment_s_per_image": float(np.median(times[1:])), "scores_only_s": float(np.median(base[1:]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1, help="images per device (official: 12)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    device = torch.device(args.device)
    for precision in args.precisions.split(","):
        backbone = full_size_clip("B/16")
        backbone.model.to(device)
        backbone.device = device
        dense = dense_forward_time(backbone, args.batch, args.steps, precision, device)
        train = train_step_time(backbone, args.batch, args.steps, precision, device)
        print(
            json.dumps(
                {
                    "precision": precision,
                    "batch": args.batch,
                    "device": str(device),
                    **train,
                    "dense_forward_s": round(dense, 3),
                    "step_over_forward": round(train["step_s"] / dense, 1),
                }
            ),
            flush=True,
        )
    backbone = full_size_clip("B/16")
    backbone.model.to(device)
    backbone.device = device
    print(json.dumps({"inference": inference_time(backbone, args.steps, device)}), flush=True)


if __name__ == "__main__":
    main()
