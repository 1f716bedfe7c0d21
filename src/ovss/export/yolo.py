"""Ultralytics YOLO segmentation layout (https://docs.ultralytics.com/datasets/segment/):
``images/NAME.jpg``, ``labels/NAME.txt`` with one line per instance, ``CLASS x1 y1 x2 y2 ...``
(polygon points normalised to 0..1 by the image width and height), and ``data.yaml``."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np

from ..io import atomic_path
from .base import Exporter, ExportItem, instance_polygon


def yaml_string(text: str) -> str:
    """A YAML scalar that reads back as exactly ``text``: a double-quoted JSON string is valid YAML
    (YAML 1.2 is a superset of JSON), so names like ``yes``, ``no: 1`` or ``#tag`` stay strings."""
    return json.dumps(text, ensure_ascii=True)


class YoloSegExporter(Exporter):
    name: ClassVar[str] = "yolo-seg"
    description: ClassVar[str] = "Ultralytics YOLO segmentation: yolo-seg/images, yolo-seg/labels/*.txt, data.yaml"

    def add(self, item: ExportItem) -> None:
        self.place_image(item, self.folder / "images")
        h, w = item.result.size
        lines = []
        for inst in item.instances(self.settings):
            polygon = instance_polygon(inst, self.settings.polygon_tolerance)
            scaled = np.clip(polygon / np.array([w, h], dtype=np.float64), 0.0, 1.0)
            lines.append(" ".join([str(inst.class_id - self.skip), *(f"{v:.6f}" for v in scaled.ravel())]))
        target = self.folder / "labels" / (item.stem + ".txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(line + "\n" for line in lines))  # an image with no objects gets an empty file

    def finish(self) -> None:
        names = "".join(f"  {k}: {yaml_string(n)}\n" for k, n in enumerate(self.instance_classes()))
        text = (
            "# written by ovss label; labels are model predictions, check them before training\n"
            f"path: {yaml_string(str(self.final_folder().resolve()))}\n"
            "train: images\n"
            "val: images\n"
            f"names:\n{names}"
        )
        with atomic_path(self.folder / "data.yaml") as tmp:
            tmp.write_text(text)

    def final_folder(self):
        """Where this folder ends up once swapped in (it is built as ``.building-yolo-seg``)."""
        return self.folder.parent / self.name
