"""Memory: what this process holds, what is free, and one refusal for a request that cannot fit.

A request whose size is known before it runs (class probabilities or PAMR over a full-resolution
image, maps per text query) estimates its bytes first and calls :func:`check_fits`, so that the
user reads one line naming the size and the fix instead of the process being killed for memory
(docs/jobs.md, "Memory"). ``OVSS_MEMORY_LIMIT`` (bytes, or with a K/M/G suffix) replaces what the
system reports as free: a lower ceiling for a shared machine, and how the tests exercise the check.
"""

from __future__ import annotations

import os

import torch

from .errors import InputError

LIMIT_ENV = "OVSS_MEMORY_LIMIT"
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def process_memory_kib(field: str = "VmRSS") -> float:
    """This process's ``VmRSS`` (resident now) or ``VmHWM`` (peak resident) in KiB, from /proc where Linux has
    it; elsewhere the peak from ``getrusage`` (which a child inherits from its parent through fork and exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _parse_bytes(text: str) -> int:
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = value[-1:] if value[-1:] in _SUFFIXES and value[-1:] else ""
    try:
        number = float(value[: len(value) - len(suffix)])
    except ValueError:
        raise InputError(f"{LIMIT_ENV}={text!r} is not a size; use bytes or e.g. 8G") from None
    if number <= 0:
        raise InputError(f"{LIMIT_ENV}={text!r} must be positive")
    return int(number * _SUFFIXES[suffix])


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Bytes a new allocation may take on ``device``: ``OVSS_MEMORY_LIMIT`` if set, else free CUDA memory
    (plus what torch's caching allocator holds unused), else the kernel's MemAvailable; None if unknown."""
    limit = os.environ.get(LIMIT_ENV, "")
    if limit:
        return _parse_bytes(limit)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def human(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 / 10 else f"{nbytes / 2**20:.0f} MiB"


def check_fits(
    parts: dict[str, int],
    what: str,
    fix: str,
    device: torch.device | str = "cpu",
    available: int | None = None,
    option: str | None = None,
) -> None:
    """Raise one InputError when the estimated ``parts`` (name -> bytes) exceed the free memory of ``device``.

    ``what`` names the request ("a 2048x1536 image with 150 text queries"), ``fix`` what to change;
    ``available`` overrides :func:`available_bytes` (tests). Unknown free memory passes.
    """
    need = sum(parts.values())
    free = available_bytes(device) if available is None else available
    if free is None or need <= free:
        return
    detail = ", ".join(f"{name} {human(n)}" for name, n in parts.items() if n)
    where = "" if torch.device(device).type == "cpu" else f" on {device}"
    raise InputError(
        f"{what} needs about {human(need)} ({detail}) but {human(free)} is free{where}; {fix}", option=option
    )
