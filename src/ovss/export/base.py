"""What every exporter shares: the items it gets, its settings, and the build-then-swap that
makes a dataset folder appear complete or not at all."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError
from ..result import Instance, SegResult, palette


@dataclass(frozen=True)
class ExportSettings:
    """How results become dataset files; none of these changes the label maps themselves."""

    min_area: int = 16  # pixels; smaller connected regions are not instances (COCO, YOLO, Label Studio, CVAT objects)
    polygon_tolerance: float = 1.0  # pixels, cv2.approxPolyDP epsilon for coco and yolo-seg polygons; 0 keeps all
    include_background: bool = False  # export class 0 named "background" as instances too
    labelstudio_from_name: str = "label"  # the <BrushLabels name=...> of the Label Studio project
    labelstudio_to_name: str = "image"  # the <Image name=...> it annotates
    labelstudio_url: str = "/data/local-files/?d=images/"  # prefix of data.image before the image's relative path
    # copy images into the dataset folders instead of hard-linking them (they are copied where links fail)
    copy_images: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ExportSettings:
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"no export setting {unknown[0]!r}; export settings: {', '.join(sorted(known))}")
        settings = cls(**values)
        if not isinstance(settings.min_area, int) or settings.min_area < 0:
            raise InputError(f"min_area must be a whole number of pixels >= 0, not {settings.min_area!r}")
        if not isinstance(settings.polygon_tolerance, (int, float)) or settings.polygon_tolerance < 0:
            raise InputError(f"polygon_tolerance must be a number of pixels >= 0, not {settings.polygon_tolerance!r}")
        return settings


@dataclass
class ExportItem:
    """One image and its result. ``stem`` is the image's relative path without suffix (``sub/a``)."""

    stem: str
    result: SegResult
    image: Path | None = None  # the source image file; formats with an images/ folder link it there
    _instances: list[Instance] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.image is not None:
            self.image = Path(self.image)

    @property
    def file_name(self) -> str:
        """The image's relative file name in the dataset (``sub/a.jpg``)."""
        return self.stem + (self.image.suffix.lower() if self.image is not None else ".png")

    def instances(self, settings: ExportSettings) -> list[Instance]:
        if self._instances is None:
            self._instances = self.result.instances(settings.min_area, settings.include_background)
        return self._instances

    def release(self) -> None:
        self._instances = None  # every format has had them: free the crops before the next image


class Exporter:
    """One format. ``add`` is called once per image in dataset order, then ``finish`` once."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, folder: Path, class_names: Sequence[str], settings: ExportSettings) -> None:
        self.folder = folder
        self.class_names = list(class_names)
        self.settings = settings
        # Formats with a class list leave out a skipped "background" class 0 and count the others from there.
        self.skip = 0 if settings.include_background or self.class_names[:1] != ["background"] else 1

    def add(self, item: ExportItem) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def place_image(self, item: ExportItem, folder: Path) -> None:
        """Hard-link (or copy) the image into ``folder`` under its dataset file name."""
        if item.image is None:
            if item.result.image is None:
                raise InputError(f"{item.stem}: no image to put in the {self.name} dataset; pass image= or a path")
            from PIL import Image

            target = folder / item.file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(item.result.image).save(target)
            return
        place_file(item.image, folder / item.file_name, copy=self.settings.copy_images)

    def instance_classes(self) -> list[str]:
        return self.class_names[self.skip :]


def place_file(source: Path, target: Path, copy: bool = False) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    if not copy:
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copy2(source, target)


def class_colours(class_names: Sequence[str]) -> tuple[np.ndarray, bool]:
    """VOC palette colours per class, and whether an extra black "background" entry is needed:
    class 0 named "background" is black; otherwise black stays free for unlabelled pixels."""
    shift = 0 if class_names[:1] == ["background"] else 1
    return palette(len(class_names) + shift)[shift:], bool(shift)


def export_dataset(
    items: Iterable[ExportItem],
    out: str | os.PathLike,
    formats: str | Sequence[str],
    class_names: Sequence[str],
    settings: ExportSettings | dict[str, Any] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, Path]:
    """Write each format into ``out/FORMAT/`` and return those folders.

    Each format is built in a hidden folder next to it and swapped in at the end, so an
    interrupted export leaves the previous complete dataset (or none), never a half-written file.
    """
    from tqdm import tqdm

    from .registry import get_exporter, parse_formats

    names = parse_formats(formats)
    settings = settings if isinstance(settings, ExportSettings) else ExportSettings.from_dict(settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob(".building-*"), *out.glob(".old-*")]:  # left by an interrupted export
        shutil.rmtree(stale, ignore_errors=True)
    building = {name: out / f".building-{name}" for name in names}
    for folder in building.values():
        folder.mkdir()
    exporters = [get_exporter(name)(building[name], class_names, settings) for name in names]
    for item in tqdm(items, desc="export", unit="img", total=total, disable=not progress, file=sys.stderr):
        if list(item.result.class_names) != list(class_names):
            raise InputError(f"{item.stem}: its classes differ from the dataset's; export one vocabulary at a time")
        for exporter in exporters:
            exporter.add(item)
        item.release()
    for exporter in exporters:
        exporter.finish()
    done = {}
    for name in names:
        done[name] = _swap_in(building[name], out / name)
    return done


def _swap_in(new: Path, target: Path) -> Path:
    old = target.parent / f".old-{target.name}"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def instance_polygon(instance: Instance, tolerance: float) -> np.ndarray:
    """:func:`mask_polygon` of an instance, in image coordinates."""
    x, y, _, _ = instance.bbox
    return mask_polygon(instance.crop, tolerance) + np.array([x, y], dtype=np.float64)


def mask_polygon(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """The outline of one connected region as a single ``(K, 2)`` float polygon (x, y), K >= 3.

    Points are pixel centres (+0.5) of the boundary pixels, so a COCO rasteriser or a
    ``cv2.fillPoly`` of the truncated points gives the region back. Holes are joined to the
    outline by a zero-width cut at their closest points (as Ultralytics' COCO converter joins
    segments), so even-odd filling leaves them empty. ``tolerance`` > 0 simplifies each ring with
    cv2.approxPolyDP, which keeps label lines short. A region too thin for a polygon gets its box.
    """
    import cv2

    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    rings = [_simplify(c, tolerance) for c in contours]
    outer = [k for k in range(len(rings)) if hierarchy[0][k][3] < 0]  # one for a connected region
    best = max(outer, key=lambda k: cv2.contourArea(rings[k]), default=None)
    if best is None or len(rings[best]) < 3 or cv2.contourArea(rings[best]) == 0:
        ys, xs = np.nonzero(mask)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    polygon = rings[best].reshape(-1, 2).astype(np.float64)
    for k in range(len(rings)):
        if hierarchy[0][k][3] == best and len(rings[k]) >= 3 and cv2.contourArea(rings[k]) > 0:
            polygon = _join_hole(polygon, rings[k].reshape(-1, 2).astype(np.float64))
    return polygon + 0.5


def _simplify(contour: np.ndarray, tolerance: float) -> np.ndarray:
    import cv2

    if tolerance <= 0 or len(contour) < 4:
        return contour
    simpler = cv2.approxPolyDP(contour, float(tolerance), True)
    return simpler if len(simpler) >= 3 else contour


def _join_hole(polygon: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Walk the outline to the point closest to the hole, around the hole, and back."""
    distances = ((polygon[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(distances), distances.shape)
    around = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([polygon[: i + 1], around, polygon[i:]])


def write_compact_json(path: Path, data: Any) -> None:
    """JSON without indentation: polygon and RLE lists would otherwise take one line per number."""
    import json

    from ..io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n")
