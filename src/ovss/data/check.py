"""Checking that a dataset is complete and in the expected encoding before a long evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .datasets import Sample, SegDataset


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`: how many samples, how many labels were decoded, what is wrong."""

    key: str
    samples: int
    decoded: int = 0
    problem_count: int = 0
    problems: list[str] = field(default_factory=list)  # the first ``max_problems``, one line each

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


class PairMismatch(InputError):
    """Both files of a pair decode, but the label does not have its image's size."""


def check_sample(ds: SegDataset, sample: Sample) -> np.ndarray:
    """Check one (image, label) pair as ``ovss data check`` does and return the label (training
    ids): both files exist and decode, the label is an index image (P/L/16-bit, not colour), its
    values are classes of the benchmark or ignore, and it has its image's size. Raises a one-line
    InputError otherwise (:class:`PairMismatch` for the size); the evaluation of
    ``--method ground-truth`` calls this for every sample, so a mis-sized label cannot score 100 mIoU."""
    if not sample.image.is_file():
        raise InputError(f"{sample.image}: image not found")
    label = ds.load_label(sample)  # existence, mode and values, with the dataset's encoding
    try:
        with Image.open(sample.image) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{sample.image}: not a readable image ({str(e).splitlines()[0][:100]})") from None
    if label.shape != (h, w):
        raise PairMismatch(f"{sample.label}: label is {label.shape[1]}x{label.shape[0]} but its image is {w}x{h}")
    return label


def check_dataset(ds: SegDataset, decode: int | None = 20, max_problems: int = 10) -> CheckReport:
    """Check every sample's files exist; decode the first ``decode`` labels (all if None) and
    check each decoded pair with :func:`check_sample`."""
    report = CheckReport(ds.key, len(ds))

    def problem(message: str) -> None:
        report.problem_count += 1
        if len(report.problems) < max_problems:
            report.problems.append(message)

    for i, sample in enumerate(ds):
        if not sample.image.is_file():
            problem(f"{sample.image}: image not found")
            continue
        if sample.label is None:
            continue
        if not sample.label.is_file():
            problem(f"{sample.label}: label not found")
            continue
        if decode is not None and i >= decode:
            continue
        try:
            check_sample(ds, sample)
        except PairMismatch as e:
            problem(str(e))  # both files decoded
        except InputError as e:
            problem(str(e))
            continue
        report.decoded += 1
    return report
