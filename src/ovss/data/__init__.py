"""Benchmark datasets: readers for the standard layouts, label converters, class names.

>>> from ovss.data import open_dataset
>>> ds = open_dataset("ade20k150", "/data")          # /data/ADEChallengeData2016/...
>>> sample = ds[0]
>>> label = ds.load_label(sample)                    # (H, W) int64, 0..149 and 255
"""

from .check import CheckReport, check_dataset
from .classes import CLASS_NAMES, benchmark_class_names, class_names
from .convert import (
    ConvertCounts,
    cityscapes_to_train_ids,
    convert_cityscapes,
    convert_coco_object,
    convert_coco_stuff,
    panoptic_segment_areas,
    panoptic_to_semantic,
    read_panoptic_ids,
    stuffthingmap_to_171,
    stuffthingmap_to_object,
)
from .datasets import DATASETS, DatasetInfo, Sample, SegDataset, image_folder, open_dataset
from .labels import read_label_png, reduce_zero_label

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "CheckReport",
    "ConvertCounts",
    "DatasetInfo",
    "Sample",
    "SegDataset",
    "benchmark_class_names",
    "check_dataset",
    "cityscapes_to_train_ids",
    "class_names",
    "convert_cityscapes",
    "convert_coco_object",
    "convert_coco_stuff",
    "image_folder",
    "open_dataset",
    "panoptic_segment_areas",
    "panoptic_to_semantic",
    "read_label_png",
    "read_panoptic_ids",
    "reduce_zero_label",
    "stuffthingmap_to_171",
    "stuffthingmap_to_object",
]
