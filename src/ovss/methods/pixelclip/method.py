"""PixelCLIP inference: the fine-tuned CLIP image tower, plain dense-CLIP cosine with the class texts.

``pipeline="official"`` reproduces the official test path (cvlab-kaist/PixelCLIP ``PixelCLIP.forward``
in eval mode); ``pipeline="dense"`` runs the same tower through ovss's sliding-window pipeline,
which adds keep-ratio windows and background handling.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...checkpoints import Checkpoint, load_checkpoint
from ...errors import InputError, ModelLoadError
from ...ops.resize import normalize, resize_image, row_bands, upsample_rows
from ...ops.text import embed_queries
from ...vocab import Vocabulary
from ..base import MethodOutput
from ..dense import DenseMatchingMethod
from .convert import CONVERSION_FILE, is_converted_folder, vision_state_from_pth
from .data import resized_shape
from .model import dense_features
from .settings import PixelCLIPSettings

METHOD = "pixelclip"


def class_embeddings(text_encoder, vocab: Vocabulary, templates: tuple[str, ...]) -> torch.Tensor:
    """``(C, D)``: per template the normalised mean of the class's synonym embeddings; then the
    normalised mean over templates (official ``class_embeddings`` + the test-time template mean)."""
    rows = []
    for _index, words in enumerate(vocab.synonyms):
        if not words:
            raise InputError("the official PixelCLIP pipeline has no threshold background; use --set pipeline=dense")
        per_template = torch.stack(
            [F.normalize(embed_queries(text_encoder, list(words), (t,)).mean(0), dim=-1) for t in templates]
        )
        rows.append(F.normalize(per_template.mean(0), dim=-1))
    return torch.stack(rows)


class _FineTunedCLIP:
    """The base ``CLIPBackbone``'s text side with a fine-tuned image tower (the text tower is stock)."""

    def __init__(self, base, model) -> None:
        self.base, self.model = base, model
        self.patch_size, self.mean, self.std = base.patch_size, base.mean, base.std
        self.fingerprint, self.name = base.fingerprint, base.name

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.base.encode_text(texts)


def _resolve(checkpoint: Any) -> tuple[str, Any]:
    """("run", Checkpoint) | ("converted", folder) | ("pth", file)."""
    if checkpoint is None:
        raise InputError("pixelclip needs a checkpoint: a training run folder, a converted official folder or a .pth")
    if isinstance(checkpoint, Checkpoint):
        kind = checkpoint.extra.get(SOURCE_KIND)
        return (kind, checkpoint.path) if kind in ("converted", "pth") else ("run", checkpoint)
    path = Path(os.fspath(checkpoint))
    if path.is_file() and path.suffix in (".pth", ".pt", ".pkl"):
        return "pth", path
    if is_converted_folder(path):
        return "converted", path
    return "run", load_checkpoint(checkpoint, method=METHOD)


class PixelCLIPMethod(DenseMatchingMethod):
    needs = ("clip",)

    def __init__(self, backbones, settings: PixelCLIPSettings, device: torch.device, checkpoint: Any = None) -> None:
        super().__init__(backbones, settings, device)
        base = backbones["clip"]
        kind, source = _resolve(checkpoint)
        model = copy.deepcopy(base.model)
        if kind == "run":
            expected = source.extra.get("base_clip_fingerprint")
            if expected and expected != base.fingerprint:
                raise InputError(
                    f"{source.path} was trained from CLIP {source.backbones.get('clip')!r}, not {base.name!r}; "
                    f"pass --clip {source.backbones.get('clip')}"
                )
            tensors = {k: v for k, v in source.tensors().items() if k.startswith("vision_model.")}
            self._load(model, tensors, source.path)
        elif kind == "converted":
            from ...models.clip import load_clip

            if Path(base.name).resolve() != source.resolve():
                model = load_clip(str(source), device).model
        else:
            self._load(model, vision_state_from_pth(source, model.config), source)
        self.model = model.to(device).eval()
        self.text_encoder = _FineTunedCLIP(base, self.model)
        self.mean, self.std, self.patch_size = base.mean, base.std, base.patch_size

    @staticmethod
    def _load(model, tensors: dict[str, torch.Tensor], source) -> None:
        own = model.state_dict()
        for key, value in tensors.items():
            if key not in own or own[key].shape != value.shape:
                raise ModelLoadError(
                    f"{source}: weight {key} {tuple(value.shape)} does not fit this CLIP; pass its base --clip"
                )
        model.load_state_dict(tensors, strict=False)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = dense_features(self.model.vision_model, self.model.visual_projection, pixels, self.patch_size)
        return F.normalize(feats.float(), dim=1)

    def text_embeddings(self, vocab: Vocabulary) -> torch.Tensor:
        if self.settings.pipeline == "official":
            return class_embeddings(self.text_encoder, vocab, self.templates)
        return super().text_embeddings(vocab)

    @torch.no_grad()
    def official_scores(self, image: np.ndarray, text: torch.Tensor) -> torch.Tensor:
        """Cosine scores ``(C, F, F)`` at the feature size (64x64) for one image."""
        s = self.settings
        h, w = image.shape[:2]
        pixels = normalize(
            resize_image(image, resized_shape(h, w, s.test_short_side, s.test_max_size)), self.mean, self.std
        )
        squashed = F.interpolate(
            pixels[None], size=(s.clip_resolution, s.clip_resolution), mode="bilinear", align_corners=False
        )
        from ...device import autocast

        with autocast(self.device, s.precision):
            feats = dense_features(
                self.model.vision_model, self.model.visual_projection, squashed.to(self.device), self.patch_size
            ).float()
        feats = F.interpolate(feats, size=(s.feature_size, s.feature_size), mode="bilinear", align_corners=False)
        feats = F.normalize(feats, dim=1)
        return torch.einsum("dhw,cd->chw", feats[0], text.to(self.device).float()).cpu()

    @torch.no_grad()
    def segment(self, image: np.ndarray, vocab: Vocabulary, return_probs: bool = False) -> MethodOutput:
        if self.settings.pipeline != "official":
            return super().segment(image, vocab, return_probs)
        scores = self.official_scores(image, self.text_embeddings(vocab))
        size = image.shape[:2]
        labels = torch.empty(size, dtype=torch.int32)
        probs = torch.empty((scores.shape[0], *size)) if return_probs else None
        for rows in row_bands(size[0], size[1], scores.shape[0]):
            band = upsample_rows(scores, size, rows)
            labels[rows] = band.argmax(0).int()
            if probs is not None:
                probs[:, rows] = (band * self.settings.logit_scale).softmax(0)
        return MethodOutput(labels.numpy(), None if probs is None else probs.numpy())


SOURCE_KIND = "pixelclip_source"  # marks a Checkpoint made from a converted folder or an official .pth


def read_checkpoint(checkpoint: str) -> Checkpoint:
    """A training run folder (or a file in it, or a hub id), a converted official folder (its CLIP is
    the folder itself), or an official ``.pth`` (read safely when the method is built)."""
    kind, source = _resolve(checkpoint)
    if kind == "run":
        return source
    backbones = {"clip": str(source)} if kind == "converted" else {}
    return Checkpoint(Path(source), METHOD, {}, backbones, {SOURCE_KIND: kind})


__all__ = ["CONVERSION_FILE", "PixelCLIPMethod", "class_embeddings", "read_checkpoint"]
