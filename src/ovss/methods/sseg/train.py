"""``ovss train --method sseg``: S-Seg training from image-caption pairs with online pseudo-masks.

One process per device (``torchrun --nproc_per_node N``; gloo on CPU, NCCL on CUDA), plain
``DistributedDataParallel``. Resume is exact: every ``save_every`` optimisation steps the model,
optimizer, scheduler, RNG states (torch, numpy, python) and each data part's stream position go
to ``RUN/state/trainer.pt`` (written beside and renamed in), and the loss log is cut back to the
saved step on resume. The run folder is a checkpoint folder (config.json + model.safetensors +
README.md, config written last) refreshed at every save and at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import InputError
from ...io import atomic_path
from .data import CaptionStream, collate, count_samples, open_source
from .losses import contrastive_loss, mask_loss
from .model import BACKBONE_PRESETS, WEIGHTINGS, ModelConfig, SSegModel
from .pseudo import cached_masks, pseudo_mask_dino, pseudo_masks

METHOD = "sseg"
STATE = "state"
LOG = "loss_log.jsonl"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLINGS = ("mean_then_mlp", "mlp_then_mean")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class SSegTrainSettings:
    recipe: str = "paper"  # which preset of RECIPES the defaults came from (recorded)
    # model (ModelConfig fields; every unknown is listed in docs/sseg.md)
    backbone: str = "swin-small"  # paper: Swin-S
    num_queries: int = 64  # paper: N = 64
    decoder: str = "maskformer"  # paper: MaskFormer; "mask2former" = masked attention (not in the paper)
    decoder_layers: int = 6  # paper: 6-layer transformer decoder
    hidden: int = 256  # unknown: MaskFormer's 256
    decoder_heads: int = 8  # unknown: MaskFormer's 8
    embed_dim: int = 256  # one note: 256-d projection
    # unknown: decoder query outputs; "embeddings", "pooled" (pixel embeddings under each mask), "local" (first-stage
    # backbone features over the pixels each mask wins: names regions in the synthetic world, docs/sseg.md)
    mask_features: str = "queries"
    text: str = "scratch"  # paper: 12-layer transformer from scratch; "clip:NAME" = frozen CLIP text (non-faithful)
    text_layers: int = 12  # paper
    text_width: int = 256  # one note: width 256
    text_heads: int = 4  # unknown: width / 64
    context_length: int = 77  # unknown: CLIP's 77
    tokenizer: str = "bytes"  # unknown: byte-level CLIP tokenizer (offline); or a CLIPTokenizer id
    temperature_init: float = 0.07  # unknown: CLIP's init
    max_logit_scale: float = 100.0  # unknown: CLIP's clamp
    pooling: str = "mean_then_mlp"  # paper: mean of the mask embeddings, then the 2-layer MLP
    projection_norm: str = "none"  # unknown: "batch" = BatchNorm in the image projection's hidden layer
    # unknown: "uniform" mean (the paper's words), by soft mask "area", or by the share of pixels each mask "won"
    mask_weighting: str = "uniform"
    # pseudo-masks
    k: int = 8  # paper: K = 8
    dino_size: int = 448  # unknown: DINO input side (448 -> 56x56 tokens at patch 8)
    kmeans_iters: int = 100  # unknown
    pseudo_cache: str | None = None  # a folder from `ovss pseudo-label --method sseg`; None = k-means online
    # losses
    dice_weight: float = 1.0  # paper
    focal_weight: float = 20.0  # paper
    focal_alpha: float = 0.25  # unknown: MaskFormer's focal alpha
    focal_gamma: float = 2.0  # unknown: MaskFormer's focal gamma
    mask_weight: float = 1.0  # paper: total = 1.0 L_mask + 1.0 L_contrastive
    contrastive_weight: float = 1.0  # paper; 0 = the no-language ablation
    shuffle_captions: bool = False  # control: captions permuted within the batch (cannot learn names)
    # optimisation
    size: int = 448  # one note: 448x448 training crops
    batch_size: int = 4096  # paper: global batch
    epochs: int = 30  # paper
    lr: float = 5e-4  # paper: AdamW 5e-4
    weight_decay: float = 0.05  # unknown
    warmup_epochs: float = 1.0  # unknown (small recipe: 1 epoch)
    max_steps: int | None = None  # stop after this many optimisation steps (short runs)
    accumulate: int = 1  # gradient accumulation: micro-batches per optimisation step
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    grad_clip: float | None = None  # unknown: none
    shuffle_buffer: int = 10000  # streamed shuffle buffer per data part
    num_workers: int = 0  # dataloader workers per process (part of the data order)
    seed: int = 0
    save_every: int = 500  # optimisation steps between resume states / checkpoints
    log_every: int = 1

    def validate(self) -> None:
        positive = (
            "k",
            "dino_size",
            "kmeans_iters",
            "size",
            "batch_size",
            "epochs",
            "accumulate",
            "shuffle_buffer",
            "save_every",
            "log_every",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"setting {name}={value!r} must be a positive integer")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise InputError(f"setting max_steps={self.max_steps!r} must be a positive integer or None")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise InputError(f"setting num_workers={self.num_workers!r} must be an integer >= 0")
        for name in (
            "dice_weight",
            "focal_weight",
            "mask_weight",
            "contrastive_weight",
            "weight_decay",
            "warmup_epochs",
            "focal_gamma",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise InputError(f"setting {name}={value!r} must be a number >= 0")
        if not isinstance(self.lr, (int, float)) or self.lr <= 0:
            raise InputError(f"setting lr={self.lr!r} must be a positive number")
        if self.pooling not in POOLINGS:
            raise InputError(f"setting pooling={self.pooling!r} must be one of {', '.join(POOLINGS)}")
        if self.mask_weighting not in WEIGHTINGS:
            raise InputError(f"setting mask_weighting={self.mask_weighting!r} must be one of {', '.join(WEIGHTINGS)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"setting precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        if self.recipe not in RECIPES:
            raise InputError(f"setting recipe={self.recipe!r} must be one of {', '.join(RECIPES)}")
        if self.size % 32:
            raise InputError(f"setting size={self.size} must be a multiple of 32 (the Swin stride)")
        self.model_config().validate()

    def model_config(self) -> ModelConfig:
        names = {f.name for f in fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in asdict(self).items() if k in names})


# The paper's recipe (26M pairs of CC3M + CC12M + RedCaps, batch 4096, 30 epochs) and a small one
# (COCO-Captions or CC3M; our choice, results not comparable to the paper).
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {"batch_size": 512, "epochs": 30, "warmup_epochs": 1.0, "shuffle_buffer": 5000},
}


def make_train_settings(overrides: dict[str, Any]) -> SSegTrainSettings:
    """Recipe defaults first, then the caller's ``--set`` values; unknown keys are one-line errors."""
    known = {f.name: f for f in fields(SSegTrainSettings)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise InputError(f"sseg training has no setting {unknown[0]!r}; its settings are: {', '.join(known)}")
    recipe = overrides.get("recipe", "paper")
    if recipe not in RECIPES:
        raise InputError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    settings = SSegTrainSettings(**{**RECIPES[recipe], **overrides})
    settings.validate()
    return settings


# --------------------------------------------------------------------------------------------------
# distributed helpers
# --------------------------------------------------------------------------------------------------


def _init_distributed(device: torch.device) -> tuple[int, int]:
    import torch.distributed as dist

    from ...distributed import backend_for, init_if_launched

    init_if_launched(backend_for(device))  # bounded by OVSS_DIST_TIMEOUT, as every ovss job
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_have(flag: bool, world: int, device: torch.device) -> bool:
    """True if every rank still has a batch (ranks stop together, so none waits forever)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _gather_objects(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------------------------------
# state and checkpoints
# --------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],  # type: ignore[index]
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_state(run: Path, state: dict[str, Any]) -> None:
    folder = run / STATE
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "trainer.pt") as tmp:
        torch.save(state, tmp)


def _load_state(run: Path) -> dict[str, Any] | None:
    path = run / STATE / "trainer.pt"
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: refuse rather than train from a wrong state
        raise InputError(
            f"{path}: unreadable resume state ({str(e).splitlines()[0][:80]}); delete {run / STATE}"
        ) from None


def write_run_checkpoint(
    run: Path,
    method: str,
    tensors: dict[str, torch.Tensor],
    settings: dict[str, Any],
    backbones: dict[str, str],
    extra: dict[str, Any],
    card: str | None = None,
) -> None:
    """Make ``run`` a checkpoint folder without touching its resume state: the folder is written
    whole by ``save_checkpoint`` beside it, then its files are renamed in with config.json last,
    so a reader never finds a config whose weights are missing."""
    from ...checkpoints import CARD, CONFIG, WEIGHTS, save_checkpoint

    run.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run.name}.ckpt.", dir=run.parent))
    try:
        save_checkpoint(tmp / "c", method, tensors, settings, backbones, extra, card)
        for name in (WEIGHTS, CARD, CONFIG):
            os.replace(tmp / "c" / name, run / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------


def _schedule(settings: SSegTrainSettings, steps_per_epoch: int):
    total = settings.max_steps or max(1, settings.epochs * steps_per_epoch)
    warmup = round(settings.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return total, factor


def train_sseg(
    data: str | Path,
    out: str | Path,
    settings: SSegTrainSettings,
    dino: Any = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) S-Seg into the run folder ``out``; returns a summary."""
    from tqdm import tqdm

    from ...device import autocast, resolve_device
    from ...models.registry import load_backbone

    settings.validate()
    dev = resolve_device(device)
    source = open_source(data)
    rank, world = _init_distributed(dev)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(dev)
    if settings.batch_size % (world * settings.accumulate):
        raise InputError(
            f"batch_size {settings.batch_size} must be divisible by processes ({world}) x accumulate "
            f"({settings.accumulate})"
        )
    micro = settings.batch_size // (world * settings.accumulate)
    samples = count_samples(source)
    steps_per_epoch = max(1, samples // settings.batch_size)
    total_steps, factor = _schedule(settings, steps_per_epoch)

    dino = pseudo_mask_dino(dino) if dino is None or isinstance(dino, str) else dino
    dino_name = dino if isinstance(dino, str) else getattr(dino, "name", type(dino).__name__)
    dino = None if settings.pseudo_cache else load_backbone("dino", dino, dev)
    clip = None
    if settings.text.startswith("clip:"):
        clip = load_backbone("clip", settings.text.split(":", 1)[1], dev)
    torch.manual_seed(settings.seed)
    model = SSegModel(settings.model_config(), clip).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    net: torch.nn.Module = model
    if world > 1:
        # other backbones than the Swin presets may hold parameters the feature maps never use
        net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=settings.backbone not in BACKBONE_PRESETS,
        )

    run = Path(out)
    signature = {
        "data": str(Path(data).resolve()),
        "dino": dino_name,
        "world_size": world,
        "settings": asdict(settings),
    }
    state = _load_state(run)
    step, epoch, consumed, batches_in_epoch = 0, 0, {}, 0
    if state is not None:
        if json.loads(state["signature"]) != json.loads(json.dumps(signature, default=str)):
            raise InputError(f"{run} holds a run with other data, settings or process count; choose another --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch = int(state["step"]), int(state["epoch"])
        consumed = {int(k): int(v) for k, v in state["consumed"][rank].items()}
        batches_in_epoch = int(state["batches"][rank])
        _set_rng_state(state["rng"][rank])
    elif rank == 0 and run.exists() and any(run.iterdir()):
        raise InputError(f"{run}: exists and is not an S-Seg run folder; choose a new --out")
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        _truncate_log(run / LOG, step)

    stream = CaptionStream(source, settings.size, settings.seed, settings.shuffle_buffer, rank, world)
    mask_size = (settings.size // 4, settings.size // 4)
    workers = max(1, settings.num_workers)
    log = (run / LOG).open("a") if rank == 0 else None

    def save() -> None:  # the state at the current position (the loop variables, read when called)
        _checkpoint(
            run,
            model,
            optimizer,
            scheduler,
            settings,
            signature,
            step,
            epoch,
            consumed,
            batches_in_epoch,
            rank,
            world,
            dino_name,
        )

    bar = tqdm(
        total=total_steps, initial=step, desc="sseg", unit="step", file=sys.stderr, disable=not progress or rank != 0
    )
    skipped_total = 0
    last = {"loss": float("nan"), "mask": float("nan"), "contrastive": float("nan")}
    micro_count = 0
    done = step >= total_steps
    while not done and epoch < settings.epochs:
        stream.set_epoch(epoch, consumed, rotation=batches_in_epoch % workers)
        loader = torch.utils.data.DataLoader(
            stream,
            batch_size=micro,
            num_workers=settings.num_workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(0),
        )
        iterator = iter(loader)
        while True:
            batch = next(iterator, None)
            if not _all_have(batch is not None, world, dev):
                break
            assert batch is not None
            batches_in_epoch += 1
            for part, position in batch["positions"]:
                consumed[part] = max(consumed.get(part, 0), position + 1)
            skipped_total += batch["skipped"]
            captions = batch["captions"]
            if settings.shuffle_captions and len(captions) > 1:
                g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
                captions = [captions[i] for i in torch.randperm(len(captions), generator=g).tolist()]
            pixels_u8 = batch["pixels"]
            sync = (micro_count + 1) % settings.accumulate == 0
            loss_terms = _micro_step(
                net,
                model,
                pixels_u8,
                captions,
                batch["keys"],
                batch["boxes"],
                dino,
                settings,
                mask_size,
                dev,
                world,
                sync,
                autocast,
            )
            if loss_terms is None:  # every sample of this micro-batch was skipped (single process)
                continue
            last = loss_terms
            micro_count += 1
            if not sync:
                continue
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(mask=f"{last['mask']:.3f}", contrastive=f"{last['contrastive']:.3f}")
            if log is not None and step % settings.log_every == 0:
                log.write(
                    json.dumps(
                        {
                            "step": step,
                            "epoch": epoch,
                            "loss": last["loss"],
                            "mask": last["mask"],
                            "contrastive": last["contrastive"],
                            "lr": scheduler.get_last_lr()[0],
                            "logit_scale": float(model.scale().detach()),
                            "skipped": skipped_total,
                        }
                    )
                    + "\n"
                )
                log.flush()
            done = step >= total_steps
            if done or step % settings.save_every == 0:
                save()
            if done:
                break
        if not done:
            epoch, consumed, batches_in_epoch = epoch + 1, {}, 0
    bar.close()
    if log is not None:
        log.close()
    if step == 0:
        raise InputError(
            f"{data}: no training step was made (no readable image-caption pair, or fewer than one "
            f"micro-batch of {micro}); check the data and batch_size"
        )
    if not (run / STATE / "trainer.pt").is_file() or int(_load_state(run)["step"]) != step:  # type: ignore[index]
        save()
    _barrier(world)
    return {
        "run": str(run),
        "steps": step,
        "epoch": epoch,
        "skipped": skipped_total,
        "samples_per_epoch": samples,
        "model": model,
    }


def _micro_step(net, model, pixels_u8, captions, keys, boxes, dino, settings, mask_size, dev, world, sync, autocast):
    import contextlib

    if len(captions) == 0 and world == 1:
        return None
    if not len(captions):
        targets = []
    elif settings.pseudo_cache:
        targets = cached_masks(Path(settings.pseudo_cache), keys, boxes, settings.size, mask_size)
    else:
        targets = pseudo_masks(
            dino, pixels_u8, settings.k, settings.dino_size, mask_size, settings.kmeans_iters, settings.seed
        )
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    if len(captions):
        pixels = ((pixels_u8.float() - mean) / std).to(dev)
    else:  # a rank whose batch was all skips still joins the collective ops, with one dummy image
        pixels = torch.zeros(1, 3, settings.size, settings.size, device=dev)
    tokens = model.tokenize(captions or [""], dev)
    no_sync = net.no_sync if (world > 1 and not sync) else contextlib.nullcontext
    with no_sync(), autocast(dev, settings.precision):
        masks, image, text, scale = net(pixels, tokens, settings.pooling, settings.mask_weighting)
        if not len(captions):
            image, text = image[:0], text[:0]
        l_mask = mask_loss(
            masks[: len(targets)].float(),
            [t.to(dev) for t in targets],
            settings.dice_weight,
            settings.focal_weight,
            settings.focal_alpha,
            settings.focal_gamma,
        )
        l_con = contrastive_loss(image.float(), text.float(), scale.float())
        if not len(captions):
            l_mask, l_con = masks.sum() * 0.0, l_con * 0.0 + (image.sum() + text.sum()) * 0.0
        loss = settings.mask_weight * l_mask + settings.contrastive_weight * l_con
        (loss / settings.accumulate).backward()
    return {"loss": float(loss.detach()), "mask": float(l_mask.detach()), "contrastive": float(l_con.detach())}


def _checkpoint(
    run, model, optimizer, scheduler, settings, signature, step, epoch, consumed, batches, rank, world, dino_name
) -> None:
    consumed_all = _gather_objects({str(k): v for k, v in consumed.items()}, world)
    batches_all = _gather_objects(batches, world)
    rng_all = _gather_objects(_rng_state(), world)
    if rank == 0:
        state = {
            "signature": json.dumps(signature, default=str),
            "step": step,
            "epoch": epoch,
            "consumed": consumed_all,
            "batches": batches_all,
            "rng": rng_all,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
        backbones = {"dino": dino_name}
        if settings.text.startswith("clip:"):
            backbones["clip"] = settings.text.split(":", 1)[1]
        extra = {
            "model": asdict(settings.model_config()),
            "step": step,
            "epoch": epoch,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "faithful": settings.text == "scratch",
        }
        write_run_checkpoint(run, METHOD, model.state_dict(), asdict(settings), backbones, extra, _card(settings, step))
        _save_state(run, state)  # after the checkpoint: a state never points past the weights on disk
    _barrier(world)


def _card(settings: SSegTrainSettings, step: int) -> str:
    faithful = (
        "faithful (text transformer from scratch)"
        if settings.text == "scratch"
        else (f"NOT faithful: frozen pretrained CLIP text tower {settings.text}")
    )
    return (
        "# ovss S-Seg checkpoint\n\n"
        f"S-Seg (Lai, CVPR 2025) reconstruction trained with ovss, recipe `{settings.recipe}`, {step} steps; "
        f"{faithful}.\n\n```python\nimport ovss\nseg = ovss.Segmenter('sseg', checkpoint='PATH')\n"
        "seg.segment('photo.jpg', 'cat; dog; sofa', background='threshold')\n```\n\n"
        "All settings are in `config.json`.\n"
    )


def replace_settings(settings: SSegTrainSettings, **changes: Any) -> SSegTrainSettings:
    return dataclasses.replace(settings, **changes)
