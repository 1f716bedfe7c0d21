"""`ovss leaderboard`: every cell is its own `ovss eval` run; the board repeats their results exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ovss.leaderboard as lb
from layouts import _ade, _voc
from ovss.cli import main
from ovss.methods.base import TIERS

BENCHES = ["voc21", "ade20k150"]
RUN = ["sclip", "naclip", "clearclip", "maskclip", "vanilla", "proxyclip"]
METHODS = [*RUN, "tuss"]  # tuss needs --sam, which is not given: it is listed as skipped
# tiny images, one template and no PAMR keep the 12 cells to a few seconds each on a busy machine
FAST = ["--set", "short_side=112", "--set", "templates=simple", "--set", "pamr_iterations=0"]


def _args(root: Path, out: Path, methods: list[str] = METHODS, benches: list[str] = BENCHES) -> list[str]:
    return [
        "leaderboard",
        "--methods",
        ",".join(methods),
        "--datasets",
        ",".join(benches),
        "--root",
        str(root),
        "--out",
        str(out),
        "--clip",
        "tiny-random",
        "--dino",
        "tiny-random",
        "--limit",
        "2",
        "--device",
        "cpu",
        *FAST,
    ]


class _Counter:
    """Counts the cells that really ran (run_eval calls) around the real run_eval."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[str, str]] = []
        real = lb.run_eval

        def counting(job, progress=True):
            self.calls.append((job.method, job.benchmark))
            return real(job, progress=progress)

        monkeypatch.setattr(lb, "run_eval", counting)


@pytest.fixture(scope="module")
def data_root(evaldata, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lbdata")
    _voc(evaldata, root)
    _ade(evaldata, root)
    return root


@pytest.fixture(scope="module")
def board(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("board")
    with pytest.MonkeyPatch.context() as mp:
        counter = _Counter(mp)
        code = main(_args(data_root, out))
    assert code == 0
    return out, counter.calls


def test_every_cell_runs_once_and_skipped_methods_are_listed(board):
    out, calls = board
    assert sorted(calls) == sorted((m, b) for m in RUN for b in BENCHES)
    data = json.loads((out / "leaderboard.json").read_text())
    assert [s["method"] for s in data["skipped"]] == ["tuss"] and "--sam" in data["skipped"][0]["reason"]
    assert data["methods"] == METHODS and data["benchmarks"] == BENCHES


def test_json_repeats_each_cells_own_results(board):
    out, _ = board
    data = json.loads((out / "leaderboard.json").read_text())
    assert len(data["cells"]) == len(RUN) * len(BENCHES)
    for cell in data["cells"]:
        results = json.loads((out / cell["method"] / cell["benchmark"] / "results.json").read_text())
        other = "present" if results["metric"] == "union" else "union"
        for key in (
            "mIoU",
            f"mIoU_{other}",
            "aAcc",
            "mAcc",
            "images",
            "images_per_second",
            "settings",
            "provenance",
            "models",
            "ovss_commit",
            "date",
            "tier",
        ):
            assert cell[key] == results[key], key
        assert cell["protocol"] == results["protocol"]["family"] and cell["tier_text"] == TIERS[cell["tier"]]
        assert results["images"] == 2 and results["settings"]["short_side"] == 112
        assert cell["peak_rss_mib"] > 50  # at least the interpreter and torch are resident
    families = {c["method"]: c["protocol"] for c in data["cells"]}
    assert families["naclip"] == "naclip" and families["proxyclip"] == "proxyclip_corrclip"
    summary = data["summary"]["sclip"]
    own = [c for c in data["cells"] if c["method"] == "sclip"]
    assert summary["average_mIoU"] == pytest.approx(np.mean([c["mIoU"] for c in own]))
    seconds = sum(c["images"] / c["images_per_second"] for c in own)
    assert summary["images_per_second"] == pytest.approx(4 / seconds, rel=1e-3)
    assert summary["peak_rss_mib"] == max(c["peak_rss_mib"] for c in own)


def test_markdown_table_has_every_cell(board):
    out, _ = board
    data = json.loads((out / "leaderboard.json").read_text())
    text = (out / "leaderboard.md").read_text()
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert rows["method"] == ["method", "tier", *BENCHES, "avg", "images/s", "peak RSS MiB"]
    cells = {(c["method"], c["benchmark"]): c for c in data["cells"]}
    for m in RUN:
        row = rows[m]
        assert row[1] == f"{cells[(m, 'voc21')]['tier']}[^{cells[(m, 'voc21')]['tier']}]"
        for i, b in enumerate(BENCHES):
            assert float(row[2 + i]) == pytest.approx(cells[(m, b)]["mIoU"], abs=0.005)
        assert float(row[4]) == pytest.approx(np.mean([cells[(m, b)]["mIoU"] for b in BENCHES]), abs=0.005)
    assert rows["tuss"][2].startswith("skipped: needs --sam")
    for tier in {c["tier"] for c in data["cells"]}:
        assert f"[^{tier}]: tier {tier}: {TIERS[tier]}" in text
    assert data["ovss_commit"] is None or data["ovss_commit"] in text
    assert re.search(r"protocol: each method's own", text)


def test_chart_decodes_at_its_size(board):
    out, _ = board
    with Image.open(out / "leaderboard.png") as im:
        im.load()
        size = im.size
        pixels = np.asarray(im.convert("RGB"))
    inches, dpi = lb.FIGURE_INCHES
    assert size == (round(inches * lb.FIGURE_DPI), round(dpi * lb.FIGURE_DPI))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > len(RUN)  # one colour per method at least


def test_rerun_redoes_nothing(board, data_root, monkeypatch):
    out, _ = board
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    counter = _Counter(monkeypatch)
    assert main(_args(data_root, out)) == 0
    assert counter.calls == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("results.json")} == stamps


def test_changed_setting_redoes_the_cell_and_other_backbones_do_not(board, data_root, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(board[0], out)
    counter = _Counter(monkeypatch)
    args = _args(data_root, out, methods=["sclip"], benches=["voc21"])
    args[args.index("--dino") + 1] = "another-dino"  # sclip uses no DINO: its cell stays valid
    assert main(args) == 0 and counter.calls == []
    assert main([*args, "--set", "short_side=96"]) == 0  # a changed setting: the cell is redone, not mixed
    assert counter.calls == [("sclip", "voc21")]
    results = json.loads((out / "sclip" / "voc21" / "results.json").read_text())
    assert results["settings"]["short_side"] == 96
    assert json.loads((out / "leaderboard.json").read_text())["cells"][0]["mIoU"] == results["mIoU"]


def test_killed_cell_resumes_where_it_stopped(board, data_root, tmp_path, monkeypatch):
    import ovss.api as api
    import ovss.evaluate as ev

    out = tmp_path / "board"
    seen = {"n": 0}
    real = api.load_image

    def crashing(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] == 2:
            raise KeyboardInterrupt  # killed during the second image
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "FLUSH_EVERY", 1)
    monkeypatch.setattr(api, "load_image", crashing)
    kw = dict(
        root=data_root,
        out=out,
        clip="tiny-random",
        limit=2,
        device="cpu",
        progress=False,
        overrides={"short_side": 112, "templates": "simple", "pamr_iterations": 0},
    )
    with pytest.raises(KeyboardInterrupt):
        lb.run_leaderboard("sclip", "voc21", **kw)
    assert not (out / "sclip" / "voc21" / "results.json").exists()
    assert json.loads((out / "sclip" / "voc21" / "cell.json").read_text())["complete"] is False
    seen["n"] = 100  # no more crashes; count the images the resumed run reads
    resumed = lb.run_leaderboard("sclip", "voc21", **kw)
    assert seen["n"] == 101  # only the unfinished image
    first = json.loads((board[0] / "sclip" / "voc21" / "results.json").read_text())
    assert resumed["cells"][0]["mIoU"] == pytest.approx(first["mIoU"])  # same as the uninterrupted cell


def _one_line_error(capsys, argv: list[str], fragment: str) -> None:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors exit from the parser
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


def test_bad_inputs_are_one_line(data_root, tmp_path, capsys, monkeypatch):
    counter = _Counter(monkeypatch)
    out = tmp_path / "o"
    base = ["leaderboard", "--root", str(data_root), "--out", str(out), "--clip", "tiny-random"]
    _one_line_error(capsys, [*base, "--methods", "sclip,nosuch", "--datasets", "voc21"], "unknown method 'nosuch'")
    _one_line_error(capsys, [*base, "--methods", "sclip"], "--datasets")
    _one_line_error(capsys, [*base, "--methods", "sclip", "--datasets", "voc21,nosuch"], "unknown benchmark")
    _one_line_error(capsys, [*base, "--methods", "tuss,pixelclip", "--datasets", "voc21"], "every method was skipped")
    _one_line_error(capsys, [*base, "--methods", "sclip", "--datasets", "voc21", "--set", "nosuch=1"], "nosuch")
    _one_line_error(capsys, [*base, "--methods", "sclip", "--datasets", "voc21", "-p", "nosuch"], "protocol")
    _one_line_error(capsys, [*base, "--methods", "sclip", "--datasets", "pc60"], "pc60")  # not in the root
    _one_line_error(capsys, [*base, "--methods", "sclip", "--datasets", "voc21", "--checkpoint", "x"], "METHOD=PATH")
    both = [*base, "--methods", "sclip", "--datasets", "voc21", "--suite", "all8"]
    _one_line_error(capsys, both, "either --datasets")
    assert counter.calls == [] and not (out / "leaderboard.json").exists()


@pytest.mark.slow  # a fresh process imports torch and loads the model: ~25 s on a busy machine
def test_isolated_cell_reports_its_own_process_peak(data_root, tmp_path):
    import resource

    board = lb.run_leaderboard(
        "vanilla",
        "voc21",
        data_root,
        tmp_path / "iso",
        clip="tiny-random",
        limit=1,
        device="cpu",
        progress=False,
        isolate=True,
        overrides={"short_side": 112},
    )
    cell = board["cells"][0]
    results = json.loads((tmp_path / "iso" / "vanilla" / "voc21" / "results.json").read_text())
    assert cell["mIoU"] == results["mIoU"] and results["images"] == 1
    # the child's high-water mark: more than an empty interpreter, and not this process's own mark
    assert cell["peak_rss_mib"] > 50 and cell["peak_rss_mib"] != round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    assert "own process" in (tmp_path / "iso" / "vanilla" / "voc21" / "cell.json").read_text()


@pytest.mark.slow  # SAM's automatic masks on CPU: ~25 s per image pair on a busy machine
def test_sam_method_runs_once_sam_is_given(data_root, tmp_path):
    out = tmp_path / "sam"
    args = [
        "leaderboard",
        "--methods",
        "tuss,sclip",
        "--datasets",
        "voc21",
        "--root",
        str(data_root),
        "--out",
        str(out),
        "--clip",
        "tiny-random",
        "--sam",
        "tiny-random",
        "--limit",
        "1",
        "--device",
        "cpu",
        *FAST,
    ]
    assert main(args) == 0
    data = json.loads((out / "leaderboard.json").read_text())
    assert data["skipped"] == [] and {c["method"] for c in data["cells"]} == {"tuss", "sclip"}
    tuss = next(c for c in data["cells"] if c["method"] == "tuss")
    assert tuss["tier"] == "B" and tuss["models"]["sam"] == "tiny-random"
    assert tuss["mIoU"] == json.loads((out / "tuss" / "voc21" / "results.json").read_text())["mIoU"]
