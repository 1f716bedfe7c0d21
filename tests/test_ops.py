"""Windows, resizing, post-processing and PAMR against direct computations of their rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.ops.pamr import pamr
from ovss.ops.postprocess import postprocess
from ovss.ops.resize import bilinear_matrix, keep_ratio_size, row_bands, upsample_rows
from ovss.ops.windows import slide, window_grid


def test_keep_ratio_size_matches_protocol_examples():
    assert keep_ratio_size(375, 500, 336) == (336, 448)  # VOC: 6 windows at 224/112
    assert keep_ratio_size(1024, 2048, 560) == (560, 1120)  # Cityscapes at S = 560
    assert keep_ratio_size(100, 20000, 336) == (10, 2048)  # long side capped at 2048


@pytest.mark.parametrize(
    "size, crop, stride, count",
    [((336, 448), 224, 112, 6), ((560, 1120), 224, 112, 36), ((100, 150), 224, 112, 1), ((336, 448), 336, 112, 2)],
)
def test_window_counts(size, crop, stride, count):
    boxes = window_grid(*size, crop, stride)
    assert len(boxes) == count
    covered = np.zeros(size, dtype=int)
    for y1, y2, x1, x2 in boxes:
        assert y2 - y1 == min(crop, size[0]) and x2 - x1 == min(crop, size[1])
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1


def test_window_rule_last_window_shifted_back():
    # rows = floor((H - c + t - 1) / t) + 1 ; last window ends at the border
    assert window_grid(300, 224, 224, 112) == [(0, 224, 0, 224), (76, 300, 0, 224)]


def test_slide_averages_overlaps_exactly():
    torch.manual_seed(0)
    pixels = torch.randn(3, 300, 340)

    def score_fn(batch):  # scores at the "token grid" of 1/8 the window size
        return F.avg_pool2d(batch[:, :2], 8)

    out = slide(pixels, score_fn, (224, 112), batch_size=3)
    total = torch.zeros(2, 300, 340)
    count = torch.zeros(1, 300, 340)
    for y1, y2, x1, x2 in window_grid(300, 340, 224, 112):
        s = score_fn(pixels[None, :, y1:y2, x1:x2])
        total[:, y1:y2, x1:x2] += F.interpolate(s, size=(y2 - y1, x2 - x1), mode="bilinear")[0]
        count[:, y1:y2, x1:x2] += 1
    assert torch.allclose(out, total / count, atol=1e-6)
    whole = slide(pixels, score_fn, None)
    assert torch.allclose(whole, F.interpolate(score_fn(pixels[None]), size=(300, 340), mode="bilinear")[0], atol=1e-6)


def test_slide_padding_crops_back():
    pixels = torch.ones(3, 50, 70)
    seen = []

    def score_fn(batch):
        seen.append(tuple(batch.shape[-2:]))
        return batch[:, :1, ::16, ::16]

    out = slide(pixels, score_fn, None, pad_to=16)
    assert seen == [(64, 80)] and out.shape == (1, 50, 70)


@pytest.mark.parametrize("out_size, in_size", [(375, 21), (500, 28), (7, 7), (10, 3), (3, 10)])
def test_bilinear_matrix_equals_interpolate(out_size, in_size):
    x = torch.randn(4, in_size, in_size + 3)
    ref = F.interpolate(x[None], size=(out_size, out_size + 5), mode="bilinear", align_corners=False)[0]
    ours = upsample_rows(x, (out_size, out_size + 5))
    assert torch.allclose(ours, ref, atol=1e-5)
    band = slice(out_size // 3, out_size // 3 + 2)
    assert torch.allclose(upsample_rows(x, (out_size, out_size + 5), band), ref[:, band], atol=1e-5)
    assert bilinear_matrix(out_size, in_size).sum(1).allclose(torch.ones(out_size))


def _sclip_reference(scores, query_class, logit_scale, prob_thd, area_thd):
    """SCLIP's postprocess_result, written with one-hot class indices as in the reference code."""
    probs = (scores * logit_scale).softmax(0)
    qc = torch.tensor(query_class)
    n_cls = int(qc.max()) + 1
    one_hot = F.one_hot(qc, n_cls).T.view(n_cls, len(query_class), 1, 1).float()
    cls = (probs[None] * one_hot).max(1)[0]
    if area_thd is not None:
        pred = F.one_hot(cls.argmax(0), n_cls).float()
        area = pred[:, :, 1:].sum((0, 1), keepdim=True)
        area = (area > area_thd * area.sum()).float()
        cls[1:] *= area.transpose(0, -1)
    lab = cls.argmax(0)
    lab[cls.max(0)[0] < prob_thd] = 0
    return lab, cls


@pytest.mark.parametrize("area_thd", [None, 0.1, 0.3])
@pytest.mark.parametrize("prob_thd", [0.0, 0.3])
def test_postprocess_matches_sclip_rule(area_thd, prob_thd):
    torch.manual_seed(1)
    query_class = [0, 0, 0, 1, 2, 2, 3]
    scores = torch.randn(7, 40, 30) * 0.05
    ref_lab, ref_probs = _sclip_reference(scores, query_class, 40.0, prob_thd, area_thd)
    lab, probs = postprocess(
        lambda rows: scores[:, rows],
        (40, 30),
        query_class,
        4,
        logit_scale=40.0,
        prob_thd=prob_thd,
        area_thd=area_thd,
        has_background=True,
        bands=list(row_bands(40, 30, 7, budget=7 * 30 * 7)),
        return_probs=True,
    )
    assert torch.equal(lab, ref_lab)
    assert torch.allclose(probs, ref_probs, atol=1e-6)


def test_postprocess_area_thd_drops_a_small_class():
    scores = torch.zeros(3, 10, 10)
    scores[0] = 1.0  # background everywhere ...
    scores[1, :, :6] = 2.0  # ... except class 1 on 60 pixels
    scores[2, 0, 6:] = 2.0  # and class 2 on 4 pixels: 4/64 < 0.1 of the foreground
    kwargs = dict(logit_scale=10.0, has_background=True)
    lab, _ = postprocess(lambda r: scores[:, r], (10, 10), [0, 1, 2], 3, **kwargs)
    assert (lab == 2).sum() == 4
    lab, _ = postprocess(lambda r: scores[:, r], (10, 10), [0, 1, 2], 3, area_thd=0.1, **kwargs)
    assert (lab == 2).sum() == 0 and (lab == 1).sum() == 60


def _pamr_reference(image, mask, iters, dilations):
    """Literal convolutional form of the PAMR rule (docs/methods.md §5.7)."""
    k8 = torch.zeros(8, 1, 3, 3)
    pos = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    for i, (a, b) in enumerate(pos):
        k8[i, 0, a, b] = 1
    k9 = torch.zeros(9, 1, 3, 3)
    for i in range(9):
        k9[i, 0, i // 3, i % 3] = 1

    def gather(x, kernel):  # (C, H, W) -> (C, P, H, W)
        c, h, w = x.shape
        outs = [F.conv2d(F.pad(x.view(c, 1, h, w), [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
        return torch.cat(outs, 1)

    std = gather(image, k9).std(1, keepdim=True)
    diff = (image[:, None] - gather(image, k8)).abs()
    aff = (-diff / (1e-8 + 0.1 * std)).mean(0).softmax(0)
    for _ in range(iters):
        mask = (gather(mask, k8) * aff[None]).sum(1)
    return mask


def test_pamr_matches_reference():
    torch.manual_seed(2)
    image = torch.randn(3, 37, 45)
    scores = torch.rand(4, 37, 45)
    assert torch.allclose(pamr(image, scores, 3, (1, 2)), _pamr_reference(image, scores, 3, (1, 2)), atol=1e-5)
    assert torch.allclose(pamr(image, scores, 2, (8, 16)), _pamr_reference(image, scores, 2, (8, 16)), atol=1e-5)
    assert torch.equal(pamr(image, scores, 0), scores)


def test_pamr_respects_edges():
    image = torch.zeros(3, 32, 32)
    image[:, :, 16:] = 3.0  # a sharp vertical edge
    scores = torch.zeros(2, 32, 32)
    scores[0, :, :18] = 1.0  # scores leak 2 columns over the edge
    scores[1, :, 18:] = 1.0
    out = pamr(image, scores, 10, (1, 2))
    assert (out[0, :, 16:18] < out[1, :, 16:18]).all()  # the leak is pulled back to the image edge
