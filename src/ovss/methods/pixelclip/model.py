"""PixelCLIP's trainable parts over a transformers ``CLIPModel`` (Shin et al., NeurIPS 2024).

Student image tower (only attention weights and the position table trainable), an EMA teacher,
learnable class prompts run through the frozen text tower, online Sinkhorn clustering of mask
features, the shared ConvHead and the masked BCE loss. The formulas follow the official code
(github.com/cvlab-kaist/PixelCLIP, ``pixelclip/pixelclip.py``); docs/pixelclip.md lists the choices.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ...models.dense_clip import pixelclip_last_block, resize_position_embedding_to_size, trunk_tokens

PROMPT_TEMPLATE = "A photo of a {} in the scene"


def dense_features(vision: Any, projection: Any, pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, 3, H, W)`` normalised pixels -> ``(B, D, H/P, W/P)`` PixelCLIP dense features (not normalised)."""
    x, grid = trunk_tokens(vision, pixels, patch_size, position_resize=resize_position_embedding_to_size)
    x = pixelclip_last_block(x, vision.encoder.layers[-1])
    x = projection(vision.post_layernorm(x))[:, 1:]
    return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)


def is_trainable_visual(name: str, finetune: str = "attention") -> bool:
    """The official ``CLIP_FINETUNE`` rule on transformers names: attention weights and the position table."""
    if finetune == "full":
        return True
    if finetune == "none":
        return False
    return "self_attn" in name or "position_embedding" in name


class DoubleConv(nn.Sequential):
    """(3x3 conv without bias -> GroupNorm(channels // 16) -> ReLU) twice."""

    def __init__(self, channels: int) -> None:
        groups = max(1, channels // 16)
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, channels),
            nn.ReLU(inplace=True),
        )


class ConvHead(nn.Module):
    """One cost-volume slice ``(N, 1, h, w)`` -> mask logits ``(N, 1, 4h, 4w)``; shared by all slices."""

    def __init__(self, channels: tuple[int, int, int] = (64, 64, 32)) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.conv0 = nn.Conv2d(1, c0, 3, padding=1)
        self.up1 = nn.ConvTranspose2d(c0, c1, 2, stride=2)
        self.conv1 = DoubleConv(c1)
        self.up2 = nn.ConvTranspose2d(c1, c2, 2, stride=2)
        self.conv2 = DoubleConv(c2)
        self.proj = nn.Conv2d(c2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv2(self.up2(self.conv1(self.up1(self.conv0(x))))))


class PromptLearner(nn.Module):
    """``num_prompts`` prompts of ``length`` learnable token embeddings put where "{}" sits in the
    template, encoded by the frozen text tower -> ``(K, D)`` cluster embeddings (not normalised).

    The token ids are built as BOS + tokens(prefix) + placeholders + tokens(suffix) + EOS: CLIP's BPE
    works word by word, so this equals tokenising the template with one "{}" per prompt token
    (what the official code does with OpenAI's tokenizer, where "{}" is a single token)."""

    def __init__(
        self,
        clip_model,
        tokenizer,
        num_prompts: int = 64,
        length: int = 4,
        seed: int = 0,
        template: str = PROMPT_TEMPLATE,
    ) -> None:
        super().__init__()
        prefix, suffix = template.split("{}")
        words = lambda t: tokenizer(t.strip(), add_special_tokens=False)["input_ids"] if t.strip() else []  # noqa: E731
        text_config = clip_model.config.text_config
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        pre, post = words(prefix), words(suffix)
        ids = [bos, *pre, *([eos] * length), *post, eos]  # placeholder ids are overwritten below
        self.register_buffer("input_ids", torch.tensor(ids), persistent=False)
        start = 1 + len(pre)
        self.slots = slice(start, start + length)
        self.eos_index = len(ids) - 1
        vocab = text_config.vocab_size
        generator = torch.Generator().manual_seed(seed)
        words_init = torch.randint(max(1, vocab - 10), (num_prompts, length), generator=generator)
        table = clip_model.text_model.embeddings.token_embedding.weight
        self.prompt_tokens = nn.Parameter(table[words_init].detach().clone())

    def token_embeddings(self, clip_model) -> torch.Tensor:
        """``(K, T, W)`` input embeddings: the template's token embeddings with the prompts in the slots."""
        table = clip_model.text_model.embeddings.token_embedding
        base = table(self.input_ids.to(table.weight.device))
        k = self.prompt_tokens.shape[0]
        base = base.unsqueeze(0).expand(k, -1, -1)
        return torch.cat(
            [base[:, : self.slots.start], self.prompt_tokens.to(base.dtype), base[:, self.slots.stop :]], dim=1
        )

    def forward(self, clip_model) -> torch.Tensor:
        return encode_text_embeddings(clip_model, self.token_embeddings(clip_model), self.eos_index)


def encode_text_embeddings(clip_model, embeds: torch.Tensor, eos_index: int) -> torch.Tensor:
    """Run the text tower on input embeddings ``(N, T, W)``; pool at ``eos_index``; project."""
    text = clip_model.text_model
    hidden = text.embeddings(inputs_embeds=embeds)
    t = hidden.shape[1]
    causal = torch.full((t, t), float("-inf"), device=hidden.device, dtype=hidden.dtype).triu_(1)
    hidden = text.encoder(inputs_embeds=hidden, attention_mask=causal[None, None]).last_hidden_state
    pooled = text.final_layer_norm(hidden)[:, eos_index]
    return clip_model.text_projection(pooled)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


@torch.no_grad()
def sinkhorn(logits: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """``(M, K)`` mask-to-cluster logits -> ``(M, K)`` soft assignment, as the official code computes it.

    Q = softmax over clusters, transposed to (K, M), divided by its global total B; then per iteration
    each cluster row is divided by its global sum and by K, each mask column by its local sum and by B;
    finally Q * B. Global sums are all-reduced, so equipartition holds over the global batch."""
    q = logits.float().softmax(dim=-1).t().clone()
    k = q.shape[0]
    total = _all_reduce(q.sum())
    q /= total
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= total
    return (q * total).t()


def mask_logits(
    teacher: torch.Tensor, masks: list[torch.Tensor], clusters: torch.Tensor, eps: float, size: tuple[int, int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Teacher features ``(B, D, h, w)`` and per-image bool masks -> logits ``(M, K)`` of all kept masks
    and the kept masks at ``size`` (nearest), one tensor per image (masks of <= 1 pixel are dropped)."""
    feats = F.interpolate(teacher.float(), size=size, mode="bilinear", align_corners=False)
    centres = F.normalize(clusters.float(), dim=-1)
    logits, kept = [], []
    for feat, m in zip(feats, masks):
        if m.shape[0] == 0:
            kept.append(m.new_zeros((0, *size), dtype=torch.float32))
            continue
        down = F.interpolate(m[None].float(), size=size, mode="nearest")[0]
        down = down[down.sum(dim=(1, 2)) > 1]
        kept.append(down)
        if down.shape[0]:
            pooled = torch.einsum("chw,nhw->nc", feat, down / down.sum(dim=(1, 2), keepdim=True))
            logits.append(eps * F.normalize(pooled, dim=-1) @ centres.t())
    k = clusters.shape[0]
    return (torch.cat(logits) if logits else feats.new_zeros((0, k))), kept


def cluster_targets(kept: list[torch.Tensor], assignment: torch.Tensor, k: int) -> torch.Tensor:
    """Union of the masks assigned to each cluster, per image -> ``(B, K, H, W)`` float 0/1 targets."""
    b = len(kept)
    h, w = kept[0].shape[-2:]
    out = torch.zeros(b, k, h, w, device=assignment.device)
    start = 0
    for i, m in enumerate(kept):
        n = m.shape[0]
        if n:
            out[i].index_add_(0, assignment[start : start + n], m.to(out.device))
        start += n
    return out.clamp_(0, 1)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE with logits over all K channels, only at pixels covered by at least one mask; mean over
    those pixels x channels. ``logits`` and ``targets`` are ``(B, K, H, W)``."""
    valid = targets.sum(dim=1) > 0
    if not valid.any():
        return logits.sum() * 0.0
    pred = logits.permute(0, 2, 3, 1)[valid]
    return F.binary_cross_entropy_with_logits(pred.float(), targets.permute(0, 2, 3, 1)[valid].float())


class PixelCLIPModel(nn.Module):
    """Student CLIP (its text tower frozen), EMA teacher of the image tower, prompts and ConvHead."""

    def __init__(self, clip_model, tokenizer, settings) -> None:
        super().__init__()
        self.clip = clip_model
        self.patch_size = clip_model.config.vision_config.patch_size
        self.clip.requires_grad_(False)
        for name, p in self.clip.vision_model.named_parameters():
            p.requires_grad_(is_trainable_visual(name, settings.clip_finetune))
        self.teacher_vision = copy.deepcopy(self.clip.vision_model).requires_grad_(False)
        self.prompts = PromptLearner(
            clip_model, tokenizer, settings.num_prompts, settings.prompt_length, settings.prompt_seed
        )
        self.head = ConvHead(tuple(settings.head_channels))
        self.settings = settings

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        for t, s in zip(self.teacher_vision.parameters(), self.clip.vision_model.parameters()):
            t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)

    def student_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return dense_features(self.clip.vision_model, self.clip.visual_projection, pixels, self.patch_size)

    @torch.no_grad()
    def teacher_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return dense_features(self.teacher_vision, self.clip.visual_projection, pixels, self.patch_size)

    def cluster_embeddings(self) -> torch.Tensor:
        return self.prompts(self.clip)

    def mask_logits(self, student: torch.Tensor, clusters: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Cost volume cos(student, clusters) ``(B, K, h, w)`` -> ConvHead per slice -> ``(B, K, *size)``."""
        s = F.normalize(student.float(), dim=1)
        c = F.normalize(clusters.float(), dim=-1)
        volume = torch.einsum("kd,bdhw->bkhw", c, s)
        b, k, h, w = volume.shape
        out = self.head(volume.reshape(b * k, 1, h, w))
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out.reshape(b, k, *size)

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "clip": [p for p in self.clip.vision_model.parameters() if p.requires_grad],
            "prompts": [self.prompts.prompt_tokens],
            "head": list(self.head.parameters()),
        }
