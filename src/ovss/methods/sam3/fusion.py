"""SegEarth-OV3's fusion of SAM 3's two heads into one probability map per text prompt.

For one prompt over one image (Li et al., "SegEarth-OV3", arXiv 2512.08730, and its official code):

* presence ``p = sigmoid(presence_logit)``: how sure SAM 3 is that the concept is in the image;
* each DETR query's score ``s_i = sigmoid(class_logit_i) * p``; queries with ``s_i`` above the
  confidence threshold are kept as instances;
* instance map ``I = max_i s_i * sigmoid(upsample(mask_logit_i))`` over the kept queries (0 where none);
* semantic map ``S = sigmoid(upsample(semantic_logit))``;
* fused map ``F = max(I, S) * p``.

Mask and semantic logits are upsampled (bilinear, no corner alignment) to the output size before
the sigmoid, as SAM 3's image processor does. Synonyms, the argmax over classes and the
background threshold are applied by the caller (:mod:`.method`).
"""

from __future__ import annotations

import torch

from ...models.sam3 import GroundingOutput, detection_scores, mask_probabilities


def fuse_prompt_maps(
    out: GroundingOutput,
    size: tuple[int, int],
    confidence_threshold: float = 0.5,
    use_instances: bool = True,
    use_semantic: bool = True,
    use_presence: bool = True,
    mask_batch: int = 32,
) -> torch.Tensor:
    """Fused per-prompt maps ``(P, H, W)`` in [0, 1] at ``size``.

    ``mask_batch`` bounds how many instance masks are upsampled at once (each is ``H x W`` floats).
    """
    scores, presence = detection_scores(out)
    count = scores.shape[0]
    fused = torch.zeros(count, *size, device=scores.device)
    if use_instances:
        kept = scores > confidence_threshold
        for p in kept.any(1).nonzero().flatten().tolist():
            idx = kept[p].nonzero().flatten()
            for start in range(0, len(idx), mask_batch):
                chunk = idx[start : start + mask_batch]
                weighted = mask_probabilities(out.pred_masks[p, chunk], size) * scores[p, chunk].view(-1, 1, 1)
                fused[p] = torch.maximum(fused[p], weighted.amax(0))
    if use_semantic:
        fused = torch.maximum(fused, mask_probabilities(out.semantic_seg[:, 0], size))
    if use_presence:
        fused *= presence.view(-1, 1, 1)
    return fused
