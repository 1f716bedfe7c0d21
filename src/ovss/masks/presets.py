"""Settings of the automatic mask generator, and named presets kept as data.

Every field has one home here. ``exact`` is Meta's ``SamAutomaticMaskGenerator`` default set
(for a SAM2 model, Meta's ``SAM2AutomaticMaskGenerator`` defaults, which differ only in
``pred_iou_thresh`` 0.8). Measured costs come from ``bench/amg.py`` (see docs/masks.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..typecheck import check_settings

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
STABILITY_AT = ("full", "low")
UPSAMPLE = ("interpolate", "matrix")
DECODER = ("meta", "fused")


@dataclass(frozen=True)
class AMGSettings:
    """Automatic mask generation. The first block has Meta's names, defaults and meanings."""

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float | None = None  # None: 0.88 for SAM, 0.8 for SAM2 (Meta's defaults)
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: tuple[tuple[tuple[float, float], ...], ...] | None = None  # explicit [0,1] grids per layer
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"
    multimask_output: bool = True  # False: one mask per point (SAM's token 0), level None
    # TUSS level-aware generation (docs/methods.md §1.2): per multimask level (0 sub-part, 1 part, 2 whole).
    level_iou_offsets: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to the IoU before thresholding
    level_stability_offsets: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to the stability score
    level_nms_offsets: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to the NMS ranking score
    containment_thresh: float | None = None  # TUSS "rock-sand-water" filter, None = off
    # Speed.
    input_size: int | None = None  # long side fed to the encoder; None = the model's (1024)
    stability_at: str = "full"  # "low": stability on the 256x256 logits, before upsampling (not exact)
    precision: str = "fp32"  # "bf16": autocast for encoder and decoder
    # "interpolate": Meta's F.interpolate steps, pixel-exact; "matrix": one precomputed product (decoder.py)
    upsample: str = "interpolate"
    # Prompts whose per-image-token decoder work runs together inside a batch (cache-sized; same results).
    decoder_micro_batch: int = 2
    # "meta": SAM's encoder and decoder in Meta's operation order, pixel-exact against segment_anything;
    # "fused": the re-associated decoder and transformers' encoder (decoder.py), faster, a few pixels
    # next to the threshold may differ (docs/masks.md). SAM2 models always use transformers' decoder.
    decoder: str = "meta"

    def __post_init__(self) -> None:
        if self.points_per_side is None and self.point_grids is None:
            raise InputError("give points_per_side or point_grids")
        if self.points_per_side is not None and self.point_grids is not None:
            raise InputError("give points_per_side or point_grids, not both")
        if self.points_per_side is not None and self.points_per_side < 1:
            raise InputError(f"points_per_side must be >= 1 (a grid of {self.points_per_side} points is empty)")
        if self.point_grids is not None and len(self.point_grids) < self.crop_n_layers + 1:
            raise InputError(f"point_grids has {len(self.point_grids)} grids; crop_n_layers + 1 are needed")
        if self.points_per_batch < 1:
            raise InputError(f"points_per_batch must be >= 1, got {self.points_per_batch}")
        if self.crop_n_layers < 0:
            raise InputError(f"crop_n_layers must be >= 0, got {self.crop_n_layers}")
        if self.crop_n_points_downscale_factor < 1:
            raise InputError("crop_n_points_downscale_factor must be >= 1")
        if not 0 <= self.crop_overlap_ratio < 1:
            raise InputError(f"crop_overlap_ratio must be in [0, 1), got {self.crop_overlap_ratio}")
        if self.output_mode not in OUTPUT_MODES:
            raise InputError(f"unknown output_mode {self.output_mode!r}; use one of {', '.join(OUTPUT_MODES)}")
        if self.stability_at not in STABILITY_AT:
            raise InputError(f"stability_at must be 'full' or 'low', got {self.stability_at!r}")
        if self.upsample not in UPSAMPLE:
            raise InputError(f"upsample must be 'interpolate' or 'matrix', got {self.upsample!r}")
        if self.decoder not in DECODER:
            raise InputError(f"decoder must be 'meta' or 'fused', got {self.decoder!r}")
        if self.precision not in ("fp32", "bf16"):
            raise InputError(f"precision must be fp32 or bf16, got {self.precision!r}")
        for name in ("level_iou_offsets", "level_stability_offsets", "level_nms_offsets"):
            if len(getattr(self, name)) != 3:
                raise InputError(f"{name} needs 3 values (levels 0, 1, 2)")
        if self.input_size is not None and (self.input_size < 16 or self.input_size % 16):
            raise InputError(f"input_size must be a multiple of 16, got {self.input_size}")
        if self.min_mask_region_area < 0:
            raise InputError("min_mask_region_area must be >= 0")

    def replace(self, **changes: Any) -> AMGSettings:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InputError(
                f"unknown mask-generator setting(s) {', '.join(sorted(unknown))}; known: "
                + ", ".join(f.name for f in dataclasses.fields(self))
            )
        check_settings(AMGSettings, changes, "mask-generator setting")
        if "point_grids" in changes and changes["point_grids"] is not None:
            changes["point_grids"] = tuple(tuple(tuple(map(float, p)) for p in g) for g in changes["point_grids"])
            changes.setdefault("points_per_side", None)
        for name in ("level_iou_offsets", "level_stability_offsets", "level_nms_offsets"):
            if name in changes:
                changes[name] = tuple(float(v) for v in changes[name])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)
    # Seconds per 640x480 image by model architecture (random weights), 2 CPU threads, from
    # bench/amg.py (protocol and the full table: docs/masks.md).
    measured: dict[str, str] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "exact",
            "Meta's SamAutomaticMaskGenerator defaults: 32x32 points, IoU 0.88, stability 0.95, NMS 0.7, no crops",
            {},
            {
                "sam-vit-b": "184 s vs segment_anything 595 s, same masks (1 thread, loaded machine; fused "
                "decoder before: 26.0 s vs 97.8 s at 2 threads)",
                "sam2-hiera-tiny": "75.8 s",
            },
        ),
        Preset(
            "fast-decoder",
            "exact's settings with the fused decoder (decoder.py): faster, a few pixels next to the mask "
            "threshold may differ from Meta's",
            {"decoder": "fused"},
            {"sam-vit-b": "138 s vs segment_anything 595 s (1 thread, loaded machine)"},
        ),
        Preset(
            "fast",
            "16x16 points, stability on the 256x256 logits, bf16 (about 4x fewer decodes than exact)",
            {
                "points_per_side": 16,
                "stability_at": "low",
                "precision": "bf16",
                "upsample": "matrix",
                "decoder": "fused",
            },
            {"sam-vit-b": "7.3 s"},
        ),
        Preset(
            "sparse",
            "CorrCLIP's sparse grid: 8x8 points (CorrCLIP reports -0.6 mIoU vs 32x32), stability on the "
            "256x256 logits, bf16",
            {
                "points_per_side": 8,
                "stability_at": "low",
                "precision": "bf16",
                "upsample": "matrix",
                "decoder": "fused",
            },
            {"sam-vit-b": "4.1 s", "sam2-hiera-tiny": "5.6 s"},
        ),
        Preset(
            "corrclip",
            "CorrCLIP's SAM2 generator: 8x8 points, IoU 0.4, stability 0.4, one mask per point",
            {"points_per_side": 8, "pred_iou_thresh": 0.4, "stability_score_thresh": 0.4, "multimask_output": False},
        ),
        Preset(
            "small-input",
            "16x16 points with a 512-pixel encoder input (4x fewer encoder tokens; SAM1 only; "
            "quality with real weights unmeasured)",
            {
                "points_per_side": 16,
                "input_size": 512,
                "stability_at": "low",
                "precision": "bf16",
                "upsample": "matrix",
                "decoder": "fused",
            },
            {"sam-vit-b": "2.7 s"},
        ),
    )
}


def register_preset(preset: Preset) -> Preset:
    """Add a preset from a method package (TUSS adds its level-aware mode)."""
    if preset.name in PRESETS:
        raise ValueError(f"mask preset {preset.name!r} is registered twice")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"unknown mask preset {name!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def make_settings(preset: str | None = "exact", **overrides: Any) -> AMGSettings:
    """Settings of a preset, with any field overridden."""
    base = AMGSettings()
    if preset is not None:
        base = base.replace(**get_preset(preset).settings)
    return base.replace(**overrides) if overrides else base
