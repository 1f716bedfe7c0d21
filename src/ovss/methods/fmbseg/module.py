"""FMbSeg's alignment module: frozen DINOv2 patch tokens -> one transformer block -> projection
into the CLIP text space (docs/methods.md §3.6; U21, U22). MLP and linear variants for the ablation.

A training run's folder is an ``ovss.checkpoints`` checkpoint folder: the module config, the
templates and training vocabulary are in its ``extra``, the backbones and training settings in
their own fields, so the folder alone rebuilds the segmenter. Single-file checkpoints of older
ovss still load.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ModelLoadError

MODULE_KINDS = ("block", "mlp", "linear")
METHOD = "fmbseg"
METADATA_KEY = "ovss_fmbseg"  # the single-file format of older ovss: configuration in the safetensors metadata
LEGACY_FILE = "checkpoint.safetensors"  # where older ovss wrote it, inside the run folder
STAGING = ".checkpoint.new"  # the new checkpoint is written here, inside the run, then moved in


@dataclass(frozen=True)
class ModuleConfig:
    kind: str = "block"  # block | mlp | linear (the paper's ablation)
    in_dim: int = 1024  # DINOv2 ViT-L/14 width
    out_dim: int = 768  # CLIP ViT-L/14 text-embedding width
    heads: int = 16
    mlp_ratio: float = 4.0

    @classmethod
    def for_dims(cls, in_dim: int, out_dim: int, kind: str = "block", heads: int = 16) -> ModuleConfig:
        """Use ``heads`` if it divides the width, else the largest divisor below it (small test models)."""
        while in_dim % heads:
            heads -= 1
        return cls(kind, in_dim, out_dim, heads)


class AlignmentModule(nn.Module):
    def __init__(self, config: ModuleConfig) -> None:
        super().__init__()
        if config.kind not in MODULE_KINDS:
            raise ValueError(f"unknown module kind {config.kind!r}; choose one of {', '.join(MODULE_KINDS)}")
        self.config = config
        hidden = int(config.in_dim * config.mlp_ratio)
        if config.kind == "block":  # pre-norm, GELU, no extra positional embedding (U21)
            self.body: nn.Module = nn.TransformerEncoderLayer(
                config.in_dim, config.heads, hidden, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
        elif config.kind == "mlp":  # the block's feed-forward half alone, per patch
            self.body = _ResidualMLP(config.in_dim, hidden)
        else:
            self.body = nn.Identity()
        self.proj = nn.Sequential(nn.LayerNorm(config.in_dim), nn.Linear(config.in_dim, config.out_dim))  # U22

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T, in_dim)`` patch tokens -> ``(B, T, out_dim)`` L2-normalised embeddings."""
        return nn.functional.normalize(self.proj(self.body(tokens)), dim=-1)

    def forward_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` feature grid -> ``(B, D, h, w)`` embeddings."""
        b, _, h, w = grid.shape
        out = self(grid.flatten(2).transpose(1, 2))
        return out.transpose(1, 2).reshape(b, -1, h, w)


class _ResidualMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def save_checkpoint(
    run: str | os.PathLike,
    module: AlignmentModule,
    settings: dict[str, Any],
    backbones: dict[str, str],
    extra: dict[str, Any],
) -> Path:
    """Make the folder ``run`` an ``ovss.checkpoints`` checkpoint (config.json + model.safetensors +
    README.md) without touching what else it holds (a training run's ``state/`` and loss log).

    The checkpoint is written whole beside the files with :func:`ovss.checkpoints.save_checkpoint`,
    then its files are moved in one rename each, config.json last: a reader sees the old
    checkpoint or the new weights."""
    from ...checkpoints import CARD, CONFIG, WEIGHTS
    from ...checkpoints import save_checkpoint as save_folder

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    staging = run / STAGING
    for leftover in (staging, *run.glob(f".{STAGING}.*.part")):  # a killed save's (the run's lock is held)
        shutil.rmtree(leftover, ignore_errors=True)
    save_folder(staging, METHOD, module.state_dict(), settings, backbones, {"module": asdict(module.config), **extra})
    for name in (WEIGHTS, CARD, CONFIG):
        os.replace(staging / name, run / name)
    shutil.rmtree(staging, ignore_errors=True)
    return run


def load_checkpoint(spec: str | os.PathLike | Any) -> tuple[AlignmentModule, dict[str, Any]]:
    """Rebuild a module from a run folder, its ``model.safetensors``, an ``ovss.checkpoints.Checkpoint``
    or (runs of older ovss) a single ``checkpoint.safetensors`` with its configuration in the
    metadata. Only safetensors is read (never pickles). ``info`` holds the backbones (``dino``,
    ``clip``), ``templates``, ``vocabulary`` and the training settings (``train``)."""
    from ...checkpoints import CONFIG, Checkpoint
    from ...checkpoints import load_checkpoint as load_folder

    if isinstance(spec, Checkpoint):
        return _from_folder(spec)
    path = Path(spec)
    if path.is_file() and not (path.parent / CONFIG).is_file():
        return _load_single_file(path)
    if path.is_dir() and not (path / CONFIG).is_file() and (path / LEGACY_FILE).is_file():
        return _load_single_file(path / LEGACY_FILE)
    if not path.exists() and not path.with_name(path.name + ".old").exists() and path.suffix == ".safetensors":
        raise ModelLoadError(f"{path}: checkpoint not found; train one with `ovss train --method fmbseg`")
    return _from_folder(load_folder(path, method=METHOD))


def _from_folder(checkpoint: Any) -> tuple[AlignmentModule, dict[str, Any]]:
    extra = dict(checkpoint.extra)
    if "module" not in extra:
        raise ModelLoadError(f"{checkpoint.path}: an fmbseg checkpoint without its module config; re-train it")
    module = AlignmentModule(ModuleConfig(**extra.pop("module")))
    backbones = checkpoint.backbones
    info = {**extra, "dino": backbones.get("dino"), "clip": backbones.get("clip"), "train": dict(checkpoint.settings)}
    return _fill(module, checkpoint.tensors(), checkpoint.path), info


def _fill(module: AlignmentModule, state: dict[str, torch.Tensor], path: Path) -> AlignmentModule:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: weights do not fit the module ({str(e).splitlines()[0][:100]})") from None
    return module.eval()


def _load_single_file(path: Path) -> tuple[AlignmentModule, dict[str, Any]]:
    """The format of older ovss: one safetensors file, the configuration in its metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a safetensors checkpoint ({str(e).splitlines()[0][:80]})") from None
    if METADATA_KEY not in meta:
        raise ModelLoadError(f"{path}: not an FMbSeg checkpoint (no {METADATA_KEY} metadata); wrong file?")
    info = json.loads(meta[METADATA_KEY])
    module = AlignmentModule(ModuleConfig(**info.pop("module")))
    return _fill(module, state, path), info
