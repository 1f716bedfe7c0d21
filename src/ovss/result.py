"""The result of segmenting one image, with writers for PNG, overlay and JSON."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .io import save_image, write_json

if TYPE_CHECKING:
    import supervision


@dataclass(frozen=True)
class Instance:
    """One connected region of one class: the unit of every instance export (COCO, YOLO, Label Studio).

    The region is kept as its box-sized ``crop``, so many objects on a large image stay small;
    ``mask`` gives the full-image mask when needed.
    """

    class_id: int  # index into SegResult.class_names
    class_name: str
    score: float | None  # mean probability of the class inside the region; None without probabilities
    area: int  # pixels
    bbox: tuple[int, int, int, int]  # COCO XYWH in pixels: x, y, width, height (x + width is exclusive)
    crop: np.ndarray = field(repr=False)  # (height, width) bool: the region inside its box
    image_size: tuple[int, int] = (0, 0)  # (H, W) of the image

    @property
    def mask(self) -> np.ndarray:
        """``(H, W) bool`` mask of the region over the whole image."""
        x, y, w, h = self.bbox
        full = np.zeros(self.image_size, dtype=bool)
        full[y : y + h, x : x + w] = self.crop
        return full


def palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), ``(n, 3) uint8``; class 0 is black."""
    colours = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def class_colours(class_names: list[str]) -> np.ndarray:
    """The overlay colour of each class, ``(C, 3) uint8``: the VOC colours, black only for "background"."""
    # Black is the VOC colour of "background"; without one, class 0 gets a visible colour.
    shift = 0 if class_names[:1] == ["background"] else 1
    return palette(max(len(class_names), 1) + shift)[shift:]


@dataclass
class SegResult:
    """A label map over the input image and everything needed to interpret and reproduce it."""

    labels: np.ndarray  # (H, W) int32, indices into class_names
    class_names: list[str]
    probs: np.ndarray | None = None  # (C, H, W) float32 when segment(..., return_probs=True)
    image: np.ndarray | None = field(default=None, repr=False)  # the RGB input, for overlays
    info: dict[str, Any] = field(default_factory=dict)  # method, settings, models, version, timing
    # (H, W) probability of each pixel's own label; derived from ``probs`` when not given (e.g. read from a cache)
    confidence: np.ndarray | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.labels.shape[0]), int(self.labels.shape[1])

    def areas(self) -> dict[str, int]:
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}

    def mask(self, name: str) -> np.ndarray:
        """Boolean mask of one class."""
        return self.labels == self.class_names.index(name)

    def label_confidence(self) -> np.ndarray | None:
        """``(H, W) float32``: the probability of the label each pixel got, or ``None`` without probabilities."""
        if self.confidence is not None:
            return self.confidence.astype(np.float32, copy=False)
        if self.probs is None:
            return None
        index = np.clip(self.labels, 0, self.probs.shape[0] - 1)[None]
        return np.take_along_axis(self.probs, index, axis=0)[0].astype(np.float32, copy=False)

    def instances(self, min_area: int = 1, include_background: bool = False) -> list[Instance]:
        """Connected components (8-connected) of every class, as instance masks, in class then
        top-to-bottom order. Regions under ``min_area`` pixels are left out; so is class 0 when it
        is named "background", unless ``include_background``. Label values outside the class list
        (e.g. 255, ignored) never form instances."""
        import cv2

        confidence = self.label_confidence()
        skip = 0 if include_background or self.class_names[:1] != ["background"] else 1
        found: list[Instance] = []
        present = np.unique(self.labels)
        for class_id in present[(present >= skip) & (present < len(self.class_names))]:
            class_mask = (self.labels == class_id).astype(np.uint8)
            count, components, stats, _ = cv2.connectedComponentsWithStats(class_mask, connectivity=8)
            for k in range(1, count):  # 0 is everything outside the class
                x, y, w, h, area = (int(v) for v in stats[k])
                if area < max(min_area, 1):
                    continue
                crop = components[y : y + h, x : x + w] == k
                score = None if confidence is None else float(confidence[y : y + h, x : x + w][crop].mean())
                name = self.class_names[class_id]
                found.append(Instance(int(class_id), name, score, area, (x, y, w, h), crop, self.size))
        return found

    def to_supervision(self, min_area: int = 1, include_background: bool = False) -> supervision.Detections:
        """The instances as ``supervision.Detections`` (masks, ``xyxy`` with inclusive corners as
        supervision computes them from masks, class ids, confidence where probabilities exist,
        ``data["class_name"]``). Needs ``pip install "ovss[supervision]"``."""
        try:
            import supervision as sv
        except ImportError:
            from .errors import InputError

            raise InputError('to_supervision needs the supervision package; pip install "ovss[supervision]"') from None
        found = self.instances(min_area, include_background)
        h, w = self.size
        masks = np.stack([i.mask for i in found]) if found else np.zeros((0, h, w), dtype=bool)
        xyxy = np.array([[x, y, x + bw - 1, y + bh - 1] for x, y, bw, bh in (i.bbox for i in found)], np.float32)
        scores = [i.score for i in found]
        confidence = np.array(scores, np.float32) if found and None not in scores else None
        return sv.Detections(
            xyxy=xyxy.reshape(-1, 4),
            mask=masks,
            confidence=confidence,
            class_id=np.array([i.class_id for i in found], dtype=int),
            data={"class_name": np.array([i.class_name for i in found], dtype=str)},
        )

    def to_pil(self) -> Image.Image:
        """Indexed PNG image with the VOC palette (16-bit greyscale beyond 256 classes)."""
        return label_image(self.labels, len(self.class_names))

    def overlay(self, image: np.ndarray | None = None, alpha: float = 0.5) -> Image.Image:
        """The image blended with class colours, with a legend of the classes present."""
        image = self.image if image is None else image
        colours = class_colours(self.class_names)
        coloured = colours[self.labels % len(colours)]
        if image is None:
            blended = coloured
        else:
            blended = (image.astype(np.float32) * (1 - alpha) + coloured * alpha).astype(np.uint8)
        return _with_legend(Image.fromarray(blended), self.areas(), colours, self.class_names)

    def summary(self) -> dict[str, Any]:
        total = max(1, self.labels.size)
        areas = self.areas()
        present = {n: {"pixels": a, "fraction": round(a / total, 6)} for n, a in areas.items() if a}
        return {"image_size": list(self.size), "classes": self.class_names, "areas": present, **self.info}

    def save_png(self, path: str | os.PathLike) -> None:
        save_image(path, self.to_pil())

    def save_overlay(self, path: str | os.PathLike, image: np.ndarray | None = None) -> None:
        save_image(path, self.overlay(image))

    def save_json(self, path: str | os.PathLike) -> None:
        write_json(path, self.summary())


def label_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """Indexed PNG image with the VOC palette (16-bit greyscale beyond 256 classes)."""
    if num_classes > 256:
        return Image.fromarray(labels.astype(np.uint16))
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(palette(256).ravel().tolist())
    return im


def _with_legend(image: Image.Image, areas: dict[str, int], colours: np.ndarray, names: list[str]) -> Image.Image:
    present = [(i, n) for i, n in enumerate(names) if areas.get(n)]
    font = ImageFont.load_default()
    row = 16
    width = 12 + max((int(ImageDraw.Draw(image).textlength(n, font=font)) for _, n in present), default=0) + 28
    canvas = Image.new("RGB", (image.width + width, max(image.height, row * len(present) + 8)), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (i, name) in enumerate(present):
        y = 4 + k * row
        x = image.width + 6
        draw.rectangle([x, y, x + 12, y + 12], fill=tuple(int(v) for v in colours[i]), outline="black")
        draw.text((x + 18, y), name, fill="black", font=font)
    return canvas
