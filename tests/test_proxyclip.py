"""ProxyCLIP and the CorrCLIP-style method against plain per-head re-implementations.

The references below are written from the formulas (ProxyCLIP: Lan et al., ECCV 2024; CorrCLIP:
Zhang et al., ICCV 2025) with explicit per-head loops and transformers' own VFM forward sliced by
hand; they share no code with ovss.ops.affinity or ovss.methods.proxyclip. Perturbing a weight or
a threshold must break agreement.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.api import Segmenter
from ovss.errors import InputError
from ovss.masks.pooling import refine_labels
from ovss.methods.corrclip import CorrCLIPMethod, CorrCLIPSettings
from ovss.methods.proxyclip import ProxyCLIPMethod, ProxyCLIPSettings
from ovss.models.clip import CLIPBackbone
from ovss.models.dino import DinoBackbone, load_dino
from ovss.testing import SyntheticCLIP, make_scene, pixel_accuracy
from ovss.testing.standins import SyntheticDINO, SyntheticMaskGenerator
from test_dense_clip import _attention_output, _lin, _ln, _mlp

TOL = 5e-5
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dino():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dino("tiny-random")


def _trunk(model, pixels):
    """Tokens entering CLIP's last block, from the formulas (as tests/test_dense_clip.py)."""
    vis = model.vision_model
    p = model.config.vision_config.patch_size
    gh, gw = pixels.shape[1] // p, pixels.shape[2] // p
    conv = vis.embeddings.patch_embedding.weight
    patches = torch.stack(
        [pixels[:, i * p : (i + 1) * p, j * p : (j + 1) * p].flatten() for i in range(gh) for j in range(gw)]
    )
    pos = vis.embeddings.position_embedding.weight
    side = round((pos.shape[0] - 1) ** 0.5)
    grid = pos[1:].T.reshape(1, -1, side, side)
    if (gh, gw) != (side, side):
        grid = F.interpolate(grid, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic")
    patch_pos = grid[0].reshape(pos.shape[1], -1).T
    x = torch.cat([vis.embeddings.class_embedding[None] + pos[:1], patches @ conv.flatten(1).T + patch_pos])
    x = _ln(x, vis.pre_layrnorm)
    for layer in vis.encoder.layers[:-1]:
        x = x + _attention_output(_ln(x, layer.layer_norm1), layer.self_attn, "vanilla", (gh, gw))
        x = x + _mlp(_ln(x, layer.layer_norm2), layer.mlp)
    return x, (gh, gw)


def _vfm_tokens(dino_model, pixels, clip_stats):
    """transformers' DINOv2 forward on re-normalised pixels, CLS sliced off by hand: (I*J, C), (I, J)."""
    (m0, s0), (m1, s1) = clip_stats, IMAGENET
    col = lambda v: torch.tensor(v).view(3, 1, 1)  # noqa: E731
    x = (pixels * col(s0) + col(m0) - col(m1)) / col(s1)
    p = dino_model.config.patch_size
    i, j = x.shape[1] // p, x.shape[2] // p
    with torch.no_grad():
        hidden = dino_model(pixel_values=x[None, :, : i * p, : j * p]).last_hidden_state[0]
    return hidden[1:], (i, j)


def _masked_softmax(logits, keep):
    out = torch.zeros_like(logits)
    for r in range(logits.shape[0]):
        row = logits[r][keep[r]]
        e = torch.exp(row - row.max())
        out[r][keep[r]] = e / e.sum()
    return out


def _heads_output(model, x, weights, clip_grid, vfm_grid):
    """Per head: v of the patch tokens on CLIP's grid, bilinear to the VFM grid, A @ v_h; then
    out_proj, ln_post, projection, L2 normalisation."""
    vis = model.vision_model
    last = vis.encoder.layers[-1]
    attn = last.self_attn
    v = _lin(_ln(x, last.layer_norm1), attn.v_proj)[1:]
    d = v.shape[1] // attn.num_heads
    outs = []
    for h in range(attn.num_heads):
        vh = v[:, h * d : (h + 1) * d].T.reshape(1, d, *clip_grid)
        vh = F.interpolate(vh, size=vfm_grid, mode="bilinear", align_corners=False)[0].reshape(d, -1).T
        outs.append(weights @ vh)
    y = _lin(torch.cat(outs, dim=1), attn.out_proj)
    y = _lin(_ln(y, vis.post_layernorm), model.visual_projection)
    y = y / y.norm(dim=1, keepdim=True)
    return y.T.reshape(-1, *vfm_grid)


def reference_proxyclip(clip, dino_model, pixels, beta=1.2, gamma=3.0):
    x, clip_grid = _trunk(clip.model, pixels)
    tokens, vfm_grid = _vfm_tokens(dino_model, pixels, (clip.mean, clip.std))
    f = tokens / tokens.norm(dim=1, keepdim=True)
    s = f @ f.T
    logits = gamma * (s - beta * s.mean())
    keep = (logits >= 0) | torch.eye(len(s), dtype=torch.bool)
    return _heads_output(clip.model, x, _masked_softmax(logits, keep), clip_grid, vfm_grid)


def reference_corrclip(clip, dino_model, pixels, regions, tau=4.0, scale=2):
    """``regions``: (H, W) integer region ids of the window (0 = unsegmented)."""
    x, clip_grid = _trunk(clip.model, pixels)
    tokens, vfm_grid = _vfm_tokens(dino_model, pixels, (clip.mean, clip.std))
    grid = (clip_grid[0] * scale, clip_grid[1] * scale)
    feats = F.interpolate(tokens.T.reshape(1, -1, *vfm_grid), size=grid, mode="bilinear", align_corners=False)
    f = feats[0].reshape(feats.shape[1], -1).T
    f = f / f.norm(dim=1, keepdim=True)
    s = f @ f.T
    r = F.interpolate(torch.as_tensor(regions)[None, None].float(), size=grid, mode="nearest").flatten().long()
    ra, rb = r[:, None], r[None, :]
    same = (ra == rb) & (ra > 0)
    open_pair = ((ra == 0) | (rb == 0)) & (s > s.mean())
    keep = same | open_pair | torch.eye(len(r), dtype=torch.bool)
    return _heads_output(clip.model, x, _masked_softmax(tau * s, keep), clip_grid, grid)


def _proxy(clip, dino, **settings) -> ProxyCLIPMethod:
    return ProxyCLIPMethod({"clip": clip, "dino": dino}, ProxyCLIPSettings(**settings), torch.device("cpu"))


@pytest.mark.parametrize("size", [(112, 112), (112, 168), (98, 140)])
def test_proxyclip_matches_per_head_reference(tiny_clip, dino, size):
    x = torch.randn(3, *size, generator=torch.Generator().manual_seed(1))
    ours = _proxy(tiny_clip, dino).embed(x[None])[0]
    ref = reference_proxyclip(tiny_clip, dino.model, x)
    # both grid sides follow the window (non-square windows: the VFM grid is not height x height)
    assert ours.shape == ref.shape == (32, size[0] // 14, size[1] // 14)
    assert (ours - ref).abs().max().item() < TOL


@pytest.mark.parametrize("change", ["beta", "gamma", "v_proj", "dino"])
def test_proxyclip_reference_detects_perturbations(tiny_clip, dino, change):
    x = torch.randn(3, 112, 168, generator=torch.Generator().manual_seed(2))
    ref = reference_proxyclip(tiny_clip, dino.model, x)
    clip, vfm, settings = tiny_clip, dino, {}
    if change in ("beta", "gamma"):
        settings[change] = {"beta": 0.9, "gamma": 2.0}[change]
    elif change == "v_proj":
        model = copy.deepcopy(tiny_clip.model)
        with torch.no_grad():
            model.vision_model.encoder.layers[-1].self_attn.v_proj.weight[0, 0] += 5.0
        clip = CLIPBackbone(model, tiny_clip.tokenizer, "perturbed")
    else:
        model = copy.deepcopy(dino.model)
        with torch.no_grad():
            model.embeddings.patch_embeddings.projection.weight.mul_(-1.0)
        vfm = DinoBackbone(model, "perturbed")
    ours = _proxy(clip, vfm, **settings).embed(x[None])[0]
    assert (ours - ref).abs().max().item() > 100 * TOL


def test_proxyclip_with_windows_and_padding(tiny_clip, dino):
    """Non-square image, non-square final windows, padding to 56: runs and labels every pixel."""
    image = make_scene(seed=3, size=(150, 260)).image
    method = _proxy(tiny_clip, dino, short_side=150, window=(112, 56))
    scores, _ = method.query_scores(image, torch.randn(3, 32))
    assert scores.shape == (3, 150, 260) and torch.isfinite(scores).all()


def test_proxy_attention_rows_never_empty():
    """beta * mean(S) >= 1 would mask whole rows: the row falls back to the patch itself."""
    from ovss.ops.affinity import proxy_attention

    feats = torch.ones(1, 4, 3, 3) + 0.01 * torch.randn(1, 4, 3, 3)
    a = proxy_attention(feats, beta=2.0)
    assert torch.isfinite(a).all() and torch.allclose(a.sum(-1), torch.ones(1, 9))


def _corr(clip, dino, sam=None, **settings) -> CorrCLIPMethod:
    backbones = {"clip": clip, "dino": dino, "sam": sam or SyntheticMaskGenerator()}
    return CorrCLIPMethod(backbones, CorrCLIPSettings(**settings), torch.device("cpu"))


def test_corrclip_matches_per_head_reference(tiny_clip, dino):
    size = (112, 176)  # a multiple of 16 (CLIP) on both sides, and of 14 in height only
    x = torch.randn(3, *size, generator=torch.Generator().manual_seed(4))
    regions = torch.zeros(size, dtype=torch.long)
    regions[:60, :90], regions[50:, 100:] = 1, 2
    method = _corr(tiny_clip, dino)
    method._regions = regions
    ours = method.embed_windows(x[None], [(0, size[0], 0, size[1])])[0]
    ref = reference_corrclip(tiny_clip, dino.model, x, regions)
    assert ours.shape == ref.shape == (32, 14, 22)
    assert (ours - ref).abs().max().item() < TOL
    for change in ("tau", "regions"):
        other = _corr(tiny_clip, dino, tau=2.0) if change == "tau" else _corr(tiny_clip, dino)
        other._regions = regions if change == "tau" else torch.ones_like(regions)
        moved = other.embed_windows(x[None], [(0, size[0], 0, size[1])])[0]
        assert (moved - ref).abs().max().item() > 100 * TOL, change


def test_window_regions_pad_like_the_pixels():
    from ovss.methods.corrclip import window_regions

    regions = torch.arange(20).reshape(4, 5)
    out = window_regions(regions, (0, 4, 1, 5), (6, 6), (6, 6))
    assert out[1:5, 1:5].tolist() == regions[:, 1:5].tolist()
    assert (out[0] == 20).all() and (out[:, 5] == 20).all() and (out[:, 0] == 20).all()


def _world(n=3):
    scenes = [make_scene(seed=s, size=(168, 168), n_regions=4, noise=8) for s in range(n)]
    clip, dino = SyntheticCLIP(blur=1.5), SyntheticDINO(patch_size=8)
    return scenes, clip, dino


def _accuracy(segmenter, scenes) -> float:
    return float(np.mean([pixel_accuracy(segmenter.segment(s.image, s.class_names).labels, s.labels) for s in scenes]))


def _guidance_accuracies(scenes, clip, dino) -> dict[str, float]:
    runs = {
        "sclip": Segmenter("sclip", clip=clip, device="cpu"),
        "proxyclip": Segmenter("proxyclip", clip=clip, dino=dino, device="cpu"),
        "corrclip": Segmenter("corrclip", clip=clip, dino=dino, sam=SyntheticMaskGenerator(), device="cpu"),
    }
    acc = {k: _accuracy(seg, scenes) for k, seg in runs.items()}
    print("pixel accuracy", acc)
    return acc


def test_vfm_guidance_recovers_what_clip_blurs():
    """A CLIP stand-in that blurs objects (sigma 1.5 patches) and a sharp VFM stand-in: ProxyCLIP
    and the CorrCLIP-style pipeline label the scenes measurably better than SCLIP."""
    acc = _guidance_accuracies(*_world(2))
    assert acc["proxyclip"] > acc["sclip"] + 0.015
    assert acc["corrclip"] > acc["proxyclip"]


@pytest.mark.slow
def test_vfm_guidance_gain_comes_from_the_vfm():
    """Six scenes; with a VFM as blurred as CLIP itself, ProxyCLIP's gain goes away."""
    scenes, clip, dino = _world(6)
    acc = _guidance_accuracies(scenes, clip, dino)
    assert acc["proxyclip"] > acc["sclip"] + 0.015 and acc["corrclip"] > acc["proxyclip"] + 0.003
    blurred = _accuracy(Segmenter("proxyclip", clip=clip, dino=_BlurredVFM(dino, clip), device="cpu"), scenes)
    print("proxyclip with a blurred VFM", blurred)
    assert blurred < acc["proxyclip"] - 0.01


class _BlurredVFM:
    """A VFM stand-in whose features are the blurred CLIP stand-in's own values."""

    name = "blurred-vfm"

    def __init__(self, dino, clip):
        self.mean, self.std, self.patch_size, self.clip = dino.mean, dino.std, clip.patch_size, clip

    def patch_features(self, pixels):
        from ovss.methods.proxyclip import renormalize

        return self.clip.value_features(renormalize(pixels, (self.mean, self.std), (self.clip.mean, self.clip.std)))


def test_map_correction_with_oracle_masks_reaches_the_mask_ceiling():
    """With the scene's own regions as masks, map correction scores exactly the ceiling those masks
    allow (each region labelled by its true class wherever the prediction's majority is right)."""
    scenes, clip, _ = _world(3)
    sclip = Segmenter("sclip", clip=clip, device="cpu")
    for scene in scenes:
        pred = sclip.segment(scene.image, scene.class_names).labels
        regions = np.zeros(scene.labels.shape, dtype=np.int64)
        for i, m in enumerate(scene.instance_masks):
            regions[m] = i + 1
        regions[regions == 0] = len(scene.instance_masks) + 1  # the background is a region too
        corrected = refine_labels(pred, regions)
        ceiling = 0.0
        for r in np.unique(regions):  # plain mode per region, counted against the ground truth
            inside = regions == r
            mode = np.bincount(pred[inside]).argmax()
            ceiling += (scene.labels[inside] == mode).sum()
        ceiling /= scene.labels.size
        assert pixel_accuracy(corrected, scene.labels) == pytest.approx(ceiling)
        assert ceiling > 0.999 and pixel_accuracy(corrected, scene.labels) > pixel_accuracy(pred, scene.labels)


def test_corrclip_map_correction_is_applied():
    scenes, clip, dino = _world(1)
    masks = SyntheticMaskGenerator()
    on = Segmenter("corrclip", clip=clip, dino=dino, sam=masks, device="cpu").segment(scenes[0].image, "red; blue")
    regions = masks.generate(scenes[0].image).instance_map()
    for r in np.unique(regions)[1:]:
        assert len(np.unique(on.labels[regions == r])) == 1


@pytest.mark.parametrize("method", ["proxyclip", "corrclip"])
@pytest.mark.parametrize("vfm", ["tiny-random", "tiny-random-dinov3", "tiny-random-dino"])
def test_segmenter_on_a_real_photo_with_tiny_models(evaldata, method, vfm):
    photo = next((evaldata / "vainf_voc_samples" / "samples").glob("*_image.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        settings = {"short_side": 112, "window": (112, 56)}
        seg = Segmenter(method, clip="tiny-random", dino=vfm, sam="tiny-random", device="cpu", **settings)
        result = seg.segment(str(photo), "cat; dog; person", background="words")
    assert result.labels.shape == result.image.shape[:2]
    assert result.labels.min() >= 0 and result.labels.max() < 4


def test_bad_settings_are_one_line_errors(tiny_clip, dino):
    with pytest.raises(InputError, match="gamma"):
        _proxy(tiny_clip, dino, gamma=0.0)
    with pytest.raises(InputError, match="tau"):
        _corr(tiny_clip, dino, tau=-1.0)
    with pytest.raises(InputError, match="ViT CLIP"):
        ProxyCLIPMethod({"clip": object(), "dino": dino}, ProxyCLIPSettings(), torch.device("cpu"))
