"""Loading backbones: from_pretrained round trip, wrong kinds, offline ids; text embeddings."""

from __future__ import annotations

import warnings

import pytest
import torch

from ovss.errors import ModelLoadError
from ovss.models import load_clip, save_tiny_clip
from ovss.ops.text import embed_queries


def test_tiny_clip_round_trips_through_from_pretrained(tmp_path, tiny_clip):
    directory = save_tiny_clip(tmp_path / "clip")
    assert (directory / "model.safetensors").exists()
    loaded = load_clip(str(directory))
    assert loaded.name == str(directory)
    x = torch.randn(1, 3, 96, 128)
    assert torch.allclose(loaded.dense_features(x, "sclip"), tiny_clip.dense_features(x, "sclip"), atol=1e-6)
    texts = ["a photo of a cat.", "sofa"]
    assert torch.allclose(loaded.encode_text(texts), tiny_clip.encode_text(texts), atol=1e-6)


def test_tiny_random_is_announced():
    with pytest.warns(UserWarning, match="RANDOM"):
        load_clip("tiny-random")


def test_padding_to_longest_equals_full_context(tiny_clip):
    texts = ["a photo of a cat.", "a", "There is a large potted plant in the scene."]
    tokens = tiny_clip.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        pooled = tiny_clip.model.text_model(**tokens).pooler_output
        full = torch.nn.functional.normalize(tiny_clip.model.text_projection(pooled), dim=-1)
    assert torch.allclose(tiny_clip.encode_text(texts), full, atol=1e-5)


def test_wrong_kind_of_checkpoint(tmp_path):
    from ovss.models.dino import build_tiny_dino

    build_tiny_dino().save_pretrained(tmp_path / "dino")  # a checkpoint of another kind
    with pytest.raises(ModelLoadError, match="not CLIP"):
        load_clip(str(tmp_path / "dino"))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_clip(str(tmp_path))


def test_unknown_hub_id_offline():
    with pytest.raises(ModelLoadError, match="cannot find CLIP model"):
        load_clip("nobody/no-such-clip-model")


def test_text_embeddings_follow_the_formula_and_cache(tiny_clip, tmp_path, monkeypatch):
    templates = ("a photo of a {}.", "art of the {}.")
    ref = torch.nn.functional.normalize(tiny_clip.encode_text([t.format("cat") for t in templates]), dim=-1)
    ref = torch.nn.functional.normalize(ref.mean(0), dim=0)
    monkeypatch.setenv("OVSS_CACHE_DIR", str(tmp_path))
    out = embed_queries(tiny_clip, ["cat", "dog"], templates)
    assert out.shape == (2, 32) and torch.allclose(out[0], ref, atol=1e-6)
    assert len(list(tmp_path.rglob("*.npy"))) == 2

    calls = []
    real = tiny_clip.encode_text

    def counting(texts):
        calls.append(len(texts))
        return real(texts)

    monkeypatch.setattr(tiny_clip, "encode_text", counting)
    embed_queries(tiny_clip, ["cat", "dog", "bird"], templates)
    assert calls == [2]  # only the new class was encoded


def test_segmenter_accepts_local_directory(tmp_path):
    from ovss import Segmenter

    directory = save_tiny_clip(tmp_path / "clip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a real directory is not announced as random
        seg = Segmenter("sclip", clip=str(directory), device="cpu")
    assert seg.backbone_names["clip"] == str(directory)
