"""``ovss leaderboard``: several methods on several benchmarks under one protocol, in one table.

Every (method, benchmark) cell is an ordinary ``ovss eval`` run in ``OUT/METHOD/BENCHMARK``, so each
cell resumes on its own after a crash, and a cell already finished with the same settings is reused.
Beside each cell's ``results.json`` the leaderboard keeps ``cell.json``: the cell's settings
signature (written before the run, so a folder always says what it holds) and its measured peak
memory. The whole board is written as ``leaderboard.json``, ``leaderboard.md`` and
``leaderboard.png``, each atomically.

Peak memory: by default the cells run in this process and a thread samples its resident set size
with psutil every 20 ms while a cell runs, keeping the maximum, which therefore includes the
Python/torch baseline and whatever earlier cells left cached (``ru_maxrss`` could not be used: it
is process-wide and never decreases). With ``isolate`` each cell runs in a fresh child process and
reports that process's own peak (VmHWM): exact per cell, at the cost of loading models per cell.
On CUDA, ``torch.cuda.max_memory_allocated`` is reset before and read after each cell.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError
from .evaluate import EvalJob, _git_commit, run_eval
from .io import atomic_path, write_json
from .memory import process_memory_kib
from .protocols import BENCHMARKS, FAMILIES, METRIC_CONVENTIONS

ROLES = ("clip", "dino", "sam")
SAMPLE_SECONDS = 0.02
CELL_FILE = "cell.json"
FIGURE_INCHES, FIGURE_DPI = (10.0, 5.0), 100  # leaderboard.png is 1000 x 500 pixels

DESCRIPTION = """\
Run several methods on several benchmarks and write one comparison: OUT/leaderboard.json (every
cell with its settings, provenance, models and commit), OUT/leaderboard.md (methods x benchmarks
with the average, images/s and peak memory; a footnote per tier) and OUT/leaderboard.png (mIoU per
benchmark per method). Each cell is an `ovss eval` run in OUT/METHOD/BENCHMARK: it resumes after a
crash and is reused when it finished with the same settings. Methods whose backbones (--dino,
--sam) or required checkpoint (--checkpoint METHOD=PATH) were not given are listed as skipped.

example:
  ovss leaderboard --methods sclip,naclip,clearclip,proxyclip --suite all8 --root data/ \\
      --dino facebook/dinov2-base --out board/
"""


@dataclasses.dataclass
class Cell:
    method: str
    benchmark: str
    out: Path
    job: EvalJob
    signature: str


def _split(text: str | list[str] | tuple[str, ...]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    return [i.strip() for i in items if i.strip()]


def _settings_names(spec: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(spec.settings)}


def _skip_reason(spec: Any, models: dict[str, str | None], checkpoint: str | None) -> str | None:
    """Why a method cannot run with what was given, or None. CLIP falls back to ovss's default CLIP,
    as in ``ovss eval``; DINO and SAM backbones must be named, so a board never downloads one unasked."""
    missing = [r for r in spec.needs if r != "clip" and models.get(r) is None]
    if missing:
        return "needs " + " and ".join(f"--{r}" for r in missing)
    if spec.checkpoint == "required" and checkpoint is None:
        return f"needs a trained checkpoint (--checkpoint {spec.name}=PATH)"
    return None


def _signature(job: EvalJob, settings: Any) -> str:
    identity = {
        "method": job.method,
        "benchmark": job.benchmark,
        "root": str(Path(job.root).resolve()),
        "protocol": job.protocol,
        "limit": job.limit,
        "overrides": job.overrides,
        "settings": dataclasses.asdict(settings),
        **{r: getattr(job, r) for r in ROLES},
        "checkpoint": job.checkpoint,
    }
    return json.dumps(identity, sort_keys=True, default=str)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def peak_memory(device: str | None) -> Iterator[dict[str, float | None]]:
    """Peak resident memory (MiB) of this process while the block runs, and peak CUDA memory on CUDA."""
    import psutil
    import torch

    proc, stop = psutil.Process(), threading.Event()
    peak = {"rss": float(proc.memory_info().rss)}

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            peak["rss"] = max(peak["rss"], float(proc.memory_info().rss))

    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result: dict[str, float | None] = {"peak_rss_mib": None, "peak_cuda_mib": None}
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak["rss"] = max(peak["rss"], float(proc.memory_info().rss))
        result["peak_rss_mib"] = round(peak["rss"] / 2**20, 1)
        if cuda:
            result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def plan(
    methods: list[str],
    benchmarks: list[str],
    root: Path,
    out: Path,
    models: dict[str, str | None],
    checkpoints: dict[str, str],
    overrides: dict[str, Any],
    protocol: str | None,
    device: str | None,
    limit: int | None,
) -> tuple[list[Cell], dict[str, str]]:
    """The cells to run and the skipped methods with their reasons; every check is cheap and comes first."""
    from .data import open_dataset
    from .methods import get_method_spec
    from .methods.settings import resolve_settings

    if importlib.util.find_spec("matplotlib") is None:  # checked before hours of evaluation, not after
        raise InputError("leaderboard.png needs matplotlib; install it with: pip install 'ovss[leaderboard]'")
    if not methods:
        raise InputError("no methods given; pass --methods sclip,naclip,... (see `ovss methods`)")
    if not benchmarks:
        raise InputError("no benchmark given; pass --datasets voc21,ade20k150,... or --suite all8")
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise InputError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    if protocol is not None and protocol not in FAMILIES:
        raise InputError(f"unknown protocol family {protocol!r}; choose one of {', '.join(FAMILIES)}")
    specs = {m: get_method_spec(m) for m in dict.fromkeys(methods)}  # unknown names fail here, up front
    stray = sorted(set(checkpoints) - set(specs))
    if stray:
        raise InputError(f"--checkpoint {stray[0]}=...: {stray[0]!r} is not among --methods", option="checkpoint")
    unused = sorted(k for k in overrides if not any(k in _settings_names(s) for s in specs.values()))
    if unused:
        raise InputError(f"--set {unused[0]}: none of the methods has this setting (see `ovss methods -v`)")
    for bench in benchmarks:  # a missing dataset is reported before any model is loaded
        try:
            open_dataset(bench, root)
        except InputError as e:
            raise InputError(f"{bench}: {e.message}", option=e.option) from None
    skipped: dict[str, str] = {}
    cells: list[Cell] = []
    for name, spec in specs.items():
        reason = _skip_reason(spec, models, checkpoints.get(name))
        if reason is not None:
            skipped[name] = reason
            continue
        own = {k: v for k, v in overrides.items() if k in _settings_names(spec)}
        for bench in benchmarks:
            job = EvalJob(
                name,
                bench,
                root,
                protocol=protocol,
                device=device,
                limit=limit,
                out=out / name / bench,
                overrides=own,
                checkpoint=checkpoints.get(name),
                # only the backbones the method uses: adding --dino later must not redo the CLIP-only cells
                **{r: models.get(r) for r in ROLES if r in spec.needs},  # type: ignore[arg-type]
            )
            resolved = resolve_settings(spec, bench, protocol, job.checkpoint, own)
            cells.append(Cell(name, bench, job.out, job, _signature(job, resolved.settings)))
    if not cells:
        why = "; ".join(f"{m}: {r}" for m, r in skipped.items())
        raise InputError(f"every method was skipped ({why}); give the backbones or checkpoints they need")
    return cells, skipped


def _finished(cell: Cell) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The cell's results and record when it finished with the same settings signature."""
    record = _read_json(cell.out / CELL_FILE)
    results = _read_json(cell.out / "results.json")
    if record and results and record.get("signature") == cell.signature and record.get("complete"):
        return results, record
    return None


def _prepare(cell: Cell) -> None:
    """Mark the folder with this cell's signature; a folder holding another signature is cleared first,
    so a changed setting redoes the cell rather than mixing with the old partial results."""
    record = _read_json(cell.out / CELL_FILE)
    if record is not None and record.get("signature") != cell.signature:
        for stale in ("partial", "results.json", "results.md"):
            path = cell.out / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if record is None or record.get("signature") != cell.signature:
        write_json(cell.out / CELL_FILE, {"signature": cell.signature, "complete": False})


def _isolated_cell(job: EvalJob, progress: bool) -> tuple[dict[str, Any] | None, dict[str, float | None]]:
    """One cell in a fresh process: its own high-water mark is exactly the cell's peak."""
    import torch

    cuda = torch.cuda.is_available() and (job.device is None or str(job.device).startswith("cuda"))
    results = run_eval(job, progress=progress)
    if results is not None:
        results.pop("table", None)
    memory = {"peak_rss_mib": round(process_memory_kib("VmHWM") / 1024, 1), "peak_cuda_mib": None}
    if cuda:
        memory["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return results, memory


def _run_isolated(job: EvalJob, progress: bool) -> tuple[dict[str, Any] | None, dict[str, float | None]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_isolated_cell, job, progress).result()


def run_cell(cell: Cell, progress: bool = True, isolate: bool = False) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(results, record, reused): the cell's results.json, its cell.json, and whether it was already done.
    ``isolate`` runs the cell in a child process, so its peak memory is its own (models load per cell)."""
    done = _finished(cell)
    if done is not None:
        return (*done, True)
    _prepare(cell)
    if isolate:
        results, memory = _run_isolated(cell.job, progress)
    else:
        with peak_memory(cell.job.device) as memory:
            results = run_eval(cell.job, progress=progress)
    if results is None:  # a rank other than 0 under torchrun: rank 0 writes the board
        return {}, {}, False
    results = _read_json(cell.out / "results.json") or results  # exactly what was written (NaN as null)
    how = "own process peak (VmHWM)" if isolate else "psutil RSS samples"
    record = {"signature": cell.signature, "complete": True, **memory, "memory_measured_by": how}
    write_json(cell.out / CELL_FILE, record)
    return results, record, False


def _cell_entry(cell: Cell, results: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    from .methods import get_method_spec
    from .methods.base import TIERS

    metric = results["metric"]
    other = next(c for c in METRIC_CONVENTIONS if c != metric)
    tier = get_method_spec(cell.method).tier
    return {
        "method": cell.method,
        "benchmark": cell.benchmark,
        "status": "done",
        "mIoU": results["mIoU"],
        "metric": metric,
        f"mIoU_{other}": results[f"mIoU_{other}"],
        "aAcc": results["aAcc"],
        "mAcc": results["mAcc"],
        "images": results["images"],
        "images_per_second": results["images_per_second"],
        "peak_rss_mib": record.get("peak_rss_mib"),
        "peak_cuda_mib": record.get("peak_cuda_mib"),
        "tier": tier,
        "tier_text": TIERS[tier],
        "protocol": results["protocol"]["family"],
        "settings": results["settings"],
        "provenance": results["provenance"],
        "overrides": results["overrides"],
        "models": results["models"],
        "device": results["device"],
        "ovss_commit": results["ovss_commit"],
        "date": results["date"],
        "results": str(cell.out / "results.json"),
    }


def run_leaderboard(
    methods: str | list[str],
    benchmarks: str | list[str],
    root: str | Path,
    out: str | Path,
    clip: str | None = None,
    dino: str | None = None,
    sam: str | None = None,
    checkpoints: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    protocol: str | None = None,
    device: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    isolate: bool = False,
) -> dict[str, Any]:
    """Run (or reuse) every cell and write ``leaderboard.json``, ``.md`` and ``.png`` in ``out``;
    returns the board as written to ``leaderboard.json``."""
    from .methods import get_method_spec
    from .methods.base import TIERS

    methods, benchmarks = _split(methods), _split(benchmarks)
    if benchmarks == ["all8"]:
        benchmarks = list(BENCHMARKS)
    out, root = Path(out), Path(root)
    models = {"clip": clip, "dino": dino, "sam": sam}
    cells, skipped = plan(
        methods, benchmarks, root, out, models, dict(checkpoints or {}), dict(overrides or {}), protocol, device, limit
    )
    for name, reason in skipped.items():
        _say(f"skipped {name}: {reason}")
    entries: list[dict[str, Any]] = []
    for i, cell in enumerate(cells, 1):
        start = time.perf_counter()
        _say(f"[{i}/{len(cells)}] {cell.method} on {cell.benchmark} ...")
        results, record, reused = run_cell(cell, progress=progress, isolate=isolate)
        if not results:
            continue
        entry = _cell_entry(cell, results, record)
        entries.append(entry)
        how = "reused" if reused else f"{time.perf_counter() - start:.1f} s"
        _say(
            f"[{i}/{len(cells)}] {cell.method} on {cell.benchmark}: mIoU {entry['mIoU']:.2f} "
            f"({entry['metric']}), {entry['images_per_second']} img/s, peak {entry['peak_rss_mib']} MiB ({how})"
        )
    if not entries:  # not rank 0
        return {}
    tiers = {m: get_method_spec(m).tier for m in dict.fromkeys(methods)}
    board = {
        "methods": list(tiers),
        "benchmarks": benchmarks,
        "protocol": protocol or "each method's own",
        "cells": entries,
        "skipped": [{"method": m, "status": "skipped", "reason": r, "tier": tiers[m]} for m, r in skipped.items()],
        "summary": _summary(entries, list(tiers), benchmarks),
        "tiers": {t: TIERS[t] for t in sorted(set(tiers.values()))},
        "models": {r: v for r, v in models.items() if v is not None},
        "checkpoints": dict(checkpoints or {}),
        "overrides": dict(overrides or {}),
        "limit": limit,
        "memory": "per cell in its own process (VmHWM)" if isolate else "in one process (psutil RSS samples)",
        "ovss_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(out / "leaderboard.json", board)
    with atomic_path(out / "leaderboard.md") as tmp:
        tmp.write_text(to_markdown(board))
    write_chart(board, out / "leaderboard.png")
    return board


def _summary(entries: list[dict[str, Any]], methods: list[str], benchmarks: list[str]) -> dict[str, Any]:
    """Per method: the average mIoU over the benchmarks (when every one ran), images/s over all its
    images, and the largest peak memory of its cells."""
    rows: dict[str, Any] = {}
    for m in methods:
        own = {e["benchmark"]: e for e in entries if e["method"] == m}
        if not own:
            continue
        values = [own[b]["mIoU"] for b in benchmarks if b in own]
        complete = len(values) == len(benchmarks) and all(v is not None for v in values)
        seconds = sum(e["images"] / e["images_per_second"] for e in own.values() if e["images_per_second"])
        images = sum(e["images"] for e in own.values() if e["images_per_second"])
        rss = [e["peak_rss_mib"] for e in own.values() if e["peak_rss_mib"] is not None]
        cuda = [e["peak_cuda_mib"] for e in own.values() if e["peak_cuda_mib"] is not None]
        rows[m] = {
            "average_mIoU": sum(values) / len(values) if complete else None,
            "images_per_second": round(images / seconds, 4) if seconds else None,
            "peak_rss_mib": max(rss) if rss else None,
            "peak_cuda_mib": max(cuda) if cuda else None,
        }
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def to_markdown(board: dict[str, Any]) -> str:
    benchmarks, summary = board["benchmarks"], board["summary"]
    cells = {(e["method"], e["benchmark"]): e for e in board["cells"]}
    skipped = {s["method"]: s for s in board["skipped"]}
    cuda = any(e["peak_cuda_mib"] is not None for e in board["cells"])
    memory = "peak CUDA MiB" if cuda else "peak RSS MiB"
    head = ["method", "tier", *benchmarks, "avg", "images/s", memory]
    lines = ["# ovss leaderboard", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in board["methods"]:
        if m in skipped:
            s = skipped[m]
            row = [m, f"{s['tier']}[^{s['tier']}]", f"skipped: {s['reason']}", *[""] * (len(head) - 3)]
        else:
            tier = next(e["tier"] for e in board["cells"] if e["method"] == m)
            row = [m, f"{tier}[^{tier}]"] + [_fmt(cells[(m, b)]["mIoU"]) for b in benchmarks]
            s = summary[m]
            row += [_fmt(s["average_mIoU"]), _fmt(s["images_per_second"], 3)]
            row.append(_fmt(s["peak_cuda_mib"] if cuda else s["peak_rss_mib"], 0))
        lines.append("| " + " | ".join(row) + " |")
    metrics = sorted({e["metric"] for e in board["cells"]})
    protocols = sorted({f"{e['method']}: {e['protocol']}" for e in board["cells"]})
    lines += [
        "",
        f"mIoU in % ({' / '.join(metrics)} convention; the other convention is in leaderboard.json). "
        "avg: mean over the benchmarks. images/s: all of a method's images over their segmentation time. "
        f"{memory}: the largest over the method's cells, measured {board['memory']} (see docs/leaderboard.md).",
        "",
        f"protocol: {board['protocol']} ({', '.join(protocols)})",
        f"models: {json.dumps(board['models'])}; checkpoints: {json.dumps(board['checkpoints'])}; "
        f"overrides: {json.dumps(board['overrides'], default=str)}",
        f"ovss commit: {board['ovss_commit'] or 'no git commit'}; date {board['date']}",
    ]
    if board["limit"] is not None:
        lines.append(f"only the first {board['limit']} images of each benchmark (--limit): a smoke test, not a result")
    lines.append("")
    lines += [f"[^{t}]: tier {t}: {text}" for t, text in board["tiers"].items()]
    return "\n".join(lines) + "\n"


def write_chart(board: dict[str, Any], path: Path) -> None:
    """Grouped bars: mIoU per benchmark (and the average) for every method that ran."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [*board["benchmarks"], "average"]
    methods = [m for m in board["methods"] if m in board["summary"]]
    cells = {(e["method"], e["benchmark"]): e["mIoU"] for e in board["cells"]}
    fig = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(groups))
    for i, m in enumerate(methods):
        values = [cells.get((m, b)) for b in board["benchmarks"]] + [board["summary"][m]["average_mIoU"]]
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, heights, width, label=m)
    ax.set_xticks(x, groups, rotation=20)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"ovss leaderboard (protocol: {board['protocol']})")
    ax.legend(fontsize="small", ncols=min(len(methods), 6))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=FIGURE_DPI)


def _say(text: str) -> None:
    print(f"ovss: {text}", file=sys.stderr, flush=True)


def _checkpoint_arg(value: str) -> tuple[str, str]:
    if "=" not in value or not value.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"{value!r}: expected METHOD=PATH, e.g. --checkpoint pixelclip=runs/px")
    method, path = value.split("=", 1)
    return method.strip(), path.strip()


def add_leaderboard_parser(sub: Any) -> argparse.ArgumentParser:
    from .cliargs import add_set_arg

    p = sub.add_parser(
        "leaderboard",
        help="several methods on several benchmarks under one protocol, in one table and chart",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--methods", required=True, help="comma-separated method names, e.g. sclip,naclip,proxyclip")
    p.add_argument("--datasets", "-d", help="comma-separated benchmarks, e.g. voc21,ade20k150")
    p.add_argument("--suite", choices=["all8"], help="the eight benchmarks")
    p.add_argument("--root", required=True, help="the folder holding the benchmarks' standard layouts")
    p.add_argument("--out", "-o", required=True, help="output folder (one sub-folder per method and benchmark)")
    p.add_argument("--protocol", "-p", help="one protocol family for every method (default: each method's own)")
    p.add_argument("--limit", type=int, help="only the first N images of each benchmark (a smoke test)")
    for role in ROLES:
        p.add_argument(f"--{role}", default=None, help=f"the {role.upper()} backbone for every method that needs one")
    p.add_argument(
        "--checkpoint",
        type=_checkpoint_arg,
        action="append",
        default=[],
        metavar="METHOD=PATH",
        help="a trained or fitted run folder for one method (repeat per method)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    p.add_argument(
        "--isolate",
        action="store_true",
        help="run each cell in its own process: exact per-cell peak memory, at the cost of loading models per cell",
    )
    add_set_arg(p, "a setting applied to every method that has it, e.g. --set short_side=336")
    p.set_defaults(func=cmd_leaderboard)
    return p


def cmd_leaderboard(args: argparse.Namespace) -> int:
    if bool(args.suite) == bool(args.datasets):
        raise InputError("give either --datasets voc21,ade20k150,... or --suite all8")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit {args.limit}: give a positive number of images", option="limit")
    board = run_leaderboard(
        args.methods,
        list(BENCHMARKS) if args.suite else args.datasets,
        args.root,
        args.out,
        clip=args.clip,
        dino=args.dino,
        sam=args.sam,
        checkpoints=dict(args.checkpoint),
        overrides=dict(args.set),
        protocol=args.protocol,
        device=args.device,
        limit=args.limit,
        isolate=args.isolate,
    )
    if board:
        print(to_markdown(board), end="")
        print(f"leaderboard: {Path(args.out) / 'leaderboard.json'}, .md, .png")
    return 0
