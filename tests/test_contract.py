"""The method contract, driven by the registry: every registered method passes the same checks, and
a new method (the toy below) gets the CLI, the API, eval and these checks by registering alone."""

from __future__ import annotations

import ast
import importlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layouts import _voc
from ovss.api import Segmenter
from ovss.cli import main
from ovss.errors import InputError, ModelLoadError
from ovss.methods import available_methods, get_method_spec
from ovss.methods.settings import resolve_settings
from ovss.testing.contract import check_method

SRC = Path(__file__).resolve().parents[1] / "src" / "ovss"


@pytest.mark.parametrize("name", list(available_methods()))
def test_every_registered_method_keeps_the_contract(name):
    check_method(get_method_spec(name))


TOY = '''
"""A toy method: one module, registered by importing it; nothing else in ovss changes."""

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovss.checkpoints import save_checkpoint
from ovss.errors import InputError
from ovss.methods.base import Command, Method, MethodOutput, MethodSpec, register_method
from ovss.protocols import register_family


@dataclass(frozen=True)
class ToySettings:
    offset: float = 0.0  # added to the brightness before binning

    def validate(self):
        if not -255 <= self.offset <= 255:
            raise InputError(f"offset {self.offset} must be within +-255", option="offset")


class ToyMethod(Method):
    """Names colours: each pixel takes the class whose name is the nearest colour (ovss.testing's palette);
    a checkpoint records the training images' mean brightness, added to the image before matching."""

    def __init__(self, backbones, settings, device, checkpoint=None):
        super().__init__(backbones, settings, device)
        self.shift = float(checkpoint.tensors()["shift"]) if checkpoint is not None else 0.0

    def segment(self, image, vocab, return_probs=False):
        from ovss.testing.standins import PALETTE

        pixels = image.astype(np.float32) + self.settings.offset + self.shift
        far = np.full(image.shape[:2], np.inf, np.float32)
        labels = np.zeros(image.shape[:2], np.int32)
        for index, name in enumerate(vocab.names):
            if name in PALETTE:
                distance = np.abs(pixels - np.array(PALETTE[name], np.float32)).sum(axis=2)
                labels[distance < far] = index
                far = np.minimum(far, distance)
        return MethodOutput(labels)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True)


def run_train(args) -> int:
    import torch

    from ovss.io import load_image

    images = sorted(Path(args.images).glob("*.png"))
    if not images:
        raise InputError(f"{args.images}: no PNG images")
    mean = float(np.mean([load_image(p).mean() for p in images]))
    settings = dataclasses.asdict(ToySettings(**dict(args.set)))
    save_checkpoint(args.out, "toy", {"shift": torch.tensor(mean - 120.0)}, settings, {})
    return 0


register_family("toy", {"source": "tests/test_contract.py", "background": {"default": "none"}, "metric": "union"})
register_method(MethodSpec("toy", "A toy method for the contract test", ToyMethod, ToySettings(), (),
                           "none", family="toy", checkpoint="optional",
                           commands={"train": Command("train the toy", add_train_arguments, run_train)}))
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    from ovss.methods import base
    from ovss.protocols import FAMILIES

    (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("toy_method")  # the one import line that registers it
    yield get_method_spec("toy")
    base._REGISTRY.pop("toy", None)
    FAMILIES.pop("toy", None)
    sys.modules.pop("toy_method", None)


def test_a_new_method_is_one_module_and_one_import(toy, tmp_path, capsys, evaldata):
    from ovss.testing.standins import PALETTE

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate(("red", "blue")):
        Image.fromarray(np.full((32, 48, 3), PALETTE[colour], np.uint8)).save(photos / f"p{i}.png")

    assert main(["methods"]) == 0
    assert "toy" in capsys.readouterr().out
    assert main(["segment", str(photos), "--method", "toy", "-c", "red; blue", "--out", str(tmp_path / "s")]) == 0
    labels = np.array(Image.open(tmp_path / "s" / "p1.png"))
    assert labels.max() == 1 and labels.min() == 1  # the blue photo is all "blue"

    run = tmp_path / "run"
    assert main(["train", "--method", "toy", "--images", str(photos), "--out", str(run), "--set", "offset=3"]) == 0
    assert json.loads((run / "config.json").read_text())["settings"] == {"offset": 3}
    out = tmp_path / "s2"
    assert (
        main(["segment", str(photos / "p0.png"), "-m", "toy", "--checkpoint", str(run), "-c", "a; b", "-o", str(out)])
        == 0
    )
    info = json.loads((out / "p0.json").read_text())
    assert info["settings"]["offset"] == 3 and info["provenance"]["offset"].startswith("checkpoint")
    assert info["models"]["checkpoint"] == str(run)

    root = tmp_path / "data"
    _voc(evaldata, root)
    assert main(["eval", "--method", "toy", "-d", "voc21", "--root", str(root), "-o", str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e" / "results.json").read_text())
    assert report["method"] == "toy" and report["protocol"]["family"] == "toy" and 0 <= report["mIoU"] <= 100
    check_method(toy)  # and it keeps the contract
    capsys.readouterr()


def test_a_checkpoint_for_a_training_free_method_is_one_line(capsys, tmp_path):
    with pytest.raises(InputError, match="takes no checkpoint") as e:
        Segmenter("sclip", checkpoint="x")
    assert e.value.option == "checkpoint" and "checkpoint=" in str(e.value)
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    code = main(["segment", str(img), "--method", "sclip", "--checkpoint", "x", "-c", "cat", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--checkpoint" in err and "Traceback" not in err


def test_unknown_setting_is_an_error_with_its_option(capsys, tmp_path):
    with pytest.raises(InputError, match="no setting 'pamr'") as e:
        resolve_settings(get_method_spec("sclip"), overrides={"pamr": 3})
    assert e.value.option == "pamr"


def test_protocol_values_record_where_they_came_from():
    r = resolve_settings(get_method_spec("sclip"), benchmark="voc21", overrides={"short_side": 300})
    assert r.settings.logit_scale == 65.0 and r.provenance["logit_scale"] == "protocol sclip/voc21"
    assert r.provenance["short_side"] == "user" and r.provenance["variant"] == "default"
    # a method evaluated under another family keeps what the family does not set, and says so
    t = resolve_settings(get_method_spec("tuss"), benchmark="voc21", protocol="sclip")
    assert set(t.not_applicable) <= {"area_thd", "pamr_iterations", "prob_thd"}


def test_default_models_are_real_ids_and_offline_errors_name_them(monkeypatch):
    monkeypatch.delenv("OVSS_DEFAULT_MODEL")
    from ovss.models.registry import DEFAULT_CACHE, default_model

    assert default_model("clip") == "openai/clip-vit-base-patch16" and default_model("sam") == "facebook/sam-vit-base"
    from ovss.methods.sseg.pseudo import pseudo_mask_dino

    assert pseudo_mask_dino(None) == "facebook/dino-vits8"  # S-Seg's paper network, not ProxyCLIP's
    assert pseudo_mask_dino("x/dino") == "x/dino"
    monkeypatch.setenv("OVSS_DEFAULT_MODEL", "tiny-random")
    assert pseudo_mask_dino(None) == "tiny-random"
    monkeypatch.delenv("OVSS_DEFAULT_MODEL")
    DEFAULT_CACHE.release()
    with pytest.raises(ModelLoadError) as e:
        Segmenter("sclip", device="cpu")
    assert "openai/clip-vit-base-patch16" in str(e.value) and "local directory" in str(e.value)


def test_model_cache_is_bounded_and_released():
    import torch

    from ovss.models.registry import ModelCache

    cache = ModelCache(max_items=2)
    cpu = torch.device("cpu")
    clip = cache.get("clip", "tiny-random", cpu)
    assert cache.get("clip", "tiny-random", cpu) is clip  # cached
    cache.get("dino", "tiny-random", cpu)
    cache.get("sam", "tiny-random", cpu)
    assert len(cache) == 2 and ("clip", "tiny-random", "cpu") not in cache  # least recently used went first
    assert cache.release() == 2 and len(cache) == 0


def test_text_embeddings_are_cached_per_query_within_a_bound(monkeypatch, tiny_clip):
    from ovss.ops import text

    calls: list[int] = []
    real = tiny_clip.encode_text

    def counting(texts, *a, **k):
        calls.append(len(texts))
        return real(texts, *a, **k)

    monkeypatch.setattr(tiny_clip, "encode_text", counting)
    monkeypatch.setenv("OVSS_CACHE_DIR", "")
    monkeypatch.setattr(text, "MEMORY_LIMIT", 3)
    text.clear_text_cache()
    text.embed_queries(tiny_clip, ["cat", "dog"], ("a {}.", "the {}."))
    text.embed_queries(tiny_clip, ["cat", "dog", "bird"], ("a {}.", "the {}."))
    assert calls == [4, 2]  # adding one class embeds that class alone
    text.embed_queries(tiny_clip, ["fish", "cow"], ("a {}.",))
    assert len(text._MEMORY) == 3


def test_checkpoint_folder_round_trip_and_refusals(tmp_path):
    import torch

    from ovss.checkpoints import load_checkpoint, save_checkpoint

    run = save_checkpoint(tmp_path / "run", "fmbseg", {"w": torch.arange(3.0)}, {"window": (448, 224)}, {"dino": "d"})
    (run / "state").mkdir()
    save_checkpoint(run, "fmbseg", {"w": torch.ones(3)}, {"window": (448, 224)}, {"dino": "d"})  # update in place
    assert (run / "state").is_dir() and (run / "README.md").read_text().startswith("# ovss fmbseg")
    for where in (run, run / "model.safetensors"):
        ckpt = load_checkpoint(where, method="fmbseg")
        assert ckpt.path == run and ckpt.backbones == {"dino": "d"} and torch.equal(ckpt.tensors()["w"], torch.ones(3))
    with pytest.raises(ModelLoadError, match="a fmbseg checkpoint, not a tuss one"):
        load_checkpoint(run, method="tuss")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(ModelLoadError, match="not an ovss checkpoint"):
        load_checkpoint(tmp_path / "junk")
    with pytest.raises(ModelLoadError, match="could not be fetched"):
        load_checkpoint("someone/no-such-run")


def test_eval_with_sam_refinement_records_it(evaldata, tmp_path):
    from ovss.evaluate import EvalJob, run_eval
    from ovss.testing.standins import SyntheticMaskGenerator

    root = tmp_path / "data"
    _voc(evaldata, root)
    refine = {"generator": SyntheticMaskGenerator(), "vote": "labels"}
    job = EvalJob("sclip", "voc21", root, limit=2, out=tmp_path / "o", device="cpu", refine=refine)
    report = run_eval(job, progress=False)
    assert report["refine"]["method"] == "sam" and report["refine"]["vote"] == "labels"
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["refine"]["vote"] == "labels" and saved["provenance"]["logit_scale"] == "protocol sclip/voc21"


def test_cli_eval_refine_sam(evaldata, tmp_path, capsys):
    root = tmp_path / "data"
    _voc(evaldata, root)
    code = main(
        [
            "eval",
            "-m",
            "sclip",
            "-d",
            "voc21",
            "--root",
            str(root),
            "--limit",
            "1",
            "-o",
            str(tmp_path / "o"),
            "--refine",
            "sam",
            "--sam",
            "tiny-random",
            "--set",
            "short_side=112",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "results.json").read_text())["refine"]["model"] == "tiny-random"


# Layers (docs/contributing.md): a module never imports from a higher layer.
LAYERS = {
    "_version": 0,
    "errors": 0,
    "io": 1,
    "vocab": 1,
    "protocols": 1,
    "data": 1,
    "templates": 1,
    "device": 1,
    "memory": 1,
    "cliargs": 1,
    "typecheck": 0,
    "jobs": 1,
    "distributed": 1,
    "result": 1,
    "checkpoints": 2,
    "models": 2,
    "ops": 3,
    "masks": 3,
    "losses": 3,
    "metrics": 3,
    "export": 3,
    "methods": 4,
    "api": 5,
    "cli": 5,
    "evaluate": 5,
    "labelling": 5,
    "leaderboard": 5,
    "demo": 5,
    "testing": 5,
    "__init__": 5,
    "__main__": 6,
}
KNOWN: set[tuple[str, str]] = set()  # upward imports tolerated for now (none)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1] if len(parts) > 1 else "__init__")


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        own = _layer(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                targets = (
                    [".".join([*base, node.module])] if node.module else [".".join([*base, a.name]) for a in node.names]
                )
                for target in targets:
                    theirs = _layer(target)
                    if own is not None and theirs is not None and theirs > own and (module, target) not in KNOWN:
                        upward.append(f"{module} imports {target} (line {node.lineno})")
    assert not upward, upward
    unknown = {p.stem for p in SRC.iterdir() if not p.name.startswith(".")} - set(LAYERS) - {"py", "__pycache__"}
    assert not unknown, f"give these a layer: {unknown}"


def test_method_names_appear_only_in_their_own_packages():
    own = {"tuss", "fmbseg"}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        for name in own:
            if rel.parts[:2] == ("methods", name):
                continue
            assert f'"{name}"' not in path.read_text(), f"{rel} names the method {name!r}"


def test_every_mask_generator_has_one_interface():
    from ovss.masks.kmeans import KMeansMaskGenerator
    from ovss.masks.maskset import MaskSet
    from ovss.masks.registry import MaskGenerator
    from ovss.masks.sam import SamMaskGenerator
    from ovss.testing.standins import SyntheticDINO, SyntheticMaskGenerator

    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    for generator in (
        SamMaskGenerator("tiny-random", preset="sparse", device="cpu"),
        KMeansMaskGenerator(dino=SyntheticDINO(), k=3, device="cpu"),
        SyntheticMaskGenerator(),
    ):
        assert isinstance(generator, MaskGenerator)
        masks = generator.generate(image)
        assert isinstance(masks, MaskSet) and masks.image_size == (64, 80)
        assert isinstance(generator.info(), dict)


def test_python_dash_m_ovss_is_the_ovss_command():
    import subprocess
    import sys

    import ovss

    run = subprocess.run([sys.executable, "-m", "ovss", "--version"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and ovss.__version__ in run.stdout + run.stderr, run.stderr
    run = subprocess.run([sys.executable, "-m", "ovss", "segment"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
