"""Seconds per image and peak memory of SAM automatic mask generation, per preset, against Meta's
``segment_anything`` generator in the same run (when it is importable).

Protocol: full-size SAM ViT-B architecture (transformers ``SamConfig`` defaults: width 768, 12
layers, 1024 input) with random weights from ``ovss.masks.sam.randomize_sam``, on a 640x480
photo (ADE_val_00000001 resized). Meta's generator runs on the same weights (key mapping in
``ovss.models.sam_convert``). Each configuration runs in its own process, so its peak RSS is its own.

Random weights make IoU predictions and stability scores land in other ranges than real SAM's,
so that the filters do realistic work the IoU head's output bias is raised by 1.0 and the
thresholds are calibrated on the image: ``pred_iou_thresh`` = the 55th percentile of the IoU
predictions of an 8x8 grid (about 45% of masks pass, as with real SAM at 0.88), and
``stability_score_thresh`` = the median stability of those (about half pass). Both generators
get the same thresholds. NMS, box and RLE work then happen on a few hundred masks per image.

    python bench/amg.py                      # ovss presets (and Meta if importable)
    /tmp/samenv/bin/python bench/amg.py      # the same, in the venv that has segment_anything
    python bench/amg.py --presets exact fast --repeats 2 --threads 2
    /tmp/samenv/bin/python bench/amg.py --threads 1 --meta meta+nonms meta+tuss \
        --presets exact+nonms exact+nonms+today tuss tuss+today

A ``+today`` spec runs the generator's code path from before the issue-15 speed-ups
(``SamMaskGenerator._fast_paths = False``, fused decoder) and is compared mask for mask with the
same spec without it; ``+fused`` runs the fused decoder (``decoder="fused"``, the ``exact``
preset's decoder before it took Meta's operation order). ``meta+tuss`` is Meta's generator with
the settings of the ``tuss`` preset that it has (32 points, one crop layer with 16x16 points,
crop NMS, ``min_mask_region_area`` 100, 256 points per batch; not the level offsets and the
containment filter, which are TUSS's own).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from shared_paths import ADE_IMAGES

PHOTO = ADE_IMAGES / "ADE_val_00000001.jpg"
DEFAULT_PRESETS = [
    "exact",
    "exact+nonms",
    "exact+bf16",
    "exact+nonms+bf16",
    "fast",
    "sparse",
    "small-input",
    "sam2-tiny:exact",
    "sam2-tiny:sparse",
]


def test_image() -> np.ndarray:
    from PIL import Image

    if PHOTO.is_file():
        return np.asarray(Image.open(PHOTO).convert("RGB").resize((640, 480), Image.BILINEAR))
    return np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)


def vit_b_sam():
    from transformers import SamConfig, SamModel

    from ovss.models.sam import randomize_sam

    torch.manual_seed(0)
    # Meta's decoder LayerNorms use eps 1e-5 (transformers' SamConfig says 1e-6): same architecture.
    model = randomize_sam(SamModel(SamConfig(mask_decoder_config=dict(layer_norm_eps=1e-5))), seed=0)
    with torch.no_grad():
        model.mask_decoder.iou_prediction_head.proj_out.bias.add_(1.0)
    return model.eval()


def hiera_tiny_sam2():
    from transformers import Sam2Config, Sam2Model

    from ovss.models.sam import randomize_sam

    torch.manual_seed(0)
    model = randomize_sam(Sam2Model(Sam2Config()), seed=0)  # Sam2Config() is the Hiera-tiny architecture
    with torch.no_grad():
        model.mask_decoder.iou_prediction_head.proj_out.bias.add_(1.0)
    return model.eval()


def calibrate(backbone, image: np.ndarray) -> dict[str, float]:
    """Thresholds at which about 45% of masks pass the IoU filter and half of those the stability one."""
    from ovss.masks import SamMaskGenerator

    gen = SamMaskGenerator(
        backbone, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    captured: dict[str, list] = {"iou": [], "stab": []}
    original = gen._process_batch

    def spy(state, points, crop, image_hw):
        batch = original(state, points, crop, image_hw)
        if batch is not None:
            captured["iou"].append(batch.iou)
            captured["stab"].append(batch.stability)
        return batch

    gen._process_batch = spy
    gen.generate(image)
    iou = torch.cat(captured["iou"]).numpy()
    stab = torch.cat(captured["stab"]).numpy()
    iou_thresh = float(np.quantile(iou, 0.55))
    stab_thresh = float(np.nanmedian(stab[iou > iou_thresh]))
    return {"pred_iou_thresh": round(iou_thresh, 4), "stability_score_thresh": round(stab_thresh, 4)}


def make_runner(spec: str, thresholds: dict[str, float], models: dict | None = None):
    """The ``generate`` function of one configuration (``models`` shares one model per architecture)."""
    models = {} if models is None else models
    spec, *flags = spec.split("+")
    extra: dict = {"box_nms_thresh": 1.0} if "nonms" in flags else {}
    if spec == "meta":
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

        from ovss.models.sam_convert import hf_to_meta_state_dict

        if "tuss" in flags:  # the tuss preset's settings that Meta's generator has
            from ovss.masks.presets import PRESETS

            meta_names = ("points_per_batch", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh")
            meta_names += ("crop_overlap_ratio", "crop_n_points_downscale_factor", "min_mask_region_area")
            extra.update({k: PRESETS["tuss"].settings[k] for k in meta_names})
        meta = sam_model_registry["vit_b"]()
        meta.load_state_dict(hf_to_meta_state_dict(vit_b_sam().state_dict()))
        gen = SamAutomaticMaskGenerator(meta.eval(), output_mode="uncompressed_rle", **thresholds, **extra)
        return gen.generate
    else:
        from ovss.masks import SamBackbone, SamMaskGenerator

        model_name, _, preset = spec.rpartition(":")
        if model_name not in models:
            models[model_name] = hiera_tiny_sam2() if model_name == "sam2-tiny" else vit_b_sam()
        model = models[model_name]
        overrides = dict(thresholds, output_mode="uncompressed_rle", **extra)
        if "bf16" in flags:
            overrides["precision"] = "bf16"
        if "fused" in flags or "today" in flags:  # the fused decoder (today's code had only that one)
            overrides["decoder"] = "fused"
        if preset == "corrclip":  # its own (low) thresholds are the point of the preset
            overrides = {"output_mode": "uncompressed_rle"}
        gen = SamMaskGenerator(SamBackbone(model, model_name or "sam-vit-b"), preset=preset, **overrides)
        gen._fast_paths = "today" not in flags  # today: the code path before the issue-15 speed-ups
        return _with_stages(gen)


def _with_stages(gen):
    """``gen.generate`` that also returns the seconds spent in the image encoder, the decoder
    (prompts to IoU and low-res logits) and the full-size masks (upsampling, stability, threshold);
    the rest is NMS, boxes, RLE, small regions and the containment filter."""
    stages: dict[str, float] = {}

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                stages[key] = stages.get(key, 0.0) + time.perf_counter() - start

        return wrapper

    encode = gen._encode

    def encode_timed(image):
        state = timed(encode, "encoder")(image)
        state.predict = timed(state.predict, "decoder")
        state.full_size = timed(state.full_size, "full-size masks")
        return state

    gen._encode = encode_timed

    def run(image):
        stages.clear()
        start = time.perf_counter()
        masks = gen.generate(image)
        stages["rest"] = time.perf_counter() - start - sum(stages.values())
        run.stages = dict(stages)
        return masks

    run.stages = {}
    return run


def _records(masks) -> str:
    keep = ("segmentation", "predicted_iou", "point_coords", "crop_box")
    return json.dumps([{k: m[k] for k in keep} for m in masks])


def run_interleaved(specs: list[str], thresholds: dict[str, float], outs: list[Path], repeats: int) -> dict:
    """Time several configurations in this one process, round-robin (the first of each round
    rotates), so that they share the machine's load; seconds are medians over the rounds."""
    image = test_image()
    models: dict = {}
    runners = [make_runner(spec, thresholds, models) for spec in specs]
    times: list[list[float]] = [[] for _ in specs]
    counts = [0] * len(specs)
    for r in range(repeats):
        for j in range(len(specs)):
            i = (j + r) % len(specs)
            start = time.perf_counter()
            masks = runners[i](image)
            times[i].append(time.perf_counter() - start)
            if r == 0:
                outs[i].write_text(_records(masks))
                counts[i] = len(masks)
                stages = getattr(runners[i], "stages", None)
                done = {"spec": specs[i], "seconds": times[i][-1], "masks": counts[i], "stages": stages}
                outs[i].with_suffix(".result.json").write_text(json.dumps(done))  # readable if the run is cut
            print(f"  round {r}: {specs[i]} {times[i][-1]:.1f} s", file=sys.stderr, flush=True)
    return {
        spec: {
            "spec": spec,
            "seconds": float(np.median(t)),
            "all_seconds": t,
            "masks": n,
            "stages": getattr(run, "stages", None),  # of the last round
        }
        for spec, t, n, run in zip(specs, times, counts, runners)
    }


def run_one(spec: str, thresholds: dict[str, float], out: Path, repeats: int) -> dict:
    """Time one configuration in this process; write its masks to ``out``."""
    image = test_image()
    run = make_runner(spec, thresholds)
    times = []
    model_mb = _rss_mb("VmRSS")
    _reset_peak()
    for _ in range(repeats):
        start = time.perf_counter()
        masks = run(image)
        times.append(time.perf_counter() - start)
    peak_mb = _rss_mb("VmHWM")
    out.write_text(_records(masks))
    return {
        "spec": spec,
        "seconds": min(times),
        "all_seconds": times,
        "masks": len(masks),
        "peak_rss_mb": peak_mb,
        "model_rss_mb": model_mb,
        "stages": getattr(run, "stages", None),
    }


def _rss_mb(field: str) -> float:
    """Resident memory from /proc. VmHWM is the peak since the last reset; ru_maxrss would
    include the parent's peak, which Linux carries across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


def compare(a: Path, b: Path) -> dict:
    """Pair masks by point, crop box and closest predicted IoU (the 3 levels of a point differ
    in it). Order swaps between masks whose predicted IoUs differ by < 1e-5 (float-rounding
    ties, which NMS's sort may break either way) are counted apart from other differences."""
    from ovss.masks.amg import rle_decode

    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    by_key: dict = {}
    for j, m in enumerate(rb):
        by_key.setdefault((str(m["point_coords"]), str(m["crop_box"])), []).append(j)
    ious, unmatched, swaps, misordered = [], 0, 0, 0
    for i, m in enumerate(ra):
        cands = by_key.get((str(m["point_coords"]), str(m["crop_box"])), [])
        if not cands:
            unmatched += 1
            continue
        j = min(cands, key=lambda k: abs(rb[k]["predicted_iou"] - m["predicted_iou"]))
        if j != i:
            tie = i < len(rb) and abs(rb[i]["predicted_iou"] - m["predicted_iou"]) < 1e-5
            swaps += tie
            misordered += not tie
        mx, my = rle_decode(m["segmentation"]), rle_decode(rb[j]["segmentation"])
        ious.append(float((mx & my).sum() / max(1, (mx | my).sum())))
    return {
        "identical": ra == rb,  # same masks (pixels), scores, points and crop boxes, in the same order
        "count_a": len(ra),
        "count_b": len(rb),
        "min_iou": min(ious) if ious else None,
        "unmatched": unmatched,
        "tie_swaps": swaps,
        "misordered": misordered,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--presets",
        nargs="+",
        default=DEFAULT_PRESETS,
        help="[MODEL:]PRESET[+nonms][+bf16][+fused][+today]; MODEL sam2-tiny is the SAM2 Hiera-tiny architecture",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-meta", action="store_true", help="skip segment_anything even if importable")
    parser.add_argument(
        "--meta",
        nargs="+",
        default=["meta", "meta+nonms"],
        help="segment_anything runs: meta, meta+nonms (NMS off), meta+tuss (the tuss preset's crops and grids)",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="run every configuration in one process, round-robin for --repeats rounds (medians; no per-"
        "configuration peak RSS): ratios then share the machine's load",
    )
    parser.add_argument("--thresholds", metavar="JSON", help="skip the calibration: the thresholds it printed before")
    parser.add_argument("--keep", metavar="DIR", help="keep every configuration's masks (and results) in DIR")
    parser.add_argument("--child", nargs=3, metavar=("SPEC", "THRESHOLDS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if args.child:
        spec, thresholds, out = args.child
        if args.interleave:
            specs, outs = json.loads(spec), [Path(o) for o in json.loads(out)]
            print(json.dumps(run_interleaved(specs, json.loads(thresholds), outs, args.repeats)))
        else:
            print(json.dumps(run_one(spec, json.loads(thresholds), Path(out), args.repeats)))
        return

    from ovss.masks import SamBackbone

    thresholds = (
        json.loads(args.thresholds)
        if args.thresholds
        else calibrate(SamBackbone(vit_b_sam(), "sam-vit-b"), test_image())
    )
    print(f"torch {torch.__version__}, {args.threads} threads; calibrated thresholds {thresholds}", flush=True)
    try:
        import segment_anything  # noqa: F401

        has_meta = not args.no_meta
    except ImportError:
        has_meta = False
    specs = (args.meta if has_meta else []) + args.presets
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        tmp = args.keep or stack.enter_context(tempfile.TemporaryDirectory())
        Path(tmp).mkdir(parents=True, exist_ok=True)
        outs = [Path(tmp) / f"{spec.replace(':', '_')}.json" for spec in specs]
        common = [json.dumps(thresholds)]
        common_tail = ["--repeats", str(args.repeats), "--threads", str(args.threads)]
        if args.interleave:
            cmd = [sys.executable, __file__, "--child", json.dumps(specs), *common, json.dumps([str(o) for o in outs])]
            proc = subprocess.run([*cmd, *common_tail, "--interleave"], text=True, stdout=subprocess.PIPE)
            if proc.returncode != 0:
                raise SystemExit(f"interleaved run failed (exit {proc.returncode})")
            results = json.loads(proc.stdout.strip().splitlines()[-1])
            for spec, out in zip(specs, outs):
                results[spec]["out"] = out
        for spec, out in zip(specs, outs):
            if not args.interleave:
                cmd = [sys.executable, __file__, "--child", spec, *common, str(out), *common_tail]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                if proc.returncode != 0:
                    print(f"{spec}: failed\n{proc.stderr[-2000:]}", flush=True)
                    continue
                results[spec] = json.loads(proc.stdout.strip().splitlines()[-1])
                results[spec]["out"] = out
            _report(spec, results)


def _report(spec: str, results: dict[str, dict]) -> None:
    res, out = results[spec], results[spec]["out"]
    line = f"{spec:18s} {res['seconds']:7.2f} s/img  {res['masks']:4d} masks"
    if "peak_rss_mb" in res:
        line += f"  peak RSS {res['peak_rss_mb']:6.0f} MB (after loading: {res['model_rss_mb']:5.0f} MB)"
    else:
        line += f"  (rounds: {', '.join(f'{t:.1f}' for t in res['all_seconds'])} s)"
    if res.get("stages"):
        line += "\n" + " " * 19 + ", ".join(f"{k} {v:.1f} s" for k, v in res["stages"].items())
    parts = spec.split("+")
    ref = "meta+tuss" if parts[0] == "tuss" else "meta+nonms" if "nonms" in parts else "meta"
    if ref in results and not spec.startswith("meta"):
        line += f"  {results[ref]['seconds'] / res['seconds']:5.2f}x vs segment_anything ({ref})"
        if parts[0] == "exact":
            c = compare(results[ref]["out"], out)
            line += (
                f"\n{'':19s}vs {ref}: {c['count_b']} masks (Meta {c['count_a']}), identical {c['identical']}, "
                f"min IoU {c['min_iou']}, "
                f"unmatched {c['unmatched']}, order swaps at score ties {c['tie_swaps']}, other order "
                f"differences {c['misordered']}"
            )
    exact = "+".join(p for p in parts if p != "fused")
    if "fused" in parts and exact in results:
        c = compare(results[exact]["out"], out)
        line += f"\n{'':19s}{exact} (pixel-exact decoder) takes {results[exact]['seconds'] / res['seconds']:5.2f}x "
        line += f"the time of this one; masks identical {c['identical']} ({c['count_b']} vs {c['count_a']}), "
        line += f"min IoU {c['min_iou']}"
    new = "+".join(p for p in parts if p != "today")
    if "today" in parts and new in results:
        c = compare(out, results[new]["out"])
        line += f"\n{'':19s}{new}: {res['seconds'] / results[new]['seconds']:5.2f}x faster than today's code; "
        line += f"masks identical {c['identical']} ({c['count_b']} = {c['count_a']}), min IoU {c['min_iou']}"
    print(line, flush=True)


if __name__ == "__main__":
    main()
