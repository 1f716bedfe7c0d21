"""S-Seg and S-Seg+ (Lai, "Exploring Simple Open-Vocabulary Semantic Segmentation", CVPR 2025,
arXiv 2401.12217): a MaskFormer trained from image-caption pairs and DINO k-means pseudo-masks,
with no CLIP and no human masks. A reconstruction: the official repository (zlai0/S-Seg) has no
code, so every unknown is a setting, listed in docs/sseg.md.

Inference (``sseg``): class-name text embeddings, per-mask class probabilities (softmax of the
scaled cosine with each mask embedding), MaskFormer semantic inference, background by a threshold
on the best class probability (GroupViT's rule), evaluated under the ``groupvit`` protocol family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...device import autocast, check_precision
from ...errors import InputError
from ...ops.resize import keep_ratio_size, normalize, resize_image, row_bands, upsample_rows
from ...ops.windows import slide
from ...protocols import register_family
from ...templates import get_templates
from ...vocab import Vocabulary
from ..base import Command, Method, MethodOutput, MethodSpec, register_method
from ..settings import family_defaults
from .model import partition

# GroupViT / TCL family (mmseg 0.x): short side 448, windows 448 / 224, background where the best
# class score is under bg_thresh; values of the GroupViT code (NVlabs/GroupViT configs; the paper
# states 0.9 / 0.5, see GroupViT issue #56), "simple" template.
GROUPVIT_FAMILY: dict[str, Any] = {
    "source": "GroupViT evaluation configs (NVlabs/GroupViT segmentation/configs), TCL; see docs/sseg.md",
    "short_side": {"default": 448},
    "window": {"default": (448, 224)},
    "prob_thd": {"default": 0.0, "voc21": 0.95, "pc60": 0.35, "coco_object": 0.95},
    "background": {"default": "none", "voc21": "threshold", "pc60": "threshold", "coco_object": "threshold"},
    "templates": {"default": "simple"},
    "metric": "union",
    "notes": {"prob_thd": "GroupViT code values; its paper states 0.9 (VOC) and 0.5 (Context)"},
}


MASK_ASSIGNMENTS = ("auto", "soft", "hard")


@dataclass(frozen=True)
class SSegSettings:
    # short_side, window, templates and prob_thd come from the groupvit family's default column
    # (family_defaults at registration), so the family table is their one home
    short_side: int = 0
    long_max: int = 2048
    window: tuple[int, int] | None = None  # (crop, stride); None = whole image
    templates: str | tuple[str, ...] = ""  # a template set's name, or templates each containing {}
    logit_scale: float | None = None  # softmax scale over classes; None = the checkpoint's learned 1 / temperature
    prob_thd: float = 0.0  # background="threshold": class 0 where the best class probability is below this
    precision: str = "fp32"
    window_batch: int = 4
    # how masks become a semantic map (unknown): "soft" = MaskFormer semantic inference, every query's
    # class probabilities weighted by its mask sigmoid; "hard" = each pixel takes the class probabilities
    # of the query whose mask logit is highest there. S-Seg has no "no object" class to silence the
    # queries that matched no pseudo-mask, and their soft masks cover everything, so "soft" mixes them
    # into every pixel (docs/sseg.md). "auto": "hard" for a run trained with mask_features=local (its
    # masks carry region features), else "soft"
    mask_assignment: str = "auto"

    def validate(self) -> None:
        check_precision(self.precision)
        if self.mask_assignment not in MASK_ASSIGNMENTS:
            raise InputError(
                f"setting mask_assignment={self.mask_assignment!r} must be one of {', '.join(MASK_ASSIGNMENTS)}"
            )
        get_templates(self.templates)
        if self.short_side < 1 or self.long_max < 1 or self.window_batch < 1:
            raise InputError("short_side, long_max and window_batch must be positive")
        if self.window is not None and (len(self.window) != 2 or min(self.window) < 1):
            raise InputError(f"window {self.window} must be two positive numbers (crop, stride) or None")
        if not 0.0 <= self.prob_thd <= 1.0:
            raise InputError(f"prob_thd {self.prob_thd} must be between 0 and 1")
        if self.logit_scale is not None and self.logit_scale <= 0:
            raise InputError(f"logit_scale {self.logit_scale} must be positive or None")


def load_sseg_model(checkpoint: Any, device: torch.device, method: str = "sseg"):
    """Rebuild the trained network of an ``sseg`` checkpoint (a folder, a file in it, a hub id or a Checkpoint)."""
    from ...checkpoints import Checkpoint, load_checkpoint
    from ...errors import ModelLoadError
    from .model import ModelConfig, SSegModel

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, method=method)
    config = ModelConfig(**ckpt.extra["model"])
    clip = None
    if config.text.startswith("clip:"):
        from ...models.registry import load_backbone

        clip = load_backbone("clip", config.text.split(":", 1)[1], device)
    model = SSegModel(config, clip)
    try:
        model.load_state_dict(ckpt.tensors())
    except RuntimeError as e:
        raise ModelLoadError(
            f"{ckpt.path}: weights do not fit the S-Seg model ({str(e).splitlines()[0][:100]})"
        ) from None
    return model.to(device).eval(), ckpt


class SSegMethod(Method):
    needs = ()

    def __init__(self, backbones, settings: SSegSettings, device: torch.device, checkpoint: Any = None) -> None:
        if checkpoint is None:
            raise InputError("sseg needs a trained run: pass checkpoint=RUN (--checkpoint RUN from `ovss train`)")
        settings.validate()
        super().__init__(backbones, settings, device)
        self.model, self.ckpt = load_sseg_model(checkpoint, device)
        self.mean = tuple(self.ckpt.extra.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(self.ckpt.extra.get("std", (0.229, 0.224, 0.225)))
        self.templates = get_templates(settings.templates)
        self.mask_assignment = settings.mask_assignment
        if self.mask_assignment == "auto":
            self.mask_assignment = "hard" if self.model.config.mask_features == "local" else "soft"

    @torch.no_grad()
    def query_embeddings(self, queries: tuple[str, ...]) -> torch.Tensor:
        """One embedding per query: templates filled, encoded, averaged, normalised."""
        rows = []
        for query in queries:
            emb = self.model.encode_text([t.format(query) for t in self.templates]).float()
            rows.append(F.normalize(emb.mean(0), dim=0))
        return torch.stack(rows)

    @torch.no_grad()
    def class_scores(
        self, pixels: torch.Tensor, text: torch.Tensor, query_class: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
        """``(B, 3, h, w)`` windows -> ``(B, C, h/4, w/4)`` class probabilities: "soft",
        sum_q p_q(c) sigmoid(m_q) / sum_q sigmoid(m_q) (MaskFormer semantic inference, normalised);
        "hard", p_q*(c) with q* the query of the highest mask logit at the pixel."""
        masks, features = self.model.forward_image(pixels)
        emb = self.model.mask_embeddings(features).float()  # (B, N, D)
        scale = self.settings.logit_scale or float(self.model.scale())
        query_probs = (scale * emb @ text.T).softmax(-1)  # (B, N, Q)
        per_class = torch.zeros(*query_probs.shape[:2], num_classes, device=query_probs.device)
        per_class = per_class.scatter_reduce(
            2, query_class.view(1, 1, -1).expand_as(query_probs), query_probs, "amax", include_self=True
        )
        if self.mask_assignment == "hard":
            return torch.einsum("bnc,bnhw->bchw", per_class, partition(masks).to(per_class.dtype))
        weights = masks.float().sigmoid()
        scores = torch.einsum("bnc,bnhw->bchw", per_class, weights)
        return scores / weights.sum(1, keepdim=True).clamp(min=1e-6)

    @torch.no_grad()
    def segment(self, image: np.ndarray, vocab: Vocabulary, return_probs: bool = False) -> MethodOutput:
        s = self.settings
        if not vocab.queries:
            raise InputError('no class names given; pass them like classes="cat; sofa, couch; plant"')
        text = self.query_embeddings(vocab.queries).to(self.device)
        query_class = torch.tensor(vocab.query_class, device=self.device)
        size = image.shape[:2]
        h, w = keep_ratio_size(*size, s.short_side, s.long_max)  # type: ignore[call-arg]
        h, w = -(-h // 32) * 32, -(-w // 32) * 32  # the Swin stride
        pixels = normalize(resize_image(image, (h, w)), self.mean, self.std)
        window = None if s.window is None else (min(s.window[0], h, w) // 32 * 32 or 32, s.window[1])

        def score_fn(batch: torch.Tensor) -> torch.Tensor:
            return self.class_scores(batch.to(self.device), text, query_class, vocab.num_classes).cpu()

        with autocast(self.device, s.precision):
            scores = slide(pixels, score_fn, window, s.window_batch)
        labels = torch.empty(size, dtype=torch.int32)
        probs = torch.empty(vocab.num_classes, *size) if return_probs else None
        for rows in row_bands(size[0], size[1], vocab.num_classes):
            band = upsample_rows(scores, size, rows)
            best, arg = band.max(0)
            if vocab.background == "threshold":
                arg = torch.where(best < s.prob_thd, torch.zeros_like(arg), arg)
            labels[rows] = arg.int()
            if probs is not None:
                probs[:, rows] = band
        return MethodOutput(labels.numpy(), None if probs is None else probs.numpy())


def _command(kind: str) -> Command:
    from . import cli

    if kind == "plus":
        return Command(
            "label the target images with S-Seg, then train a UperNet on them (S-Seg+)",
            cli.add_plus_arguments,
            cli.run_plus,
        )
    if kind == "pseudo":
        return Command(
            "precompute S-Seg's k-means pseudo-masks of a caption dataset into a cache",
            cli.add_pseudo_arguments,
            cli.run_pseudo,
        )
    return Command(
        "train S-Seg from image-caption pairs (captions file or webdataset shards)",
        cli.add_train_arguments,
        cli.run_train,
    )


def _make_plus(backbones, settings, device, checkpoint=None):
    from .plus import SSegPlusMethod

    return SSegPlusMethod(backbones, settings, device, checkpoint=checkpoint)


def _plus_settings():
    from .plus import PlusInferenceSettings

    return PlusInferenceSettings()


register_family("groupvit", GROUPVIT_FAMILY)
# S-Seg+ is a supervised UperNet on S-Seg's labels: whole-image inference at its own short side, the
# GroupViT family's background handling and metric (its classes are fixed when it is trained).
register_family(
    "sseg_plus",
    {
        "source": "S-Seg+ (Lai, CVPR 2025): a segmentation network self-trained on S-Seg labels; docs/sseg.md",
        "background": GROUPVIT_FAMILY["background"],
        "metric": "union",
    },
)
register_method(
    MethodSpec(
        "sseg",
        "S-Seg: MaskFormer + text transformer trained from captions and DINO k-means pseudo-masks (reconstruction)",
        SSegMethod,
        family_defaults(SSegSettings(), "groupvit"),
        (),
        "Lai, CVPR 2025, arXiv 2401.12217",
        family="groupvit",
        tier="B",
        checkpoint="required",
        commands={"train": _command("train"), "pseudo-label": _command("pseudo")},
    )
)
register_method(
    MethodSpec(
        "sseg-plus",
        "S-Seg+: a UperNet self-trained on S-Seg's labels of the target images (fixed class list)",
        _make_plus,
        _plus_settings(),
        (),
        "Lai, CVPR 2025, arXiv 2401.12217 (S-Seg+)",
        family="sseg_plus",
        tier="B",
        checkpoint="required",
        commands={"train": _command("plus")},
    )
)
