"""Bounded memory: banded PAMR equals the whole-image PAMR exactly, a request that cannot fit is one
line before any work, and RSS stays flat over a folder of images (docs/jobs.md, "Memory")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ovss.methods.dense as dense
import ovss.ops.pamr as pamr_ops
from clirun import error_lines, run
from ovss import Segmenter
from ovss.errors import InputError
from ovss.memory import _parse_bytes, available_bytes, check_fits
from ovss.ops.pamr import pamr, pamr_rows

BENCH = Path(__file__).resolve().parents[1] / "bench" / "memory.py"


def _bands_of(full: torch.Tensor, rows: list[slice], iterations: int, dilations, image, chunk) -> torch.Tensor:
    channels = full.shape[0]
    return torch.cat(
        [pamr_rows(image, lambda c, r: full[c][:, r], channels, b, iterations, dilations, chunk) for b in rows], dim=1
    )


@pytest.mark.parametrize("iterations, dilations", [(3, (8, 16)), (5, (1, 2)), (2, (3,))])
def test_pamr_rows_equal_whole_map(iterations, dilations):
    torch.manual_seed(0)
    image, scores = torch.randn(3, 131, 67), torch.rand(6, 131, 67)
    whole = pamr(image, scores, iterations, dilations)
    bands = [slice(0, 30), slice(30, 31), slice(31, 90), slice(90, 131)]
    for chunk in (None, 1, 4):
        assert torch.equal(_bands_of(scores, bands, iterations, dilations, image, chunk), whole)


def test_pamr_rows_needs_its_halo(monkeypatch):
    """The equality above can fail: one row of halo short and the band edges differ."""
    torch.manual_seed(0)
    image, scores = torch.randn(3, 131, 67), torch.rand(6, 131, 67)
    whole = pamr(image, scores, 3, (8, 16))
    monkeypatch.setattr(pamr_ops, "halo", lambda it, dil: it * max(dil) - 1)
    assert not torch.equal(_bands_of(scores, [slice(0, 60), slice(60, 131)], 3, (8, 16), image, None), whole)


def _photo(evaldata: Path, size=(160, 120)) -> np.ndarray:
    with Image.open(evaldata / "vainf_voc_samples" / "samples" / "23_image.png") as im:
        return np.asarray(im.convert("RGB").resize(size, Image.BILINEAR))


@pytest.mark.parametrize("area_thd", [None, 0.2])
def test_banded_segment_equals_whole_image(evaldata, monkeypatch, area_thd):
    """Labels and probabilities of the banded path (bands of 12 rows, chunks of 2 queries) equal the old
    whole-image PAMR (one band) exactly, with and without the two-pass area_thd."""
    photo = _photo(evaldata, (163, 121))  # widths and band heights off any vector length
    classes = "aeroplane; person; dog, puppy; sofa; bottle; cat"
    kw = dict(clip="tiny-random", device="cpu", templates="simple", pamr_iterations=3, area_thd=area_thd)
    seg = Segmenter("sclip", **kw)
    monkeypatch.setattr(dense, "BAND_FLOATS", 33 * 163 * 6)  # post-processing in bands of 6 rows, as before
    monkeypatch.setattr(dense, "PAMR_BAND_FLOATS", 1 << 40)
    whole = seg.segment(photo, classes, background="words", return_probs=True)
    monkeypatch.setattr(dense, "PAMR_BAND_FLOATS", 33 * 163 * 13)  # 13 rows of the 7 + 26 background queries
    monkeypatch.setattr(dense, "PAMR_CHUNK_FLOATS", 2 * (dense.PAMR_COPIES * 121 * 163 + 121 * 163))
    bands, chunk = dense.pamr_plan(33, (121, 163), 3, (8, 16))
    assert len(bands) > 3 and chunk < 33 and bands[1] == slice(12, 24)  # the plan really bands and chunks
    banded = seg.segment(photo, classes, background="words", return_probs=True)
    assert np.array_equal(banded.labels, whole.labels)
    assert np.array_equal(banded.probs, whole.probs)


def test_segment_refused_in_one_line_before_any_work(monkeypatch):
    seg = Segmenter("sclip", clip="tiny-random", device="cpu", templates="simple", pamr_iterations=2)
    image = np.zeros((1536, 2048, 3), np.uint8)
    calls = []
    monkeypatch.setattr(type(seg.method), "query_scores", lambda *a: calls.append(a))
    monkeypatch.setenv("OVSS_MEMORY_LIMIT", "64M")
    with pytest.raises(InputError) as e:
        seg.segment(image, "cat; dog; wall", return_probs=True)
    message = str(e.value)
    assert "\n" not in message and "2048x1536 image with 3 text queries" in message and "64M" not in message
    assert "probabilities" in message and "PAMR off (--pamr 0)" in message and "return_probs=False" in message
    assert "64 MiB is free" in message and not calls


def test_cli_segment_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    Image.fromarray(np.zeros((600, 800, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setenv("OVSS_MEMORY_LIMIT", "1M")
    code, _, err = run(
        capsys, "segment", tmp_path / "a.png", "-c", "cat; dog", "--clip", "tiny-random", "--out", tmp_path / "o"
    )
    lines = error_lines(err)
    assert code == 2 and "800x600 image with 2 text queries needs about" in lines[0] and "fewer classes" in lines[0]
    assert not (tmp_path / "o" / "a.png").exists()


def test_check_fits_and_limits(monkeypatch):
    check_fits({"maps": 10}, "x", "fix", available=10)  # fits exactly
    with pytest.raises(InputError, match=r"x needs about 1.0 GiB \(maps 1.0 GiB\) but 0.5 GiB is free; fix"):
        check_fits({"maps": 1 << 30, "none": 0}, "x", "fix", available=1 << 29)
    assert _parse_bytes("8G") == _parse_bytes("8GiB") == _parse_bytes("8gb") == 8 << 30 and _parse_bytes("512") == 512
    monkeypatch.setenv("OVSS_MEMORY_LIMIT", "3.5M")
    assert available_bytes("cpu") == int(3.5 * 2**20)
    monkeypatch.setenv("OVSS_MEMORY_LIMIT", "lots")
    with pytest.raises(InputError, match="OVSS_MEMORY_LIMIT='lots' is not a size"):
        available_bytes()
    monkeypatch.delenv("OVSS_MEMORY_LIMIT")
    free = available_bytes("cpu")
    assert free is None or free > 0


def test_estimate_bounded_for_150_classes_at_2048():
    """The banded plan keeps PAMR's estimate near a GiB at 2048x1536 with 150 queries; the old whole map was ~9."""
    s = dense.DenseSettings(pamr_iterations=10)
    parts = dense.segment_bytes(150, 150, (1536, 2048), s, return_probs=False)
    assert parts["PAMR"] < 1.5 * 2**30 and parts["probabilities"] == 0
    with_probs = dense.segment_bytes(150, 150, (1536, 2048), s, return_probs=True)
    assert with_probs["probabilities"] == 150 * 1536 * 2048 * 4


def _segment_rss(folder: Path, *extra: str) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(BENCH), "_child", "growth", "segment", str(folder), "20", "tiny-random", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0
    return out["rss_mib"]


@pytest.mark.slow
def test_rss_flat_over_20_images(tmp_path, evaldata):
    """`ovss segment` over 20 copies of an 800x600 photo in a fresh process: the live RSS (after gc and
    malloc_trim) after image 20 within 10 MiB of that after image 10; keeping every result alive (about
    3 MiB an image) breaks the bound (bench/memory.py gives the 200-image figures over varied sizes)."""
    photo = Image.fromarray(_photo(evaldata, (800, 600)))
    for name in ("flat", "leaky"):
        (tmp_path / name / "photos").mkdir(parents=True)
        for i in range(20):
            photo.save(tmp_path / name / "photos" / f"img{i:02d}.jpg", quality=90)
    flat = _segment_rss(tmp_path / "flat")
    assert flat["live20"] - flat["live10"] < 10, flat
    leaky = _segment_rss(tmp_path / "leaky", "leak")
    assert leaky["live20"] - leaky["live10"] > 20, leaky


def test_sam3_maps_refused_in_one_line_before_any_work(monkeypatch):
    seg = Segmenter("sam3", sam="tiny-random", device="cpu")
    calls = []
    monkeypatch.setattr(seg.method.sam3, "encode_text", lambda *a, **k: calls.append(a))
    monkeypatch.setenv("OVSS_MEMORY_LIMIT", "1M")
    with pytest.raises(InputError) as e:
        seg.segment(np.zeros((300, 400, 3), np.uint8), "cat; dog", return_probs=True)
    assert "\n" not in str(e.value) and "400x300 image with 2 text queries needs about" in str(e.value) and not calls
