"""Class lists: parsing "cat; sofa, couch; plant", synonyms, background words, validation.

A :class:`Vocabulary` maps every text *query* (one per synonym, plus background words) to the
class it belongs to. Class 0 is "background" when a background mode is chosen.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import InputError

# SCLIP's 26 background words for VOC21 and COCO-Object (docs/reference-protocol.md §5.4).
BACKGROUND_WORDS_26 = (
    "sky",
    "wall",
    "tree",
    "wood",
    "grass",
    "road",
    "sea",
    "river",
    "mountain",
    "sands",
    "desk",
    "bed",
    "building",
    "cloud",
    "lamp",
    "door",
    "window",
    "wardrobe",
    "ceiling",
    "shelf",
    "curtain",
    "stair",
    "floor",
    "hill",
    "rail",
    "fence",
)

BACKGROUND_NAME = "background"
BACKGROUND_MODES = ("none", "words", "threshold")


@dataclass(frozen=True)
class Vocabulary:
    """Classes with their synonym queries; ``background`` tells how class 0 is made, if at all."""

    names: tuple[str, ...]  # display name per class; names[0] == "background" if has_background
    synonyms: tuple[tuple[str, ...], ...]  # text queries per class (empty for threshold background)
    background: str = "none"  # "none" | "words" | "threshold"
    queries: tuple[str, ...] = field(init=False)
    query_class: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        queries: list[str] = []
        owner: list[int] = []
        for index, words in enumerate(self.synonyms):
            queries.extend(words)
            owner.extend([index] * len(words))
        object.__setattr__(self, "queries", tuple(queries))
        object.__setattr__(self, "query_class", tuple(owner))

    @property
    def has_background(self) -> bool:
        return self.background != "none"

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "synonyms": [list(s) for s in self.synonyms], "background": self.background}


def no_classes() -> InputError:
    """The one wording of this error, for the API (``classes=``) and the CLI (``--classes``)."""
    return InputError('no class names given; pass them like "cat; sofa, couch; plant"', option="classes")


def parse_classes(classes: str | Sequence[str]) -> list[list[str]]:
    """Parse a class list into synonym groups.

    A string holds classes separated by ``;`` or newlines, synonyms by ``,``:
    ``"cat; sofa, couch; potted plant"``. A sequence holds one class per item (commas inside an
    item separate synonyms). Raises :class:`InputError` on empty lists, empty names or duplicates.
    """
    if isinstance(classes, str):
        items = re.split(r"[;\n]", classes)
    else:
        items = list(classes)
        if any(not isinstance(item, str) for item in items):
            raise InputError("class names must be strings")
    groups: list[list[str]] = []
    for item in items:
        words = [" ".join(w.split()) for w in item.split(",")]
        words = [w for w in words if w]
        if words:
            groups.append(words)
    if not groups:
        raise no_classes()
    seen: dict[str, str] = {}
    for words in groups:
        for word in words:
            key = word.lower()
            if key in seen:
                raise InputError(f"class name {word!r} is given twice; each name (and synonym) must be unique")
            seen[key] = word
    return groups


def build_vocabulary(
    classes: str | Sequence[str] | Vocabulary,
    background: str | Sequence[str] | None = None,
    allow_overlap: bool = False,
) -> Vocabulary:
    """Build a :class:`Vocabulary` from user classes and a background mode.

    ``background``: ``None``/``"none"`` (every pixel gets one of the classes), ``"words"`` (class 0
    queried by SCLIP's 26 background words), ``"threshold"`` (class 0 for pixels whose best class
    probability is below ``prob_thd``), or a list of custom background words.
    ``allow_overlap`` lets a background word also be a class name, as some benchmark name files
    do (SCLIP's COCO-Object list has "bed" in both); users are stopped by default.
    """
    if isinstance(classes, Vocabulary):
        return classes
    groups = parse_classes(classes)
    mode, words = _background_words(background)
    if mode == "none":
        return Vocabulary(tuple(g[0] for g in groups), tuple(tuple(g) for g in groups))
    lowered = {w.lower() for g in groups for w in g}
    if BACKGROUND_NAME in lowered:
        raise InputError(
            "'background' is both a class and the background mode; drop it from the classes or use --background none"
        )
    clash = sorted(lowered & {w.lower() for w in words})
    if clash and not allow_overlap:
        raise InputError(f"background word {clash[0]!r} is also a class; remove it from one of the two lists")
    names = (BACKGROUND_NAME, *(g[0] for g in groups))
    synonyms = (tuple(words), *(tuple(g) for g in groups))
    return Vocabulary(names, synonyms, background=mode)


def _background_words(background: str | Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    if background is None:
        return "none", ()
    if isinstance(background, str):
        key = background.strip().lower()
        if key in ("", "none", "off"):
            return "none", ()
        if key == "words":
            return "words", BACKGROUND_WORDS_26
        if key == "threshold":
            return "threshold", ()
        if key.startswith("words:"):
            background = key[len("words:") :].split(",")
        else:
            raise InputError(
                f"unknown background mode {background!r}; use none, words, threshold or words:sky,wall,..."
            )
    words = tuple(" ".join(w.split()) for w in background if w.strip())
    if not words:
        raise InputError("the background word list is empty; give at least one word or use --background none")
    if len({w.lower() for w in words}) != len(words):
        raise InputError("a background word is given twice")
    return "words", words


def vocabulary_for(value: str, background: str | None = None, family: str = "sclip") -> Vocabulary:
    """A benchmark key (``voc21``) gives its class names with the ``family`` protocol's background;
    anything else is a class list (``"a; b, c"``)."""
    from .protocols import BENCHMARKS

    key = value.strip()
    if key in BENCHMARKS:
        from .data.classes import benchmark_class_names
        from .protocols import resolve

        names = benchmark_class_names(key)
        bg = resolve(family, key).background
        if bg != "none":
            names = names[1:]
        return build_vocabulary(list(names), bg if bg != "none" else None, allow_overlap=True)
    return build_vocabulary(value, background)
