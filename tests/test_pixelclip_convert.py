"""Official PixelCLIP .pth -> transformers CLIP directory, on a fake file in the official key layout."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

import ovss.methods.pixelclip as pc
from ovss.errors import ModelLoadError
from ovss.methods.pixelclip.convert import CONVERSION_FILE, convert_pixelclip
from ovss.models.clip import build_tiny_clip, load_clip

P = "sem_seg_head.predictor.clip_model."


def openai_layout(model) -> dict[str, torch.Tensor]:
    """The OpenAI CLIP names the official model uses, written out from the transformers module tree."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    out = {}
    vis = "vision_model."
    out["visual.conv1.weight"] = sd[vis + "embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd[vis + "embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd[vis + "embeddings.position_embedding.weight"]
    out["visual.ln_pre.weight"], out["visual.ln_pre.bias"] = (
        sd[vis + "pre_layrnorm.weight"],
        sd[vis + "pre_layrnorm.bias"],
    )
    out["visual.ln_post.weight"] = sd[vis + "post_layernorm.weight"]
    out["visual.ln_post.bias"] = sd[vis + "post_layernorm.bias"]
    out["visual.proj"] = sd["visual_projection.weight"].T.contiguous()
    for tower, src, n in (
        ("visual.transformer", vis, model.config.vision_config.num_hidden_layers),
        ("transformer", "text_model.", model.config.text_config.num_hidden_layers),
    ):
        for i in range(n):
            a, b = f"{src}encoder.layers.{i}.", f"{tower}.resblocks.{i}."
            out[b + "attn.in_proj_weight"] = torch.cat([sd[a + f"self_attn.{x}_proj.weight"] for x in "qkv"])
            out[b + "attn.in_proj_bias"] = torch.cat([sd[a + f"self_attn.{x}_proj.bias"] for x in "qkv"])
            for o, h in (
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ):
                out[b + o + ".weight"], out[b + o + ".bias"] = sd[a + h + ".weight"], sd[a + h + ".bias"]
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out["ln_final.weight"], out["ln_final.bias"] = (
        sd["text_model.final_layer_norm.weight"],
        sd["text_model.final_layer_norm.bias"],
    )
    out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    out["logit_scale"] = sd["logit_scale"]
    return out


def fake_official(model) -> dict:
    weights = {P + k: v for k, v in openai_layout(model).items()}
    weights["sem_seg_head.predictor.prompt_tokens"] = torch.randn(64, 4, 64)
    for k, v in openai_layout(model).items():
        if k.startswith("visual."):
            weights["teacher_encoder." + k] = v.clone()
    weights["head.conv0.weight"] = torch.randn(64, 1, 3, 3)
    weights["dino.cls_token"] = torch.randn(1, 1, 384)
    return {"model": weights, "iteration": 9999}


@pytest.fixture(scope="module")
def base():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_clip("tiny-random")


@pytest.fixture(scope="module")
def tuned():
    model, _ = build_tiny_clip(seed=5)  # stands for the fine-tuned student tower
    return model


def test_convert_gives_the_same_dense_output(tmp_path, base, tuned):
    file = tmp_path / "pixelclip_vit_base.pth"
    torch.save(fake_official(tuned), file)
    from ovss.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the real command line: `ovss convert pixelclip FILE --out DIR`
        assert main(["convert", "pixelclip", str(file), "--clip", "tiny-random", "--out", str(tmp_path / "o")]) == 0
        converted = load_clip(str(tmp_path / "o"))
    info = __import__("json").loads((tmp_path / "o" / CONVERSION_FILE).read_text())
    import hashlib

    assert info["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    n_visual = sum(1 for k in fake_official(tuned)["model"] if k.startswith(P + "visual."))
    assert info["key_counts"]["sem_seg_head.predictor.clip_model.visual"] == n_visual
    assert info["key_counts"]["teacher_encoder"] == n_visual and info["key_counts"]["dino"] == 1
    pixels = torch.randn(1, 3, 320, 320)
    dense = pc.model.dense_features
    with torch.no_grad():
        want = dense(tuned.vision_model, tuned.visual_projection, pixels, 16)
        got = dense(converted.model.vision_model, converted.model.visual_projection, pixels, 16)
    assert torch.allclose(got, want, atol=1e-5)
    # the text tower is the base's, not the file's
    text_key = "text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert torch.equal(converted.model.state_dict()[text_key], base.model.state_dict()[text_key])
    # and the folder segments through the method; loading the .pth directly gives the same labels
    from ovss.methods.pixelclip.method import PixelCLIPMethod

    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    settings = pc.PixelCLIPSettings()
    from ovss.vocab import build_vocabulary

    vocab = build_vocabulary("red; green; blue")
    a = PixelCLIPMethod({"clip": converted}, settings, torch.device("cpu"), checkpoint=str(tmp_path / "o"))
    b = PixelCLIPMethod({"clip": base}, settings, torch.device("cpu"), checkpoint=str(file))
    assert np.array_equal(a.segment(image, vocab).labels, b.segment(image, vocab).labels)


class NotACheckpoint:
    pass


def test_convert_refuses_wrong_files(tmp_path, base, tuned):
    def expect(data, match, raw=False):
        path = tmp_path / "x.pth"
        if raw:
            path.write_bytes(data)
        else:
            torch.save(data, path)
        with pytest.raises(ModelLoadError, match=match):
            convert_pixelclip(path, tmp_path / "out", base)
        assert not (tmp_path / "out").exists()

    official = fake_official(tuned)
    convnext = {"model": {P + "visual.trunk.stem.0.weight": torch.zeros(1)}}
    expect(convnext, "ConvNeXt PixelCLIP checkpoint; it needs open_clip")
    expect({"model": {"backbone.weight": torch.zeros(1)}}, "not a PixelCLIP checkpoint")
    expect([1, 2, 3], "not a model checkpoint")
    missing = {"model": {k: v for k, v in official["model"].items() if "resblocks.1.mlp" not in k}}
    expect(missing, "image-tower weights missing")
    expect(pickle.dumps(NotACheckpoint()), "refused for safety|not a loadable", raw=True)
    expect(b"not a pickle at all", "not a loadable PyTorch checkpoint", raw=True)
