"""The dense-CLIP speed paths (docs/speed.md) against the plain ones: the image tower cast once vs
autocast, windows batched across images vs one image at a time, the frozen-compile path vs eager."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ovss import Segmenter
from ovss.errors import InputError
from ovss.ops.windows import slide, slide_many, window_grid
from ovss.vocab import build_vocabulary

CLASSES = "cat; dog; car; tree; sky"
ONE_TEMPLATE = {"templates": "simple"}  # the jobs' tests: text embedding is not what they check


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    # three sizes: 6 windows, 4 windows, and one under the 224 crop at short side 336 (one smaller window)
    return [
        rng.integers(0, 255, (300, 400, 3), dtype=np.uint8),
        rng.integers(0, 255, (250, 250, 3), dtype=np.uint8),
        rng.integers(0, 255, (100, 700, 3), dtype=np.uint8),
    ]


def _segmenter(**settings) -> Segmenter:
    return Segmenter("sclip", **settings)


def _perturbed(seg: Segmenter) -> Segmenter:
    """The same Segmenter over a CLIP whose LayerNorm gains are not 1 (random init leaves them 1 and
    0, which bf16 holds exactly, so the cast copy's rounding of them would go untested)."""
    seg = copy.copy(seg)
    seg.method = copy.copy(seg.method)
    clip = copy.deepcopy(seg.method.clip)
    clip._towers = {}
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in clip.vision.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=gen))
    seg.method.clip = seg.method.text_encoder = clip
    return seg


def test_cast_tower_embeddings_equal_autocast_on_the_cpu(photos):
    # with LayerNorm gains of 1 and biases of 0 (exact in bf16) the cast copy does autocast's arithmetic
    cast, auto = _segmenter(precision="bf16"), _segmenter(precision="bf16", cast_weights=False)
    pixels = cast.method.pixels(photos[0])[None, :, :224, :224]
    with cast.method.precision_context():
        a = cast.method.embed(pixels)
    with auto.method.precision_context():
        b = auto.method.embed(pixels)
    assert torch.equal(a, b)
    assert cast.method.clip.tower(torch.bfloat16)[0].encoder.layers[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert cast.method.clip.vision.encoder.layers[0].mlp.fc1.weight.dtype == torch.float32  # the loaded tower kept
    assert type(cast.method.clip.vision.encoder.layers[0].mlp.fc1) is torch.nn.Linear


def test_cast_tower_stays_within_bf16_of_autocast_and_fp32(photos):
    # real-like LayerNorm gains: the cast copy rounds them to bf16 (autocast keeps them fp32)
    fp32 = _perturbed(_segmenter())
    cast = _perturbed(_segmenter(precision="bf16"))
    auto = _perturbed(_segmenter(precision="bf16", cast_weights=False))
    text = fp32.method.text_embeddings(build_vocabulary(CLASSES, None))
    ref = fp32.method.query_scores(photos[0], text)[0]
    err = {}
    for name, seg in (("cast", cast), ("auto", auto)):
        scores = seg.method.query_scores(photos[0], text)[0]
        err[name] = float((scores - ref).norm() / ref.norm())
    assert 0 < err["cast"] < 2e-2 and 0 < err["auto"] < 2e-2, err
    # the cast path scores in fp32 (autocast scored in bf16): no further from fp32 than autocast
    assert err["cast"] < 1.5 * err["auto"], err
    same = (cast.segment(photos[0], CLASSES).labels == fp32.segment(photos[0], CLASSES).labels).mean()
    assert same > 0.95, same


@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_is_bit_identical_to_f_linear(bias):
    from ovss.models.dense_clip import OneDNNLinear, use_onednn_linears

    torch.manual_seed(0)
    plain = torch.nn.Linear(64, 96, bias=bias).to(torch.bfloat16)
    fused = use_onednn_linears(copy.deepcopy(plain))
    assert type(fused) is OneDNNLinear
    x = torch.randn(3, 17, 64).to(torch.bfloat16)
    assert torch.equal(fused(x), F.linear(x, plain.weight, plain.bias))
    assert not torch.equal(fused(x), F.linear(x, plain.weight * 1.01, plain.bias))  # the check can fail


def test_fp32_paths_are_one_path(photos):
    # cast_weights only acts at bf16/fp16: fp32 labels are identical either way
    a, b = _segmenter(), _segmenter(cast_weights=False)
    for image in photos:
        ra, rb = a.segment(image, CLASSES, return_probs=True), b.segment(image, CLASSES, return_probs=True)
        assert np.array_equal(ra.labels, rb.labels) and np.array_equal(ra.probs, rb.probs)


def _plain_slide(pixels, score_fn, window):
    """The window average written plainly: one window per forward pass."""
    _, h, w = pixels.shape
    total, count = None, torch.zeros(1, h, w)
    for y1, y2, x1, x2 in window_grid(h, w, *window):
        s = score_fn(pixels[None, :, y1:y2, x1:x2]).float()
        s = F.interpolate(s, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
        total = torch.zeros(s.shape[0], h, w) if total is None else total
        total[:, y1:y2, x1:x2] += s
        count[:, y1:y2, x1:x2] += 1
    return total / count


def test_slide_many_equals_plain_slide_one_image_at_a_time():
    torch.manual_seed(0)
    images = [torch.randn(3, 40, 56), torch.randn(3, 32, 32), torch.randn(3, 20, 60)]
    proj = torch.randn(5, 3)

    def score_fn(batch):  # per-window and batch-independent (a per-pixel linear map, pooled)
        return F.avg_pool2d(torch.einsum("qc,bchw->bqhw", proj, batch), 4)

    many = slide_many(images, score_fn, (24, 12), batch_size=3)
    for image, scores in zip(images, many):
        plain = _plain_slide(image, score_fn, (24, 12))
        assert torch.allclose(scores, plain, atol=1e-6)
        assert torch.allclose(slide(image, score_fn, (24, 12), batch_size=3), plain, atol=1e-6)
    # the test can fail: a wrong window order or a lost window shows
    assert not torch.allclose(many[0], many[0].flip(-1), atol=1e-3)


def test_slide_many_batches_cross_images_and_split_by_window_size():
    sizes = []

    def score_fn(batch):
        sizes.append(tuple(batch.shape))
        return batch[:, :1, ::4, ::4]

    # 3x3 + 1 windows of 24 (the second image is 24x24), then a 16x40 image: three 16x24 windows
    slide_many([torch.zeros(3, 40, 48), torch.zeros(3, 24, 24), torch.zeros(3, 16, 40)], score_fn, (24, 12), 4)
    assert sizes == [(4, 3, 24, 24), (4, 3, 24, 24), (2, 3, 24, 24), (3, 3, 16, 24)]


def test_segment_many_equals_one_at_a_time(photos):
    for precision in ("fp32", "bf16"):
        seg = _segmenter(precision=precision, window_batch=4)  # batches straddle images
        many = seg.segment_many(photos, CLASSES, return_probs=True)
        assert len(many) == len(photos)
        for image, result in zip(photos, many):
            one = seg.segment(image, CLASSES, return_probs=True)
            assert np.array_equal(one.labels, result.labels), precision
            assert np.allclose(one.probs, result.probs, atol=1e-5), precision
            assert result.info["method"] == "sclip" and result.image.shape == image.shape


def test_segment_many_refuses_a_bad_image_in_one_line(photos, tmp_path):
    seg = _segmenter()
    with pytest.raises(InputError, match=r"missing\.png"):
        seg.segment_many([photos[0], tmp_path / "missing.png"], CLASSES)


def test_segment_many_loops_for_methods_without_batching(photos):
    seg = Segmenter("proxyclip", dino="tiny-random", window_batch=4)
    many = seg.segment_many(photos[:2], CLASSES)
    for image, result in zip(photos[:2], many):
        assert np.array_equal(seg.segment(image, CLASSES).labels, result.labels)


def test_fp16_on_the_cpu_is_refused_by_the_cast_path(photos):
    seg = _segmenter(precision="fp16")
    with pytest.raises(InputError, match="fp16 is not supported on the CPU"):
        seg.segment(photos[0], CLASSES)


@pytest.mark.slow
def test_frozen_compile_matches_eager(photos):
    import torch._dynamo

    torch._dynamo.reset()
    for precision, tol in (("fp32", 1e-4), ("bf16", 3e-2)):
        eager, compiled = _segmenter(precision=precision), _segmenter(precision=precision, compile=True)
        text = eager.method.text_embeddings(build_vocabulary(CLASSES, None))
        for image in photos[:2]:  # 6 then 4 windows: one dynamic graph for both counts
            a = eager.method.query_scores(image, text)[0]
            b = compiled.method.query_scores(image, text)[0]
            assert float((a - b).norm() / a.norm()) < tol, precision
        assert len(compiled.method._compiled) == 1


def _count_segment_many(monkeypatch) -> list[int]:
    """The batch size of every Segmenter.segment_many call from now on (the real method still runs)."""
    import ovss.api as api

    calls: list[int] = []
    real = api.Segmenter.segment_many

    def counting(self, images, *args, **kwargs):
        calls.append(len(images))
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(api.Segmenter, "segment_many", counting)
    return calls


def test_eval_with_image_batch_equals_one_at_a_time(evaldata, tmp_path, monkeypatch):
    from layouts import _voc
    from ovss.evaluate import EvalJob, run_eval

    root = tmp_path / "data"
    _voc(evaldata, root)
    calls = _count_segment_many(monkeypatch)
    reports = [
        run_eval(
            EvalJob(
                "sclip",
                "voc21",
                root,
                out=tmp_path / str(n),
                overrides={"short_side": 96, "image_batch": n, **ONE_TEMPLATE},
                device="cpu",
                limit=3,
            ),
            progress=False,
        )
        for n in (1, 2)
    ]
    assert calls == [2]  # 3 images in groups of 2: the last one alone goes through segment
    assert reports[0]["images"] == reports[1]["images"] == 3
    same = [json.dumps(r["per_class"], sort_keys=True) for r in reports]  # NaN-safe
    assert same[0] == same[1] and reports[0]["mIoU"] == pytest.approx(reports[1]["mIoU"], nan_ok=True)


def test_label_with_image_batch_equals_one_at_a_time(evaldata, tmp_path, monkeypatch):
    import ovss.api as api
    from ovss.labelling import label

    folder = tmp_path / "photos"
    folder.mkdir()
    for n in ("0", "120"):
        (folder / f"{n}.png").write_bytes((evaldata / "vainf_voc_samples" / "samples" / f"{n}_image.png").read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")  # an unreadable image inside a group
    calls = _count_segment_many(monkeypatch)
    common = dict(
        classes="cat; dog; person", formats="png", progress=False, device="cpu", short_side=112, **ONE_TEMPLATE
    )
    label(folder, out=tmp_path / "one", **common)
    label(folder, out=tmp_path / "many", image_batch=2, **common)
    assert calls == [2]  # 3 files in groups of 2: the two photos, then the broken file alone (no call)
    for n in ("0", "120"):
        one, many = (np.asarray(Image.open(tmp_path / d / "png" / "labels" / f"{n}.png")) for d in ("one", "many"))
        assert np.array_equal(one, many)
    # a group that fails is redone one image at a time, so each image gets its own result or error
    monkeypatch.setattr(api.Segmenter, "segment_many", lambda *a, **k: (_ for _ in ()).throw(InputError("no")))
    label(folder, out=tmp_path / "fallback", image_batch=2, **common)
    for n in ("0", "120"):
        assert (tmp_path / "fallback" / "png" / "labels" / f"{n}.png").is_file()
