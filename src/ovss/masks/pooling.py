"""Mask pooling (mean dense feature inside each mask) and mask refinement of a label map.

* :func:`mask_pool` - TUSS's rule (docs/methods.md §1.3): upsample the (D, h, w) feature map
  bilinearly to the mask resolution and average it over each mask's pixels. Computed without
  forming the (D, H, W) upsampled map: bilinear upsampling is ``M_y F M_x^T``, so the mean over a
  mask m is ``<M_y^T m M_x, F> / |m|``, one small weight map per mask. ``mode="area"`` instead
  averages the features with each mask's area-downsampled coverage of the feature cells.
* :func:`refine_labels` - SAM/SAM2 refinement (docs/methods.md §5.8): every region takes the most
  frequent label inside it (or the argmax of its summed logits); pixels outside all regions keep
  their label.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..ops.resize import bilinear_matrix
from .maskset import MaskSet

MaskInput = MaskSet | np.ndarray | torch.Tensor


def _as_masks(masks: MaskInput) -> torch.Tensor:
    if isinstance(masks, MaskSet):
        masks = masks.masks()
    m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise InputError(f"masks must be (N, H, W), got shape {tuple(m.shape)}")
    return m.bool()


def mask_pool(
    features: torch.Tensor, masks: MaskInput, mode: str = "upsample", chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature inside each mask.

    ``features``: ``(D, h, w)``; ``masks``: ``(N, H, W)`` bool at any resolution (or a MaskSet).
    Returns ``(N, D)`` pooled features (unnormalised) and ``(N,)`` mask areas in mask pixels.
    An empty mask pools to zeros with area 0.

    ``mode="upsample"`` (TUSS): mean of the bilinearly upsampled (align_corners=False) features
    over the mask's pixels. ``mode="area"``: features weighted by the fraction of each feature
    cell the mask covers (masks area-resized to the feature grid), cheaper for huge masks.
    """
    if features.ndim != 3:
        raise InputError(f"features must be (D, h, w), got shape {tuple(features.shape)}")
    m = _as_masks(masks)
    n, big_h, big_w = m.shape
    d, h, w = features.shape
    feats = features.float().reshape(d, h * w).T  # (hw, D)
    area = m.flatten(1).sum(1).float()
    if n == 0:
        return torch.zeros(0, d), area
    out = torch.zeros(n, d)
    if mode == "upsample":
        my = bilinear_matrix(big_h, h).to(feats.device)  # (H, h)
        mx = bilinear_matrix(big_w, w).to(feats.device)  # (W, w)
        for a in range(0, n, chunk):
            part = m[a : a + chunk].to(feats.device).float()
            weights = my.T @ part @ mx  # (k, h, w): the mask's weight on each feature cell
            out[a : a + chunk] = (weights.reshape(-1, h * w) @ feats).cpu()
        return out / area.clamp(min=1)[:, None], area
    if mode == "area":
        for a in range(0, n, chunk):
            part = m[a : a + chunk].to(feats.device).float()[:, None]
            cover = F.adaptive_avg_pool2d(part, (h, w))[:, 0].reshape(-1, h * w)  # (k, hw)
            total = cover.sum(1, keepdim=True)
            out[a : a + chunk] = ((cover @ feats) / total.clamp(min=1e-12)).cpu()
        return out, area
    raise InputError(f"unknown pooling mode {mode!r}; use 'upsample' or 'area'")


def region_map(masks: MaskInput | None, shape: tuple[int, int] | None = None) -> np.ndarray:
    """``(H, W)`` int map of non-overlapping regions (0 = none) from a mask list: masks are
    painted largest first, so a smaller mask inside a larger one keeps its own pixels. An
    integer array is taken as an instance-id map already."""
    if isinstance(masks, MaskSet):
        return masks.instance_map("area")
    arr = masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if arr.ndim == 2 and arr.dtype != bool:
        return arr.astype(np.int64)
    m = arr.astype(bool)
    if m.ndim == 2:
        m = m[None]
    out = np.zeros(m.shape[1:] if len(m) else (shape or (0, 0)), dtype=np.int64)
    order = np.argsort(-m.reshape(len(m), -1).sum(1), kind="stable")
    for i in order:
        out[m[i]] = i + 1
    return out


def refine_labels(
    labels: np.ndarray | torch.Tensor,
    masks: MaskInput,
    logits: np.ndarray | torch.Tensor | None = None,
    vote: str = "labels",
    min_area: int = 0,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Give every mask region one label (docs/methods.md §5.8).

    ``labels``: ``(H, W)`` int label map (after any background thresholding). ``masks``: a
    MaskSet, ``(N, H, W)`` bool masks (overlaps resolved largest first, see :func:`region_map`)
    or an ``(H, W)`` int instance map (0 = no region). ``vote="labels"``: a region takes the most
    frequent label among its pixels (ties: the smallest label); ``vote="logits"``: the argmax of
    the mean of ``logits`` ``(C, H, W)`` over its pixels. Regions with fewer than ``min_area``
    pixels, and pixels outside every region, keep their labels. Pixels labelled
    ``ignore_index`` do not vote (and keep their label if their region has no other vote).
    """
    lab = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.ndim != 2:
        raise InputError(f"labels must be (H, W), got shape {lab.shape}")
    regions = region_map(masks, lab.shape)
    if regions.shape != lab.shape:
        raise InputError(f"masks are {regions.shape[1]}x{regions.shape[0]}, labels {lab.shape[1]}x{lab.shape[0]}")
    r = regions.ravel()
    n_regions = int(r.max(initial=0)) + 1
    area = np.bincount(r, minlength=n_regions)
    if vote == "labels":
        flat = lab.ravel().astype(np.int64)
        valid = flat >= 0 if ignore_index is None else (flat >= 0) & (flat != ignore_index)
        n_classes = int(flat[valid].max(initial=0)) + 1
        counts = np.bincount(r[valid] * n_classes + flat[valid], minlength=n_regions * n_classes)
        counts = counts.reshape(n_regions, n_classes)
        winner = counts.argmax(1)
        has_vote = counts.sum(1) > 0
    elif vote == "logits":
        if logits is None:
            raise InputError("vote='logits' needs the (C, H, W) logits")
        lg = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).float()
        if lg.ndim != 3 or tuple(lg.shape[1:]) != lab.shape:
            raise InputError(f"logits must be (C, {lab.shape[0]}, {lab.shape[1]}), got {tuple(lg.shape)}")
        sums = torch.zeros(n_regions, lg.shape[0]).index_add_(0, torch.from_numpy(r), lg.reshape(lg.shape[0], -1).T)
        winner = sums.argmax(1).numpy()
        has_vote = area > 0
    else:
        raise InputError(f"unknown vote {vote!r}; use 'labels' or 'logits'")
    change = has_vote & (area >= max(min_area, 1))
    change[0] = False  # region 0 is "no mask"
    table = np.where(change, winner, -1)
    new = table[r]
    out = np.where(new >= 0, new, lab.ravel()).astype(lab.dtype, copy=False)
    return out.reshape(lab.shape)
