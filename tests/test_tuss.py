"""TUSS open-vocabulary: painting rule, the synthetic world, and a real photo with tiny models."""

from __future__ import annotations

import numpy as np
import torch

from ovss import Segmenter
from ovss.masks.maskset import MaskSet
from ovss.testing import PALETTE, SyntheticCLIP, make_dataset, pixel_accuracy
from ovss.testing.standins import SyntheticMaskGenerator


class _Fixed:
    """A mask generator returning given masks and levels."""

    name = "fixed"

    def __init__(self, masks, levels):
        self.masks, self.levels = masks, levels

    def generate(self, image):
        h, w = image.shape[:2]
        recs = [{"segmentation": m, "area": int(m.sum()), "predicted_iou": 0.9, "level": lv}
                for m, lv in zip(self.masks, self.levels)]  # fmt: skip
        return MaskSet(recs, (h, w))


def test_synthetic_scenes_are_recovered():
    torch.set_num_threads(1)
    names = list(PALETTE)
    scenes = make_dataset(3, seed=7, size=(160, 192), classes=names, n_regions=4, noise=20, texture=15)
    seg = Segmenter("tuss", clip=SyntheticCLIP(), sam=SyntheticMaskGenerator(), device="cpu", templates="simple",
                    short_side=160)  # fmt: skip
    for scene in scenes:
        pred = seg.segment(scene.image, names).labels
        assert pixel_accuracy(pred, scene.labels) > 0.9


def test_whole_level_masks_are_painted_last():
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    rgb[:, :] = PALETTE["red"]
    rgb[16:48, 16:48] = PALETTE["blue"]
    inner = np.zeros((64, 64), bool)
    inner[16:48, 16:48] = True
    whole = np.ones((64, 64), bool)
    names = ["red", "blue"]
    kw = dict(clip=SyntheticCLIP(), device="cpu", templates="simple", short_side=64, window=None, global_weight=1.0)
    # part (level 0) under whole (level 2): the whole mask is painted last and covers the part
    out = Segmenter("tuss", sam=_Fixed([inner, whole], [0, 2]), **kw).segment(rgb, names).labels
    assert len(np.unique(out)) == 1
    # the part as a whole-level mask too: equal levels, the more confident (the pure blue part) goes last
    out = Segmenter("tuss", sam=_Fixed([whole, inner], [2, 2]), **kw).segment(rgb, names).labels
    assert (out[inner] == 1).all() and (out[~inner] == 0).all()


def test_real_photo_with_tiny_models(evaldata):
    seg = Segmenter("tuss", device="cpu", unpainted="dense")
    result = seg.segment(evaldata / "vainf_voc_samples/samples/0_image.png", "cat; dog; person", background="words",
                         return_probs=True)  # fmt: skip
    assert result.labels.shape == result.probs.shape[1:] and result.probs.shape[0] == 4
    assert result.info["models"] == {"clip": "tiny-random", "sam": "tiny-random"}
