"""Bad input across every subcommand: each case is exit code 2, error lines only (no traceback), a
message naming the problem, and no partial output left behind."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.cli import main


def _photo(d: Path, name: str = "a.png", size: tuple[int, int] = (40, 32)) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(d / name)
    return d / name


def _thin(d: Path) -> Path:
    return _photo(d, "thin.png", (4000, 3))


def _file(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "not_a_folder").write_text("x")
    return d / "not_a_folder"


def _under_a_file(d: Path) -> Path:
    return _file(d) / "out"  # a folder that cannot exist (CI runs as root, so read-only bits would not stop it)


def _pickle_clip(d: Path) -> Path:
    folder = d / "clip_pickle"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "clip"}')
    (folder / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    return folder


def _truncated_clip(d: Path) -> Path:
    from ovss.models import save_tiny_clip

    folder = save_tiny_clip(d / "clip_trunc")
    weights = next(Path(folder).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    return Path(folder)


def _tags(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "tags.json").write_text("{not json")
    return d / "tags.json"


def _empty_dir(d: Path) -> Path:
    folder = d / "empty"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _corrupt(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return d / "corrupt.png"


def _truncated_jpeg(d: Path) -> Path:
    path = _photo(d, "full.png", (64, 48))
    Image.open(path).save(d / "truncated.jpg", quality=90)
    data = (d / "truncated.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return d / "truncated.jpg"


def _bert(d: Path) -> Path:
    folder = d / "bert"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    return folder


def _tiny_clip_dir(d: Path) -> Path:
    from ovss.models import save_tiny_clip

    return Path(save_tiny_clip(d / "clip_ok"))


def _fmbseg_run(d: Path) -> Path:
    import torch

    from ovss.checkpoints import save_checkpoint

    return save_checkpoint(d / "run", "fmbseg", {"w": torch.zeros(1)}, {}, {"dino": "tiny-random"})


def _latin1(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "classes.txt").write_bytes("caf\xe9; th\xe9".encode("latin-1"))
    return d / "classes.txt"


# name: (argv builder taking the tmp folder, a fragment of the expected message)
CASES = {
    # segment
    "segment: missing image": (lambda t: ["segment", str(t / "nope.jpg"), "-c", "cat"], "no such file"),
    "segment: empty classes": (lambda t: ["segment", str(_photo(t)), "-c", " ; ;"], "no class names"),
    "segment: duplicate classes": (lambda t: ["segment", str(_photo(t)), "-c", "cat; Cat"], "cat"),
    "segment: unknown method": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "-m", "nope"], "unknown method"),
    "segment: area_thd=abc": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--set", "area_thd=abc"], "area_thd"),
    "segment: window=5": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--set", "window=5"], "window"),
    "segment: pamr_dilations=()": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat", "--pamr", "2", "--set", "pamr_dilations=()"],
        "pamr_dilations",
    ),
    "segment: logit_scale nan": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat", "--set", "logit_scale=float('nan')"],
        "logit_scale",
    ),
    "segment: NaN text": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--logit-scale", "nan"], "logit_scale"),
    "segment: unknown setting": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--set", "nope=1"], "nope"),
    "segment: set without =": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--set", "nope"], "KEY=VALUE"),
    "segment: window under a patch": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--window", "8,4"], "patch"),
    "segment: prob-thd 2": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--prob-thd", "2"], "prob_thd"),
    "segment: bad window text": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--window", "a,b"], "CROP,STRIDE"),
    "segment: thin image": (lambda t: ["segment", str(_thin(t)), "-c", "cat"], "too thin"),
    "segment: out is a file": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "-o", str(_file(t))], "not_a_folder"),
    "segment: out under a file": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat", "-o", str(_under_a_file(t))],
        "not a directory",
    ),
    "segment: checkpoint for sclip": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--checkpoint", "x"], "no"),
    "segment: pickled clip": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat", "--clip", str(_pickle_clip(t))],
        "clip",
    ),
    "segment: truncated clip": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat", "--clip", str(_truncated_clip(t))],
        "clip_trunc",
    ),
    "segment: classes file missing": (lambda t: ["segment", str(_photo(t)), "-c", "@nope.txt"], "class file"),
    "segment: fmbseg without checkpoint": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "-m", "fmbseg"], "needs"),
    "segment: bad device": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--device", "tpu"], "device"),
    "segment: bad precision setting": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat", "--set", "precision='fp8'"],
        "precision",
    ),
    "segment: bad templates": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--templates", "nope"], "nope"),
    "segment: tuss classes mismatch checkpoint": (
        lambda t: ["segment", str(_photo(t)), "-m", "tuss", "-c", "cat", "--checkpoint", str(t)],
        "checkpoint",
    ),
    # eval
    "eval: garbage RANK": (lambda t: ["eval", "-d", "voc21", "--root", str(t), "ENV:RANK=abc"], "RANK"),
    "eval: garbage WORLD_SIZE": (lambda t: ["eval", "-d", "voc21", "--root", str(t), "ENV:WORLD_SIZE=x"], "WORLD_SIZE"),
    "eval: rank outside world": (lambda t: ["eval", "-d", "voc21", "--root", str(t), "ENV:RANK=3"], "RANK"),
    "eval: no dataset": (lambda t: ["eval", "--root", str(t)], "--dataset"),
    "eval: both dataset and suite": (lambda t: ["eval", "-d", "voc21", "--suite", "all8", "--root", str(t)], "either"),
    "eval: unknown dataset": (lambda t: ["eval", "-d", "nope", "--root", str(t)], "nope"),
    "eval: missing root": (lambda t: ["eval", "-d", "voc21", "--root", str(t / "nope")], "nope"),
    "eval: unknown protocol": (lambda t: ["eval", "-d", "voc21", "--root", str(t), "-p", "nope"], "protocol"),
    "eval: area_thd=abc": (lambda t: ["eval", "-d", "voc21", "--root", str(t), "--set", "area_thd=abc"], "area_thd"),
    "eval: folder without names": (lambda t: ["eval", "-d", "folder", "--root", str(t)], "--names"),
    "eval: unknown method": (lambda t: ["eval", "-m", "nope", "-d", "voc21", "--root", str(t)], "unknown method"),
    # masks
    "masks: points_per_side=abc": (
        lambda t: ["masks", str(_photo(t)), "-o", str(t / "m"), "--set", "points_per_side=abc"],
        "points_per_side",
    ),
    "masks: pred_iou_thresh=abc": (
        lambda t: ["masks", str(_photo(t)), "-o", str(t / "m"), "--set", "pred_iou_thresh=abc"],
        "pred_iou_thresh",
    ),
    "masks: unknown sam setting": (lambda t: ["masks", str(_photo(t)), "-o", str(t / "m"), "--set", "nope=1"], "nope"),
    "masks: unknown kmeans setting": (
        lambda t: ["masks", str(_photo(t)), "-o", str(t / "m"), "-g", "kmeans", "--set", "nope=1"],
        "nope",
    ),
    "masks: unknown generator": (lambda t: ["masks", str(_photo(t)), "-o", str(t / "m"), "-g", "nope"], "nope"),
    "masks: unknown preset": (lambda t: ["masks", str(_photo(t)), "-o", str(t / "m"), "--preset", "nope"], "nope"),
    "masks: thin image": (lambda t: ["masks", str(_thin(t)), "-o", str(t / "m")], "too thin"),
    "masks: out is a file": (lambda t: ["masks", str(_photo(t)), "-o", str(_file(t))], "not_a_folder"),
    "masks: missing image": (lambda t: ["masks", str(t / "nope.png"), "-o", str(t / "m")], "no such file"),
    # pseudo-label
    "pseudo-label: tag_tau=abc": (
        lambda t: [
            "pseudo-label",
            "-m",
            "fmbseg",
            str(_photo(t)),
            "--vocab",
            "cat",
            "-o",
            str(t / "p"),
            "--set",
            "tag_tau=abc",
        ],
        "tag_tau",
    ),
    "pseudo-label: unknown setting": (
        lambda t: [
            "pseudo-label",
            "-m",
            "fmbseg",
            str(_photo(t)),
            "--vocab",
            "cat",
            "-o",
            str(t / "p"),
            "--set",
            "nope=1",
        ],
        "nope",
    ),
    "pseudo-label: empty vocab": (
        lambda t: ["pseudo-label", "-m", "fmbseg", str(_photo(t)), "--vocab", ";", "-o", str(t / "p")],
        "class",
    ),
    "pseudo-label: missing image": (
        lambda t: ["pseudo-label", "-m", "fmbseg", str(t / "x.png"), "--vocab", "cat", "-o", str(t / "p")],
        "no such file",
    ),
    "pseudo-label: thin image": (
        lambda t: ["pseudo-label", "-m", "fmbseg", str(_thin(t)), "--vocab", "cat", "-o", str(t / "p")],
        "thin",
    ),
    # train
    "train: no method given twice": (lambda t: ["train", "-m", "sclip", "--out", str(t / "r")], "no `ovss train`"),
    "train: unknown method": (lambda t: ["train", "-m", "nope", "--out", str(t / "r")], "unknown method"),
    "train: lr=abc": (
        lambda t: [
            "train",
            "-m",
            "fmbseg",
            "--images",
            str(t),
            "--labels",
            str(t),
            "-o",
            str(t / "r"),
            "--set",
            "lr=abc",
        ],
        "lr",
    ),
    "train: unknown setting": (
        lambda t: [
            "train",
            "-m",
            "fmbseg",
            "--images",
            str(t),
            "--labels",
            str(t),
            "-o",
            str(t / "r"),
            "--set",
            "nope=1",
        ],
        "nope",
    ),
    # fit
    "fit: method without fit": (lambda t: ["fit", "sclip", "--out", str(t / "f")], "no `ovss fit`"),
    "fit: lp_weight=abc": (
        lambda t: [
            "fit",
            "tuss",
            "--setting",
            "ovss",
            "--images",
            str(_photo(t)),
            "--vocab",
            "cat",
            "-o",
            str(t / "f"),
            "--set",
            "lp_weight=abc",
        ],
        "lp_weight",
    ),
    "fit: wsss without tags": (
        lambda t: [
            "fit",
            "tuss",
            "--setting",
            "wsss",
            "--images",
            str(_photo(t)),
            "--vocab",
            "cat",
            "-o",
            str(t / "f"),
        ],
        "tags",
    ),
    "fit: broken tags file": (
        lambda t: [
            "fit",
            "tuss",
            "--setting",
            "wsss",
            "--images",
            str(_photo(t)),
            "--vocab",
            "cat",
            "-o",
            str(t / "f"),
            "--tags",
            str(_tags(t)),
            "--sam",
            "tiny-random",
        ],
        "tags.json",
    ),
    "fit: unknown setting": (
        lambda t: [
            "fit",
            "tuss",
            "--setting",
            "ovss",
            "--images",
            str(_photo(t)),
            "--vocab",
            "cat",
            "-o",
            str(t / "f"),
            "--set",
            "nope=1",
        ],
        "nope",
    ),
    # label
    "label: unknown format": (
        lambda t: ["label", str(_photo(t)), "-c", "cat", "-o", str(t / "l"), "--format", "nope"],
        "nope",
    ),
    "label: empty classes": (lambda t: ["label", str(_photo(t)), "-c", ";", "-o", str(t / "l")], "no class names"),
    "label: area=abc": (
        lambda t: ["label", str(_photo(t)), "-c", "cat", "-o", str(t / "l"), "--set", "area_thd=abc"],
        "area_thd",
    ),
    # data
    "data: check missing root": (lambda t: ["data", "check", "voc21", "--root", str(t / "nope")], "nope"),
    "data: convert unknown": (lambda t: ["data", "convert", "nope", str(t)], "nope"),
    # more of each command
    "segment: empty folder": (lambda t: ["segment", str(_empty_dir(t)), "-c", "cat"], "no image"),
    "segment: corrupt image": (lambda t: ["segment", str(_corrupt(t)), "-c", "cat"], "not a readable image"),
    "segment: truncated jpeg": (lambda t: ["segment", str(_truncated_jpeg(t)), "-c", "cat"], "truncated.jpg"),
    "segment: 1x1 image": (lambda t: ["segment", str(_photo(t, "tiny.png", (1, 1))), "-c", "cat"], "at least"),
    "segment: background word as class": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat; road", "--background", "words"],
        "road",
    ),
    "segment: empty own background words": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat", "--background", "words:"],
        "background",
    ),
    "segment: unknown background mode": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat", "--background", "nope"],
        "background",
    ),
    "segment: short side 0": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--short-side", "0"], "short_side"),
    "segment: pamr -1": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--pamr", "-1"], "pamr"),
    "segment: window (0, 0)": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--set", "window=(0, 0)"], "window"),
    "segment: templates=5": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--set", "templates=5"], "templates"),
    "segment: precision choice": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--precision", "fp8"], "fp8"),
    "segment: max-pixels abc": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--max-pixels", "abc"], "abc"),
    "segment: image over max-pixels": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat", "--max-pixels", "100"],
        "limit",
    ),
    "segment: refine choice": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--refine", "crf"], "crf"),
    "segment: clip is a bert": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--clip", str(_bert(t))], "bert"),
    "segment: clip folder without config": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat", "--clip", str(_empty_dir(t))],
        "config.json",
    ),
    "segment: clip is a file": (lambda t: ["segment", str(_photo(t)), "-c", "cat", "--clip", str(_file(t))], "file"),
    "segment: unknown clip id offline": (
        lambda t: ["segment", str(_photo(t)), "-c", "cat", "--clip", "someone/nothing-here"],
        "someone/nothing-here",
    ),
    "segment: tuss with another method's checkpoint": (
        lambda t: ["segment", str(_photo(t)), "-m", "tuss", "-c", "cat", "--checkpoint", str(_fmbseg_run(t))],
        "fmbseg",
    ),
    "segment: classes file not utf-8": (lambda t: ["segment", str(_photo(t)), "-c", "@" + str(_latin1(t))], "utf-8"),
    "segment: only commas": (lambda t: ["segment", str(_photo(t)), "-c", ", , ;"], "no class names"),
    # eval
    "eval: limit abc": (lambda t: ["eval", "-d", "voc21", "--root", str(t), "--limit", "abc"], "abc"),
    "eval: metric choice": (lambda t: ["eval", "-d", "voc21", "--root", str(t), "--metric", "dice"], "dice"),
    "eval: suite choice": (lambda t: ["eval", "--suite", "all9", "--root", str(t)], "all9"),
    "eval: window=5": (lambda t: ["eval", "-d", "voc21", "--root", str(t), "--set", "window=5"], "window"),
    "eval: checkpoint for sclip": (lambda t: ["eval", "-d", "voc21", "--root", str(t), "--checkpoint", "x"], "no"),
    "eval: fmbseg without checkpoint": (
        lambda t: ["eval", "-m", "fmbseg", "-d", "voc21", "--root", str(_empty_dir(t))],
        "needs",
    ),
    # masks
    "masks: empty folder": (lambda t: ["masks", str(_empty_dir(t)), "-o", str(t / "m")], "no image"),
    "masks: corrupt image": (lambda t: ["masks", str(_corrupt(t)), "-o", str(t / "m")], "not a readable image"),
    "masks: stability=abc": (
        lambda t: ["masks", str(_photo(t)), "-o", str(t / "m"), "--set", "stability_score_thresh=abc"],
        "stability_score_thresh",
    ),
    "masks: sam is a clip": (
        lambda t: ["masks", str(_photo(t)), "-o", str(t / "m"), "--sam", str(_tiny_clip_dir(t))],
        "not SAM",
    ),
    # pseudo-label
    "pseudo-label: tag_tiles=(0,)": (
        lambda t: [
            "pseudo-label",
            "-m",
            "fmbseg",
            str(_photo(t)),
            "--vocab",
            "cat",
            "-o",
            str(t / "p"),
            "--set",
            "tag_tiles=(0,)",
        ],
        "tag_tiles",
    ),
    "pseudo-label: unknown preset": (
        lambda t: [
            "pseudo-label",
            "-m",
            "fmbseg",
            str(_photo(t)),
            "--vocab",
            "cat",
            "-o",
            str(t / "p"),
            "--preset",
            "nope",
        ],
        "nope",
    ),
    "pseudo-label: out is a file": (
        lambda t: ["pseudo-label", "-m", "fmbseg", str(_photo(t)), "--vocab", "cat", "-o", str(_file(t))],
        "not_a_folder",
    ),
    "pseudo-label: no vocab": (
        lambda t: ["pseudo-label", "-m", "fmbseg", str(_photo(t)), "-o", str(t / "p")],
        "--vocab",
    ),
    # train / fit
    "train: missing labels": (
        lambda t: [
            "train",
            "-m",
            "fmbseg",
            "--images",
            str(_empty_dir(t)),
            "--labels",
            str(t / "nope"),
            "-o",
            str(t / "r"),
        ],
        "nope",
    ),
    "train: no --images": (lambda t: ["train", "-m", "fmbseg", "--labels", str(t), "-o", str(t / "r")], "--images"),
    "train: epochs abc": (
        lambda t: [
            "train",
            "-m",
            "fmbseg",
            "--images",
            str(t),
            "--labels",
            str(t),
            "-o",
            str(t / "r"),
            "--epochs",
            "abc",
        ],
        "abc",
    ),
    "fit: sss without labels": (
        lambda t: [
            "fit",
            "tuss",
            "--setting",
            "sss",
            "--images",
            str(_photo(t)),
            "--vocab",
            "cat",
            "-o",
            str(t / "f"),
            "--sam",
            "tiny-random",
        ],
        "labels",
    ),
    "fit: unknown setting name": (
        lambda t: [
            "fit",
            "tuss",
            "--setting",
            "xsss",
            "--images",
            str(_photo(t)),
            "--vocab",
            "cat",
            "-o",
            str(t / "f"),
        ],
        "xsss",
    ),
    "fit: empty vocab": (
        lambda t: ["fit", "tuss", "--setting", "ovss", "--images", str(_photo(t)), "--vocab", ";", "-o", str(t / "f")],
        "no class names",
    ),
    # label / data / top level
    "label: empty format": (
        lambda t: ["label", str(_photo(t)), "-c", "cat", "-o", str(t / "l"), "--format", ""],
        "format",
    ),
    "label: min-area abc": (
        lambda t: ["label", str(_photo(t)), "-c", "cat", "-o", str(t / "l"), "--min-area", "abc"],
        "abc",
    ),
    "label: missing image": (lambda t: ["label", str(t / "nope.png"), "-c", "cat", "-o", str(t / "l")], "no such file"),
    "data: check unknown benchmark": (lambda t: ["data", "check", "nope", "--root", str(t)], "nope"),
    "unknown command": (lambda t: ["nope"], "nope"),
    "methods: unknown flag": (lambda t: ["methods", "--nope"], "--nope"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    build, fragment = CASES[case]
    argv = build(tmp_path / "w")
    capsys.readouterr()  # what building the case printed is not the command's output
    for arg in [a for a in argv if a.startswith("ENV:")]:
        key, value = arg[4:].split("=", 1)
        monkeypatch.setenv(key, value)
        argv.remove(arg)
    if "-o" not in argv and "--out" not in argv and argv[0] in ("segment", "eval"):
        argv += ["-o", str(tmp_path / "out")]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("ovss: ") for line in lines), err  # no usage block, no traceback
    errors = [line for line in lines if line.startswith("ovss: error")]
    assert fragment.lower() in errors[0].lower(), err  # the first error line names the problem
    out = tmp_path / "out"
    if out.is_dir():  # nothing half-written
        assert not [p for p in out.rglob("*") if p.is_file() and ".part" in p.name]


def test_a_folder_with_a_thin_image_still_segments_the_good_ones(tmp_path, capsys):
    folder = tmp_path / "photos"
    _photo(folder, "good.png")
    _thin(folder)
    code = main(["segment", str(folder), "-c", "cat; dog", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "thin.png" in err and "Traceback" not in err
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "thin.png").exists()


def test_a_long_file_name_still_gives_valid_output_names(tmp_path, capsys):
    name = "x" * 236 + ".png"  # 240 characters
    photo = _photo(tmp_path / "photos", name)
    code = main(["segment", str(photo), "-c", "cat", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert len(list((tmp_path / "out").glob("*.json"))) == 1
