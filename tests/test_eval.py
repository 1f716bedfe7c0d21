"""`ovss eval` on the eight benchmark layouts: ground truth scores 100, runs resume and shard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layouts import _ade, _cityscapes, _coco, _context, _voc
from ovss.cli import main
from ovss.data import convert_coco_object, convert_coco_stuff
from ovss.errors import InputError
from ovss.evaluate import EvalJob, run_eval
from ovss.protocols import BENCHMARKS, FAMILIES, resolve


def _layout(benchmark: str, evaldata: Path, root: Path) -> Path:
    if benchmark in ("voc21", "voc20"):
        _voc(evaldata, root)
    elif benchmark in ("pc60", "pc59"):
        _context(root)
    elif benchmark == "ade20k150":
        _ade(evaldata, root)
    elif benchmark == "cityscapes":
        _cityscapes(evaldata, root, with_train_ids=True)
    else:
        coco, _ = _coco(evaldata, root)
        (convert_coco_object if benchmark == "coco_object" else convert_coco_stuff)(coco, progress=False)
    return root


@pytest.mark.parametrize("bench", BENCHMARKS)
def test_ground_truth_scores_100_on_every_layout(bench, evaldata, tmp_path, capsys):
    root = _layout(bench, evaldata, tmp_path / "data")
    code = main(["eval", "-m", "ground-truth", "-d", bench, "--root", str(root), "-o", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "o" / "results.json").read_text())
    assert report["mIoU"] == pytest.approx(100.0) and report["aAcc"] == pytest.approx(100.0)
    assert report["images"] >= 1 and (tmp_path / "o" / "results.md").exists()


@pytest.mark.parametrize("bench", ["voc21", "coco_object", "ade20k150", "cityscapes"])
def test_method_runs_with_tiny_random(bench, evaldata, tmp_path, capsys):
    root = _layout(bench, evaldata, tmp_path / "data")
    out = tmp_path / "o"
    code = main(
        [
            "eval",
            "-m",
            "sclip",
            "-d",
            bench,
            "--root",
            str(root),
            "-o",
            str(out),
            "--limit",
            "2",
            "--set",
            "short_side=112",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed
    report = json.loads((out / "results.json").read_text())
    assert 0.0 <= report["mIoU"] <= 100.0 and report["images"] == min(2, report["images"])
    assert report["overrides"] == {"short_side": 112} and report["settings"]["short_side"] == 112
    assert report["models"] == {"clip": "tiny-random"} and report["protocol"]["family"] == "sclip"
    expected = resolve("sclip", bench)
    assert report["settings"]["logit_scale"] == expected.settings["logit_scale"]
    assert len(report["per_class"]) == {"voc21": 21, "coco_object": 81, "ade20k150": 150, "cityscapes": 19}[bench]


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-safe


def _job(root, out, **kw):
    return EvalJob("sclip", "voc21", root, out=out, overrides={"short_side": 96}, device="cpu", **kw)


def test_resume_after_a_crash_redoes_nothing(evaldata, tmp_path, monkeypatch):
    root = _layout("voc21", evaldata, tmp_path / "data")
    clean = run_eval(_job(root, tmp_path / "clean", limit=5), progress=False)

    import ovss.api as api
    import ovss.evaluate as ev

    calls = {"n": 0}
    real = api.load_image  # eval segments through the API, which reads each image once

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("crash")  # the process dies after 3 images
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "FLUSH_EVERY", 1)
    monkeypatch.setattr(api, "load_image", crashing)
    with pytest.raises(RuntimeError, match="crash"):
        run_eval(_job(root, tmp_path / "crash", limit=5), progress=False)
    calls["n"] = 100  # no more crashes; count what the resumed run does
    resumed = run_eval(_job(root, tmp_path / "crash", limit=5), progress=False)
    assert calls["n"] == 102  # only the 2 unfinished images were segmented again
    assert resumed["mIoU"] == pytest.approx(clean["mIoU"]) and _same(resumed["per_class"], clean["per_class"])


def test_shards_sum_to_a_single_run(evaldata, tmp_path, monkeypatch):
    root = _layout("voc21", evaldata, tmp_path / "data")
    single = run_eval(_job(root, tmp_path / "single", limit=4), progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_eval(_job(root, tmp_path / "dist", limit=4), progress=False) is None
    monkeypatch.setenv("RANK", "0")
    merged = run_eval(_job(root, tmp_path / "dist", limit=4), progress=False)
    assert merged["world_size"] == 2 and merged["images"] == 4
    assert merged["mIoU"] == pytest.approx(single["mIoU"]) and _same(merged["per_class"], single["per_class"])


def test_changed_settings_do_not_mix_with_old_partials(evaldata, tmp_path):
    root = _layout("voc21", evaldata, tmp_path / "data")
    run_eval(_job(root, tmp_path / "o", limit=1), progress=False)
    job = _job(root, tmp_path / "o", limit=1)
    job.overrides = {"short_side": 64}
    with pytest.raises(InputError, match="other settings"):
        run_eval(job, progress=False)


def test_every_protocol_family_resolves_for_every_benchmark():
    for family in FAMILIES:
        assert "docs/" in FAMILIES[family]["source"]  # every family cites the project's own page for its values
        for benchmark in BENCHMARKS:
            p = resolve(family, benchmark)
            assert p.metric in ("union", "present")
            if benchmark not in ("voc21", "pc60", "coco_object"):  # only these three have a background class
                assert p.background == "none"
    assert resolve("sclip", "voc21").settings["logit_scale"] == 65.0
    assert resolve("sclip", "cityscapes").settings["short_side"] == 560
    assert resolve("naclip", "voc20").settings["window"] is None


def test_eval_errors_are_one_line(tmp_path, capsys):
    code = main(["eval", "-m", "sclip", "-d", "voc21", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not found" in err
    assert main(["eval", "-m", "sclip", "--root", str(tmp_path)]) == 2
    assert main(["eval", "-m", "sclip", "-d", "voc21", "-p", "nosuch", "--root", str(tmp_path)]) == 2


def test_sclip_protocol_queries_sclips_own_name_file(evaldata, tmp_path):
    root = _layout("voc21", evaldata, tmp_path / "data")
    report = run_eval(_job(root, tmp_path / "o", limit=1), progress=False)
    assert sum(map(len, report["vocabulary"]["synonyms"])) == 56  # 26 background words, 7 person variants, ...
    assert (
        report["class_names_source"].startswith("wangf3014/SCLIP@") and "cls_voc21.txt" in report["class_names_source"]
    )
    job = _job(root, tmp_path / "own", limit=1)
    job.names = "; ".join(["sky, wall", *[f"c{i}" for i in range(20)]])  # background words first
    assert run_eval(job, progress=False)["class_names_source"] == "--names"
