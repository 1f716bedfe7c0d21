"""Standard dataset exports of segmentation results: ``png`` (semantic label PNGs), ``coco`` and
``coco-rle`` (COCO instances JSON), ``yolo-seg`` (Ultralytics), ``labelstudio`` (brush
pre-annotations) and ``cvat`` (CVAT "Segmentation mask 1.1" zip). See docs/label.md.

Every instance format is built from :meth:`ovss.result.SegResult.instances` (connected components
per class), so all formats agree on what an object is.
"""

from __future__ import annotations

from .base import Exporter, ExportItem, ExportSettings, export_dataset
from .registry import FORMATS, get_exporter, parse_formats

__all__ = ["FORMATS", "ExportItem", "ExportSettings", "Exporter", "export_dataset", "get_exporter", "parse_formats"]
