"""S-Seg's two losses: the class-agnostic mask loss against pseudo-masks (Hungarian matching,
unmatched predictions not penalised) and the symmetric image-caption InfoNCE.

Dice and sigmoid focal terms follow MaskFormer (Cheng et al., NeurIPS 2021) and DETR's matcher
(Carion et al., ECCV 2020) with no class cost: cost = dice_weight * dice + focal_weight * focal.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(N, P)`` logits and ``(K, P)`` binary targets -> ``(N, K)`` pairwise 1 - soft Dice (+1 smoothing)."""
    p = logits.sigmoid()
    numerator = 2 * p @ targets.T
    denominator = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def focal_cost(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """``(N, K)`` pairwise sigmoid focal loss (Lin et al., ICCV 2017), averaged over the P pixels."""
    p = logits.sigmoid()
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none") * (1 - p) ** gamma
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * p**gamma
    if alpha >= 0:
        pos, neg = alpha * pos, (1 - alpha) * neg
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[-1]


def match(
    logits: torch.Tensor, targets: torch.Tensor, dice_weight: float, focal_weight: float, alpha: float, gamma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (prediction, target) of the minimum-cost one-to-one assignment of ``K <= N`` targets."""
    with torch.no_grad():
        pred = logits.detach().float() if logits.dtype in (torch.float16, torch.bfloat16) else logits.detach()
        target = targets.to(pred.dtype)
        cost = dice_weight * dice_cost(pred, target) + focal_weight * focal_cost(pred, target, alpha, gamma)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return rows, cols


def mask_loss(
    logits: torch.Tensor,
    targets: list[torch.Tensor],
    dice_weight: float = 1.0,
    focal_weight: float = 20.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Matched Dice + focal, averaged over all matched pairs of the batch.

    ``logits``: ``(B, N, h, w)`` predicted mask logits; ``targets[b]``: ``(K_b, h, w)`` binary
    pseudo-masks at the same size. Predictions left unmatched contribute nothing.
    """
    flat_logits, flat_targets = [], []
    for pred, target in zip(logits, targets):
        if len(target) == 0:
            continue
        pred, target = pred.flatten(1), target.flatten(1).to(pred.dtype)
        rows, cols = match(pred, target, dice_weight, focal_weight, alpha, gamma)
        flat_logits.append(pred[torch.as_tensor(rows, device=pred.device)])
        flat_targets.append(target[torch.as_tensor(cols, device=pred.device)])
    if not flat_logits:
        return logits.sum() * 0.0
    pred, target = torch.cat(flat_logits), torch.cat(flat_targets)
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred, target = pred.float(), target.float()
    dice = torch.diagonal(dice_cost(pred, target)).mean()
    focal = torch.diagonal(focal_cost(pred, target, alpha, gamma)).mean()
    return dice_weight * dice + focal_weight * focal


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows (gradients flow back to every rank), and this rank's row offset.

    Ranks may hold different numbers of rows (skipped samples): rows are padded to the largest
    count for the collective and the padding is cut off again."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = torch.cat([x, x.new_zeros(max(sizes) - x.shape[0], *x.shape[1:])]).contiguous()
    parts = all_gather(padded)
    rank = dist.get_rank()
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]), sum(sizes[:rank])


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021) of this rank's pairs against the negatives of all ranks.

    ``image`` and ``text`` are ``(B, D)`` L2-normalised; row i of each forms a positive pair.
    """
    all_image, offset = gather_with_grad(image)
    all_text, _ = gather_with_grad(text)
    labels = torch.arange(image.shape[0], device=image.device) + offset
    image_to_text = scale * image @ all_text.T
    text_to_image = scale * text @ all_image.T
    return (F.cross_entropy(image_to_text, labels) + F.cross_entropy(text_to_image, labels)) / 2
