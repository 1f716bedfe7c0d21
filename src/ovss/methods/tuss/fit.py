"""``ovss fit tuss``: the mask bank of a folder of images and the classifier of one supervision
setting (docs/methods.md §1.6).

1. Mask bank (``OUT/bank``): per image, SAM masks (``NAME.masks.json``, written last: it marks the
   image done) and their DBA-CLIP embeddings with pixel areas and levels (``NAME.safetensors``).
   Built image by image, atomically; a re-run skips finished images; under torchrun each rank
   builds its share and rank 0 fits once all are there.
2. Seeds per mask: ``ovss`` / ``wsss`` the text classifier (WSSS: restricted to the image's tags
   plus background); ``sss`` / ``fsss`` the fraction of each ground-truth class inside the mask.
3. GLCC (:mod:`.glcc`) for wsss/sss/fsss. The reference tuned the LP weight and k̄ on the split
   it reported; here, with pixel labels (sss, fsss), they are chosen on held-out labelled training
   images (``heldout``), then the classifier is refit on everything. Without pixel labels (wsss)
   the §1.5 defaults are used. ``lp_weight`` / ``k_bar`` given explicitly skip the selection.
4. ``OUT`` itself becomes a checkpoint folder (``config.json`` + ``model.safetensors``) for
   ``ovss segment --method tuss --checkpoint OUT``,
   ``OUT/seeds/NAME.png`` (training images painted with the fitted training scores; 255 = no
   mask: the WSSS pseudo-masks) and ``OUT/fit.json`` (every setting, counts, the selection table).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...distributed import init_if_launched, is_distributed, wait_for_ranks
from ...errors import InputError
from ...io import remove_stale_parts, save_image, write_json
from ...jobs import dist_info, finished, my_shard, stream_images
from ...masks.maskset import MaskSet
from ...masks.painting import paint, votes
from ...metrics import ConfusionMatrix
from ...ops.text import embed_queries
from ...result import label_image
from ...typecheck import check_settings
from ...vocab import Vocabulary
from .classifier import SETTINGS, TUSSClassifier
from .glcc import GLCC, KNNIndexConfig, LPConfig, ProbeConfig, RoundConfig, glcc_config
from .ov import IGNORE, TUSSMethod

BANK = "bank"


@dataclass(frozen=True)
class FitSettings:
    """What ``ovss fit tuss --set KEY=VALUE`` can change; None = the §1.5/§1.6 default of the setting."""

    heldout: float = 0.2  # share of labelled images held out to choose lp_weight and k_bar (sss, fsss); 0 = off
    lp_weights: tuple[float, ...] = (0.7, 0.9, 1.5, 2.0, 2.5, 3.0)  # the reference's sweep (§1.5 v)
    k_bars: tuple[int, ...] = (12, 25, 50, 100)  # the reference's sweep (§1.5 iii)
    lp_weight: float | None = None  # fixed: no selection (default 1.5)
    k_bar: int | None = None  # fixed: no selection (default 12)
    probe_iters: int | None = None  # base probe iterations before iter_factor (60k = VOC)
    probe_warmup: int | None = None  # base warm-up iterations (6k = VOC)
    iter_factor: float | None = None  # divides both (WSSS rounds 0.25, FSSS 0.5)
    probe_schedule: str = "epochs"  # epochs: counts scale with the bank (a 614k-mask bank gets the reference's); fixed
    lp_k: int | None = None  # graph neighbours of the (first) LP
    lp_alpha: float | None = None  # diffusion strength of the LP (0.9; SSS 0.8)
    weighting: str | None = None  # inductive LP weighting: rigorous | l1
    knn_index: str = "exact"  # the graph's kNN search: exact | ivf | hnsw | bf16 | fp16 (docs/tuss.md)
    knn_settings: dict[str, Any] | None = None  # KNNIndexConfig fields, e.g. {"nprobe": 32}
    seed: int = 0

    def validate(self) -> None:
        if not 0 <= self.heldout < 1:
            raise InputError(f"heldout {self.heldout} must lie in [0, 1)")
        if self.probe_schedule not in ("epochs", "fixed"):
            raise InputError(f"probe_schedule {self.probe_schedule!r} must be epochs or fixed", option="probe_schedule")
        if self.weighting not in (None, "rigorous", "l1"):
            raise InputError(f"weighting {self.weighting!r} must be rigorous or l1")
        self.knn_index_config()  # unknown kinds, fields and bad values fail here

    def knn_index_config(self) -> KNNIndexConfig:
        fields = {f.name for f in dataclasses.fields(KNNIndexConfig)} - {"kind"}
        unknown = sorted(set(self.knn_settings or {}) - fields)
        if unknown:
            raise InputError(
                f"knn_settings has no field {unknown[0]!r}; fields: {', '.join(sorted(fields))}", option="knn_settings"
            )
        cfg = KNNIndexConfig(kind=self.knn_index, **(self.knn_settings or {}))  # type: ignore[arg-type]
        cfg.validate()
        return cfg


def fit_settings(overrides: dict[str, Any]) -> FitSettings:
    known = {f.name for f in dataclasses.fields(FitSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"ovss fit tuss has no setting {unknown[0]!r}; settings: {', '.join(sorted(known))}")
    check_settings(FitSettings, overrides, "fit setting")
    settings = FitSettings(**overrides)
    settings.validate()
    return settings


def glcc_for(setting: str, fs: FitSettings, progress: bool = False) -> GLCC:
    """The GLCC of ``setting`` with the §1.6 defaults and the user's overrides."""
    cfg = glcc_config(setting)  # type: ignore[arg-type]

    def probe(p: ProbeConfig | None) -> ProbeConfig | None:
        if p is None:
            return None
        changes = {
            "base_iters": fs.probe_iters,
            "base_warmup_iters": fs.probe_warmup,
            "iter_factor": fs.iter_factor,
            "seed": fs.seed,
            "schedule": fs.probe_schedule,
        }
        return dataclasses.replace(p, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]

    def lp(c: LPConfig, first: bool) -> LPConfig:
        changes = {"k": fs.lp_k if first else None, "alpha": fs.lp_alpha, "knn_index": fs.knn_index_config()}
        return dataclasses.replace(c, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]

    rounds = tuple(RoundConfig(lp(r.lp, i == 0), probe(r.probe)) for i, r in enumerate(cfg.rounds))
    inductive = cfg.inductive
    if fs.k_bar is not None:
        inductive = dataclasses.replace(inductive, k_bar=fs.k_bar)
    if fs.weighting is not None:
        inductive = dataclasses.replace(inductive, weighting=fs.weighting)  # type: ignore[arg-type]
    lp_weight = fs.lp_weight if fs.lp_weight is not None else cfg.lp_weight
    return GLCC(
        dataclasses.replace(
            cfg,
            rounds=rounds,
            probe=probe(cfg.probe),  # type: ignore[arg-type]
            inductive=inductive,
            lp_weight=lp_weight,
        ),
        progress,
    )


# --------------------------------------------------------------------------------------------
# the mask bank
# --------------------------------------------------------------------------------------------


@dataclass
class Bank:
    stems: list[str]
    embeddings: torch.Tensor  # (N, D) L2-normalised
    areas: torch.Tensor  # (N,)
    levels: torch.Tensor  # (N,)
    offsets: list[int]  # masks of image i: offsets[i]:offsets[i + 1]
    folder: Path

    def rows(self, i: int) -> slice:
        return slice(self.offsets[i], self.offsets[i + 1])

    def masks(self, i: int) -> tuple[MaskSet, torch.Tensor]:
        ms = MaskSet.from_json(self.folder / f"{self.stems[i]}.masks.json")
        h, w = ms.image_size
        return ms, torch.from_numpy(ms.masks()) if len(ms) else torch.zeros(0, h, w, dtype=torch.bool)


def build_bank(
    method: TUSSMethod, paths: list[Path], stems: list[str], folder: Path, job: dict[str, Any], progress: bool = True
) -> int:
    """Embed the masks of every image not yet in ``folder``; returns how many images failed."""
    from ...jobs import check_outputs, output_lock, running

    check_outputs(paths, stems, folder.parent, "bank")  # no embedding file may overwrite a training image
    folder.mkdir(parents=True, exist_ok=True)
    with output_lock(folder, "bank"), running("bank"):
        return _embed_images(method, paths, stems, folder, job, progress)


def _bank_done(folder: Path, stem: str, job: dict[str, Any]) -> bool:
    """The image's masks JSON (written last) records this job and its embeddings file is whole."""
    return finished(folder / f"{stem}.masks.json", job, "info.job", outputs=[folder / f"{stem}.safetensors"])


def _embed_images(
    method: TUSSMethod, paths: list[Path], stems: list[str], folder: Path, job: dict[str, Any], progress: bool
) -> int:
    from safetensors.torch import save_file

    from ...io import atomic_path

    remove_stale_parts(folder)  # only dead processes' temporary files; a live rank's are kept
    todo = [(p, s) for p, s in my_shard(list(zip(paths, stems))) if not _bank_done(folder, s, job)]
    failed = 0
    for path, stem, image in stream_images(todo, "mask bank", progress):
        if image is None:
            failed += 1
            continue
        with torch.no_grad():
            me = method.embed(image)
        tensors = {
            "embeddings": me.embeddings.float().contiguous(),
            "areas": me.areas.float().contiguous(),
            "levels": torch.tensor(me.levels, dtype=torch.int64),
        }
        target = folder / f"{stem}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp))
        me.maskset.info = {**me.maskset.info, "job": job, "source": str(path)}
        me.maskset.save_json(folder / f"{stem}.masks.json")  # last: marks the image as done
    return failed


def wait_for_bank(stems: list[str], folder: Path, job: dict[str, Any], poll: float = 5.0) -> None:
    """Every rank's share of the bank is on disk (a bounded barrier under torchrun, else rank 0 polls)."""
    wait_for_ranks(lambda: [s for s in stems if not _bank_done(folder, s, job)], "tuss mask bank", poll)


def load_bank(stems: list[str], folder: Path) -> Bank:
    from safetensors.torch import load_file

    emb, areas, levels, offsets = [], [], [], [0]
    for stem in stems:
        t = load_file(str(folder / f"{stem}.safetensors"))
        emb.append(t["embeddings"])
        areas.append(t["areas"])
        levels.append(t["levels"])
        offsets.append(offsets[-1] + len(t["areas"]))
    if offsets[-1] == 0:
        raise InputError("SAM found no mask in any training image; check the images or the SAM model")
    return Bank(list(stems), torch.cat(emb), torch.cat(areas), torch.cat(levels), offsets, folder)


# --------------------------------------------------------------------------------------------
# supervision: tags and labels
# --------------------------------------------------------------------------------------------


def read_tags(path: Path, paths: list[Path], stems: list[str], vocab: Vocabulary) -> list[list[int]]:
    """Class indices per image from a JSON object {image file name: [class names]}."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: tags file not found") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable JSON file ({str(e)[:80]})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise InputError(f'{path}: expected a JSON object like {{"img1.jpg": ["cat", "sofa"]}}')
    lookup = {w.lower(): c for c, words in enumerate(vocab.synonyms) for w in words}
    lookup.update({n.lower(): c for c, n in enumerate(vocab.names)})
    out = []
    for p, stem in zip(paths, stems):
        key = next((k for k in (p.name, str(stem), Path(stem).name, p.stem) if k in data), None)
        if key is None:
            raise InputError(f"{path}: no tags for {p.name}; every training image needs an entry (may be [])")
        tags = []
        for name in data[key]:
            if not isinstance(name, str) or name.strip().lower() not in lookup:
                raise InputError(f"{path}: tag {name!r} of {p.name} is not one of the classes; fix it or add the class")
            tags.append(lookup[name.strip().lower()])
        out.append(sorted(set(tags)))
    return out


def label_path(labels: Path, stem: str) -> Path | None:
    p = labels / f"{stem}.png"
    return p if p.is_file() else None


def read_label(path: Path, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    from ...data.labels import read_label_png

    label = read_label_png(path)
    if label.shape != shape:
        raise InputError(f"{path}: label is {label.shape[1]}x{label.shape[0]} but its image is {shape[1]}x{shape[0]}")
    bad = (label != IGNORE) & (label >= num_classes)
    if bad.any():
        raise InputError(
            f"{path}: label value {int(label[bad].max())} is not a class index (0-{num_classes - 1}, "
            "255 = ignore); labels index the classes in --vocab order, background first"
        )
    return label


def _oriented_size(image: Path) -> tuple[int, int]:
    """(H, W) of an image as load_image returns it (EXIF rotation applied), from its header only."""
    from PIL import Image

    with Image.open(image) as im:
        w, h = im.size
        rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    return (w, h) if rotated else (h, w)


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def class_text_embeddings(method: TUSSMethod, vocab: Vocabulary) -> torch.Tensor:
    """(C, D): each class's queries (synonyms, background words) averaged; initialises the probe."""
    q = embed_queries(method.clip, list(vocab.queries), method.templates)
    qc = torch.tensor(vocab.query_class)
    gen = torch.Generator().manual_seed(0)
    rows = [
        q[qc == c].mean(0) if bool((qc == c).any()) else torch.randn(q.shape[1], generator=gen)
        for c in range(vocab.num_classes)
    ]  # a class without queries (threshold background): a random start
    return F.normalize(torch.stack(rows), dim=-1)


def _miou(pred: list[np.ndarray], gt: list[np.ndarray], num_classes: int) -> float:
    cm = ConfusionMatrix(num_classes)
    for p, g in zip(pred, gt):
        cm.update(p, g)
    return float(cm.results("present")["mIoU"])


def _check_fit_inputs(
    paths: list[Path], stems: list[str], vocab: Vocabulary, setting: str, tags: Path | None, labels: Path | None
) -> tuple[list[list[int]] | None, list[Path | None] | None]:
    """Everything a fit can refuse before any model runs; returns the image tags and label files."""
    if setting not in SETTINGS:
        raise InputError(f"unknown setting {setting!r}; use one of {', '.join(SETTINGS)}")
    if setting == "wsss" and tags is None:
        raise InputError("wsss needs image tags: --tags FILE (a JSON object {image name: [class names]})")
    if setting in ("sss", "fsss") and labels is None:
        raise InputError(f"{setting} needs pixel labels: --labels DIR (label PNGs named like the images)")
    if labels is not None and not Path(labels).is_dir():
        raise InputError(f"{labels}: not a folder of label PNGs")
    if vocab.num_classes > IGNORE:
        raise InputError(f"{vocab.num_classes} classes do not fit an 8-bit label PNG with 255 as ignore")
    tag_idx = read_tags(tags, paths, stems, vocab) if setting == "wsss" and tags is not None else None
    label_files = [label_path(Path(labels), s) for s in stems] if labels is not None else None
    if setting == "fsss" and label_files is not None and None in label_files:
        first = stems[label_files.index(None)]
        raise InputError(f"fsss needs a label for every image; {labels}/{first}.png is missing (or use --setting sss)")
    if setting == "sss" and label_files is not None and not any(label_files):
        raise InputError(f"{labels}: no label PNG matches a training image name (NAME.png for image NAME.jpg)")

    if label_files is not None:  # bad labels fail now, not after hours of embedding
        for path, lf in zip(paths, label_files):
            if lf is not None:
                read_label(lf, _oriented_size(path), vocab.num_classes)
    return tag_idx, label_files


def _mask_seeds(
    method: TUSSMethod,
    bank: Bank,
    vocab: Vocabulary,
    setting: str,
    tag_idx: list[list[int]] | None,
    label_files: list[Path | None] | None,
    n_img: int,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[int, np.ndarray]]:
    """Per-mask supervision: text scores (restricted to the tags in wsss) or the votes of pixel labels."""
    c = vocab.num_classes
    seeds = torch.zeros(len(bank.areas), c)
    candidates = None
    label_maps: dict[int, np.ndarray] = {}
    if setting in ("ovss", "wsss"):
        candidates = torch.ones(len(bank.areas), c, dtype=torch.bool) if tag_idx is not None else None
        for i in range(n_img):
            cand = None
            if tag_idx is not None:
                cand = torch.zeros(c, dtype=torch.bool)
                cand[tag_idx[i]] = True
                if vocab.has_background:
                    cand[0] = True
                candidates[bank.rows(i)] = cand  # type: ignore[index]
            seeds[bank.rows(i)] = method.text_scores(bank.embeddings[bank.rows(i)], vocab, cand).T
    else:
        assert label_files is not None
        for i, lf in enumerate(label_files):
            if lf is None:
                continue
            ms, masks = bank.masks(i)
            label_maps[i] = read_label(lf, ms.image_size, c)
            seeds[bank.rows(i)] = votes(masks, label_maps[i], c)

    return seeds, candidates, label_maps


def _paint_training_images(
    bank: Bank,
    train_scores: torch.Tensor,
    candidates: torch.Tensor | None,
    stems: list[str],
    seeds_dir: Path,
    num_classes: int,
) -> None:
    """The training images painted with their fitted scores (the WSSS pseudo-masks), one PNG each."""
    c = num_classes
    for i in range(len(stems)):
        ms, masks = bank.masks(i)
        scores = train_scores[bank.rows(i)].T
        if candidates is not None:
            scores = scores * candidates[bank.rows(i)].T
        pred = paint(
            masks, [int(v) for v in bank.levels[bank.rows(i)]], scores, np.full(ms.image_size, IGNORE, dtype=np.int32)
        )
        save_image(seeds_dir / f"{stems[i]}.png", label_image(pred, c))


def fit_tuss(
    method: TUSSMethod,
    paths: list[Path],
    stems: list[str],
    out: Path,
    vocab: Vocabulary,
    setting: str,
    fs: FitSettings,
    *,
    tags: Path | None = None,
    labels: Path | None = None,
    job: dict[str, Any] | None = None,
    models: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Build the bank and fit; returns the report written to ``OUT/fit.json`` (None on ranks > 0)."""
    stems = [str(s) for s in stems]
    tag_idx, label_files = _check_fit_inputs(paths, stems, vocab, setting, tags, labels)
    start = time.perf_counter()
    # what the embeddings depend on, whatever the caller records: a re-run with other settings is refused
    bank_job = {"bank": job or {}, "embedding": _embedding_settings(method), "models": _model_ids(method)}
    folder = out / BANK
    init_if_launched()  # under torchrun the ranks meet at a bounded barrier before the fit
    failed = build_bank(method, paths, stems, folder, bank_job, progress)
    if failed:
        raise InputError(f"{failed} training image(s) unreadable; remove them and re-run (finished ones are kept)")
    rank, world = dist_info()
    if is_distributed():  # all ranks meet before the fit; only rank 0 fits
        wait_for_bank(stems, folder, bank_job)
    if rank != 0:
        return None
    if world > 1 and not is_distributed():
        wait_for_bank(stems, folder, bank_job)
    bank = load_bank(stems, folder)
    bank_seconds = time.perf_counter() - start
    n_img = len(stems)
    seeds, candidates, label_maps = _mask_seeds(method, bank, vocab, setting, tag_idx, label_files, n_img)
    text = class_text_embeddings(method, vocab)
    report: dict[str, Any] = {
        "setting": setting,
        "images": n_img,
        "masks": len(bank.areas),
        "fit_settings": dataclasses.asdict(fs),
    }
    glcc = None
    if setting != "ovss":
        # sss keeps the held-out images in the graph: the selection and the final fit share one kNN search
        knn = glcc_for(setting, fs).neighbours(bank.embeddings) if setting == "sss" else None
        chosen = _select(bank, seeds, text, setting, fs, label_maps, knn) if setting in ("sss", "fsss") else None
        if chosen is not None:
            report["selection"] = chosen
            fs = dataclasses.replace(fs, lp_weight=chosen["lp_weight"], k_bar=chosen["k_bar"])
        first_k = glcc_for(setting, fs).config.rounds[0].lp.k
        if setting != "fsss" and len(bank.areas) < 5 * first_k:
            n = len(bank.areas)
            warnings.warn(
                f"ovss: the bank has only {n} masks for k = {first_k} graph neighbours; label propagation "
                "will blur classes together (on a 97-mask test bank WSSS fell from 60.7 to 33.1 mIoU). Add "
                "images or diffuse less: --set lp_alpha=0.5 (66.2 there)",
                stacklevel=2,
            )
        t0 = time.perf_counter()
        glcc = glcc_for(setting, fs, progress).fit(
            bank.embeddings, bank.areas, seeds, candidates=candidates, text_embeddings=text, knn=knn
        )
        report["fit_seconds"] = round(time.perf_counter() - t0, 2)
        report["lp_weight"] = glcc.config.lp_weight
        report["k_bar"] = glcc.lp_classifier.config.k_bar  # type: ignore[union-attr]
        train_scores = glcc.train_scores
    else:
        train_scores = seeds
    assert train_scores is not None

    _paint_training_images(bank, train_scores, candidates, stems, out / "seeds", vocab.num_classes)
    classifier = TUSSClassifier(
        setting, vocab, glcc, _embedding_settings(method), models or {}, {**report, "job": job or {}}
    )
    classifier.save(out)
    report["bank_seconds"] = round(bank_seconds, 2)
    report["classifier"] = str(out)
    write_json(out / "fit.json", {**report, "vocabulary": vocab.to_dict(), "models": models or {}, "job": job or {}})
    return report


def _model_ids(method: TUSSMethod) -> dict[str, Any]:
    clip, gen = method.clip, method.generator
    sam = getattr(gen, "sam", None)
    return {
        "clip": getattr(clip, "fingerprint", None) or getattr(clip, "name", None),
        "sam": getattr(sam, "name", None) or getattr(gen, "name", None),
    }


def _embedding_settings(method: TUSSMethod) -> dict[str, Any]:
    keys = (
        "short_side",
        "size_multiple",
        "window",
        "global_weight",
        "patches_see_cls",
        "templates",
        "logit_scale",
        "gamma",
        "background_method",
        "background_power",
        "norm",
        "sam_preset",
        "sam_settings",
        "precision",
    )
    return {k: getattr(method.settings, k) for k in keys}


def _select(
    bank: Bank,
    seeds: torch.Tensor,
    text: torch.Tensor,
    setting: str,
    fs: FitSettings,
    label_maps: dict[int, np.ndarray],
    knn=None,
) -> dict[str, Any] | None:
    """Choose lp_weight and k_bar on held-out labelled images (never on the images reported)."""
    if fs.heldout <= 0 or (fs.lp_weight is not None and fs.k_bar is not None):
        return None
    labelled = sorted(label_maps)
    n_out = min(len(labelled) - 1, max(1, math.ceil(fs.heldout * len(labelled))))
    if n_out < 1:
        return None
    gen = torch.Generator().manual_seed(fs.seed)
    held = sorted(labelled[j] for j in torch.randperm(len(labelled), generator=gen)[:n_out].tolist())
    out_rows = torch.zeros(len(bank.areas), dtype=torch.bool)
    for i in held:
        out_rows[bank.rows(i)] = True
    if setting == "sss":  # held-out images stay in the graph, unlabelled
        train = torch.ones_like(out_rows)
        s = seeds.clone()
        s[out_rows] = 0
    else:  # fsss: every training mask is labelled, so the held-out images leave the training set
        train = ~out_rows
        s = seeds[train]
    glcc = glcc_for(setting, dataclasses.replace(fs, k_bar=None, lp_weight=None)).fit(
        bank.embeddings[train], bank.areas[train], s, text_embeddings=text, knn=knn if setting == "sss" else None
    )
    maps = [bank.masks(i) for i in held]
    k_bars = [fs.k_bar] if fs.k_bar is not None else list(fs.k_bars)
    weights = [fs.lp_weight] if fs.lp_weight is not None else list(fs.lp_weights)
    table = []
    lpc = glcc.lp_classifier
    assert lpc is not None
    for k_bar in k_bars:
        lpc.config = dataclasses.replace(lpc.config, k_bar=k_bar)
        parts = [glcc.predict_parts(bank.embeddings[bank.rows(i)]) for i in held]
        for w in weights:
            preds = []
            for (ms, masks), (lp, probe), i in zip(maps, parts, held):
                score = w * lp + probe
                score = score.masked_fill((w * lp < glcc.config.suppress_eps) | (probe < glcc.config.suppress_eps), 0)
                fill = np.zeros(ms.image_size, dtype=np.int32)
                preds.append(paint(masks, [int(v) for v in bank.levels[bank.rows(i)]], score.T, fill))
            table.append(
                {
                    "k_bar": k_bar,
                    "lp_weight": w,
                    "mIoU": round(_miou(preds, [label_maps[i] for i in held], seeds.shape[1]), 3),
                }
            )
    best = max(table, key=lambda r: r["mIoU"])  # first of equals: the sweep order
    return {
        "heldout_images": [bank.stems[i] for i in held],
        "k_bar": best["k_bar"],
        "lp_weight": best["lp_weight"],
        "heldout_mIoU": best["mIoU"],
        "table": table,
    }
