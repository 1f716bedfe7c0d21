"""The long-job pattern shared by pseudo-labelling, mask banks, evaluation, segmentation and training:
plan inputs and outputs (never overwriting an input), shard them by rank under torchrun/accelerate,
tell finished items from unfinished ones, hold one writer per output folder, and say on Ctrl-C
what is kept."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import InputError

T = TypeVar("T")


def dist_info() -> tuple[int, int]:
    """(rank, world size) from ``RANK``/``WORLD_SIZE`` (torchrun, accelerate launch); (0, 1) otherwise."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise InputError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} are not whole numbers; "
            "launch with torchrun or unset them"
        ) from None
    if not 0 <= rank < world:
        raise InputError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world


def my_shard(items: Sequence[T]) -> list[T]:
    rank, world = dist_info()
    return list(items[rank::world])


@dataclass(frozen=True)
class JobKind:
    """What a job writes and what survives an interrupt.

    ``outputs`` are output names relative to ``--out``: ``{stem}`` is replaced by each image's
    output stem (its path relative to the input folder, without suffix); a name without
    ``{stem}`` is written once per job. The planner checks them all before any work starts.
    """

    outputs: tuple[str, ...]
    kept: str  # the sentence printed after Ctrl-C

    def paths(self, out: Path, stem: str | os.PathLike) -> list[Path]:
        return [out / name.format(stem=str(stem)) for name in self.outputs if "{stem}" in name]

    def fixed_paths(self, out: Path) -> list[Path]:
        return [out / name for name in self.outputs if "{stem}" not in name]


JOB_KINDS: dict[str, JobKind] = {}


def register_job_kind(name: str, outputs: Sequence[str], kept: str) -> JobKind:
    """Declare a job kind (idempotent); other packages (``ovss label``) register their own."""
    JOB_KINDS[name] = JobKind(tuple(outputs), kept)
    return JOB_KINDS[name]


def job_kind(name: str) -> JobKind:
    if name not in JOB_KINDS:
        raise InputError(f"unknown job kind {name!r}; known: {', '.join(sorted(JOB_KINDS))}")
    return JOB_KINDS[name]


_IMAGES_KEPT = "finished images are kept, re-run the same command to continue"
register_job_kind("segment", ("{stem}.png", "{stem}_overlay.png", "{stem}.json"), _IMAGES_KEPT)
register_job_kind("masks", ("{stem}.png", "{stem}.json"), _IMAGES_KEPT)
register_job_kind("pseudo-label", ("{stem}.png", "{stem}.json", "vocabulary.json"), _IMAGES_KEPT)
register_job_kind(
    "bank",
    ("bank/{stem}.safetensors", "bank/{stem}.masks.json", "model.safetensors", "config.json", "fit.json"),
    "the finished part of the mask bank is kept, re-run the same command to continue",
)
register_job_kind(
    "eval", (), "the confusion matrix of the images finished so far is saved, re-run the same command to continue"
)
register_job_kind(
    "train", (), "training resumes from its last saved step when the same command is run again (same --out)"
)


def output_stems(paths: Sequence[Path], inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Output stem per image: its path relative to the folder given, or its name; clashes are errors."""
    roots = [Path(i) for i in inputs if Path(i).is_dir()]
    stems = [next((p.relative_to(r) for r in roots if r in p.parents), Path(p.name)).with_suffix("") for p in paths]
    seen: dict[Path, Path] = {}
    for stem, path in zip(stems, paths):
        # "..jpg" gives the stem "." and "...jpg" the stem "..": outputs would land beside or
        # above the output folder.
        if stem.is_absolute() or stem.name in ("", ".", "..") or ".." in stem.parts:
            raise InputError(f"{path}: its name gives no usable output name inside the output folder; rename it")
        if stem in seen:
            raise InputError(f"{seen[stem]} and {path} would write the same outputs ({stem}); rename one")
        seen[stem] = path
    return stems


def check_outputs(paths: Sequence[Path], stems: Sequence[str | os.PathLike], out: Path, kind: str | JobKind) -> None:
    """Refuse, before any work, outputs that would overwrite an input image or that two images
    would both write (``x.jpg``'s ``x_overlay.png`` against ``x_overlay.jpg``'s ``x_overlay.png``)."""
    spec = job_kind(kind) if isinstance(kind, str) else kind
    inputs = {p.resolve(): p for p in paths}
    writers: dict[Path, Path] = {}
    for path in spec.fixed_paths(out):
        writers[path.resolve()] = Path("<the job>")
    for path, stem in zip(paths, stems):
        for target in spec.paths(out, stem):
            key = target.resolve()
            if key in inputs:
                raise InputError(
                    f"--out {out} would overwrite the input {inputs[key]} (with the output of {path}); "
                    "choose an --out outside the input folders"
                )
            if key in writers:
                raise InputError(f"{writers[key]} and {path} would both write {target}; rename one of them")
            writers[key] = path
    for path in spec.fixed_paths(out):
        if path.resolve() in inputs:
            raise InputError(f"--out {out} would overwrite the input {inputs[path.resolve()]}; choose another --out")


def plan_images(
    inputs: Sequence[str | os.PathLike], out: Path, max_pixels: int, kind: str | JobKind = "segment"
) -> tuple[list[Path], list[Path], int]:
    """Images to process, their output stems and how many inputs were unreadable, checked from
    their headers before any model loads. The output folder is left out of input discovery; an
    --out equal to an input folder, or outputs that overwrite an input or clash with each other
    (``kind`` declares them), are refused. Unreadable images are reported (one line each) and
    left out; if none is readable, that is the error."""
    import sys

    from .io import check_image_file, find_images

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another --out")
    for item in inputs:
        if Path(item).is_dir() and Path(item).resolve() == out.resolve():
            raise InputError(f"--out {out} is an input folder; outputs would mix with the images, choose another --out")
    paths = find_images(list(inputs), exclude=out)
    stems = output_stems(paths, inputs)
    check_outputs(paths, stems, out, kind)
    good, failures = [], []
    for path, stem in zip(paths, stems):
        try:
            check_image_file(path, max_pixels)
            good.append((path, stem))
        except InputError as e:
            failures.append(str(e))
    if failures and not good:
        raise InputError(failures[0] if len(failures) == 1 else f"no input is readable; first: {failures[0]}")
    for message in failures:
        print(f"ovss: error: {message} (skipped)", file=sys.stderr)
    return [p for p, _ in good], [s for _, s in good], len(failures)


def finished(marker: Path, job: dict[str, Any], field: str = "job", outputs: Sequence[Path] | None = None) -> bool:
    """True if ``marker`` (a JSON written last, atomically) exists, records the same ``job``, and the
    image's other ``outputs`` are whole (:func:`ovss.io.output_is_complete`). ``outputs=None``
    checks the ``NAME.png`` beside ``NAME.json`` when there is one.

    A marker from another job is an error rather than a silent mix of results; a damaged
    marker or a damaged output means the item is redone.
    """
    from .io import output_is_complete

    if not marker.exists():
        return False
    try:
        previous: Any = json.loads(marker.read_text())
        for key in field.split("."):  # e.g. "info.job" for mask files
            previous = previous.get(key)
    except (OSError, ValueError, AttributeError):
        return False
    if previous != json.loads(json.dumps(job, default=str)):
        raise InputError(f"{marker} was made with other classes or settings; pass --overwrite or choose another --out")
    if outputs is None:
        png = marker.with_suffix(".png")
        outputs = [png] if png.exists() else []
    return all(output_is_complete(Path(p)) for p in outputs if Path(p) != marker)


# --- one writer per output folder -------------------------------------------------------------

LOCK_NAME = ".ovss.lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), telling a reused pid from the lock's owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the command name


def _me(kind: str) -> dict[str, Any]:
    rank, world = dist_info()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": _process_start(os.getpid()),
        "kind": kind,
        "rank": rank,
        "world": world,
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _owner_alive(owner: dict[str, Any]) -> bool:
    """Stale-lock rule: a lock of this machine whose pid is dead or reused is stale; a lock of
    another machine is taken as live (its pid cannot be checked from here)."""
    from .io import pid_alive

    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner.get("pid", -1))
    if pid <= 0 or not pid_alive(pid):
        return False
    start = _process_start(pid)
    return owner.get("start") is None or start is None or start == owner.get("start")


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: treated as dead (locks are written whole, with os.link)
    return owner if isinstance(owner, dict) else {}


def _busy(out: Path, owner: dict[str, Any], path: Path) -> InputError:
    return InputError(
        f"{out} is being written by another ovss {owner.get('kind', 'job')} (pid {owner.get('pid')} on "
        f"{owner.get('host')}, since {owner.get('since')}); wait for it, choose another --out, or delete {path} "
        "if that process is gone"
    )


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, kind: str) -> Iterator[None]:
    """Hold the one-writer lock of ``out`` for the block; a second process gets a one-line InputError.

    Under torchrun each rank holds its own lock (``.ovss.lock.rankR``; ranks write disjoint
    shards), and a lock of a job with another world size (or a single process) is a conflict. A
    lock whose process died (same host, pid dead or reused) is taken over. Re-entrant within one
    process.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    me = _me(kind)
    path = out / (LOCK_NAME if me["world"] == 1 else f"{LOCK_NAME}.rank{me['rank']}")
    for other in out.glob(LOCK_NAME + "*"):
        if other == path or other.name.endswith(".tmp"):
            continue
        owner = _read_lock(other)
        if owner and _owner_alive(owner) and (owner.get("world") != me["world"] or other.name == LOCK_NAME):
            raise _busy(out, owner, other)
    owned = _acquire(path, me, out)
    try:
        yield
    finally:
        if owned and (_read_lock(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


def _acquire(path: Path, me: dict[str, Any], out: Path) -> bool:
    """Create ``path`` holding ``me``; True if this call created it, False if this process already held it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(me) + "\n")
    try:
        for _ in range(3):
            try:
                os.link(tmp, path)  # atomic, fails if the lock exists: nobody reads a half-written lock
                return True
            except FileExistsError:
                owner = _read_lock(path)
                if owner is None:
                    continue  # released meanwhile
                if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                    return False
                if owner and _owner_alive(owner):
                    raise _busy(out, owner, path) from None
                _take_over(path, owner)
        raise InputError(f"could not take the lock {path}; another process keeps replacing it, retry later")
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(path: Path, stale: dict[str, Any]) -> None:
    """Move a stale lock aside under a unique name, then delete it. If what was moved is not the
    stale lock that was read (another process took over first and wrote its own), put it back."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}.tmp")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    moved = _read_lock(aside) or {}
    if moved and moved != stale:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)  # the live lock goes back; the retry then reports it as busy
    aside.unlink(missing_ok=True)


# --- interrupts and threads -------------------------------------------------------------------

_RUNNING: list[str] = []
_INTERRUPTED: list[str] = []  # the job kinds a Ctrl-C ended, for the message the CLI prints


@contextlib.contextmanager
def running(kind: str, flush: Callable[[], None] | None = None) -> Iterator[None]:
    """Mark a ``kind`` job as running; on Ctrl-C call ``flush`` (save what is finished) before the
    interrupt goes on to the CLI, which prints :func:`interrupt_message`."""
    job_kind(kind)
    _RUNNING.append(kind)
    try:
        yield
    except KeyboardInterrupt:
        _INTERRUPTED.append(kind)  # read by interrupt_message after the stack below is unwound
        if flush is not None:
            flush()
        raise
    finally:
        _RUNNING.pop()


def interrupt_message() -> str:
    """What the CLI prints after Ctrl-C: what the job that was running keeps."""
    kinds = list(_RUNNING or _INTERRUPTED)
    _INTERRUPTED.clear()  # said once
    if not kinds:
        return "ovss: interrupted"
    return f"ovss: interrupted; {JOB_KINDS[kinds[-1]].kept}"


def set_threads_per_process() -> int | None:
    """Under torchrun with several local processes and no OMP_NUM_THREADS, give each process
    ``cores // LOCAL_WORLD_SIZE`` torch threads so that they do not oversubscribe the CPU.
    Returns the thread count set, or None when nothing was changed."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if local <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // local)
    torch.set_num_threads(threads)
    return threads


def stream_images(todo: Sequence[tuple[Path, Any]], desc: str, progress: bool = True):
    """Yield ``(path, stem, image)`` for each item with a progress bar; an image that cannot be read
    prints one error line and comes as ``None``, so the job goes on with the others."""
    import sys

    from tqdm import tqdm

    from .io import load_image

    for path, stem in tqdm(todo, desc=desc, unit="img", disable=not progress or len(todo) < 2, file=sys.stderr):
        try:
            image = load_image(path)
        except InputError as e:
            tqdm.write(f"ovss: error: {e}", file=sys.stderr)
            image = None
        yield path, stem, image
