"""CVAT "Segmentation mask 1.1" (https://docs.cvat.ai/docs/dataset_management/formats/format-smask),
a zip with ``labelmap.txt`` (``name:r,g,b::`` per label), ``ImageSets/Segmentation/default.txt``
(image names without suffix), ``SegmentationClass/NAME.png`` (each pixel in its label's colour)
and ``SegmentationObject/NAME.png`` (each instance in the VOC colour of its 1-based index, black
elsewhere). Colours are the PASCAL VOC palette; black is "background"."""

from __future__ import annotations

import io
import zipfile
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..errors import InputError
from ..result import palette
from .base import Exporter, ExportItem, class_colours


def _png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


class CvatExporter(Exporter):
    name: ClassVar[str] = "cvat"
    description: ClassVar[str] = "CVAT Segmentation mask 1.1 zip (cvat/segmentation_mask.zip)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.colours, self.extra_background = class_colours(self.class_names)
        clash = next((n for n in self.class_names if ":" in n), None)
        if clash is not None:
            raise InputError(f"class name {clash!r} holds ':', which CVAT's labelmap.txt cannot; rename the class")
        self.stems: list[str] = []
        # built inside export_dataset's hidden folder, so the zip appears only when complete
        self.zip = zipfile.ZipFile(self.folder / "segmentation_mask.zip", "w", compression=zipfile.ZIP_DEFLATED)

    def add(self, item: ExportItem) -> None:
        labels = item.result.labels
        known = (labels >= 0) & (labels < len(self.class_names))
        coloured = np.zeros((*labels.shape, 3), dtype=np.uint8)  # unknown values (255) stay black
        coloured[known] = self.colours[labels[known]]
        self.zip.writestr(f"SegmentationClass/{item.stem}.png", _png_bytes(coloured))
        found = item.instances(self.settings)
        objects = np.zeros((*labels.shape, 3), dtype=np.uint8)
        colours = palette(len(found) + 1)
        for k, inst in enumerate(found, 1):
            x, y, w, h = inst.bbox
            objects[y : y + h, x : x + w][inst.crop] = colours[k]
        self.zip.writestr(f"SegmentationObject/{item.stem}.png", _png_bytes(objects))
        self.stems.append(item.stem)

    def finish(self) -> None:
        lines = ["# label:color_rgb:parts:actions"]
        if self.extra_background:
            lines.append("background:0,0,0::")
        lines += [f"{n}:{','.join(str(int(v)) for v in self.colours[k])}::" for k, n in enumerate(self.class_names)]
        self.zip.writestr("labelmap.txt", "\n".join(lines) + "\n")
        self.zip.writestr("ImageSets/Segmentation/default.txt", "".join(f"{s}\n" for s in self.stems))
        self.zip.close()
