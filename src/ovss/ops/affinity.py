"""Last-block attention from an external affinity: ProxyCLIP's and CorrCLIP's correlations.

Both methods drop CLIP's own q/k attention in the last block and attend with weights computed
from a vision foundation model's (VFM) patch features, shared by every head, over CLIP's value
vectors resampled to the affinity's grid:

* ProxyCLIP (Lan et al., ECCV 2024; github.com/mc-lan/ProxyCLIP): cosine affinity S of the
  L2-normalised VFM features, logits ``gamma * (S - beta * mean(S))`` with the mean over the
  whole matrix, negative logits masked out, row softmax.
* CorrCLIP (Zhang et al., ICCV 2025; github.com/zdk258/CorrCLIP): cosine affinity times a
  temperature ``tau``, restricted to pairs of patches in the same mask region ("scope
  reconstruction"); pairs involving an unsegmented patch are kept when S is above its mean.

``attend`` applies such weights to ``(B, C, h, w)`` values: bilinear resize to the affinity
grid (align_corners=False), then ``A @ v``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_affinity(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, I, J)`` features -> ``(B, IJ, IJ)`` cosine similarities."""
    f = F.normalize(features.float().flatten(2), dim=1)
    return f.transpose(1, 2) @ f


def proxy_attention(features: torch.Tensor, beta: float = 1.2, gamma: float = 3.0) -> torch.Tensor:
    """ProxyCLIP's attention weights ``(B, IJ, IJ)`` from VFM features ``(B, C, I, J)``.

    A patch always keeps itself (its cosine is 1): ProxyCLIP's code would give an all-masked,
    NaN row when ``beta * mean(S) >= 1``; here such a row attends to itself only."""
    s = cosine_affinity(features)
    logits = gamma * (s - beta * s.mean(dim=(1, 2), keepdim=True))
    keep = (logits >= 0) | torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    return logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)


def region_scope(regions: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """CorrCLIP's allowed pairs ``(B, N, N)`` from region ids ``(B, N)`` (0 = unsegmented).

    Two patches of the same region may attend to each other; a pair with an unsegmented patch is
    allowed where its similarity is above the mean of the whole matrix (the variant CorrCLIP's
    code keeps, reported there to be slightly better than forbidding it)."""
    same = (regions[:, :, None] == regions[:, None, :]) & (regions[:, :, None] > 0)
    unsegmented = (regions[:, :, None] == 0) | (regions[:, None, :] == 0)
    above = similarity > similarity.mean(dim=(1, 2), keepdim=True)
    return same | (unsegmented & above)


def corr_attention(features: torch.Tensor, regions: torch.Tensor | None, tau: float = 4.0) -> torch.Tensor:
    """CorrCLIP's attention weights ``(B, IJ, IJ)``: softmax of ``tau * S`` inside the scope.

    ``regions``: ``(B, I, J)`` integer region ids at the features' grid, or None (no scope
    restriction: DINO-guided correlation only). The diagonal is always in scope."""
    s = cosine_affinity(features)
    if regions is None:
        return (tau * s).softmax(dim=-1)
    keep = region_scope(regions.flatten(1).to(s.device), s)
    keep |= torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    return (tau * s).masked_fill(~keep, float("-inf")).softmax(dim=-1)


def attend(values: torch.Tensor, weights: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, C, h, w)`` values resized bilinearly to ``grid`` and mixed by ``weights``: ``(B, C, I, J)``."""
    v = values.float()
    if tuple(v.shape[-2:]) != tuple(grid):
        v = F.interpolate(v, size=grid, mode="bilinear", align_corners=False)
    b, c = v.shape[:2]
    out = v.flatten(2) @ weights.transpose(1, 2).to(v.dtype)  # (B, C, N): sum_n A[m, n] v[:, n]
    return out.reshape(b, c, *grid)
