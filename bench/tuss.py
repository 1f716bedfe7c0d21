"""TUSS cost at full size with random weights (speed does not depend on weight values), each step
against a baseline measured in the same process.

Part 1, mask bank (what ``ovss fit tuss`` does per image: ``TUSSMethod.embed``): SAM ViT-B masks
with the ``tuss`` preset (32x32 points + 1 crop layer of 16x16, min area 100, level-aware filters,
containment filter), then DBA-CLIP ViT-B/16 over a global view and 224/56 windows (640x480 ->
448x608: 1 + 40 views) and mask pooling. Seconds per 640x480 photo, split into SAM and
DBA-CLIP + pooling. Baselines: (a) SAM's ``exact`` preset (32x32 points, no crops) on the same
image with the same thresholds; (b) the map route (``embedding_map`` at pixel resolution, then
``mask_pool``; what the bank did before ``pooled_embeddings``, and still what per-pixel scores
use) against the bank route, with their largest relative difference; (c) plain SCLIP (the same
views, resize and averaging, no mask bias) for the DBA-CLIP map, i.e. what the mask bias costs.

Random SAM predicts IoUs and stabilities in level-dependent ranges (level 0 ~0.75, level 1 ~1.0,
level 2 ~0.3 on an 8x8 grid), so one threshold would keep whole levels or none. As bench/amg.py
does, the IoU head's bias is raised by 1.0 and the thresholds are calibrated on the image, but per
level: ``pred_iou_thresh`` = the 55th percentile of all IoU predictions and
``stability_score_thresh`` = the median stability of those passing (bench/amg.py's values), with
per-level offsets that move each level's cut to its own 55th percentile (IoU) and median
(stability), so about 45% x 50% of every level's masks pass (random level-0 masks all have
stability 0 and all pass that filter). Both presets get these; tuss's +0.1 IoU bonus for level 2
becomes level 2's 35th percentile (about 65% pass instead of 45%). Its own min-area, NMS-priority
and containment settings are kept. The filters, decoder and RLE work are then realistic, but random
masks are noise spread over the whole image, so NMS keeps about one per image (docs/masks.md). The
steps whose cost grows with the number of masks (small-region clean-up, containment filter,
DBA-CLIP bias, pooling) are therefore also timed on ``--synthetic-masks`` compact ellipse masks
(default 100, an assumed count), and the per-image estimate is the measured SAM time plus those.

Part 2, GLCC on a synthetic 100k-mask bank (unit embeddings, D=512, drawn around 21 random class
centres; SSS seeds: one-hot labels on 10% of the masks; random areas): (i) the k=50 kNN graph (exact
chunked torch top-k; bench/knn.py times faiss and the approximate indexes) against the same
chunked similarity matmul alone,
(ii) the LP conjugate-gradient solve for 21 classes, (iii) the linear probe (batch 512), measured
over ``--probe-iters`` iterations and EXTRAPOLATED to the VOC lengths, (iv) the inductive
LPClassifier on 10k query masks, (v) ``GLCC(glcc_config("sss"))`` end to end with a probe of
``--probe-iters`` iterations. The CPU may be shared: tiny steps (the probe) are best of 3.

    python bench/tuss.py                                   # both parts, 1 image, 100k masks
    python bench/tuss.py --skip-glcc --images 2 --precision bf16
    python bench/tuss.py --skip-bank --masks 5000 --probe-iters 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("OVSS_CACHE_DIR", "")
warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

IOU_QUANTILE = 0.55  # bench/amg.py: about 45% of masks pass the IoU filter (real SAM at 0.88)
LEVEL2_BONUS_QUANTILE = 0.35  # the tuss preset's +0.1 IoU for level 2, as a lower cut for that level
VOC_PROBE_LENGTHS = {  # iterations of one probe fit (ProbeConfig.base_iters 60k / iter_factor)
    "sss (iter_factor 1)": 60_000,
    "fsss (iter_factor 0.5)": 120_000,
    "wsss, each of 2 rounds (iter_factor 0.25)": 240_000,
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


class Timer:
    """Wall-clock seconds of named steps; ``wrap`` times every call of a function (summed)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        return timed


@contextlib.contextmanager
def patched(*targets):
    """Temporarily replace attributes: ``(object, name, new value)`` triples."""
    saved = [(obj, name, obj.__dict__.get(name, None), name in obj.__dict__) for obj, name, _ in targets]
    for obj, name, value in targets:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, old, had in saved:
            if had:
                setattr(obj, name, old)
            else:
                delattr(obj, name)


def peak_rss_mb() -> float:
    from amg import _rss_mb

    return round(_rss_mb("VmHWM"))


def reset_peak() -> None:
    from amg import _reset_peak

    _reset_peak()


def photo(i: int) -> np.ndarray:
    """The i-th 640x480 test photo (the ADE20K sample images in turn; bench/amg.py's is the first)."""
    from PIL import Image

    from amg import PHOTO, test_image

    path = PHOTO.with_name(f"ADE_val_{i % 3 + 1:08d}.jpg")
    if i == 0 or not path.is_file():
        return test_image()
    return np.asarray(Image.open(path).convert("RGB").resize((640, 480), Image.BILINEAR))


# --------------------------------------------------------------------------------------------
# part 1: the mask bank
# --------------------------------------------------------------------------------------------


def calibrate_levels(sam, image: np.ndarray) -> dict[str, dict]:
    """Threshold overrides for the ``exact`` and ``tuss`` presets (see the module docstring)."""
    from ovss.masks import SamMaskGenerator

    gen = SamMaskGenerator(sam, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    batches = []
    original = gen._process_batch

    def spy(state, points, crop, image_hw):
        batch = original(state, points, crop, image_hw)
        if batch is not None:
            batches.append(batch)
        return batch

    gen._process_batch = spy
    gen.generate(image)
    iou = torch.cat([b.iou for b in batches]).numpy()
    stab = torch.cat([b.stability for b in batches]).numpy()
    levels = np.array([-1 if v is None else v for b in batches for v in b.levels])
    iou_thresh = float(np.quantile(iou, IOU_QUANTILE))  # bench/amg.py's calibrate
    stab_thresh = float(np.nanmedian(stab[iou > iou_thresh]))
    iou_cut, stab_cut, bonus_cut = [], [], []
    for level in range(3):
        li, ls = iou[levels == level], stab[levels == level]
        if len(li) == 0:
            iou_cut.append(iou_thresh)
            stab_cut.append(stab_thresh)
            bonus_cut.append(iou_thresh)
            continue
        cut = float(np.quantile(li, IOU_QUANTILE))
        passing = ls[li > cut]
        iou_cut.append(cut)
        stab_cut.append(float(np.nanmedian(passing)) if np.isfinite(passing).any() else stab_thresh)
        bonus_cut.append(float(np.quantile(li, LEVEL2_BONUS_QUANTILE)))
    iou_off = [round(iou_thresh - c, 4) for c in iou_cut]
    stab_off = [round(stab_thresh - c, 4) for c in stab_cut]
    base = {
        "pred_iou_thresh": round(iou_thresh, 4),
        "stability_score_thresh": round(stab_thresh, 4),
        "level_stability_offsets": tuple(stab_off),
        "output_mode": "uncompressed_rle",
    }
    tuss_iou_off = [iou_off[0], iou_off[1], round(iou_thresh - bonus_cut[2], 4)]
    return {
        "exact": {**base, "level_iou_offsets": tuple(iou_off)},
        "tuss": {**base, "level_iou_offsets": tuple(tuss_iou_off)},
        "levels": {
            "iou_cut": [round(c, 3) for c in iou_cut],
            "stability_cut": [round(c, 3) for c in stab_cut],
            "level2_bonus_cut": round(bonus_cut[2], 3),
        },
    }


def timed_generate(generator, image: np.ndarray) -> tuple[object, dict[str, float]]:
    """``generator.generate(image)`` with its encoder passes, small-region clean-up and containment
    filter timed apart (the rest: decoder, stability, NMS, RLE)."""
    from ovss.masks import amg

    t = Timer()
    with patched(
        (generator, "_encode", t.wrap("encoder", generator._encode)),
        (generator, "_clean_small_regions", t.wrap("small_regions", generator._clean_small_regions)),
        (amg, "containment_filter", t.wrap("containment", amg.containment_filter)),
    ):
        start = time.perf_counter()
        maskset = type(generator).generate(generator, image)  # the class's: ``generate`` may be patched
        total = time.perf_counter() - start
    out = {"total": total, **t.seconds}
    out["decoder_and_rest"] = total - sum(t.seconds.values())
    out["encoder_passes"] = t.calls.get("encoder", 0)
    return maskset, out


class NoBiasCLIP:
    """The same CLIP with the mask bias dropped: ``embedding_map`` becomes plain SCLIP."""

    def __init__(self, clip) -> None:
        self._clip = clip

    def __getattr__(self, name: str):
        return getattr(self._clip, name)

    def dense_features(self, pixels: torch.Tensor, variant: str, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self._clip.dense_features(pixels, variant)


def bank(args) -> dict:
    from amg import vit_b_sam
    from dense_clip import full_size_clip
    from ovss import Segmenter
    from ovss.masks import SamBackbone, SamMaskGenerator
    from ovss.methods.tuss import ov
    from ovss.ops.resize import keep_ratio_size
    from ovss.ops.windows import window_grid

    reset_peak()
    images = [photo(i) for i in range(args.images)]
    sam = SamBackbone(vit_b_sam(), "sam-vit-b-random")
    start = time.perf_counter()
    cal = calibrate_levels(sam, images[0])
    print(
        f"calibration on image 0 ({time.perf_counter() - start:.0f} s): IoU {cal['exact']['pred_iou_thresh']}, "
        f"stability {cal['exact']['stability_score_thresh']}; per-level cuts {cal['levels']}",
        flush=True,
    )
    precision = {"precision": args.precision}
    tuss_gen = SamMaskGenerator(sam, preset="tuss", **cal["tuss"], **precision)
    exact_gen = SamMaskGenerator(sam, preset="exact", **cal["exact"], **precision)
    clip = full_size_clip()
    seg = Segmenter("tuss", clip=clip, sam=tuss_gen, device="cpu", **precision)
    method = seg.method
    assert method.generator is tuss_gen
    s = method.settings
    h, w = keep_ratio_size(480, 640, s.short_side)
    h, w = -(-h // s.size_multiple) * s.size_multiple, -(-w // s.size_multiple) * s.size_multiple
    n_windows = sum(len(window_grid(h, w, *win)) for win in s.windows())
    views = f"global {w}x{h} + {n_windows} windows {s.windows()}"
    with torch.no_grad():  # warm-up of the CLIP kernels (not of SAM: one tuss run takes minutes)
        clip.dense_features(torch.zeros(2, 3, 224, 224), "sclip")

    print(f"DBA-CLIP ViT-B/16 views per 640x480 image: {views}", flush=True)
    rows = []
    for i, image in enumerate(images):
        t = Timer()
        sam_parts: dict = {}

        def sam_step(img: np.ndarray, sam_parts=sam_parts):
            maskset, parts = timed_generate(tuss_gen, img)
            sam_parts.update(parts)
            return maskset

        with (
            torch.no_grad(),
            patched(
                (method, "pooled_embeddings", t.wrap("dba_pooled", method.pooled_embeddings)),
                (ov, "discrimination_bias", t.wrap("bias_build", ov.discrimination_bias)),
                (tuss_gen, "generate", sam_step),
            ),
        ):
            start = time.perf_counter()
            me = method.embed(image)
            total = time.perf_counter() - start
        row = {
            "image": i,
            "embed_seconds": total,
            "sam_seconds": sam_parts["total"],
            "sam_parts": sam_parts,
            "dba_clip_pooled_seconds": t.seconds["dba_pooled"],
            "bias_build_seconds": t.seconds["bias_build"],
            "clip_plus_pooling_seconds": total - sam_parts["total"],
            "masks": len(me.masks),
            "masks_per_level": [int(sum(1 for v in me.levels if v == lv)) for lv in range(3)],
        }
        line = (
            f"image {i}: embed {total:.1f} s = SAM tuss {sam_parts['total']:.1f} s "
            f"({sam_parts['encoder_passes']} encoder passes {sam_parts.get('encoder', 0):.1f} s, small regions "
            f"{sam_parts.get('small_regions', 0):.1f} s, containment {sam_parts.get('containment', 0):.1f} s) + "
            f"DBA-CLIP pooled per mask {row['dba_clip_pooled_seconds']:.1f} s "
            f"(bias {row['bias_build_seconds']:.1f} s); "
            f"{row['masks']} masks {row['masks_per_level']} by level"
        )
        if not args.skip_sam_baseline:
            with torch.no_grad():
                exact, parts = timed_generate(exact_gen, image)
            row["exact_sam_seconds"] = parts["total"]
            row["exact_sam_parts"] = parts
            row["exact_masks"] = len(exact)
            line += (
                f"\n  baseline SAM exact: {parts['total']:.1f} s ({len(exact)} masks) -> tuss/exact "
                f"{sam_parts['total'] / parts['total']:.2f}"
            )
        if args.synthetic_masks:
            steps = mask_count_steps(method, clip, image, args.synthetic_masks, args.repeats)
            row.update(steps)
            m = args.synthetic_masks
            per_image = sam_parts["total"] + sum(
                steps[k] for k in ("small_regions_seconds", "containment_seconds", "bank_route_seconds_m")
            )
            row["seconds_per_image_with_m_masks"] = per_image
            route = steps["bank_route_seconds_m"] / (steps["dba_clip_seconds_m"] + steps["pooling_seconds_m"])
            line += (
                f"\n  with {m} masks ({steps['synthetic_levels']} by level; random SAM's NMS leaves "
                f"{row['masks']}), best of {args.repeats}: bank route (pooled on each view's patch grid) "
                f"{steps['bank_route_seconds_m']:.1f} s vs baseline map route (DBA-CLIP map "
                f"{steps['dba_clip_seconds_m']:.1f} s + pooling {steps['pooling_seconds_m']:.2f} s) -> {route:.2f} "
                f"(max relative difference {steps['bank_route_max_rel_diff']}); "
                f"DBA-CLIP map vs plain SCLIP map (same views, no mask bias) {steps['sclip_seconds']:.1f} s -> "
                f"{steps['dba_clip_seconds_m'] / steps['sclip_seconds']:.2f}; small-region clean-up "
                f"{steps['small_regions_seconds']:.2f} s, containment {steps['containment_seconds']:.2f} s -> about "
                f"{per_image:.0f} s per image"
            )
        print(line, flush=True)
        rows.append(row)

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if key in r]
        return round(sum(vals) / len(vals), 2) if vals else None

    summary = {
        "images": len(rows),
        "precision": args.precision,
        "clip_views": views,
        "calibration": cal["tuss"],
        "calibration_levels": cal["levels"],
        "seconds_per_image": mean("embed_seconds"),
        "sam_tuss_seconds": mean("sam_seconds"),
        "dba_clip_plus_pooling_seconds": mean("clip_plus_pooling_seconds"),
        "masks_per_image": mean("masks"),
        "baseline_sam_exact_seconds": mean("exact_sam_seconds"),
        "ratio_sam_tuss_over_exact": None,
        "synthetic_masks": args.synthetic_masks,
        "seconds_per_image_with_synthetic_masks": mean("seconds_per_image_with_m_masks"),
        "dba_clip_seconds_with_synthetic_masks": mean("dba_clip_seconds_m"),
        "bank_route_seconds_with_synthetic_masks": mean("bank_route_seconds_m"),
        "baseline_plain_sclip_seconds": mean("sclip_seconds"),
        "ratio_dba_clip_over_plain_sclip": None,
        "baseline_note": "SAM: the exact preset on the same image, same calibrated thresholds; DBA-CLIP: plain SCLIP "
        "(TUSSMethod.embedding_map with the bias dropped: same global view + windows, resize and averaging), best "
        "of --repeats, against DBA-CLIP with the --synthetic-masks ellipse masks",
        "peak_rss_mb": peak_rss_mb(),
        "per_image": [_rounded(r) for r in rows],
    }
    if summary["baseline_plain_sclip_seconds"]:
        summary["ratio_dba_clip_over_plain_sclip"] = round(mean("dba_clip_seconds_m") / mean("sclip_seconds"), 2)
    if summary["baseline_sam_exact_seconds"]:
        summary["ratio_sam_tuss_over_exact"] = round(mean("sam_seconds") / mean("exact_sam_seconds"), 2)
    return summary


# --------------------------------------------------------------------------------------------
# part 2: GLCC
# --------------------------------------------------------------------------------------------


def ellipse_masks(m: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """``m`` compact masks (random ellipses; levels 0, 1, 2 in turn, sub-parts small, wholes large)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    radii = {0: (0.03, 0.1), 1: (0.08, 0.2), 2: (0.15, 0.45)}  # fractions of the image side
    masks, levels = [], []
    for i in range(m):
        level = i % 3
        ry, rx = rng.uniform(*radii[level]) * h, rng.uniform(*radii[level]) * w
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        masks.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
        levels.append(level)
    return torch.from_numpy(np.stack(masks)), levels


def mask_count_steps(method, clip, image: np.ndarray, m: int, repeats: int) -> dict:
    """The per-image steps whose cost grows with the number of masks, timed on ``m`` synthetic
    masks: SAM's small-region clean-up and containment filter, the DBA-CLIP map (against plain
    SCLIP on the same views) and mask pooling."""
    from ovss.masks import amg
    from ovss.masks.pooling import mask_pool

    gen = method.generator
    s = gen.settings
    masks, levels = ellipse_masks(m, *image.shape[:2])
    data = {
        "rles": amg.rle_encode(masks),
        "boxes": amg.masks_to_boxes(masks),
        "iou": torch.rand(m),
        "stability": torch.rand(m),
        "points": np.zeros((m, 2)),
        "levels": levels,
        "crop_boxes": [[0, 0, image.shape[1], image.shape[0]]] * m,
    }
    out: dict = {"synthetic_levels": [levels.count(lv) for lv in range(3)]}
    start = time.perf_counter()
    gen._clean_small_regions(data, max(s.box_nms_thresh, s.crop_nms_thresh))
    out["small_regions_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    amg.containment_filter(masks, levels, s.containment_thresh if s.containment_thresh is not None else 0.3)
    out["containment_seconds"] = time.perf_counter() - start
    empty = torch.zeros(0, *image.shape[:2], dtype=torch.bool)
    sclip = dba = bank_route = pooling = math.inf
    with torch.no_grad():
        for _ in range(repeats):  # alternating, best of each: the CPU may be shared
            with patched((method, "clip", NoBiasCLIP(clip))):
                start = time.perf_counter()
                method.embedding_map(image, empty)
                sclip = min(sclip, time.perf_counter() - start)
            start = time.perf_counter()
            fmap = method.embedding_map(image, masks)
            dba = min(dba, time.perf_counter() - start)
            start = time.perf_counter()
            mapped, _ = mask_pool(fmap, masks, mode="upsample")
            pooling = min(pooling, time.perf_counter() - start)
            del fmap
            start = time.perf_counter()
            pooled, _ = method.pooled_embeddings(image, masks)
            bank_route = min(bank_route, time.perf_counter() - start)
    out["sclip_seconds"] = sclip
    out["dba_clip_seconds_m"] = dba
    out["pooling_seconds_m"] = pooling
    out["bank_route_seconds_m"] = bank_route
    out["bank_route_max_rel_diff"] = f"{float(((pooled - mapped).norm(dim=1) / mapped.norm(dim=1)).max()):.1e}"
    return out


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 2) if isinstance(value, float) else value


def synthetic_masks(n: int, centres: torch.Tensor, noise: float, gen: torch.Generator):
    """Unit embeddings around the class centres, their classes and random pixel areas."""
    c, d = centres.shape
    labels = torch.randint(0, c, (n,), generator=gen)
    emb = F.normalize(centres[labels] + noise * torch.randn(n, d, generator=gen) / math.sqrt(d), dim=1)
    areas = torch.exp(torch.empty(n).uniform_(math.log(100), math.log(640 * 480), generator=gen))
    return emb, labels, areas


def glcc_part(args) -> dict:
    from ovss.methods.tuss import glcc as glcc_module
    from ovss.methods.tuss.glcc import (
        GLCC,
        LabelPropagator,
        LinearProbe,
        LPClassifier,
        ProbeConfig,
        conjugate_gradient,
        glcc_config,
        knn_search,
    )

    reset_peak()
    n, d, c, queries = args.masks, 512, 21, min(10_000, args.masks)
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(c, d, generator=gen), dim=1)
    # noise 4: cos(mask, own centre) ~0.24, same-class pairs ~0.06, other pairs ~0 (+-0.044): at 100k
    # masks about 74% of the top-50 neighbours are of the mask's class
    emb, labels, areas = synthetic_masks(n, centres, 4.0, gen)
    query_emb, query_labels, _ = synthetic_masks(queries, centres, 4.0, gen)
    text = F.normalize(centres + torch.randn(c, d, generator=gen) / math.sqrt(d), dim=1)
    seeds = torch.zeros(n, c)
    labelled = torch.randperm(n, generator=gen)[: n // 10]
    seeds[labelled, labels[labelled]] = 1.0
    cfg = glcc_config("sss")
    lp_cfg = cfg.rounds[0].lp
    out: dict = {
        "masks": n,
        "dim": d,
        "classes": c,
        "labelled": len(labelled),
        "k": lp_cfg.k,
        "alpha": lp_cfg.alpha,
        "knn_backend": f"{lp_cfg.knn_backend}: torch (exact, chunked); faiss and approximate indexes: bench/knn.py",
    }
    print(f"GLCC on {n} synthetic masks, D={d}, C={c}, {len(labelled)} labelled; kNN {out['knn_backend']}", flush=True)

    # (i) the kNN graph, and the chunked similarity matmul (+ top-k) alone as its baseline
    propagator = LabelPropagator(lp_cfg)
    t = Timer()
    with patched((glcc_module, "knn_search", t.wrap("knn", knn_search))):
        start = time.perf_counter()
        graph = propagator.graph(emb)
        graph_s = time.perf_counter() - start
    w_hat, _, k = graph
    _, idx = knn_search(emb[:2000], emb, k + 1)
    purity = float((labels[idx[:, 1:]] == labels[:2000, None]).float().mean())
    rows = max(1, lp_cfg.knn_chunk_elements // n)
    chunks = math.ceil(n / rows)
    sample = min(chunks, max(3, chunks // 10))
    keys_t = emb.T.contiguous()
    mm_s = topk_s = 0.0
    for j in range(sample):
        q = emb[j * rows : (j + 1) * rows]
        start = time.perf_counter()
        block = q @ keys_t
        mm_s += time.perf_counter() - start
        start = time.perf_counter()
        block.topk(k, dim=1)
        topk_s += time.perf_counter() - start
    mm_s, topk_s = mm_s * chunks / sample, topk_s * chunks / sample
    gflop = 2 * n * n * d / 1e9
    out["knn_graph"] = {
        "seconds": round(graph_s, 2),
        "knn_search_seconds": round(t.seconds["knn"], 2),
        "sparse_build_seconds": round(graph_s - t.seconds["knn"], 2),
        "edges": int(w_hat._nnz()),
        "neighbour_class_purity": round(purity, 3),
        "baseline_matmul_seconds_extrapolated": round(mm_s, 2),
        "topk_seconds_extrapolated": round(topk_s, 2),
        "baseline_note": f"the same {rows}-row chunks of emb @ emb.T ({gflop:.0f} GFLOP) without top-k, timed on "
        f"{sample} of {chunks} chunks and scaled",
        "ratio_knn_search_over_matmul": round(t.seconds["knn"] / mm_s, 2),
    }
    print(
        f"(i) kNN graph k={k}: {graph_s:.1f} s = kNN search {t.seconds['knn']:.1f} s + sparse graph "
        f"{graph_s - t.seconds['knn']:.1f} s ({w_hat._nnz()} edges, neighbour class purity {purity:.2f}); "
        f"baseline: the chunked similarity matmul alone {mm_s:.1f} s ({gflop / mm_s:.0f} GFLOP/s), top-k on its "
        f"blocks {topk_s:.1f} s (both extrapolated from {sample}/{chunks} chunks) -> kNN/matmul "
        f"{t.seconds['knn'] / mm_s:.2f}",
        flush=True,
    )

    # (ii) the LP solve on that graph (the real __call__, its graph step served from (i))
    with patched((propagator, "graph", lambda _emb, _knn=None: graph)):
        start = time.perf_counter()
        res = propagator(emb, seeds)
        lp_s = time.perf_counter() - start
    matvecs = 0

    def counting(v: torch.Tensor) -> torch.Tensor:
        nonlocal matvecs
        matvecs += 1
        return v - lp_cfg.alpha * torch.sparse.mm(w_hat, v)

    conjugate_gradient(counting, seeds.double(), tol=lp_cfg.cg_tol, max_iter=lp_cfg.cg_max_iter)
    unl = torch.ones(n, dtype=torch.bool)
    unl[labelled] = False
    lp_acc = float((res.scores[unl].argmax(1) == labels[unl]).float().mean())
    out["lp_solve"] = {
        "seconds": round(lp_s, 2),
        "cg_iterations": matvecs,
        "cg_max_iter": lp_cfg.cg_max_iter,
        "converged_classes": int(res.converged.sum()),
        "accuracy_unlabelled": round(lp_acc, 3),
        "ratio_lp_solve_over_knn_graph": round(lp_s / graph_s, 3),
    }
    print(
        f"(ii) LP conjugate gradient, {c} classes: {lp_s:.1f} s, {matvecs} iterations (tol {lp_cfg.cg_tol}), "
        f"{int(res.converged.sum())}/{c} classes converged; accuracy on unlabelled masks {lp_acc:.2f}; "
        f"LP solve / kNN graph {lp_s / graph_s:.3f}",
        flush=True,
    )

    # (iii) the linear probe: per-iteration time from a short and a --probe-iters fit
    y_star = GLCC(cfg)._seed(res.scores, None)
    LinearProbe(ProbeConfig(base_iters=5)).fit(emb, y_star, areas, text)  # warm-up: autograd's first call
    probe_s: dict[int, float] = {}
    for iters in (1, args.probe_iters) * 3:  # best of 3: tiny steps suffer most from a busy CPU
        pcfg = ProbeConfig(base_iters=iters, base_warmup_iters=iters // 10)
        start = time.perf_counter()
        LinearProbe(pcfg).fit(emb, y_star, areas, text)
        probe_s[iters] = min(probe_s.get(iters, math.inf), time.perf_counter() - start)
    per_iter = (probe_s[args.probe_iters] - probe_s[1]) / max(args.probe_iters - 1, 1)
    out["probe"] = {
        "iterations_measured": args.probe_iters,
        "seconds_measured": round(probe_s[args.probe_iters], 2),
        "setup_seconds": round(probe_s[1], 2),
        "ms_per_iteration": round(1000 * per_iter, 3),
        "extrapolated_seconds": {name: round(probe_s[1] + per_iter * it) for name, it in VOC_PROBE_LENGTHS.items()},
        "note": "extrapolation of the measured per-iteration time (batch 512, best of 3 runs), not a measured "
        "full-length fit",
    }
    extrap = ", ".join(
        f"{name} {it // 1000}k -> {v / 60:.1f} min"
        for (name, it), v in zip(VOC_PROBE_LENGTHS.items(), out["probe"]["extrapolated_seconds"].values())
    )
    print(
        f"(iii) linear probe, batch 512, best of 3: {args.probe_iters} iterations in {probe_s[args.probe_iters]:.1f} s "
        f"(setup {probe_s[1]:.2f} s) -> {1000 * per_iter:.2f} ms/iteration; EXTRAPOLATED to VOC lengths: "
        f"{extrap}",
        flush=True,
    )

    # (iv) the inductive LP classifier on unseen masks
    lpc = LPClassifier(emb, y_star, res.degree, res.k, cfg.inductive, knn_backend=lp_cfg.knn_backend)
    start = time.perf_counter()
    scores = lpc(query_emb)
    ind_s = time.perf_counter() - start
    ind_acc = float((scores.argmax(1) == query_labels).float().mean())
    out["inductive"] = {
        "queries": queries,
        "k_bar": cfg.inductive.k_bar,
        "seconds": round(ind_s, 2),
        "accuracy": round(ind_acc, 3),
    }
    print(
        f"(iv) inductive LPClassifier, k_bar {cfg.inductive.k_bar}: {queries} query masks in {ind_s:.1f} s "
        f"({1e6 * ind_s / queries:.0f} us/mask; accuracy {ind_acc:.2f})",
        flush=True,
    )

    # (v) the whole SSS fit, probe shortened to --probe-iters
    from dataclasses import replace

    short = replace(cfg, probe=ProbeConfig(base_iters=args.probe_iters, base_warmup_iters=args.probe_iters // 10))
    start = time.perf_counter()
    glcc = GLCC(short).fit(emb, areas, seeds, text_embeddings=text)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = glcc.predict(query_emb)
    pred_s = time.perf_counter() - start
    acc = float((pred.argmax(1) == query_labels).float().mean())
    parts_sum = graph_s + lp_s + probe_s[args.probe_iters]
    full_est = fit_s - probe_s[args.probe_iters] + out["probe"]["extrapolated_seconds"]["sss (iter_factor 1)"]
    out["glcc_sss_fit"] = {
        "probe_iters": args.probe_iters,
        "seconds": round(fit_s, 2),
        "sum_of_parts_i_to_iii": round(parts_sum, 2),
        "predict_seconds": round(pred_s, 2),
        "query_accuracy": round(acc, 3),
        "with_60k_probe_seconds_extrapolated": round(full_est),
    }
    print(
        f"(v) GLCC sss fit end to end (probe {args.probe_iters} iterations): {fit_s:.1f} s (parts i-iii: "
        f"{parts_sum:.1f} s); predict {queries} masks {pred_s:.1f} s, accuracy {acc:.2f}; with the full 60k probe "
        f"about {full_est / 60:.1f} min (extrapolated)",
        flush=True,
    )
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-bank", action="store_true", help="skip part 1 (SAM + DBA-CLIP mask bank)")
    parser.add_argument("--skip-glcc", action="store_true", help="skip part 2 (GLCC on a synthetic bank)")
    parser.add_argument("--images", type=int, default=1, help="640x480 photos for part 1")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="SAM and DBA-CLIP")
    parser.add_argument("--skip-sam-baseline", action="store_true", help="do not run the exact preset")
    parser.add_argument(
        "--synthetic-masks",
        type=int,
        default=100,
        help="masks per image for the DBA-CLIP, pooling and filter timings (random SAM's NMS leaves 1); 0 = skip",
    )
    parser.add_argument("--repeats", type=int, default=2, help="best of this many DBA-CLIP and SCLIP maps")
    parser.add_argument("--masks", type=int, default=100_000, help="masks in the synthetic bank of part 2")
    parser.add_argument("--probe-iters", type=int, default=1000, help="probe iterations actually run in part 2")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.masks < 100 or args.probe_iters < 2 or args.images < 1:
        parser.error("need --masks >= 100, --probe-iters >= 2, --images >= 1")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, random weights, full-size architectures", flush=True)
    results: dict = {"torch": torch.__version__, "threads": args.threads}
    if not args.skip_bank:
        results["bank"] = bank(args)
    if not args.skip_glcc:
        results["glcc"] = glcc_part(args)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
