"""PixelCLIP training data: unlabeled images, class-agnostic masks, the two views (METHODS §2.2 of
the official SA-1B mapper: short side 1024, random 640 crop, SSD colour, flip; a strong view with
colour jitter, grayscale, blur and an always-on cutout).

Every random draw of a sample comes from a generator seeded by (seed, epoch, index), so a sample
is a pure function of its position: resuming at a data position reproduces the same batches.
Tensor augmentations use kornia's functional ops with parameters drawn from that generator.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from ...io import find_images, load_image
from ...jobs import output_stems
from ...masks.maskset import MaskSet
from .settings import TrainSettings


@dataclass(frozen=True)
class ShardMember:
    """One image inside a tar shard (webdataset layout: ``KEY.jpg`` beside ``KEY.json`` etc.)."""

    shard: Path
    name: str

    def __str__(self) -> str:
        return f"{self.shard}:{self.name}"

    @property
    def stem(self) -> Path:
        return Path(self.name).with_suffix("")

    def read(self) -> np.ndarray:
        import io
        import tarfile

        from PIL import Image

        with tarfile.open(self.shard) as tar:
            member = tar.extractfile(self.name)
            if member is None:
                raise InputError(f"{self}: not a file in the shard")
            return load_image(Image.open(io.BytesIO(member.read())))


def shard_members(shard: Path) -> list[ShardMember]:
    import tarfile

    from ...io import IMAGE_SUFFIXES

    try:
        with tarfile.open(shard) as tar:
            names = sorted(m.name for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES))
    except (OSError, tarfile.TarError) as e:
        raise InputError(f"{shard}: unreadable tar shard ({e})") from None
    return [ShardMember(shard, n) for n in names]


@dataclass
class Sample:
    standard: torch.Tensor  # (3, S, S) float 0-255: the teacher's view
    strong: torch.Tensor  # (3, S, S) float 0-255: the student's view
    masks: torch.Tensor  # (N, S, S) bool, largest first (empty for the DINO source)


def list_images(images: str | os.PathLike | list) -> list:
    """A folder, a text file listing image paths (one a line), a list of paths, or webdataset-style
    ``.tar`` shards (one, or a list of them): images are read from the shard by member name."""
    if isinstance(images, (list, tuple)):
        if images and all(str(i).endswith(".tar") for i in images):
            return [m for shard in images for m in shard_members(Path(shard))]
        return find_images(list(images))
    path = Path(images)
    if path.suffix == ".tar":
        if not path.is_file():
            raise InputError(f"{path}: shard not found")
        return shard_members(path)
    if path.is_file() and path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return find_images([Path(line) if Path(line).is_absolute() else path.parent / line for line in lines])
    if not path.exists():
        raise InputError(f"{path}: image folder not found; pass --images DIR (or a .txt list of images)")
    found = find_images([path])
    if not found:
        raise InputError(f"{path}: no images found; pass a folder of .jpg/.png images")
    return found


def pair_masks(images: str | os.PathLike | list, paths: list[Path], masks: str | os.PathLike) -> list[Path]:
    """The ``ovss masks`` JSON of each image (``MASKS/<relative stem>.json``)."""
    masks = Path(masks)
    if not masks.is_dir():
        raise InputError(f"{masks}: mask folder not found; run `ovss masks IMAGES --out {masks}` first")
    inputs = list(images) if isinstance(images, (list, tuple)) else [images]
    stems = [m.stem for m in paths] if paths and isinstance(paths[0], ShardMember) else output_stems(paths, inputs)
    files = [masks / (str(stem) + ".json") for stem in stems]
    for image, file in zip(paths, files):
        if not file.is_file():
            raise InputError(f"{image}: no masks for this image ({file} missing); run `ovss masks` on it or remove it")
    return files


def resized_shape(h: int, w: int, short_side: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge``: short side to ``short_side`` unless the long side passes ``max_size``."""
    scale = short_side / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + index) % (2**63))


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _chance(gen: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=gen)) < p


def color_ssd(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """SSD photometric distortion (detectron2 ``ColorAugSSDTransform``): brightness +-32, contrast
    and saturation x[0.5, 1.5], hue +-18 degrees, each with p = 0.5; contrast first or last."""
    import kornia.enhance as ke

    x = img / 255.0
    if _chance(gen, 0.5):
        x = x + _uniform(gen, -32, 32) / 255.0
    contrast_first = _chance(gen, 0.5)
    contrast = _uniform(gen, 0.5, 1.5) if _chance(gen, 0.5) else None
    if contrast is not None and contrast_first:
        x = x * contrast
    x = x.clamp(0, 1)
    if _chance(gen, 0.5):
        x = ke.adjust_saturation(x[None], _uniform(gen, 0.5, 1.5))[0]
    if _chance(gen, 0.5):
        x = ke.adjust_hue(x[None], math.radians(_uniform(gen, -18, 18)))[0]
    if contrast is not None and not contrast_first:
        x = x * contrast
    return (x.clamp(0, 1) * 255.0).round()


def strong_view(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter (0.5, 0.5, 0.5, 0.25) with p = 0.8, grayscale p = 0.2, Gaussian blur p = 0.5 with
    sigma in [0.1, 2] (0-255 in and out)."""
    import kornia.color as kc
    import kornia.enhance as ke
    import kornia.filters as kf

    x = img[None] / 255.0
    if _chance(gen, 0.8):
        x = (x * _uniform(gen, 0.5, 1.5)).clamp(0, 1)  # torchvision brightness: a factor
        x = ke.adjust_contrast_with_mean_subtraction(x, _uniform(gen, 0.5, 1.5))  # blend with the mean
        x = ke.adjust_saturation(x, _uniform(gen, 0.5, 1.5))
        x = ke.adjust_hue(x, _uniform(gen, -0.25, 0.25) * 2 * math.pi)
    if _chance(gen, 0.2):
        x = kc.rgb_to_grayscale(x).expand(-1, 3, -1, -1)
    if _chance(gen, 0.5):
        sigma = _uniform(gen, 0.1, 2.0)
        k = 2 * math.ceil(3 * sigma) + 1
        x = kf.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")
    return (x[0].clamp(0, 1) * 255.0).round()


def cutout_box(h: int, w: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """One box of 10-50% of each side, its centre inside the image (y0, y1, x0, x1)."""
    bh, bw = int(h * _uniform(gen, 0.1, 0.5)), int(w * _uniform(gen, 0.1, 0.5))
    cy = int(torch.randint(bh // 2, max(bh // 2, h - bh // 2) + 1, (), generator=gen))
    cx = int(torch.randint(bw // 2, max(bw // 2, w - bw // 2) + 1, (), generator=gen))
    y0, x0 = max(0, cy - bh // 2), max(0, cx - bw // 2)
    return y0, min(h, y0 + bh), x0, min(w, x0 + bw)


class UnlabeledMaskDataset(torch.utils.data.Dataset):
    """Images (and their mask files, or none for the online DINO source) -> :class:`Sample`."""

    def __init__(self, paths: list[Path], mask_files: list[Path] | None, settings: TrainSettings) -> None:
        self.paths, self.mask_files, self.settings = paths, mask_files, settings
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        entry = self.paths[index]
        image = entry.read() if isinstance(entry, ShardMember) else load_image(entry)
        if self.mask_files is None:
            return image, np.zeros((0, *image.shape[:2]), dtype=bool)
        masks = MaskSet.from_json(self.mask_files[index])
        if tuple(masks.image_size) != image.shape[:2]:
            raise InputError(
                f"{self.mask_files[index]}: masks are {masks.image_size[1]}x{masks.image_size[0]} but the image is "
                f"{image.shape[1]}x{image.shape[0]}; regenerate them with `ovss masks` on this image"
            )
        return image, masks.masks()

    def __getitem__(self, index: int) -> Sample:
        s = self.settings
        gen = sample_generator(s.seed, self.epoch, index)
        image, masks = self.read(index)
        h, w = image.shape[:2]
        nh, nw = resized_shape(h, w, s.short_side, s.max_size)
        if min(nh, nw) < s.crop:
            raise InputError(
                f"{self.paths[index]}: {w}x{h} resizes to {nw}x{nh}, smaller than the {s.crop}px crop; "
                "remove it or lower --set crop=N"
            )
        img = torch.from_numpy(image).permute(2, 0, 1).float()[None]
        img = F.interpolate(img, size=(nh, nw), mode="bilinear", align_corners=False)[0].round().clamp(0, 255)
        m = torch.from_numpy(masks)
        if m.shape[0]:
            m = F.interpolate(m[None].float(), size=(nh, nw), mode="nearest")[0].bool()
        y0 = int(torch.randint(0, nh - s.crop + 1, (), generator=gen))
        x0 = int(torch.randint(0, nw - s.crop + 1, (), generator=gen))
        img = img[:, y0 : y0 + s.crop, x0 : x0 + s.crop]
        m = m[:, y0 : y0 + s.crop, x0 : x0 + s.crop] if m.shape[0] else m.new_zeros((0, s.crop, s.crop))
        if s.color_aug_ssd:
            img = color_ssd(img, gen)
        if s.flip and _chance(gen, 0.5):
            img, m = img.flip(-1), m.flip(-1)
        strong = strong_view(img, gen) if s.strong_aug else img.clone()
        if s.strong_aug and s.cutout:
            y0, y1, x0, x1 = cutout_box(s.crop, s.crop, gen)
            strong[:, y0:y1, x0:x1] = 0
            if m.shape[0]:
                m = m.clone()
                m[:, y0:y1, x0:x1] = False
        if m.shape[0]:
            area = m.flatten(1).sum(1)
            m = m[area.argsort(descending=True, stable=True)]
            m = m[m.flatten(1).any(1)]
        return Sample(img, strong, m)


def collate(samples: list[Sample]) -> list[Sample]:
    return samples


@torch.no_grad()
def dino_masks(dino, standard: torch.Tensor, settings: TrainSettings, seeds: list[int]) -> list[torch.Tensor]:
    """Online DINO masks (official ``get_dino_masks``): DINO patch tokens of the standard view
    (ImageNet-normalised, not L2-normalised) -> Euclidean k-means (random init) -> one mask per cluster,
    nearest-upsampled to the view."""
    from ...masks.kmeans import kmeans
    from ...ops.resize import normalize

    p = dino.patch_size
    s = standard.shape[-1]
    size = max(p, s // p * p)
    pixels = torch.stack([normalize(v, dino.mean, dino.std) for v in standard])
    if size != s:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    feats = dino.patch_features(pixels)  # (B, C, g, g)
    out = []
    for feat, seed in zip(feats, seeds):
        c, gh, gw = feat.shape
        labels, _ = kmeans(
            feat.reshape(c, -1).t().float().cpu(),
            settings.dino_clusters,
            settings.dino_iterations,
            seed=seed,
            tol=settings.dino_tol,
            init="random",
        )
        onehot = F.one_hot(labels, settings.dino_clusters).t().reshape(-1, 1, gh, gw).float()
        up = F.interpolate(onehot, size=(s, s), mode="nearest")[:, 0].bool()
        out.append(up[up.flatten(1).any(1)].to(standard.device))
    return out
