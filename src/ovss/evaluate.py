"""``ovss eval``: a method on a benchmark under a protocol, resumable and data-parallel.

Each rank (``RANK``/``WORLD_SIZE`` from ``torchrun`` or ``accelerate launch``; 0/1 otherwise)
takes every WORLD_SIZE-th image, accumulates a confusion matrix and saves it atomically with the
names of the images it has done, so a crashed run resumes where it stopped. Under a process group
(torchrun) the matrices are summed with one all_reduce; without one rank 0 waits for every shard
file. Shards left by a run with another world size are merged: their finished images are skipped
and their matrices added once, so a run resumed with fewer or more ranks gives the same result.
Rank 0 writes ``results.json`` and ``results.md`` with every setting.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .data.check import check_sample
from .device import device_for_rank
from .distributed import all_reduce_array, barrier, init_if_launched, wait_for_ranks
from .errors import InputError
from .io import atomic_path, write_json
from .jobs import dist_info, running
from .metrics import ConfusionMatrix, format_table, to_markdown
from .protocols import BENCHMARKS, METRIC_CONVENTIONS, ResolvedProtocol, resolve
from .vocab import Vocabulary, build_vocabulary, parse_classes

GROUND_TRUTH = "ground-truth"  # evaluates the labels against themselves: a layout self-check (100 mIoU)
FLUSH_EVERY = 20  # images between partial saves


@dataclass
class EvalJob:
    method: str
    benchmark: str
    root: Path
    protocol: str | None = None
    clip: str | None = None
    device: str | None = None
    limit: int | None = None
    out: Path = Path("ovss_eval")
    overrides: dict[str, Any] = field(default_factory=dict)
    names: str | None = None  # class names ("a; b, c") replacing the benchmark's, e.g. a protocol's name file
    metric: str | None = None  # override of the protocol's mIoU convention
    labels: Path | None = None  # for benchmark "folder": the label PNG folder
    dino: str | None = None
    checkpoint: str | None = None
    sam: str | None = None
    refine: dict[str, Any] | None = None  # SAM mask refinement, as Segmenter(refine=...)


def benchmark_vocabulary(job: EvalJob, background: str | list[str], num_classes: int) -> Vocabulary:
    """The benchmark's class names (or ``job.names``) with the protocol's background handling."""
    from .data.classes import benchmark_class_names

    groups = parse_classes(job.names) if job.names else [[n] for n in benchmark_class_names(job.benchmark)]
    has_bg = background != "none"
    if has_bg:
        # class 0 is "background": the first line of --names holds its words, else the protocol's
        background = groups[0] if job.names is not None else background
        groups = groups[1:]
    # Benchmarks keep their protocol's name lists as they are, overlaps included.
    vocab = build_vocabulary([", ".join(g) for g in groups], background if has_bg else None, allow_overlap=True)
    if vocab.num_classes != num_classes:
        raise InputError(
            f"{job.benchmark} has {num_classes} classes but the class names give {vocab.num_classes}; "
            "check --names (one class per line, background words first where the benchmark has background)"
        )
    return vocab


def eval_vocabulary(job: EvalJob, proto: ResolvedProtocol, num_classes: int) -> tuple[Vocabulary, str]:
    """What an evaluation queries, and where the names come from: ``--names``, else the protocol
    family's class-name files (synonyms and background words as its repository ships them), else
    the dataset's own class names."""
    if job.names is None and proto.names is not None and job.benchmark != "folder":
        from .data.protocol_names import protocol_names, protocol_vocabulary

        try:
            _, source = protocol_names(proto.names, job.benchmark)
        except InputError:
            source = None  # the family ships no list for this benchmark: the dataset's names
        if source is not None:
            vocab = protocol_vocabulary(proto.names, job.benchmark)
            if vocab.num_classes != num_classes:
                raise InputError(f"{source} lists {vocab.num_classes} classes but {job.benchmark} has {num_classes}")
            return vocab, source
    source = "--names" if job.names is not None else f"the dataset's own class names ({job.benchmark})"
    return benchmark_vocabulary(job, proto.background, num_classes), source


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class _Shard:
    """One rank's confusion matrix and finished images, saved together atomically."""

    def __init__(self, path: Path, num_classes: int, ignore_index: int, key: str) -> None:
        self.path, self.key = path, key
        self.matrix = ConfusionMatrix(num_classes, ignore_index)
        self.done: list[str] = []
        self.seconds = 0.0
        self.complete = False
        if path.exists():
            state = json.loads(path.read_text())
            if state["key"] != key:
                raise InputError(f"{path.parent.parent} holds an evaluation with other settings; use another --out")
            self.matrix = ConfusionMatrix.from_dict(state["matrix"])
            self.done, self.seconds, self.complete = state["done"], state["seconds"], state["complete"]

    def save(self) -> None:
        write_json(
            self.path,
            {
                "key": self.key,
                "matrix": self.matrix.to_dict(),
                "done": self.done,
                "seconds": self.seconds,
                "complete": self.complete,
            },
        )


def _open_dataset(job: EvalJob):
    from .data import image_folder, open_dataset

    if job.benchmark == "folder":
        if job.names is None:
            raise InputError("a folder dataset needs its class names: pass --names 'a; b; c' in label-id order")
        return image_folder(Path(job.root), job.labels, len(parse_classes(job.names)))
    return open_dataset(job.benchmark, job.root)


def _segmenter(job: EvalJob):
    """The method under the benchmark's protocol (< checkpoint < the job's overrides), or None for ground truth."""
    from .api import Segmenter

    if job.method == GROUND_TRUTH:
        return None
    return Segmenter(
        job.method,
        clip=job.clip,
        dino=job.dino,
        sam=job.sam,
        checkpoint=job.checkpoint,
        device=device_for_rank(job.device),
        refine=job.refine,
        benchmark=job.benchmark,
        protocol=job.protocol,
        **job.overrides,
    )


def run_eval(job: EvalJob, progress: bool = True) -> dict[str, Any] | None:
    """Evaluate; returns the results on rank 0 (None on other ranks)."""
    rank, world = dist_info()
    grouped = init_if_launched()  # early, so that a rank that never starts is reported before any work
    if job.method != GROUND_TRUTH:  # the method, protocol and settings are checked before any file is read
        from .methods import get_method_spec
        from .methods.settings import require_checkpoint, resolve_settings

        spec = get_method_spec(job.method)
        resolved = resolve_settings(spec, job.benchmark, job.protocol, job.checkpoint, job.overrides)
        require_checkpoint(spec, resolved.checkpoint)
    elif job.protocol is not None:
        resolve(job.protocol, job.benchmark)
    dataset = _open_dataset(job)
    segmenter = _segmenter(job)
    proto = segmenter.protocol if segmenter is not None else resolve(job.protocol or "sclip", job.benchmark)
    metric = job.metric or proto.metric
    if metric not in METRIC_CONVENTIONS:
        raise InputError(f"unknown metric convention {metric!r}; use one of {', '.join(METRIC_CONVENTIONS)}")
    vocab, names_source = eval_vocabulary(job, proto, dataset.num_classes)
    settings = dataclasses.asdict(segmenter.settings) if segmenter else {}

    count = len(dataset) if job.limit is None else min(job.limit, len(dataset))
    samples = [dataset[i] for i in range(count)]
    identity = {"method": job.method, "benchmark": job.benchmark, "settings": settings, "n": len(samples)}
    identity.update(clip=job.clip, dino=job.dino, sam=job.sam, checkpoint=job.checkpoint, vocab=vocab.to_dict())
    identity.update(refine=job.refine)
    signature = json.dumps(identity, sort_keys=True, default=str)
    out = Path(job.out)
    shard = _Shard(
        out / "partial" / f"rank{rank}-of-{world}.json", dataset.num_classes, dataset.ignore_index, signature
    )
    earlier = _earlier_shards(out, world, signature)  # left by a run with another world size
    skip = {name for state in earlier for name in state["done"]}
    desc = f"{job.benchmark} [{rank}/{world}]"
    mine = [s for s in samples[rank::world] if s.name not in skip]
    with running("eval", flush=shard.save):  # Ctrl-C keeps the images finished so far
        _evaluate_shard(dataset, mine, shard, segmenter, vocab, progress, desc, rank)
    empty = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    if grouped:
        total = _reduce(shard, empty)
        barrier("eval: waiting for every rank's shard")  # no rank leaves before the sum is complete
    elif rank == 0:
        total = _gather(out, world, empty, signature)
    if rank != 0:
        return None
    total = _add_earlier(total, earlier, len(samples), out)
    report = _report(job, total, metric, proto, vocab, segmenter, settings, len(samples), world, names_source)
    return report


def _evaluate_shard(
    dataset, samples, shard: _Shard, segmenter, vocab: Vocabulary, progress: bool, desc: str, rank: int
) -> None:
    from tqdm import tqdm

    done = set(shard.done)
    todo = [s for s in samples if s.name not in done]
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress or not todo, position=rank, file=sys.stderr)
    # dense-CLIP methods batch windows across `image_batch` images (the same labels as one at a time)
    batch = getattr(getattr(segmenter, "settings", None), "image_batch", 1)
    count = 0
    for first in range(0, len(todo), batch):
        group = todo[first : first + batch]
        # ground truth checks each pair as `ovss data check` does (sizes, values, modes)
        gts = [check_sample(dataset, s) if segmenter is None else dataset.load_label(s) for s in group]
        start = time.perf_counter()
        # the whole API path, refinement included
        if segmenter is None:
            preds = [gt.copy() for gt in gts]
        elif len(group) == 1:
            preds = [segmenter.segment(group[0].image, vocab).labels]
        else:
            preds = [r.labels for r in segmenter.segment_many([s.image for s in group], vocab)]
        shard.seconds += time.perf_counter() - start
        for sample, gt, pred in zip(group, gts, preds):
            if pred.shape != gt.shape:
                raise InputError(f"{sample.label}: label is {gt.shape[::-1]} but its image is {pred.shape[::-1]}")
            shard.matrix.update(pred, gt)
            shard.done.append(sample.name)
            count += 1
            if count % FLUSH_EVERY == 0:
                shard.save()
        bar.update(len(group))
    bar.close()
    shard.complete = True
    shard.save()


def _report(
    job: EvalJob,
    total: dict[str, Any],
    metric: str,
    proto,
    vocab: Vocabulary,
    segmenter,
    settings: dict[str, Any],
    images: int,
    world: int,
    names_source: str,
) -> dict[str, Any]:
    results = total["matrix"].results(metric)
    other = next(c for c in METRIC_CONVENTIONS if c != metric)
    models = dict(segmenter.backbone_names) if segmenter else {}
    if segmenter is not None and segmenter.checkpoint is not None:
        models["checkpoint"] = str(segmenter.checkpoint.path)
    report = {
        "benchmark": job.benchmark,
        "root": str(job.root),
        "images": images,
        "method": job.method,
        "tier": segmenter.spec.tier if segmenter else None,
        "metric": metric,
        "mIoU": results["mIoU"],
        "aAcc": results["aAcc"],
        "mAcc": results["mAcc"],
        f"mIoU_{other}": total["matrix"].results(other)["mIoU"],
        "per_class": {
            n: {"IoU": iou, "Acc": acc}
            for n, iou, acc in zip(vocab.names, results["per_class_iou"], results["per_class_acc"])
        },
        "images_per_second": round(images / total["seconds"], 4) if total["seconds"] else None,
        "protocol": proto.to_dict(),
        "settings": settings,
        "provenance": dict(segmenter.provenance) if segmenter else {},
        "refine": segmenter.refine_settings() if segmenter else None,
        "overrides": job.overrides,
        "vocabulary": vocab.to_dict(),
        "class_names_source": names_source,
        "models": models,
        "device": str(segmenter.device) if segmenter else None,
        "world_size": world,
        "ovss_version": __version__,
        "ovss_commit": _git_commit(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(job.out)
    write_json(out / "results.json", report)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(_markdown(report, results, list(vocab.names)))
    report["table"] = format_table(results, list(vocab.names))
    return report


def _earlier_shards(out: Path, world: int, signature: str) -> list[dict[str, Any]]:
    """Shards of earlier runs with another world size (their images are disjoint from every other
    shard's, because each run skips the images already in them)."""
    states = []
    for path in sorted((out / "partial").glob("rank*-of-*.json")):
        if path.name.endswith(f"-of-{world}.json"):
            continue
        state = json.loads(path.read_text())
        if state["key"] != signature:
            raise InputError(f"{out} holds an evaluation with other settings; use another --out")
        states.append({**state, "world": path.name.rsplit("-of-", 1)[1].removesuffix(".json")})
    return states


def _reduce(shard: _Shard, total: ConfusionMatrix) -> dict[str, Any]:
    """Sum this run's matrices over the process group (exact: int64 counts)."""
    counts = np.append(shard.matrix.matrix.ravel(), shard.matrix.num_images).astype(np.int64)
    summed = all_reduce_array(counts, "sum", "eval: summing the confusion matrices")
    seconds = all_reduce_array(np.array([shard.seconds], dtype=np.float64), "max", "eval: gathering timings")
    total.matrix += summed[:-1].reshape(total.matrix.shape)
    total.num_images += int(summed[-1])
    return {"matrix": total, "seconds": float(seconds[0])}


def _add_earlier(total: dict[str, Any], earlier: list[dict[str, Any]], expected: int, out: Path) -> dict[str, Any]:
    matrix, seconds = total["matrix"], total["seconds"]
    by_world: dict[str, float] = {}
    for state in earlier:
        matrix += ConfusionMatrix.from_dict(state["matrix"])
        by_world[state["world"]] = max(by_world.get(state["world"], 0.0), state["seconds"])
    if matrix.num_images != expected:  # each image must be counted exactly once
        raise InputError(
            f"{out / 'partial'} adds up to {matrix.num_images} images instead of {expected}; "
            "delete that folder and run again"
        )
    return {"matrix": matrix, "seconds": seconds + sum(by_world.values())}


def _gather(out: Path, world: int, total: ConfusionMatrix, signature: str) -> dict[str, Any]:
    """Without a process group: wait (bounded) for every rank's finished shard file and sum them into ``total``."""
    paths = [out / "partial" / f"rank{r}-of-{world}.json" for r in range(world)]

    def finished(path: Path) -> dict[str, Any] | None:
        state = json.loads(path.read_text()) if path.exists() else None
        return state if state and state["complete"] and state["key"] == signature else None

    wait_for_ranks(lambda: [p.name for p in paths if finished(p) is None], "eval: waiting for the other ranks' shards")
    seconds = 0.0
    for path in paths:
        state = finished(path)
        total += ConfusionMatrix.from_dict(state["matrix"])  # type: ignore[index]
        seconds = max(seconds, state["seconds"])  # type: ignore[index]
    return {"matrix": total, "seconds": seconds}


def _markdown(report: dict[str, Any], results: dict[str, Any], names: list[str]) -> str:
    p = report["protocol"]
    lines = [
        f"# {report['method']} on {report['benchmark']} ({report['images']} images)",
        "",
        f"mIoU **{report['mIoU']:.2f}** ({report['metric']} convention), aAcc {report['aAcc']:.2f}, "
        f"mAcc {report['mAcc']:.2f}; images/s {report['images_per_second']}",
        "",
        f"protocol `{p['family']}` ({p['source']}); models {report['models']}; device {report['device']}; "
        f"ovss {report['ovss_version']} ({report['ovss_commit'] or 'no git commit'})",
        "",
        "settings: `" + json.dumps(report["settings"], default=str) + "`",
        "",
        "overrides of the protocol: `" + json.dumps(report["overrides"], default=str) + "`",
        "",
        to_markdown(results, names),
    ]
    return "\n".join(lines) + "\n"


def summary_table(rows: dict[str, dict[str, Any]]) -> str:
    """The field's 8-column table: one mIoU per benchmark and their average."""
    cols = [b for b in BENCHMARKS if b in rows]
    values = [rows[b]["mIoU"] for b in cols]
    head = " | ".join(f"{c:>13s}" for c in [*cols, "avg"])
    body = " | ".join(f"{v:13.2f}" for v in [*values, float(np.mean(values)) if values else float("nan")])
    return f"{head}\n{body}"
