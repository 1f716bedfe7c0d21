"""The VFM families behind one backbone interface, and ProxyCLIP's affinity with real DINOv2 weights.

Token slicing is checked against transformers' own ``last_hidden_state`` sliced by hand with each
family's documented layout (DINO v1 and DINOv2: CLS; with registers and DINOv3: CLS + 4
registers); the real-weight check measures how much of a ProxyCLIP affinity row falls inside the
pixel's own object on real VOC images, against a random DINOv2 of the same shape.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ovss.errors import ModelLoadError
from ovss.masks.kmeans import KMeansMaskGenerator
from ovss.models.dino import DinoBackbone, load_dino
from ovss.ops.affinity import proxy_attention

# name -> (model_type, tokens before the patches, patch size), from each family's model card
LAYOUT = {
    "tiny-random": ("dinov2", 1, 14),
    "tiny-random-dinov2-reg": ("dinov2_with_registers", 5, 14),
    "tiny-random-dino": ("vit", 1, 8),
    "tiny-random-dinov3": ("dinov3_vit", 5, 16),
}
from shared_paths import REAL_DINO  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _load(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dino(name)


@pytest.mark.parametrize("name", list(LAYOUT))
@pytest.mark.parametrize("size", [(112, 112), (96, 160)])
def test_patch_tokens_exclude_cls_and_registers(name, size):
    model_type, prefix, patch = LAYOUT[name]
    vfm = _load(name)
    assert (vfm.model_type, vfm.prefix_tokens, vfm.patch_size) == (model_type, prefix, patch)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    feats = vfm.patch_features(x)
    gh, gw = size[0] // patch, size[1] // patch
    assert feats.shape == (1, vfm.dim, gh, gw)
    kwargs = {"interpolate_pos_encoding": True} if model_type == "vit" else {}
    with torch.no_grad():
        hidden = vfm.model(pixel_values=x[..., : gh * patch, : gw * patch], **kwargs).last_hidden_state[0]
    assert hidden.shape[0] == prefix + gh * gw
    by_hand = torch.stack([hidden[prefix + r * gw + c] for r in range(gh) for c in range(gw)])
    assert torch.allclose(feats[0].flatten(1).T, by_hand, atol=1e-6)
    flat = feats[0].flatten(1).T
    for t in range(prefix):  # no CLS or register token among the patches
        assert (flat - hidden[t]).abs().amax(1).min() > 1e-4


def test_dinov3_uses_rope_and_no_position_table():
    vfm = _load("tiny-random-dinov3")
    assert not any("position" in n for n, _ in vfm.model.named_parameters())
    assert vfm.patch_features(torch.randn(1, 3, 48, 208)).shape[-2:] == (3, 13)


def test_sam_encoder_as_vfm_squashes_to_its_input():
    vfm = _load("tiny-random-sam")
    feats = vfm.patch_features(torch.randn(2, 3, 100, 150))
    side = vfm.input_size // vfm.patch_size
    assert feats.shape == (2, vfm.dim, side, side)
    with torch.no_grad():
        ref = vfm.model.vision_encoder(F.interpolate(torch.randn(1, 3, 8, 8), size=(vfm.input_size,) * 2))
    assert ref.last_hidden_state.shape[1:] == feats.shape[1:]


def test_gated_dinov3_offline_is_one_line():
    with pytest.raises(ModelLoadError) as info:
        load_dino("facebook/dinov3-vitb16-pretrain-lvd1689m")
    text = str(info.value)
    assert "\n" not in text and "gated" in text and "licence" in text and "local directory" in text


def test_non_vision_model_is_one_line(tmp_path):
    from ovss.models.clip import save_tiny_clip

    save_tiny_clip(tmp_path / "clip")
    with pytest.raises(ModelLoadError) as info:
        load_dino(str(tmp_path / "clip"))
    assert "\n" not in str(info.value) and "'clip' model, not a vision foundation model" in str(info.value)


@pytest.mark.parametrize("name", [*LAYOUT, "tiny-random-sam"])
def test_every_vfm_drives_kmeans_masks(name):
    image = np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)
    masks = KMeansMaskGenerator(_load(name), k=3, short_side=64).generate(image)
    assert 1 <= len(masks) <= 3 and masks.masks().sum(0).max() == 1  # a partition of the image


def test_saved_variant_round_trips(tmp_path):
    vfm = _load("tiny-random-dinov2-reg")
    vfm.model.save_pretrained(tmp_path / "reg", safe_serialization=True)
    again = load_dino(str(tmp_path / "reg"))
    x = torch.randn(1, 3, 56, 84)
    assert again.prefix_tokens == 5 and torch.allclose(again.patch_features(x), vfm.patch_features(x))


def _in_object_mass(vfm, image: np.ndarray, labels: np.ndarray, size: int = 336, max_area: float = 0.3) -> float:
    """Mean share of a ProxyCLIP affinity row (beta 1.2, gamma 3) inside the row pixel's own object,
    over the patches lying fully inside an object (objects: GT classes 1-20 covering at most
    ``max_area`` of the image, so that a uniform row cannot score high; >= 4 such patches)."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean, std = torch.tensor(vfm.mean).view(1, 3, 1, 1), torch.tensor(vfm.std).view(1, 3, 1, 1)
    feats = vfm.patch_features((x - mean) / std)
    weights = proxy_attention(feats)[0]  # (N, N)
    gh, gw = feats.shape[-2:]
    lab = torch.from_numpy(labels.astype(np.int64))
    shares = []
    for cls in np.unique(labels):
        if cls in (0, 255):
            continue
        inside = F.adaptive_avg_pool2d((lab == int(cls)).float()[None, None], (gh, gw)).flatten()
        rows = torch.nonzero(inside == 1.0).flatten()
        if len(rows) < 4 or float((inside > 0.5).float().mean()) > max_area:
            continue
        shares.append(float((weights[rows] * (inside > 0.5).float()[None]).sum(1).mean()))
    return float(np.mean(shares)) if shares else float("nan")


@pytest.mark.slow
def test_real_dinov2_affinity_concentrates_in_the_object(evaldata):
    if not REAL_DINO.is_dir():
        pytest.skip(f"real DINOv2 weights not found at {REAL_DINO}")
    from transformers import Dinov2Model

    real = load_dino(str(REAL_DINO))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random = DinoBackbone(Dinov2Model(real.model.config), "random-dinov2-s")
    root = evaldata / "vainf_voc_samples"
    real_shares, random_shares = [], []
    for img_path in sorted((root / "samples").glob("*_image.png")):
        n = img_path.name.split("_")[0]
        image = np.asarray(Image.open(img_path).convert("RGB"))
        labels = np.asarray(Image.open(root / "derived" / "SegmentationClass" / f"{n}_target.png"))
        real_shares.append(_in_object_mass(real, image, labels))
        random_shares.append(_in_object_mass(random, image, labels))
    real_shares, random_shares = np.array(real_shares), np.array(random_shares)
    scored = ~np.isnan(real_shares)  # images with at least one object small enough
    real_mean, random_mean = float(real_shares[scored].mean()), float(random_shares[scored].mean())
    print(
        f"in-object affinity mass over {int(scored.sum())} VOC images: real {real_mean:.3f}, random {random_mean:.3f}"
    )
    # measured: real 0.821, random 0.622 (12 images): the mass leaking out of the object halves
    assert real_mean > random_mean + 0.1 and (1 - real_mean) < 0.6 * (1 - random_mean)


@pytest.mark.parametrize("name", ["tiny-random-dinov3", "tiny-random-dinov2-reg"])
def test_fmbseg_trains_and_segments_on_other_vfms(tmp_path, name):
    from ovss.api import Segmenter
    from ovss.io import write_json
    from ovss.methods.fmbseg.train import VOCAB_FILE, TrainSettings, train_fmbseg
    from ovss.testing import SyntheticCLIP, make_dataset
    from ovss.vocab import build_vocabulary

    scenes = make_dataset(2, seed=0, prefix="s", size=(112, 112))
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for s in scenes:
        Image.fromarray(s.image).save(tmp_path / "images" / f"{s.name}.png")
        Image.fromarray(s.labels.astype(np.uint8)).save(tmp_path / "labels" / f"{s.name}.png")
    write_json(tmp_path / "labels" / VOCAB_FILE, build_vocabulary("; ".join(scenes[0].class_names)).to_dict())
    vfm, clip = _load(name), SyntheticCLIP()
    settings = TrainSettings(size=112, batch_images=2, patches_per_image=16, epochs=1, templates="simple")
    train_fmbseg(
        tmp_path / "images",
        tmp_path / "labels",
        tmp_path / "run",
        settings,
        dino=vfm,
        clip=clip,
        device="cpu",
        progress=False,
    )
    seg = Segmenter(
        "fmbseg",
        clip=clip,
        dino=vfm,
        checkpoint=str(tmp_path / "run"),  # the run folder is the checkpoint
        device="cpu",
        short_side=112,
        window=None,
        templates="simple",
    )
    labels = seg.segment(scenes[0].image, scenes[0].class_names).labels
    assert labels.shape == (112, 112)
