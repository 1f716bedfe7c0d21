"""`ovss train --method fmbseg` killed with SIGKILL at three points and run again gives the weights
and the loss log of an uninterrupted run; a run with no optimisation step writes no checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ovss.errors import InputError
from ovss.io import save_image
from ovss.methods.fmbseg.train import STATE_FILE, TEST_DELAY_ENV, TrainSettings, train_fmbseg
from ovss.vocab import build_vocabulary

SRC = Path(__file__).resolve().parents[1] / "src"
VOC = "vainf_voc_samples/samples"
PHOTOS = ("0", "1", "8", "20", "23")  # 5 images, batches of 2: 3 batches per epoch
TRAIN = [
    "--epochs",
    "2",
    "--set",
    "size=56",
    "--set",
    "batch_images=2",
    "--set",
    "patches_per_image=16",
    "--set",
    "log_every=1",
    "--set",
    "save_every=2",
    "--set",
    "templates='simple'",
]
TIMEOUT = 240


def make_data(evaldata: Path, root: Path, labels: str = "halves") -> tuple[Path, Path]:
    """Real photos with hand-made labels: class 1 left of a brightness-dependent split, class 2 right,
    a top band ignored ("ignore" makes every pixel 255)."""
    images, lab_dir = root / "images", root / "labels"
    images.mkdir(parents=True)
    lab_dir.mkdir()
    for name in PHOTOS:
        src = evaldata / VOC / f"{name}_image.png"
        shutil.copy(src, images / src.name)
        grey = np.asarray(Image.open(src).convert("L"), dtype=np.int32)
        label = np.where(grey > grey.mean(), 1, 0).astype(np.uint8)
        label[:10] = 255
        if labels == "ignore":
            label[:] = 255
        save_image(lab_dir / src.name, Image.fromarray(label))
    (lab_dir / "vocabulary.json").write_text(json.dumps(build_vocabulary("cat; dog").to_dict()))
    return images, lab_dir


def command(images: Path, labels: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ovss.cli",
        "train",
        "--method",
        "fmbseg",
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--device",
        "cpu",
        *TRAIN,
    ]


def environment(delay: float = 0.0) -> dict[str, str]:
    # no disk text cache: another test embedding the same words in another batch (other padding) may
    # rewrite a cached vector in its last bits between the reference run and the resumed one
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "OVSS_CACHE_DIR": ""}
    env.pop(TEST_DELAY_ENV, None)
    if delay:
        env[TEST_DELAY_ENV] = str(delay)
    return env


def run_to_end(images: Path, labels: Path, out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command(images, labels, out), env=environment(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def position(out: Path) -> tuple[int, int] | None:
    try:
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    except (FileNotFoundError, EOFError, RuntimeError):
        return None
    return state["position"]["epoch"], state["position"]["batch"]


def log_steps(out: Path) -> list[tuple[int, int, float, float]]:
    rows = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["step"], r["loss"], r["lr"]) for r in rows]


@pytest.fixture(scope="module")
def data(evaldata, tmp_path_factory) -> dict[str, Path]:
    images, labels = make_data(evaldata, tmp_path_factory.mktemp("train_data"))
    return {"images": images, "labels": labels}


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run every killed run is compared with."""
    out = tmp_path_factory.mktemp("train_ref") / "run"
    run_to_end(data["images"], data["labels"], out)
    return {**data, "weights": load_file(str(out / "model.safetensors")), "log": log_steps(out)}


def _state_written(out: Path) -> bool:
    return position(out) == (0, 2)  # the mid-epoch save after step 2


def _epoch_end(out: Path) -> bool:
    return position(out) == (1, 0)


def _inside_state_write(out: Path) -> bool:
    # a temporary state file while an earlier state exists: the second save is under way
    return position(out) is not None and any((out / "state").glob(".resume.pt.*.part*"))


KILL_POINTS = {"mid-epoch": _state_written, "epoch-end": _epoch_end, "state-write": _inside_state_write}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_and_rerun_gives_the_uninterrupted_weights(reference, tmp_path, point):
    out = tmp_path / "run"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            command(reference["images"], reference["labels"], out), env=environment(0.4), stdout=log, stderr=log
        )
        deadline = time.time() + TIMEOUT
        try:
            while not KILL_POINTS[point](out):
                assert proc.poll() is None, (
                    "the run ended before the kill point: " + (tmp_path / "killed.log").read_text()
                )
                assert time.time() < deadline, "the kill point was never reached"
                time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert not (out / "model.safetensors").exists(), "the kill should land before the end"
    if point == "state-write":
        assert list((out / "state").glob(".resume.pt.*.part*")), "the kill should leave a half-written state"
    run_to_end(reference["images"], reference["labels"], out)
    weights = load_file(str(out / "model.safetensors"))
    assert weights.keys() == reference["weights"].keys()
    for key, value in weights.items():
        assert torch.equal(value, reference["weights"][key]), key
    assert log_steps(out) == reference["log"]  # every step once, with the same losses
    assert not [p for p in out.rglob("*") if ".part" in p.name or p.name.startswith((".checkpoint", ".ovss.lock"))]


def test_rerunning_a_finished_run_changes_nothing_and_other_settings_are_refused(data, tmp_path):
    out = tmp_path / "run"
    settings = TrainSettings(
        size=56, batch_images=2, patches_per_image=16, epochs=1, templates="simple", log_every=1, max_steps=2
    )
    torch.set_num_threads(1)
    first = train_fmbseg(data["images"], data["labels"], out, settings, device="cpu", progress=False)
    assert first["steps"] == 2 and (out / "config.json").is_file()
    log = (out / "loss_log.jsonl").read_text()
    weights = load_file(str(out / "model.safetensors"))
    again = train_fmbseg(data["images"], data["labels"], out, settings, device="cpu", progress=False)
    assert again["steps"] == 2 and (out / "loss_log.jsonl").read_text() == log
    assert all(torch.equal(v, weights[k]) for k, v in load_file(str(out / "model.safetensors")).items())
    with pytest.raises(InputError, match="other data or settings"):
        train_fmbseg(
            data["images"],
            data["labels"],
            out,
            TrainSettings(size=56, epochs=1, lr=1e-3, templates="simple"),
            device="cpu",
            progress=False,
        )


def test_labels_that_are_all_ignore_end_with_an_error_and_no_checkpoint(evaldata, tmp_path, capsys):
    from ovss.cli import main

    images, labels = make_data(evaldata, tmp_path, labels="ignore")
    argv = [
        "train",
        "--method",
        "fmbseg",
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--out",
        str(tmp_path / "run"),
        *TRAIN,
    ]
    assert main([*argv, "--device", "cpu"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ovss: error:")]
    assert len(errors) == 1 and "no training step was made" in errors[0]
    assert not (tmp_path / "run" / "model.safetensors").exists() and not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"lr": "fast"}, "lr must be float"),
        ({"purity": 1.5}, "purity must lie in"),
        ({"max_steps": 0}, "max_steps must be at least 1"),
        ({"flip": 1}, "flip must be bool"),
    ],
)
def test_settings_are_validated_with_the_setting_named(override, message):
    with pytest.raises(InputError, match=message):
        TrainSettings(**override).validate()


LAUNCHER = """
import sys
from ovss.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path: Path, images: Path, labels: Path, out: Path) -> list[str]:
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER)
    head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    return [*head, str(script), *command(images, labels, out)[3:]]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _kill_all(launcher: subprocess.Popen) -> None:
    """SIGKILL the launcher and its ranks. torchrun starts each rank in a session of its own, so a
    signal to the launcher's process group does not reach them: they would die later, on their own,
    still holding their output locks when the re-run starts."""
    from ovss.io import pid_alive

    ranks = _children(launcher.pid)
    os.killpg(launcher.pid, signal.SIGKILL)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.time() + 30
    while any(pid_alive(pid) for pid in ranks) and time.time() < deadline:  # SIGKILL is asynchronous
        time.sleep(0.05)


@pytest.mark.slow
def test_two_ranks_under_torchrun_resume_exactly_after_a_kill(reference, tmp_path):
    """gloo on CPU: each rank trains on its share of every batch; SIGKILL to the launcher and both ranks
    after the first mid-epoch state, then a re-run, gives the uninterrupted two-rank weights."""
    images, labels = reference["images"], reference["labels"]
    whole = subprocess.run(
        torchrun(tmp_path, images, labels, tmp_path / "whole"),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            torchrun(tmp_path, images, labels, out),
            env=environment(0.4),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.time() + TIMEOUT
        try:
            while not _state_written(out):
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.time() < deadline, "the kill point was never reached"
                time.sleep(0.01)
        finally:
            _kill_all(proc)
    assert not (out / "model.safetensors").exists()
    again = subprocess.run(
        torchrun(tmp_path, images, labels, out), env=environment(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert again.returncode == 0, again.stderr[-3000:]
    expected = load_file(str(tmp_path / "whole" / "model.safetensors"))
    for key, value in load_file(str(out / "model.safetensors")).items():
        assert torch.equal(value, expected[key]), key
    assert log_steps(out) == log_steps(tmp_path / "whole")
    assert [s for _, s, _, _ in log_steps(out)] == list(range(1, 7))
    assert not [p for p in out.rglob("*") if ".part" in p.name or p.name.startswith(".ovss.lock")]


def _shared_parser():
    """The parser `ovss train --method fmbseg` builds, less the method's own options (added by the test)."""
    import argparse

    from ovss.cliargs import add_model_args, add_set_arg

    p = argparse.ArgumentParser()
    p.add_argument("--method")
    p.add_argument("--out", "-o")
    add_model_args(p)
    add_set_arg(p, "settings")
    return p


def test_the_registered_train_command_writes_a_checkpoint_folder_segmenter_loads(evaldata, tmp_path):
    from ovss import Segmenter
    from ovss.checkpoints import load_checkpoint
    from ovss.methods import get_method_spec

    spec = get_method_spec("fmbseg")
    assert spec.checkpoint == "required"
    parser = _shared_parser()
    spec.commands["train"].add_arguments(parser)
    images, labels = make_data(evaldata, tmp_path)
    run = tmp_path / "run"
    args = parser.parse_args(
        [
            "--method",
            "fmbseg",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(run),
            "--device",
            "cpu",
            *TRAIN,
            "--set",
            "max_steps=1",
        ]
    )
    assert spec.commands["train"].run(args) == 0
    checkpoint = load_checkpoint(run, method="fmbseg")
    assert checkpoint.settings["max_steps"] == 1 and checkpoint.extra["steps"] == 1
    assert checkpoint.backbones == {"dino": "tiny-random", "clip": "tiny-random"}
    for given in (run, run / "model.safetensors", checkpoint):
        seg = Segmenter("fmbseg", checkpoint=given, device="cpu", short_side=56, window=None, templates="simple")
        size = Image.open(images / "0_image.png").size
        assert seg.segment(images / "0_image.png", "cat; dog").labels.shape == size[::-1]
