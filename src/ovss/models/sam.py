"""SAM and SAM2 backbones from transformers.

``load_sam(name)`` accepts a hub id (``facebook/sam-vit-base``, ``facebook/sam2.1-hiera-tiny``),
a local ``save_pretrained`` directory, an original Meta SAM checkpoint (``sam_vit_b_01ec64.pth``,
read with ``torch.load(weights_only=True)``), or ``tiny-random`` / ``tiny-random-sam2``: small
random models for tests and smoke runs. The automatic mask generator is in :mod:`ovss.masks.sam`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .loading import TINY_RANDOM, load_config, load_failure, quiet_hub, warn_tiny_random

TINY_RANDOM_SAM2 = "tiny-random-sam2"
SAM_MEAN = (123.675, 116.28, 103.53)  # 0-255 scale, Meta's SAM
SAM_STD = (58.395, 57.12, 57.375)
SAM2_MEAN = (0.485, 0.456, 0.406)  # 0-1 scale, Meta's SAM2
SAM2_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------- loading


class SamBackbone:
    """A transformers ``SamModel`` or ``Sam2Model`` with the preprocessing its family expects."""

    def __init__(self, model, name: str, device: torch.device | str = "cpu") -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.name = name
        self.device = torch.device(device)
        self.kind = "sam2" if model.config.model_type == "sam2" else "sam"
        prompt = model.config.prompt_encoder_config
        self.input_size: int = int(prompt.image_size)
        self.patch_size: int = int(prompt.patch_size)
        self.mask_threshold = 0.0
        self.is_tiny_random = name in (TINY_RANDOM, TINY_RANDOM_SAM2)

    def __repr__(self) -> str:
        return f"SamBackbone({self.name!r}, kind={self.kind}, input_size={self.input_size})"


def _tiny_sam_config():
    from transformers import SamConfig

    vision = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=64,
        image_size=256,
        patch_size=16,
        window_size=4,
        global_attn_indexes=[1],
        output_channels=32,
        num_pos_feats=16,
    )
    prompt = dict(hidden_size=32, image_size=256, patch_size=16)
    decoder = dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32, layer_norm_eps=1e-5)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def _tiny_sam2_config():
    from transformers import Sam2Config

    backbone = dict(
        model_type="sam2_hiera_det_model",
        hidden_size=16,
        blocks_per_stage=[1, 2, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[8, 4, 4, 4],
        global_attention_blocks=[4],
        image_size=[256, 256],
        window_positional_embedding_background_size=[4, 4],
    )
    vision = dict(
        backbone_config=backbone,
        backbone_channel_list=[128, 64, 32, 16],
        fpn_hidden_size=32,
        backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]],
    )
    prompt = dict(hidden_size=32, image_size=256, patch_size=16)
    decoder = dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def randomize_sam(model, seed: int = 0):
    """Give a freshly built SAM/SAM2 usable random weights, deterministically.

    transformers initialises SAM's vision tower with std 1e-10 (its weights are meant to be
    loaded), which gives denormal activations that make CPU arithmetic hundreds of times slower,
    tiny mask logits and IoU scores near 0. Here every weight comes from one seeded generator:
    linear and convolution weights N(0, 1/fan_in) (activations stay of order one, so logits
    and IoU predictions have realistic ranges), biases N(0, 0.1^2), embeddings and the Fourier
    matrix N(0, 1) (Meta's choice), position tables N(0, 0.02^2), norms at identity.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            owner, leaf = name.rsplit(".", 1) if "." in name else ("", name)
            module = model.get_submodule(owner) if owner else model
            if isinstance(module, torch.nn.LayerNorm) or "norm" in type(module).__name__.lower():
                p.fill_(1.0 if leaf == "weight" else 0.0)
            elif isinstance(module, torch.nn.Embedding) or leaf == "positional_embedding":
                p.copy_(torch.randn(p.shape, generator=gen))
            elif leaf == "bias":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif leaf == "weight" and p.dim() >= 2:
                fan_in = p.shape[0] if isinstance(module, torch.nn.ConvTranspose2d) else p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        shared = getattr(model, "shared_image_embedding", None)
        prompt = getattr(getattr(model, "prompt_encoder", None), "shared_embedding", None)
        if shared is not None and prompt is not None and prompt is not shared:
            prompt.positional_embedding.copy_(shared.positional_embedding)  # tied in SAM
    return model


def build_tiny_sam(seed: int = 0, kind: str = "sam"):
    """A small random SAM (ViT width 32 at 256 pixels) or SAM2 (Hiera width 16), for tests."""
    from transformers import Sam2Model, SamModel

    config = _tiny_sam_config() if kind == "sam" else _tiny_sam2_config()
    cls = SamModel if kind == "sam" else Sam2Model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return randomize_sam(model, seed)


def save_tiny_sam(directory: str | Path, seed: int = 0, kind: str = "sam") -> Path:
    build_tiny_sam(seed, kind).save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def load_sam(name: str = TINY_RANDOM, device: torch.device | str = "cpu") -> SamBackbone:
    """Load SAM/SAM2 by hub id, local directory, Meta ``.pth`` checkpoint or ``tiny-random[-sam2]``."""
    if name in (TINY_RANDOM, TINY_RANDOM_SAM2):
        warn_tiny_random("sam", name)
        return SamBackbone(build_tiny_sam(kind="sam" if name == TINY_RANDOM else "sam2"), name, device)
    path = Path(name)
    if path.suffix in (".pth", ".pt") and path.is_file():
        return SamBackbone(_load_meta_checkpoint(path), name, device)
    from transformers import AutoConfig, Sam2Model, SamModel

    with quiet_hub():
        config = load_config(name, AutoConfig, "SAM")
    if config.model_type not in ("sam", "sam2"):
        raise ModelLoadError(
            f"{name!r} is a {config.model_type!r} model, not SAM; pass a SAM or SAM2 checkpoint such as "
            "facebook/sam-vit-base"
        )
    cls = SamModel if config.model_type == "sam" else Sam2Model
    try:
        with quiet_hub():
            model = cls.from_pretrained(name)
    except Exception as e:  # any failure of a user's folder is one line (load_failure says what to check)
        raise load_failure(name, "SAM", e) from None
    return SamBackbone(model, name, device)


_META_SIZES = {768: (12, 12, [2, 5, 8, 11]), 1024: (24, 16, [5, 11, 17, 23]), 1280: (32, 16, [7, 15, 23, 31])}


def _load_meta_checkpoint(path: Path):
    from transformers import SamConfig, SamModel

    from .sam_convert import meta_to_hf_state_dict

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0][:120]})") from None
    key = "image_encoder.patch_embed.proj.weight"
    if not isinstance(state, dict) or key not in state:
        raise ModelLoadError(f"{path}: not a Meta SAM checkpoint (no {key})")
    width = int(state[key].shape[0])
    if width not in _META_SIZES:
        raise ModelLoadError(f"{path}: unknown SAM image-encoder width {width}")
    depth, heads, global_idx = _META_SIZES[width]
    config = SamConfig(
        vision_config=dict(
            hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, global_attn_indexes=global_idx
        ),
        mask_decoder_config=dict(layer_norm_eps=1e-5),  # Meta's decoder uses nn.LayerNorm's default
    )
    model = SamModel(config)
    try:
        model.load_state_dict(meta_to_hf_state_dict(state), strict=True)
    except (KeyError, RuntimeError) as e:
        raise ModelLoadError(f"{path}: weights do not fit SAM ViT ({str(e).splitlines()[0][:160]})") from None
    return model
