"""The method contract as checks any registered method must pass (the idea of timm's tests over
``list_models()``): a method package gets them by registering. ``tests/test_contract.py`` runs them
for every method; a package outside ovss can call :func:`check_method` in its own tests."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
from typing import Any

import numpy as np

from ..errors import InputError, OvssError
from ..methods.base import TIERS, MethodSpec
from ..methods.settings import resolve_settings
from ..protocols import BENCHMARKS, FAMILIES, META_KEYS
from .standins import SyntheticDINO, SyntheticMaskGenerator
from .synthetic import SyntheticCLIP, make_scene, pixel_accuracy


def check_settings_round_trip(spec: MethodSpec) -> None:
    """Every default survives JSON and comes back as the same settings; validation accepts the defaults."""
    values = json.loads(json.dumps(dataclasses.asdict(spec.settings), default=str))
    resolved = resolve_settings(spec, overrides=values)
    assert resolved.settings == spec.settings, f"{spec.name}: settings change through JSON"
    assert set(resolved.provenance.values()) == {"user"}
    try:
        resolve_settings(spec, overrides={"no_such_setting_xyz": 1})
    except InputError as e:
        assert e.option == "no_such_setting_xyz" and "\n" not in str(e)
    else:
        raise AssertionError(f"{spec.name}: an unknown setting was accepted")


def check_protocol(spec: MethodSpec) -> None:
    """The method's family exists, resolves for all 8 benchmarks, and holds only keys some method has."""
    assert spec.family in FAMILIES, f"{spec.name}: unknown protocol family {spec.family!r}"
    assert spec.tier in TIERS, f"{spec.name}: unknown tier {spec.tier!r}"
    names = {f.name for f in dataclasses.fields(spec.settings)}
    for key in FAMILIES[spec.family]:
        assert key in META_KEYS or key in names, f"{spec.name}: family {spec.family} sets {key!r}, not a setting"
    for benchmark in BENCHMARKS:
        resolved = resolve_settings(spec, benchmark=benchmark)
        assert resolved.protocol is not None and resolved.protocol.metric in ("union", "present")
        assert not resolved.not_applicable, f"{spec.name}/{benchmark}: unused protocol values {resolved.not_applicable}"


def check_checkpoint_rule(spec: MethodSpec) -> None:
    """``checkpoint=`` is refused in one line where a method has none; a required one is asked for in one line."""
    if spec.checkpoint == "none":
        with _one_line_error("checkpoint"):
            resolve_settings(spec, checkpoint="x")
    if spec.checkpoint == "required":
        from ..api import Segmenter

        standins = synthetic_backbones()
        with _one_line_error("checkpoint"):
            Segmenter(spec.name, device="cpu", **{k: v for k, v in standins.items() if k in spec.needs})


def check_commands(spec: MethodSpec) -> None:
    """Each subcommand the method declares exists and prints its help."""
    from ..cli import METHOD_COMMANDS, method_command_parser

    for command in spec.commands:
        assert command in METHOD_COMMANDS, f"{spec.name}: unknown command {command!r}"
        parser = method_command_parser(command, spec.name)
        assert isinstance(parser, argparse.ArgumentParser)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                parser.parse_args(["--help"])
            except SystemExit as e:
                assert e.code == 0
        assert f"--method {spec.name}" in out.getvalue()


def synthetic_backbones() -> dict[str, Any]:
    """Stand-ins for every backbone role, behind the real interfaces."""
    return {"clip": SyntheticCLIP(), "dino": SyntheticDINO(), "sam": SyntheticMaskGenerator()}


def check_synthetic_world(spec: MethodSpec, min_accuracy: float = 0.5, checkpoint: Any = None) -> float:
    """The method labels a synthetic scene by class name, far above chance (1 / classes)."""
    from ..api import Segmenter

    if spec.checkpoint == "required" and checkpoint is None:
        return float("nan")  # checked by the method's own tests, with a checkpoint they train
    standins = synthetic_backbones()
    if any(spec.loaders.get(role, role) not in standins for role in spec.needs):
        return float("nan")  # a backbone without a stand-in (SAM 3): the method's own tests run it
    scene = make_scene(3, size=(96, 128))
    given = {k: v for k, v in standins.items() if k in spec.needs}
    seg = Segmenter(spec.name, device="cpu", checkpoint=checkpoint, **given, **_small(spec))
    result = seg.segment(scene.image, list(scene.class_names))
    assert result.labels.shape == scene.labels.shape and result.labels.dtype == np.int32
    accuracy = pixel_accuracy(result.labels, scene.labels)
    assert accuracy >= min_accuracy, f"{spec.name}: pixel accuracy {accuracy:.3f} on the synthetic world"
    return accuracy


def _small(spec: MethodSpec) -> dict[str, Any]:
    """Settings that keep a synthetic run small, where the method has them."""
    names = {f.name for f in dataclasses.fields(spec.settings)}
    wanted = {"short_side": 96, "pamr_iterations": 0, "templates": "simple"}
    return {k: v for k, v in wanted.items() if k in names}


def check_method(spec: MethodSpec, checkpoint: Any = None) -> None:
    check_settings_round_trip(spec)
    check_protocol(spec)
    check_checkpoint_rule(spec)
    check_commands(spec)
    check_synthetic_world(spec, checkpoint=checkpoint)


@contextlib.contextmanager
def _one_line_error(option: str):
    try:
        yield
    except OvssError as e:
        assert "\n" not in str(e) and e.option == option, f"not a one-line error about {option}: {e!r}"
    else:
        raise AssertionError(f"no error about {option}")
