"""Seconds per image for the SCLIP pipeline with full-size CLIP ViT-B/16 (random weights).

Protocol: a 500x375 image, short side 336 (-> 448x336), 224/112 windows (6 windows), 80
templates, 21 classes with background words (text embeddings are built once and excluded from
the per-image time, as in a benchmark run). Reports fp32 and bf16, the achieved GFLOP/s of the
image tower against a matmul peak measured in the same process, and the bf16 error.

    python bench/dense_clip.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

os.environ.setdefault("OVSS_CACHE_DIR", "")


def vit_flops(tokens: int, width: int, layers: int, patch: int, mlp_ratio: int = 4) -> float:
    """Forward FLOPs (2 per multiply-add) of a ViT image tower on ``tokens`` tokens (CLS included)."""
    per_layer = 2 * (4 * tokens * width * width + 2 * tokens * tokens * width + 2 * mlp_ratio * tokens * width * width)
    return layers * per_layer + 2 * (tokens - 1) * 3 * patch * patch * width


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


# (text width, text heads, vision width, vision layers, vision heads, patch, projection) of OpenAI's CLIPs
CLIP_ARCHS = {"B/16": (512, 8, 768, 12, 12, 16, 512), "L/14": (768, 12, 1024, 24, 16, 14, 768)}


def full_size_clip(arch: str = "B/16"):
    """A CLIP of the full-size architecture with random weights (speed does not depend on them)."""
    from transformers import CLIPConfig, CLIPModel

    from ovss.models.clip import CLIPBackbone, _byte_level_tokenizer

    tw, th, vw, vl, vh, patch, proj = CLIP_ARCHS[arch]
    config = CLIPConfig(
        text_config=dict(
            hidden_size=tw,
            intermediate_size=4 * tw,
            num_hidden_layers=12,
            num_attention_heads=th,
            vocab_size=514,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        ),
        vision_config=dict(
            hidden_size=vw,
            intermediate_size=4 * vw,
            num_hidden_layers=vl,
            num_attention_heads=vh,
            image_size=224,
            patch_size=patch,
        ),
        projection_dim=proj,
    )
    torch.manual_seed(0)
    name = "clip-vit-" + arch.lower().replace("/", "") + "-random"
    return CLIPBackbone(CLIPModel(config), _byte_level_tokenizer(), name)


def test_image() -> np.ndarray:
    from PIL import Image

    from shared_paths import ADE_IMAGES as photo

    if photo.is_dir():
        return np.asarray(Image.open(photo / "ADE_val_00000002.jpg").convert("RGB").resize((500, 375)))
    return np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from ovss.methods.dense_clip import DenseCLIPMethod, DenseCLIPSettings
    from ovss.ops.text import embed_queries
    from ovss.ops.windows import window_grid
    from ovss.vocab import build_vocabulary

    clip = full_size_clip()
    vocab = build_vocabulary(
        "aeroplane; bicycle; bird; boat; bottle; bus; car; cat; chair; cow; dining table; dog; horse; motorbike; "
        "person; potted plant; sheep; sofa; train; tv monitor",
        "words",
    )
    image = test_image()
    t0 = time.perf_counter()
    settings = DenseCLIPSettings(variant="sclip", logit_scale=65.0, prob_thd=0.1, area_thd=0.1)
    method = DenseCLIPMethod({"clip": clip}, settings, torch.device("cpu"))
    embed_queries(clip, list(vocab.queries), method.templates)
    text_seconds = time.perf_counter() - t0

    windows = len(window_grid(336, 448, 224, 112))
    flops = windows * vit_flops(1 + 14 * 14, 768, 12, 16)
    print(f"torch {torch.__version__}, {args.threads} threads, image 500x375 -> 448x336, {windows} windows")
    print(f"text embeddings: {len(vocab.queries)} queries x 80 templates in {text_seconds:.1f} s (once, cached)")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}

    # Baseline in the same process: transformers' own CLIP vision forward on the same 6 windows.
    pixels = torch.randn(windows, 3, 224, 224)
    with torch.no_grad():
        clip.model.vision_model(pixel_values=pixels)
        start = time.perf_counter()
        for _ in range(args.repeats):
            clip.model.vision_model(pixel_values=pixels)
        hf_seconds = (time.perf_counter() - start) / args.repeats

    results = {}
    for precision in ("fp32", "bf16"):
        method.settings = DenseCLIPSettings(**{**vars(settings), "precision": precision})
        method.segment(image, vocab)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = method.segment(image, vocab)
            times.append(time.perf_counter() - start)
        text = embed_queries(clip, list(vocab.queries), method.templates)
        scores, _ = method.query_scores(image, text)
        results[precision] = (min(times), out.labels, scores)
        gflops = flops / min(times) / 1e9
        print(
            f"{precision}: {min(times):.2f} s/image ({1 / min(times):.2f} images/s), image tower "
            f"{flops / 1e9:.0f} GFLOP -> {gflops:.0f} GFLOP/s = {gflops / peaks[precision]:.0%} of the "
            f"{peaks[precision]:.0f} GFLOP/s {precision} matmul peak"
        )
    fp32_s, fp32_labels, fp32_scores = results["fp32"]
    bf16_s, bf16_labels, bf16_scores = results["bf16"]
    rel = ((bf16_scores - fp32_scores).norm() / fp32_scores.norm()).item()
    agree = float((bf16_labels == fp32_labels).mean())
    print(
        f"bf16 vs fp32: {fp32_s / bf16_s:.2f}x faster; cosine-map relative error {rel:.1e}; "
        f"label agreement {agree:.2%} (random weights: near-tied scores make this a lower bound)"
    )
    print(
        f"baseline: transformers CLIPVisionModel forward on the same {windows} windows (no dense head, no "
        f"post-processing): {hf_seconds:.2f} s; ovss fp32 whole pipeline / baseline = {fp32_s / hf_seconds:.2f}"
    )


if __name__ == "__main__":
    main()
