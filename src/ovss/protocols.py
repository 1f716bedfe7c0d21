"""The benchmark protocol as data: one table per protocol family (docs/reference-protocol.md §4 and §9).

Each family maps a setting to ``{"default": value, <benchmark>: override, ...}``. Every family
names the docs/reference-protocol.md sections its values come from in ``source``; values that come from
elsewhere carry their own entry in ``notes``. ``resolve(family, benchmark)`` turns the table into
method settings, the background mode and the metric convention for one benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import InputError

BENCHMARKS = ("voc21", "pc60", "coco_object", "voc20", "pc59", "coco_stuff171", "cityscapes", "ade20k150")

# Benchmarks whose class 0 is "background" and is predicted (docs/reference-protocol.md §2).
WITH_BACKGROUND = ("voc21", "pc60", "coco_object")

FAMILIES: dict[str, dict[str, Any]] = {
    "sclip": {  # LaVG identical
        "source": "docs/reference-protocol.md §4.2 (SCLIP row), §4.3, §9 families.sclip",
        "names": "sclip",  # the class-name files it queries (ovss/data/names, docs/protocol.md)
        "short_side": {"default": 336, "coco_stuff171": 448, "cityscapes": 560},
        "window": {"default": (224, 112)},
        "logit_scale": {"default": 40.0, "voc21": 65.0, "pc60": 50.0, "coco_object": 50.0},
        "prob_thd": {"default": 0.0, "voc21": 0.1, "pc60": 0.1, "coco_object": 0.1},
        "area_thd": {"default": None, "voc21": 0.1},
        "pamr_iterations": {"default": 0},
        "background": {"default": "none", "voc21": "words", "coco_object": "words", "pc60": ["background"]},
        "templates": {"default": "openai_imagenet_80"},
        "metric": "union",
    },
    "naclip": {  # ResCLIP identical
        "source": "docs/reference-protocol.md §4.2 (NACLIP row), §4.3, §9 families.naclip",
        "names": "naclip",  # the class-name files it queries (ovss/data/names, docs/protocol.md)
        "short_side": {"default": 336, "cityscapes": 560},
        "window": {"default": (224, 112), "voc21": None, "voc20": None},
        "logit_scale": {"default": 40.0},
        "prob_thd": {"default": 0.0, "voc21": 0.1, "pc60": 0.1, "coco_object": 0.1},
        "area_thd": {"default": None},
        "pamr_iterations": {"default": 10},
        "background": {"default": "none", "voc21": "words", "coco_object": "words", "pc60": ["background"]},
        "templates": {"default": "openai_imagenet_80"},
        "metric": "union",
    },
    "clearclip": {
        "source": "docs/reference-protocol.md §4.2 (ClearCLIP row), §4.3, §5.3 (padding), §9 families.clearclip",
        "names": "clearclip",  # the class-name files it queries (ovss/data/names, docs/protocol.md)
        "short_side": {"default": 448},
        "window": {"default": (448, 224), "cityscapes": (224, 224)},
        "pad_to": {"default": "patch"},
        "logit_scale": {"default": 50.0},
        "prob_thd": {"default": 0.0, "voc21": 0.5, "pc60": 0.15, "coco_object": 0.4},
        "area_thd": {"default": None},
        "pamr_iterations": {"default": 0},
        "background": {
            "default": "none",
            "voc21": ["background"],
            "coco_object": ["background"],
            "pc60": ["background"],
        },
        "templates": {"default": "openai_imagenet_80"},
        "metric": "union",
    },
    "sc_clip": {
        "source": "docs/reference-protocol.md §4.2 (SC-CLIP row), §4.3, §9 families.sc_clip",
        "names": "sc_clip",  # the class-name files it queries (ovss/data/names, docs/protocol.md)
        "short_side": {"default": 336, "cityscapes": 560},
        "window": {"default": (224, 112)},
        "logit_scale": {"default": 40.0, "voc21": 50.0, "coco_object": 55.0},
        "prob_thd": {"default": 0.0, "voc21": 0.15, "pc60": 0.15, "coco_object": 0.35},
        "area_thd": {"default": None, "voc21": 0.1},
        "pamr_iterations": {"default": 0},
        "background": {"default": "none", "voc21": "words", "coco_object": "words", "pc60": ["background"]},
        "templates": {"default": "openai_imagenet_80"},
        "metric": "union",
        "notes": {"background": "SCLIP-style background handling, our reading of docs/reference-protocol.md §4.2"},
    },
    "trident": {
        "source": "docs/reference-protocol.md §4.2 (Trident row), §4.3, §9 families.trident",
        "names": "trident",  # the class-name files it queries (ovss/data/names, docs/protocol.md)
        "short_side": {
            "default": 336,
            "voc21": 448,
            "pc60": 576,
            "coco_object": 448,
            "voc20": 336,
            "pc59": 576,
            "coco_stuff171": 448,
            "cityscapes": 688,
            "ade20k150": 576,
        },
        "window": {"default": (336, 224), "voc20": (336, 112)},
        "logit_scale": {"default": 40.0},
        "prob_thd": {"default": 0.0, "voc21": 0.2, "pc60": 0.15, "coco_object": 0.25},
        "area_thd": {"default": None},
        "pamr_iterations": {"default": 0},
        "background": {"default": "none", "voc21": "words", "coco_object": "words", "pc60": ["background"]},
        "templates": {"default": "openai_imagenet_80"},
        "metric": "union",
        "notes": {"background": "SCLIP-style background handling, our reading of docs/reference-protocol.md §4.2"},
    },
    "proxyclip_corrclip": {
        "source": "docs/reference-protocol.md §4.2 (ProxyCLIP / CorrCLIP row), §4.3, §5.3, §9",
        "names": "proxyclip",  # the class-name files it queries (ovss/data/names, docs/protocol.md)
        "short_side": {"default": 336, "cityscapes": 448, "ade20k150": 448},
        "window": {"default": (336, 112), "cityscapes": (224, 112)},
        "pad_to": {"default": 56},
        "logit_scale": {"default": 40.0},
        "prob_thd": {"default": 0.0, "voc21": 0.2, "pc60": 0.15, "coco_object": 0.25},
        "area_thd": {"default": None},
        "pamr_iterations": {"default": 0},
        "background": {"default": "none", "voc21": "words", "coco_object": "words", "pc60": ["background"]},
        "templates": {"default": "openai_imagenet_80"},
        "metric": "union",
    },
}


def register_family(name: str, table: dict[str, Any]) -> None:
    """Add a protocol family from a method package (same shape as the entries of ``FAMILIES``)."""
    if name in FAMILIES:
        raise ValueError(f"protocol family {name!r} is registered twice")
    if "source" not in table or "metric" not in table:
        raise ValueError(f"protocol family {name!r} needs 'source' and 'metric'")
    FAMILIES[name] = table


METRIC_CONVENTIONS = ("union", "present")
# Entries of a family table that are not method settings.
META_KEYS = ("source", "notes", "background", "metric", "names")


@dataclass(frozen=True)
class ResolvedProtocol:
    """Everything a run needs for one (family, benchmark), plus where each value came from."""

    family: str
    benchmark: str
    settings: dict[str, Any]
    background: str | list[str]
    metric: str
    source: str
    notes: dict[str, str] = field(default_factory=dict)
    names: str | None = None  # the family whose class-name files are queried; None: the dataset's own names

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "benchmark": self.benchmark,
            "settings": self.settings,
            "background": self.background,
            "metric": self.metric,
            "source": self.source,
            "notes": self.notes,
            "names": self.names,
        }


def _pick(table: dict[str, Any], benchmark: str) -> Any:
    return table.get(benchmark, table.get("default"))


def resolve(family: str, benchmark: str) -> ResolvedProtocol:
    if family not in FAMILIES:
        raise InputError(f"unknown protocol {family!r}; choose one of: {', '.join(FAMILIES)}")
    if benchmark not in BENCHMARKS and benchmark != "folder":
        raise InputError(f"unknown benchmark {benchmark!r}; choose one of: {', '.join(BENCHMARKS)}, folder")
    spec = FAMILIES[family]
    settings = {}
    for key, table in spec.items():
        if key in META_KEYS:
            continue
        if benchmark in table or "default" in table:  # a key with only other benchmarks' values stays unset
            settings[key] = _pick(table, benchmark)
    background = _pick(spec["background"], benchmark)
    if benchmark not in WITH_BACKGROUND:
        background = "none"
    return ResolvedProtocol(
        family,
        benchmark,
        settings,
        background,
        spec["metric"],
        spec["source"],
        dict(spec.get("notes", {})),
        spec.get("names"),
    )
