"""Settings are checked against their dataclass's annotations where they are parsed, once, for
every command: ``--set area_thd=abc`` or ``window=5`` is a one-line error naming the setting and
the type it takes, never a traceback deep inside a model."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

from .errors import InputError


def check_settings(cls: type, values: dict[str, Any], what: str = "setting") -> None:
    """Raise a one-line InputError for the first value that does not fit its field's annotation."""
    hints = _hints(cls)
    for key, value in values.items():
        if key in hints and not fits(value, hints[key]):
            raise InputError(f"{what} {key}={value!r} is not {describe(hints[key])}", option=key)


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that cannot be resolved is not checked
        return {f.name: Any for f in dataclasses.fields(cls)}


def fits(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is object:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin is tuple or annotation is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
    if origin is list or annotation is list:
        return isinstance(value, (list, tuple)) and (not args or all(fits(v, args[0]) for v in value))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # anything more exotic is left to the settings' own validate()


def describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {describe(args[0])}s"
        return "a tuple (" + ", ".join(describe(a) for a in args) + ")"
    if annotation is float:
        return "a finite number"
    if annotation is int:
        return "a whole number"
    if annotation is bool:
        return "True or False"
    if annotation is str:
        return "text"
    return getattr(annotation, "__name__", str(annotation))
