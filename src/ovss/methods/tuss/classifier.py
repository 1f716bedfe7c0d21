"""A fitted TUSS classifier on disk: one safetensors file with the GLCC tensors and, in its
metadata, the setting, the classes, the method settings and the models it was fitted with."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import InputError, ModelLoadError
from ...io import atomic_path
from ...vocab import Vocabulary
from .glcc import GLCC

CLASSIFIER_FILE = "classifier.safetensors"
METADATA_KEY = "ovss.tuss"
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
                f"this classifier was fitted for the classes {'; '.join(self.vocabulary.names)}; leave the classes "
                "out to use them, or fit another classifier for yours with `ovss fit tuss`"
            )

    def save(self, out: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        path = Path(out) / CLASSIFIER_FILE
        tensors, glcc_meta = self.glcc.state() if self.glcc is not None else ({}, None)
        if not tensors:  # safetensors needs one tensor; the OV classifier has none of its own
            tensors = {"empty": torch.zeros(0)}
        meta = {"setting": self.setting, "vocabulary": self.vocabulary.to_dict(), "glcc": glcc_meta,
                "method_settings": self.method_settings, "models": self.models, "info": self.info}  # fmt: skip
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, default=str)})
        return path

    @classmethod
    def load(cls, where: str | os.PathLike, tensors: bool = True) -> TUSSClassifier:
        """From a folder written by ``ovss fit tuss`` or its ``classifier.safetensors``; safetensors only."""
        from safetensors import SafetensorError, safe_open

        path = Path(where)
        if path.is_dir():
            path = path / CLASSIFIER_FILE
        if not path.is_file():
            raise ModelLoadError(f"{path}: no TUSS classifier here; fit one with `ovss fit tuss ... --out DIR`")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"{path}: not a safetensors file ({str(e).splitlines()[0][:80]})") from None
        if METADATA_KEY not in meta:
            raise ModelLoadError(f"{path}: not a TUSS classifier (no {METADATA_KEY} metadata); wrong file?")
        info = json.loads(meta[METADATA_KEY])
        v = info["vocabulary"]
        vocab = Vocabulary(tuple(v["names"]), tuple(tuple(s) for s in v["synonyms"]), v["background"])
        glcc = GLCC.from_state(state, info["glcc"]) if tensors and info.get("glcc") else None
        settings = {k: _tuples(v) for k, v in info.get("method_settings", {}).items()}
        return cls(info["setting"], vocab, glcc, settings, info.get("models", {}), info.get("info", {}))


def _tuples(value: Any) -> Any:
    """JSON gives lists where the settings hold tuples (windows)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
