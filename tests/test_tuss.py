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
        recs = [
            {"segmentation": m, "area": int(m.sum()), "predicted_iou": 0.9, "level": lv}
            for m, lv in zip(self.masks, self.levels)
        ]
        return MaskSet(recs, (h, w))


def test_synthetic_scenes_are_recovered():
    torch.set_num_threads(1)
    names = list(PALETTE)
    scenes = make_dataset(3, seed=7, size=(160, 192), classes=names, n_regions=4, noise=20, texture=15)
    seg = Segmenter(
        "tuss", clip=SyntheticCLIP(), sam=SyntheticMaskGenerator(), device="cpu", templates="simple", short_side=160
    )
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
    result = seg.segment(
        evaldata / "vainf_voc_samples/samples/0_image.png", "cat; dog; person", background="words", return_probs=True
    )
    assert result.labels.shape == result.probs.shape[1:] and result.probs.shape[0] == 4
    assert result.info["models"] == {"clip": "tiny-random", "sam": "tiny-random"}


def _tiny_tuss(**settings):
    torch.manual_seed(0)
    return Segmenter("tuss", device="cpu", **settings)


def test_several_windows_mix_with_momentum_half():
    rgb = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    masks = torch.zeros(2, 48, 80, dtype=torch.bool)
    masks[0, :, :40] = True
    masks[1, 10:30, 30:70] = True
    wins = [(48, 16), (32, 16), (16, 8)]

    def emb(window):
        return _tiny_tuss(short_side=48, window=window, global_weight=0.0).method.embedding_map(rgb, masks)

    a, b, c = (emb(w) for w in wins)
    mixed = emb(tuple(wins))
    # running mixture m <- 0.5 m + 0.5 m_k: the last scale weighs 1/2, the first two 1/4 each
    torch.testing.assert_close(mixed, 0.25 * a + 0.25 * b + 0.5 * c, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed, (a + b + c) / 3, atol=1e-4)  # not a plain mean


def test_prompt_background_is_the_background_probability_to_the_alpha():
    from ovss.ops.postprocess import class_probabilities
    from ovss.ops.text import embed_queries
    from ovss.vocab import build_vocabulary

    vocab = build_vocabulary("cat; dog", ["background"])
    pow_m = _tiny_tuss(background_method="pow", background_power=2.0).method
    prompt = _tiny_tuss(background_method="prompt", background_power=0.25).method
    text = embed_queries(pow_m.clip, list(vocab.queries), pow_m.templates)
    emb = torch.nn.functional.normalize(text[[0, 1, 2, 0, 1]] + 0.5 * torch.randn(5, text.shape[1]), dim=-1)
    raw = class_probabilities(text @ emb.T, torch.tensor(vocab.query_class), 3, 100.0)
    got = prompt.text_scores(emb, vocab)
    torch.testing.assert_close(got[0], raw[0] ** 0.25)
    torch.testing.assert_close(got[1:], raw[1:])
    torch.testing.assert_close(pow_m.text_scores(emb, vocab)[0], (1 - raw[1:].amax(0)) ** 2.0)


def test_unpainted_pixels_can_be_ignored():
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    rgb[:, :32] = PALETTE["red"]
    rgb[:, 32:] = PALETTE["blue"]
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    kw = dict(clip=SyntheticCLIP(), device="cpu", templates="simple", short_side=64, window=None, global_weight=1.0)
    out = Segmenter("tuss", sam=_Fixed([left], [2]), unpainted="ignore", **kw).segment(rgb, ["red", "blue"]).labels
    assert (out[left] == 0).all() and (out[~left] == 255).all()
    out = Segmenter("tuss", sam=_Fixed([left], [2]), unpainted="dense", **kw).segment(rgb, ["red", "blue"]).labels
    assert (out[left] == 0).all() and (out[:, 40:] == 1).all()


def test_cityscapes_protocol_uses_the_multiscale_view():
    from ovss.protocols import resolve

    city = resolve("tuss", "cityscapes").settings
    assert city["short_side"] == 512 and city["window"] == ((448, 224), (224, 112))
    assert city["global_weight"] == 0.0 and city["patches_see_cls"] is False
    Segmenter("tuss", device="cpu", **city)  # the settings are valid for the method
    from ovss.methods import get_method_spec
    from ovss.methods.settings import resolve_settings

    voc = resolve("tuss", "voc21")
    assert "window" not in voc.settings  # the family holds only what differs from TUSSSettings
    settings = resolve_settings(get_method_spec("tuss"), benchmark="voc21").settings
    assert settings.window == (224, 56) and settings.global_weight == 0.5
    assert settings.short_side == 448 and len(voc.background) == 25 and "railroad" in voc.background


def _reference_map(method, image, masks):
    """The DBA-CLIP map as composed from the shared pieces: global forward + ops.windows.slide."""
    import torch.nn.functional as F

    from ovss.ops.dba import discrimination_bias
    from ovss.ops.resize import normalize, resize_image
    from ovss.ops.windows import slide

    s, clip = method.settings, method.clip
    h, w = method.resized_size(*image.shape[:2])
    pixels = normalize(resize_image(image, (h, w)), clip.mean, clip.std)
    small = F.interpolate(masks[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5

    def fn(batch, boxes):
        grid = (batch.shape[-2] // clip.patch_size, batch.shape[-1] // clip.patch_size)
        bias = torch.stack(
            [discrimination_bias(small[:, a:b, c:d], grid, patches_see_cls=s.patches_see_cls) for a, b, c, d in boxes]
        )
        return clip.dense_features(batch, "sclip", bias=bias).float()

    whole = F.interpolate(fn(pixels[None], [(0, h, 0, w)]), size=(h, w), mode="bilinear", align_corners=False)[0]
    mix = None
    for window in s.windows():
        m = slide(pixels, fn, window, 4, with_boxes=True)
        mix = m if mix is None else 0.5 * mix + 0.5 * m
    return whole if mix is None else s.global_weight * whole + (1 - s.global_weight) * mix


def test_pooled_embeddings_equal_pooling_the_map():
    """The bank's route (mask weights pushed down to every view's patch grid) gives the numbers of
    upsampling every view, averaging, mixing and pooling (docs/methods.md §1.3), without the map."""
    from ovss.masks.pooling import mask_pool

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (70, 101, 3), dtype=np.uint8)
    masks = torch.zeros(4, 70, 101, dtype=torch.bool)
    masks[0, :40, :60] = True
    masks[1, 30:, 50:] = True
    masks[2] = torch.from_numpy(rng.random((70, 101)) > 0.7)  # scattered pixels
    # masks[3] stays empty: pools to zeros
    for settings in (
        dict(short_side=64, window=(32, 16)),
        dict(short_side=64, window=((48, 16), (32, 16)), global_weight=0.0, patches_see_cls=False),
        dict(short_side=48, window=None, global_weight=1.0),
    ):
        method = _tiny_tuss(**settings).method
        fmap = method.embedding_map(rgb, masks)
        torch.testing.assert_close(fmap, _reference_map(method, rgb, masks), atol=1e-5, rtol=1e-5)
        expected, area = mask_pool(fmap, masks, mode="upsample")
        got, got_area = method.pooled_embeddings(rgb, masks)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        assert torch.equal(area, got_area) and (got[3] == 0).all()
