"""Process-group helpers for runs launched by ``torchrun`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``).

When a group exists, jobs use its collectives (a barrier, a sum of confusion matrices); without
one they fall back to the per-rank files in their output folder, which also serve for resuming.
Every collective is bounded by ``OVSS_DIST_TIMEOUT`` seconds, so a rank that dies leaves the
others with a one-line error instead of a hang.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import time
from collections.abc import Callable

import numpy as np

from .errors import OvssError

TIMEOUT_ENV = "OVSS_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0  # seconds; a slow rank on a big shard can lag the others by minutes
GATHER_TIMEOUT_ENV = "OVSS_GATHER_TIMEOUT"  # the file-based wait, without a process group
DEFAULT_GATHER_TIMEOUT = 24 * 3600.0


class DistributedError(OvssError):
    """Another rank did not answer in time or the process group broke (a rank died)."""


def dist_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise OvssError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds; set e.g. {TIMEOUT_ENV}=600") from None
    if value <= 0:
        raise OvssError(f"{TIMEOUT_ENV}={raw!r} must be positive; set e.g. {TIMEOUT_ENV}=600")
    return value


def is_distributed() -> bool:
    """True when a torch.distributed process group with more than one rank is initialised."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_if_launched(backend: str = "gloo") -> bool:
    """Join the launcher's process group when ``WORLD_SIZE`` > 1 and ``MASTER_ADDR`` is set, with
    every collective bounded by ``OVSS_DIST_TIMEOUT``; returns whether a group exists afterwards.
    Jobs that only reduce CPU arrays keep gloo (it works on every device); training on CUDA passes
    ``backend_for(device)`` (nccl), which DistributedDataParallel needs for CUDA tensors."""
    import torch.distributed as dist

    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or not os.environ.get("MASTER_ADDR"):
        return False
    timeout = dist_timeout()
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    except Exception as e:  # the store and rendezvous raise several kinds
        raise DistributedError(_broken("joining the process group", timeout, e)) from None
    return True


def backend_for(device: object) -> str:
    """nccl for a CUDA device, gloo otherwise."""
    return "nccl" if getattr(device, "type", str(device)) == "cuda" else "gloo"


def _broken(what: str, timeout: float, error: BaseException) -> str:
    # gloo prefixes its source location ("[.../pair.cc:553] Connection closed by peer ..."): keep the words
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip())
    detail = text.splitlines()[0][:160] if text else type(error).__name__
    return (
        f"{what} failed: another rank died or did not answer within {timeout:.0f} s ({detail}); "
        f"re-run the same command to resume (raise {TIMEOUT_ENV} if a rank is just slow)"
    )


def barrier(what: str = "barrier") -> None:
    """Wait for every rank, at most ``OVSS_DIST_TIMEOUT`` seconds; a no-op without a group."""
    if not is_distributed():
        return
    import torch.distributed as dist

    timeout = dist_timeout()
    try:
        # monitored_barrier raises on the waiting rank when a peer is missing, with a timeout of its
        # own; the plain barrier of gloo would otherwise wait for the group's timeout only
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout), wait_all_ranks=True)
    except Exception as e:
        raise DistributedError(_broken(what, timeout, e)) from None


def all_reduce_array(array: np.ndarray, op: str = "sum", what: str = "all_reduce") -> np.ndarray:
    """The sum (or max) of ``array`` over all ranks, as a new array of the same dtype; a copy
    without a group. int64/float64 travel exactly (no float32 rounding of large counts)."""
    array = np.asarray(array)
    if not is_distributed():
        return array.copy()
    import torch
    import torch.distributed as dist

    tensor = torch.from_numpy(np.ascontiguousarray(array).copy())
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    timeout = dist_timeout()
    try:
        work = dist.all_reduce(tensor, op=reduce_op, async_op=True)
        work.wait(timeout=datetime.timedelta(seconds=timeout))
    except Exception as e:
        raise DistributedError(_broken(what, timeout, e)) from None
    return tensor.numpy()


def wait_for_ranks(missing: Callable[[], list[str]], what: str, poll: float = 1.0) -> None:
    """Wait until every rank has written its share: ``missing()`` lists what is not on disk yet.

    With a process group all ranks meet at a bounded barrier (so call it on every rank); without
    one (ranks started by hand, or a rank resumed alone) rank 0 polls the files for at most
    ``OVSS_GATHER_TIMEOUT`` seconds. Either way a dead rank gives a one-line error, not a hang."""
    if is_distributed():
        barrier(what)
        left = missing()
        if left:  # every rank arrived, yet its outputs are not there: a different --out or a full disk
            raise DistributedError(f"{what}: {len(left)} item(s) were not written by any rank (first: {left[0]})")
        return
    raw = os.environ.get(GATHER_TIMEOUT_ENV, "")
    try:
        timeout = float(raw) if raw else DEFAULT_GATHER_TIMEOUT
    except ValueError:
        raise OvssError(f"{GATHER_TIMEOUT_ENV}={raw!r} is not a number of seconds; set e.g. 3600") from None
    start = last_note = time.monotonic()
    while left := missing():
        now = time.monotonic()
        if now - start > timeout:
            raise DistributedError(
                f"{what}: {len(left)} item(s) (first: {left[0]}) were not written within {timeout:.0f} s; "
                "re-run the same command to resume"
            )
        if now - last_note > 60:
            print(f"ovss: {what}: {len(left)} item(s) to go from other ranks (first: {left[0]})", file=sys.stderr)
            last_note = now
        time.sleep(poll)


def shutdown() -> None:
    """Leave the process group (ovss created it for this command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
