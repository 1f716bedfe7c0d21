"""Security rules of the package (item 5): no unsafe deserialisation or code execution in src/,
CLI values stay data, and output names derived from input names stay inside the output folder."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from PIL import Image

from ovss.cli import _parse_value
from ovss.errors import InputError
from ovss.jobs import plan_images

SRC = Path(__file__).resolve().parents[1] / "src"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_uses(source: str) -> list[tuple[int, str]]:
    """(line, rule) for every unsafe construct in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in PICKLE_MODULES for n in names):
                found.append((node.lineno, "pickle-family import"))
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        if isinstance(func, ast.Name) and name in ("eval", "exec", "__import__"):
            found.append((node.lineno, f"{name}()"))
        if name == "load" and owner == "torch" and not _is_true(_keyword(node, "weights_only")):
            found.append((node.lineno, "torch.load without weights_only=True"))
        if _is_true(_keyword(node, "trust_remote_code")):
            found.append((node.lineno, "trust_remote_code=True"))
        if _is_true(_keyword(node, "allow_pickle")):
            found.append((node.lineno, "allow_pickle=True"))
    return found


def test_scanner_catches_each_rule():
    bad = """
import pickle
from joblib import load
torch.load(path)
torch.load(path, weights_only=False)
eval(text)
exec(code)
AutoModel.from_pretrained(name, trust_remote_code=True)
np.load(f, allow_pickle=True)
"""
    rules = [rule for _, rule in unsafe_uses(bad)]
    assert rules.count("torch.load without weights_only=True") == 2
    assert {"pickle-family import", "eval()", "exec()", "trust_remote_code=True", "allow_pickle=True"} <= set(rules)
    assert unsafe_uses("torch.load(p, map_location='cpu', weights_only=True)\nmodel.eval()\nast.literal_eval(s)") == []


def test_src_has_no_unsafe_loading_or_execution():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    problems = [f"{f.relative_to(SRC)}:{line}: {rule}" for f in files for line, rule in unsafe_uses(f.read_text())]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "payload",
    ["__import__('os').system('x')", "exec('x')", "open('/etc/passwd').read()", "[__import__('os')]", "lambda: 1"],
)
def test_set_values_stay_strings(payload):
    assert _parse_value(payload) == payload


def test_set_values_parse_literals():
    assert _parse_value("0.5") == 0.5 and _parse_value("(448, 224)") == (448, 224) and _parse_value("None") is None


def _inside(path: Path, folder: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep)


def _outputs(out: Path, stem: Path) -> list[Path]:
    """The output names the commands derive from a stem (``with_suffix`` and appended suffixes)."""
    return [(out / stem).with_suffix(".json"), (out / stem).with_suffix(".png"), out / f"{stem}.safetensors"]


def test_output_names_stay_in_the_output_folder(tmp_path, monkeypatch):
    images = tmp_path / "in" / "deep"
    (images / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.c.png", "..d.png"):  # "..d" is a legal name
        Image.new("RGB", (8, 8)).save(images / name)
    out = tmp_path / "out"
    monkeypatch.chdir(images / "sub")
    inputs = ["..", "../a.png", str(images / "a.png"), "../../deep/sub/b.c.png", str(images) + "/sub/../a.png"]
    for given in [[i] for i in inputs] + [[str(images)]]:
        _, stems, _ = plan_images(given, out, 10**8)
        for stem in stems:
            assert all(_inside(p, out) for p in _outputs(out, stem)), (given, stem)


@pytest.mark.parametrize("name", ["..png", "...png"])
def test_names_that_would_leave_the_output_folder_are_refused(tmp_path, name):
    Image.new("RGB", (8, 8)).save(tmp_path / name, format="PNG")
    with pytest.raises(InputError, match="rename it"):
        plan_images([str(tmp_path / name)], tmp_path / "out", 10**8)
    with pytest.raises(InputError, match="rename it"):
        plan_images([str(tmp_path)], tmp_path / "out", 10**8)
