"""SAM 3: the backbone loader, the ``sam3`` method (SegEarth-OV3 fusion) and the SAM 3 mask generator.

The fusion is checked against a plain re-implementation of the rule written here, applied to the
model's own raw outputs from one ordinary ``Sam3Model`` call per prompt (image encoded each time),
so the method's shared-feature batching, chunking, synonym max and thresholds are all under test.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.errors import InputError, ModelLoadError
from ovss.methods.base import get_method_spec
from ovss.methods.sam3 import TIER, Sam3Method
from ovss.models.sam3 import TEXT_LENGTH, load_sam3, save_tiny_sam3
from ovss.vocab import Vocabulary, build_vocabulary

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sam3():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_sam3("tiny-random")


@pytest.fixture(scope="module")
def photo(evaldata) -> np.ndarray:
    from PIL import Image

    path = evaldata / "ade20k_sceneparsing/sampleData/images/ADE_val_00000001.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


def _image(h: int = 90, w: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 10 + 1, w // 10 + 1, 3)).astype(np.uint8)
    return np.kron(base, np.ones((10, 10, 1), dtype=np.uint8))[:h, :w]  # blocky, so masks have structure


def _method(sam3, **settings) -> Sam3Method:
    spec = get_method_spec("sam3")
    return spec.factory({"sam": sam3}, spec.make_settings(settings), CPU)


def _raw_outputs(sam3, image: np.ndarray, prompt: str):
    """One plain Sam3Model call for one prompt, as transformers' own example does it."""
    tokens = sam3.tokenizer(
        [prompt], padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return sam3.model(
            pixel_values=sam3.pixels(image), input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )


def _direct_prompt_map(out, size, thd: float, semantic: bool = True) -> torch.Tensor:
    """SegEarth-OV3 for one prompt, instance by instance: max(score-weighted masks, semantic) * presence."""
    presence = torch.sigmoid(out.presence_logits[0, 0])
    fused = torch.zeros(size)
    for i in range(out.pred_logits.shape[1]):
        score = torch.sigmoid(out.pred_logits[0, i]) * presence
        if score > thd:
            logit = F.interpolate(
                out.pred_masks[0, i].view(1, 1, *out.pred_masks.shape[-2:]),
                size=size,
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            fused = torch.max(fused, torch.sigmoid(logit) * score)
    if semantic:
        logit = F.interpolate(out.semantic_seg, size=size, mode="bilinear", align_corners=False)[0, 0]
        fused = torch.max(fused, torch.sigmoid(logit))
    return fused * presence


def _direct(
    sam3, image, vocab: Vocabulary, thd: float, prob_thd: float, semantic: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[:2]
    probs = np.zeros((vocab.num_classes, *size), dtype=np.float32)
    for query, owner in zip(vocab.queries, vocab.query_class):
        fused = _direct_prompt_map(_raw_outputs(sam3, image, query), size, thd, semantic).numpy()
        probs[owner] = np.maximum(probs[owner], fused)
    labels = probs.argmax(0)
    if vocab.has_background:
        labels[probs.max(0) < prob_thd] = 0
    return labels, probs


def _all_scores(sam3, image, queries) -> torch.Tensor:
    outs = [_raw_outputs(sam3, image, q) for q in queries]
    return torch.cat([(o.pred_logits.sigmoid() * o.presence_logits.sigmoid()).flatten() for o in outs])


# ------------------------------------------------------------------------------------- fusion


def test_fusion_equals_the_direct_rule_on_raw_outputs(sam3):
    image = _image()
    vocab = build_vocabulary("cat; dog, puppy; car, automobile, truck; tree")
    thd = float(_all_scores(sam3, image, vocab.queries).median())  # some queries kept, some not
    out = _method(sam3, confidence_threshold=thd, prompt_batch=4).segment(image, vocab, return_probs=True)
    labels, probs = _direct(sam3, image, vocab, thd, 0.0)
    np.testing.assert_allclose(out.probs, probs, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(out.labels, labels)
    assert len(np.unique(labels)) > 1  # the test image exercises the argmax
    # The instance branch alone (random weights let the semantic map dominate the max above).
    inst = _method(sam3, confidence_threshold=thd, use_semantic=False).segment(image, vocab, return_probs=True)
    labels, probs = _direct(sam3, image, vocab, thd, 0.0, semantic=False)
    np.testing.assert_allclose(inst.probs, probs, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(inst.labels, labels)
    assert (probs > 0).mean() > 0.5 and len(np.unique(labels)) > 1


def test_fusion_takes_the_max_where_either_head_wins(sam3):
    import copy

    weak_semantic = copy.deepcopy(sam3)
    with torch.no_grad():  # lower the semantic head so that instances win in some places
        weak_semantic.model.mask_decoder.semantic_projection.bias -= 2.0
    image = _image(seed=6)
    vocab = build_vocabulary("cat; dog, puppy")
    thd = float(_all_scores(weak_semantic, image, vocab.queries).quantile(0.3))
    out = _method(weak_semantic, confidence_threshold=thd).segment(image, vocab, return_probs=True)
    labels, probs = _direct(weak_semantic, image, vocab, thd, 0.0)
    np.testing.assert_allclose(out.probs, probs, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(out.labels, labels)
    _, inst = _direct(weak_semantic, image, vocab, thd, 0.0, semantic=False)
    wins = probs - inst < 1e-7  # where the instance branch gives the fused value
    assert 0.01 < wins.mean() < 0.99


def test_background_threshold_follows_prob_thd(sam3):
    image = _image(seed=1)
    vocab = build_vocabulary("cat; dog; car", "threshold")
    _, probs = _direct(sam3, image, vocab, 0.5, 0.0)
    prob_thd = float(np.median(probs.max(0)))
    labels, _ = _direct(sam3, image, vocab, 0.5, prob_thd)
    out = _method(sam3, prob_thd=prob_thd).segment(image, vocab)
    np.testing.assert_array_equal(out.labels, labels)
    assert 0 < (out.labels == 0).mean() < 1
    method = _method(sam3)
    assert method.effective_prob_thd(vocab) == method.settings.threshold_mode_prob


def test_chunk_size_does_not_change_the_result(sam3):
    image = _image(seed=2)
    vocab = build_vocabulary([f"thing {i}" for i in range(7)] + ["cat, kitten"])
    results = [
        _method(sam3, confidence_threshold=0.15, prompt_batch=b).segment(image, vocab, return_probs=True)
        for b in (1, 3, 64)
    ]
    for other in results[1:]:
        np.testing.assert_allclose(other.probs, results[0].probs, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(other.labels, results[0].labels)
    streamed = _method(sam3, confidence_threshold=0.15, prompt_batch=3).segment(image, vocab)
    assert streamed.probs is None
    np.testing.assert_array_equal(streamed.labels, results[0].labels)


def _grid(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """The mmseg sliding-window grid, written out: last row/column pushed back inside the image."""
    out = []
    for r in range(max(h - crop + stride - 1, 0) // stride + 1):
        for c in range(max(w - crop + stride - 1, 0) // stride + 1):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out


def test_windows_average_per_window_maps(sam3):
    image = _image(150, 230, seed=3)
    vocab = build_vocabulary("cat; dog; car")
    crop, stride = 96, 64
    windowed = _method(sam3, window=(crop, stride), confidence_threshold=0.15).segment(image, vocab, return_probs=True)
    whole = _method(sam3, window=None, confidence_threshold=0.15)
    boxes = _grid(150, 230, crop, stride)
    assert len(boxes) == 8
    total = np.zeros((3, 150, 230))
    count = np.zeros((150, 230))
    for y1, y2, x1, x2 in boxes:
        total[:, y1:y2, x1:x2] += whole.segment(image[y1:y2, x1:x2], vocab, return_probs=True).probs
        count[y1:y2, x1:x2] += 1
    np.testing.assert_allclose(windowed.probs, total / count, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(windowed.labels, (total / count).argmax(0))
    # An image no larger than the crop is one pass.
    small = _image(80, 96, seed=4)
    np.testing.assert_array_equal(
        _method(sam3, window=(96, 64)).segment(small, vocab).labels, whole.segment(small, vocab).labels
    )


def test_two_thousand_classes_run_in_bounded_chunks(sam3, monkeypatch):
    vocab = build_vocabulary([f"concept {i:04d}" for i in range(2000)])
    method = _method(sam3, prompt_batch=50)
    sizes: list[int] = []
    real_ground = sam3.ground

    def spy(vision, feats, mask):
        sizes.append(int(feats.shape[0]))
        return real_ground(vision, feats, mask)

    encodes: list[int] = []
    real_encode = sam3.encode_image
    monkeypatch.setattr(sam3, "ground", spy)
    monkeypatch.setattr(sam3, "encode_image", lambda px: encodes.append(1) or real_encode(px))
    out = method.segment(_image(24, 32), vocab)
    assert sizes == [50] * 40 and encodes == [1]  # 40 chunks over one image encoding
    assert out.labels.shape == (24, 32) and out.labels.min() >= 0 and out.labels.max() < 2000


# --------------------------------------------------------------------------------- bad input


def test_zero_classes_is_one_line(sam3):
    method = _method(sam3)
    for vocab in (Vocabulary((), ()), Vocabulary(("background",), ((),), background="threshold")):
        with pytest.raises(InputError, match="at least one class name") as err:
            method.segment(_image(), vocab)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "settings",
    [
        dict(confidence_threshold=1.5),
        dict(prob_thd=-0.1),
        dict(window=(64, 128)),
        dict(prompt_batch=0),
        dict(use_instances=False, use_semantic=False),
        dict(precision="fp8"),
    ],
)
def test_bad_settings(sam3, settings):
    with pytest.raises(InputError):
        _method(sam3, **settings)


def test_wrong_checkpoint_kind_and_offline_hub(tmp_path):
    from ovss.models.clip import save_tiny_clip

    save_tiny_clip(tmp_path / "clip")
    with pytest.raises(ModelLoadError, match="'clip' model, not SAM 3") as err:
        load_sam3(str(tmp_path / "clip"))
    assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="gated"):
        load_sam3("facebook/sam3")  # tests run offline (conftest)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_sam3(str(tmp_path / "empty"))


def test_local_folder_round_trip(sam3, tmp_path):
    save_tiny_sam3(tmp_path / "sam3")
    loaded = load_sam3(str(tmp_path / "sam3"))
    vocab = build_vocabulary("cat; dog")
    a = _method(sam3).segment(_image(), vocab, return_probs=True)
    b = _method(loaded).segment(_image(), vocab, return_probs=True)
    np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)


def test_tier_is_labelled(sam3, tmp_path, capsys):
    from ovss.api import Segmenter
    from ovss.cli import main
    from ovss.methods.base import TIERS

    spec = get_method_spec("sam3")
    assert TIERS[spec.tier].startswith("supervised concept segmenter") and TIER in spec.description
    assert spec.needs == ("sam",) and spec.loaders == {"sam": "sam3"}  # --sam takes the SAM 3 model
    result = Segmenter("sam3", sam=sam3, device="cpu").segment(_image(), "cat; dog")
    assert result.info["tier"] == "D"
    # the command line: --sam tiny-random builds a tiny Sam3Model through the sam3 loader
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(_image()).save(image)
    argv = ["segment", str(image), "-m", "sam3", "--sam", "tiny-random", "-c", "cat; dog", "-o", str(tmp_path / "o")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "o" / "a.json").read_text())["models"]["sam"] == "tiny-random"


# ------------------------------------------------------------------------------- real photo


def test_real_photo(sam3, photo):
    vocab = build_vocabulary("person; tree; building, house; sky; road", "threshold")
    out = _method(sam3, confidence_threshold=0.15, window=(448, 300)).segment(photo, vocab, return_probs=True)
    assert out.labels.shape == photo.shape[:2] and out.labels.dtype == np.int32
    assert out.probs.shape == (6, *photo.shape[:2]) and out.probs.min() >= 0 and out.probs.max() <= 1
    assert not out.probs[0].any()  # threshold background has no prompt of its own
    fg = out.probs.argmax(0)
    thd = _method(sam3).settings.threshold_mode_prob
    np.testing.assert_array_equal(out.labels, np.where(out.probs.max(0) < thd, 0, fg))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(sam3):
    cuda = load_sam3("tiny-random", "cuda")
    vocab = build_vocabulary("cat; dog; car")
    spec = get_method_spec("sam3")
    gpu = spec.factory({"sam": cuda}, spec.make_settings({}), torch.device("cuda")).segment(_image(), vocab, True)
    cpu = _method(sam3).segment(_image(), vocab, return_probs=True)
    np.testing.assert_allclose(gpu.probs, cpu.probs, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- mask generator


def test_mask_generator_equals_direct_thresholding(sam3):
    from ovss.masks import MaskSet, get_mask_generator

    image = _image(seed=5)
    prompts = ["object", "thing"]
    thd = float(_all_scores(sam3, image, prompts).quantile(0.75))
    gen = get_mask_generator("sam3", sam3=sam3, prompts=prompts, confidence_threshold=thd, prompt_batch=1)
    masks = gen.generate(image)
    assert isinstance(masks, MaskSet) and masks.image_size == image.shape[:2]
    expected = []
    for prompt in prompts:
        out = _raw_outputs(sam3, image, prompt)
        scores = (out.pred_logits.sigmoid() * out.presence_logits.sigmoid())[0]
        for i in (scores > thd).nonzero().flatten().tolist():
            logit = F.interpolate(
                out.pred_masks[:, i : i + 1], size=image.shape[:2], mode="bilinear", align_corners=False
            )[0, 0]
            mask = (logit.sigmoid() > 0.5).numpy()
            if mask.any():
                expected.append((float(scores[i]), prompt, mask))
    expected.sort(key=lambda e: -e[0])
    assert len(masks) == len(expected) > 0
    for record, (score, prompt, mask) in zip(masks, expected):
        assert record["prompt"] == prompt and record["predicted_iou"] == pytest.approx(score, abs=1e-6)
        np.testing.assert_array_equal(record["segmentation"], mask)
        assert record["area"] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert record["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
    capped = get_mask_generator(
        "sam3", sam3=sam3, prompts=prompts, confidence_threshold=thd, max_masks=2, output_mode="coco_rle"
    ).generate(image)
    assert len(capped) == 2 and isinstance(capped[0]["segmentation"]["counts"], str)
    suppressed = get_mask_generator("sam3", sam3=sam3, prompts=prompts, confidence_threshold=thd, nms_thresh=0.3)
    kept = suppressed.generate(image)
    assert 0 < len(kept) <= len(masks)
    boxes = [(b[0], b[1], b[0] + b[2], b[1] + b[3]) for b in (r["bbox"] for r in kept)]
    for i in range(len(boxes)):
        for j in range(i):
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[i], boxes[j]
            inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
            union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
            assert inter <= 0.3 * union + 1e-9
    assert MaskSet.from_json(capped.to_json()).masks().shape == (2, *image.shape[:2])


def test_mask_generator_feeds_refinement(sam3, tiny_clip):
    from ovss.api import Segmenter
    from ovss.masks.sam3 import Sam3MaskGenerator

    gen = Sam3MaskGenerator(sam3, prompts=["object"], confidence_threshold=0.1)
    seg = Segmenter("sclip", clip=tiny_clip, device="cpu", refine={"generator": gen})
    result = seg.segment(_image(), "cat; dog; car")
    assert result.labels.shape == (90, 120)
    with pytest.raises(InputError, match="at least one text prompt"):
        Sam3MaskGenerator(sam3, prompts=[" "])


def test_masks_command_takes_the_sam3_generator(evaldata, tmp_path):
    import argparse
    import json

    from ovss.masks import MaskSet
    from ovss.masks.cli import add_masks_parser

    parser = argparse.ArgumentParser(prog="ovss")
    add_masks_parser(parser.add_subparsers(dest="command"))
    image = evaldata / "ade20k_sceneparsing/sampleData/images/ADE_val_00000001.jpg"
    argv = [
        "masks",
        str(image),
        "--out",
        str(tmp_path),
        "--generator",
        "sam3",
        "--device",
        "cpu",
        "--set",
        "prompts=['object', 'person']",
        "--set",
        "confidence_threshold=0.1",
        "--no-preview",
    ]
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert args.func(args) == 0
    data = json.loads((tmp_path / "ADE_val_00000001.json").read_text())
    masks = MaskSet.from_json(data)
    assert masks.image_size == (512, 683) and len(masks) > 0
    assert data["info"]["generator"] == "sam3" and {r["prompt"] for r in masks} <= {"object", "person"}
    assert data["info"]["job"]["model"] == "tiny-random"  # --sam (here the tests' default) names the SAM 3 model


def test_bf16_autocast_stays_close_to_fp32(sam3):
    vocab = build_vocabulary("cat; dog; car")
    fp32 = _method(sam3).segment(_image(), vocab, return_probs=True)
    bf16 = _method(sam3, precision="bf16").segment(_image(), vocab, return_probs=True)
    assert bf16.probs.dtype == np.float32
    np.testing.assert_allclose(bf16.probs, fp32.probs, rtol=0, atol=0.05)
