"""FMbSeg stage 2: train the alignment module on pseudo-labels (METHODS.md §3.6-3.7).

Frozen DINOv2 patch features of random square crops, patch labels by majority vote with a
purity threshold (U23), N labelled patches sampled per image (U26), TSupCon (or SupCon, l_t,
cross-entropy for the ablations) against frozen CLIP text embeddings of the training
vocabulary. Runs through accelerate, so the same command trains on a CPU, one GPU or many
(``accelerate launch``); each epoch ends with an atomic checkpoint and a resumable state.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..._version import __version__
from ...errors import InputError
from ...io import IMAGE_SUFFIXES, load_image, write_json
from ...losses import LOSSES, loss_by_name
from ...ops.resize import normalize
from ...ops.text import embed_queries
from ...templates import get_templates
from ...vocab import Vocabulary
from .module import MODULE_KINDS, AlignmentModule, ModuleConfig, save_checkpoint

IGNORE = 255
VOCAB_FILE = "vocabulary.json"  # written by `ovss pseudo-label` next to the label PNGs


@dataclass(frozen=True)
class TrainSettings:
    module: str = "block"  # U21: block | mlp | linear
    loss: str = "tsupcon"  # tsupcon | supcon | text | ce
    tau: float = 0.07  # U24 / L1
    literal: bool = False  # L2, L5: the formula exactly as written
    present_texts_only: bool = False  # L4
    text_weight: float = 1.0  # L6
    size: int = 448  # U20/U31: crop side in pixels (a multiple of the DINO patch)
    batch_images: int = 16  # U26: B
    patches_per_image: int = 128  # U26: N
    purity: float = 0.5  # U23
    lr: float = 1e-4  # U27
    weight_decay: float = 0.05
    epochs: int = 10
    flip: bool = True  # U31
    templates: str = "openai_imagenet_80"  # U30
    seed: int = 0
    log_every: int = 10

    def validate(self) -> None:
        if self.module not in MODULE_KINDS:
            raise InputError(f"unknown module {self.module!r}; choose one of {', '.join(MODULE_KINDS)}")
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        get_templates(self.templates)
        if min(self.size, self.batch_images, self.patches_per_image, self.epochs) < 1 or self.tau <= 0:
            raise InputError("size, batch_images, patches_per_image, epochs and tau must be positive")


def pair_images_and_labels(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    if not images.is_dir():
        raise InputError(f"{images}: image folder not found")
    if not labels.is_dir():
        raise InputError(f"{labels}: label folder not found (run `ovss pseudo-label` first)")
    by_stem = {p.stem: p for p in labels.rglob("*.png")}
    pairs = [(p, by_stem[p.stem]) for p in sorted(images.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES
             and p.stem in by_stem]  # fmt: skip
    if not pairs:
        raise InputError(f"no image in {images} has a same-named label PNG in {labels}")
    return pairs


def read_vocabulary(labels: Path) -> Vocabulary:
    path = labels / VOCAB_FILE
    if not path.is_file():
        raise InputError(f"{path} not found: the label folder must hold the vocabulary its PNG values index")
    data = json.loads(path.read_text())
    return Vocabulary(tuple(data["names"]), tuple(tuple(s) for s in data["synonyms"]), data.get("background", "none"))


def class_text_embeddings(text_encoder, vocab: Vocabulary, templates: tuple[str, ...]) -> torch.Tensor:
    """One embedding per class: the normalised mean of its synonyms' (or background words') embeddings."""
    rows = []
    for words in vocab.synonyms:
        if not words:
            raise InputError("threshold-mode background has no text; train with background words or none")
        rows.append(F.normalize(embed_queries(text_encoder, list(words), templates).mean(0), dim=0))
    return torch.stack(rows)


def patch_labels(labels: torch.Tensor, patch: int, purity: float) -> torch.Tensor:
    """``(B, S, S)`` pixel labels -> ``(B, S/P * S/P)`` patch labels: majority vote, ignore if impure."""
    b, h, w = labels.shape
    blocks = labels.view(b, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4).reshape(b, -1, patch * patch)
    mode = blocks.mode(dim=-1).values
    share = (blocks == mode[..., None]).float().mean(-1)
    return mode.masked_fill(share < purity, IGNORE)


class PseudoLabelCrops(torch.utils.data.Dataset):
    """Resize the short side to ``size``, random ``size`` x ``size`` crop, random flip (U31)."""

    def __init__(self, pairs, size: int, mean, std, flip: bool, seed: int, num_classes: int) -> None:
        self.pairs, self.size, self.mean, self.std, self.flip = pairs, size, mean, std, flip
        self.seed, self.epoch, self.num_classes = seed, 0, num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        from PIL import Image

        rng = random.Random(hash((self.seed, self.epoch, index)))
        image_path, label_path = self.pairs[index]
        image = load_image(image_path)
        with Image.open(label_path) as im:
            label = np.array(im)
        if label.shape != image.shape[:2]:
            raise InputError(f"{label_path}: label is {label.shape[::-1]} but its image is {image.shape[1::-1]}")
        bad = (label != IGNORE) & (label >= self.num_classes)
        if bad.any():
            raise InputError(f"{label_path}: value {int(label[bad][0])} is not a class of the vocabulary")
        h, w = label.shape
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        img = F.interpolate(torch.tensor(image).permute(2, 0, 1)[None].float(), size=(nh, nw), mode="bilinear",
                            align_corners=False)[0]  # fmt: skip
        lab = F.interpolate(torch.tensor(label)[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
        y, x = rng.randint(0, nh - self.size), rng.randint(0, nw - self.size)
        img, lab = img[:, y : y + self.size, x : x + self.size], lab[y : y + self.size, x : x + self.size]
        if self.flip and rng.random() < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        return normalize(img, self.mean, self.std), lab


def train_fmbseg(
    images: Path,
    labels: Path,
    out: Path,
    settings: TrainSettings,
    dino_name: str = "tiny-random",
    clip_name: str = "tiny-random",
    device: str | None = None,
    dino: Any = None,
    clip: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train; resumes from ``out/state`` if an earlier run with the same settings stopped."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from ...device import resolve_device
    from ...models.registry import load_backbone

    settings.validate()
    pairs = pair_images_and_labels(Path(images), Path(labels))
    vocab = read_vocabulary(Path(labels))
    dev = resolve_device(device)
    accelerator = Accelerator(cpu=dev.type == "cpu")
    set_seed(settings.seed)
    dino = load_backbone("dino", dino if dino is not None else dino_name, accelerator.device)
    clip = load_backbone("clip", clip if clip is not None else clip_name, accelerator.device)
    if settings.size % dino.patch_size:
        raise InputError(f"size {settings.size} must be a multiple of the DINO patch size {dino.patch_size}")
    text = class_text_embeddings(clip, vocab, get_templates(settings.templates)).to(accelerator.device)
    config = ModuleConfig.for_dims(dino.dim, text.shape[1], settings.module)
    module = AlignmentModule(config)
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    data = PseudoLabelCrops(pairs, settings.size, dino.mean, dino.std, settings.flip, settings.seed, len(vocab.names))
    loader = torch.utils.data.DataLoader(data, batch_size=settings.batch_images, shuffle=True, drop_last=False,
                                         generator=torch.Generator().manual_seed(settings.seed))  # fmt: skip
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, settings.epochs * steps_per_epoch))
    module, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, loader, scheduler)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"dino": getattr(dino, "name", "custom"), "clip": getattr(clip, "name", "custom"),
            "templates": settings.templates, "vocabulary": vocab.to_dict(), "train": asdict(settings),
            "images": len(pairs), "ovss_version": __version__}  # fmt: skip
    signature = json.dumps({k: info[k] for k in ("dino", "clip", "vocabulary", "train", "images")}, sort_keys=True)
    start_epoch = _resume(accelerator, out, signature)
    log_path = out / "loss_log.jsonl"
    step = start_epoch * steps_per_epoch
    generator = torch.Generator().manual_seed(settings.seed)
    loss_options = {"tau": settings.tau, "literal": settings.literal, "text_weight": settings.text_weight,
                    "present_texts_only": settings.present_texts_only}  # fmt: skip
    for epoch in range(start_epoch, settings.epochs):
        data.epoch = epoch
        module.train()
        bar = tqdm(loader, desc=f"fmbseg epoch {epoch + 1}/{settings.epochs}", unit="batch",
                   disable=not (progress and accelerator.is_main_process))  # fmt: skip
        for pixels, pixel_labels in bar:
            with torch.no_grad():
                grid = dino.patch_features(pixels)  # frozen (L7)
            z = module(grid.flatten(2).transpose(1, 2))  # (B, T, D)
            y = patch_labels(pixel_labels, dino.patch_size, settings.purity)
            zs, ys = _sample(z, y, settings.patches_per_image, generator)
            if len(ys) < 2:
                continue  # nothing to contrast in this batch
            loss = loss_by_name(settings.loss, zs, ys, text, **loss_options)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if accelerator.is_main_process and step % settings.log_every == 0:
                with log_path.open("a") as fh:
                    fh.write(json.dumps({"epoch": epoch, "step": step, "loss": loss.item(), "patches": len(ys),
                                         "lr": scheduler.get_last_lr()[0], "time": time.time()}) + "\n")  # fmt: skip
        _end_epoch(accelerator, out, module, info, signature, epoch)
    return {"checkpoint": str(out / "checkpoint.safetensors"), "epochs": settings.epochs, "steps": step}


def _sample(z: torch.Tensor, y: torch.Tensor, n: int, generator: torch.Generator):
    """Up to ``n`` labelled patches per image, uniformly (U26)."""
    picked_z, picked_y = [], []
    for zi, yi in zip(z, y):
        keep = (yi != IGNORE).nonzero().flatten()
        if len(keep) > n:
            keep = keep[torch.randperm(len(keep), generator=generator)[:n].to(keep.device)]
        picked_z.append(zi[keep])
        picked_y.append(yi[keep])
    return torch.cat(picked_z), torch.cat(picked_y).to(z.device)


def _resume(accelerator, out: Path, signature: str) -> int:
    progress = out / "progress.json"
    if not progress.exists():
        return 0
    state = json.loads(progress.read_text())
    if state["signature"] != signature:
        raise InputError(f"{out} holds a training run with other data or settings; choose another --out")
    accelerator.load_state(str(out / "state"))
    return int(state["epochs_done"])


def _end_epoch(accelerator, out: Path, module, info: dict[str, Any], signature: str, epoch: int) -> None:
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "state.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    shutil.rmtree(out / "state", ignore_errors=True)
    tmp.rename(out / "state")
    unwrapped = accelerator.unwrap_model(module)
    save_checkpoint(out / "checkpoint.safetensors", unwrapped, {**info, "epochs_done": epoch + 1})
    write_json(out / "progress.json", {"signature": signature, "epochs_done": epoch + 1})


def settings_from_overrides(overrides: dict[str, Any]) -> TrainSettings:
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"fmbseg training has no setting {unknown[0]!r}; its settings are: {', '.join(known)}")
    return TrainSettings(**overrides)
