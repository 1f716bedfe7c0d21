"""``ovss fit tuss`` / ``fit_tuss``: the mask bank, seeds per setting, held-out selection, the classifier file,
``ovss segment --method tuss --classifier``, resume, and every bad input as a one-line error with exit code 2.

The tiny random SAM keeps no mask under any built-in preset (its stability scores are ~0), so the real-photo CLI
runs register a test-only preset that keeps every mask of a 4x4 point grid (``LOOSE``).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clirun import error_lines, run
from ovss import Segmenter
from ovss.cli import main
from ovss.errors import InputError
from ovss.masks.maskset import MaskSet
from ovss.masks.presets import PRESETS
from ovss.methods.tuss.classifier import TUSSClassifier
from ovss.methods.tuss.fit import (
    FitSettings,
    class_text_embeddings,
    fit_settings,
    fit_tuss,
    load_bank,
    read_label,
    read_tags,
    votes,
)
from ovss.methods.tuss.ov import TUSSMethod, paint
from ovss.testing import SyntheticCLIP, make_dataset, pixel_accuracy, write_dataset
from ovss.testing.standins import SyntheticMaskGenerator, every_mask_preset
from ovss.vocab import build_vocabulary
from ovss.vocab import vocabulary_for as _vocabulary_arg

VOC = "vainf_voc_samples"
PHOTOS = ("0_image", "23_image", "1_image")
SETTINGS = ("ovss", "wsss", "sss", "fsss")
LOOSE = "test-loose"
FIT_ARGS = [
    "--device",
    "cpu",
    "--preset",
    LOOSE,
    "--set",
    "short_side=224",
    "--set",
    "probe_iters=50",
    "--set",
    "probe_warmup=5",
]
VOC21 = _vocabulary_arg("voc21", None, family="tuss")  # TUSS's 25 VOC background words

NAMES = ["red", "green", "blue", "yellow", "white"]
SCENE_KW = dict(size=(96, 128), classes=NAMES, n_regions=3, noise=10, texture=5)
METHOD_KW = dict(templates="simple", short_side=160, window=(96, 32))
FAST = dict(probe_iters=50, probe_warmup=5, lp_k=5)


def _counting_embed(monkeypatch) -> list[tuple[int, ...]]:
    """Count the images TUSSMethod.embed sees (the expensive SAM + DBA-CLIP step)."""
    calls: list[tuple[int, ...]] = []
    original = TUSSMethod.embed

    def embed(self, image, keep_map=False):
        calls.append(image.shape)
        return original(self, image, keep_map)

    monkeypatch.setattr(TUSSMethod, "embed", embed)
    return calls


def _link_bank(shared: Path, out: Path) -> None:
    """The mask bank does not depend on the setting: share it, as bench/tuss_synthetic.py does."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bank").symlink_to(shared, target_is_directory=True)


def _png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


@pytest.fixture(scope="module")
def module_env(tmp_path_factory):
    """The test preset and the isolated cache for the module-scoped fits (conftest's is per test)."""
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setitem(PRESETS, LOOSE, every_mask_preset(LOOSE))
    mp.setenv("OVSS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ovss-cache"))
    yield
    mp.undo()


# --------------------------------------------------------------------------------------------
# real photos through the command line
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voc(module_env, tmp_path_factory, evaldata):
    """Three VOC photos fitted in all four settings by the CLI; the bank of the ovss fit is shared."""
    work = tmp_path_factory.mktemp("voc_fit")
    images, labels, partial = work / "images", work / "labels", work / "partial"
    for d in (images, labels, partial):
        d.mkdir()
    tags = {}
    for stem in PHOTOS:
        shutil.copy(evaldata / VOC / "samples" / f"{stem}.png", images / f"{stem}.png")
        shutil.copy(
            evaldata / VOC / "derived/SegmentationClass" / stem.replace("image", "target.png"), labels / f"{stem}.png"
        )
        present = sorted(set(np.unique(_png(labels / f"{stem}.png")).tolist()) - {0, 255})
        tags[f"{stem}.png"] = [VOC21.names[c] for c in present]
    tags["0_image.png"] = [t.upper() for t in tags["0_image.png"]]  # tags are case-insensitive
    for stem in PHOTOS[:2]:  # sss: the third photo is unlabelled
        shutil.copy(labels / f"{stem}.png", partial / f"{stem}.png")
    (work / "tags.json").write_text(json.dumps(tags))
    supervision = {
        "ovss": [],
        "wsss": ["--tags", work / "tags.json"],
        "sss": ["--labels", partial],
        "fsss": ["--labels", labels],
    }
    runs = {}
    for setting, extra in supervision.items():
        out = work / setting
        if setting != "ovss":
            _link_bank(work / "ovss" / "bank", out)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(
                [
                    str(a)
                    for a in [
                        "fit",
                        "tuss",
                        "--setting",
                        setting,
                        "--images",
                        images,
                        "--vocab",
                        "voc21",
                        "--out",
                        out,
                        *FIT_ARGS,
                        *extra,
                    ]
                ]
            )
        runs[setting] = (code, err.getvalue())
    tag_index = {Path(k).stem: {VOC21.names.index(t.lower()) for t in v} for k, v in tags.items()}
    return SimpleNamespace(
        work=work,
        images=images,
        labels=labels,
        partial=partial,
        tags=work / "tags.json",
        tag_index=tag_index,
        runs=runs,
        bank=work / "ovss" / "bank",
    )


@pytest.mark.parametrize("setting", SETTINGS)
def test_fit_cli_on_real_photos_then_segment_with_the_classifier(voc, setting, tmp_path, capsys):
    code, err = voc.runs[setting]
    assert code == 0, err
    assert error_lines(err) == [] and "Traceback" not in err
    out = voc.work / setting
    report = json.loads((out / "fit.json").read_text())
    bank = load_bank(list(PHOTOS), out / "bank")
    assert report["setting"] == setting and report["images"] == 3
    assert report["masks"] == len(bank.areas) > 0
    assert report["models"] == {"clip": "tiny-random", "sam": "tiny-random"}
    assert report["vocabulary"] == VOC21.to_dict()
    assert report["classifier"] == str(out) and (out / "config.json").is_file()
    for stem in PHOTOS:
        seeds = Image.open(out / "seeds" / f"{stem}.png")
        assert seeds.size == Image.open(voc.images / f"{stem}.png").size
        values = set(np.unique(np.array(seeds)).tolist())
        assert values <= set(range(21)) | {255}
        if setting == "wsss":  # pseudo-masks use the image's tags and background only
            assert values <= voc.tag_index[stem] | {0, 255}, (stem, values)

    classifier = TUSSClassifier.load(out)
    assert classifier.setting == setting and classifier.vocabulary == VOC21
    assert (classifier.glcc is None) == (setting == "ovss")
    assert classifier.method_settings["short_side"] == 224 and classifier.method_settings["sam_preset"] == LOOSE
    assert classifier.method_settings["window"] == (224, 56)
    assert classifier.models == {"clip": "tiny-random", "sam": "tiny-random"}
    if setting != "ovss":
        assert report["lp_weight"] == classifier.glcc.config.lp_weight
        assert report["k_bar"] == classifier.glcc.lp_classifier.config.k_bar
    if setting in ("sss", "fsss"):
        labelled = PHOTOS[:2] if setting == "sss" else PHOTOS
        assert set(report["selection"]["heldout_images"]) <= set(labelled)
    else:
        assert "selection" not in report

    # segment with the classifier, classes left out: its classes and its recorded settings
    target = out / "model.safetensors" if setting == "fsss" else out  # the file itself works too
    seg_out = tmp_path / "seg"
    code, _, err = run(
        capsys,
        "segment",
        voc.images / "23_image.png",
        "--method",
        "tuss",
        "--classifier",
        target,
        "--out",
        seg_out,
        "--device",
        "cpu",
        "--no-overlay",
    )
    assert code == 0, err
    labels = _png(seg_out / "23_image.png")
    assert labels.shape == (513, 513)
    assert set(np.unique(labels).tolist()) <= set(range(21))
    summary = json.loads((seg_out / "23_image.json").read_text())
    assert summary["classes"] == list(VOC21.names)
    assert summary["settings"]["short_side"] == 224 and summary["settings"]["sam_preset"] == LOOSE
    assert summary["models"]["checkpoint"] == str(out)  # the folder, however it was named


def test_fit_cli_resumes_only_the_unfinished_image(voc, tmp_path, capsys, monkeypatch):
    assert voc.runs["wsss"][0] == 0
    out = tmp_path / "wsss"
    bank = out / "bank"
    shutil.copytree(voc.bank, bank)  # copy2: the mtimes are kept
    redo = "23_image"
    (bank / f"{redo}.masks.json").unlink()  # the marker: the image counts as not done
    from ovss.io import _host_tag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = f"{_host_tag()}-{dead.pid}"  # temporary files are named by host and pid; this pid is dead
    stale = [
        bank / f".{redo}.safetensors.{tag}.k3j9x.part.safetensors",
        bank / f".0_image.masks.json.{tag}.q8w2.part.json",
    ]
    for p in stale:  # what a killed run leaves behind
        p.write_bytes(b"half a file")
    kept = {p.name: p.stat().st_mtime_ns for p in bank.iterdir() if not p.name.startswith((redo, "."))}
    assert len(kept) == 4
    calls = _counting_embed(monkeypatch)
    argv = [
        "fit",
        "tuss",
        "--setting",
        "wsss",
        "--images",
        voc.images,
        "--vocab",
        "voc21",
        "--out",
        out,
        *FIT_ARGS,
        "--tags",
        voc.tags,
    ]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert calls == [(513, 513, 3)]  # only the unfinished image was embedded again
    assert not any(p.exists() for p in stale)
    assert {n: (bank / n).stat().st_mtime_ns for n in kept} == kept
    assert (bank / f"{redo}.masks.json").is_file()
    # the same classifier and pseudo-masks as the uninterrupted fit
    from safetensors.torch import load_file

    before = load_file(str(voc.work / "wsss" / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=1e-5, atol=1e-6)
    for stem in PHOTOS:
        assert np.array_equal(_png(out / "seeds" / f"{stem}.png"), _png(voc.work / "wsss" / "seeds" / f"{stem}.png"))
    # a finished bank is not embedded again
    calls.clear()
    code, _, err = run(capsys, *argv)
    assert code == 0 and calls == [], err
    # other method settings into the same folder: refused rather than mixed with the old embeddings
    code, _, err = run(capsys, *argv, "--set", "short_side=160")
    assert code == 2 and "other classes or settings" in error_lines(err)[0] and len(error_lines(err)) == 1, err


def _write_tags(d: Path, data) -> Path:
    (d / "tags.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return d / "tags.json"


def _tags_without(voc, d: Path, stem: str) -> Path:
    data = json.loads(voc.tags.read_text())
    del data[f"{stem}.png"]
    return _write_tags(d, data)


def _tags_with(voc, d: Path, extra: str) -> Path:
    data = json.loads(voc.tags.read_text())
    data["0_image.png"].append(extra)
    return _write_tags(d, data)


def _labels_with(voc, d: Path, stem: str, label: Image.Image) -> Path:
    folder = d / "bad_labels"
    shutil.copytree(voc.labels, folder)
    label.save(folder / f"{stem}.png")
    return folder


def _value_21(voc, d):
    lab = _png(voc.labels / "1_image.png").astype(np.uint8)
    lab[5, 5] = 21  # one past the last VOC class; 255 elsewhere is fine
    return _labels_with(voc, d, "1_image", Image.fromarray(lab, mode="L"))


def _empty(d: Path) -> Path:
    (d / "empty").mkdir()
    return d / "empty"


# (setting, extra arguments given (voc, tmp_path), message, whether the shared bank is linked in)
FIT_CASES = {
    "wsss without --tags": ("wsss", lambda v, d: [], "wsss needs image tags", False),
    "tags file missing": ("wsss", lambda v, d: ["--tags", d / "nope.json"], "tags file not found", False),
    "tags not JSON": ("wsss", lambda v, d: ["--tags", _write_tags(d, "{aeroplane")], "not a readable JSON", False),
    "tags a list": ("wsss", lambda v, d: ["--tags", _write_tags(d, ["aeroplane"])], "expected a JSON object", False),
    "tags not lists": (
        "wsss",
        lambda v, d: ["--tags", _write_tags(d, {"0_image.png": "aeroplane"})],
        "expected a JSON object",
        False,
    ),
    "tags missing an image": (
        "wsss",
        lambda v, d: ["--tags", _tags_without(v, d, "1_image")],
        "no tags for 1_image.png",
        False,
    ),
    "tag not a class": (
        "wsss",
        lambda v, d: ["--tags", _tags_with(v, d, "unicorn")],
        "tag 'unicorn' of 0_image.png is not one of the classes",
        False,
    ),
    "sss without --labels": ("sss", lambda v, d: [], "sss needs pixel labels", False),
    "fsss without --labels": ("fsss", lambda v, d: [], "fsss needs pixel labels", False),
    "labels not a folder": ("sss", lambda v, d: ["--labels", v.tags], "not a folder of label PNGs", False),
    "no label matches": ("sss", lambda v, d: ["--labels", _empty(d)], "no label PNG matches", False),
    "fsss with a label missing": ("fsss", lambda v, d: ["--labels", v.partial], "1_image.png is missing", False),
    "label value 21": ("fsss", lambda v, d: ["--labels", _value_21(v, d)], "value 21 is not a class index", False),
    "label of the wrong size": (
        "sss",
        lambda v, d: ["--labels", _labels_with(v, d, "0_image", Image.new("L", (100, 80)))],
        "label is 100x80 but its image is 513x513",
        False,
    ),
    "colour-coded label": (
        "sss",
        lambda v, d: ["--labels", _labels_with(v, d, "0_image", Image.new("RGB", (513, 513)))],
        "colour-coded mask",
        False,
    ),
    "unknown --set key": (
        "sss",
        lambda v, d: ["--labels", v.labels, "--set", "nosuch=1"],
        "has no setting 'nosuch'",
        False,
    ),
    "heldout out of range": (
        "sss",
        lambda v, d: ["--labels", v.labels, "--set", "heldout=1.5"],
        "heldout 1.5 must lie in [0, 1)",
        False,
    ),
    "bad weighting": (
        "wsss",
        lambda v, d: ["--tags", v.tags, "--set", "weighting='l2'"],
        "must be rigorous or l1",
        False,
    ),
    "SAM finds no mask": (
        "ovss",
        lambda v, d: ["--preset", "corrclip"],
        "SAM found no mask in any training image",
        None,
    ),
}


@pytest.mark.parametrize("case", list(FIT_CASES))
def test_bad_fit_input(voc, tmp_path, capsys, case):
    setting, extra, message, linked = FIT_CASES[case]
    out = tmp_path / "out"
    if linked:  # checks that come after the bank: reuse the finished one
        _link_bank(voc.bank, out)
    code, _, err = run(
        capsys,
        "fit",
        "tuss",
        "--setting",
        setting,
        "--images",
        voc.images,
        "--vocab",
        "voc21",
        "--out",
        out,
        *FIT_ARGS,
        *extra(voc, tmp_path),
    )
    assert code == 2
    errors = error_lines(err)
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not (out / "model.safetensors").exists() and not (out / "fit.json").exists()
    if linked is False:  # checked before any image is embedded
        assert not (out / "bank").exists()


def _fmbseg_checkpoint(d: Path) -> Path:
    from ovss.methods.fmbseg.module import AlignmentModule, ModuleConfig, save_checkpoint

    save_checkpoint(d / "run", AlignmentModule(ModuleConfig.for_dims(48, 32)), {}, {"dino": "x", "clip": "y"}, {})
    return d / "run" / "model.safetensors"


def _random_bytes(d: Path) -> Path:
    (d / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(300))
    return d / "random.safetensors"


def _plain_safetensors(d: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(d / "plain.safetensors"))
    return d / "plain.safetensors"


def _other_method_folder(d: Path) -> Path:
    from ovss.checkpoints import save_checkpoint as save_folder

    return save_folder(d / "run", "fmbseg", {"w": torch.zeros(2)}, {}, {"dino": "x"})


def _truncated_weights(d: Path) -> Path:
    from ovss.checkpoints import save_checkpoint as save_folder

    vocab = build_vocabulary("cat; dog").to_dict()
    extra = {"setting": "wsss", "vocabulary": vocab, "fixed_classes": True, "glcc": {"fitted": True}}
    folder = save_folder(d / "run", "tuss", {"w": torch.zeros(64)}, {}, {}, extra)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    return folder


CLASSIFIER_CASES = {
    "folder without a classifier": (_empty, [], "not a checkpoint folder (no config.json)"),
    "folder without a classifier, classes given": (_empty, ["--classes", "cat; dog"], "not a checkpoint folder"),
    "missing file": (lambda d: d / "nope.safetensors", [], "checkpoint not found"),
    "FMbSeg run": (_fmbseg_checkpoint, [], "a fmbseg checkpoint, not a tuss one"),
    "FMbSeg run, classes given": (_fmbseg_checkpoint, ["--classes", "cat"], "a fmbseg checkpoint, not a tuss one"),
    "FMbSeg run folder": (_other_method_folder, [], "a fmbseg checkpoint, not a tuss one; use --method fmbseg"),
    "safetensors without a folder": (_plain_safetensors, [], "a file outside a checkpoint folder"),
    "random bytes": (_random_bytes, [], "a file outside a checkpoint folder"),
    "truncated weights": (_truncated_weights, [], "unreadable weights"),
}


@pytest.mark.parametrize("case", list(CLASSIFIER_CASES))
def test_bad_classifier(voc, tmp_path, capsys, case):
    make, extra, message = CLASSIFIER_CASES[case]
    seg_out = tmp_path / "seg"
    code, _, err = run(
        capsys,
        "segment",
        voc.images / "0_image.png",
        "--method",
        "tuss",
        "--classifier",
        make(tmp_path),
        "--out",
        seg_out,
        "--device",
        "cpu",
        *extra,
    )
    assert code == 2
    errors = error_lines(err)
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not seg_out.exists() or not any(seg_out.glob("*.png"))


def test_segment_refuses_other_classes_than_the_classifiers(voc, tmp_path, capsys):
    assert voc.runs["sss"][0] == 0
    seg_out = tmp_path / "seg"
    code, _, err = run(
        capsys,
        "segment",
        voc.images / "0_image.png",
        "--method",
        "tuss",
        "--classifier",
        voc.work / "sss",
        "--classes",
        "cat; dog",
        "--out",
        seg_out,
        "--device",
        "cpu",
    )
    assert code == 2
    assert "this checkpoint was fitted for the classes background; aeroplane" in error_lines(err)[0], err
    assert "Traceback" not in err
    assert not seg_out.exists() or not any(seg_out.glob("*.png"))
    # the classifier's own classes, given explicitly, are accepted
    names = "; ".join(VOC21.names[1:])
    code, _, err = run(
        capsys,
        "segment",
        voc.images / "0_image.png",
        "--method",
        "tuss",
        "--classifier",
        voc.work / "sss",
        "--classes",
        names,
        "--background",
        "words",
        "--out",
        seg_out,
        "--device",
        "cpu",
    )
    # "words" gives SCLIP's 26 background words; voc21's background has the same name
    assert code == 0, err


def test_segment_other_classes_is_one_error_before_any_image(voc, tmp_path, capsys, monkeypatch):
    calls = _counting_embed(monkeypatch)
    code, _, err = run(
        capsys,
        "segment",
        voc.images / "0_image.png",
        voc.images / "1_image.png",
        "--method",
        "tuss",
        "--classifier",
        voc.work / "sss",
        "--classes",
        "cat; dog",
        "--out",
        tmp_path / "seg",
        "--device",
        "cpu",
    )
    assert code == 2
    assert len(error_lines(err)) == 1, err
    assert calls == []


# --------------------------------------------------------------------------------------------
# the synthetic world through the API
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def syn(module_env, tmp_path_factory):
    """Six synthetic scenes, their mask bank (built once, by an ovss fit) and tags."""
    work = tmp_path_factory.mktemp("tuss_syn")
    scenes = make_dataset(6, seed=3, **SCENE_KW)
    root = write_dataset(scenes, work / "data")
    paths = sorted((root / "images").glob("*.png"))
    stems = [p.stem for p in paths]
    seg = Segmenter("tuss", clip=SyntheticCLIP(), sam=SyntheticMaskGenerator(), device="cpu", **METHOD_KW)
    vocab = build_vocabulary(NAMES)
    fit_tuss(seg.method, paths, stems, work / "ovss", vocab, "ovss", fit_settings({}), progress=False)
    tags = work / "tags.json"
    tags.write_text(json.dumps({f"{s.name}.png": s.present_classes for s in scenes}))
    return SimpleNamespace(
        work=work,
        scenes=scenes,
        root=root,
        paths=paths,
        stems=stems,
        seg=seg,
        vocab=vocab,
        bank=work / "ovss" / "bank",
        tags=tags,
    )


def _fit(syn, out: Path, setting: str, overrides: dict | None = None, vocab=None, **supervision):
    _link_bank(syn.bank, out)
    fs = fit_settings({**FAST, **(overrides or {})})
    return fit_tuss(
        syn.seg.method, syn.paths, syn.stems, out, vocab or syn.vocab, setting, fs, progress=False, **supervision
    )


def test_classifier_round_trip(syn, tmp_path, monkeypatch):
    saved: list[TUSSClassifier] = []
    original = TUSSClassifier.save

    def save(self, out):
        saved.append(self)
        return original(self, out)

    monkeypatch.setattr(TUSSClassifier, "save", save)
    out = tmp_path / "wsss"
    report = _fit(syn, out, "wsss", tags=syn.tags)
    (fitted,) = saved
    loaded = TUSSClassifier.load(out)
    assert loaded.setting == "wsss" and loaded.vocabulary == syn.vocab and loaded.info["masks"] == report["masks"]
    bank = load_bank(syn.stems, out / "bank")
    scene = make_dataset(1, seed=99, prefix="new", **SCENE_KW)[0]
    me = syn.seg.method.embed(scene.image)
    for emb in (bank.embeddings, me.embeddings):  # training masks (in the graph) and new ones
        torch.testing.assert_close(loaded.glcc.predict(emb), fitted.glcc.predict(emb), rtol=1e-5, atol=1e-6)
    assert loaded.glcc.config.lp_weight == fitted.glcc.config.lp_weight == report["lp_weight"]
    assert loaded.glcc.lp_classifier.config == fitted.glcc.lp_classifier.config
    assert loaded.method_settings == fitted.method_settings
    assert loaded.method_settings["window"] == (96, 32) and isinstance(loaded.method_settings["window"], tuple)

    # the tag restriction reaches the fitted training scores: exactly 0 outside each image's tags
    for i, s in enumerate(syn.scenes):
        outside = [c for c, n in enumerate(NAMES) if n not in s.present_classes]
        assert (fitted.glcc.train_scores[bank.rows(i)][:, outside] == 0).all()
        seeds = set(np.unique(_png(out / "seeds" / f"{s.name}.png")).tolist())
        assert seeds <= {NAMES.index(n) for n in s.present_classes} | {255}

    # Segmenter(checkpoint=...) takes the recorded settings, and the classifier's classes when none are given
    seg = Segmenter("tuss", clip=SyntheticCLIP(), sam=SyntheticMaskGenerator(), device="cpu", checkpoint=str(out))
    assert (seg.settings.window, seg.settings.short_side, seg.settings.templates) == ((96, 32), 160, "simple")
    result = seg.segment(scene.image)
    assert result.class_names == NAMES
    expected = paint(
        me.masks, me.levels, loaded.glcc.predict(me.embeddings).T, np.zeros(scene.labels.shape, dtype=np.int32)
    )
    assert np.array_equal(result.labels, expected)
    assert pixel_accuracy(result.labels, scene.labels) > 0.8
    # settings given explicitly win over the recorded ones
    other = Segmenter(
        "tuss", clip=SyntheticCLIP(), sam=SyntheticMaskGenerator(), device="cpu", checkpoint=str(out), short_side=128
    )
    assert other.settings.short_side == 128 and other.settings.window == (96, 32)


def test_open_vocabulary_classifier_file_round_trip(tmp_path):
    vocab = build_vocabulary("cat; sofa, couch", "words:sky,wall")
    settings = {"window": ((96, 32), (64, 32)), "short_side": 160, "templates": "simple"}
    path = TUSSClassifier("ovss", vocab, None, settings, {"clip": "c"}, {"images": 2}).save(tmp_path)
    assert path == tmp_path / "model.safetensors"
    loaded = TUSSClassifier.load(path)
    assert loaded.vocabulary == vocab and loaded.vocabulary.queries == ("sky", "wall", "cat", "sofa", "couch")
    assert loaded.glcc is None and loaded.setting == "ovss"
    assert loaded.method_settings == settings and loaded.models == {"clip": "c"} and loaded.info == {"images": 2}
    loaded.check_vocabulary(build_vocabulary("cat; sofa", "words"))  # the names decide
    with pytest.raises(InputError, match="fitted for the classes background; cat; sofa"):
        loaded.check_vocabulary(build_vocabulary("cat; sofa"))


def test_heldout_selection_of_lp_weight_and_k_bar(syn, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    labelled = syn.stems[:4]
    for stem in labelled:
        shutil.copy(syn.root / "labels" / f"{stem}.png", partial / f"{stem}.png")
    out = tmp_path / "sss"
    report = _fit(syn, out, "sss", labels=partial)
    saved = json.loads((out / "fit.json").read_text())
    sel = saved["selection"]
    assert len(sel["heldout_images"]) == 1 and set(sel["heldout_images"]) <= set(labelled)  # ceil(0.2 * 4)
    fs = FitSettings()
    table = sel["table"]
    assert [(r["k_bar"], r["lp_weight"]) for r in table] == [(k, w) for k in fs.k_bars for w in fs.lp_weights]
    assert all(0 <= r["mIoU"] <= 100 for r in table)
    best = next(r for r in table if r["mIoU"] == max(r["mIoU"] for r in table))  # the first of equals
    assert (sel["k_bar"], sel["lp_weight"], sel["heldout_mIoU"]) == (best["k_bar"], best["lp_weight"], best["mIoU"])
    chosen = (sel["k_bar"], sel["lp_weight"])
    assert (saved["k_bar"], saved["lp_weight"]) == (report["k_bar"], report["lp_weight"]) == chosen
    glcc = TUSSClassifier.load(out).glcc
    assert glcc.config.lp_weight == sel["lp_weight"] and glcc.lp_classifier.config.k_bar == sel["k_bar"]

    # a sweep of one's own, more held-out images; fsss takes them out of the training set
    out = tmp_path / "fsss_sweep"
    sel = _fit(
        syn, out, "fsss", {"k_bars": (3, 6), "lp_weights": (0.5, 4.0), "heldout": 0.5}, labels=syn.root / "labels"
    )["selection"]
    assert len(sel["heldout_images"]) == 3 and set(sel["heldout_images"]) <= set(syn.stems)
    assert [(r["k_bar"], r["lp_weight"]) for r in sel["table"]] == [(3, 0.5), (3, 4.0), (6, 0.5), (6, 4.0)]
    # one of the two fixed: only the other is swept
    sel = _fit(syn, tmp_path / "one_fixed", "sss", {"k_bar": 6}, labels=partial)["selection"]
    assert [r["k_bar"] for r in sel["table"]] == [6] * len(fs.lp_weights) and sel["k_bar"] == 6

    # both given, or heldout 0, or a single labelled image: no selection
    out = tmp_path / "fixed"
    report = _fit(syn, out, "sss", {"lp_weight": 2.0, "k_bar": 12}, labels=partial)
    assert "selection" not in report and "selection" not in json.loads((out / "fit.json").read_text())
    assert (report["lp_weight"], report["k_bar"]) == (2.0, 12)
    report = _fit(syn, tmp_path / "off", "sss", {"heldout": 0.0}, labels=partial)
    assert "selection" not in report and (report["lp_weight"], report["k_bar"]) == (1.5, 12)
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(partial / f"{labelled[0]}.png", single / f"{labelled[0]}.png")
    assert "selection" not in _fit(syn, tmp_path / "one", "sss", labels=single)


def test_fit_tuss_refuses_bad_settings(syn, tmp_path):
    with pytest.raises(InputError, match="ovss fit tuss has no setting 'k_barr'"):
        fit_settings({"k_barr": 3})
    with pytest.raises(InputError, match=r"heldout -0\.1"):
        fit_settings({"heldout": -0.1})
    with pytest.raises(InputError, match="unknown setting 'semi'"):
        fit_tuss(syn.seg.method, syn.paths, syn.stems, tmp_path, syn.vocab, "semi", FitSettings(), progress=False)
    assert not any(tmp_path.iterdir())


def test_api_refit_with_other_embedding_settings_does_not_reuse_the_bank(syn, tmp_path, monkeypatch):
    out = tmp_path / "fsss"
    shutil.copytree(syn.bank, out / "bank")
    calls = _counting_embed(monkeypatch)
    other = Segmenter(
        "tuss", clip=SyntheticCLIP(), sam=SyntheticMaskGenerator(), device="cpu", **{**METHOD_KW, "short_side": 128}
    )
    try:
        fit_tuss(
            other.method,
            syn.paths,
            syn.stems,
            out,
            syn.vocab,
            "fsss",
            fit_settings({**FAST, "heldout": 0.0}),
            labels=syn.root / "labels",
            progress=False,
        )
    except InputError as e:
        assert "other classes or settings" in str(e)
    else:
        assert len(calls) == len(syn.paths)  # re-embedded with the settings the classifier records


def test_fit_with_threshold_background_gives_a_finite_classifier(syn, tmp_path):
    vocab = build_vocabulary(NAMES[1:], "threshold")  # class 0 'background' stands for the labels' red
    out = tmp_path / "fsss"
    _fit(syn, out, "fsss", {"heldout": 0.0}, vocab=vocab, labels=syn.root / "labels")
    glcc = TUSSClassifier.load(out).glcc
    bank = load_bank(syn.stems, out / "bank")
    assert glcc.predict(bank.embeddings).amax(1).gt(0).all()
    assert torch.isfinite(glcc.probe.weight).all()
    assert torch.isfinite(class_text_embeddings(syn.seg.method, vocab)).all()


class _NoMasks:
    name = "no-masks"

    def generate(self, image):
        return MaskSet([], image.shape[:2])


def test_other_classes_are_refused_even_when_sam_finds_no_mask(syn, tmp_path):
    out = tmp_path / "fsss"
    _fit(syn, out, "fsss", {"heldout": 0.0}, labels=syn.root / "labels")
    seg = Segmenter("tuss", clip=SyntheticCLIP(), sam=_NoMasks(), device="cpu", checkpoint=str(out))
    with pytest.raises(InputError, match="fitted for the classes"):
        seg.segment(syn.scenes[0].image, "cat; dog")


# --------------------------------------------------------------------------------------------
# small parts by hand
# --------------------------------------------------------------------------------------------


def test_votes_are_exact_fractions_ignoring_255():
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]])
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True  # 4 x class 0, 4 x class 1
    masks[1, 1:, 1:] = True  # 1 x class 0, 2 x class 1, 2 x class 2, 4 x 255
    masks[2, 2:, 2:] = True  # only 255
    v = votes(masks, label, 3)
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.4, 0.4], [0.0, 0.0, 0.0]])
    assert torch.equal(v, expected)
    # 255 is not counted as the last class even where it is the only class left
    assert torch.equal(votes(masks[1:2], np.where(label == 2, 255, label), 2), torch.tensor([[1 / 3, 2 / 3]]))


def test_paint_orders_by_level_then_confidence():
    whole = torch.ones(4, 4, dtype=torch.bool)
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    right_top = torch.zeros(4, 4, dtype=torch.bool)
    right_top[:2, 2:] = True
    corner = torch.zeros(4, 4, dtype=torch.bool)
    corner[0, 3] = True
    masks = torch.stack([whole, left, right_top, corner])
    levels = [2, 0, 2, 2]
    scores = torch.tensor(
        [
            [0.6, 0.0, 0.0, 0.0],  # whole: class 0, confidence 0.6
            [0.0, 0.99, 0.0, 0.0],  # left: class 1, the surest, but a sub-part (level 0)
            [0.0, 0.0, 0.7, 0.0],  # right_top: class 2, surer than whole
            [0.0, 0.0, 0.0, 0.5],
        ]
    )  # corner: class 3, least sure of level 2
    fill = np.full((4, 4), 255, dtype=np.int32)
    out = paint(masks, levels, scores, fill)
    expected = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert np.array_equal(out, expected)  # left under whole; corner (0.5) under whole (0.6) under right_top (0.7)
    assert (fill == 255).all()  # the fill is copied, not painted over
    assert np.array_equal(paint(masks[1:2], [0], scores[:, 1:2], fill)[:, 2:], fill[:, 2:])  # unpainted: the fill
    assert np.array_equal(paint(torch.zeros(0, 4, 4, dtype=torch.bool), [], torch.zeros(4, 0), fill), fill)


def _method(**settings) -> TUSSMethod:
    kw = dict(templates="simple", short_side=64, window=None, global_weight=1.0)
    seg = Segmenter("tuss", clip=SyntheticCLIP(), sam=SyntheticMaskGenerator(), device="cpu", **{**kw, **settings})
    return seg.method


@pytest.mark.parametrize("settings", [{}, {"norm": True}, {"background_method": "prompt", "background_power": 0.5}])
def test_text_scores_with_candidates(settings):
    method = _method(**settings)
    colours = build_vocabulary(["red", "green", "blue", "yellow"])
    g = torch.Generator().manual_seed(0)
    noise = 0.3 * torch.randn(8, 32, generator=g)
    emb = F.normalize(class_text_embeddings(method, colours).repeat(2, 1) + noise, dim=-1)

    vocab = build_vocabulary(["red", "green", "blue", "yellow"], "words")  # class 0: background
    cand = torch.tensor([False, False, True, False, True])  # green, yellow; background left unmarked
    full = method.text_scores(emb, vocab)
    probs = method.text_scores(emb, vocab, cand)
    assert probs.shape == (5, 8)
    assert torch.equal(probs[[1, 3]], torch.zeros(2, 8))  # exactly 0 outside the candidates
    norm = settings.get("norm", False)  # the per-class min-max sends each class's least sure mask to 0
    assert norm or (probs[[2, 4]] > 0).all()
    if settings.get("background_method") == "prompt":  # background stays a candidate: its own queries score
        assert (probs[0] > 0).all()
    else:  # pow: 1 - the best candidate
        assert torch.equal(probs[0], (1 - probs[1:].amax(0)).clamp(min=0))
    if not settings:  # restricting the softmax only moves probability onto the candidates
        assert (probs[[2, 4]] >= full[[2, 4]] - 1e-6).all()
    # per-mask candidates
    per_mask = torch.zeros(8, 5, dtype=torch.bool)
    per_mask[:4, 1] = True
    per_mask[4:, 3] = True
    probs = method.text_scores(emb, vocab, per_mask)
    assert torch.equal(probs[[2, 4]], torch.zeros(2, 8))
    assert torch.equal(probs[3, :4], torch.zeros(4)) and torch.equal(probs[1, 4:], torch.zeros(4))
    assert norm or ((probs[1, :4] > 0).all() and (probs[3, 4:] > 0).all())

    # without a background class, only the candidates score, and they share the whole probability
    probs = method.text_scores(emb, colours, torch.tensor([False, True, False, True]))
    assert torch.equal(probs[[0, 2]], torch.zeros(2, 8))
    if not settings:
        torch.testing.assert_close(probs.sum(0), torch.ones(8))


def test_read_tags_and_labels(tmp_path):
    vocab = build_vocabulary("cat; sofa, couch; potted plant", "words")
    paths = [tmp_path / "a.jpg", tmp_path / "sub" / "b.png", tmp_path / "c.png"]
    tags = tmp_path / "tags.json"
    tags.write_text(json.dumps({"a.jpg": ["Couch", "cat", "sofa"], "sub/b": ["potted plant"], "c": []}))
    assert read_tags(tags, paths, ["a", "sub/b", "c"], vocab) == [[1, 2], [3], []]
    label = tmp_path / "l.png"
    Image.fromarray(np.array([[0, 3, 255]], dtype=np.uint8), mode="L").save(label)
    assert read_label(label, (1, 3), 4).tolist() == [[0, 3, 255]]
    with pytest.raises(InputError, match="label value 3 is not a class index"):
        read_label(label, (1, 3), 3)
    with pytest.raises(InputError, match="label is 3x1 but its image is 4x1"):
        read_label(label, (1, 4), 4)
