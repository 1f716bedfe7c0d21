"""Robust image reading and atomic file writing.

Every image enters ovss through :func:`load_image`, which accepts paths, PIL images and numpy
arrays of any common mode (EXIF-rotated, greyscale, RGBA, 16-bit, palette) and returns an
``(H, W, 3) uint8`` RGB array, or raises an :class:`InputError` naming the problem.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

ImageInput = str | os.PathLike | Image.Image | np.ndarray

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
# Largest image accepted, in pixels. Bigger inputs are refused before decoding, so that a
# 20000x20000 photo is a one-line error and not an out-of-memory crash.
DEFAULT_MAX_PIXELS = 64_000_000
MIN_SIDE = 2
MAX_ASPECT = 64  # long side / short side


def load_image(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return ``image`` as an ``(H, W, 3) uint8`` RGB array."""
    if isinstance(image, np.ndarray):
        arr = _array_to_rgb(image)
    elif isinstance(image, Image.Image):
        arr = _pil_to_rgb(image, "<PIL image>", max_pixels)
    elif isinstance(image, (str, os.PathLike)):
        arr = _read_path(Path(image), max_pixels)
    else:
        raise InputError(f"cannot read an image from a {type(image).__name__}; pass a path, PIL image or array")
    h, w = arr.shape[:2]
    problem = shape_problem(w, h, max_pixels)
    if problem:
        raise InputError(problem)
    return arr


def shape_problem(w: int, h: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why an image of this size cannot be segmented, or None: too small, too thin or too big."""
    if min(h, w) < MIN_SIDE:
        return f"image is {w}x{h} pixels; ovss needs at least {MIN_SIDE}x{MIN_SIDE}"
    if max(h, w) > MAX_ASPECT * min(h, w):
        return (
            f"image is {w}x{h} pixels, too thin to segment (sides over {MAX_ASPECT}:1: a model patch would not fit "
            "its short side after resizing); crop it into tiles"
        )
    if h * w > max_pixels:
        return _too_big(w, h, max_pixels)
    return None


def _too_big(w: int, h: int, max_pixels: int) -> str:
    return (
        f"image is {w}x{h} ({w * h / 1e6:.0f} MP), over the {max_pixels / 1e6:.0f} MP limit; "
        "downscale it or raise the limit (--max-pixels)"
    )


def _read_path(path: Path, max_pixels: int) -> np.ndarray:
    check_image_file(path, max_pixels)  # header checks first: no decoding of a refused image
    try:
        with _no_pil_size_limit(), Image.open(path) as im:
            return _pil_to_rgb(im, str(path), max_pixels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: not a readable image ({_short(e)}); re-save it as PNG or JPEG") from None


@contextlib.contextmanager
def _no_pil_size_limit() -> Iterator[None]:
    """PIL refuses huge images at open with its own error; ovss applies its own limit with a clear one."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:120]


def _pil_to_rgb(im: Image.Image, name: str, max_pixels: int) -> np.ndarray:
    w, h = im.size
    if w * h > max_pixels:
        raise InputError(f"{name}: " + _too_big(w, h, max_pixels))
    im.load()  # decode now so truncated files fail here, with the file's name
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _array_to_rgb(np.asarray(im))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)  # transparent pixels become white
    return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(f"image array has shape {arr.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float64) / (np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else 1.0)
        arr = arr[..., :3] * alpha + (1 - alpha) * _white(arr.dtype)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind in "ui":
        top = 255 if arr.max(initial=0) <= 255 else (65535 if arr.max() <= 65535 else float(arr.max()))
        return np.clip(np.round(arr.astype(np.float64) * 255.0 / top), 0, 255).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError("image array contains NaN or infinite values")
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        return np.clip(np.round(arr * 255.0 / top), 0, 255).astype(np.uint8)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    raise InputError(f"image array has unsupported dtype {arr.dtype}")


def _white(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.dtype(dtype).kind in "ui" else 1.0


def check_image_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Cheap pre-flight check from the file header (no decoding): exists, non-empty, known format, size."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an image file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    try:
        with _no_pil_size_limit(), Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: not a readable image ({_short(e)}); re-save it as PNG or JPEG") from None
    problem = shape_problem(w, h, max_pixels)
    if problem:
        raise InputError(f"{path}: {problem}")


def is_scratch_file(name: str) -> bool:
    """A file no job should read: a killed write's temporary ``.NAME.*.part.EXT`` (:func:`atomic_path`)
    or macOS's ``._NAME`` metadata beside a copied file. Other names that start with a dot are
    legal images and stay inputs."""
    return name.startswith("._") or (name.startswith(".") and re.search(r"\.part(\.[^.]*)?$", name) is not None)


def find_images(inputs: list[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[Path]:
    """Expand files and directories (recursively, sorted) into image paths; files inside the
    folder ``exclude`` (the output folder, when it lies inside an input folder) are left out of
    the directory search, so a re-run never takes its own outputs for inputs. Scratch files
    (:func:`is_scratch_file`) are left out of the search too."""
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not is_scratch_file(p.name)
                and not _inside(p, skip)
            )
            if not files:
                raise InputError(f"{path}: directory holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
            found.extend(files)
        elif path.exists():
            found.append(path)
        else:
            raise InputError(f"{path}: no such file or directory")
    return found


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and folder in path.resolve().parents


def _host_tag() -> str:
    """Eight hex digits naming this machine in temporary-file names (hostnames may hold dots)."""
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


# .NAME.<host>-<pid>.<random>.part<suffix>: whose temporary file it is, so that only a dead
# process's leftovers are ever removed (a live process on the same folder keeps its own).
_PART = re.compile(r"\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[A-Za-z0-9_]+\.part")
LEGACY_PART_AGE_S = 3600.0  # untagged parts (older ovss) count as stale after an hour


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name stays under the 255-byte file-name limit however long the output's name is
    prefix = f".{path.name[:150]}.{_host_tag()}-{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".part" + path.suffix[:20], dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a process we may not signal still runs). A zombie
    does not: a killed job's processes stay zombies until their parent or init reaps them, which a
    container's init may never do, and their locks must not block the resume."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state letter follows the parenthesised command name
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def is_stale_part(path: Path) -> bool:
    """A temporary file of :func:`atomic_path` whose writer is gone: tagged with this machine and a
    dead pid, or an untagged one (older ovss) not touched for an hour. Parts of live processes and
    of other machines (whose pids cannot be checked from here) are never stale."""
    match = _PART.search(path.name)
    if match is None:
        try:
            return time.time() - path.stat().st_mtime > LEGACY_PART_AGE_S
        except FileNotFoundError:
            return False
    return match["host"] == _host_tag() and not pid_alive(int(match["pid"]))


def remove_stale_parts(folder: str | os.PathLike) -> int:
    """Delete the temporary files that killed processes left in ``folder`` (see :func:`is_stale_part`);
    returns how many. Finished outputs and live processes' temporary files are never touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.rglob(".*.part*") if p.is_file() and is_stale_part(p)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def output_is_complete(path: Path) -> bool:
    """Cheap check that a finished output is whole: a PNG/JPEG passes PIL's ``verify`` (chunk CRCs,
    no decoding), a safetensors file has the length its header announces, a JSON file parses;
    anything else must exist and be non-empty. A truncated file beside a valid marker fails."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            with Image.open(path) as im:
                im.verify()
            return True
        if suffix == ".safetensors":
            return _safetensors_complete(path)
        if suffix == ".json":
            json.loads(path.read_text())
        return True
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError):
        return False


def _safetensors_complete(path: Path) -> bool:
    """The safetensors layout: 8-byte little-endian header length, JSON header, then the data."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return path.stat().st_size == 8 + size + end


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _finite(data: Any) -> Any:
    """NaN and infinities become null: JSON has no NaN, and strict readers refuse it."""
    if isinstance(data, float):
        return data if np.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    if isinstance(data, np.generic):
        return _finite(data.item())
    return data


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False, default=str) + "\n")


def save_image(path: str | os.PathLike, image: Image.Image, **kwargs: Any) -> None:
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **kwargs)
