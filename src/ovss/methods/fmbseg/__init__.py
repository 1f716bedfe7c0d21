"""FMbSeg (Seifi et al., arXiv 2403.09307): annotation-free segmentation with CLIP, SAM and DINOv2.

A reconstruction: no official code exists, every unknown is a setting (docs/methods.md §3.9, listed
with its setting in docs/fmbseg.md). Stage 1 (pseudo-labels) is in ``pseudo``, stage 2 (the
alignment module and TSupCon) in ``train``; this module is test-time inference:
DINOv2 -> module -> cosine with CLIP text embeddings of any vocabulary -> upsample -> argmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...checkpoints import Checkpoint
from ...checkpoints import load_checkpoint as load_checkpoint_folder
from ...errors import InputError
from ..base import MethodSpec, register_method
from ..dense import DenseMatchingMethod, DenseSettings
from . import protocol as _protocol  # noqa: F401  (registers the fmbseg family)
from .cli import PSEUDO_LABEL, TRAIN
from .module import load_checkpoint

LEGACY_FILE = "checkpoint.safetensors"  # what `ovss train --method fmbseg` writes into its run folder


@dataclass(frozen=True)
class FMbSegSettings(DenseSettings):
    # U32: short side 448, sides rounded up to the DINOv2 patch, windows 448 / 224
    short_side: int = 448
    size_multiple: int | None = 14
    window: tuple[int, int] | None = (448, 224)
    # softmax over cos / tau with tau = 0.07 (§3.8, option (c)); synonyms: max after softmax (U35)
    logit_scale: float = 1 / 0.07
    templates: str = "openai_imagenet_80"  # U30


class FMbSegMethod(DenseMatchingMethod):
    needs = ("clip", "dino")

    def __init__(self, backbones, settings: FMbSegSettings, device: torch.device, checkpoint: Checkpoint):
        super().__init__(backbones, settings, device)
        self.module, self.info = load_checkpoint(checkpoint.extra.get("file", checkpoint))
        self.module.to(device)
        self.dino, self.text_encoder = backbones["dino"], backbones["clip"]
        self.mean, self.std, self.patch_size = self.dino.mean, self.dino.std, self.dino.patch_size
        if self.module.config.in_dim != self.dino.dim:
            raise InputError(
                f"the checkpoint expects {self.module.config.in_dim}-d DINO features but {self.dino.name} gives "
                f"{self.dino.dim}; use the DINO model it was trained with ({self.info.get('dino')})"
            )

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module.forward_grid(self.dino.patch_features(pixels).to(self.device))


def read_checkpoint(where: str) -> Checkpoint:
    """A run folder of ``ovss train --method fmbseg`` or its checkpoint file (the module's own format)."""
    path = Path(where)
    file = path / LEGACY_FILE if path.is_dir() and (path / LEGACY_FILE).is_file() else path
    if path.is_dir() and (path / "config.json").is_file():
        return load_checkpoint_folder(path, method="fmbseg")
    _, info = load_checkpoint(file)
    backbones = {"dino": info.get("dino", "tiny-random"), "clip": info.get("clip", "tiny-random")}
    return Checkpoint(file, "fmbseg", {}, backbones, {"file": str(file)}, {})


SPEC = register_method(
    MethodSpec(
        "fmbseg",
        "FMbSeg: DINOv2 + alignment module trained with TSupCon on CLIP/SAM pseudo-labels (reconstruction)",
        FMbSegMethod,
        FMbSegSettings(),
        ("clip", "dino"),
        "Seifi et al., arXiv 2403.09307",
        family="fmbseg",
        tier="B",
        checkpoint="required",
        commands={"train": TRAIN, "pseudo-label": PSEUDO_LABEL},
        read_checkpoint=read_checkpoint,
    )
)
