"""Text embeddings for a 150-class vocabulary (ADE20K-150 with ProxyCLIP's name file), cold and warm.

Full-size CLIP ViT-B/16 text tower with random weights (speed does not depend on them), 80
ImageNet templates. Measured in one process: cold (empty memory and disk caches), warm (the same
vocabulary again: every query cached), and the vocabulary plus one class (only that class is
encoded). Also reports fp32 vs bf16 autocast of the text tower: the largest cosine difference and
whether the nearest-class choice of 200 random image embeddings changes.

    python bench/text.py [--threads 2] [--templates openai_imagenet_80]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

os.environ["OVSS_CACHE_DIR"] = tempfile.mkdtemp(prefix="ovss-text-bench-")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--templates", default="openai_imagenet_80")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dense_clip import full_size_clip
    from ovss.data.protocol_names import protocol_vocabulary
    from ovss.ops import text
    from ovss.templates import get_templates

    clip = full_size_clip("B/16")
    vocab = protocol_vocabulary("proxyclip", "ade20k150")
    queries = list(vocab.queries)
    templates = get_templates(args.templates)
    print(f"{vocab.num_classes} classes, {len(queries)} queries, {len(templates)} templates")

    start = time.perf_counter()
    cold = text.embed_queries(clip, queries, templates)
    t_cold = time.perf_counter() - start
    start = time.perf_counter()
    warm = text.embed_queries(clip, queries, templates)
    t_warm = time.perf_counter() - start
    start = time.perf_counter()
    text.embed_queries(clip, [*queries, "a brand-new class"], templates)
    t_plus = time.perf_counter() - start
    assert torch.equal(cold, warm)
    print(f"cold {t_cold:.1f} s; warm {t_warm * 1e3:.1f} ms ({t_cold / t_warm:.0f}x); one class added {t_plus:.2f} s")

    text.clear_text_cache()
    os.environ["OVSS_CACHE_DIR"] = ""  # no disk cache: encode again under bf16 autocast
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = text.embed_queries(clip, queries, templates)
    t_bf16 = time.perf_counter() - start
    images = torch.nn.functional.normalize(torch.randn(200, cold.shape[1]), dim=-1)
    same = (images @ cold.T).argmax(1).eq((images @ bf16.float().T).argmax(1)).float().mean().item()
    diff = (cold - bf16.float()).norm(dim=1).max().item()
    print(
        f"bf16 {t_bf16:.1f} s ({t_cold / t_bf16:.2f}x of fp32); max embedding difference {diff:.2e}; "
        f"nearest class unchanged for {100 * same:.1f}% of 200 random image embeddings"
    )


if __name__ == "__main__":
    main()
