"""PixelCLIP parts against plain re-implementations of their formulas (cvlab-kaist/PixelCLIP)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovss.methods.pixelclip as pc
from ovss.errors import InputError
from ovss.methods.pixelclip import model as M
from ovss.methods.pixelclip import train as T
from ovss.models.clip import build_tiny_clip, load_clip


@pytest.fixture(scope="module")
def clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_clip("tiny-random")


def small_settings(**kw):
    base = dict(
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
    base.update(kw)
    return pc.train_settings(base)


def test_position_embedding_resize_is_exact_size_bicubic():
    pos = torch.randn(1 + 14 * 14, 8)
    out = M.resize_position_embedding_to_size(pos, (20, 20))
    plain = F.interpolate(pos[1:].T.reshape(1, 8, 14, 14), size=(20, 20), mode="bicubic", align_corners=False)
    assert torch.equal(out[0], pos[0])
    assert torch.allclose(out[1:], plain.reshape(8, 400).T, atol=1e-6)
    assert M.resize_position_embedding_to_size(pos, (14, 14)) is pos


def test_dense_last_block_per_head(clip):
    layer = clip.model.vision_model.encoder.layers[-1]
    x = torch.randn(2, 5, 64)
    got = M.pixelclip_last_block(x, layer)
    attn = layer.self_attn
    y = layer.layer_norm1(x)
    heads = []
    d = 64 // attn.num_heads
    for h in range(attn.num_heads):  # value of each head, then the out-projection of the concatenation
        w = attn.v_proj.weight[h * d : (h + 1) * d]
        b = attn.v_proj.bias[h * d : (h + 1) * d]
        heads.append(y @ w.T + b)
    v = torch.cat(heads, -1) @ attn.out_proj.weight.T + attn.out_proj.bias
    v = v + x[:, :1]  # the CLS token's block input
    ref = v + layer.mlp(layer.layer_norm2(v))
    assert torch.allclose(got, ref, atol=1e-5)


def test_prompt_insertion_matches_the_text_path(clip):
    prompts = M.PromptLearner(clip.model, clip.tokenizer, num_prompts=3, length=4)
    word = clip.tokenizer("q", add_special_tokens=False)["input_ids"]
    assert len(word) == 1
    table = clip.model.text_model.embeddings.token_embedding.weight
    with torch.no_grad():
        prompts.prompt_tokens.copy_(table[word[0]].expand(3, 4, -1))
        got = F.normalize(prompts(clip.model), dim=-1)
    ref = clip.encode_text(["A photo of a q q q q in the scene"])
    assert torch.allclose(got, ref.expand(3, -1), atol=1e-5)
    ids = clip.tokenizer("A photo of a q q q q in the scene")["input_ids"]
    assert [i for i, t in enumerate(ids) if t == word[0]] == list(range(prompts.slots.start, prompts.slots.stop))


def test_prompt_init_is_seeded_vocabulary_embeddings(clip):
    a = M.PromptLearner(clip.model, clip.tokenizer, 64, 4, seed=0)
    b = M.PromptLearner(clip.model, clip.tokenizer, 64, 4, seed=0)
    assert a.prompt_tokens.shape == (64, 4, 64) and torch.equal(a.prompt_tokens, b.prompt_tokens)
    table = clip.model.text_model.embeddings.token_embedding.weight
    rows = a.prompt_tokens.reshape(-1, 64)
    assert all((table == r).all(1).any() for r in rows[:10])


def plain_sinkhorn(logits: np.ndarray, iterations: int, check) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    q = (z / z.sum(1, keepdims=True)).T  # (K, M)
    k, m = q.shape
    b = q.sum()
    q = q / b
    for _ in range(iterations):
        q = q / q.sum(1, keepdims=True) / k
        q = q / q.sum(0, keepdims=True) / b
        check(q, k, m)
    return (q * b).T


def test_sinkhorn_matches_plain_formula_and_sums():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (37, 8))

    def check(q, k, m):
        assert np.allclose(q.sum(0), 1 / m)  # columns: 1/B after each iteration (B = mask count)

    for n in range(4):
        ref = plain_sinkhorn(logits, n, check)
        got = M.sinkhorn(torch.tensor(logits, dtype=torch.float64), n).numpy()
        assert np.allclose(got, ref, atol=1e-6)
    got = M.sinkhorn(torch.tensor(logits), 50).numpy()
    assert np.allclose(got.sum(0), 37 / 8, rtol=1e-3)  # equipartition: each cluster gets M/K masks
    assert np.allclose(got.sum(1), 1, atol=1e-5)


def test_mask_logits_and_targets_against_loops():
    torch.manual_seed(0)
    feats = torch.randn(2, 6, 4, 4)
    clusters = torch.randn(5, 6)
    masks = [torch.rand(3, 16, 16) > 0.5, torch.zeros(0, 16, 16, dtype=torch.bool)]
    masks[0][2] = False
    masks[0][2, 0, 0] = True  # one pixel: dropped
    logits, kept = M.mask_logits(feats, masks, clusters, 100.0, (8, 8))
    up = F.interpolate(feats, size=(8, 8), mode="bilinear", align_corners=False)
    assert logits.shape == (2, 5) and kept[0].shape == (2, 8, 8) and kept[1].shape[0] == 0
    for j in range(2):
        down = F.interpolate(masks[0][j][None, None].float(), size=(8, 8), mode="nearest")[0, 0]
        mean = (up[0] * down).sum((1, 2)) / down.sum()
        ref = 100.0 * F.cosine_similarity(mean[None], clusters, dim=1)
        assert torch.allclose(logits[j], ref, atol=1e-4)
    targets = M.cluster_targets(kept, torch.tensor([3, 3]), 5)
    assert torch.equal(targets[0, 3], torch.maximum(kept[0][0], kept[0][1]))
    assert targets[0, [0, 1, 2, 4]].sum() == 0 and targets[1].sum() == 0


def test_masked_bce_only_at_covered_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5)
    targets = (torch.rand(2, 3, 5, 5) > 0.7).float()
    got = M.masked_bce(logits, targets)
    x, y = logits.numpy(), targets.numpy()
    valid = y.sum(1) > 0
    terms = []
    for b, i, j in zip(*np.nonzero(valid)):
        for c in range(3):
            p = 1 / (1 + math.exp(-x[b, c, i, j]))
            terms.append(-(y[b, c, i, j] * math.log(p) + (1 - y[b, c, i, j]) * math.log(1 - p)))
    assert abs(got.item() - np.mean(terms)) < 1e-5


def test_conv_head_shapes_and_groups():
    head = M.ConvHead()
    norms = [m for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [(n.num_groups, n.num_channels) for n in norms] == [(4, 64)] * 2 + [(2, 32)] * 2
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.bias is not None for c in convs] == [True, False, False, False, False, True]
    assert head(torch.randn(6, 1, 20, 20)).shape == (6, 1, 80, 80)


def test_trainable_parts_and_lr_groups(clip):
    s = small_settings()
    model = M.PixelCLIPModel(build_tiny_clip()[0], clip.tokenizer, s)
    trainable = {n for n, p in model.clip.named_parameters() if p.requires_grad}
    assert trainable and all(("self_attn" in n or "position_embedding" in n) and "vision" in n for n in trainable)
    assert not any(p.requires_grad for p in model.teacher_vision.parameters())
    groups = T.param_groups(model, s)
    lrs = {(g["name"], g["weight_decay"]) for g in groups}
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx({"clip": 2e-6, "prompts": 2e-3, "head": 2e-4})
    assert ("head", 0.0) in lrs and ("head", 1e-4) in lrs and ("clip", 1e-4) in lrs
    norm_ids = {id(p) for m in model.head.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()}
    for g in groups:
        assert all((id(p) in norm_ids) == (g["weight_decay"] == 0.0) for p in g["params"])
    assert T.lr_factor(0, s) == 1.0 and abs(T.lr_factor(s.max_steps, s) - 0.5) < 1e-12
    # max_steps 3: step 1 is a third of the way along the cosine from 1 to lr_end / lr = 0.5
    assert abs(T.lr_factor(1, s) - (0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi / 3)))) < 1e-12


def test_settings_validation():
    defaults = pc.TrainSettings()
    assert (defaults.batch_size, defaults.max_steps, defaults.lr, defaults.eps, defaults.momentum) == (
        48,
        10000,
        2e-4,
        100.0,
        0.999,
    )
    with pytest.raises(InputError, match="max_steps"):
        pc.train_settings({"max_steps": 0})
    with pytest.raises(InputError, match="no setting 'bogus'"):
        pc.train_settings({"bogus": 1})
    with pytest.raises(InputError, match="batch_size"):
        pc.train_settings({"batch_size": 10, "micro_batch": 4})
    with pytest.raises(InputError, match="momentum must be a float"):
        pc.train_settings({"momentum": "high"})
