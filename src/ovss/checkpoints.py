"""Checkpoints are folders: ``config.json`` + ``model.safetensors`` + a short ``README.md`` model card.

Every trained or fitted artefact (an FMbSeg run, a TUSS classifier, a PixelCLIP or S-Seg run)
is written with :func:`save_checkpoint` and read with :func:`load_checkpoint`. Each file is
written atomically and the config last, so a reader never sees a half-written checkpoint.
``--checkpoint`` accepts the folder, a weights file inside it, or a
Hugging Face hub id (fetched with ``huggingface_hub.snapshot_download``), so a run can be
published with the standard hub tools.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .errors import ModelLoadError
from .io import atomic_path

FORMAT = "ovss-checkpoint/1"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"


@dataclass
class Checkpoint:
    """A checkpoint folder's configuration and the path of its weights (loaded on demand)."""

    path: Path
    method: str
    settings: dict[str, Any]
    backbones: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    def tensors(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        if not self.weights.is_file():
            raise ModelLoadError(f"{self.path}: checkpoint has no {WEIGHTS}; re-save it or pass the right folder")
        try:
            loaded = load_file(str(self.weights), device=str(device))
            loaded.pop("_empty", None)
            return loaded
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise ModelLoadError(
                f"{self.weights}: unreadable weights ({str(e).splitlines()[0][:100]}); the file is truncated or not "
                "safetensors"
            ) from None


def save_checkpoint(
    out: str | os.PathLike,
    method: str,
    tensors: Mapping[str, torch.Tensor],
    settings: Mapping[str, Any],
    backbones: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
    card: str | None = None,
) -> Path:
    """Write (or update) a checkpoint in folder ``out``; other files there (resume state, logs) stay.

    Each file is written to a temporary name and renamed; ``config.json`` goes last, so a folder
    with a config always has the weights that belong to it.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if not contiguous:  # safetensors needs a tensor; a checkpoint may have none of its own
        contiguous = {"_empty": torch.zeros(0)}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(contiguous, str(tmp))
    config = {
        "format": FORMAT,
        "method": method,
        "settings": _jsonable(dict(settings)),
        "backbones": dict(backbones),
        "extra": _jsonable(dict(extra or {})),
        "ovss_version": __version__,
    }
    with atomic_path(out / CARD) as tmp:
        tmp.write_text(card or default_card(method, backbones, settings))
    with atomic_path(out / CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2, default=str) + "\n")
    return out


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``out`` (for artefacts written whole, e.g. a converted
    model): ``out`` is renamed aside first, so a crash leaves either the old or the new folder."""
    import shutil

    old = out.with_name(out.name + ".old")
    if out.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def default_card(method: str, backbones: Mapping[str, str], settings: Mapping[str, Any]) -> str:
    models = "\n".join(f"- {k}: `{v}`" for k, v in backbones.items()) or "- none"
    return (
        f"# ovss {method} checkpoint\n\n"
        f"Trained with ovss {__version__}. Use it with:\n\n"
        f"```python\nimport ovss\nseg = ovss.Segmenter({method!r}, checkpoint='PATH_OR_HUB_ID')\n"
        f"seg.segment('photo.jpg', 'cat; sofa, couch')\n```\n\n"
        f"Backbones:\n{models}\n\nAll settings are in `config.json`.\n"
    )


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """The checkpoint folder for a folder, a weights file inside one, or a hub id."""
    path = Path(spec)
    if path.is_file():
        if (path.parent / CONFIG).is_file():
            return path.parent
        raise ModelLoadError(f"{path}: a file outside a checkpoint folder; pass the folder that holds {CONFIG}")
    if path.is_dir():
        if (path / CONFIG).is_file():
            return path
        raise ModelLoadError(f"{path}: not a checkpoint folder (no {CONFIG}); pass the folder a training run wrote")
    if _looks_like_hub_id(str(spec)):
        return _download(str(spec))
    raise ModelLoadError(f"{spec}: checkpoint not found; pass a checkpoint folder, a file inside one, or a hub id")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    from .models.loading import quiet_hub

    try:
        with quiet_hub():
            return Path(snapshot_download(repo_id))
    except Exception:
        raise ModelLoadError(
            f"checkpoint {repo_id!r} is not a local folder and could not be fetched from the Hugging Face hub "
            "(offline, private or misspelt?); download it and pass the folder"
        ) from None


def load_checkpoint(spec: str | os.PathLike, method: str | None = None) -> Checkpoint:
    """Read a checkpoint folder's config; ``method`` checks it belongs to that method."""
    path = resolve_checkpoint(spec)
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path / CONFIG}: unreadable checkpoint config ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelLoadError(
            f"{path}: not an ovss checkpoint (its {CONFIG} has no format {FORMAT!r}); pass a folder written by ovss"
        )
    found = str(config.get("method"))
    if method is not None and found != method:
        raise ModelLoadError(f"{path}: a {found} checkpoint, not a {method} one; use --method {found}")
    return Checkpoint(
        path,
        found,
        dict(config.get("settings", {})),
        {k: str(v) for k, v in config.get("backbones", {}).items()},
        dict(config.get("extra", {})),
        config,
    )


def _jsonable(value: Any) -> Any:
    """Tuples become lists (JSON); settings read back are turned into tuples by the settings dataclasses."""
    return json.loads(json.dumps(value, default=str))
