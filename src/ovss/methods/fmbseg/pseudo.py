"""FMbSeg stage 1: pseudo-labels from CLIP and SAM, with no annotation (docs/methods.md §3.2-3.5).

1.0 tagging: CLIP global embeddings of the whole image and of 1/2 and 1/3 tiles (50% overlap)
    against the vocabulary; a class is detected if its probability exceeds tau in any window.
1.1 point prompts: for each detected class, the top-5 patches of a dense CLIP similarity map
    (SCLIP head on the protocol windows) prompt SAM one point at a time, multimask; the most
    confident mask of each prompt is kept and the class's masks are merged by union.
1.2 automatic masks: SAM AMG masks, filtered by predicted IoU and area, each labelled by its
    mask-pooled dense CLIP features against the detected classes only. The cosine maps are
    linear in the features, so the argmax of their mask means equals the argmax of the cosine
    between the mask-pooled feature and each text.
Assembly: all pixels ignore (255); 1.2 masks painted largest first, then 1.1 masks on top.

Every unknown of the paper is a field of :class:`PseudoLabelSettings` (the U-ids of §3.9).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from ...masks.pooling import mask_pool
from ...ops.resize import normalize, resize_image
from ...ops.text import embed_queries
from ...templates import get_templates
from ...vocab import Vocabulary
from ..dense_clip import DenseCLIPMethod, DenseCLIPSettings

IGNORE = 255


@dataclass(frozen=True)
class PseudoLabelSettings:
    tag_size: int = 224  # U1: CLIP input size for tagging windows
    tag_tiles: tuple[int, ...] = (1, 2, 3)  # U2: whole image, 1/2 and 1/3 tiles with 50% overlap
    tag_templates: str = "openai_imagenet_80"  # U3
    tag_logit_scale: float = 100.0  # U6
    tag_tau: float = 0.5  # U5 (sweep 0.3/0.5/0.7 on training images, never on the test split)
    dense_variant: str = "sclip"  # U7: dense CLIP head for point selection and mask labelling (U15)
    dense_short_side: int = 336
    dense_window: tuple[int, int] | None = (224, 112)
    points_per_class: int = 5  # top-k patches
    points_merge: str = "union"  # U9: union | none (keep only the best-scoring point's mask)
    amg_preset: str = "exact"  # U12: SAM AMG preset (see `ovss masks --help`)
    min_pred_iou: float = 0.88  # U14
    area_range: tuple[float, float] = (0.001, 0.95)  # U13: share of the image
    min_conf: float | None = None  # U16: minimum pooled cosine for an AMG mask's label
    order: str = "amg_then_points"  # U17: points_then_amg paints point masks first instead

    def validate(self) -> None:
        get_templates(self.tag_templates)
        if not 0 < self.tag_tau < 1:
            raise InputError(f"tag_tau {self.tag_tau} must lie in (0, 1)")
        if self.points_merge not in ("union", "none") or self.order not in ("amg_then_points", "points_then_amg"):
            raise InputError("points_merge must be union|none and order amg_then_points|points_then_amg")
        if self.points_per_class < 0 or not 0 <= self.area_range[0] < self.area_range[1] <= 1:
            raise InputError("points_per_class must be >= 0 and area_range two shares 0 <= lo < hi <= 1")
        if not self.tag_tiles or min(self.tag_tiles) < 1:
            raise InputError(f"tag_tiles {self.tag_tiles!r} must be one or more tile counts >= 1", option="tag_tiles")


class PointPrompter(Protocol):
    def predict_points(self, image: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 2)`` xy points -> masks ``(N, M, H, W)`` bool and predicted IoUs ``(N, M)``, one prompt each."""
        ...


class MaskGenerator(Protocol):
    def generate(self, image: np.ndarray):  # -> MaskSet (records with segmentation, area, predicted_iou)
        ...


def tile_boxes(height: int, width: int, tiles: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)``: for n in ``tiles``, tiles of 1/n of each side at 50% overlap."""
    boxes = []
    for n in tiles:
        th, tw = max(1, height // n), max(1, width // n)
        ys = range(0, max(1, height - th + 1), max(1, th // 2)) if n > 1 else [0]
        xs = range(0, max(1, width - tw + 1), max(1, tw // 2)) if n > 1 else [0]
        boxes += [(y, min(height, y + th), x, min(width, x + tw)) for y in ys for x in xs]
    return boxes


class FMbSegPseudoLabeler:
    """Stage 1 for one image at a time; the CLI streams a folder through it."""

    def __init__(
        self,
        clip,
        prompter: PointPrompter | None,
        generator: MaskGenerator | None,
        settings: PseudoLabelSettings,
        device: torch.device,
    ) -> None:
        settings.validate()
        self.clip, self.prompter, self.generator = clip, prompter, generator
        self.settings, self.device = settings, device
        dense = DenseCLIPSettings(
            variant=settings.dense_variant,
            short_side=settings.dense_short_side,
            window=settings.dense_window,
            templates=settings.tag_templates,
        )
        self.dense = DenseCLIPMethod({"clip": clip}, dense, device)

    # 1.0
    @torch.no_grad()
    def tag(self, image: np.ndarray, vocab: Vocabulary, text: torch.Tensor) -> np.ndarray:
        """Per class, the highest probability it reaches in any window."""
        s = self.settings
        h, w = image.shape[:2]
        crops = []
        for y1, y2, x1, x2 in tile_boxes(h, w, s.tag_tiles):
            crop = np.ascontiguousarray(image[y1:y2, x1:x2])
            crops.append(normalize(resize_image(crop, (s.tag_size, s.tag_size)), self.clip.mean, self.clip.std))
        pixels = torch.stack(crops)
        if hasattr(self.clip, "encode_image"):
            emb = self.clip.encode_image(pixels)
        else:  # stand-in encoders without a global head: mean of the dense features
            emb = F.normalize(self.clip.dense_features(pixels, "vanilla").mean((2, 3)), dim=-1)
        probs = (s.tag_logit_scale * emb.float().cpu() @ text.T).softmax(-1)  # (windows, Q)
        qc = torch.tensor(vocab.query_class)
        per_class = torch.stack([probs[:, qc == c].amax(1) for c in range(vocab.num_classes)], 1)
        return per_class.amax(0).numpy()

    @torch.no_grad()
    def __call__(self, image: np.ndarray, vocab: Vocabulary) -> tuple[np.ndarray, dict[str, Any]]:
        s = self.settings
        h, w = image.shape[:2]
        text = embed_queries(self.clip, list(vocab.queries), get_templates(s.tag_templates))
        tag_probs = self.tag(image, vocab, text)
        first = 1 if vocab.has_background else 0
        detected = [c for c in range(first, vocab.num_classes) if tag_probs[c] > s.tag_tau]
        candidates = ([0] if vocab.has_background else []) + detected

        # dense class-similarity maps at the resized size: max over each class's synonyms
        scores, _ = self.dense.query_scores(image, text)  # (Q, h', w')
        qc = torch.tensor(vocab.query_class)
        class_maps = torch.stack([scores[qc == c].amax(0) for c in range(vocab.num_classes)])

        record: dict[str, Any] = {
            "tags": {vocab.names[c]: round(float(tag_probs[c]), 4) for c in range(first, vocab.num_classes)},
            "detected": [vocab.names[c] for c in detected],
            "points": {},
            "masks": [],
        }
        label = np.full((h, w), IGNORE, dtype=np.uint8)
        point_layers = self._point_masks(image, class_maps, detected, vocab, record) if detected else []
        amg_layers = self._amg_masks(image, class_maps, candidates, vocab, record) if candidates else []
        layers = amg_layers + point_layers if s.order == "amg_then_points" else point_layers + amg_layers
        for mask, c in layers:
            label[mask] = c
        return label, record

    # 1.1
    def _point_masks(self, image, class_maps, detected, vocab, record) -> list[tuple[np.ndarray, int]]:
        s = self.settings
        if self.prompter is None or s.points_per_class == 0:
            return []
        h, w = image.shape[:2]
        p = self.dense.patch_size
        grid = F.avg_pool2d(class_maps[None], p, p, ceil_mode=True)[0]  # patch-level similarity
        gh, gw = grid.shape[-2:]
        rh, rw = class_maps.shape[-2:]
        layers = []
        for c in detected:
            k = min(s.points_per_class, gh * gw)
            top = grid[c].flatten().topk(k).indices
            ys, xs = (top // gw).float(), (top % gw).float()
            # patch centres, from resized to original pixel coordinates
            px = ((xs + 0.5) * p).clamp(max=rw - 1) * w / rw
            py = ((ys + 0.5) * p).clamp(max=rh - 1) * h / rh
            pts = torch.stack([px, py], 1).numpy()
            masks, ious = self.prompter.predict_points(image, pts)
            best = ious.argmax(1)
            chosen = [masks[i, best[i]] for i in range(len(pts))]
            if s.points_merge == "union":
                merged = np.logical_or.reduce(chosen)
            else:
                merged = chosen[int(np.argmax([ious[i, best[i]] for i in range(len(pts))]))]
            record["points"][vocab.names[c]] = pts.round(1).tolist()
            point_ious = [round(float(ious[i, best[i]]), 4) for i in range(len(pts))]
            record["masks"].append(
                {"source": "points", "label": vocab.names[c], "area": int(merged.sum()), "predicted_iou": point_ious}
            )
            layers.append((merged, c))
        return layers

    # 1.2
    def _amg_masks(self, image, class_maps, candidates, vocab, record) -> list[tuple[np.ndarray, int]]:
        s = self.settings
        if self.generator is None:
            return []
        h, w = image.shape[:2]
        maskset = self.generator.generate(image)
        kept = []
        for i, rec in enumerate(maskset):
            share = rec["area"] / (h * w)
            iou = rec.get("predicted_iou")
            if (iou is not None and iou < s.min_pred_iou) or not s.area_range[0] <= share <= s.area_range[1]:
                continue
            kept.append(i)
        if not kept:
            return []
        masks = np.stack([maskset.mask(i) for i in kept])
        pooled, _ = mask_pool(class_maps, torch.from_numpy(masks), mode="area")  # (M, C) mean cosine per mask
        cand = torch.tensor(candidates)
        score, which = pooled[:, cand].max(1)
        layers = []
        for j, i in sorted(enumerate(kept), key=lambda t: -int(masks[t[0]].sum())):  # largest first
            conf = float(score[j])
            if s.min_conf is not None and conf < s.min_conf:
                continue
            c = int(cand[which[j]])
            entry = {"source": "amg", "label": vocab.names[c], "area": int(masks[j].sum())}
            entry.update(predicted_iou=maskset[i].get("predicted_iou"), score=round(conf, 4))
            record["masks"].append(entry)
            layers.append((masks[j], c))
        return layers

    def info(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "clip": getattr(self.clip, "name", None)}


def run_pseudo_labels(
    paths: list,
    stems: list,
    vocab: Vocabulary,
    out,
    labeler: FMbSegPseudoLabeler,
    job: dict[str, Any],
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Stream images through stage 1: NAME.png (labels, 255 = ignore) and NAME.json (tags, masks,
    scores) per image, written atomically with the JSON last; finished images are skipped, and
    under torchrun/accelerate each rank takes its share."""
    from pathlib import Path

    from ...jobs import check_outputs, output_lock, running

    out = Path(out)
    if vocab.num_classes > IGNORE:
        raise InputError(f"{vocab.num_classes} classes do not fit an 8-bit label PNG with 255 as ignore")
    check_outputs([Path(p) for p in paths], stems, out, "pseudo-label")
    with output_lock(out, "pseudo-label"), running("pseudo-label"):
        return _pseudo_label_images(paths, stems, vocab, out, labeler, job, overwrite, progress)


def _pseudo_label_images(paths, stems, vocab, out, labeler, job, overwrite: bool, progress: bool) -> dict[str, int]:
    from PIL import Image

    from ...io import remove_stale_parts, save_image, write_json
    from ...jobs import finished, my_shard, stream_images
    from .train import VOCAB_FILE

    remove_stale_parts(out)  # what a killed run was writing (dead pids only); its finished images are kept
    vocab_file = out / VOCAB_FILE
    if vocab_file.exists() and not overwrite:
        import json

        if json.loads(vocab_file.read_text()) != json.loads(json.dumps(vocab.to_dict())):
            raise InputError(f"{vocab_file} holds another vocabulary; choose another --out or pass --overwrite")
    write_json(vocab_file, vocab.to_dict())
    shard = my_shard(list(zip(paths, stems)))

    def done(stem) -> bool:  # the JSON marker and a whole label PNG beside it
        return finished((out / stem).with_suffix(".json"), job, outputs=[(out / stem).with_suffix(".png")])

    todo = [(p, s) for p, s in shard if overwrite or not done(s)]
    done = failed = 0  # type: ignore[assignment]
    for path, stem, image in stream_images(todo, "pseudo-label", progress):
        if image is None:
            failed += 1
            continue
        label, record = labeler(image, vocab)
        target = out / stem
        save_image(target.with_suffix(".png"), Image.fromarray(label))
        write_json(target.with_suffix(".json"), {**record, "source": str(path), "job": job})
        done += 1  # type: ignore[assignment, operator]
    return {"done": done, "failed": failed, "skipped": len(shard) - len(todo)}  # type: ignore[dict-item]
