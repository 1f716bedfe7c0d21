"""Export formats by name."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError
from .base import Exporter
from .coco import CocoPolygonExporter, CocoRleExporter
from .cvat import CvatExporter
from .labelstudio import LabelStudioExporter
from .png import PngExporter
from .yolo import YoloSegExporter

FORMATS: dict[str, type[Exporter]] = {
    e.name: e
    for e in (PngExporter, CocoPolygonExporter, CocoRleExporter, YoloSegExporter, LabelStudioExporter, CvatExporter)
}


def get_exporter(name: str) -> type[Exporter]:
    if name not in FORMATS:
        raise InputError(f"unknown export format {name!r}; formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """``"coco,png"`` or a list into known format names, in order, without repeats."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = list(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    if not names:
        raise InputError(f"no export format given; formats: {', '.join(FORMATS)}")
    for name in names:
        get_exporter(name)
    return names
