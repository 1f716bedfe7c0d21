"""The GLCC kNN graph (TUSS's k = 50 self-search over the mask bank) at 100k and 1M masks: today's exact
chunked torch search against faiss exact, faiss IVF, faiss HNSW and the bf16 search with fp32
re-ranking, all in one process, with recall@k against the exact search and peak RSS.

Synthetic bank shaped like TUSS's: CLIP ViT-B/16 mask embeddings (D 512, L2-normalised), drawn
around ``--clusters`` random Gaussian cluster centres with isotropic noise (``--noise`` 3: cosine to
the own centre ~0.32; about 80% of a mask's 50 neighbours share its cluster at 100k). The noise fills
all 512 dimensions, which makes neighbours inside a cluster nearly random: a hard case for approximate
indexes (real embeddings have a lower intrinsic dimension), so the recall figures are conservative.

Each size: the exact search of every mask against all N costs N² D, so the search is timed on
``--sample`` random masks (queries) against the FULL bank and EXTRAPOLATED linearly to all N rows
(each row's search is independent of the others: the sample's cost times N / sample). Index builds
(IVF k-means + add, HNSW insertions) are timed whole. Graph seconds = build + extrapolated search.
``--sample 0`` searches every row (no extrapolation). The baseline (``build_knn_index(backend="torch")``,
what ``knn_backend="torch"`` runs) is timed first, between the methods and last; its median is the
reference of every ratio. Recall@k on the sample is against that baseline's result on the same rows.
Peak RSS: VmHWM reset before each method's build, read after its first search (process total, the
bank included: the bank alone is ``bank_rss_mb``).

Then (``--lp-size``, default 20k masks) every method's FULL graph, the LP solve (sss: alpha 0.8,
k 50, 21 classes = cluster mod 21, 10% of the masks labelled) on it, and how many LP labels differ
from the LP on the exact graph.

    python bench/knn.py                                  # 100k and 1M, sample 2000, LP at 20k
    python bench/knn.py --sizes 100000 --sample 0 --lp-size 100000   # everything whole at 100k
    python bench/knn.py --sizes 20000 --sample 500 --lp-size 5000    # a quick look
    python bench/knn.py --sizes 100000 --sample 1000 --repeats 1 --subspace 32   # lower intrinsic dimension
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _rss(field: str) -> float:
    from amg import _rss_mb

    return round(_rss_mb(field))


def _reset_peak() -> None:
    from amg import _reset_peak as reset

    reset()


def make_bank(
    n: int, d: int, clusters: int, noise: float, seed: int, subspace: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` unit vectors around ``clusters`` centres, written in chunks (1M x 512 needs no 2x copy).

    ``subspace`` R > 0: each cluster's noise lies in its own random R-dimensional subspace (same
    norm), plus a tenth of it isotropic: a bank of lower intrinsic dimension than isotropic noise."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, d, generator=gen), dim=1)
    labels = torch.randint(0, clusters, (n,), generator=gen)
    bases = torch.linalg.qr(torch.randn(clusters, d, subspace, generator=gen)).Q if subspace else None
    x = torch.empty(n, d)
    step = 8192
    for start in range(0, n, step):
        stop = min(start + step, n)
        lab = labels[start:stop]
        if bases is None:
            noise_block = torch.randn(stop - start, d, generator=gen) * (noise / math.sqrt(d))
        else:
            z = torch.randn(stop - start, subspace, generator=gen) * (noise / math.sqrt(subspace))
            iso = torch.randn(stop - start, d, generator=gen) * (0.1 * noise / math.sqrt(d))
            noise_block = torch.einsum("ndr,nr->nd", bases[lab], z) + iso
        x[start:stop] = F.normalize(centres[lab] + noise_block, dim=1)
    return x, labels


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    from ovss.ops.labelprop import recall_at_k

    step, hits = 20_000, 0.0
    for start in range(0, truth.shape[0], step):  # bounded memory: (rows, k, k) comparisons
        rows = truth[start : start + step].shape[0]
        hits += recall_at_k(found[start : start + step], truth[start : start + step]) * rows
    return hits / truth.shape[0]


def methods(args) -> list[tuple[str, object]]:
    from ovss.ops.labelprop import KNNIndexConfig, _faiss

    out: list[tuple[str, object]] = []
    if _faiss() is not None:
        out.append(("faiss exact (IndexFlatIP)", ("faiss", KNNIndexConfig("exact"))))
        out.append((f"faiss IVF (nprobe {args.nprobe})", ("faiss", KNNIndexConfig("ivf", nprobe=args.nprobe))))
        out.append(
            (
                f"faiss HNSW (M {args.hnsw_m}, efSearch {args.ef_search})",
                ("faiss", KNNIndexConfig("hnsw", hnsw_m=args.hnsw_m, ef_search=args.ef_search)),
            )
        )
    else:
        print("faiss is not importable: only the torch paths are timed", flush=True)
    out.append((f"bf16 + fp32 rerank (k' = {args.rerank}k)", ("auto", KNNIndexConfig("bf16", rerank=args.rerank))))
    return out


def one_size(n: int, args) -> dict:
    from ovss.ops.labelprop import build_knn_index

    gc.collect()
    x, labels = make_bank(n, args.dim, args.clusters, args.noise, args.seed, args.subspace)
    bank_rss = _rss("VmRSS")
    k = args.k
    sample = n if args.sample <= 0 or args.sample >= n else args.sample
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + 1))[:sample]
    ids = ids if sample < n else torch.arange(n)
    q = x[ids]
    scale = n / sample
    note = "whole graph searched" if sample == n else f"search timed on {sample} of {n} rows, EXTRAPOLATED x{scale:g}"
    print(f"\n== {n} masks, D {args.dim}, {args.clusters} clusters, k {k}: {note}", flush=True)

    baseline = build_knn_index(x, backend="torch", chunk_elements=args.chunk_elements)
    base_times: list[float] = []

    def run_baseline() -> torch.Tensor:
        t, (_, idx) = timed(baseline.search, q, k, ids)
        base_times.append(t)
        print(f"  baseline torch exact: {sample} rows in {t:.1f} s", flush=True)
        return idx

    _reset_peak()
    truth = run_baseline()
    base_peak = _rss("VmHWM")
    purity_truth = float((labels[truth] == labels[ids, None]).float().mean())
    rows: dict[str, dict] = {}
    for name, (backend, cfg) in methods(args):
        if cfg.kind == "hnsw" and n > args.hnsw_max:  # type: ignore[attr-defined]
            rows[name] = {"skipped": f"HNSW is built only up to --hnsw-max {args.hnsw_max} masks"}
            print(f"  {name}: skipped (n > --hnsw-max {args.hnsw_max})", flush=True)
            continue
        gc.collect()
        _reset_peak()
        build_s, index = timed(build_knn_index, x, backend=backend, chunk_elements=args.chunk_elements, index=cfg)
        first_s, (_, idx) = timed(index.search, q, k, ids)
        peak = _rss("VmHWM")
        times = [first_s]
        for _ in range(args.repeats - 1):  # interleaved with the baseline
            run_baseline()
            times.append(timed(index.search, q, k, ids)[0])
        search_s = statistics.median(times)
        rows[name] = {
            "build_seconds": round(build_s, 2),
            "search_seconds_sample": round(search_s, 2),
            "graph_seconds": round(build_s + search_s * scale, 1),
            "recall_at_k": round(recall(idx, truth), 4),
            "neighbour_cluster_purity": round(float((labels[idx] == labels[ids, None]).float().mean()), 3),
            "peak_rss_mb": peak,
        }
        r = rows[name]
        print(
            f"  {name}: build {build_s:.1f} s, search {search_s:.1f} s on {sample} rows -> graph "
            f"{r['graph_seconds']} s; recall@{k} {r['recall_at_k']:.3f}, purity {r['neighbour_cluster_purity']:.2f}, "
            f"peak RSS {peak} MB",
            flush=True,
        )
        del index, idx
    run_baseline()  # last: the baseline brackets every method
    base_s = statistics.median(base_times)
    base_graph = base_s * scale
    for r in rows.values():
        if "graph_seconds" in r:
            r["speedup_vs_torch_exact"] = round(base_graph / r["graph_seconds"], 2)
    out = {
        "masks": n,
        "sample_rows": sample,
        "extrapolated": sample < n,
        "note": note,
        "bank_rss_mb": bank_rss,
        "baseline_torch_exact": {
            "search_seconds_sample_runs": [round(t, 2) for t in base_times],
            "search_seconds_sample_median": round(base_s, 2),
            "graph_seconds": round(base_graph, 1),
            "neighbour_cluster_purity": round(purity_truth, 3),
            "peak_rss_mb": base_peak,
        },
        "methods": rows,
    }
    print(f"  baseline torch exact: median {base_s:.1f} s on {sample} rows -> graph {base_graph:.1f} s", flush=True)
    for name, r in rows.items():
        if "speedup_vs_torch_exact" in r:
            print(f"  {name}: {r['speedup_vs_torch_exact']}x the baseline, recall {r['recall_at_k']:.3f}", flush=True)
    return out  # the bank and every index go with this frame


def lp_part(args) -> dict:
    """Every method's whole graph at ``--lp-size`` masks, the LP on it, and its labels against the exact graph's."""
    from ovss.ops.labelprop import LabelPropagator, LPConfig, knn_search

    n, k = args.lp_size, args.k
    x, clusters = make_bank(n, args.dim, args.clusters, args.noise, args.seed + 7, args.subspace)
    labels = clusters % 21
    gen = torch.Generator().manual_seed(args.seed + 8)
    labelled = torch.randperm(n, generator=gen)[: n // 10]
    seeds = torch.zeros(n, 21)
    seeds[labelled, labels[labelled]] = 1.0
    unl = torch.ones(n, dtype=torch.bool)
    unl[labelled] = False
    propagator = LabelPropagator(LPConfig(k=k, alpha=0.8))
    print(f"\n== LP (alpha 0.8, k {k}, 21 classes, {len(labelled)} labelled) on whole graphs of {n} masks", flush=True)
    out: dict = {"masks": n, "labelled": len(labelled)}
    ref_pred = ref_idx = None
    for name, (backend, cfg) in [("torch exact (baseline)", ("torch", None)), *methods(args)]:
        graph_s, (s, idx) = timed(
            knn_search, x, x, k, exclude_self=True, backend=backend, chunk_elements=args.chunk_elements, index=cfg
        )
        lp_s, res = timed(propagator, x, seeds, knn=(s, idx))
        pred = res.scores.argmax(1)
        row = {
            "graph_seconds": round(graph_s, 2),
            "lp_seconds": round(lp_s, 2),
            "lp_accuracy_unlabelled": round(float((pred[unl] == labels[unl]).float().mean()), 4),
        }
        if ref_pred is None:
            ref_pred, ref_idx = pred, idx
        else:
            row["recall_at_k"] = round(recall(idx, ref_idx), 4)
            row["labels_changed_vs_exact_graph"] = int((pred != ref_pred).sum())
        out[name] = row
        print(f"  {name}: {row}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--sample", type=int, default=2000, help="query rows timed per size (0 = all rows)")
    parser.add_argument("--repeats", type=int, default=2, help="searches per method, interleaved with the baseline")
    parser.add_argument("--k", type=int, default=50, help="TUSS's first LP (the rounds share one search at k 50)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=150)
    parser.add_argument("--noise", type=float, default=3.0)
    parser.add_argument("--subspace", type=int, default=0, help="per-cluster noise subspace dimension (0 = isotropic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest bank HNSW is built for (slow build)")
    parser.add_argument("--rerank", type=int, default=4)
    parser.add_argument("--chunk-elements", type=int, default=1 << 25, help="LPConfig.knn_chunk_elements")
    parser.add_argument("--lp-size", type=int, default=20_000, help="masks of the whole-graph LP part (0 = skip)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from ovss.ops.labelprop import _faiss

    faiss = _faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, faiss {getattr(faiss, '__version__', 'absent')}, {args.threads} threads",
        flush=True,
    )
    results: dict = {"torch": torch.__version__, "threads": args.threads, "args": vars(args) | {"json": None}}
    results["sizes"] = [one_size(n, args) for n in args.sizes]
    if args.lp_size:
        results["lp"] = lp_part(args)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
