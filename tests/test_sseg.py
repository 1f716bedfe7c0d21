"""S-Seg: losses and matcher against plain re-implementations, the data stream, training, resume,
inference and bad inputs. Tiny random models throughout; the torchrun and kill -9 tests use
subprocesses with time limits."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

import ovss.methods.sseg as sseg_pkg
from ovss.errors import InputError
from ovss.methods.sseg.data import CaptionStream, collate, open_source
from ovss.methods.sseg.losses import contrastive_loss, dice_cost, focal_cost, mask_loss, match
from ovss.testing.captions import make_captioned_scenes, write_caption_folder, write_shards

TINY = dict(
    backbone="swin-test",
    num_queries=6,
    decoder_layers=2,
    hidden=32,
    decoder_heads=2,
    embed_dim=16,
    text_layers=2,
    text_width=32,
    text_heads=2,
    context_length=24,
    k=3,
    dino_size=56,
    size=64,
    batch_size=4,
    epochs=2,
    save_every=1,
    shuffle_buffer=4,
)


# ---------------------------------------------------------------------------------------------
# plain formulas
# ---------------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def plain_dice(logit: np.ndarray, target: np.ndarray) -> float:
    p = _sigmoid(logit)
    return 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)


def plain_focal(logit: np.ndarray, target: np.ndarray, alpha=0.25, gamma=2.0) -> float:
    p = _sigmoid(logit)
    total = 0.0
    for x, pi, t in zip(logit, p, target):
        if t:
            total += alpha * (1 - pi) ** gamma * -math.log(pi)
        else:
            total += (1 - alpha) * pi**gamma * -math.log(1 - pi)
        del x
    return total / len(logit)


def test_pairwise_costs_match_plain_formulas():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 30, generator=g, dtype=torch.float64) * 2
    targets = (torch.rand(3, 30, generator=g) > 0.5).double()
    d, f = dice_cost(logits, targets), focal_cost(logits, targets)
    for n in range(4):
        for k in range(3):
            assert d[n, k].item() == pytest.approx(plain_dice(logits[n].numpy(), targets[k].numpy()), rel=1e-9)
            assert f[n, k].item() == pytest.approx(plain_focal(logits[n].numpy(), targets[k].numpy()), rel=1e-9)


def test_matcher_and_mask_loss_equal_brute_force_over_permutations():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        n, k, p = 5, 3, 24
        logits = torch.randn(n, p, generator=g, dtype=torch.float64) * 3
        targets = (torch.rand(k, p, generator=g) > 0.5).double()
        cost = [
            [
                plain_dice(logits[i].numpy(), targets[j].numpy())
                + 20 * plain_focal(logits[i].numpy(), targets[j].numpy())
                for j in range(k)
            ]
            for i in range(n)
        ]
        best = min(itertools.permutations(range(n), k), key=lambda rows: sum(cost[r][j] for j, r in enumerate(rows)))
        rows, cols = match(logits, targets, 1.0, 20.0, 0.25, 2.0)
        assert sorted(zip(cols.tolist(), rows.tolist())) == [(j, best[j]) for j in range(k)]
        loss = mask_loss(logits.view(1, n, 4, 6), [targets.view(k, 4, 6)])
        expected = sum(cost[best[j]][j] for j in range(k)) / k
        assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_unmatched_predictions_are_not_penalised():
    g = torch.Generator().manual_seed(2)
    targets = (torch.rand(2, 1, 16, generator=g) > 0.5).float()
    good = torch.where(targets.bool(), 8.0, -8.0)  # two near-perfect predictions
    junk = torch.randn(3, 1, 16, generator=g)
    a = mask_loss(torch.cat([good, junk]).view(1, 5, 1, 16), [targets])
    b = mask_loss(torch.cat([good, junk * 5 + 1]).view(1, 5, 1, 16), [targets])
    assert a.item() == pytest.approx(b.item(), abs=1e-7)
    logits = torch.cat([good, junk]).view(1, 5, 1, 16).requires_grad_(True)
    mask_loss(logits, [targets]).backward()
    assert logits.grad[0, 2:].abs().max() == 0 and logits.grad[0, :2].abs().max() > 0


def test_contrastive_loss_matches_plain_symmetric_infonce():
    g = torch.Generator().manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    scale = torch.tensor(12.5, dtype=torch.float64)
    sim = (img @ txt.T).numpy() * 12.5
    i2t = np.mean([-sim[i, i] + math.log(np.exp(sim[i]).sum()) for i in range(5)])
    t2i = np.mean([-sim[i, i] + math.log(np.exp(sim[:, i]).sum()) for i in range(5)])
    assert contrastive_loss(img, txt, scale).item() == pytest.approx((i2t + t2i) / 2, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


COLOURS6 = ("red", "green", "blue", "yellow", "cyan", "magenta")


def _captions_seen(stream: CaptionStream, workers: int = 0) -> list[str]:
    loader = torch.utils.data.DataLoader(stream, batch_size=2, num_workers=workers, collate_fn=collate)
    return [c for batch in loader for c in batch["captions"]]


@pytest.fixture(scope="module")
def caption_folder(tmp_path_factory):
    pairs = make_captioned_scenes(10, seed=4, size=48)
    pairs = [(s, f"{c} #{i}") for i, (s, c) in enumerate(pairs)]  # unique captions identify samples
    return write_caption_folder(pairs, tmp_path_factory.mktemp("captions")), [c for _, c in pairs]


def test_partial_captions_name_a_subset_of_each_scene_and_full_ones_everything():
    import re

    full = make_captioned_scenes(60, seed=3, classes=COLOURS6, n_regions=2)
    partial = make_captioned_scenes(60, seed=3, classes=COLOURS6, n_regions=2, mention="partial")
    forms = set()
    for (scene, caption), (same, short) in zip(full, partial):
        assert same.seed == scene.seed  # the same scenes, only the captions differ
        present = {scene.class_names[i] for i in scene.instance_labels}
        named = set(re.findall(r"a (\w+) shape", caption))
        assert named == present and caption.endswith(f" on {scene.background}")
        named_short = set(re.findall(r"a (\w+) shape", short))
        assert named_short <= present and (named_short or short.endswith(f" on {scene.background}"))
        forms.add((len(named_short), short.endswith(f" on {scene.background}")))
    assert {(1, False), (0, True), (2, True)} <= forms  # class-prompt-like captions occur
    with pytest.raises(ValueError, match="mention"):
        make_captioned_scenes(1, mention="some")


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (1, 2), (2, 2)])
def test_stream_splits_ranks_and_workers_without_duplicates(caption_folder, world, workers):
    root, captions = caption_folder
    source = open_source(root)
    seen = []
    for rank in range(world):
        seen += _captions_seen(CaptionStream(source, 32, seed=1, buffer=3, rank=rank, world_size=world), workers)
    assert sorted(seen) == sorted(captions)


def test_stream_order_depends_on_epoch_and_resume_skips_exactly(caption_folder):
    root, _ = caption_folder
    stream = CaptionStream(open_source(root), 32, seed=1, buffer=4)
    first = _captions_seen(stream)
    stream.set_epoch(1)
    second = _captions_seen(stream)
    assert sorted(first) == sorted(second) and first != second
    stream.set_epoch(1, skip={0: 3})
    assert _captions_seen(stream) == second[3:]


def test_shards_by_sample_and_by_shard_cover_everything(tmp_path):
    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), f"caption {i}") for i in range(9)]
    write_shards(samples, tmp_path, per_shard=2)  # 5 shards
    source = open_source(tmp_path)
    assert source.kind == "shards" and len(source.shards) == 5
    for world in (1, 2, 3, 5):  # 5 parts = by shard, the others by sample
        seen = []
        for rank in range(world):
            seen += _captions_seen(CaptionStream(source, 32, seed=0, buffer=3, rank=rank, world_size=world))
        assert sorted(seen) == sorted(c for _, c in samples)


def test_bad_samples_are_counted_skips(tmp_path, capsys):
    rng = np.random.default_rng(1)
    good = [(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), f"ok {i}") for i in range(3)]
    bad = [(b"not a jpeg at all", "corrupt image"), (good[0][0], "   ")]
    write_shards(good + bad, tmp_path / "shards", per_shard=10)
    stream = CaptionStream(open_source(tmp_path / "shards"), 32, buffer=2)
    loader = torch.utils.data.DataLoader(stream, batch_size=2, collate_fn=collate)
    batches = list(loader)
    assert sorted(c for b in batches for c in b["captions"]) == ["ok 0", "ok 1", "ok 2"]
    assert sum(b["skipped"] for b in batches) == 2
    assert sum(len(b["positions"]) for b in batches) == 5  # skips use up their positions (exact resume)
    err = capsys.readouterr().err
    assert "empty caption" in err and "not a readable image" in err
    # a caption file naming a missing image: skipped with a warning at open
    (tmp_path / "c").mkdir()
    from PIL import Image

    Image.fromarray(good[0][0]).save(tmp_path / "c" / "a.png")
    (tmp_path / "c" / "captions.jsonl").write_text(
        json.dumps({"image": "a.png", "caption": "x"}) + "\n" + json.dumps({"image": "gone.png", "caption": "y"}) + "\n"
    )
    source = open_source(tmp_path / "c")
    assert source.missing == 1 and len(source.records) == 1
    assert "gone.png not found" in capsys.readouterr().err


def test_unusable_data_gives_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_source(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither"):
        open_source(tmp_path / "empty")
    (tmp_path / "c.csv").write_text("path,text\na.png,x\n")
    with pytest.raises(InputError, match="header"):
        open_source(tmp_path / "c.csv")
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "missing.png", "caption": "x"}) + "\n")
    with pytest.raises(InputError, match="no row names an existing image"):
        open_source(tmp_path / "d.jsonl")


# ---------------------------------------------------------------------------------------------
# training, inference, commands
# ---------------------------------------------------------------------------------------------

SHARED_ARGS = ("--method", "--out", "--clip", "--dino", "--sam", "--device", "--checkpoint")


def _parser(command: str = "train", method: str = "sseg") -> argparse.ArgumentParser:
    from ovss.methods.base import get_method_spec

    p = argparse.ArgumentParser()
    for name in SHARED_ARGS:
        p.add_argument(name)
    p.add_argument("--set", action="append", type=lambda s: (s.split("=", 1)[0], _literal(s.split("=", 1)[1])))
    get_method_spec(method).commands[command].add_arguments(p)
    return p


def _literal(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _run(argv: list[str], command: str = "train", method: str = "sseg") -> int:
    from ovss.methods.base import get_method_spec

    args = _parser(command, method).parse_args(argv)
    return get_method_spec(method).commands[command].run(args)


def _sets(settings: dict) -> list[str]:
    out = []
    for k, v in settings.items():
        out += ["--set", f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"]
    return out


def test_train_command_on_caption_folder_then_segment(caption_folder, tmp_path):
    import ovss
    from ovss.checkpoints import load_checkpoint

    root, _ = caption_folder
    run = tmp_path / "run"
    rc = _run(
        [
            "--data",
            str(root),
            "--out",
            str(run),
            "--device",
            "cpu",
            "--no-progress",
            *_sets(TINY),
            "--set",
            "max_steps=3",
        ]
    )
    assert rc == 0
    ckpt = load_checkpoint(run, method="sseg")
    assert ckpt.extra["step"] == 3 and ckpt.settings["max_steps"] == 3 and ckpt.extra["faithful"]
    lines = [json.loads(x) for x in (run / "loss_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and all(math.isfinite(x["mask"] + x["contrastive"]) for x in lines)
    scene = make_captioned_scenes(1, seed=99, size=48)[0][0]
    result = ovss.Segmenter("sseg", checkpoint=str(run), device="cpu", window=None).segment(
        scene.image, "red; blue; green", background="threshold", return_probs=True
    )
    assert result.labels.shape == scene.labels.shape and result.probs.shape == (4, 48, 48)
    assert np.allclose(result.probs[1:].sum(0), 1.0, atol=1e-4)  # a mixture over the named classes
    with pytest.raises(InputError, match="no class names"):
        ovss.Segmenter("sseg", checkpoint=str(run), device="cpu").segment(scene.image, " ; ")
    with pytest.raises(InputError, match="checkpoint"):
        ovss.Segmenter("sseg", device="cpu")


def test_train_on_shards_of_real_photos_then_label_one(evaldata, tmp_path):
    import ovss
    from ovss.io import load_image

    photos = sorted((evaldata / "vainf_voc_samples" / "samples").glob("*_image.png"))[:6]
    samples = [(load_image(p), f"a photo number {i}") for i, p in enumerate(photos)]
    write_shards(samples, tmp_path / "shards", per_shard=2)
    run = tmp_path / "run"
    assert (
        _run(
            [
                "--data",
                str(tmp_path / "shards"),
                "--out",
                str(run),
                "--device",
                "cpu",
                "--no-progress",
                *_sets(TINY),
                "--set",
                "max_steps=2",
            ]
        )
        == 0
    )
    result = ovss.Segmenter("sseg", checkpoint=str(run), device="cpu").segment(str(photos[0]), "person; dog; sofa")
    assert result.labels.shape == samples[0][0].shape[:2] and set(np.unique(result.labels)) <= {0, 1, 2}


def test_bf16_and_gradient_accumulation_run_and_count_optimisation_steps(caption_folder, tmp_path):
    from ovss.methods.sseg.train import make_train_settings, train_sseg
    from ovss.testing.standins import SyntheticDINO

    root, _ = caption_folder
    settings = make_train_settings({**TINY, "precision": "bf16", "accumulate": 2, "epochs": 1})
    result = train_sseg(root, tmp_path / "run", settings, dino=SyntheticDINO(), device="cpu", progress=False)
    assert result["steps"] == 10 // 4  # two micro-batches of 2 per step; the incomplete last one is dropped
    log = [json.loads(x) for x in (tmp_path / "run" / "loss_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(math.isfinite(x["loss"]) for x in log)


@pytest.mark.parametrize(
    "variant",
    [
        {"decoder": "mask2former"},
        {"decoder": "mask2former", "mask_features": "pooled", "projection_norm": "batch"},
        {"mask_features": "embeddings", "mask_weighting": "area", "pooling": "mlp_then_mean"},
        {"mask_features": "local", "mask_weighting": "area", "pooling": "mlp_then_mean"},
        {"decoder": "mask2former", "mask_features": "local"},
    ],
)
def test_model_variants_train_every_parameter_save_and_segment(caption_folder, tmp_path, variant):
    import ovss
    from ovss.methods.sseg.model import SSegModel
    from ovss.methods.sseg.train import make_train_settings, train_sseg
    from ovss.testing.standins import SyntheticDINO

    settings = make_train_settings({**TINY, **variant, "max_steps": 1})
    model = SSegModel(settings.model_config())
    pixels = torch.randn(2, 3, 64, 64)
    masks, image, text, scale = model(pixels, model.tokenize(["a red shape", "a blue shape"], "cpu"))
    (masks.mean() + image.sum() + text.sum() + scale).backward()
    # DistributedDataParallel refuses parameters that get no gradient
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    root, _ = caption_folder
    run = tmp_path / "run"
    train_sseg(root, run, settings, dino=SyntheticDINO(), device="cpu", progress=False)
    scene = make_captioned_scenes(1, seed=9, size=48)[0][0]
    labels = ovss.Segmenter("sseg", checkpoint=str(run), device="cpu", window=None).segment(scene.image, "red; blue")
    assert labels.labels.shape == scene.labels.shape


def test_no_training_step_is_an_error_and_writes_no_checkpoint(tmp_path):
    write_shards([(b"broken", "a caption"), (b"\xff\xd8 also broken", "another")], tmp_path / "shards")
    run = tmp_path / "run"
    with pytest.raises(InputError, match="no training step"):
        _run(["--data", str(tmp_path / "shards"), "--out", str(run), "--device", "cpu", "--no-progress", *_sets(TINY)])
    assert not (run / "config.json").exists() and not (run / "model.safetensors").exists()


def test_local_mask_features_average_first_stage_features_over_the_pixels_each_query_wins():
    from ovss.methods.sseg.model import ModelConfig, SSegModel

    torch.manual_seed(0)
    names = {"backbone", "num_queries", "decoder_layers", "hidden", "decoder_heads", "embed_dim"}
    config = ModelConfig(**{k: v for k, v in TINY.items() if k in names}, text_layers=1, text_width=16)
    model = SSegModel(replace(config, mask_features="local")).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        masks, features = model.forward_image(pixels)
        stage = model.maskformer(pixel_values=pixels, output_hidden_states=True).encoder_hidden_states[0][0]
    assert stage.shape[-2:] == masks.shape[-2:]  # Swin's first stage is at the masks' 1/4 resolution
    winner = masks[0].argmax(0)
    for q in range(masks.shape[1]):
        won = winner == q
        mean = stage[:, won].mean(1) if won.any() else torch.zeros(stage.shape[0])
        torch.testing.assert_close(features[0, q], model.local_projection(mean), atol=1e-5, rtol=1e-5)
    # the partition is detached: the features pull no gradient into the mask decoder
    masks, features = model.forward_image(pixels)
    features.sum().backward()
    decoder_grads = [p.grad for n, p in model.maskformer.named_parameters() if "transformer_module" in n]
    assert all(g is None or not g.any() for g in decoder_grads)


def test_hard_mask_assignment_gives_each_pixel_its_winning_querys_classes(caption_folder, tmp_path):
    import ovss
    from ovss.methods.sseg.train import make_train_settings, train_sseg
    from ovss.testing.standins import SyntheticDINO
    from ovss.vocab import build_vocabulary

    root, _ = caption_folder
    run = tmp_path / "run"
    settings = make_train_settings({**TINY, "mask_features": "local", "max_steps": 1})
    train_sseg(root, run, settings, dino=SyntheticDINO(), device="cpu", progress=False)
    kw = dict(checkpoint=str(run), device="cpu", window=None, short_side=64)
    soft = ovss.Segmenter("sseg", **kw, mask_assignment="soft")
    hard = ovss.Segmenter("sseg", **kw)  # "auto": hard, as the run has region features
    vocab = build_vocabulary("red; green, lime; blue")
    method = hard.method
    text = method.query_embeddings(vocab.queries)
    pixels = torch.randn(1, 3, 64, 64)
    query_class = torch.tensor(vocab.query_class)
    got = method.class_scores(pixels, text, query_class, vocab.num_classes)
    with torch.no_grad():
        masks, features = method.model.forward_image(pixels)
        probs = (method.model.scale() * method.model.mask_embeddings(features) @ text.T).softmax(-1)[0]
    per_class = torch.stack([probs[:, query_class == c].max(1).values for c in range(vocab.num_classes)], 1)
    winner = masks[0].argmax(0)
    for y, x in [(0, 0), (3, 7), (15, 15), (8, 2)]:
        torch.testing.assert_close(got[0, :, y, x], per_class[winner[y, x]])
    assert hard.method.mask_assignment == "hard" and soft.method.mask_assignment == "soft"
    soft_scores = soft.method.class_scores(pixels, text, query_class, vocab.num_classes)
    assert not torch.allclose(soft_scores, got)  # the setting reaches the computation
    with pytest.raises(InputError, match="mask_assignment"):
        ovss.Segmenter("sseg", checkpoint=str(run), device="cpu", mask_assignment="argmax")


@pytest.mark.parametrize("pooling", ["mean_then_mlp", "mlp_then_mean"])
@pytest.mark.parametrize("weighting", ["uniform", "area", "won"])
def test_image_embedding_pools_mask_features_as_a_plain_loop(pooling, weighting):
    from ovss.methods.sseg.model import ModelConfig, SSegModel, mask_weights

    torch.manual_seed(0)
    names = {"backbone", "num_queries", "decoder_layers", "hidden", "decoder_heads", "embed_dim"}
    model = SSegModel(ModelConfig(**{k: v for k, v in TINY.items() if k in names}, text_layers=1, text_width=16))
    masks, features = torch.randn(2, 6, 8, 8) * 3, torch.randn(2, 6, 32)
    got = model.image_embedding(features, pooling, mask_weights(masks, weighting))
    for b in range(2):
        area = [float(torch.sigmoid(masks[b, q]).mean()) for q in range(6)]
        won = [sum(int(masks[b, :, y, x].argmax()) == q for y in range(8) for x in range(8)) / 64 for q in range(6)]
        w = {"uniform": [1 / 6] * 6, "area": [a / sum(area) for a in area], "won": won}[weighting]
        mlp = model.image_projection
        if pooling == "mean_then_mlp":
            plain = mlp(sum(w[q] * features[b, q] for q in range(6)))
        else:
            plain = sum(w[q] * mlp(features[b, q]) for q in range(6))
        torch.testing.assert_close(got[b], plain / plain.norm(), atol=1e-5, rtol=1e-5)
    # an empty mask adds nothing to the area-weighted embedding; under "won", neither does a mask that
    # wins no pixel though its soft area is far from zero
    masks[:, 0] = -1e4 if weighting == "area" else masks[:, 1:].max(1).values - 0.5
    assert weighting != "won" or float(masks[:, 0].sigmoid().mean()) > 0.1
    features2 = features.clone()
    features2[:, 0] = 100.0
    if weighting != "uniform":
        torch.testing.assert_close(
            model.image_embedding(features, pooling, mask_weights(masks, weighting)),
            model.image_embedding(features2, pooling, mask_weights(masks, weighting)),
        )


def test_settings_are_validated_with_one_line_errors():
    from ovss.methods.sseg.train import make_train_settings

    with pytest.raises(InputError, match="no setting 'bogus'"):
        make_train_settings({"bogus": 1})
    with pytest.raises(InputError, match="num_queries"):
        make_train_settings({"num_queries": 0})
    with pytest.raises(InputError, match="precision"):
        make_train_settings({"precision": "fp8"})
    with pytest.raises(InputError, match="recipe"):
        make_train_settings({"recipe": "huge"})
    with pytest.raises(InputError, match="mask_weighting"):
        make_train_settings({"mask_weighting": "sizes"})
    with pytest.raises(InputError, match="mask_features"):
        make_train_settings({"mask_features": "logits"})
    paper, small = make_train_settings({}), make_train_settings({"recipe": "small"})
    assert (paper.batch_size, paper.epochs, paper.lr, paper.num_queries, paper.k) == (4096, 30, 5e-4, 64, 8)
    assert small.batch_size == 512 and make_train_settings({"recipe": "small", "batch_size": 64}).batch_size == 64


def test_groupvit_family_is_registered():
    from ovss.protocols import resolve

    voc = resolve("groupvit", "voc21")
    assert voc.settings["prob_thd"] == 0.95 and voc.background == "threshold" and voc.settings["window"] == (448, 224)
    assert resolve("groupvit", "pc60").settings["prob_thd"] == 0.35
    assert sseg_pkg.GROUPVIT_FAMILY["templates"]["default"] == "simple"


# ---------------------------------------------------------------------------------------------
# kill -9 resume and torchrun (subprocesses, bounded in time)
# ---------------------------------------------------------------------------------------------

SRC = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src")

TRAIN_SCRIPT = """
import json, sys
from ovss.methods.sseg.train import make_train_settings, train_sseg
from ovss.testing.standins import SyntheticDINO
settings = make_train_settings(json.loads(sys.argv[3]))
train_sseg(sys.argv[1], sys.argv[2], settings, dino=SyntheticDINO(), device="cpu", progress=False)
"""


def _env():
    import os

    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _tensors(run):
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def test_kill_9_during_training_resumes_to_the_same_weights(caption_folder, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    root, _ = caption_folder
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    settings = json.dumps({**TINY, "batch_size": 2, "max_steps": 8, "epochs": 3, "save_every": 1})
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    subprocess.run([sys.executable, str(script), str(root), str(full), settings], env=_env(), check=True, timeout=240)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), str(resumed), settings], env=_env(), stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 200
    state = resumed / "state" / "trainer.pt"
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            try:
                if torch.load(state, weights_only=True)["step"] >= 3:
                    break
            except Exception:
                pass
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert killed, "the run finished before it could be killed"
    assert torch.load(state, weights_only=True)["step"] < 8
    subprocess.run(
        [sys.executable, str(script), str(root), str(resumed), settings], env=_env(), check=True, timeout=240
    )
    a, b = _tensors(full), _tensors(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [json.loads(x)["step"] for x in (resumed / "loss_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # no step logged twice
    full_log = [json.loads(x) for x in (full / "loss_log.jsonl").read_text().splitlines()]
    resumed_log = [json.loads(x) for x in (resumed / "loss_log.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in full_log] == [x["loss"] for x in resumed_log]


TORCHRUN_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from ovss.methods.sseg.losses import contrastive_loss, gather_with_grad
from ovss.methods.sseg.train import make_train_settings, train_sseg
from ovss.testing.standins import SyntheticDINO

settings = make_train_settings(json.loads(sys.argv[3]))
result = train_sseg(sys.argv[1], sys.argv[2], settings, dino=SyntheticDINO(), device="cpu", progress=False)
rank, world = dist.get_rank(), dist.get_world_size()
flat = torch.cat([p.detach().flatten() for p in result["model"].parameters()])
# negatives: rank r holds r + 1 rows; every rank must see all rows, and gradients reach the owner
g = torch.Generator().manual_seed(rank)
img = torch.nn.functional.normalize(torch.randn(rank + 1, 8, generator=g, dtype=torch.float64), dim=1)
txt = torch.nn.functional.normalize(torch.randn(rank + 1, 8, generator=g, dtype=torch.float64), dim=1)
img.requires_grad_(True)
gathered, offset = gather_with_grad(img)
loss = contrastive_loss(img, txt, torch.tensor(10.0, dtype=torch.float64))
(gathered.sum() * 0 + loss).backward()
out = {"rank": rank, "steps": result["steps"], "params": flat.tolist()[:50], "checksum": float(flat.double().sum()),
       "gathered": gathered.detach().tolist(), "offset": offset, "img": img.detach().tolist(),
       "txt": txt.tolist(), "loss": loss.item(), "grad": img.grad.tolist()}
json.dump(out, open(f"{sys.argv[4]}/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow  # about 45 s on 2 shared cores: two interpreters import transformers and torch.distributed
def test_torchrun_two_processes_gather_negatives_and_stay_identical(caption_folder, tmp_path):
    import socket
    import subprocess
    import sys

    root, _ = caption_folder
    script = tmp_path / "ddp.py"
    script.write_text(TORCHRUN_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = json.dumps({**TINY, "batch_size": 4, "max_steps": 2})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(script),
        str(root),
        str(tmp_path / "run"),
        settings,
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=_env(), timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2
    assert r0["checksum"] == r1["checksum"] and r0["params"] == r1["params"]  # DDP kept the replicas equal
    assert r0["gathered"] == r1["gathered"] == r0["img"] + r1["img"]  # 1 + 2 rows from both ranks
    assert (r0["offset"], r1["offset"]) == (0, 1)
    # rank 0's loss: its row against all three texts, plain formula
    all_img = np.array(r0["img"] + r1["img"])
    all_txt = np.array(r0["txt"] + r1["txt"])
    for r, rank_out in ((0, r0), (1, r1)):
        rows = range(0, 1) if r == 0 else range(1, 3)
        i2t = np.mean(
            [-10 * all_img[i] @ all_txt[i] + math.log(np.exp(10 * all_img[i] @ all_txt.T).sum()) for i in rows]
        )
        t2i = np.mean(
            [-10 * all_txt[i] @ all_img[i] + math.log(np.exp(10 * all_txt[i] @ all_img.T).sum()) for i in rows]
        )
        assert rank_out["loss"] == pytest.approx((i2t + t2i) / 2, rel=1e-9)
    # rank 1's loss depends on rank 0's image row: its gradient must arrive on rank 0 (all_gather with grad)
    assert np.abs(np.array(r0["grad"])).sum() > 0
    from ovss.checkpoints import load_checkpoint

    assert load_checkpoint(tmp_path / "run", method="sseg").extra["step"] == 2


# ---------------------------------------------------------------------------------------------
# pseudo-mask cache and S-Seg+
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_run(caption_folder, tmp_path_factory):
    from ovss.methods.sseg.train import make_train_settings, train_sseg
    from ovss.testing.standins import SyntheticDINO

    root, _ = caption_folder
    run = tmp_path_factory.mktemp("teacher") / "run"
    train_sseg(
        root, run, make_train_settings({**TINY, "max_steps": 2}), dino=SyntheticDINO(), device="cpu", progress=False
    )
    return run


def test_pseudo_label_cache_is_sharded_resumable_and_cropped_like_the_images(caption_folder, tmp_path, monkeypatch):
    from PIL import Image

    from ovss.masks.kmeans import KMeansMaskGenerator
    from ovss.methods.sseg.data import square_crop
    from ovss.methods.sseg.pseudo import cache_path, cached_masks
    from ovss.models.dino import load_dino

    root, _ = caption_folder
    cache = tmp_path / "cache"
    sets = ["--set", "k=3", "--set", "dino_size=56"]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (
        _run(["--data", str(root), "--out", str(cache), "--no-progress", "--device", "cpu", *sets], "pseudo-label") == 0
    )
    assert len(list(cache.rglob("*.png"))) == 5  # every second sample
    monkeypatch.setenv("RANK", "0")
    assert (
        _run(["--data", str(root), "--out", str(cache), "--no-progress", "--device", "cpu", *sets], "pseudo-label") == 0
    )
    assert len(list(cache.rglob("*.png"))) == 10
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(InputError, match="other settings"):
        _run(["--data", str(root), "--out", str(cache), "--no-progress", "--set", "k=4"], "pseudo-label")
    # one cached map equals the k-means generator's map of the full image
    source = open_source(root)
    path, _ = source.records[0]
    image = np.array(Image.open(path).convert("RGB"))
    expected = KMeansMaskGenerator(load_dino("tiny-random"), k=3, short_side=56).cluster_map(image)
    with Image.open(cache_path(cache, path)) as im:
        assert np.array_equal(np.array(im), expected)
    # the crop of the cached map follows the image crop (plain numpy nearest resize and slicing)
    pixels, box = square_crop(image, 32, random.Random(5))
    nh, nw, y0, x0 = box
    rows = np.floor(np.arange(nh) * expected.shape[0] / nh).astype(int)
    cols = np.floor(np.arange(nw) * expected.shape[1] / nw).astype(int)
    crop = expected[rows][:, cols][y0 : y0 + 32, x0 : x0 + 32]
    masks = cached_masks(cache, [path], [box], 32, (32, 32))[0]
    ids = np.unique(crop)
    assert masks.shape == (len(ids), 32, 32)
    for m, c in zip(masks.numpy(), ids):
        assert np.array_equal(m, crop == c)
    assert pixels.shape == (3, 32, 32)
    run = tmp_path / "run"
    assert (
        _run(
            [
                "--data",
                str(root),
                "--out",
                str(run),
                "--no-progress",
                "--device",
                "cpu",
                *_sets(TINY),
                "--set",
                "max_steps=1",
                "--set",
                f"pseudo_cache={str(cache)!r}",
            ]
        )
        == 0
    )


def test_sseg_plus_trains_on_teacher_labels_and_segments_with_its_classes(caption_folder, teacher_run, tmp_path):
    import ovss
    from ovss.checkpoints import load_checkpoint

    root, _ = caption_folder
    run = tmp_path / "plus"
    (tmp_path / "classes.txt").write_text("red\ngreen\nblue\n")  # @FILE, as `ovss segment -c @FILE`
    argv = [
        "--images",
        str(root / "images"),
        "--teacher",
        str(teacher_run),
        "--classes",
        f"@{tmp_path / 'classes.txt'}",
        "--out",
        str(run),
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        "backbone='convnext-test'",
        "--set",
        "size=32",
        "--set",
        "batch_size=2",
        "--set",
        "max_steps=2",
        "--set",
        "hidden=16",
        "--set",
        "short_side=32",
        "--set",
        "rounds=2",
    ]
    assert _run(argv, method="sseg-plus") == 0
    ckpt = load_checkpoint(run, method="sseg-plus")
    assert ckpt.extra["vocabulary"]["names"] == ["red", "green", "blue"] and ckpt.extra["round"] == 2
    assert len(list((run / "labels" / "round1").glob("*.png"))) == 10
    assert len(list((run / "labels" / "round2").glob("*.png"))) == 10
    # round 1 labels are the teacher's own predictions
    teacher = ovss.Segmenter("sseg", checkpoint=str(teacher_run), device="cpu")
    from PIL import Image

    first = sorted((root / "images").glob("*.png"))[0]
    with Image.open(run / "labels" / "round1" / "000000.png") as im:
        assert np.array_equal(np.array(im), teacher.segment(str(first), "red; green; blue").labels)
    seg = ovss.Segmenter("sseg-plus", checkpoint=str(run), device="cpu")
    result = seg.segment(str(first))
    assert result.labels.shape == (48, 48) and set(np.unique(result.labels)) <= {0, 1, 2}
    assert result.class_names == ["red", "green", "blue"]
    with pytest.raises(InputError, match="only the classes it was trained on"):
        seg.segment(str(first), "cat; dog")


# ---------------------------------------------------------------------------------------------
# real weights: k-means pseudo-masks of a real DINOv2 against a random one
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # two ViT-S forwards at 448 on 4 photos; minutes on shared CPUs
def test_real_dinov2_kmeans_pseudo_masks_beat_random_weights(evaldata):
    import sys
    from pathlib import Path

    model_dir = evaldata.parent / "models" / "dinov2-small-imgfocus"
    if not (model_dir / "model.safetensors").is_file():
        pytest.skip(f"real DINOv2 not found at {model_dir}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import sseg_pseudo_oracle as oracle
    from ovss.models.dino import load_dino

    pairs = oracle.voc_pairs(4)
    real, _ = oracle.oracle_miou(load_dino(str(model_dir)), pairs, k=8)
    rand, _ = oracle.oracle_miou(oracle.random_dino_like(model_dir), pairs, k=8)
    assert real > rand + 0.1, (real, rand)


def test_oracle_labelling_matches_a_plain_majority_vote():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import sseg_pseudo_oracle as oracle

    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 4, (12, 12))
    truth = rng.integers(0, 3, (12, 12))
    truth[0, :6] = 255
    out = oracle.oracle_labels(clusters, truth)
    for c in range(4):
        votes = {}
        for y, x in zip(*np.nonzero(clusters == c)):
            if truth[y, x] != 255:
                votes[truth[y, x]] = votes.get(truth[y, x], 0) + 1
        best = max(sorted(votes), key=lambda v: votes[v])
        assert (out[clusters == c] == best).all()


# ---------------------------------------------------------------------------------------------
# the synthetic proof (small version of bench/sseg_synthetic.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.long  # three small trainings and an S-Seg+ run: many minutes on a CPU (pytest -m long)
@pytest.mark.xfail(
    strict=True,
    reason="issue 12: the paper's mask features (decoder queries) give every region of a scene one name in "
    "this world (docs/sseg.md); measured at this size: region accuracy 0.229, no-contrastive control 0.208",
)
def test_synthetic_world_faithful_sseg_names_regions(tmp_path):
    """What issue 12 asks, with the paper's architecture and the world's full captions."""
    results = _synthetic_bench().run(True, tmp_path, ["sseg", "no_contrastive"], "sseg")
    _assert_names_regions(results, "sseg", "no_contrastive")


@pytest.mark.long
def test_synthetic_world_sseg_with_region_features_names_regions_and_controls_cannot(tmp_path):
    """Region features (mask_features=local, hard mask assignment), the same world: regions named by
    colour far above chance from captions alone, not without the contrastive loss, and S-Seg+ at least
    as good."""
    results = _synthetic_bench().run(True, tmp_path, ["sseg_local", "local_no_contrastive"], "sseg_local")
    _assert_names_regions(results, "sseg_local", "local_no_contrastive")


def _synthetic_bench():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import sseg_synthetic

    return sseg_synthetic


def _assert_names_regions(results: dict, sseg_name: str, control_name: str) -> None:
    chance = 1 / 6
    sseg, control, plus = results[sseg_name], results[control_name], results[f"{sseg_name}_plus"]
    assert sseg["region_acc"] > chance + 0.3 and sseg["distinct"] > 0.5, results
    assert control["region_acc"] < chance + 0.1, results
    assert plus["region_acc"] >= sseg["region_acc"] - 0.02, results
