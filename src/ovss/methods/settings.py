"""One settings resolver for the API, ``ovss eval``, ``ovss fit`` and ``ovss train``.

Precedence, lowest first: the method's registered defaults < its protocol family for the
benchmark < the settings a checkpoint was trained or fitted with < the caller's own values.
Every value's origin is kept in ``provenance`` and written next to every result. An unknown key
from the caller is an error; a protocol value for a key this method does not have is recorded
as not applicable, never dropped silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..checkpoints import Checkpoint, load_checkpoint
from ..errors import InputError
from ..protocols import FAMILIES, META_KEYS, ResolvedProtocol, resolve
from ..vocab import Vocabulary, build_vocabulary, no_classes
from .base import MethodSpec


@dataclass
class ResolvedSettings:
    settings: Any  # the method's settings dataclass, validated
    provenance: dict[str, str]  # setting -> "default" | "protocol F/B" | "checkpoint PATH" | "user"
    protocol: ResolvedProtocol | None = None
    checkpoint: Checkpoint | None = None
    not_applicable: dict[str, Any] = field(default_factory=dict)  # protocol values this method has no setting for


def family_defaults(settings: Any, family: str) -> Any:
    """``settings`` with the family's ``default`` column applied: a method registered for a family
    takes its protocol values from the table, so they are written once."""
    table = FAMILIES[family]
    names = {f.name for f in dataclasses.fields(settings)}
    values = {k: v["default"] for k, v in table.items() if k not in META_KEYS and k in names and "default" in v}
    return dataclasses.replace(settings, **values)


def read_checkpoint(spec: MethodSpec, checkpoint: Any) -> Checkpoint | None:
    """The checkpoint as the method reads it, or a one-line refusal for a method without one."""
    if checkpoint is None:
        return None
    if spec.checkpoint == "none":
        raise InputError(f"method {spec.name!r} takes no checkpoint (it is training-free)", option="checkpoint")
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    reader = spec.read_checkpoint or (lambda path: load_checkpoint(path, method=spec.name))
    return reader(str(checkpoint))


def require_checkpoint(spec: MethodSpec, checkpoint: Checkpoint | None) -> None:
    if checkpoint is None and spec.checkpoint == "required":
        what = f"`ovss {next(iter(spec.commands))} --method {spec.name}`" if spec.commands else "its training"
        raise InputError(f"{spec.name} needs a trained checkpoint (a run folder from {what})", option="checkpoint")


def resolve_settings(
    spec: MethodSpec,
    benchmark: str | None = None,
    protocol: str | None = None,
    checkpoint: Any = None,
    overrides: dict[str, Any] | None = None,
) -> ResolvedSettings:
    names = {f.name for f in dataclasses.fields(spec.settings)}
    values: dict[str, Any] = {}
    provenance = dict.fromkeys(names, "default")
    proto, not_applicable = None, {}
    if benchmark is not None:
        proto = resolve(protocol or spec.family, benchmark)
        for key, value in proto.settings.items():
            if key in names:
                values[key], provenance[key] = value, f"protocol {proto.family}/{benchmark}"
            else:
                not_applicable[key] = value
    ckpt = read_checkpoint(spec, checkpoint)
    if ckpt is not None:
        for key, value in ckpt.settings.items():
            if key in names:
                values[key], provenance[key] = _as_field(value), f"checkpoint {ckpt.path}"
    for key, value in (overrides or {}).items():
        if key not in names:
            raise InputError(
                f"method {spec.name!r} has no setting {key!r}; its settings are: {', '.join(sorted(names))}",
                option=key,
            )
        values[key], provenance[key] = _as_field(value), "user"
    settings = spec.make_settings(values)
    return ResolvedSettings(settings, provenance, proto, ckpt, not_applicable)


def _as_field(value: Any) -> Any:
    """JSON turned tuples into lists; settings dataclasses hold tuples."""
    if isinstance(value, list):
        return tuple(_as_field(v) for v in value)
    return value


def fixed_vocabulary(checkpoint: Checkpoint | None, classes: Any, background: Any = None) -> Vocabulary:
    """The vocabulary of a run: the caller's classes, or those of a checkpoint fitted for fixed classes
    (``extra["fixed_classes"]``, e.g. a TUSS classifier), which the caller's classes must then match."""
    fixes = checkpoint is not None and checkpoint.extra.get("fixed_classes")
    recorded = checkpoint.extra.get("vocabulary") if fixes and checkpoint is not None else None
    fixed = None
    if recorded:
        fixed = Vocabulary(
            tuple(recorded["names"]), tuple(tuple(s) for s in recorded["synonyms"]), recorded["background"]
        )
    if classes is None:
        if fixed is None:
            raise no_classes()
        return fixed
    vocab = build_vocabulary(classes, background)
    if fixed is not None and tuple(vocab.names) != tuple(fixed.names):
        raise InputError(
            f"this checkpoint was fitted for the classes {'; '.join(fixed.names)}; leave the classes out to use "
            "them, or fit another one for yours",
            option="classes",
        )
    return vocab


@dataclass
class BuiltMethod:
    """A method built from its name: the object, its resolved settings and the backbones it loaded."""

    method: Any
    spec: MethodSpec
    resolved: ResolvedSettings
    backbone_names: dict[str, str]


def build_method(
    name: str,
    device: Any,
    backbones: dict[str, Any] | None = None,
    checkpoint: Any = None,
    benchmark: str | None = None,
    protocol: str | None = None,
    cache: Any = None,
    **settings: Any,
) -> BuiltMethod:
    """Resolve the settings, load each backbone role (given, recorded by the checkpoint, or the
    default) through its loader, and call the method's factory: what ``Segmenter`` does before it
    reads an image, for code below the API (self-training, fits) that needs a method by name."""
    from ..models.registry import default_model, load_backbone
    from .base import get_method_spec

    spec = get_method_spec(name)
    resolved = resolve_settings(spec, benchmark, protocol, checkpoint, settings)
    require_checkpoint(spec, resolved.checkpoint)
    given = backbones or {}
    recorded = resolved.checkpoint.backbones if resolved.checkpoint is not None else {}
    # each role (clip, dino, sam) is loaded by its own loader or the one the method names (sam -> sam3)
    loader = {role: spec.loaders.get(role, role) for role in spec.needs}
    chosen = {}
    for role in spec.needs:
        value = given.get(role)
        chosen[role] = value if value is not None else recorded.get(role, default_model(loader[role]))
    names = {k: v if isinstance(v, str) else getattr(v, "name", type(v).__name__) for k, v in chosen.items()}
    loaded = {role: load_backbone(loader[role], value, device, cache) for role, value in chosen.items()}
    extra = {"checkpoint": resolved.checkpoint} if spec.checkpoint != "none" else {}
    return BuiltMethod(spec.factory(loaded, resolved.settings, device, **extra), spec, resolved, names)
