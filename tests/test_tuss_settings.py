"""TUSS's four supervision settings on the synthetic world: more supervision, better segmentation.

The world's CLIP text is bent so the zero-shot classifier confuses two pairs of classes (see
``bench/tuss_world.py``); tags, some labels or all labels must each correct part of it.
"""

from __future__ import annotations

import torch

from tuss_world import compare_settings

# random SAM weights score low: loose thresholds, a small grid and no crops, so tiny-random SAM finds masks
SMOKE_SAM = (
    "sam_settings={'points_per_side': 8, 'crop_n_layers': 0, 'pred_iou_thresh': 0.5, "
    "'stability_score_thresh': 0.05, 'stability_score_offset': 0.3, 'min_mask_region_area': 0}"
)


def test_more_supervision_segments_better(tmp_path):
    torch.set_num_threads(1)
    r = compare_settings(tmp_path, n_train=48, n_test=8, labelled=0.25, probe_iters=300)
    ov, ws, ss, fs = (r[s]["test_mIoU"] for s in ("ovss", "wsss", "sss", "fsss"))
    print({s: r[s]["test_mIoU"] for s in ("ovss", "wsss", "sss", "fsss")}, "oracle", r["mask_oracle_test_mIoU"])
    assert ov < 70  # the drift really hurts zero-shot
    assert ws > ov + 5 and ss > ov + 5  # tags or a quarter of the labels correct it
    assert fs > ws and fs >= ss  # labels everywhere are at least as good as a quarter of them
    assert fs <= r["mask_oracle_test_mIoU"] + 0.1  # nobody beats painting each mask with its true class
    assert r["sss"]["selected_on_heldout"] and r["fsss"]["selected_on_heldout"]
    assert not r["wsss"]["selected_on_heldout"]  # no pixel labels: the fixed defaults


def test_eval_harness_uses_a_fitted_classifier(evaldata, tmp_path, capsys):
    import json
    import shutil

    from layouts import _voc
    from ovss.cli import main

    torch.set_num_threads(1)
    _voc(evaldata, tmp_path / "data")
    voc = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    train = tmp_path / "train"
    train.mkdir()
    for p in sorted((voc / "JPEGImages").glob("*.jpg"))[:3]:
        shutil.copy(p, train / p.name)
    fit = [
        "fit",
        "tuss",
        "--setting",
        "sss",
        "--images",
        str(train),
        "--labels",
        str(voc / "SegmentationClass"),
        "--vocab",
        "voc21",
        "--out",
        str(tmp_path / "clf"),
        "--set",
        "probe_iters=20",
        "--set",
        "probe_warmup=2",
        "--set",
        "lp_k=5",
        "--set",
        "heldout=0",
        "--set",
        "k_bar=3",
        "--set",
        "short_side=112",
        "--set",
        SMOKE_SAM,
    ]
    assert main(fit) == 0
    code = main(
        [
            "eval",
            "--method",
            "tuss",
            "--dataset",
            "voc21",
            "--root",
            str(tmp_path / "data"),
            "--limit",
            "2",
            "--classifier",
            str(tmp_path / "clf"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert report["settings"]["short_side"] == 112  # the classifier's embedding settings beat the protocol's 448
    assert report["settings"]["window"] == [224, 56] and report["metric"] == "present"
    assert str(tmp_path / "clf") in json.dumps(report)


def test_two_ranks_share_the_bank_and_rank0_fits(tmp_path, monkeypatch):
    """Under torchrun each rank embeds its share; rank 0 waits for all of them, then fits once."""
    import json

    from ovss import Segmenter
    from ovss.jobs import output_stems
    from ovss.methods.tuss.fit import fit_settings, fit_tuss
    from ovss.methods.tuss.ov import TUSSMethod
    from ovss.testing import make_dataset, write_dataset
    from ovss.vocab import build_vocabulary
    from tuss_world import CLASSES, drifted_world

    torch.set_num_threads(1)
    scenes = make_dataset(5, seed=3, size=(96, 128), classes=list(CLASSES), n_regions=3)
    root = write_dataset(scenes, tmp_path / "data")
    paths = sorted((root / "images").glob("*.png"))
    stems = [str(s) for s in output_stems(paths, [root / "images"])]
    clip, sam = drifted_world()
    vocab = build_vocabulary("; ".join(CLASSES))
    embedded: list[int] = []
    real_embed = TUSSMethod.embed
    monkeypatch.setattr(
        TUSSMethod, "embed", lambda self, image, **kw: embedded.append(1) or real_embed(self, image, **kw)
    )
    fs = fit_settings({"probe_iters": 20, "probe_warmup": 2, "lp_k": 3, "k_bar": 2})

    def fit(rank: int):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        method = Segmenter(
            "tuss", clip=clip, sam=sam, device="cpu", templates="simple", short_side=96, window=(64, 32)
        ).method
        return fit_tuss(
            method, paths, stems, tmp_path / "out", vocab, "sss", fs, labels=root / "labels", progress=False
        )

    assert fit(1) is None and len(embedded) == 2  # rank 1: images 1 and 3, no fit
    assert not (tmp_path / "out" / "classifier.safetensors").exists()
    report = fit(0)  # rank 0: images 0, 2, 4, then the fit over all five
    assert len(embedded) == 5 and report is not None and report["images"] == 5
    assert json.loads((tmp_path / "out" / "fit.json").read_text())["masks"] == report["masks"]
