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


@pytest.fixture(scope="module")
def tiny_sam():
    """The tiny random SAM behind ovss's SAM interface."""
    from ovss.masks import SamBackbone
    from ovss.models.sam import build_tiny_sam

    return SamBackbone(build_tiny_sam(), "tiny")


@pytest.fixture(scope="module")
def full_width_decoder():
    """SAM ViT-B's prompt encoder and mask decoder (transformers defaults: width 256, 1024 input,
    64x64 tokens) behind a tiny vision encoder, random weights: real-shaped decoder tensors."""
    import torch
    from transformers import SamConfig, SamModel

    from ovss.models.sam import randomize_sam

    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_dim=64, global_attn_indexes=[0])
    torch.manual_seed(0)
    config = SamConfig(vision_config=vision, mask_decoder_config=dict(layer_norm_eps=1e-5))
    return randomize_sam(SamModel(config), seed=0).eval()
