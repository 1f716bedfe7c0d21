"""Official PixelCLIP checkpoints (``pixelclip_vit_base*.pth``, detectron2 pickles with the weights
under ``"model"``) -> a transformers CLIP directory in safetensors: the fine-tuned student image
tower from the file, the stock text tower and config from the base CLIP.

Only ``sem_seg_head.predictor.clip_model.visual.*`` is used (OpenAI layout, renamed to transformers
names, ``in_proj`` split into q/k/v); prompts, teacher, ConvHead and DINO weights are counted and
left out. Loading is ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ...errors import InputError, ModelLoadError

VISUAL = "sem_seg_head.predictor.clip_model.visual."
CONVERSION_FILE = "pixelclip_conversion.json"
PREFIXES = (
    "sem_seg_head.predictor.clip_model.visual",
    "sem_seg_head.predictor.clip_model",
    "sem_seg_head.predictor.prompt_tokens",
    "sem_seg_head",
    "teacher_encoder",
    "head",
    "dino",
)

_BLOCK = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP = {
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "class_embedding": "vision_model.embeddings.class_embedding",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The ``"model"`` state dict of a detectron2 checkpoint, loaded with ``weights_only=True``."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        blocked = re.search(r"GLOBAL ([\w.]+)", str(e))
        if blocked:
            why = f"it needs the Python object {blocked.group(1)}, refused for safety"
        elif "Weights only load failed" in str(e):
            why = "it holds pickled Python objects, which safe (weights-only) loading refuses"
        else:
            why = first
        raise ModelLoadError(
            f"{path}: not a loadable PyTorch checkpoint ({why}); pass pixelclip_vit_base*.pth"
        ) from None
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path}: not a model checkpoint (no tensor state dict under 'model')")
    if any(k.startswith(VISUAL + "trunk.") for k in state):
        raise ModelLoadError(f"{path}: a ConvNeXt PixelCLIP checkpoint; it needs open_clip and is not supported")
    if not any(k.startswith(VISUAL) for k in state):
        raise ModelLoadError(f"{path}: not a PixelCLIP checkpoint (no {VISUAL}* weights)")
    return state


def key_counts(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Keys per top-level prefix (the most specific of ``PREFIXES``, else the first name)."""
    counts: Counter[str] = Counter()
    for key in state:
        prefix = next((p for p in PREFIXES if key == p or key.startswith(p + ".")), key.split(".")[0])
        counts[prefix] += 1
    return dict(sorted(counts.items()))


def openai_visual_to_hf(visual: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI ``VisualTransformer`` names -> transformers ``CLIPModel`` names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in visual.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key == "proj":
            out["visual_projection.weight"] = value.t().contiguous()
        else:
            m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key)
            if m is None:
                raise ModelLoadError(f"unexpected visual weight {key!r}; not a ViT PixelCLIP checkpoint")
            layer, rest = m.groups()
            base = f"vision_model.encoder.layers.{layer}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}_proj.{kind}"] = part.contiguous()
            elif rest in ("attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight"):
                out[f"{base}self_attn.{rest[5]}_proj.weight"] = value
            elif rest in _BLOCK:
                out[base + _BLOCK[rest]] = value
            else:
                raise ModelLoadError(f"unexpected visual weight {key!r}; not a ViT PixelCLIP checkpoint")
    return out


def vision_state_from_pth(path: Path, config, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The transformers-named image-tower weights of an official file, checked against ``config``."""
    state = read_state(Path(path)) if state is None else state
    visual = {k[len(VISUAL) :]: v for k, v in state.items() if k.startswith(VISUAL)}
    hf = openai_visual_to_hf(visual)
    from transformers import CLIPModel

    with torch.device("meta"):
        expected = {
            k: v.shape
            for k, v in CLIPModel(config).state_dict().items()
            if k.startswith(("vision_model.", "visual_projection."))
        }
    missing = sorted(set(expected) - set(hf))
    if missing:
        raise ModelLoadError(
            f"{path}: {len(missing)} image-tower weights missing (first: {missing[0]}); the file is incomplete"
        )
    for key, shape in expected.items():
        if hf[key].shape != shape:
            raise ModelLoadError(
                f"{path}: {key} is {tuple(hf[key].shape)} but the base CLIP has {tuple(shape)}; pass the right --clip"
            )
    return {k: hf[k].float() for k in expected}


def is_converted_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONVERSION_FILE).is_file() and (path / "config.json").is_file()


def convert_pixelclip(
    file: str | os.PathLike, out: str | os.PathLike, clip: Any = "openai/clip-vit-base-patch16"
) -> Path:
    """Write ``out`` (swapped in whole): a transformers CLIP directory plus ``pixelclip_conversion.json``."""
    from ...checkpoints import replace_folder
    from ...models.clip import load_clip

    file, out = Path(file), Path(out)
    state = read_state(file)
    base = load_clip(clip) if isinstance(clip, str) else clip
    model = copy.deepcopy(base.model)
    model.load_state_dict(vision_state_from_pth(file, model.config, state), strict=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        base.tokenizer.save_pretrained(tmp)
        info = {
            "source": file.name,
            "sha256": sha256(file),
            "key_counts": key_counts(state),
            "converted": {"image_tower": sum(1 for k in state if k.startswith(VISUAL))},
            "base_clip": getattr(base, "name", str(clip)),
            "note": "image tower from the PixelCLIP file; text tower and config from base_clip",
        }
        (tmp / CONVERSION_FILE).write_text(json.dumps(info, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


CONVERT_HELP = """\
Convert an official PixelCLIP checkpoint into a transformers CLIP directory (safetensors).

  ovss convert pixelclip pixelclip_vit_base.pth --clip openai/clip-vit-base-patch16 --out pixelclip-vitb16
  ovss segment photo.jpg --method pixelclip --checkpoint pixelclip-vitb16 --classes "cat; sofa"
"""


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    """``ovss convert pixelclip FILE --out DIR [--clip BASE]`` (the shared parser has --out and --clip)."""
    p.description = CONVERT_HELP
    p.add_argument("file", help="the official .pth file")


def cmd_convert(args: argparse.Namespace) -> int:
    from ...models.registry import default_model

    out = convert_pixelclip(args.file, args.out, args.clip or default_model("clip"))
    info = json.loads((out / CONVERSION_FILE).read_text())
    print(
        f"ovss: wrote {out} ({info['converted']['image_tower']} image-tower tensors; sha256 {info['sha256'][:12]})",
        file=sys.stderr,
    )
    return 0


__all__ = ["InputError", "add_convert_arguments", "cmd_convert", "convert_pixelclip"]
