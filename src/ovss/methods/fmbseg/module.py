"""FMbSeg's alignment module: frozen DINOv2 patch tokens -> one transformer block -> projection
into the CLIP text space (METHODS.md §3.6; U21, U22). MLP and linear variants for the ablation.

Checkpoints are one safetensors file whose metadata holds the full configuration (module,
backbones, templates, training vocabulary and settings), so a checkpoint alone rebuilds the
segmenter.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ModelLoadError
from ...io import atomic_path

MODULE_KINDS = ("block", "mlp", "linear")
METADATA_KEY = "ovss_fmbseg"


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


def save_checkpoint(path: str | os.PathLike, module: AlignmentModule, info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {METADATA_KEY: json.dumps({"module": asdict(module.config), **info}, default=str)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_checkpoint(path: str | os.PathLike) -> tuple[AlignmentModule, dict[str, Any]]:
    """Rebuild a module from a checkpoint; only safetensors is read (never pickles)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: checkpoint not found; train one with `ovss train --method fmbseg`")
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
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: weights do not fit the module ({str(e).splitlines()[0][:100]})") from None
    return module.eval(), info
