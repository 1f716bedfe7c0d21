"""Never touching the user's files: inputs stay unchanged whatever --out is, output-name clashes are
refused before work starts, only dead processes' temporary files are removed, a damaged output
is redone, and one process writes an output folder at a time."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovss.cli import main
from ovss.data.check import PairMismatch, check_sample
from ovss.data.datasets import Sample, SegDataset
from ovss.data.labels import read_label_png
from ovss.errors import InputError
from ovss.io import atomic_path, is_stale_part, output_is_complete, remove_stale_parts
from ovss.jobs import (
    JobKind,
    check_outputs,
    finished,
    interrupt_message,
    output_lock,
    plan_images,
    running,
    set_threads_per_process,
)

SRC = Path(__file__).resolve().parents[1] / "src"
SEGMENT = ["-c", "cat; dog", "--clip", "tiny-random", "--device", "cpu"]


def photo(path: Path, seed: int, size=(40, 32)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ovss: error:")]


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    photo(folder / "a.png", 0)
    photo(folder / "sub" / "b.jpg", 1)
    return folder


def test_out_equal_to_the_input_folder_is_refused_and_nothing_changes(photos, capsys):
    before = digests(photos)
    for command in (["segment", str(photos), *SEGMENT], ["masks", str(photos), "--generator", "kmeans"]):
        assert main([*command, "--out", str(photos)]) == 2
        (line,) = errors(capsys.readouterr().err)
        assert "is an input folder" in line
    assert digests(photos) == before


def test_out_inside_the_inputs_is_left_out_of_discovery_on_every_rerun(photos, capsys):
    inputs = digests(photos)
    out = photos / "out"
    assert main(["segment", str(photos), *SEGMENT, "--out", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.json", "a.png", "a_overlay.png", "sub/b.json", "sub/b.png", "sub/b_overlay.png"]
    assert main(["segment", str(photos), *SEGMENT, "--out", str(out)]) == 0
    assert "all 2 images already done" in capsys.readouterr().err
    assert not (out / "out").exists() and not list(out.rglob("*_overlay_overlay*"))
    assert {k: v for k, v in digests(photos).items() if not k.startswith("out/")} == inputs


def test_out_beside_the_inputs_leaves_them_unchanged(photos, tmp_path):
    before = digests(photos)
    assert main(["segment", str(photos), *SEGMENT, "--out", str(tmp_path / "seg")]) == 0
    assert main(["masks", str(photos), "--generator", "kmeans", "--out", str(tmp_path / "masks")]) == 0
    assert digests(photos) == before and (tmp_path / "seg" / "sub" / "b.png").is_file()


def test_an_output_that_would_overwrite_an_input_file_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    image = photo(out / "x.png", 2)  # an input that lies where its own label map would go
    before = digests(out)
    assert main(["segment", str(image), *SEGMENT, "--out", str(out)]) == 2
    (line,) = errors(capsys.readouterr().err)
    assert "would overwrite the input" in line and str(image) in line
    assert digests(out) == before


def test_the_overlay_name_clash_is_refused_before_any_work(tmp_path, capsys):
    photos = tmp_path / "photos"
    photo(photos / "x.jpg", 3)
    photo(photos / "x_overlay.jpg", 4)  # its label map x_overlay.png is x.jpg's overlay
    assert main(["segment", str(photos), *SEGMENT, "--out", str(tmp_path / "out")]) == 2
    (line,) = errors(capsys.readouterr().err)
    assert "would both write" in line and "x_overlay.png" in line
    assert not (tmp_path / "out").exists()
    # without overlays in the job's outputs the same folder is fine (masks write NAME.png and NAME.json)
    assert plan_images([photos], tmp_path / "m", 10**8, kind="masks")[1] == [Path("x"), Path("x_overlay")]


def test_the_planner_takes_any_job_kinds_output_names(tmp_path):
    kind = JobKind(("{stem}_labels.png", "{stem}.txt", "summary.json"), "kept")
    paths, stems = [tmp_path / "a.png", tmp_path / "a_labels.png"], ["a", "a_labels"]
    check_outputs(paths, stems, tmp_path / "out", kind)  # no clash while out is elsewhere
    with pytest.raises(InputError, match="would overwrite the input"):
        check_outputs(paths, stems, tmp_path, kind)  # a's a_labels.png is the second input
    with pytest.raises(InputError, match="would both write"):
        check_outputs([tmp_path / "p.png", tmp_path / "q.png"], ["p", "p"], tmp_path / "out", kind)


def test_only_dead_processes_temporary_files_are_removed(tmp_path):
    from ovss.io import _host_tag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = _host_tag()
    names = {
        f".a.png.{tag}-{dead.pid}.k3j_x9.part.png": True,  # this machine, dead pid
        f".b.png.{tag}-{os.getpid()}.abcd12.part.png": False,  # a live process (this one)
        f".c.png.deadbeef-{dead.pid}.abcd12.part.png": tag == "deadbeef",  # another machine: pid unknowable
        ".d.png.x1y2z3.part.png": False,  # older ovss, recent: may still be written
        ".e.png.x1y2z3.part.png": True,  # older ovss, untouched for two hours
    }
    (tmp_path / "sub").mkdir()
    for name in names:
        (tmp_path / "sub" / name).write_bytes(b"x")
    old = time.time() - 7200
    os.utime(tmp_path / "sub" / ".e.png.x1y2z3.part.png", (old, old))
    (tmp_path / "sub" / "done.png").write_bytes(b"finished output")
    assert remove_stale_parts(tmp_path) == sum(names.values())
    assert {p.name for p in (tmp_path / "sub").iterdir()} == {n for n, gone in names.items() if not gone} | {"done.png"}
    with atomic_path(tmp_path / "f.png") as tmp:
        assert f"{tag}-{os.getpid()}" in tmp.name and not is_stale_part(tmp)


def test_a_damaged_output_beside_a_valid_marker_is_redone(tmp_path, capsys):
    photos = tmp_path / "photos"
    photo(photos / "a.png", 5)
    photo(photos / "b.png", 6)
    out = tmp_path / "masks"
    command = ["masks", str(photos), "--generator", "kmeans", "--out", str(out)]
    assert main(command) == 0
    preview = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(preview[: len(preview) // 2])  # truncated, its JSON still valid
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from ovss.io import _host_tag

    (out / f".b.json.{_host_tag()}-{dead.pid}.q1w2e3.part.json").write_text("{")  # a killed run's leftover
    capsys.readouterr()
    assert main(command) == 0
    assert "1 already done" in capsys.readouterr().err
    assert output_is_complete(out / "a.png") and not list(out.rglob(".*.part*"))


def test_output_checks_find_truncated_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.arange(100.0)}, str(tmp_path / "t.safetensors"))
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "p.png")
    (tmp_path / "m.json").write_text(json.dumps({"job": {"k": 1}}))
    for name in ("t.safetensors", "p.png", "m.json"):
        path = tmp_path / name
        assert output_is_complete(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 7])
        assert not output_is_complete(path), name
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "m.png")
    assert finished(tmp_path / "m.json", {"k": 1}) is False  # the marker itself is now damaged
    (tmp_path / "m.json").write_text(json.dumps({"job": {"k": 1}}))
    assert finished(tmp_path / "m.json", {"k": 1})
    assert not finished(tmp_path / "m.json", {"k": 1}, outputs=[tmp_path / "p.png"])  # truncated PNG


HOLDER = """
import sys, time
from ovss.jobs import output_lock
with output_lock(sys.argv[1], "masks"):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold(out: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_the_same_out_is_refused_until_the_first_dies(photos, tmp_path, capsys):
    out = tmp_path / "masks"
    holder = _hold(out)
    try:
        assert main(["masks", str(photos), "--generator", "kmeans", "--out", str(out)]) == 2
        (line,) = errors(capsys.readouterr().err)
        assert f"being written by another ovss masks (pid {holder.pid}" in line
        assert not list(out.glob("*.json"))  # the refused process wrote nothing
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, with a dead pid
        holder.wait()
    assert (out / ".ovss.lock").exists()
    assert main(["masks", str(photos), "--generator", "kmeans", "--out", str(out)]) == 0  # stale lock taken over
    assert not (out / ".ovss.lock").exists() and len(list(out.rglob("*.json"))) == 2


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombie states are read from Linux's /proc")
def test_a_killed_holder_left_as_a_zombie_does_not_block_the_next_run(photos, tmp_path):
    """A killed job's processes stay zombies until someone reaps them (a container's init may not):
    their pids still answer kill(pid, 0), but they hold no lock."""
    from ovss.io import pid_alive

    out = tmp_path / "masks"
    holder = _hold(out)
    holder.kill()  # not reaped: the holder is a zombie until holder.wait()
    deadline = time.time() + 30
    while Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.time() < deadline, "the killed holder never became a zombie"
        time.sleep(0.01)
    try:
        assert not pid_alive(holder.pid) and pid_alive(os.getpid())
        assert main(["masks", str(photos), "--generator", "kmeans", "--out", str(out)]) == 0
        assert not (out / ".ovss.lock").exists()
    finally:
        holder.wait()


def test_ranks_hold_their_own_locks_and_a_single_process_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with output_lock(out, "bank"), output_lock(out, "bank"):  # re-entrant within a process
        assert (out / ".ovss.lock.rank0").exists()
        rank1 = _hold(out, {"RANK": "1", "WORLD_SIZE": "2"})  # the other rank of the same job
        rank1.kill()
        rank1.wait()
        monkeypatch.delenv("RANK")
        monkeypatch.delenv("WORLD_SIZE")
        with pytest.raises(InputError, match="being written by another ovss bank"), output_lock(out, "masks"):
            pass
    assert not (out / ".ovss.lock.rank0").exists()


def test_threads_per_process_under_torchrun(monkeypatch):
    previous = torch.get_num_threads()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert set_threads_per_process() is None  # the user's choice stands
    monkeypatch.delenv("OMP_NUM_THREADS")
    try:
        threads = set_threads_per_process()
        assert threads == max(1, len(os.sched_getaffinity(0)) // 2) == torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def test_the_interrupt_message_says_what_the_running_job_keeps():
    flushed = []
    with pytest.raises(KeyboardInterrupt), running("eval", flush=lambda: flushed.append(True)):
        with running("train"):
            assert "training resumes" in interrupt_message()
        assert "confusion matrix" in interrupt_message()
        raise KeyboardInterrupt
    # the CLI prints the message after the stack is unwound: it still names the job a Ctrl-C ended, once
    assert flushed == [True] and "confusion matrix" in interrupt_message()
    assert interrupt_message() == "ovss: interrupted"
    with running("segment"):
        assert "finished images are kept" in interrupt_message()


def test_a_label_of_another_size_than_its_image_is_refused(tmp_path):
    photo(tmp_path / "img.jpg", 7, size=(513, 513))
    Image.fromarray(np.ones((100, 100), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.ones((513, 513), np.uint8) * 3).save(tmp_path / "good.png")
    ds = SegDataset("voc21", [], 21)
    with pytest.raises(PairMismatch, match="label is 100x100 but its image is 513x513"):
        check_sample(ds, Sample("a", tmp_path / "img.jpg", tmp_path / "small.png"))
    label = check_sample(ds, Sample("a", tmp_path / "img.jpg", tmp_path / "good.png"))
    assert np.array_equal(label, read_label_png(tmp_path / "good.png"))
    Image.fromarray(np.full((513, 513), 40, np.uint8)).save(tmp_path / "values.png")
    with pytest.raises(InputError, match=r"outside 0\.\.20"):
        check_sample(ds, Sample("a", tmp_path / "img.jpg", tmp_path / "values.png"))


def test_taking_over_a_stale_lock_never_removes_a_live_one(tmp_path):
    from ovss.jobs import _me, _take_over

    path = tmp_path / ".ovss.lock"
    live = _me("masks")
    path.write_text(json.dumps(live))
    _take_over(path, {"pid": 2**22 + 1, "host": "gone"})  # what a slower process read before the live one came
    assert json.loads(path.read_text()) == live
    _take_over(path, live)  # the lock it read is the one it moves: removed
    assert not path.exists() and not list(tmp_path.iterdir())
