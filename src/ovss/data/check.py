"""Checking that a dataset is complete and in the expected encoding before a long evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .datasets import SegDataset


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


def check_dataset(ds: SegDataset, decode: int | None = 20, max_problems: int = 10) -> CheckReport:
    """Check every sample's files exist; decode the first ``decode`` labels (all if None).

    A decoded label must be readable, hold only valid values for the benchmark and have the
    size of its image.
    """
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
            label = ds.load_label(sample)
            with Image.open(sample.image) as im:
                w, h = im.size
        except InputError as e:
            problem(str(e))
            continue
        except (UnidentifiedImageError, OSError) as e:
            problem(f"{sample.image}: not a readable image ({str(e).splitlines()[0][:100]})")
            continue
        report.decoded += 1
        if label.shape != (h, w):
            problem(f"{sample.label}: label is {label.shape[1]}x{label.shape[0]} but its image is {w}x{h}")
    return report
