"""Semantic ground truth in the layout ``ovss eval --dataset folder`` reads (and mmseg's custom
datasets): ``images/NAME.jpg``, ``labels/NAME.png`` (palette-indexed class ids, VOC colours,
255 = ignore; 16-bit greyscale beyond 256 classes) and ``classes.txt`` (one name per line, id order)."""

from __future__ import annotations

from typing import ClassVar

from ..io import atomic_path
from ..result import label_image
from .base import Exporter, ExportItem


class PngExporter(Exporter):
    name: ClassVar[str] = "png"
    description: ClassVar[str] = "semantic label PNGs + classes.txt (png/images, png/labels), readable by ovss eval"

    def add(self, item: ExportItem) -> None:
        self.place_image(item, self.folder / "images")
        target = self.folder / "labels" / (item.stem + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        label_image(item.result.labels, len(self.class_names)).save(target)

    def finish(self) -> None:
        with atomic_path(self.folder / "classes.txt") as tmp:
            tmp.write_text("".join(f"{name}\n" for name in self.class_names))
