"""FMbSeg stage 2: train the alignment module on pseudo-labels (docs/methods.md §3.6-3.7).

Frozen DINOv2 patch features of random square crops, patch labels by majority vote with a
purity threshold (U23), N labelled patches sampled per image (U26), TSupCon (or SupCon, l_t,
cross-entropy for the ablations) against frozen CLIP text embeddings of the training
vocabulary. Runs through accelerate, so the same command trains on a CPU, one GPU or many
(``accelerate launch``).

Resume is exact: the run folder's ``state/resume.pt`` (replaced by one rename every
``save_every`` steps and at each epoch end) holds the module, optimizer and scheduler states,
the RNG states and the data position (epoch, batch). Batch order, crops and patch samples are
functions of (seed, epoch, batch), so a run killed at any point and started again gives the same
weights as an uninterrupted one; the loss log is cut back to the saved step on resume. When
training ends, the run folder itself becomes an ``ovss.checkpoints`` checkpoint folder.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..._version import __version__
from ...errors import InputError
from ...io import IMAGE_SUFFIXES, is_scratch_file, load_image
from ...losses import LOSSES, loss_by_name
from ...ops.resize import normalize
from ...ops.text import embed_queries
from ...templates import get_templates
from ...vocab import Vocabulary
from .module import MODULE_KINDS, AlignmentModule, ModuleConfig

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
    log_every: int = 10  # steps between loss-log lines
    save_every: int = 50  # steps between resume states (each epoch end saves one too); not a paper value
    max_steps: int | None = None  # stop after this many optimisation steps (short runs); None: all epochs

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            allowed = _SETTING_TYPES[str(f.type)]
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise InputError(f"fmbseg setting {f.name} must be {f.type}, not {value!r}")
        if self.module not in MODULE_KINDS:
            raise InputError(f"unknown module {self.module!r}; choose one of {', '.join(MODULE_KINDS)}")
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        get_templates(self.templates)
        for name in ("size", "batch_images", "patches_per_image", "epochs", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise InputError(f"fmbseg setting {name} must be at least 1, not {getattr(self, name)}")
        for name in ("tau", "lr"):
            if not getattr(self, name) > 0:
                raise InputError(f"fmbseg setting {name} must be positive, not {getattr(self, name)}")
        if self.weight_decay < 0 or self.text_weight < 0:
            raise InputError("fmbseg settings weight_decay and text_weight must be >= 0")
        if not 0 <= self.purity <= 1:
            raise InputError(f"fmbseg setting purity must lie in [0, 1], not {self.purity}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"fmbseg setting max_steps must be at least 1 (or None), not {self.max_steps}")


_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "int | None": (int, type(None)),
}
# Settings that change neither the weights nor the data order: a resumed run may change them.
RUNTIME_SETTINGS = ("log_every", "save_every", "max_steps")


def pair_images_and_labels(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    if not images.is_dir():
        raise InputError(f"{images}: image folder not found")
    if not labels.is_dir():
        raise InputError(f"{labels}: label folder not found (run `ovss pseudo-label` first)")
    by_stem = {p.stem: p for p in labels.rglob("*.png") if not is_scratch_file(p.name)}
    pairs = [
        (p, by_stem[p.stem])
        for p in sorted(images.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in by_stem
    ]
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

        rng = random.Random(_derived_seed(self.seed, self.epoch, index))
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
        img = F.interpolate(
            torch.tensor(image).permute(2, 0, 1)[None].float(), size=(nh, nw), mode="bilinear", align_corners=False
        )[0]
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
    """Train into the run folder ``out``; resumes exactly from ``out/state`` if an earlier run with
    the same data and settings stopped. One process (or one per rank) writes a run folder."""
    from ...jobs import output_lock, running

    settings.validate()
    pairs = pair_images_and_labels(Path(images), Path(labels))
    vocab = read_vocabulary(Path(labels))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another --out")
    with output_lock(out, "train"), running("train"):
        return _train(pairs, vocab, Path(labels), out, settings, dino_name, clip_name, device, dino, clip, progress)


def _train(
    pairs, vocab, labels: Path, out: Path, settings: TrainSettings, dino_name, clip_name, device, dino, clip, progress
):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    from tqdm import tqdm

    from ...device import resolve_device
    from ...distributed import dist_timeout
    from ...io import remove_stale_parts
    from ...models.registry import load_backbone
    from .module import save_checkpoint

    if (out / "progress.json").exists() and not (out / STATE_FILE).exists():
        raise InputError(f"{out} holds a training run of an older ovss that cannot be resumed; choose another --out")
    remove_stale_parts(out)  # a killed run's half-written state or log (dead pids only)
    dev = resolve_device(device)
    # collectives bounded by OVSS_DIST_TIMEOUT: a dead rank ends the others with an error, not a hang
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=dist_timeout()))
    accelerator = Accelerator(cpu=dev.type == "cpu", kwargs_handlers=[timeout])
    torch.manual_seed(settings.seed)  # the module's initial weights
    dino = load_backbone("dino", dino if dino is not None else dino_name, accelerator.device)
    clip = load_backbone("clip", clip if clip is not None else clip_name, accelerator.device)
    if settings.size % dino.patch_size:
        raise InputError(f"size {settings.size} must be a multiple of the DINO patch size {dino.patch_size}")
    text = class_text_embeddings(clip, vocab, get_templates(settings.templates)).to(accelerator.device)
    config = ModuleConfig.for_dims(dino.dim, text.shape[1], settings.module)
    module = AlignmentModule(config)
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    data = PseudoLabelCrops(pairs, settings.size, dino.mean, dino.std, settings.flip, settings.seed, len(vocab.names))
    batches_per_epoch = math.ceil(len(pairs) / settings.batch_images)
    total = max(1, settings.epochs * batches_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)

    backbones = {"dino": getattr(dino, "name", "custom"), "clip": getattr(clip, "name", "custom")}
    train = asdict(settings)
    identity = {
        **backbones,
        "vocabulary": vocab.to_dict(),
        "images": [p.name for p, _ in pairs],  # names, not paths: ./photos and photos are the same data
        "train": {k: v for k, v in train.items() if k not in RUNTIME_SETTINGS},
    }
    signature = json.dumps(identity, sort_keys=True, default=str)
    position = _resume(out, signature, accelerator, module, optimizer, scheduler)
    log_path = out / LOG_FILE
    if accelerator.is_main_process:
        _cut_log(log_path, position.step)
    loss_options = {
        "tau": settings.tau,
        "literal": settings.literal,
        "text_weight": settings.text_weight,
        "present_texts_only": settings.present_texts_only,
    }
    rank, world = accelerator.process_index, accelerator.num_processes
    delay = float(os.environ.get(TEST_DELAY_ENV, 0) or 0)

    def save(at: Position) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _save_state(out, signature, at, accelerator, module, optimizer, scheduler, delay)

    def reached_max(step: int) -> bool:
        return settings.max_steps is not None and step >= settings.max_steps

    step = position.step
    for epoch in range(position.epoch, settings.epochs):
        if reached_max(step):
            break
        data.epoch = epoch
        module.train()
        order = _epoch_order(len(pairs), settings.seed, epoch)
        first = position.batch if epoch == position.epoch else 0
        show = progress and accelerator.is_main_process
        bar = tqdm(
            range(first, batches_per_epoch),
            f"fmbseg epoch {epoch + 1}/{settings.epochs}",
            unit="batch",
            disable=not show,
        )
        for b in bar:
            batch = _rank_share(order[b * settings.batch_images : (b + 1) * settings.batch_images], rank, world)
            items = [data[int(i)] for i in batch]
            pixels = torch.stack([x for x, _ in items]).to(accelerator.device)
            pixel_labels = torch.stack([y for _, y in items]).to(accelerator.device)
            with torch.no_grad():
                grid = dino.patch_features(pixels)  # frozen (L7)
            z = module(grid.flatten(2).transpose(1, 2))  # (B, T, D)
            y = patch_labels(pixel_labels, dino.patch_size, settings.purity)
            generator = torch.Generator().manual_seed(_derived_seed(settings.seed, epoch, b, rank))
            zs, ys = _sample(z, y, settings.patches_per_image, generator)
            if _all_ranks(accelerator, len(ys) >= 2):  # else nothing to contrast; ranks skip together (DDP)
                loss = loss_by_name(settings.loss, zs, ys, text, **loss_options)
                optimizer.zero_grad()
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                step += 1
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if accelerator.is_main_process and step % settings.log_every == 0:
                    lr = scheduler.get_last_lr()[0]
                    record = {"epoch": epoch, "step": step, "loss": loss.item(), "patches": len(ys), "lr": lr}
                    _append_log(log_path, {**record, "time": time.time()})
                if delay:
                    time.sleep(delay)  # test hook: widens the windows a kill -9 test aims at
            at = Position(epoch, b + 1, step) if b + 1 < batches_per_epoch else Position(epoch + 1, 0, step)
            if step > position.step and (step % settings.save_every == 0 or at.batch == 0 or reached_max(step)):
                save(at)
                position = at
            if reached_max(step):
                break
    if step == 0:
        raise InputError(
            f"no training step was made: no batch had two labelled patches (are the labels of {labels} all "
            "ignore, 255?); check the pseudo-labels or lower purity"
        )
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(module)
        extra = {
            "templates": settings.templates,
            "vocabulary": vocab.to_dict(),
            "images": len(pairs),
            "epochs_done": position.epoch,
            "steps": step,
            "ovss_version": __version__,
        }
        save_checkpoint(out, unwrapped, train, backbones, extra)
    accelerator.wait_for_everyone()
    return {"checkpoint": str(out), "epochs": position.epoch, "steps": step}


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


STATE_FILE = "state/resume.pt"
LOG_FILE = "loss_log.jsonl"
TEST_DELAY_ENV = "OVSS_TEST_TRAIN_DELAY"  # seconds to sleep after each step and inside each state write


@dataclass(frozen=True)
class Position:
    """Where training stands: the next batch to run is ``batch`` of ``epoch``; ``step`` steps made."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def _rank_share(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's images of a batch; a batch smaller than the world gives some ranks a repeat, so
    that every rank steps together (DDP needs each one in every backward pass)."""
    share = batch[rank::world]
    return share if len(share) else batch[rank % len(batch) :][:1]


def _all_ranks(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    flags = accelerator.gather(torch.tensor([int(flag)], device=accelerator.device))
    return bool(flags.min().item())


def _derived_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (NumPy's SeedSequence hashing), the same in every process."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled image order of ``epoch``: a function of (seed, epoch) only, so a resume replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_derived_seed(seed, epoch)))


def _save_state(out: Path, signature: str, at: Position, accelerator, module, optimizer, scheduler, delay: float):
    """Write the resume state to a temporary file and rename it over the old one (one rename)."""
    from ...io import atomic_path

    numpy_state = np.random.get_state()
    state = {
        "signature": signature,
        "position": asdict(at),
        "module": accelerator.unwrap_model(module).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],  # type: ignore[index]
            "python": random.getstate(),
        },
    }
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(state, tmp)
        if delay:
            time.sleep(delay)  # test hook: a kill here must leave the previous state usable


def _resume(out: Path, signature: str, accelerator, module, optimizer, scheduler) -> Position:
    path = out / STATE_FILE
    if not path.exists():
        return Position()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code
    except Exception as e:  # torch raises several types for a damaged file
        raise InputError(
            f"{path}: unreadable resume state ({str(e).splitlines()[0][:80]}); delete it to restart"
        ) from None
    if state.get("signature") != signature:
        raise InputError(f"{out} holds a training run with other data or settings; choose another --out")
    accelerator.unwrap_model(module).load_state_dict(state["module"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    return Position(**state["position"])


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _cut_log(path: Path, step: int) -> None:
    """Keep the whole log lines of steps up to ``step`` (the resume point), so replayed steps are
    not logged twice and a line cut by a kill is dropped; rewritten atomically."""
    from ...io import atomic_path

    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(json.dumps(record))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def settings_from_overrides(overrides: dict[str, Any]) -> TrainSettings:
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"fmbseg training has no setting {unknown[0]!r}; its settings are: {', '.join(known)}")
    return TrainSettings(**overrides)
