"""A synthetic world with known answers: coloured-region scenes and a CLIP stand-in.

Real backbones are large, slow and only approximately right, so a test that runs a whole pipeline
on them cannot say *which* answer is correct. Here the answer is known by construction:

* :func:`make_scene` draws images made of regions (rotated rectangles, rotated ellipses, star
  polygons) over a background, each filled with a named colour from :data:`PALETTE`, and returns
  the exact label map and one mask per region (for SAM-like mask generators and instance tests).
* :class:`SyntheticCLIP` implements :class:`ovss.models.TextEncoder` and
  :class:`ovss.models.DenseImageEncoder` with a fixed geometry: each colour name has its own
  orthonormal direction; a text maps to the direction(s) of the colour word(s) it contains; an
  image patch maps to a soft mixture of colour directions chosen by its mean RGB. Any pipeline
  that correctly matches patches to texts must therefore recover the colour labels.

``ovss.Segmenter(method="sclip", clip=SyntheticCLIP(), device="cpu").segment(scene.image,
scene.class_names)`` labels a scene with no model download, in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..models.dense_clip import check_variant

# Value of "no label" in label maps and label PNGs (the mmseg / VOC convention).
IGNORE_INDEX = 255

# Ten colours at least ~99 apart in RGB (red-orange is the closest pair), kept away from 0 and
# 255 so that noise is not clipped one-sidedly. Order is the canonical class order.
PALETTE: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "green": (30, 170, 50),
        "blue": (30, 60, 220),
        "yellow": (240, 225, 40),
        "cyan": (40, 210, 220),
        "magenta": (220, 40, 200),
        "orange": (245, 125, 15),
        "white": (240, 240, 240),
        "black": (20, 20, 20),
        "grey": (128, 128, 128),
    }
)

# Words the stand-in text encoder reads as a colour, besides the colour's own name. They let tests
# exercise synonym handling ("red, crimson") with a known right answer.
SYNONYMS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "red": ("crimson", "scarlet"),
        "green": ("emerald", "jade"),
        "blue": ("navy", "cobalt"),
        "yellow": ("lemon", "golden"),
        "cyan": ("aqua", "turquoise"),
        "magenta": ("fuchsia", "cerise"),
        "orange": ("tangerine", "amber"),
        "white": ("ivory", "snowy"),
        "black": ("ebony", "jet"),
        "grey": ("gray", "ash"),
    }
)

SHAPES = ("rectangle", "ellipse", "polygon")
POOLINGS = ("mean_colour", "assignment")

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SyntheticScene:
    """One image with its exact answer.

    ``labels`` indexes ``class_names`` (the whole vocabulary the scene was drawn from, so scenes of
    one dataset share a class list); ``IGNORE_INDEX`` marks pixels left unlabelled on purpose
    (``ignore_border``). ``instance_masks[i]`` is the visible part of region ``i`` and
    ``instance_labels[i]`` its class; the background is not an instance.
    """

    image: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) int32
    class_names: list[str]
    instance_masks: list[np.ndarray] = field(default_factory=list)  # (H, W) bool each
    instance_labels: list[int] = field(default_factory=list)
    background: str | None = None  # colour name of the background
    name: str = "scene"
    seed: int | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def present_classes(self) -> list[str]:
        """Names of the classes that label at least one pixel, in vocabulary order."""
        counts = np.bincount(self.labels[self.labels != IGNORE_INDEX].ravel(), minlength=len(self.class_names))
        return [n for n, c in zip(self.class_names, counts) if c > 0]


def _check_classes(classes: Sequence[str], palette: Mapping[str, tuple[int, int, int]]) -> list[str]:
    names = list(classes)
    unknown = [c for c in names if c not in palette]
    if unknown:
        raise ValueError(f"colour {unknown[0]!r} is not in the palette; choose from {', '.join(palette)}")
    if len(set(names)) != len(names):
        raise ValueError("a colour is listed twice in classes")
    if len(names) < 2:
        raise ValueError("classes needs at least two colours (a background and one region colour)")
    if len(names) >= IGNORE_INDEX:
        raise ValueError(f"at most {IGNORE_INDEX - 1} classes fit in a label PNG")
    return names


def _rotated(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = yy - cy, xx - cx
    return dx * c + dy * s, -dx * s + dy * c


def _shape_mask(shape: str, rng: np.random.Generator, size: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """A filled shape whose half-extents are ``scale`` times half the short side."""
    h, w = size
    half = min(h, w) / 2
    a, b = rng.uniform(*scale, size=2) * half
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    angle = rng.uniform(0, math.pi)
    if shape == "polygon":
        # Star-shaped and usually non-convex: sorted angles, random radii.
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.45, 1.0, n) * max(a, b)
        points = [(cx + r * math.cos(t), cy + r * math.sin(t)) for r, t in zip(radii, angles)]
        canvas = Image.new("L", (w, h), 0)
        ImageDraw.Draw(canvas).polygon(points, fill=1)
        return np.asarray(canvas, dtype=bool)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = _rotated(yy, xx, cy, cx, angle)
    if shape == "rectangle":
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if shape == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def _layout(
    rng: np.random.Generator,
    size: tuple[int, int],
    n_regions: int,
    shapes: Sequence[str],
    region_scale: tuple[float, float],
    min_visible: float,
    max_attempts: int = 50,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``owner`` map (-1 = background, i = region i) and the visible mask of each region.

    Regions are painted in order, later ones on top. Layouts where some region is mostly hidden
    (visible share under ``min_visible``) or tiny are redrawn, so every region can be found.
    """
    h, w = size
    min_pixels = max(16, int(0.005 * h * w))
    owner = np.full(size, -1, dtype=np.int32)
    for _ in range(max_attempts):
        owner = np.full(size, -1, dtype=np.int32)
        full = []
        for i in range(n_regions):
            mask = _shape_mask(shapes[int(rng.integers(len(shapes)))], rng, size, region_scale)
            owner[mask] = i
            full.append(mask)
        visible = [owner == i for i in range(n_regions)]
        if all(v.sum() >= max(min_pixels, min_visible * f.sum()) for v, f in zip(visible, full)):
            return owner, visible
    # Deterministic fallback: keep the last layout, dropping regions that vanished entirely.
    return owner, [owner == i for i in range(n_regions)]


def _boundary(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` pixels (chessboard distance) of a label change."""
    edge = np.zeros(labels.shape, dtype=bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    out = edge.copy()
    for _ in range(width - 1):  # grow by one pixel in all 8 directions per step (separable)
        rows = out.copy()
        rows[1:] |= out[:-1]
        rows[:-1] |= out[1:]
        out = rows.copy()
        out[:, 1:] |= rows[:, :-1]
        out[:, :-1] |= rows[:, 1:]
    return out


def _stripes(rng: np.random.Generator, size: tuple[int, int], amplitude: float) -> np.ndarray:
    """Zero-mean sinusoidal luminance stripes with a random period (3-12 px) and direction."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    theta, period, phase = rng.uniform(0, math.pi), rng.uniform(3, 12), rng.uniform(0, 2 * math.pi)
    return amplitude * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase)


def make_scene(
    seed: int,
    size: tuple[int, int] = (224, 224),
    classes: Sequence[str] | None = None,
    n_regions: int = 4,
    background: str | None = None,
    noise: float = 0.0,
    texture: float = 0.0,
    colour_jitter: float = 0.0,
    shapes: Sequence[str] = SHAPES,
    region_scale: tuple[float, float] = (0.3, 0.65),
    min_visible: float = 0.3,
    ignore_border: int = 0,
    palette: Mapping[str, tuple[int, int, int]] = PALETTE,
    name: str | None = None,
) -> SyntheticScene:
    """Draw a scene of ``n_regions`` coloured shapes over a background, deterministic in ``seed``.

    ``classes``: the vocabulary (colour names, default the whole palette); labels index into it.
    ``background``: the background colour (one of ``classes``; ``None`` picks one at random).
    Region colours are drawn from the other classes, distinct while there are enough of them.
    ``noise``: per-pixel Gaussian noise sigma, in 0-255 units. ``texture``: amplitude of per-region
    luminance stripes (0-255 units). ``colour_jitter``: sigma of a per-region shift of the fill
    colour, so fills are not exactly the palette values. ``ignore_border``: mark pixels within
    this many pixels of a region boundary as ``IGNORE_INDEX`` (ambiguous for patch models).
    The layout does not depend on ``noise``, ``texture`` or ``colour_jitter``: the same seed gives
    the same labels with or without them.
    """
    names = _check_classes(list(PALETTE) if classes is None else classes, palette)
    for shape in shapes:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    if background is not None and background not in names:
        raise ValueError(f"background {background!r} must be one of the classes {names}")
    h, w = size
    if h < 8 or w < 8:
        raise ValueError(f"size {size} is too small; use at least 8x8")
    # Independent streams, so that appearance settings never move the layout.
    layout_rng, colour_rng, jitter_rng, texture_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )

    bg = background if background is not None else names[int(colour_rng.integers(len(names)))]
    pool = [n for n in names if n != bg]
    replace = n_regions > len(pool)
    region_names = [pool[i] for i in colour_rng.choice(len(pool), size=n_regions, replace=replace)]

    owner, visible = _layout(layout_rng, (h, w), n_regions, list(shapes), region_scale, min_visible)

    labels = np.full((h, w), names.index(bg), dtype=np.int32)
    image = np.empty((h, w, 3), dtype=np.float64)
    fills = [bg, *region_names]  # fill 0 is the background, fill i + 1 is region i
    for k, colour in enumerate(fills):
        where = owner == k - 1
        rgb = np.asarray(palette[colour], dtype=np.float64) + jitter_rng.normal(0.0, colour_jitter, 3)
        layer = np.broadcast_to(rgb, (h, w, 3)).copy()
        if texture > 0:
            layer += _stripes(texture_rng, (h, w), texture)[..., None]
        image[where] = layer[where]
        if k > 0:
            labels[where] = names.index(colour)
    if noise > 0:
        image += noise_rng.normal(0.0, noise, image.shape)
    image_u8 = np.clip(np.round(image), 0, 255).astype(np.uint8)

    if ignore_border > 0:
        labels[_boundary(labels, ignore_border)] = IGNORE_INDEX

    kept = [(m, names.index(c)) for m, c in zip(visible, region_names) if m.any()]
    return SyntheticScene(
        image=image_u8,
        labels=labels,
        class_names=names,
        instance_masks=[m for m, _ in kept],
        instance_labels=[c for _, c in kept],
        background=bg,
        name=name if name is not None else f"scene_{seed}",
        seed=seed,
    )


def make_dataset(n: int, seed: int = 0, prefix: str = "synthetic", **scene_kwargs) -> list[SyntheticScene]:
    """``n`` scenes sharing one class list; scene ``i`` is ``make_scene(scene.seed, ...)`` again.

    ``scene_kwargs`` go to :func:`make_scene` (``size``, ``classes``, ``noise``, ...).
    """
    seeds: Any = np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32) if n > 0 else []
    return [make_scene(int(s), name=f"{prefix}_{i:04d}", **scene_kwargs) for i, s in enumerate(seeds)]


def write_dataset(scenes: Sequence[SyntheticScene], root: str | os.PathLike) -> Path:
    """Write ``root/images/NAME.png`` (RGB), ``root/labels/NAME.png`` (8-bit class indices,
    ``IGNORE_INDEX`` = unlabelled) and ``root/classes.txt`` (one class name per line, index order).

    All scenes must share one class list, as those of :func:`make_dataset` do.
    """
    root = Path(root)
    if not scenes:
        raise ValueError("no scenes to write")
    classes = scenes[0].class_names
    names = [s.name for s in scenes]
    if len(set(names)) != len(names):
        raise ValueError("scene names must be unique; they become file names")
    if any(s.class_names != classes for s in scenes):
        raise ValueError("all scenes of a dataset must share one class list")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        Image.fromarray(scene.image, mode="RGB").save(root / "images" / f"{scene.name}.png")
        Image.fromarray(scene.labels.astype(np.uint8), mode="L").save(root / "labels" / f"{scene.name}.png")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    return root


def pixel_accuracy(pred: np.ndarray, truth: np.ndarray, ignore: int = IGNORE_INDEX) -> float:
    """Share of pixels with ``pred == truth``, over pixels where ``truth != ignore`` (nan if none)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    valid = truth != ignore
    if not valid.any():
        return float("nan")
    return float((pred[valid] == truth[valid]).mean())


# ----------------------------------------------------------------------------------------------
# The CLIP stand-in
# ----------------------------------------------------------------------------------------------


def _unit_vector(dim: int, key: str) -> np.ndarray:
    """A deterministic random unit vector for ``key`` (stable across runs and platforms)."""
    digest = hashlib.sha256(key.encode()).digest()
    v = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(dim)
    return v / np.linalg.norm(v)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, h, w)`` maps, replicate borders, radius 3 sigma."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class SyntheticCLIP:
    """A deterministic CLIP stand-in whose embedding geometry encodes colour names.

    Satisfies :class:`ovss.models.TextEncoder` and :class:`ovss.models.DenseImageEncoder`, so it
    can be passed wherever a CLIP backbone is expected (``Segmenter(clip=SyntheticCLIP())``).

    Geometry, in ``R^dim``:

    * colour ``c`` of ``palette`` has a unit vector ``e_c``; these and one "unrelated" vector ``u``
      are orthonormal (QR of a ``seed``-ed Gaussian matrix).
    * :meth:`encode_text` finds colour words (names and ``synonyms``, whole words, any case). The
      last one found gets weight 1 and earlier ones ``modifier_weight``, because in English
      templates the class comes last ("a black and white photo of the red."). A synonym adds a
      fixed ``synonym_shift`` offset, so "crimson" is near, not equal to, "red". Every text gets a
      small hash-seeded ``text_noise`` offset, so templates differ. No colour word: ``u``.
      ``text_drift`` ``{"red": {"orange": 1.5}}`` bends the text of a colour toward others
      (e_red + 1.5 e_orange, normalised): CLIP's systematic zero-shot confusions, which labels
      or image tags can correct while the image side stays exact.
    * :meth:`dense_features` undoes the ``mean``/``std`` normalisation and, per ``P x P`` patch,
      weighs colours by ``softmax(-rgb_distance / temperature)``: with ``"assignment"`` (default)
      the mean of per-pixel weights (a straddling patch gets exactly the red/blue mixture), with
      ``pooling="mean_colour"`` of the patch's mean RGB (a patch straddling red and blue gets the
      colour nearest their mean, e.g. grey: harsher aliasing). Every variant gives the same map,
      and ``bias`` (an attention bias for real ViTs) is accepted and ignored.
    * ``blur`` (in patches, default 0) smooths the patch features with a Gaussian before they are
      normalised, like CLIP's poor localisation: objects bleed into their surroundings and small
      ones fade, while a VFM stand-in (:class:`ovss.testing.standins.SyntheticDINO`) stays sharp.
    * :meth:`value_features` / :meth:`project_values` are the two halves of :meth:`dense_features`
      (the unnormalised mixture, and normalisation), the interface that methods attending with an
      external affinity use (ProxyCLIP, CorrCLIP): attending within an object undoes the blur.
    """

    name = "synthetic-clip"

    def __init__(
        self,
        dim: int = 32,
        seed: int = 0,
        temperature: float = 12.0,
        patch_size: int = 16,
        pooling: str = "assignment",
        text_noise: float = 0.05,
        synonym_shift: float = 0.15,
        modifier_weight: float = 0.25,
        palette: Mapping[str, tuple[int, int, int]] = PALETTE,
        synonyms: Mapping[str, Sequence[str]] = SYNONYMS,
        text_drift: Mapping[str, Mapping[str, float]] | None = None,
        mean: tuple[float, float, float] = _OPENAI_MEAN,
        std: tuple[float, float, float] = _OPENAI_STD,
        blur: float = 0.0,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
        if dim < len(palette) + 1:
            raise ValueError(f"dim {dim} is too small: {len(palette)} colours + 1 unrelated direction")
        if temperature <= 0 or patch_size < 1:
            raise ValueError("temperature and patch_size must be positive")
        if blur < 0:
            raise ValueError(f"blur must be >= 0, got {blur}")
        self._dim, self._seed = dim, seed
        self.blur = float(blur)
        self.temperature = float(temperature)
        self.patch_size = patch_size
        self.image_size = 224  # like CLIPBackbone; nothing here depends on it
        self.pooling = pooling
        self.text_noise, self.synonym_shift, self.modifier_weight = text_noise, synonym_shift, modifier_weight
        self.mean, self.std = tuple(mean), tuple(std)
        self.text_drift = {c: dict(d) for c, d in (text_drift or {}).items()}
        unknown = {c for c in self.text_drift} | {t for d in self.text_drift.values() for t in d}
        if unknown - set(palette):
            raise ValueError(f"text_drift names colours outside the palette: {sorted(unknown - set(palette))}")
        self.device = torch.device("cpu")
        self.colour_names: tuple[str, ...] = tuple(palette)
        self.palette = MappingProxyType(dict(palette))
        self.lexicon: Mapping[str, str] = MappingProxyType(self._build_lexicon(palette, synonyms))
        words = sorted(self.lexicon, key=len, reverse=True)  # longest first: "light blue" before "blue"
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")
        basis = self._basis(dim, seed, len(palette) + 1)
        self._colours = torch.from_numpy(basis[:-1].astype(np.float32))  # (K, D)
        self._unrelated = basis[-1]
        self._rgb = torch.tensor([palette[c] for c in self.colour_names], dtype=torch.float32)  # (K, 3)

    @staticmethod
    def _build_lexicon(palette: Mapping[str, tuple[int, int, int]], synonyms: Mapping[str, Sequence[str]]) -> dict:
        lexicon = {c.lower(): c for c in palette}
        for colour, words in synonyms.items():
            if colour not in palette:
                continue  # synonyms of colours outside a reduced palette are simply unknown words
            for word in words:
                key = " ".join(word.lower().split())
                if lexicon.get(key, colour) != colour:
                    raise ValueError(f"synonym {word!r} is given for both {lexicon[key]!r} and {colour!r}")
                lexicon[key] = colour
        return lexicon

    @staticmethod
    def _basis(dim: int, seed: int, count: int) -> np.ndarray:
        """``count`` orthonormal rows, signs fixed so the result is reproducible."""
        q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, count)))
        q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
        return q.T.copy()

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def fingerprint(self) -> str:
        """Hash of every parameter that shapes embeddings: the text-embedding cache key."""
        params = {
            "name": self.name,
            "dim": self._dim,
            "seed": self._seed,
            "temperature": self.temperature,
            "patch_size": self.patch_size,
            "pooling": self.pooling,
            "text_noise": self.text_noise,
            "synonym_shift": self.synonym_shift,
            "modifier_weight": self.modifier_weight,
            "text_drift": self.text_drift,
            "palette": {k: list(v) for k, v in self.palette.items()},
            "lexicon": dict(sorted(self.lexicon.items())),
            "mean": list(self.mean),
            "std": list(self.std),
        }
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def colour_vectors(self) -> torch.Tensor:
        """``(K, D)`` unit vectors ``e_c`` in ``colour_names`` order."""
        return self._colours.clone()

    @property
    def unrelated_vector(self) -> torch.Tensor:
        """``(D,)`` the direction of texts that name no colour."""
        return torch.from_numpy(self._unrelated.astype(np.float32))

    def colours_in(self, text: str) -> list[tuple[str, str]]:
        """``(word, colour)`` for each colour word in ``text``, in reading order."""
        return [(m, self.lexicon[m]) for m in self._pattern.findall(" ".join(text.lower().split()))]

    def _embed(self, text: str) -> np.ndarray:
        found = self.colours_in(text)
        if found:
            v = np.zeros(self._dim)
            for i, (word, colour) in enumerate(found):
                e = self._colours[self.colour_names.index(colour)].double().numpy()
                for other, w in self.text_drift.get(colour, {}).items():
                    e = e + w * self._colours[self.colour_names.index(other)].double().numpy()
                if word != colour.lower():
                    e = e + self.synonym_shift * _unit_vector(self._dim, f"{self._seed}|word|{word}")
                    e = e / np.linalg.norm(e)
                v += (1.0 if i == len(found) - 1 else self.modifier_weight) * e
            v /= np.linalg.norm(v)
        else:
            v = self._unrelated.copy()
        v = v + self.text_noise * _unit_vector(self._dim, f"{self._seed}|text|{text}")
        return v / np.linalg.norm(v)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """``(N, D)`` L2-normalised float32 embeddings (on the CPU, like ``CLIPBackbone``)."""
        if not texts:
            return torch.zeros(0, self._dim)
        return torch.from_numpy(np.stack([self._embed(t) for t in texts]).astype(np.float32))

    def colour_weights(self, rgb: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` colours on the 0-255 scale -> ``(B, K, h, w)`` soft colour assignment."""
        dist = torch.linalg.vector_norm(rgb.unsqueeze(1) - self._rgb.to(rgb.device).view(1, -1, 3, 1, 1), dim=2)
        return (-dist / self.temperature).softmax(dim=1)

    @torch.no_grad()
    def dense_features(self, pixels: torch.Tensor, variant: str, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised pixels -> ``(B, D, H // P, W // P)`` L2-normalised features."""
        check_variant(variant)  # same names as the real backbone, so typos fail the same way
        del bias  # only meaningful for a real ViT's attention
        return self.project_values(self.value_features(pixels))

    def project_values(self, values: torch.Tensor) -> torch.Tensor:
        return F.normalize(values.float(), dim=1)

    @torch.no_grad()
    def value_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised pixels -> ``(B, D, H // P, W // P)`` colour mixtures (blurred)."""
        p = self.patch_size
        height, width = pixels.shape[-2:]
        gh, gw = height // p, width // p
        if gh == 0 or gw == 0:
            raise ValueError(f"input {height}x{width} is smaller than one {p}x{p} patch")
        mean = torch.tensor(self.mean, device=pixels.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=pixels.device).view(1, 3, 1, 1) * 255
        rgb = (pixels.float() * std + mean)[..., : gh * p, : gw * p]  # like a ViT, drop the ragged edge
        if self.pooling == "mean_colour":
            weights = self.colour_weights(F.avg_pool2d(rgb, p))
        else:
            weights = F.avg_pool2d(self.colour_weights(rgb), p)
        feats = torch.einsum("bkhw,kd->bdhw", weights, self._colours.to(pixels.device))
        return _gaussian_blur(feats, self.blur) if self.blur > 0 else feats

    def __repr__(self) -> str:
        return (
            f"SyntheticCLIP(dim={self._dim}, seed={self._seed}, temperature={self.temperature}, "
            f"patch_size={self.patch_size}, pooling={self.pooling!r}, colours={len(self.colour_names)})"
        )
