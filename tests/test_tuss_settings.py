"""TUSS's four supervision settings on the synthetic world: more supervision, better segmentation.

The world's CLIP text is bent so the zero-shot classifier confuses two pairs of classes (see
``ovss.testing.tuss_settings``); tags, some labels or all labels must each correct part of it.
"""

from __future__ import annotations

import torch

from ovss.testing.tuss_settings import compare_settings


def test_more_supervision_segments_better(tmp_path):
    torch.set_num_threads(1)
    r = compare_settings(tmp_path, n_train=48, n_test=8, labelled=0.25, probe_iters=300)
    ov, ws, ss, fs = (r[s]["test_mIoU"] for s in ("ovss", "wsss", "sss", "fsss"))
    print({s: r[s]["test_mIoU"] for s in ("ovss", "wsss", "sss", "fsss")}, "oracle", r["mask_oracle_test_mIoU"])
    assert ov < 70  # the drift really hurts zero-shot
    assert ws > ov + 5 and ss > ov + 5  # tags or a quarter of the labels correct it
    assert fs > ws and fs >= ss  # labels everywhere are at least as good as a quarter of them
    assert fs <= r["mask_oracle_test_mIoU"] + 0.1  # nobody beats painting each mask with its true class
    assert r["sss"]["selected_on_heldout"] and r["fsss"]["selected_on_heldout"]
    assert not r["wsss"]["selected_on_heldout"]  # no pixel labels: the fixed defaults
