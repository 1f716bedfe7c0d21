"""COCO instances JSON (https://cocodataset.org/#format-data): one annotation per connected
region per class. ``coco`` stores polygons, ``coco-rle`` exact compressed RLE (pycocotools)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import __version__
from ..result import Instance
from .base import Exporter, ExportItem, instance_polygon, write_compact_json


class CocoPolygonExporter(Exporter):
    name: ClassVar[str] = "coco"
    description: ClassVar[str] = "COCO instances JSON with polygon segmentations (coco/annotations.json, images/)"
    rle: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, item: ExportItem) -> None:
        self.place_image(item, self.folder / "images")
        h, w = item.result.size
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": item.file_name, "width": w, "height": h})
        for inst in item.instances(self.settings):
            annotation: dict[str, Any] = {
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": inst.class_id - self.skip + 1,
                "segmentation": self._segmentation(inst),
                "area": inst.area,
                "bbox": [float(v) for v in inst.bbox],
                "iscrowd": 0,
            }
            if inst.score is not None:
                annotation["score"] = round(inst.score, 6)
            self.annotations.append(annotation)

    def _segmentation(self, inst: Instance) -> Any:
        if self.rle:
            from pycocotools import mask as mask_utils

            encoded = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}
        polygon = instance_polygon(inst, self.settings.polygon_tolerance)
        return [[round(float(v), 2) for v in polygon.ravel()]]

    def finish(self) -> None:
        categories = [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(self.instance_classes())]
        dataset = {
            "info": {"description": f"ovss {self.name} export", "version": __version__},
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": categories,
        }
        write_compact_json(self.folder / "annotations.json", dataset)


class CocoRleExporter(CocoPolygonExporter):
    name: ClassVar[str] = "coco-rle"
    description: ClassVar[str] = "COCO instances JSON with exact RLE segmentations, iscrowd 0 (coco-rle/)"
    rle: ClassVar[bool] = True
