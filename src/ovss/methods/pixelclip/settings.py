"""PixelCLIP settings as data: training (defaults = the official ViT-B/16 config) and inference.

Sources: cvlab-kaist/PixelCLIP ``configs/pixelclip_vit_base.yaml``, ``pixelclip/config.py``,
``pixelclip/pixelclip.py`` and the SA-1B dataset mapper; docs/pixelclip.md has the table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ...errors import InputError
from ..dense import DenseSettings

MASK_SOURCES = ("files", "dino")
FINETUNE = ("attention", "full", "none")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainSettings:
    # data and augmentation (SA-1B mapper + yaml INPUT)
    short_side: int = 1024  # MIN_SIZE_TRAIN: resize the short side to this
    max_size: int = 1333  # detectron2 MAX_SIZE_TRAIN default
    crop: int = 640  # CROP.SIZE, absolute
    color_aug_ssd: bool = True  # COLOR_AUG_SSD
    flip: bool = True  # detectron2 RandomFlip (p = 0.5)
    strong_aug: bool = True  # STRONG_AUG: the student sees the strong view
    cutout: bool = True  # the strong view's black box (10-50% of each side), removed from file masks
    # model
    clip_resolution: int = 320  # CLIP_RESOLUTION: both views resized to this (ViT-B/16)
    mask_resolution: int = 256  # MASK_RESOLUTION: Sinkhorn pooling and loss resolution
    num_prompts: int = 64  # NUM_CLASSES: k clusters
    prompt_length: int = 4  # PROMPT_LENGTH
    prompt_seed: int = 0  # torch.manual_seed(0) before drawing the prompt words
    clip_finetune: str = "attention"  # CLIP_FINETUNE: attention | full | none
    head_channels: tuple[int, int, int] = (64, 64, 32)  # ConvHead mid channels
    eps: float = 100.0  # MODEL.EPS: logits = eps * cos (ViT default)
    sinkhorn_iterations: int = 3  # distributed_sinkhorn n_iters
    equipartition: bool = True  # False = plain argmax of the softmax (ablation)
    momentum: float = 0.999  # EMA teacher momentum (updated before its forward)
    use_teacher: bool = True  # False = the student's own features (detached) cluster the masks (ablation)
    # DINO masks (MODEL.DINO): k-means on the standard view
    dino_clusters: int = 16
    dino_iterations: int = 100  # fast_pytorch_kmeans defaults: 100 iterations, tol 1e-4, random init
    dino_tol: float = 1e-4
    # optimisation (yaml SOLVER)
    batch_size: int = 48  # IMS_PER_BATCH, the global (effective) batch
    micro_batch: int = 12  # images per forward per process (12 per GPU x 4 GPUs officially)
    max_steps: int = 10000  # MAX_ITER
    lr: float = 2e-4  # BASE_LR
    lr_end: float = 1e-4  # BASE_LR_END (cosine end value, scaled by each group's multiplier)
    weight_decay: float = 1e-4  # WEIGHT_DECAY; 0 on norm layers (detectron2 WEIGHT_DECAY_NORM)
    clip_multiplier: float = 0.01  # CLIP_MULTIPLIER
    prompt_multiplier: float = 10.0  # PROMPT_MULTIPLIER
    grad_clip: float = 0.01  # CLIP_GRADIENTS full_model, L2 norm
    precision: str = "fp32"  # fp32 | bf16 autocast (AMP off officially)
    seed: int = 0
    checkpoint_every: int = 1000  # a checkpoint folder every N steps (TEST.EVAL_PERIOD)
    state_every: int = 50  # resume state every N steps
    log_every: int = 1

    def validate(self) -> None:
        positive = (
            "short_side",
            "max_size",
            "crop",
            "clip_resolution",
            "mask_resolution",
            "num_prompts",
            "prompt_length",
            "dino_clusters",
            "dino_iterations",
            "batch_size",
            "micro_batch",
            "max_steps",
            "checkpoint_every",
            "state_every",
            "log_every",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"setting {name} must be a positive whole number, got {value!r}")
        for name in (
            "lr",
            "lr_end",
            "weight_decay",
            "clip_multiplier",
            "prompt_multiplier",
            "grad_clip",
            "eps",
            "dino_tol",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise InputError(f"setting {name} must be a number >= 0, got {value!r}")
        if not 0.0 <= self.momentum <= 1.0:
            raise InputError(f"setting momentum must be between 0 and 1, got {self.momentum!r}")
        if not isinstance(self.sinkhorn_iterations, int) or self.sinkhorn_iterations < 0:
            raise InputError(f"setting sinkhorn_iterations must be >= 0, got {self.sinkhorn_iterations!r}")
        if self.clip_finetune not in FINETUNE:
            raise InputError(f"setting clip_finetune must be one of {', '.join(FINETUNE)}, got {self.clip_finetune!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"setting precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if len(self.head_channels) != 3 or any(c < 16 or c % 16 for c in self.head_channels):
            raise InputError(f"setting head_channels must be 3 multiples of 16, got {self.head_channels!r}")
        if self.batch_size % self.micro_batch:
            raise InputError(
                f"setting batch_size {self.batch_size} must be a multiple of micro_batch {self.micro_batch}"
            )


def train_settings(overrides: dict[str, Any] | None = None, base: TrainSettings | None = None) -> TrainSettings:
    base = base or TrainSettings()
    known = {f.name: f for f in dataclasses.fields(TrainSettings)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise InputError(f"pixelclip training has no setting {unknown[0]!r}; its settings are: {', '.join(known)}")
    for key, value in overrides.items():
        default = getattr(base, key)
        if isinstance(default, tuple) and isinstance(value, list):
            overrides[key] = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            overrides[key] = float(value)
        elif type(default) is not type(overrides[key]):
            raise InputError(f"setting {key} must be a {type(default).__name__}, got {value!r}")
    settings = dataclasses.replace(base, **overrides)
    settings.validate()
    return settings


PIPELINES = ("official", "dense")


@dataclass(frozen=True)
class PixelCLIPSettings(DenseSettings):
    """Inference. ``pipeline="official"``: shortest edge 640 (max 2560), squash to 320x320, dense
    features bilinear to 64x64, cosine with the 8 imagenet_select templates (synonyms averaged per
    template), bilinear to the image, argmax; no background. ``pipeline="dense"``: the fine-tuned
    tower through ovss's sliding-window dense pipeline (keep-ratio resize, windows, background)."""

    pipeline: str = "official"
    test_short_side: int = 640  # MIN_SIZE_TEST
    test_max_size: int = 2560  # MAX_SIZE_TEST
    clip_resolution: int = 320  # squash size (ViT-B/16)
    feature_size: int = 64  # dense features are upsampled to this before the cosine
    # the dense pipeline's defaults (used only with pipeline="dense")
    short_side: int = 448
    window: tuple[int, int] | None = (448, 224)
    logit_scale: float = 40.0
    templates: str = "imagenet_select_8"

    def validate(self) -> None:
        super().validate()
        if self.pipeline not in PIPELINES:
            raise InputError(f"setting pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}")
        for name in ("test_short_side", "test_max_size", "clip_resolution", "feature_size"):
            if getattr(self, name) < 1:
                raise InputError(f"setting {name} must be positive")
