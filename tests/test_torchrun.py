"""Real multi-process runs (gloo on CPU, `torchrun --nproc_per_node 2`, every launch bounded in time):
`ovss eval`, `ovss label`, `ovss pseudo-label --method fmbseg` and `ovss fit tuss` give the one-process
outputs exactly and `ovss train --method fmbseg` writes one checkpoint; a rank that dies or hangs makes
rank 0 stop with one line within OVSS_DIST_TIMEOUT; shards of an interrupted two-rank eval are finished
by one process with the uninterrupted result."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from layouts import _voc
from ovss.distributed import all_reduce_array, barrier, is_distributed
from ovss.testing.standins import EVERY_MASK_SETTINGS

SRC = Path(__file__).resolve().parents[1] / "src"
LIMIT = "4"
TIMEOUT = 180  # seconds for any one launch; a hang fails the test instead of the CI job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(OVSS_DEFAULT_MODEL="tiny-random", **extra)
    return env


def eval_args(root: Path, out: Path) -> list[str]:
    common = ["--limit", LIMIT, "--device", "cpu", "--set", "short_side=64", "--set", "templates=simple"]
    return ["eval", "-m", "sclip", "-d", "voc21", "--root", str(root), "--out", str(out), *common]


def torchrun(nproc: int, args: list[str], **env: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    launcher += ["--master_port", str(free_port()), "-m", "ovss.cli"]
    return subprocess.run(launcher + args, env=environment(**env), capture_output=True, text=True, timeout=TIMEOUT)


def single(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ovss.cli", *args], env=environment(), capture_output=True, text=True, timeout=TIMEOUT
    )


def scores(out: Path) -> dict:
    report = json.loads((out / "results.json").read_text())
    return {k: report[k] for k in ("mIoU", "aAcc", "mAcc", "per_class", "images")}


@pytest.fixture(scope="module")
def voc(evaldata, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("voc")
    _voc(evaldata, root)
    reference = tmp_path_factory.mktemp("ref") / "one"
    done = single(eval_args(root, reference))
    assert done.returncode == 0, done.stderr[-2000:]
    return {"root": root, "reference": reference}


def test_eval_with_two_processes_equals_one_process(voc, tmp_path):
    out = tmp_path / "two"
    done = torchrun(2, eval_args(voc["root"], out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.dumps(scores(out), sort_keys=True) == json.dumps(scores(voc["reference"]), sort_keys=True)
    report = json.loads((out / "results.json").read_text())
    assert report["world_size"] == 2
    shards = sorted(p.name for p in (out / "partial").iterdir())
    assert shards == ["rank0-of-2.json", "rank1-of-2.json"]  # each rank wrote its own shard, kept for resume
    halves = [json.loads((out / "partial" / s).read_text())["done"] for s in shards]
    assert not set(halves[0]) & set(halves[1]) and len(halves[0]) + len(halves[1]) == int(LIMIT)


DYING_RANK = """
import datetime, os, torch.distributed as dist
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
os._exit(1)  # joins the group, then dies before its shard is done
"""


def test_a_dead_rank_ends_the_run_with_one_line_then_one_process_resumes(voc, tmp_path):
    out, port = tmp_path / "killed", str(free_port())
    group = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OVSS_DIST_TIMEOUT": "20"}
    start = time.monotonic()
    rank0 = subprocess.Popen(
        [sys.executable, "-m", "ovss.cli", *eval_args(voc["root"], out)],
        env={**environment(**group), "RANK": "0", "LOCAL_RANK": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rank1 = subprocess.run(
        [sys.executable, "-c", DYING_RANK],
        env={**environment(**group), "RANK": "1", "LOCAL_RANK": "0"},
        timeout=TIMEOUT,
    )
    assert rank1.returncode == 1
    try:
        _, stderr = rank0.communicate(timeout=TIMEOUT)
    finally:
        rank0.kill()
    elapsed = time.monotonic() - start
    errors = [line for line in stderr.splitlines() if line.startswith("ovss: error:")]
    assert rank0.returncode == 2, stderr[-3000:]
    assert len(errors) == 1 and "another rank died" in errors[0] and "re-run" in errors[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert elapsed < TIMEOUT
    assert not (out / "results.json").exists()  # no half-made result
    assert (out / "partial" / "rank0-of-2.json").exists() and not (out / "partial" / "rank1-of-2.json").exists()

    done = single(eval_args(voc["root"], out))  # resumed with another world size
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.dumps(scores(out), sort_keys=True) == json.dumps(scores(voc["reference"]), sort_keys=True)
    rank0_done = json.loads((out / "partial" / "rank0-of-2.json").read_text())["done"]
    rank0_of_1 = json.loads((out / "partial" / "rank0-of-1.json").read_text())["done"]
    assert rank0_done and not set(rank0_done) & set(rank0_of_1)  # the finished images were not redone


def test_helpers_without_a_process_group_are_local():
    assert not is_distributed()
    barrier()  # a no-op
    array = np.arange(6, dtype=np.int64).reshape(2, 3)
    summed = all_reduce_array(array)
    assert summed.dtype == np.int64 and (summed == array).all() and summed is not array


VOC_PHOTOS = ("0", "1", "8", "120")


@pytest.fixture(scope="module")
def photos(evaldata, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in VOC_PHOTOS:
        shutil.copy(evaldata / "vainf_voc_samples" / "samples" / f"{name}_image.png", folder / f"{name}_image.png")
    return folder


def outputs(folder: Path, pattern: str) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.glob(pattern))}


def test_label_with_two_processes_equals_one_process(photos, tmp_path):
    args = ["label", str(photos), "--classes", "cat; dog; person", "--format", "coco-rle,png", "--device", "cpu"]
    one = single([*args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(2, [*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "coco-rle" / "annotations.json").read_text())
    b = json.loads((tmp_path / "two" / "coco-rle" / "annotations.json").read_text())
    assert a == b and len(a["images"]) == len(VOC_PHOTOS)
    assert outputs(tmp_path / "one" / "png", "**/*.png") == outputs(tmp_path / "two" / "png", "**/*.png")


def test_pseudo_label_with_two_processes_equals_one_process(photos, tmp_path):
    args = ["pseudo-label", "--method", "fmbseg", str(photos), "--vocab", "cat; dog; person", "--device", "cpu"]
    args += ["--preset", "sparse"]
    one = single([*args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(2, [*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    labels = outputs(tmp_path / "two", "*.png")
    assert len(labels) == len(VOC_PHOTOS) and labels == outputs(tmp_path / "one", "*.png")
    for marker in (tmp_path / "two").glob("*_image.json"):  # each image written once, by the rank that owns it
        assert json.loads(marker.read_text())["source"].endswith(marker.stem + ".png")


LOOSE_SAM = f"sam_settings={EVERY_MASK_SETTINGS!r}"  # every mask of the tiny random SAM: the bank is not empty


def test_tuss_bank_and_fit_with_two_processes_equal_one_process(photos, tmp_path):
    from safetensors.torch import load_file

    args = ["fit", "tuss", "--setting", "ovss", "--images", str(photos), "--vocab", "voc21", "--device", "cpu"]
    args += ["--set", "short_side=128", "--set", "probe_iters=20", "--set", "probe_warmup=2", "--set", LOOSE_SAM]
    one = single([*args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(2, [*args, "--out", str(tmp_path / "two")], OVSS_DIST_TIMEOUT="120")
    assert two.returncode == 0, two.stderr[-3000:]
    bank = outputs(tmp_path / "two" / "bank", "*.safetensors")
    assert len(bank) == len(VOC_PHOTOS) and bank == outputs(tmp_path / "one" / "bank", "*.safetensors")
    a, b = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "two" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert json.loads((tmp_path / "two" / "fit.json").read_text())["images"] == len(VOC_PHOTOS)


def test_partial_two_rank_shards_resume_with_one_process(evaldata, tmp_path, monkeypatch):
    """Both ranks stopped part-way (rank 0 after 1 of its 3 images, rank 1 after 2 of 3), then one process
    finishes: the images already done are not redone and the result is the uninterrupted one."""
    import ovss.api as api
    import ovss.evaluate as ev
    from ovss.evaluate import EvalJob, run_eval

    root = tmp_path / "data"
    _voc(evaldata, root)

    def job(out: Path) -> EvalJob:
        return EvalJob("sclip", "voc21", root, out=out, limit=6, device="cpu", overrides={"short_side": 64})

    clean = run_eval(job(tmp_path / "clean"), progress=False)
    real, calls = api.load_image, {"n": 0, "stop": 0}

    def stopping(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "FLUSH_EVERY", 1)
    monkeypatch.setattr(api, "load_image", stopping)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, finished in (("0", 1), ("1", 2)):
        monkeypatch.setenv("RANK", rank)
        calls.update(n=0, stop=finished + 1)
        with pytest.raises(RuntimeError, match="killed"):
            run_eval(job(tmp_path / "run"), progress=False)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    calls.update(n=0, stop=-1)
    resumed = run_eval(job(tmp_path / "run"), progress=False)
    assert calls["n"] == 3  # only the 6 - 1 - 2 unfinished images
    assert json.dumps({k: resumed[k] for k in ("mIoU", "per_class")}, sort_keys=True) == json.dumps(
        {k: clean[k] for k in ("mIoU", "per_class")}, sort_keys=True
    )
    assert resumed["world_size"] == 1 and resumed["images"] == 6


COLLECTIVES = """
import numpy as np, torch.distributed as dist
from ovss.distributed import all_reduce_array, barrier, init_if_launched, is_distributed
assert init_if_launched() and is_distributed()
rank = dist.get_rank()
big = np.array([[2**40 + rank, rank]], dtype=np.int64)  # beyond float32's exact integers
total = all_reduce_array(big)
assert total.dtype == np.int64 and total.tolist() == [[2 * 2**40 + 1, 1]], total
assert all_reduce_array(np.array([float(rank)]), "max").tolist() == [1.0]
barrier()
import os, pathlib
pathlib.Path(os.environ["OVSS_TEST_OUT"], f"ok{rank}").write_text("ok")  # one file per rank: stdout interleaves
"""


def test_collectives_in_a_real_gloo_group(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    env = {**environment(), "OVSS_TEST_OUT": str(tmp_path)}
    done = subprocess.run(
        [*launcher, str(free_port()), str(script)], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("ok*")) == ["ok0", "ok1"]  # both ranks got through


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_a_bad_timeout_is_a_one_line_error(monkeypatch, value):
    from ovss.distributed import TIMEOUT_ENV, dist_timeout
    from ovss.errors import OvssError

    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(OvssError, match=TIMEOUT_ENV) as info:
        dist_timeout()
    assert "\n" not in str(info.value)


def test_the_file_based_wait_ends_with_one_line_after_its_timeout(monkeypatch):
    from ovss.distributed import GATHER_TIMEOUT_ENV, DistributedError, wait_for_ranks

    monkeypatch.setenv(GATHER_TIMEOUT_ENV, "0.3")
    start = time.monotonic()
    with pytest.raises(DistributedError, match="re-run the same command") as info:
        wait_for_ranks(lambda: ["b.jpg"], "test", poll=0.05)
    assert time.monotonic() - start < 5 and "b.jpg" in str(info.value) and "\n" not in str(info.value)


def test_train_fmbseg_with_two_processes_writes_one_checkpoint(evaldata, tmp_path):
    from safetensors.torch import load_file

    from test_train_resume import command, make_data

    images, labels = make_data(evaldata, tmp_path / "data")
    out = tmp_path / "run"
    argv = command(images, labels, out)[3:]  # without "python -m ovss.cli"
    argv[argv.index("--epochs") + 1] = "1"
    done = torchrun(2, argv, OVSS_DIST_TIMEOUT="120")
    assert done.returncode == 0, done.stderr[-3000:]
    weights = load_file(str(out / "model.safetensors"))
    assert weights and all(bool(t.isfinite().all()) for t in weights.values())
    steps = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == sorted({s["step"] for s in steps})  # one writer: no step logged twice


HANGING_RANK = """
import datetime, time, torch.distributed as dist
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
time.sleep(600)  # alive but stuck: no error reaches rank 0, only its timeout can end the wait
"""


def test_a_stuck_rank_ends_the_run_after_ovss_dist_timeout(voc, tmp_path):
    group = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OVSS_DIST_TIMEOUT": "5"}
    stuck = subprocess.Popen([sys.executable, "-c", HANGING_RANK], env={**environment(**group), "RANK": "1"})
    try:
        start = time.monotonic()
        rank0 = subprocess.run(
            [sys.executable, "-m", "ovss.cli", *eval_args(voc["root"], tmp_path / "stuck")],
            env={**environment(**group), "RANK": "0"},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        elapsed = time.monotonic() - start
    finally:
        stuck.kill()
        stuck.wait()
    errors = [line for line in rank0.stderr.splitlines() if line.startswith("ovss: error:")]
    assert rank0.returncode == 2 and len(errors) == 1 and "within 5 s" in errors[0], rank0.stderr[-3000:]
    assert "Traceback" not in rank0.stderr and elapsed < TIMEOUT
    assert not (tmp_path / "stuck" / "results.json").exists()
