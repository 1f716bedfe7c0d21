"""The model-free parts of automatic mask generation: point grids, crop boxes, box NMS, boxes
and stability scores of masks, run-length encoding, small-region clean-up, and TUSS's
containment filter.

The rules follow Meta's ``SamAutomaticMaskGenerator`` (facebookresearch/segment-anything) so
that ovss reproduces its masks; each function says which rule it implements. Nothing here
needs torchvision, OpenCV or pycocotools.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import numpy as np
import torch

from ..errors import InputError

# ----------------------------------------------------------------------------------- grids


def point_grid(n_per_side: int) -> np.ndarray:
    """``(n*n, 2)`` points (x, y) in [0, 1]: cell centres of an n x n grid, rows of constant y.

    Meta's rule: coordinates ``linspace(1/(2n), 1 - 1/(2n), n)``, x varying fastest. ``n = 0``
    gives an empty grid.
    """
    if n_per_side < 0:
        raise InputError(f"points per side must be >= 0, got {n_per_side}")
    if n_per_side == 0:
        return np.zeros((0, 2))
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer: layer i has ``int(n_per_side / downscale**i)`` points per side."""
    if downscale < 1:
        raise InputError(f"crop_n_points_downscale_factor must be >= 1, got {downscale}")
    return [point_grid(int(n_per_side / (downscale**i))) for i in range(n_layers + 1)]


def crop_boxes(image_hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY, pixels) and their layer index: the whole image, then layer i (1-based)
    with ``2**i x 2**i`` crops overlapping by ``int(overlap_ratio * short_side * 2 / 2**i)`` pixels.

    Meta's rule: crop side ``ceil((overlap * (n - 1) + side) / n)``, crop origins
    ``int((crop - overlap) * k)``, x-major order (all y for the first x, then the next x).
    """
    im_h, im_w = image_hw
    short = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short * (2 / n))
        crop_w = math.ceil((overlap * (n - 1) + im_w) / n)
        crop_h = math.ceil((overlap * (n - 1) + im_h) / n)
        x0s = [int((crop_w - overlap) * k) for k in range(n)]
        y0s = [int((crop_h - overlap) * k) for k in range(n)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer)
    return boxes, layers


# ------------------------------------------------------------------------------ boxes, NMS


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first.

    Same rule as torchvision's ``nms``: a stable sort by descending score, then a box is dropped
    when its IoU with an already kept box exceeds ``iou_threshold``; IoU = inter / (a1 + a2 -
    inter) with areas (x2 - x1) * (y2 - y1), computed in float32.
    """
    n = int(boxes.shape[0])
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(scores.float().cpu(), descending=True, stable=True).indices
    b = boxes.float().cpu()[order]
    area = box_area(b)
    keep_sorted: list[int] = []
    suppressed = np.zeros(n, dtype=bool)
    # The IoU matrix is built in row blocks so that memory stays O(block * n).
    block = max(1, min(n, (1 << 24) // max(n, 1)))
    for start in range(0, n, block):
        stop = min(n, start + block)
        lt = torch.maximum(b[start:stop, None, :2], b[None, :, :2])
        rb = torch.minimum(b[start:stop, None, 2:], b[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        iou = inter / (area[start:stop, None] + area[None, :] - inter)
        over = (iou > iou_threshold).numpy()
        for i in range(start, stop):
            if suppressed[i]:
                continue
            keep_sorted.append(i)
            row = over[i - start]
            row[: i + 1] = False
            suppressed |= row
    return order[torch.tensor(keep_sorted, dtype=torch.long)]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` bool -> ``(N, 4)`` XYXY boxes with *inclusive* right/bottom pixel indices
    (Meta's convention: a one-pixel mask at (x, y) has box [x, y, x, y]); empty masks give 0s."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.long)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    ry = torch.arange(h)
    rx = torch.arange(w)
    bottom = torch.where(rows, ry, -1).amax(dim=1)
    top = torch.where(rows, ry, h).amin(dim=1)
    right = torch.where(cols, rx, -1).amax(dim=1)
    left = torch.where(cols, rx, w).amin(dim=1)
    out = torch.stack([left, top, right, bottom], dim=1)
    empty = ~rows.any(dim=1)
    out[empty] = 0
    return out


def xyxy_to_xywh(box: list[float] | np.ndarray) -> list[float]:
    """Meta's conversion, applied to inclusive boxes: width = x1 - x0 (one less than the pixel count)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """True for boxes (crop frame) within ``atol`` pixels of a crop edge that is not an image edge."""
    offset = torch.tensor([crop_box[0], crop_box[1], crop_box[0], crop_box[1]], dtype=torch.float)
    b = boxes.float() + offset
    near_crop = (b - torch.tensor(crop_box, dtype=torch.float)).abs() <= atol
    near_image = (b - torch.tensor(image_box, dtype=torch.float)).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


# -------------------------------------------------------------------------------- scores


def stability_score(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks thresholded at ``mask_threshold + offset`` and ``- offset``.

    The first mask is inside the second, so the IoU is the ratio of their areas; an empty
    second mask gives NaN (0/0), which no threshold keeps, as in Meta's code.
    """
    flat = logits.flatten(-2)
    inner = (flat > (mask_threshold + offset)).sum(-1, dtype=torch.int32)
    outer = (flat > (mask_threshold - offset)).sum(-1, dtype=torch.int32)
    return inner / outer


# ------------------------------------------------------------------------------------ RLE


def rle_encode(masks: np.ndarray | torch.Tensor) -> list[dict[str, Any]]:
    """``(N, H, W)`` bool -> uncompressed COCO RLEs ``{"size": [H, W], "counts": [...]}``.

    Counts run over the mask in column-major (Fortran) order and start with a run of zeros
    (possibly of length 0), as pycocotools expects.
    """
    m = masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    n, h, w = m.shape
    if n == 0:
        return []
    flat = np.ascontiguousarray(m.astype(bool, copy=False).transpose(0, 2, 1)).reshape(n, h * w)
    change = np.flatnonzero(flat[:, 1:] != flat[:, :-1])  # over the (n, hw - 1) array
    rows, cols = np.divmod(change, h * w - 1) if h * w > 1 else (np.zeros(0, int), np.zeros(0, int))
    bounds = np.searchsorted(rows, np.arange(n + 1))
    out = []
    for i in range(n):
        cuts = cols[bounds[i] : bounds[i + 1]] + 1
        edges = np.concatenate([[0], cuts, [h * w]])
        runs = np.diff(edges).tolist()
        counts = runs if not flat[i, 0] else [0, *runs]
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed or compressed (string) COCO RLE -> ``(H, W)`` bool."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = coco_string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise InputError(f"RLE counts sum to {int(counts.sum())}, expected {h * w} for a {h}x{w} mask")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T.copy()


def rle_area(rle: dict[str, Any]) -> int:
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = coco_string_to_counts(counts)
    return int(sum(counts[1::2]))


def counts_to_coco_string(counts: list[int]) -> str:
    """COCO's compressed RLE string (pycocotools ``rleToString``): from the third count on, each
    count is stored as its difference from the count two places before; each value is written
    in 5-bit groups, least significant first, with 0x20 as the "more groups follow" flag and 48
    added to make a printable character."""
    out = []
    for i, c in enumerate(counts):
        x = int(c)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5  # arithmetic shift: keeps the sign
            more = x != -1 if ch & 0x10 else x != 0
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def coco_string_to_counts(s: str | bytes) -> list[int]:
    """Inverse of :func:`counts_to_coco_string`."""
    data = s.encode() if isinstance(s, str) else s
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def to_coco_rle(rle: dict[str, Any]) -> dict[str, Any]:
    return {"size": list(rle["size"]), "counts": counts_to_coco_string(rle["counts"])}


# ------------------------------------------------------------------- small-region clean-up


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of the True pixels of ``mask``.

    Returns ``(labels, sizes)``: labels 1..K numbered in raster order of each component's first
    pixel (0 = background), and ``sizes[k - 1]`` the pixel count of component k. Uses
    ``scipy.ndimage`` when installed, else a run-length union-find in numpy.
    """
    mask = np.asarray(mask, dtype=bool)
    try:
        from scipy import ndimage
    except ImportError:  # pragma: no cover - exercised where scipy is absent
        labels = _label_runs(mask)
    else:
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    sizes = np.bincount(labels.ravel())[1:]
    return labels, sizes


def _label_runs(mask: np.ndarray) -> np.ndarray:
    """8-connected labelling with runs of each row as nodes and union-find over overlapping runs."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    sr, sc = np.nonzero(d == 1)  # run starts (row, first col)
    _, ec = np.nonzero(d == -1)  # run ends (row, last col + 1)
    n = len(sr)
    labels = np.zeros((h, w), dtype=np.int32)
    if n == 0:
        return labels
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    row_start = np.searchsorted(sr, np.arange(h + 1))
    for r in range(1, h):
        a0, a1 = row_start[r - 1], row_start[r]
        b0, b1 = row_start[r], row_start[r + 1]
        i, j = a0, b0
        while i < a1 and j < b1:
            # 8-connectivity: runs touch if [s, e) intervals overlap after widening by one pixel.
            if sc[i] <= ec[j] and sc[j] <= ec[i]:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
            if ec[i] < ec[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(k) for k in range(n)])
    # A root is its component's smallest run index, and runs are in raster order, so sorted
    # roots number the components in raster order of their first pixel.
    _, inverse = np.unique(roots, return_inverse=True)
    comp = inverse + 1
    for k in range(n):
        labels[sr[k], sc[k] : ec[k]] = comp[k]
    return labels


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh``
    pixels; returns the mask and whether it changed. Meta's rule, with 8-connectivity for both:
    holes are the 8-connected components of the complement (the outside counts too); if every
    island is small, the largest one (first in raster order on ties) is kept."""
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    working = mask ^ holes
    labels, sizes = connected_components(working)
    small = np.flatnonzero(sizes < area_thresh) + 1
    if len(small) == 0:
        return mask, False
    if holes:
        fill = np.concatenate([[0], small])
    else:
        fill = np.setdiff1d(np.arange(1, len(sizes) + 1), small)
        if len(fill) == 0:
            fill = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, fill), True


# ----------------------------------------------------------------- TUSS containment filter


def containment_filter(masks: torch.Tensor, levels: list[int | None], threshold: float) -> list[int]:
    """TUSS's "rock-sand-water" filter (docs/methods.md §1.2): visit levels from whole (2) to
    sub-part (0); every mask of the top level present is kept; a lower-level mask is kept only
    if the largest fraction of its own area covered by one already kept mask of a *higher*
    level is below ``threshold``. Masks of one level are not tested against each other.

    ``masks`` is ``(N, H, W)`` bool; returns the kept indices in their original order.
    """
    n = masks.shape[0]
    if n == 0:
        return []
    lv = np.array([-1 if v is None else v for v in levels])
    flat = masks.reshape(n, -1)
    area = flat.sum(1, dtype=torch.int64).float()
    kept: list[int] = []
    for level in sorted(set(lv.tolist()), reverse=True):
        idx = np.flatnonzero(lv == level)
        if kept:
            cover = _max_overlap(flat, idx, kept) / area[idx].clamp(min=1)
            idx = idx[(cover < threshold).numpy()]
        kept.extend(idx.tolist())
    return sorted(kept)


def _max_overlap(flat: torch.Tensor, rows: np.ndarray, cols: list[int], chunk: int = 64) -> torch.Tensor:
    """For each mask in ``rows``, its largest pixel overlap with a mask in ``cols`` (chunked
    float32 products: exact, since counts stay far below 2**24 per chunk product)."""
    best = torch.zeros(len(rows))
    for a in range(0, len(rows), chunk):
        left = flat[torch.as_tensor(rows[a : a + chunk])].float()
        for b in range(0, len(cols), chunk):
            right = flat[torch.as_tensor(cols[b : b + chunk])].float()
            best[a : a + chunk] = torch.maximum(best[a : a + chunk], (left @ right.T).amax(dim=1))
    return best
