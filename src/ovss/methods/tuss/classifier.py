"""A fitted TUSS classifier on disk: an ovss checkpoint folder whose weights are the GLCC tensors
and whose config holds the setting, the classes, the method settings and the models it was
fitted with."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...checkpoints import WEIGHTS, Checkpoint, load_checkpoint, save_checkpoint
from ...errors import InputError, ModelLoadError
from ...vocab import Vocabulary
from .glcc import GLCC

SETTINGS = ("ovss", "wsss", "sss", "fsss")


@dataclass
class TUSSClassifier:
    setting: str  # ovss | wsss | sss | fsss
    vocabulary: Vocabulary
    glcc: GLCC | None  # None in the open-vocabulary setting: the text classifier is used
    method_settings: dict[str, Any] = field(default_factory=dict)  # TUSSSettings fields that shape embeddings
    models: dict[str, str] = field(default_factory=dict)  # clip, sam
    info: dict[str, Any] = field(default_factory=dict)  # fit report: images, masks, selection, commit, ...

    def check_vocabulary(self, vocab: Vocabulary) -> None:
        if tuple(vocab.names) != tuple(self.vocabulary.names):
            raise InputError(
                f"this checkpoint was fitted for the classes {'; '.join(self.vocabulary.names)}; leave the classes "
                "out to use them, or fit another classifier for yours with `ovss fit tuss`"
            )

    def save(self, out: str | os.PathLike) -> Path:
        """Into folder ``out`` as an ovss checkpoint (config.json + model.safetensors + README.md)."""
        tensors, glcc_meta = self.glcc.state() if self.glcc is not None else ({}, None)
        extra = {
            "setting": self.setting,
            "vocabulary": self.vocabulary.to_dict(),
            "fixed_classes": True,
            "glcc": glcc_meta,
            "info": self.info,
        }
        save_checkpoint(out, "tuss", tensors, self.method_settings, self.models, extra, card=_card(self))
        return Path(out) / WEIGHTS

    @classmethod
    def load(cls, where: str | os.PathLike | Checkpoint, tensors: bool = True) -> TUSSClassifier:
        """From a folder written by ``ovss fit tuss`` (or a file in it, or a hub id); safetensors only."""
        ckpt = where if isinstance(where, Checkpoint) else load_checkpoint(where, method="tuss")
        extra = ckpt.extra
        if "setting" not in extra or "vocabulary" not in extra:
            raise ModelLoadError(f"{ckpt.path}: a tuss checkpoint without a fitted classifier; re-run `ovss fit tuss`")
        v = extra["vocabulary"]
        vocab = Vocabulary(tuple(v["names"]), tuple(tuple(s) for s in v["synonyms"]), v["background"])
        glcc = GLCC.from_state(ckpt.tensors(), extra["glcc"]) if tensors and extra.get("glcc") else None
        settings = {k: _tuples(v) for k, v in ckpt.settings.items()}
        return cls(extra["setting"], vocab, glcc, settings, ckpt.backbones, extra.get("info", {}))


def _card(classifier: TUSSClassifier) -> str:
    names = "; ".join(classifier.vocabulary.names)
    models = ", ".join(f"{k} `{v}`" for k, v in classifier.models.items())
    return (
        f"# TUSS classifier ({classifier.setting})\n\nFitted by `ovss fit tuss` for the classes: {names}.\n"
        f"Models: {models}.\n\nUse it with `ovss segment IMAGES --method tuss --checkpoint THIS_FOLDER` or\n"
        "`ovss.Segmenter('tuss', checkpoint='THIS_FOLDER')`. All settings are in `config.json`.\n"
    )


def _tuples(value: Any) -> Any:
    """JSON gives lists where the settings hold tuples (windows)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
