"""``ovss train --method pixelclip``: the training loop (official ``PixelCLIP.forward`` + detectron2's
AdamW / WarmupCosineLR / full-model gradient clipping), resumable and data-parallel.

One *step* consumes one global batch of ``batch_size`` images: each of the W processes takes its
share in micro-batches of ``micro_batch``; the teacher features of the whole global batch are
clustered together (Sinkhorn sums all-reduced), then each micro-batch's loss is back-propagated
and the gradients are averaged over micro-batches and processes before one optimiser step. On one
device with micro_batch 12 this reproduces the statistics of 12 images x 4 GPUs.

Resume: ``RUN/state/trainer.pt`` (written atomically every ``state_every`` steps) holds the
trainable tensors, the EMA teacher, optimiser, scheduler, RNG states and the data position; the
data order and every augmentation are functions of (seed, epoch, index), so a resumed run gives
the same weights as an uninterrupted one. The loss log is truncated to the saved step on resume.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..._version import __version__
from ...checkpoints import CARD, CONFIG, WEIGHTS, save_checkpoint
from ...errors import InputError
from ...io import atomic_path, write_json
from ...ops.resize import normalize
from .data import UnlabeledMaskDataset, dino_masks, list_images, pair_masks, sample_generator
from .model import PixelCLIPModel, cluster_targets, mask_logits, masked_bce, sinkhorn
from .settings import TrainSettings

METHOD = "pixelclip"
STATE = "state"
STATE_FILE = "trainer.pt"
LOSS_LOG = "loss_log.jsonl"


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), every collective
    bounded by ``OVSS_DIST_TIMEOUT`` as in every ovss job."""
    from ...distributed import backend_for, init_if_launched

    init_if_launched(backend_for(device))


def lr_factor(step: int, settings: TrainSettings) -> float:
    """detectron2 WarmupCosineLR without warm-up, ending at ``lr_end / lr`` of each group's base lr."""
    end = settings.lr_end / settings.lr if settings.lr > 0 else 1.0
    progress = min(step, settings.max_steps) / settings.max_steps
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: PixelCLIPModel, settings: TrainSettings) -> list[dict[str, Any]]:
    """CLIP x clip_multiplier, prompts x prompt_multiplier, head x 1; weight decay 0 on norm layers."""
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    norm_params = {id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)}
    groups = []
    multipliers = {"clip": settings.clip_multiplier, "prompts": settings.prompt_multiplier, "head": 1.0}
    for name, params in model.trainable_groups().items():
        for decay in (True, False):
            chosen = [p for p in params if (id(p) not in norm_params) == decay]
            if chosen:
                groups.append(
                    {
                        "params": chosen,
                        "lr": settings.lr * multipliers[name],
                        "name": name,
                        "weight_decay": settings.weight_decay if decay else 0.0,
                    }
                )
    return groups


def build_optimizer(model: PixelCLIPModel, settings: TrainSettings):
    optimizer = torch.optim.AdamW(param_groups(model, settings), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings))
    return optimizer, scheduler


def global_batch(step: int, n: int, settings: TrainSettings) -> list[tuple[int, int]]:
    """(epoch, dataset index) of the ``batch_size`` images of ``step``: epochs are seeded permutations."""
    out = []
    for position in range(step * settings.batch_size, (step + 1) * settings.batch_size):
        epoch, offset = divmod(position, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed * 7919 + epoch))
        out.append((epoch, int(perm[offset])))
    return out


def _clip_pixels(views: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    x = torch.stack([normalize(v, mean, std) for v in views])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class Trainer:
    def __init__(
        self,
        model: PixelCLIPModel,
        dataset: UnlabeledMaskDataset,
        settings: TrainSettings,
        device: torch.device,
        mean,
        std,
        dino=None,
    ) -> None:
        self.model, self.data, self.s, self.device = model.to(device), dataset, settings, device
        self.mean, self.std, self.dino = mean, std, dino
        self.optimizer, self.scheduler = build_optimizer(model, settings)
        self.rank, self.world = world()
        per_rank = settings.batch_size // self.world
        if settings.batch_size % self.world or per_rank % settings.micro_batch:
            raise InputError(
                f"batch_size {settings.batch_size} must split into {self.world} processes x micro-batches of "
                f"{settings.micro_batch}; change --set batch_size or micro_batch"
            )
        self.per_rank = per_rank
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.ema_pairs = [
            (t, s)
            for t, s in zip(model.teacher_vision.parameters(), model.clip.vision_model.parameters())
            if s.requires_grad
        ]

    # -- one step
    def load_share(self, step: int):
        batch = global_batch(step, len(self.data), self.s)
        mine = batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        samples, seeds = [], []
        for epoch, index in mine:
            self.data.epoch = epoch
            samples.append(self.data[index])
            seeds.append(int(torch.randint(2**31, (), generator=sample_generator(self.s.seed + 1, epoch, index))))
        standard = torch.stack([x.standard for x in samples]).to(self.device)
        strong = torch.stack([x.strong for x in samples]).to(self.device)
        if self.dino is not None:
            masks = dino_masks(self.dino, standard, self.s, seeds)
        else:
            masks = [x.masks.to(self.device) for x in samples]
        return standard, strong, masks

    def step(self, step: int) -> dict[str, float] | None:
        s, model = self.s, self.model
        standard, strong, masks = self.load_share(step)
        size = (s.mask_resolution, s.mask_resolution)
        with torch.no_grad():
            if s.use_teacher:
                for t, p in self.ema_pairs:  # the EMA update comes before the teacher's forward
                    t.mul_(s.momentum).add_(p.detach(), alpha=1.0 - s.momentum)
            teacher_in = _clip_pixels(standard, s.clip_resolution, self.mean, self.std)
            with _autocast(self.device, s.precision):
                feats = [
                    (model.teacher_features if s.use_teacher else model.student_features)(
                        teacher_in[i : i + s.micro_batch]
                    ).float()
                    for i in range(0, len(teacher_in), s.micro_batch)
                ]
        teacher = torch.cat(feats)
        with _autocast(self.device, s.precision):
            clusters = model.cluster_embeddings()
        logits, kept = mask_logits(teacher, masks, clusters.detach(), s.eps, size)
        counts = torch.tensor([float(logits.shape[0])], device=self.device)
        if self.world > 1:
            dist.all_reduce(counts)
        if counts.item() == 0:
            return None
        if s.equipartition:
            assignment = sinkhorn(logits, s.sinkhorn_iterations).argmax(dim=-1)
        else:
            assignment = logits.argmax(dim=-1)
        targets = cluster_targets(kept, assignment, s.num_prompts)
        student_in = _clip_pixels(strong, s.clip_resolution, self.mean, self.std)
        micro = range(0, self.per_rank, s.micro_batch)
        total = 0.0
        for n, start in enumerate(micro):
            end = start + s.micro_batch
            with _autocast(self.device, s.precision):
                pred = model.mask_logits(model.student_features(student_in[start:end]), clusters, size)
            loss = masked_bce(pred.float(), targets[start:end])
            loss_scaled = loss / len(micro)
            loss_scaled.backward(retain_graph=n < len(micro) - 1)
            total += loss.item() / len(micro)
        stats = torch.tensor([total, float(logits.shape[0])], device=self.device)
        if self.world > 1:
            for p in self.trainable:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
            dist.all_reduce(stats)
            stats[0] /= self.world
        torch.nn.utils.clip_grad_norm_(self.trainable, s.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": float(stats[0]), "masks": int(stats[1]), "lr": self.scheduler.get_last_lr()[0]}

    # -- state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that change in training (student trainable, teacher copies, prompts, head)."""
        model = self.model
        out = {f"student.{k}": v for k, v in model.clip.vision_model.named_parameters() if v.requires_grad}
        names = [k for k, v in model.clip.vision_model.named_parameters() if v.requires_grad]
        teacher = dict(model.teacher_vision.named_parameters())
        out.update({f"teacher.{k}": teacher[k] for k in names})
        out["prompts.prompt_tokens"] = model.prompts.prompt_tokens
        out.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
        return {k: v.detach().cpu().clone() for k, v in out.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        model = self.model
        student = dict(model.clip.vision_model.named_parameters())
        teacher = dict(model.teacher_vision.named_parameters())
        head = {}
        with torch.no_grad():
            for key, value in tensors.items():
                kind, name = key.split(".", 1)
                if kind == "student":
                    student[name].copy_(value)
                elif kind == "teacher":
                    teacher[name].copy_(value)
                elif kind == "prompts":
                    model.prompts.prompt_tokens.copy_(value)
                else:
                    head[name] = value
        model.head.load_state_dict(head)

    def save_state(self, run: Path, step: int, signature: str, optimised: int) -> None:
        if self.rank != 0:
            return
        np_state = np.random.get_state()
        state = {
            "step": step,
            "optimised": optimised,
            "signature": signature,
            "tensors": self.state_tensors(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],  # type: ignore[index]
                "python": list(random.getstate()),
            },
            "data": {"position": step * self.s.batch_size, "epoch": (step * self.s.batch_size) // len(self.data)},
        }
        with atomic_path(run / STATE / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def load_state(self, run: Path, signature: str) -> tuple[int, int]:
        path = run / STATE / STATE_FILE
        if not path.is_file():
            return 0, 0
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(
                f"{path}: unreadable resume state ({str(e).splitlines()[0][:80]}); delete it to restart"
            ) from None
        if state.get("signature") != signature:
            raise InputError(f"{run} holds a pixelclip run with other data or settings; choose another --out")
        self.load_tensors(state["tensors"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        numpy_state = rng["numpy"]
        np.random.set_state((numpy_state[0], numpy_state[1].numpy(), *numpy_state[2:]))
        python_state = rng["python"]
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
        return int(state["step"]), int(state.get("optimised", 0))


def checkpoint_tensors(model: PixelCLIPModel) -> dict[str, torch.Tensor]:
    """Inference tensors: the fine-tuned image-tower weights under transformers ``CLIPModel`` names,
    plus the prompts and ConvHead (kept for further training and analysis)."""
    out = {f"vision_model.{k}": v for k, v in model.clip.vision_model.named_parameters() if v.requires_grad}
    out["pixelclip.prompt_tokens"] = model.prompts.prompt_tokens
    out.update({f"pixelclip.head.{k}": v for k, v in model.head.state_dict().items()})
    return {k: v.detach().cpu() for k, v in out.items()}


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def _publish(folder: Path, run: Path) -> None:
    """Move a checkpoint folder's files into RUN, the config (what readers look for) last."""
    for name in (WEIGHTS, CARD, CONFIG):
        os.replace(folder / name, run / name)
    shutil.rmtree(folder, ignore_errors=True)


def load_training_clip(clip: Any):
    """A fresh, trainable (model, tokenizer, name) from a name or a loaded ``CLIPBackbone``."""
    import copy

    from ...models.clip import load_clip

    backbone = load_clip(clip) if isinstance(clip, str) else clip
    model = copy.deepcopy(backbone.model) if not isinstance(clip, str) else backbone.model
    return model.train(), backbone.tokenizer, backbone.name, backbone


def train_pixelclip(
    images: Any,
    out: str | os.PathLike,
    settings: TrainSettings,
    clip: Any = "tiny-random",
    masks: str | os.PathLike | None = None,
    dino: Any = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train PixelCLIP; ``masks`` (an ``ovss masks`` folder) or ``dino`` (online k-means masks)."""
    from tqdm import tqdm

    from ...device import resolve_device

    settings.validate()
    dev = resolve_device(device)
    init_distributed(dev)
    rank, world_size = world()
    if (masks is None) == (dino is None):
        raise InputError("pass exactly one mask source: --masks DIR (from `ovss masks`) or --mask-source dino")
    paths = list_images(images)
    mask_files = pair_masks(images, paths, masks) if masks is not None else None
    dataset = UnlabeledMaskDataset(paths, mask_files, settings)
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    random.seed(settings.seed)
    clip_model, tokenizer, clip_name, backbone = load_training_clip(clip)
    dino_backbone = None
    if dino is not None:
        from ...models.registry import load_backbone

        dino_backbone = load_backbone("dino", dino, dev)
    model = PixelCLIPModel(clip_model, tokenizer, settings)
    trainer = Trainer(model, dataset, settings, dev, backbone.mean, backbone.std, dino_backbone)
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    data_id = [str(p) for p in paths] + ([str(m) for m in mask_files] if mask_files else [])
    signature = json.dumps(
        {
            "settings": asdict(settings),
            "clip": clip_name,
            "world": world_size,
            "dino": getattr(dino_backbone, "name", None),
            "data": data_id,
        },
        sort_keys=True,
    )
    start, optimised = trainer.load_state(run, signature)
    log = run / LOSS_LOG
    if rank == 0:
        _truncate_log(log, start)
    backbones = {"clip": clip_name, **({"dino": dino_backbone.name} if dino_backbone is not None else {})}
    extra = {
        "base_clip_fingerprint": backbone.fingerprint,
        "images": len(paths),
        "world_size": world_size,
        "mask_source": "dino" if dino is not None else "files",
        "ovss_version": __version__,
    }
    if start >= settings.max_steps and (run / CONFIG).is_file():
        if rank == 0:
            print(f"ovss: {run} already finished ({start} steps)", file=sys.stderr)
        return {"checkpoint": str(run), "steps": start}
    bar = tqdm(
        range(start, settings.max_steps),
        initial=start,
        total=settings.max_steps,
        desc="pixelclip",
        unit="step",
        file=sys.stderr,
        disable=not progress or rank != 0,
    )
    for step in bar:
        stats = trainer.step(step)
        done = step + 1
        if stats is not None:
            optimised += 1
            bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if rank == 0 and done % settings.log_every == 0:
                with log.open("a") as fh:
                    fh.write(json.dumps({"step": done, **stats}) + "\n")
        if done % settings.state_every == 0 or done == settings.max_steps:
            trainer.save_state(run, done, signature, optimised)
        if rank == 0 and done % settings.checkpoint_every == 0 and done < settings.max_steps and optimised:
            save_checkpoint(
                run / "checkpoints" / f"step_{done:06d}",
                METHOD,
                checkpoint_tensors(model),
                asdict(settings),
                backbones,
                {**extra, "step": done},
            )
    if optimised == 0:
        raise InputError("training made no optimisation step: no image had a usable mask; check the masks or crop")
    if rank == 0:
        final = save_checkpoint(
            run / "checkpoints" / ".final",
            METHOD,
            checkpoint_tensors(model),
            asdict(settings),
            backbones,
            {**extra, "step": settings.max_steps},
        )
        _publish(final, run)
        write_json(run / "train_info.json", {"steps": settings.max_steps, "settings": asdict(settings)})
    if world_size > 1:
        dist.barrier()
    return {"checkpoint": str(run), "steps": settings.max_steps}


def settings_dict(settings: TrainSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)
