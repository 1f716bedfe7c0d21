"""TUSS's discrimination bias for the last CLIP block (docs/methods.md §1.3, DBA-CLIP).

Every SAM mask is downsampled to the patch grid (nearest); two patches that share at least one
mask get bias 0, all other pairs -4. The CLS row and column are 0 (CLS sees every patch and every
patch sees CLS), unless ``patches_see_cls`` is off (the Cityscapes OV configuration), which sets
patch->CLS to -4. The bias goes into both softmaxes of the correlative attention
(``dense_features(pixels, "sclip", bias=...)``: SCLIP's block with residual and FFN kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discrimination_bias(
    masks: torch.Tensor,
    grid: tuple[int, int],
    inside: float = 0.0,
    outside: float = -4.0,
    patches_see_cls: bool = True,
) -> torch.Tensor:
    """``(N, H, W)`` bool masks -> ``(1 + h*w, 1 + h*w)`` additive attention bias for ``grid``."""
    h, w = grid
    tokens = h * w
    if masks.numel() == 0 or masks.shape[0] == 0:
        shared = torch.zeros(tokens, tokens, dtype=torch.bool)
    else:
        small = F.interpolate(masks[:, None].float(), size=(h, w), mode="nearest")[:, 0]
        member = small.flatten(1)  # (N, h*w): which masks cover each patch
        shared = (member.T @ member) > 0
    bias = torch.full((tokens + 1, tokens + 1), outside)
    bias[1:, 1:][shared] = inside
    bias[0, :] = inside
    bias[:, 0] = inside if patches_see_cls else outside
    bias[0, 0] = inside
    return bias
