"""Seconds per image for the SCLIP pipeline with full-size CLIP ViT-B/16 (random weights).

Protocol: a 500x375 image, short side 336 (-> 448x336), 224/112 windows (6 windows), 80
templates, 21 classes with background words (text embeddings are built once and excluded from
the per-image time, as in a benchmark run). Reports, all timed interleaved in this one process
(median of ``--repeats``): fp32; bf16 through autocast (the path before issue 15,
``cast_weights=False``); bf16 with the image tower cast once (``cast_weights=True``, the default);
with ``--compile`` the frozen-compile path in fp32 and bf16; with ``--image-batch N`` N images
through ``segment_many`` (windows batched across images) against N calls of ``segment``. Each
with the achieved GFLOP/s of the image tower against a matmul peak measured in the same process.
Then the label agreement of these paths on real VOC and ADE20K photos (``--photos``), and with
``--profile`` where one bf16 image's time goes, per op, in both bf16 paths (docs/speed.md).

    python bench/dense_clip.py [--repeats 5] [--threads 2] [--photos 6] [--compile] [--image-batch 4] [--profile]
"""

from __future__ import annotations

import argparse
import dataclasses
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


def perturb_layer_norms(clip, seed: int = 0) -> None:
    """Random LayerNorm gains and biases: random init leaves them 1 and 0, which bf16 holds exactly,
    so a cast copy of the tower would hide the rounding that trained weights show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in clip.vision.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=gen))


def real_photos(count: int) -> list[tuple[str, np.ndarray]]:
    """Up to ``count`` real photos, VOC and ADE20K alternating (bench/shared_paths.py)."""
    from PIL import Image

    from shared_paths import ADE_IMAGES, EVALDATA

    voc = sorted((EVALDATA / "vainf_voc_samples" / "samples").glob("*_image.png"))
    ade = sorted(ADE_IMAGES.glob("*.jpg"))
    paths = [p for pair in zip(voc, ade) for p in pair] + voc[len(ade) :] + ade[len(voc) :]
    return [(p.name, np.asarray(Image.open(p).convert("RGB"))) for p in paths[:count]]


def median_times(runs: dict, repeats: int) -> dict[str, float]:
    """Each callable timed ``repeats`` times, interleaved (the machine's load hits all alike); medians."""
    for fn in runs.values():  # warm-up (and compilation)
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def profile_table(fn, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--photos", type=int, default=6, help="real VOC/ADE photos for the label agreement (0: none)")
    parser.add_argument("--compile", action="store_true", help="also time the frozen-compile path (compiles once)")
    parser.add_argument("--image-batch", type=int, default=0, help="also time N images through segment_many")
    parser.add_argument("--profile", action="store_true", help="print where one bf16 image's time goes, per op")
    parser.add_argument("--agreement-only", action="store_true", help="only the label agreement on real photos")
    parser.add_argument("--templates", default="openai_imagenet_80", help="text template set")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from ovss.methods.dense_clip import DenseCLIPMethod, DenseCLIPSettings
    from ovss.ops.text import embed_queries
    from ovss.ops.windows import window_grid
    from ovss.vocab import build_vocabulary

    clip = full_size_clip()
    perturb_layer_norms(clip)
    vocab = build_vocabulary(
        "aeroplane; bicycle; bird; boat; bottle; bus; car; cat; chair; cow; dining table; dog; horse; motorbike; "
        "person; potted plant; sheep; sofa; train; tv monitor",
        "words",
    )
    image = test_image()
    t0 = time.perf_counter()
    base = DenseCLIPSettings(variant="sclip", logit_scale=65.0, prob_thd=0.1, area_thd=0.1, templates=args.templates)
    embed_queries(clip, list(vocab.queries), DenseCLIPMethod({"clip": clip}, base, torch.device("cpu")).templates)
    text_seconds = time.perf_counter() - t0

    def method(**changes) -> DenseCLIPMethod:
        return DenseCLIPMethod({"clip": clip}, dataclasses.replace(base, **changes), torch.device("cpu"))

    # (name, settings changes): today's paths first, the baselines of the rows after them
    paths = {
        "fp32": method(precision="fp32"),
        "bf16 autocast (before)": method(precision="bf16", cast_weights=False),
        "bf16 cast tower (after)": method(precision="bf16"),
    }
    if args.compile:
        paths["fp32 frozen compile"] = method(precision="fp32", compile=True)
        paths["bf16 cast + frozen compile"] = method(precision="bf16", compile=True)

    windows = len(window_grid(336, 448, 224, 112))
    flops = windows * vit_flops(1 + 14 * 14, 768, 12, 16)
    print(f"torch {torch.__version__}, {args.threads} threads, image 500x375 -> 448x336, {windows} windows")
    print(
        f"text embeddings: {len(vocab.queries)} queries x {args.templates} templates in {text_seconds:.1f} s "
        "(once, cached; not in the per-image times)"
    )
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak (2048^3, this process): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")

    if not args.agreement_only:
        time_paths(args, paths, image, vocab, flops, peaks)
    agreement(real_photos(args.photos), paths, clip, vocab)


def time_paths(args, paths: dict, image: np.ndarray, vocab, flops: float, peaks: dict[str, float]) -> None:
    compile_seconds = {}
    for name, m in list(paths.items()):
        if m.settings.compile:
            start = time.perf_counter()
            try:
                m.segment(image, vocab)
            except Exception as e:  # a bench reports a failed compile and goes on with the other paths
                print(f"{name}: compile failed: {type(e).__name__}: {str(e).splitlines()[0]}")
                del paths[name]
                continue
            compile_seconds[name] = time.perf_counter() - start
    seconds = median_times({name: (lambda m=m: m.segment(image, vocab)) for name, m in paths.items()}, args.repeats)
    before = seconds["bf16 autocast (before)"]
    for name, sec in seconds.items():
        dtype = name.split()[0]
        gflops = flops / sec / 1e9
        extra = f"; compiled in {compile_seconds[name]:.0f} s" if name in compile_seconds else ""
        print(
            f"{name:28s} {sec:6.2f} s/image  {gflops:5.0f} GFLOP/s = {gflops / peaks[dtype]:4.0%} of the {dtype} "
            f"peak; vs fp32 {seconds['fp32'] / sec:.2f}x, vs bf16 before {before / sec:.2f}x{extra}"
        )

    if args.image_batch > 1:
        m = paths["bf16 cast tower (after)"]
        images = [image] * args.image_batch
        batched = median_times(
            {
                "one at a time": lambda: [m.segment(im, vocab) for im in images],
                "segment_many": lambda: m.segment_many(images, vocab),
            },
            args.repeats,
        )
        print(
            f"bf16 cast, {args.image_batch} images: one at a time {batched['one at a time'] / args.image_batch:.2f} "
            f"s/image, segment_many {batched['segment_many'] / args.image_batch:.2f} s/image "
            f"({batched['one at a time'] / batched['segment_many']:.2f}x)"
        )

    if args.profile:
        for name in ("bf16 autocast (before)", "bf16 cast tower (after)"):
            print(f"\nprofile, one image, {name}:")
            print(profile_table(lambda m=paths[name]: m.segment(image, vocab)))


def agreement(photos: list, paths: dict, clip, vocab) -> None:
    from ovss.methods.dense_clip import DenseCLIPMethod
    from ovss.ops.text import embed_queries

    if photos:
        text = embed_queries(clip, list(vocab.queries), paths["fp32"].templates)

        def label_maps(m: DenseCLIPMethod, photo: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
            # segment's labels, and the more sensitive nearest query per pixel at the resized size
            scores, pixels = m.query_scores(photo, text)
            return m.labels_from_scores(photo.shape[:2], scores, pixels, vocab, False).labels, scores.argmax(0).numpy()

        maps = {name: [label_maps(m, photo) for _, photo in photos] for name, m in paths.items()}

        def changed(a: str, b: str, which: int) -> str:
            pairs = [(x[which], y[which]) for x, y in zip(maps[a], maps[b])]
            return f"{sum(int((x != y).sum()) for x, y in pairs) / sum(x.size for x, _ in pairs):.3%}"

        names = ", ".join(n for n, _ in photos)
        print(f"\nchanged pixels on {len(photos)} real photos ({names}): labels / nearest query")
        ref = ("bf16 autocast (before)", "fp32")
        print(f"  bf16 before vs fp32 (the reference: bf16's own noise): {changed(*ref, 0)} / {changed(*ref, 1)}")
        for name in paths:
            if name not in ref:
                print(
                    f"  {name}: vs bf16 before {changed(name, ref[0], 0)} / {changed(name, ref[0], 1)}, "
                    f"vs fp32 {changed(name, 'fp32', 0)} / {changed(name, 'fp32', 1)}"
                )
        print("  (random weights: near-tied scores make these upper bounds of what trained weights change)")


if __name__ == "__main__":
    main()
