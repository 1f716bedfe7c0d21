"""What every backbone loader shares: hub-or-directory config reading, quiet hub, tiny-random notices."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..errors import ModelLoadError

TINY_RANDOM = "tiny-random"


def warn_tiny_random(kind: str, name: str = TINY_RANDOM) -> None:
    message = (
        f"ovss: {kind}={name} is a small RANDOM model for tests and smoke runs; "
        "its outputs are meaningless. Pass a real model id or directory."
    )
    warnings.warn(message, stacklevel=3)


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """Silence the hub client's retry warnings: a failed load is reported as one ovss error."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_failure(name: str, kind: str, error: BaseException) -> ModelLoadError:
    """One line for any failure of ``from_pretrained`` on a local folder or hub id: a truncated or
    foreign weights file (safetensors raises its own error type), missing or mismatched tensors."""
    detail = (str(error).splitlines() or [type(error).__name__])[0][:160]
    hint = "the weights file is truncated or not safetensors, or the folder holds another model; re-save it"
    return ModelLoadError(f"could not load {kind} weights from {name!r}: {detail} ({hint})")


def load_config(name: str, auto_config, kind: str):
    path = Path(name)
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"{name}: is a file; expected a {kind} model directory, a hub id or 'tiny-random'")
    if path.exists() and not (path / "config.json").exists():
        raise ModelLoadError(
            f"{name}: directory has no config.json; expected a {kind} model saved with save_pretrained"
        )
    try:
        return auto_config.from_pretrained(name)
    except (OSError, ValueError) as e:
        if path.exists():
            raise ModelLoadError(f"{name}: unreadable {kind} config ({str(e).splitlines()[0][:120]})") from None
        raise ModelLoadError(
            f"cannot find {kind} model {name!r}: not a local directory, and not downloadable or in the "
            "Hugging Face cache (offline?); pass a local directory or 'tiny-random'"
        ) from None
