"""Shared fixtures. Tests never touch the network or the user's cache directory."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/huggingface_hub are imported
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# No weights can be downloaded here: the tests ask for the small random models explicitly this way
# (ovss's own defaults are real hub ids; tests/test_contract.py checks them without this variable).
os.environ.setdefault("OVSS_DEFAULT_MODEL", "tiny-random")

import sys
from pathlib import Path

import pytest

# Shared experiment worlds live beside the benches that report them (bench/*_world.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

# Real images with ground truth live beside the checkout (../shared/evaldata), never in the package;
# bench/shared_paths.py is the one home of that rule for tests and benches.
from shared_paths import EVALDATA as SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("OVSS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ovss-cache"))


@pytest.fixture(scope="session")
def evaldata() -> Path:
    if not SHARED.is_dir():
        if os.environ.get("CI"):  # in CI the real-data tests must run, not skip
            pytest.fail(f"real-sample data not found at {SHARED}; set OVSS_EVALDATA")
        pytest.skip(f"real-sample data not found at {SHARED}; set OVSS_EVALDATA")
    return SHARED


@pytest.fixture(scope="session")
def tiny_clip():
    import warnings

    from ovss.models import load_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_clip("tiny-random")
