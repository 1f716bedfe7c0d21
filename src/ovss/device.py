"""Device and precision choices shared by every command."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import InputError

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when present, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def precision_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The compute dtype of ``precision`` on ``device`` (fp16 is refused on the CPU)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[check_precision(precision)]
    if device.type == "cpu" and dtype == torch.float16:
        raise InputError("fp16 is not supported on the CPU; use --precision bf16 or fp32")
    return dtype


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for the transformer trunk; fp32 is a no-op."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=precision_dtype(device, precision)):
        yield


def device_for_rank(device: str | None) -> str | None:
    """Under torchrun with GPUs and no device given, each local rank takes its own GPU."""
    import os

    import torch

    if device in (None, "auto") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device
