"""S-Seg+ (self-training): label the target dataset's training images with S-Seg, then train a
UperNet (Xiao et al., ECCV 2018; transformers ``UperNetForSemanticSegmentation``) fully supervised
on those labels. The paper's UperNet runs over an MAE-pretrained ViT; transformers has no ViT
backbone for UperNet, so the default is ConvNeXt-T built from a config (random init) or any
transformers backbone id (documented in docs/sseg.md). ``rounds`` > 1 relabels the images with the
previous round's UperNet and trains again.

The run folder is a checkpoint folder (method ``sseg-plus``) that records the fixed class list;
``Segmenter("sseg-plus", checkpoint=RUN)`` segments with those classes.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError, ModelLoadError
from ...io import load_image, save_image
from ...vocab import Vocabulary, build_vocabulary
from ..base import Method, MethodOutput
from .train import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LOG,
    _load_state,
    _rng_state,
    _save_state,
    _set_rng_state,
    _truncate_log,
    write_run_checkpoint,
)

METHOD = "sseg-plus"
IGNORE = 255
STAGES = ["stage1", "stage2", "stage3", "stage4"]
# ConvNeXt-T (Liu et al., CVPR 2022): depths 3-3-9-3, widths 96-768; a tiny one for tests.
PLUS_BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {
    "convnext-tiny": ("convnext", {"depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768]}),
    "swin-small": ("swin", {"embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24], "window_size": 7}),
    "convnext-test": ("convnext", {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64]}),
}


@dataclass(frozen=True)
class PlusSettings:
    backbone: str = "convnext-tiny"  # paper: UperNet + MAE ViT (not a transformers UperNet backbone); see docs
    hidden: int = 512  # UperNet channels (mmseg's UperNet: 512)
    size: int = 512  # training crop side (mmseg's 512 x 512 crops)
    batch_size: int = 16  # mmseg: 16 images per iteration
    steps: int = 160_000  # mmseg 160k schedule
    max_steps: int | None = None  # stop earlier (short runs)
    lr: float = 6e-5  # mmseg UperNet-Swin AdamW
    weight_decay: float = 0.01
    power: float = 1.0  # poly learning-rate decay
    flip: bool = True
    rounds: int = 1  # self-training rounds (round r > 1 is labelled by round r - 1's UperNet)
    short_side: int = 512  # test-time keep-ratio resize
    seed: int = 0
    save_every: int = 500
    precision: str = "fp32"  # fp32 | bf16

    def validate(self) -> None:
        for name in ("hidden", "size", "batch_size", "steps", "rounds", "short_side", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"setting {name}={value!r} must be a positive integer")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise InputError(f"setting max_steps={self.max_steps!r} must be a positive integer or None")
        if self.lr <= 0 or self.weight_decay < 0 or self.power < 0:
            raise InputError("settings lr must be > 0, weight_decay and power >= 0")
        if self.size % 32:
            raise InputError(f"setting size={self.size} must be a multiple of 32")
        if self.precision not in ("fp32", "bf16"):
            raise InputError(f"setting precision={self.precision!r} must be fp32 or bf16")


def make_plus_settings(overrides: dict[str, Any]) -> PlusSettings:
    known = {f.name for f in fields(PlusSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"sseg-plus training has no setting {unknown[0]!r}; its settings are: {', '.join(known)}")
    settings = PlusSettings(**overrides)
    settings.validate()
    return settings


def upernet_config(settings: PlusSettings, num_labels: int):
    from transformers import AutoConfig, ConvNextConfig, SwinConfig, UperNetConfig

    if settings.backbone in PLUS_BACKBONES:
        kind, values = PLUS_BACKBONES[settings.backbone]
        backbone = (ConvNextConfig if kind == "convnext" else SwinConfig)(**values, out_features=STAGES)  # type: ignore[call-arg]
    else:
        from ...models.loading import quiet_hub

        try:
            with quiet_hub():
                backbone = AutoConfig.from_pretrained(settings.backbone)
        except (OSError, ValueError):
            raise ModelLoadError(
                f"backbone {settings.backbone!r} is neither a preset ({', '.join(PLUS_BACKBONES)}) nor a readable "
                "transformers config"
            ) from None
        backbone.out_features = list(backbone.stage_names[-4:])
    return UperNetConfig(  # type: ignore[call-arg]
        backbone_config=backbone, hidden_size=settings.hidden, num_labels=num_labels, use_auxiliary_head=False
    )


def _crop(image: np.ndarray, label: np.ndarray, size: int, flip: bool, rng: random.Random):
    h, w = label.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(), (nh, nw), mode="bilinear", align_corners=False
    )[0]
    y = F.interpolate(torch.from_numpy(label.astype(np.int64))[None, None].float(), (nh, nw), mode="nearest")[0, 0]
    y0, x0 = rng.randint(0, nh - size), rng.randint(0, nw - size)
    x, y = x[:, y0 : y0 + size, x0 : x0 + size], y[y0 : y0 + size, x0 : x0 + size].long()
    if flip and rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    return (x - mean) / std, y


def label_images(
    images: Sequence[Any], segmenter: Any, vocab: Vocabulary | None, folder: Path, progress: bool = True
) -> list[Path]:
    """Label every image once (PNG per image, written atomically); finished labels are kept on resume."""
    from PIL import Image
    from tqdm import tqdm

    from ...io import load_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(tqdm(images, desc="sseg-plus labels", unit="img", file=sys.stderr, disable=not progress)):
        path = folder / f"{i:06d}.png"
        if not path.is_file():
            labels = segmenter.segment(load_image(image), vocab).labels
            save_image(path, Image.fromarray(labels.astype(np.uint8)))
        paths.append(path)
    return paths


def train_sseg_plus(
    images: Sequence[Any],
    teacher: str | Path,
    classes: str | Sequence[str] | Vocabulary,
    out: str | Path,
    settings: PlusSettings,
    background: str | None = None,
    device: str | torch.device | None = None,
    teacher_settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Label ``images`` (paths or arrays) with the S-Seg run ``teacher`` and train a UperNet into ``out``."""
    from tqdm import tqdm
    from transformers import UperNetForSemanticSegmentation

    from ...device import autocast, resolve_device
    from ..settings import build_method

    settings.validate()
    vocab = classes if isinstance(classes, Vocabulary) else build_vocabulary(classes, background)
    if vocab.num_classes > IGNORE:
        raise InputError(f"{vocab.num_classes} classes do not fit a label PNG (at most {IGNORE})")
    if len(images) == 0:
        raise InputError("no target images given; pass the target dataset's training images (--images FOLDER)")
    dev = resolve_device(device)
    run = Path(out)
    signature = {
        "teacher": str(Path(teacher).resolve()),
        "vocabulary": vocab.to_dict(),
        "images": len(images),
        "settings": asdict(settings),
        "teacher_settings": teacher_settings or {},
    }
    state = _load_state(run)
    if state is not None and json.loads(state["signature"]) != json.loads(json.dumps(signature, default=str)):
        raise InputError(f"{run} holds a run with other images, classes or settings; choose another --out")
    if state is None and run.exists() and any(p.name != "labels" for p in run.iterdir()):
        raise InputError(f"{run}: exists and is not an S-Seg+ run folder; choose a new --out")
    run.mkdir(parents=True, exist_ok=True)
    total = settings.max_steps or settings.steps
    start_round, step = (int(state["round"]), int(state["step"])) if state is not None else (1, 0)
    _truncate_log(run / LOG, step + (start_round - 1) * total)
    model = None
    for round_ in range(start_round, settings.rounds + 1):
        if round_ == 1:
            labeller: Any = build_method("sseg", dev, checkpoint=str(teacher), **(teacher_settings or {})).method
        else:
            labeller = build_method(METHOD, dev, checkpoint=str(run)).method
        labels = label_images(images, labeller, vocab, run / "labels" / f"round{round_}", progress)
        torch.manual_seed(settings.seed + round_)
        model = UperNetForSemanticSegmentation(upernet_config(settings, vocab.num_classes)).to(dev)  # type: ignore[arg-type]
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: max(0.0, 1 - s / settings.steps) ** settings.power
        )
        position = 0
        if state is not None and round_ == start_round and step > 0:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            position = int(state["position"])
            _set_rng_state(state["rng"][0])
        else:
            step = 0
        bar = tqdm(
            total=total,
            initial=step,
            desc=f"sseg-plus round {round_}",
            unit="step",
            file=sys.stderr,
            disable=not progress,
        )
        with (run / LOG).open("a") as log:
            while step < total:
                order = _order(len(images), settings.seed, position // len(images))
                idx = [order[(position + j) % len(images)] for j in range(settings.batch_size)]
                rngs = [random.Random(f"{settings.seed}-{round_}-{position + j}") for j in range(len(idx))]
                batch = [
                    _crop(load_image(images[i]), _read_label(labels[i]), settings.size, settings.flip, r)
                    for i, r in zip(idx, rngs)
                ]
                x = torch.stack([b[0] for b in batch]).to(dev)
                y = torch.stack([b[1] for b in batch]).to(dev)
                with autocast(dev, settings.precision):
                    logits = model(pixel_values=x).logits
                loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE)
                if not torch.isfinite(loss):  # every pixel ignored
                    loss = logits.sum() * 0.0
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                position += len(idx)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                log.write(
                    json.dumps(
                        {
                            "round": round_,
                            "step": step + (round_ - 1) * total,
                            "loss": loss.item(),
                            "lr": scheduler.get_last_lr()[0],
                        }
                    )
                    + "\n"
                )
                log.flush()
                if step % settings.save_every == 0 or step == total:
                    last = step == total and round_ == settings.rounds
                    _plus_checkpoint(
                        run, model, optimizer, scheduler, settings, vocab, signature, round_, step, position, final=last
                    )
        bar.close()
        if round_ < settings.rounds:  # the next round is labelled by this one: start it from step 0
            _plus_checkpoint(run, model, optimizer, scheduler, settings, vocab, signature, round_ + 1, 0, 0)
        state = None
    return {"run": str(run), "steps": total, "rounds": settings.rounds, "classes": list(vocab.names)}


def _order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}-{epoch}-plus").shuffle(order)
    return order


def _read_label(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im)


def _plus_checkpoint(
    run, model, optimizer, scheduler, settings, vocab, signature, round_, step, position, final: bool = False
) -> None:
    extra = {
        "upernet": model.config.to_dict(),
        "vocabulary": vocab.to_dict(),
        "fixed_classes": True,  # `ovss segment --method sseg-plus --checkpoint RUN` may leave --classes out
        "round": round_,
        "step": step,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "teacher": signature["teacher"],
    }
    if step > 0 or final:
        write_run_checkpoint(run, METHOD, model.state_dict(), asdict(settings), {}, extra)
    _save_state(
        run,
        {
            "signature": json.dumps(signature, default=str),
            "round": round_,
            "step": step,
            "position": position,
            "rng": [_rng_state()],
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
    )


@dataclass(frozen=True)
class PlusInferenceSettings:
    short_side: int = 512
    long_max: int = 2048
    precision: str = "fp32"


class SSegPlusMethod(Method):
    """A UperNet trained by S-Seg+: a fixed class list (recorded in the checkpoint), whole-image inference."""

    needs = ()

    def __init__(self, backbones, settings: PlusInferenceSettings, device: torch.device, checkpoint: Any = None):
        from transformers import UperNetConfig, UperNetForSemanticSegmentation

        from ...checkpoints import Checkpoint, load_checkpoint

        if checkpoint is None:
            raise InputError(
                "sseg-plus needs a trained run: pass checkpoint=RUN (from `ovss train --method sseg-plus`)"
            )
        super().__init__(backbones, settings, device)
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, method=METHOD)
        self.model = UperNetForSemanticSegmentation(UperNetConfig.from_dict(ckpt.extra["upernet"]))
        try:
            self.model.load_state_dict(ckpt.tensors())
        except RuntimeError as e:
            raise ModelLoadError(
                f"{ckpt.path}: weights do not fit its UperNet ({str(e).splitlines()[0][:100]})"
            ) from None
        self.model.to(device).eval()  # type: ignore[arg-type]
        v = ckpt.extra["vocabulary"]
        self.vocabulary = Vocabulary(tuple(v["names"]), tuple(tuple(s) for s in v["synonyms"]), v["background"])
        self.mean, self.std = tuple(ckpt.extra["mean"]), tuple(ckpt.extra["std"])

    @torch.no_grad()
    def segment(self, image: np.ndarray, vocab: Vocabulary, return_probs: bool = False) -> MethodOutput:
        from ...device import autocast
        from ...ops.resize import keep_ratio_size, normalize, resize_image

        if tuple(vocab.names) != tuple(self.vocabulary.names):
            raise InputError(
                f"sseg-plus segments only the classes it was trained on ({'; '.join(self.vocabulary.names)}); "
                "leave the class list out"
            )
        s = self.settings
        size = image.shape[:2]
        h, w = keep_ratio_size(*size, s.short_side, s.long_max)  # type: ignore[call-arg]
        h, w = max(32, -(-h // 32) * 32), max(32, -(-w // 32) * 32)
        pixels = normalize(resize_image(image, (h, w)), self.mean, self.std)[None].to(self.device)
        with autocast(self.device, s.precision):
            logits = self.model(pixel_values=pixels).logits.float()
        probs = F.interpolate(logits, size, mode="bilinear", align_corners=False)[0].softmax(0).cpu()
        labels = probs.argmax(0).int().numpy()
        return MethodOutput(labels, probs.numpy() if return_probs else None)
