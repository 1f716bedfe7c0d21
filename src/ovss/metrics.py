"""Streaming semantic-segmentation evaluation: one dataset-level confusion matrix, two mIoU conventions.

The field never averages per-image IoUs: every method accumulates a single confusion matrix over the
whole split and derives mIoU from it once (docs/reference-protocol.md §6). :class:`ConfusionMatrix` does exactly
that, shard by shard (``merge`` sums the matrices of data-parallel workers) and resumably (``save`` /
``load``), and :meth:`ConfusionMatrix.results` reports the numbers under a named convention:

* ``"union"``   -- mmseg ``IoUMetric`` and detectron2 0.6: mean over classes with union > 0, so a
  class predicted somewhere but absent from the ground truth counts as IoU 0.
* ``"present"`` -- AlchemyCat ``SegmentationMetric`` (TUSS): mean over classes with at least one
  ground-truth pixel only.

All reported numbers are percentages (0-100), as papers print them.
"""

from __future__ import annotations

import json
import math
import os
import sys
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .io import atomic_path

if TYPE_CHECKING:
    import torch

    LabelMap = np.ndarray | torch.Tensor
else:
    LabelMap = Any

CONVENTIONS = ("union", "present")
_FORMAT = "ovss.confusion/1"


def _check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise InputError(f"unknown mIoU convention {convention!r}; choose one of: {', '.join(CONVENTIONS)}")
    return convention


def _to_numpy(x: Any, what: str) -> np.ndarray:
    """Tensors (any device) and array-likes to a numpy integer array, refusing scores and floats."""
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "ui":
        raise InputError(
            f"{what} has dtype {arr.dtype}; pass integer class indices (e.g. the argmax over class scores)"
        )
    return arr


class ConfusionMatrix:
    """A dataset-level ``(K, K) int64`` confusion matrix; **rows are ground truth, columns predictions**.

    ``matrix[g, p]`` counts pixels of ground-truth class ``g`` predicted as ``p``. Pixels whose ground
    truth equals ``ignore_index`` are dropped before counting, so they affect neither the ground-truth
    nor the prediction totals (as in mmseg and detectron2). ``ignore_index=None`` means no value is
    ignored. Out-of-range values raise :class:`InputError` instead of being silently dropped, because a
    label-space mismatch (e.g. a forgotten ``reduce_zero_label``) would otherwise only show up as a
    plausible-looking but wrong mIoU.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise InputError(
                f"ignore_index {ignore_index} is a valid class index for {num_classes} classes; "
                "use a value outside [0, num_classes), e.g. 255"
            )
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        # Images seen, for reporting (docs/reference-protocol.md §7): a 2-D map is one image, an (N, H, W) batch N.
        self.num_images = 0

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"num_images={self.num_images}, num_pixels={int(self.matrix.sum())})"
        )

    def reset(self) -> None:
        self.matrix[...] = 0
        self.num_images = 0

    def copy(self) -> ConfusionMatrix:
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        out.matrix = self.matrix.copy()
        out.num_images = self.num_images
        return out

    # -- accumulation -------------------------------------------------------------------------

    def update(self, pred: LabelMap, gt: LabelMap) -> None:
        """Add one label map (or a batch of them) to the counts; ``pred`` and ``gt`` have equal shapes."""
        p = _to_numpy(pred, "prediction")
        g = _to_numpy(gt, "ground truth")
        if p.shape != g.shape:
            raise InputError(f"prediction has shape {p.shape} but ground truth has shape {g.shape}; they must match")
        k = self.num_classes
        shape = p.shape
        p = p.ravel()
        g = g.ravel()
        if self.ignore_index is not None:
            keep = g != self.ignore_index
            if not keep.all():
                p = p[keep]
                g = g[keep]
        if g.size:
            self._check_range(g, "ground truth", extra=self.ignore_index)
            self._check_range(p, "prediction")
            # One bincount over the flat index gt*K + pred: a single pass, no per-class loop.
            index = g.astype(np.int64) * k
            index += p.astype(np.int64, copy=False)
            self.matrix += np.bincount(index, minlength=k * k).reshape(k, k)
        self.num_images += 1 if len(shape) <= 2 else int(shape[0])

    def _check_range(self, values: np.ndarray, what: str, extra: int | None = None) -> None:
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi < self.num_classes:
            return
        bad = lo if lo < 0 else hi
        allowed = f"[0, {self.num_classes - 1}]" + (f" or the ignore value {extra}" if extra is not None else "")
        hint = " (check the label mapping, e.g. reduce_zero_label)" if what == "ground truth" else ""
        raise InputError(f"{what} contains the value {bad}, outside the {self.num_classes} classes {allowed}{hint}")

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another shard's counts in place (data-parallel evaluation) and return ``self``."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, not {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise InputError(
                f"cannot merge a matrix for {other.num_classes} classes (ignore {other.ignore_index}) into one "
                f"for {self.num_classes} classes (ignore {self.ignore_index})"
            )
        self.matrix += other.matrix
        self.num_images += other.num_images
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.copy().merge(other)

    # -- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form holding only the nonzero cells (a 171-class matrix is mostly zeros)."""
        rows, cols = np.nonzero(self.matrix)
        return {
            "format": _FORMAT,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "num_images": self.num_images,
            "gt": rows.tolist(),
            "pred": cols.tolist(),
            "count": self.matrix[rows, cols].tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConfusionMatrix:
        """Inverse of :meth:`to_dict`; refuses anything that is not a well-formed saved matrix."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise InputError(f"not a saved confusion matrix (expected format {_FORMAT!r})")
        try:
            out = cls(int(data["num_classes"]), data["ignore_index"])
            out.num_images = int(data.get("num_images", 0))
            rows = np.asarray(data["gt"], dtype=np.int64)
            cols = np.asarray(data["pred"], dtype=np.int64)
            counts = np.asarray(data["count"], dtype=np.int64)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise InputError(f"malformed confusion matrix data ({type(e).__name__}: {e})") from None
        k = out.num_classes
        if not (rows.shape == cols.shape == counts.shape and rows.ndim == 1):
            raise InputError("malformed confusion matrix data: 'gt', 'pred' and 'count' must be equal-length lists")
        if rows.size and (min(rows.min(), cols.min()) < 0 or max(rows.max(), cols.max()) >= k):
            raise InputError(f"malformed confusion matrix data: a cell index is outside [0, {k - 1}]")
        if rows.size and counts.min() < 0:
            raise InputError("malformed confusion matrix data: negative count")
        np.add.at(out.matrix, (rows, cols), counts)
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write an ``.npz`` atomically, so a crash mid-write never leaves a truncated checkpoint."""
        meta = {"format": _FORMAT, "num_classes": self.num_classes, "ignore_index": self.ignore_index}
        meta["num_images"] = self.num_images
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, matrix=self.matrix, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConfusionMatrix:
        """Read a matrix written by :meth:`save` (e.g. to resume an interrupted evaluation)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                matrix = z["matrix"]
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise InputError(f"{path}: not a saved confusion matrix ({type(e).__name__})") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise InputError(f"{path}: not a saved confusion matrix (expected format {_FORMAT!r})")
        try:
            out = cls(int(meta["num_classes"]), meta["ignore_index"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: damaged confusion matrix metadata ({type(e).__name__}: {e})") from None
        if matrix.shape != out.matrix.shape or matrix.dtype.kind not in "ui" or (matrix.size and matrix.min() < 0):
            raise InputError(f"{path}: stored matrix has shape {matrix.shape} / dtype {matrix.dtype}; file is damaged")
        out.matrix = matrix.astype(np.int64)
        out.num_images = int(meta.get("num_images", 0))
        return out

    # -- results ------------------------------------------------------------------------------

    def results(self, convention: str = "union") -> dict[str, Any]:
        """mIoU, aAcc, mAcc, fwIoU and per-class IoU/Acc, **in percent (0-100)**, under ``convention``.

        ``per_class_iou`` holds NaN for classes that do not enter the mean (union 0 under ``"union"``,
        no ground-truth pixel under ``"present"``), so ``mIoU == nanmean(per_class_iou)`` in both.
        ``per_class_acc`` (TP / G) is NaN where a class has no ground-truth pixel; mAcc, aAcc and fwIoU
        are the same in both conventions. Everything is NaN on an empty matrix.
        """
        _check_convention(convention)
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        gt = m.sum(axis=1)
        pred = m.sum(axis=0)
        union = gt + pred - tp
        counted = union > 0 if convention == "union" else gt > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(counted, tp / union, np.nan) * 100.0
            acc = np.where(gt > 0, tp / gt, np.nan) * 100.0
        total = gt.sum()
        present = gt > 0
        return {
            "convention": convention,
            "mIoU": _mean(iou[counted]),
            "aAcc": float(tp.sum() / total * 100.0) if total else math.nan,
            "mAcc": _mean(acc[present]),
            "fwIoU": _fw(tp, gt, union, total),  # detectron2: IoU weighted by ground-truth share
            "per_class_iou": [float(v) for v in iou],
            "per_class_acc": [float(v) for v in acc],
            "num_pixels": int(total),
            "num_images": self.num_images,
            "num_classes_in_mean": int(counted.sum()),
        }


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _fw(tp: np.ndarray, gt: np.ndarray, union: np.ndarray, total: float) -> float:
    """Frequency-weighted IoU over ground-truth-present classes (where union >= G > 0)."""
    if not total:
        return math.nan
    present = gt > 0
    return float((tp[present] / union[present] * gt[present]).sum() / total * 100.0)


# -- tables ------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _rows(results: dict[str, Any], class_names: Sequence[str]) -> list[tuple[str, str, str]]:
    iou, acc = results["per_class_iou"], results["per_class_acc"]
    if len(class_names) != len(iou):
        raise InputError(f"{len(class_names)} class names given for a matrix of {len(iou)} classes")
    return [(str(n), _fmt(i), _fmt(a)) for n, i, a in zip(class_names, iou, acc)]


def _summary(results: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"mIoU ({results['convention']} convention)", _fmt(results["mIoU"])),
        ("aAcc", _fmt(results["aAcc"])),
        ("mAcc", _fmt(results["mAcc"])),
    ]


def _footnote(results: dict[str, Any]) -> str:
    return (
        f"percent; {results['num_pixels']} labelled pixels, {results.get('num_images', '?')} images, "
        f"{results.get('num_classes_in_mean', '?')} classes in the mIoU; '-' = left out of the mean"
    )


def format_table(results: dict[str, Any], class_names: Sequence[str]) -> str:
    """A plain-text table (per-class IoU and Acc, then mIoU/aAcc/mAcc) for printing in a terminal."""
    rows = _rows(results, class_names)
    width = max([5, *(len(r[0]) for r in rows)])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    lines += [f"{n:<{width}}  {i:>6}  {a:>6}" for n, i, a in rows]
    lines.append("-" * (width + 16))
    summary = _summary(results)
    label_width = max(len(k) for k, _ in summary)
    lines += [f"{k:<{label_width}}  {v:>6}" for k, v in summary]
    lines.append(f"({_footnote(results)})")
    return "\n".join(lines)


def to_markdown(results: dict[str, Any], class_names: Sequence[str]) -> str:
    """The same table as :func:`format_table`, in Markdown (for reports and READMEs)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| class | IoU | Acc |", "|---|---:|---:|"]
    lines += [f"| {cell(n)} | {i} | {a} |" for n, i, a in _rows(results, class_names)]
    lines += ["", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in _summary(results)]
    lines += ["", f"_{_footnote(results)}_"]
    return "\n".join(lines)
