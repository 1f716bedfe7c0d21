"""PixelCLIP training: EMA order, exact resume after kill -9, bad inputs, the train command, inference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ovss.methods.pixelclip as pc
from ovss.checkpoints import load_checkpoint, save_checkpoint
from ovss.errors import InputError, ModelLoadError
from ovss.masks.maskset import MaskSet
from ovss.methods.pixelclip import train as T
from ovss.methods.pixelclip.data import UnlabeledMaskDataset, list_images, pair_masks
from ovss.models.clip import load_clip
from ovss.testing.standins import SyntheticMaskGenerator
from ovss.testing.synthetic import make_dataset

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = dict(
    short_side=64,
    crop=64,
    clip_resolution=64,
    mask_resolution=32,
    num_prompts=8,
    batch_size=4,
    micro_batch=2,
    max_steps=3,
    state_every=1,
)


@pytest.fixture(scope="module")
def clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_clip("tiny-random")


def write_world(root: Path, n: int = 6, size=(64, 80)) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    generator = SyntheticMaskGenerator()
    for scene in make_dataset(n, size=size):
        Image.fromarray(scene.image).save(images / f"{scene.name}.png")
        generator.generate(scene.image).save_json(masks / f"{scene.name}.json")
    return images, masks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("pixelclip-world"))


def test_teacher_ema_uses_the_student_before_its_step(world, clip):
    images, masks = world
    settings = pc.train_settings({**SMALL, "momentum": 0.9})
    paths = list_images(images)
    data = UnlabeledMaskDataset(paths, pair_masks(images, paths, masks), settings)
    torch.manual_seed(0)
    model = pc.model.PixelCLIPModel(load_clip("tiny-random").model, clip.tokenizer, settings)
    trainer = T.Trainer(model, data, settings, torch.device("cpu"), clip.mean, clip.std)
    name = "encoder.layers.0.self_attn.q_proj.weight"
    student0 = dict(model.clip.vision_model.named_parameters())[name].detach().clone()
    teacher0 = dict(model.teacher_vision.named_parameters())[name].detach().clone()
    frozen0 = dict(model.teacher_vision.named_parameters())["encoder.layers.0.mlp.fc1.weight"].detach().clone()
    assert trainer.step(0) is not None
    student1 = dict(model.clip.vision_model.named_parameters())[name]
    teacher1 = dict(model.teacher_vision.named_parameters())[name]
    assert not torch.equal(student1, student0)  # the optimiser moved the student
    assert torch.allclose(teacher1, 0.9 * teacher0 + 0.1 * student0, atol=1e-7)
    assert torch.equal(dict(model.teacher_vision.named_parameters())["encoder.layers.0.mlp.fc1.weight"], frozen0)


def run_train(*argv: str) -> int:
    """The real command line: ``ovss train --method pixelclip ...``."""
    from ovss.cli import main

    return main(["train", "--method", "pixelclip", *argv])


def small_set_args() -> list[str]:
    out = []
    for key, value in SMALL.items():
        out += ["--set", f"{key}={value}"]
    return out


def test_train_command_writes_a_run_that_segments(world, tmp_path, clip):
    images, masks = world
    run = tmp_path / "run"
    assert (
        run_train("--images", str(images), "--masks", str(masks), "--out", str(run), "--no-progress", *small_set_args())
        == 0
    )
    ckpt = load_checkpoint(run, method="pixelclip")
    assert any(k.startswith("vision_model.") for k in ckpt.tensors())
    assert [json.loads(line)["step"] for line in (run / "loss_log.jsonl").read_text().splitlines()] == [1, 2, 3]
    from ovss.api import Segmenter

    image = np.asarray(Image.open(sorted(images.iterdir())[0]))
    result = Segmenter("pixelclip", clip=clip, checkpoint=str(run)).segment(image, "red; green; blue")
    assert result.labels.shape == image.shape[:2]
    # a re-run of a finished run does nothing
    assert (
        run_train("--images", str(images), "--masks", str(masks), "--out", str(run), "--no-progress", *small_set_args())
        == 0
    )


def test_official_inference_matches_a_plain_computation(world, tmp_path, clip):
    import torch.nn.functional as F

    from ovss.methods.pixelclip.method import PixelCLIPMethod
    from ovss.vocab import build_vocabulary

    images, masks = world
    run = tmp_path / "run"
    pc.train_pixelclip(
        images, run, pc.train_settings({**SMALL, "max_steps": 1}), clip=clip, masks=masks, progress=False
    )
    method = PixelCLIPMethod({"clip": clip}, pc.PixelCLIPSettings(), torch.device("cpu"), checkpoint=str(run))
    vocab = build_vocabulary("red, crimson; green")
    text = method.text_embeddings(vocab)
    templates = pc.PixelCLIPSettings().templates
    from ovss.templates import get_templates

    per_class = []
    for words in (["red", "crimson"], ["green"]):
        rows = []
        for t in get_templates(templates):
            e = clip.encode_text([t.format(w) for w in words])
            rows.append(F.normalize(e.mean(0), dim=0))
        per_class.append(F.normalize(torch.stack(rows).mean(0), dim=0))
    assert torch.allclose(text, torch.stack(per_class), atol=1e-5)
    image = np.asarray(Image.open(sorted(images.iterdir())[0]))  # 80x64: shortest edge 640 -> 800x640
    x = torch.tensor(image).permute(2, 0, 1).float()[None]
    x = F.interpolate(x, size=(640, 800), mode="bilinear", align_corners=False).round().clamp(0, 255)
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(clip.std).view(1, 3, 1, 1) * 255
    x = F.interpolate((x - mean) / std, size=(320, 320), mode="bilinear", align_corners=False)
    feats = pc.model.dense_features(method.model.vision_model, method.model.visual_projection, x, 16)
    feats = F.normalize(F.interpolate(feats, size=(64, 64), mode="bilinear", align_corners=False), dim=1)
    scores = torch.einsum("bdhw,cd->bchw", feats, text)
    ref = F.interpolate(scores, size=image.shape[:2], mode="bilinear", align_corners=False)[0].argmax(0)
    out = method.segment(image, vocab)
    assert (out.labels == ref.numpy()).mean() > 0.999


RESUME_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
import ovss.methods.pixelclip as pc
settings = pc.train_settings({settings!r})
pc.train_pixelclip(sys.argv[1], sys.argv[3], settings, clip="tiny-random", masks=sys.argv[2], progress=False)
"""


@pytest.mark.slow
def test_kill9_resume_gives_the_same_weights(world, tmp_path):
    images, masks = world
    settings = {**SMALL, "max_steps": 6}
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(RESUME_SCRIPT.format(settings=settings)))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = subprocess.Popen([sys.executable, str(script), str(images), str(masks), str(killed)], env=env)
    state = killed / "state" / "trainer.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert state.exists() and not (killed / "config.json").exists()
    subprocess.run(
        [sys.executable, str(script), str(images), str(masks), str(killed)], env=env, check=True, timeout=300
    )
    subprocess.run([sys.executable, str(script), str(images), str(masks), str(whole)], env=env, check=True, timeout=300)
    a, b = load_checkpoint(killed).tensors(), load_checkpoint(whole).tensors()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (killed / "loss_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    losses = lambda run: [json.loads(x)["loss"] for x in (run / "loss_log.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(killed) == losses(whole)


def test_bad_inputs_are_one_line_errors(world, tmp_path, clip):
    images, masks = world
    settings = pc.train_settings(SMALL)
    # no masks for an image
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(lonely / "a.png")
    with pytest.raises(InputError, match="no masks for this image"):
        pc.train_pixelclip(lonely, tmp_path / "r1", settings, clip=clip, masks=tmp_path / "lonely", progress=False)
    # an image smaller than the crop (max_size keeps it small)
    with pytest.raises(InputError, match="smaller than the 64px crop"):
        pc.train_pixelclip(
            images,
            tmp_path / "r2",
            pc.train_settings({**SMALL, "max_size": 50}),
            clip=clip,
            masks=masks,
            progress=False,
        )
    # masks of another size than their image
    odd_images, odd_masks = tmp_path / "odd_i", tmp_path / "odd_m"
    odd_images.mkdir()
    odd_masks.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(odd_images / "a.png")
    MaskSet([{"segmentation": np.ones((32, 32), bool), "area": 1024}], (32, 32)).save_json(odd_masks / "a.json")
    with pytest.raises(InputError, match="masks are 32x32 but the image is 64x64"):
        pc.train_pixelclip(odd_images, tmp_path / "r3", settings, clip=clip, masks=odd_masks, progress=False)
    # a run with no usable mask anywhere makes no step and writes no checkpoint
    empty_masks = tmp_path / "empty_m"
    empty_masks.mkdir()
    MaskSet([], (64, 64)).save_json(empty_masks / "a.json")
    with pytest.raises(InputError, match="no optimisation step"):
        pc.train_pixelclip(
            odd_images,
            tmp_path / "r4",
            pc.train_settings({**SMALL, "batch_size": 2}),
            clip=clip,
            masks=empty_masks,
            progress=False,
        )
    assert not (tmp_path / "r4" / "config.json").exists()
    # a checkpoint of the wrong kind
    other = save_checkpoint(tmp_path / "tuss", "tuss", {"w": torch.zeros(1)}, {}, {"clip": "tiny-random"})
    from ovss.methods.pixelclip.method import PixelCLIPMethod

    with pytest.raises(ModelLoadError, match="a tuss checkpoint, not a pixelclip one"):
        PixelCLIPMethod({"clip": clip}, pc.PixelCLIPSettings(), torch.device("cpu"), checkpoint=str(other))
    # the command: no mask source
    assert run_train("--images", str(images), "--out", str(tmp_path / "r5")) == 2  # one line, exit 2


def test_bf16_autocast_step(world, tmp_path, clip):
    images, masks = world
    pc.train_pixelclip(
        images,
        tmp_path / "run",
        pc.train_settings({**SMALL, "max_steps": 1, "precision": "bf16"}),
        clip=clip,
        masks=masks,
        progress=False,
    )
    loss = json.loads((tmp_path / "run" / "loss_log.jsonl").read_text().splitlines()[0])["loss"]
    assert np.isfinite(loss) and loss > 0


@pytest.mark.long  # pytest -m long: minutes on a CPU
def test_synthetic_world_training_improves_cluster_purity():
    """The small version of bench/pixelclip_synthetic.py: trained prompts beat random ones on held-out scenes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import pixelclip_synthetic as bench

    small = dict(train_images=8, test_images=6, batch_size=4, micro_batch=4, clip_resolution=96, num_prompts=8)
    result = bench.run(30, **small)
    print(result)
    assert result["loss_last"] < result["loss_first"]
    assert result["purity_after"] > result["purity_before"] + 0.05, result


def test_views_are_deterministic_and_cutout_leaves_the_masks(world):
    images, masks = world
    settings = pc.train_settings(SMALL)
    paths = list_images(images)
    data = UnlabeledMaskDataset(paths, pair_masks(images, paths, masks), settings)
    a, b = data[1], data[1]
    assert torch.equal(a.standard, b.standard) and torch.equal(a.strong, b.strong) and torch.equal(a.masks, b.masks)
    data.epoch = 1
    assert not torch.equal(data[1].strong, a.strong)
    assert a.standard.shape == (3, 64, 64) and a.masks.shape[1:] == (64, 64)
    black = (a.strong == 0).all(0)
    assert black.any() and not a.masks[:, black].any()  # the cutout box is black and in no mask
    areas = a.masks.flatten(1).sum(1)
    assert torch.equal(areas, areas.sort(descending=True).values) and (areas > 0).all()
    plain = UnlabeledMaskDataset(
        paths,
        pair_masks(images, paths, masks),
        pc.train_settings({**SMALL, "strong_aug": False, "color_aug_ssd": False}),
    )[1]
    assert torch.equal(plain.standard, plain.strong)


def test_tar_shards_read_like_the_folder(world, tmp_path):
    import tarfile

    images, masks = world
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for path in sorted(images.iterdir()):
            tar.add(path, arcname=path.name)
    settings = pc.train_settings(SMALL)
    folder_paths, shard_paths = list_images(images), list_images(shard)
    assert len(shard_paths) == len(folder_paths)
    from_folder = UnlabeledMaskDataset(folder_paths, pair_masks(images, folder_paths, masks), settings)
    from_shard = UnlabeledMaskDataset(shard_paths, pair_masks(shard, shard_paths, masks), settings)
    assert torch.equal(from_folder[2].strong, from_shard[2].strong)
    assert torch.equal(from_folder[2].masks, from_shard[2].masks)
