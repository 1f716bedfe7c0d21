"""The result of segmenting one image, with writers for PNG, overlay and JSON."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .io import save_image, write_json


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

    @property
    def size(self) -> tuple[int, int]:
        return int(self.labels.shape[0]), int(self.labels.shape[1])

    def areas(self) -> dict[str, int]:
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}

    def mask(self, name: str) -> np.ndarray:
        """Boolean mask of one class."""
        return self.labels == self.class_names.index(name)

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
