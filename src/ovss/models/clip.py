"""CLIP from transformers: text embeddings and dense patch embeddings.

``load_clip(name)`` accepts a Hugging Face hub id (``openai/clip-vit-base-patch16``), a local
directory saved with ``save_pretrained`` (safetensors), or ``tiny-random``: a small random CLIP
built from a config, for tests and smoke runs only.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .dense_clip import dense_clip_features, last_block_values, project_values, use_onednn_linears
from .loading import TINY_RANDOM, load_config, load_failure, quiet_hub, warn_tiny_random

CLIP_MODEL_TYPES = ("clip", "metaclip_2")
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPBackbone:
    """A CLIP model and tokenizer behind ovss's :class:`TextEncoder` and :class:`DenseImageEncoder`."""

    def __init__(self, model, tokenizer, name: str, device: torch.device | str = "cpu") -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        vision = model.config.vision_config
        self.patch_size: int = vision.patch_size
        self.image_size: int = vision.image_size
        self.mean = OPENAI_CLIP_MEAN
        self.std = OPENAI_CLIP_STD
        self.context_length: int = model.config.text_config.max_position_embeddings
        self.is_tiny_random = name == TINY_RANDOM
        self._fingerprint: str | None = None
        self._towers: dict[torch.dtype, tuple[torch.nn.Module, torch.nn.Module]] = {}

    @property
    def vision(self):
        return self.model.vision_model

    def tower(self, dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The image tower and visual projection, or a copy of them cast once to ``dtype``.

        Running a cast copy replaces autocast's cast of every weight at every call (docs/speed.md);
        the text tower and the loaded weights stay as they are. The class and position embeddings
        stay fp32, so the position table is resized from fp32 values as under autocast."""
        if dtype is None or dtype == self.model.visual_projection.weight.dtype:
            return self.vision, self.model.visual_projection
        if dtype not in self._towers:
            vision = use_onednn_linears(copy.deepcopy(self.vision).to(dtype))
            embeddings: Any = vision.embeddings  # transformers' CLIPVisionEmbeddings
            embeddings.position_embedding.float()
            embeddings.class_embedding.data = embeddings.class_embedding.data.float()
            projection = use_onednn_linears(copy.deepcopy(self.model.visual_projection).to(dtype))
            self._towers[dtype] = (vision, projection)
        return self._towers[dtype]

    @property
    def fingerprint(self) -> str:
        """A short hash of the weights that shape text embeddings (the cache key)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.name.encode())
            text = self.model.text_model
            for tensor in (
                self.model.text_projection.weight,
                text.final_layer_norm.weight,
                text.embeddings.token_embedding.weight[::97],
            ):
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,  # to the longest text: exact (causal mask, EOS pooling) and much faster
                max_length=self.context_length,
                truncation=True,
                return_tensors="pt",
            ).to(self.device)
            pooled = self.model.text_model(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).pooler_output
            out.append(torch.nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1))
        return torch.cat(out).cpu()

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Global image embeddings ``(B, D)`` (CLS token, post-LN, projection), L2-normalised."""
        pooled = self.vision(pixel_values=pixels.to(self.device)).pooler_output
        return torch.nn.functional.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def dense_features(
        self, pixels: torch.Tensor, variant: str, bias: torch.Tensor | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``dtype``: run the tower cast to it (see :meth:`tower`); ``None`` = as loaded (autocast applies)."""
        vision, projection = self.tower(dtype)
        return dense_clip_features(
            vision,
            projection,
            pixels.to(self.device),
            variant,
            self.patch_size,
            bias=bias,
        )

    @torch.no_grad()
    def value_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The last block's value vectors of the patch tokens, ``(B, C, h, w)`` (ProxyCLIP, CorrCLIP)."""
        return last_block_values(self.vision, pixels.to(self.device), self.patch_size)

    @torch.no_grad()
    def project_values(self, values: torch.Tensor) -> torch.Tensor:
        """Attended values ``(B, C, h, w)`` -> out_proj, ln_post, projection: ``(B, D, h, w)`` normalised."""
        return project_values(self.vision, self.model.visual_projection, values.to(self.device))


def _tiny_config():
    from transformers import CLIPConfig

    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=514,
        max_position_embeddings=77,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=224, patch_size=16
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def _byte_level_tokenizer():
    """A real ``CLIPTokenizer`` over single byte-level characters (no merges): tiny and offline."""
    from transformers import CLIPTokenizer

    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    chars = [chr(c) for c in codes]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return CLIPTokenizer(vocab=vocab, merges=[])


def build_tiny_clip(seed: int = 0):
    """A small random CLIP (ViT patch 16 at 224, width 64) and its tokenizer."""
    from transformers import CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(_tiny_config())
    return model, _byte_level_tokenizer()


def save_tiny_clip(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random CLIP as a normal ``from_pretrained`` directory (safetensors)."""
    model, tokenizer = build_tiny_clip(seed)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def load_clip(name: str = TINY_RANDOM, device: torch.device | str = "cpu") -> CLIPBackbone:
    """Load CLIP by hub id, local directory or ``tiny-random``."""
    if name == TINY_RANDOM:
        warn_tiny_random("clip")
        model, tokenizer = build_tiny_clip()
        return CLIPBackbone(model, tokenizer, name, device)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    with quiet_hub():
        config = load_config(name, AutoConfig, "CLIP")
    if config.model_type not in CLIP_MODEL_TYPES:
        raise ModelLoadError(
            f"{name!r} is a {config.model_type!r} model, not CLIP; pass a CLIP checkpoint such as "
            "openai/clip-vit-base-patch16"
        )
    try:
        with quiet_hub():
            model = AutoModel.from_pretrained(name)
            tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # any failure of a user's folder is one line (load_failure says what to check)
        raise load_failure(name, "CLIP", e) from None
    return CLIPBackbone(model, tokenizer, name, device)
