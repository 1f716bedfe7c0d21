"""How closely the polygon formats (coco, yolo-seg) keep the regions, and what each format costs.

Protocol: the 14 PASCAL VOC val ground-truth label maps of ``shared/evaldata/vainf_voc_samples``
(513x513, 255 = void) treated as predictions. Every 8-connected region of a non-background class
with at least ``--min-area`` pixels is exported; each polygon is rasterised back with pycocotools
(coco) and compared with its region. Reported per tolerance: the area-weighted IoU, the lowest
IoU among regions of 1000+ pixels, the mean number of points per polygon, and the seconds per
image of each format's export (all formats from the same instances).

    python bench/label_formats.py
    python bench/label_formats.py --evaldata ../shared/evaldata --tolerances 0 1 2 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ovss.data.classes import CLASS_NAMES
from ovss.export import FORMATS, ExportItem, export_dataset
from ovss.result import SegResult


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from shared_paths import EVALDATA

    parser.add_argument("--evaldata", default=str(EVALDATA))
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    parser.add_argument("--min-area", type=int, default=16)
    args = parser.parse_args()
    from pycocotools.coco import COCO

    root = Path(args.evaldata) / "vainf_voc_samples"
    names = list(CLASS_NAMES["voc21"])
    label_files = sorted((root / "derived" / "SegmentationClass").glob("*_target.png"))
    items = []
    for path in label_files:
        labels = np.array(Image.open(path)).astype(np.int32)
        image = root / "samples" / path.name.replace("_target", "_image")
        items.append(ExportItem(image.stem, SegResult(labels, names), image=image))
    rows = []
    for tolerance in args.tolerances:
        settings = {"min_area": args.min_area, "polygon_tolerance": tolerance}
        with tempfile.TemporaryDirectory() as tmp:
            folder = export_dataset(items, tmp, "coco", names, settings, progress=False)["coco"]
            coco = COCO(str(folder / "annotations.json"))
            ious, areas, points = [], [], []
            for ann, item_regions in _pairs(coco, items, settings):
                decoded = coco.annToMask(ann).astype(bool)
                truth = max(item_regions, key=lambda m: _iou(decoded, m))
                ious.append(_iou(decoded, truth))
                areas.append(int(truth.sum()))
                points.append(len(ann["segmentation"][0]) // 2)
        ious_arr, areas_arr = np.array(ious), np.array(areas)
        rows.append(
            {
                "tolerance": tolerance,
                "regions": len(ious),
                "weighted_iou": round(float(np.average(ious_arr, weights=areas_arr)), 4),
                "min_iou_1000px": round(float(ious_arr[areas_arr >= 1000].min()), 4),
                "mean_points": round(float(np.mean(points)), 1),
            }
        )
    timings = {}
    for name in FORMATS:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            export_dataset(items, tmp, name, names, {"min_area": args.min_area}, progress=False)
            timings[name] = round((time.perf_counter() - start) / len(items), 4)
    print(json.dumps({"images": len(items), "polygons": rows, "seconds_per_image": timings}, indent=2))


def _pairs(coco, items, settings):
    for image_id, item in zip(sorted(coco.getImgIds()), items):
        regions: dict[int, list[np.ndarray]] = {}
        for inst in item.result.instances(settings["min_area"]):
            regions.setdefault(inst.class_id, []).append(inst.mask)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            yield ann, regions[ann["category_id"]]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


if __name__ == "__main__":
    main()
