"""The ovss command line on real photos, and every bad input as a one-line error with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clirun import error_lines, run

VOC = "vainf_voc_samples/samples"
ADE = "ade20k_sceneparsing/sampleData/images"


def test_segment_real_photos(tmp_path, capsys, evaldata):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("0_image.png", "23_image.png"):
        shutil.copy(evaldata / VOC / name, photos / name)
    ade = evaldata / ADE / "ADE_val_00000001.jpg"
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        "segment",
        photos,
        ade,
        "-c",
        "cat; sofa, couch; potted plant",
        "--background",
        "words",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert code == 0, err
    for stem in ("0_image", "23_image", "ADE_val_00000001"):
        labels = np.array(Image.open(out / f"{stem}.png"))
        source = Image.open(photos / f"{stem}.png" if stem != "ADE_val_00000001" else ade)
        assert labels.shape == (source.height, source.width)
        assert labels.max() <= 3
        assert Image.open(out / f"{stem}.png").mode == "P"
        assert (out / f"{stem}_overlay.png").exists()
        summary = json.loads((out / f"{stem}.json").read_text())
        assert summary["classes"] == ["background", "cat", "sofa", "potted plant"]
        assert summary["models"] == {"clip": "tiny-random"} and summary["random_weights"] == ["clip"]
        assert summary["settings"]["logit_scale"] == 40.0 and summary["ovss_version"]
        assert sum(a["pixels"] for a in summary["areas"].values()) == labels.size
    # a re-run skips finished images
    before = (out / "0_image.json").stat().st_mtime_ns
    code, _, err = run(
        capsys, "segment", photos, ade, "-c", "cat; sofa, couch; potted plant", "--background", "words", "--out", out
    )
    assert code == 0 and "already done" in err
    assert (out / "0_image.json").stat().st_mtime_ns == before
    # other classes into the same folder: refused rather than silently mixed
    code, _, err = run(capsys, "segment", photos, "-c", "dog", "--out", out)
    assert code == 2 and "other classes or settings" in err


def test_settings_flags_are_applied_and_recorded(tmp_path, capsys, evaldata):
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        "segment",
        evaldata / VOC / "1_image.png",
        "-c",
        "dog; person",
        "--method",
        "naclip",
        "--window",
        "whole",
        "--pamr",
        "2",
        "--logit-scale",
        "55",
        "--set",
        "area_thd=0.2",
        "--background",
        "threshold",
        "--out",
        out,
        "--no-overlay",
    )
    assert code == 0, err
    s = json.loads((out / "1_image.json").read_text())["settings"]
    assert s["window"] is None and s["pamr_iterations"] == 2 and s["logit_scale"] == 55 and s["area_thd"] == 0.2
    assert s["prob_thd"] == 0.5  # the threshold-mode default, recorded
    assert not (out / "1_image_overlay.png").exists()


def test_methods_listing(capsys):
    code, out, _ = run(capsys, "methods", "-v")
    assert code == 0
    for name in ("sclip", "naclip", "clearclip", "maskclip", "vanilla"):
        assert name in out
    assert "logit_scale" in out


def _corrupt_jpeg(d):
    (d / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    return d / "bad.jpg"


def _zero(d):
    (d / "zero.png").write_bytes(b"")
    return d / "zero.png"


def _tiny(d):
    Image.new("RGB", (1, 1)).save(d / "one.png")
    return d / "one.png"


def _huge(d):
    Image.new("1", (20000, 20000)).save(d / "huge.png")  # 1-bit: small on disk and in memory
    return d / "huge.png"


def _empty_dir(d):
    (d / "empty").mkdir()
    return d / "empty"


IMAGE_CASES = {
    "missing file": (lambda d: d / "nope.jpg", "no such file"),
    "dir without images": (_empty_dir, "holds no images"),
    "corrupt jpeg": (_corrupt_jpeg, "not a readable image"),
    "zero-byte file": (_zero, "empty"),
    "1x1 image": (_tiny, "at least 2x2"),
    "20000x20000 image": (_huge, "MP limit"),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_images(tmp_path, capsys, case):
    make, message = IMAGE_CASES[case]
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", make(tmp_path), "-c", "cat", "--out", out)
    assert code == 2
    errors = error_lines(err)
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


CLASS_CASES = {
    "empty classes": ("", "no class names"),
    "duplicate classes": ("cat; dog; cat", "given twice"),
    "only separators": (" ; , ;; ", "no class names"),
}


@pytest.mark.parametrize("case", list(CLASS_CASES))
def test_bad_classes(tmp_path, capsys, evaldata, case):
    classes, message = CLASS_CASES[case]
    code, _, err = run(capsys, "segment", evaldata / VOC / "0_image.png", "-c", classes, "--out", tmp_path / "o")
    assert code == 2 and message in error_lines(err)[0] and len(error_lines(err)) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nosuch"], "unknown method 'nosuch'"),
        (["--clip", "nobody/no-such-clip"], "cannot find CLIP model"),
        (["--set", "nosuch=1"], "has no setting 'nosuch'"),
        (["--background", "maybe"], "unknown background mode"),
        (["--templates", "nosuch"], "unknown template set"),
    ],
)
def test_bad_options(tmp_path, capsys, evaldata, args, message):
    code, _, err = run(capsys, "segment", evaldata / VOC / "0_image.png", "-c", "cat", "--out", tmp_path / "o", *args)
    assert code == 2 and len(error_lines(err)) == 1 and message in error_lines(err)[0], err
    assert not (tmp_path / "o").exists()


def test_one_bad_image_among_good_ones(tmp_path, capsys, evaldata):
    photos = tmp_path / "in"
    photos.mkdir()
    shutil.copy(evaldata / VOC / "0_image.png", photos / "good.png")
    (photos / "bad.png").write_bytes(b"not an image")
    code, _, err = run(capsys, "segment", photos, "-c", "cat", "--out", tmp_path / "o")
    assert code == 2 and "bad.png" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["good.json", "good.png", "good_overlay.png"]


def test_console_script_exit_codes(tmp_path, evaldata):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OVSS_CACHE_DIR": str(tmp_path / "cache")}
    exe = shutil.which("ovss") or f"{sys.executable} -m ovss.cli"
    bad = subprocess.run(
        [*exe.split(), "segment", str(tmp_path / "x.jpg"), "-c", "cat"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no such file" in bad.stderr
    photo = evaldata / VOC / "0_image.png"
    ok = subprocess.run(
        [*exe.split(), "segment", str(photo), "-c", "cat", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert ok.returncode == 0 and "RANDOM" in ok.stderr  # tiny-random says so loudly
    helptext = subprocess.run([*exe.split(), "--help"], capture_output=True, text=True, env=env)
    assert helptext.returncode == 0 and "quick start" in helptext.stdout


def test_sam_refinement_makes_every_mask_one_label(tmp_path, capsys, evaldata):
    from ovss import Segmenter
    from ovss.masks import SamMaskGenerator
    from ovss.masks.pooling import region_map

    # thresholds at 0: a random SAM's masks pass, so there are regions to refine
    generator = SamMaskGenerator("tiny-random", preset="sparse", pred_iou_thresh=0.0, stability_score_thresh=0.0)
    seg = Segmenter("sclip", device="cpu", refine={"generator": generator})
    result = seg.segment(evaldata / VOC / "0_image.png", "cat; dog; person; sofa")
    regions = region_map(seg.refine["generator"].generate(result.image), result.labels.shape)
    assert regions.max() > 0
    for r in np.unique(regions[regions > 0]):
        assert len(np.unique(result.labels[regions == r])) == 1
    assert result.info["settings"]["refine"]["method"] == "sam" and result.info["models"]["sam"] == "tiny-random"
    plain = Segmenter("sclip", device="cpu").segment(evaldata / VOC / "0_image.png", "cat; dog; person; sofa")
    assert (plain.labels != result.labels).any()  # refinement changed something
    code, _, err = run(
        capsys,
        "segment",
        evaldata / VOC / "0_image.png",
        "-c",
        "cat",
        "--refine",
        "sam",
        "--refine-preset",
        "sparse",
        "--out",
        tmp_path / "o",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "0_image.json").read_text())["settings"]["refine"]["preset"] == "sparse"
