"""The class-name files each protocol family queries, shipped as data (``ovss/data/names``).

The SCLIP-family evaluations do not query a dataset's own class names but their repository's
``configs/cls_<benchmark>.txt``: one line per class, synonyms separated by the family's own
separator (SCLIP's VOC21 list holds 56 queries: the 26 background words on line 0, seven
"person" variants, five for "tvmonitor"). The files are byte-for-byte copies; where they were
taken from (repository, commit, path) is in ``names/SOURCES.md`` and in :data:`NAME_SOURCES`.

>>> text, source = protocol_names("sclip", "voc21")
>>> vocab = protocol_vocabulary("sclip", "voc21")   # 21 classes, 56 queries, class 0 = background
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from ..errors import InputError
from ..vocab import BACKGROUND_NAME, Vocabulary


@dataclass(frozen=True)
class NameSource:
    folder: str  # folder under ovss/data/names
    repository: str
    commit: str
    path: str  # folder of the cls_*.txt files in that repository
    separator: str  # what the family's get_cls_idx splits each line on


_SCLIP = NameSource("sclip", "wangf3014/SCLIP", "b56bd3014b9e8a3ee3450bcfc53700a67d627b7a", "configs", ", ")
_CLEARCLIP = NameSource("clearclip", "mc-lan/ClearCLIP", "ad68a404d55d48d27330b93554eb64a234ff717f", "configs", ",")
_PROXYCLIP = NameSource("proxyclip", "mc-lan/ProxyCLIP", "e7b767fbc58ea218a3b8ba34cd92db521cc5f2e1", "configs", "; ")
_TRIDENT = NameSource("trident", "YuHengsss/Trident", "a93b346d1b1dc55bc6f547da5b7d361ad449ae44", "configs", "; ")
_CORRCLIP = NameSource(
    "corrclip", "zdk258/CorrCLIP", "103bc18213e6d906e55a21b8491bc7b04cbf106b", "CorrCLIPv2/configs", "; "
)

# Family -> its name files. NACLIP (sinahmr/NACLIP@0cac3a6) and SC-CLIP (SuleBai/SC-CLIP@0417ba9)
# ship files identical to SCLIP's (same git blobs).
NAME_SOURCES: dict[str, NameSource] = {
    "sclip": _SCLIP,
    "naclip": _SCLIP,
    "sc_clip": _SCLIP,
    "clearclip": _CLEARCLIP,
    "proxyclip": _PROXYCLIP,
    "trident": _TRIDENT,
    "corrclip": _CORRCLIP,
}

# ovss benchmark id -> the file stem the repositories use.
BENCHMARK_FILES = {
    "voc21": "voc21",
    "voc20": "voc20",
    "pc60": "context60",
    "pc59": "context59",
    "coco_object": "coco_object",
    "coco_stuff171": "coco_stuff",
    "cityscapes": "city_scapes",
    "ade20k150": "ade20k",
    "ade847": "ade20k847",
    "pc459": "context459",
}
# Benchmarks whose line 0 is the background class (background words or the word "background").
WITH_BACKGROUND = ("voc21", "pc60", "coco_object")


def _source(family: str, benchmark: str) -> tuple[NameSource, str]:
    if family not in NAME_SOURCES:
        raise InputError(f"no class-name files for family {family!r}; choose one of {', '.join(NAME_SOURCES)}")
    if benchmark not in BENCHMARK_FILES:
        raise InputError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARK_FILES)}")
    src = NAME_SOURCES[family]
    return src, f"cls_{BENCHMARK_FILES[benchmark]}.txt"


def protocol_names(family: str, benchmark: str) -> tuple[str, str]:
    """The family's name file for ``benchmark`` as text, and where it comes from
    (``"owner/repo@commit:path"``)."""
    src, filename = _source(family, benchmark)
    node = resources.files("ovss.data").joinpath("names", src.folder, filename)
    if not node.is_file():
        raise InputError(f"{src.repository} ships no {filename} ({family} does not evaluate {benchmark})")
    text = node.read_bytes().decode("utf-8")
    return text, f"{src.repository}@{src.commit}:{src.path}/{filename}"


def protocol_queries(family: str, benchmark: str) -> tuple[list[list[str]], str]:
    """Synonym queries per class, split exactly as the family's ``get_cls_idx`` does (its
    separator, line breaks removed, nothing else stripped), and the source."""
    text, source = protocol_names(family, benchmark)
    separator = NAME_SOURCES[family].separator
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # readlines() in text mode
    if lines and lines[-1] == "":
        lines.pop()
    return [line.split(separator) for line in lines], source


def protocol_vocabulary(family: str, benchmark: str) -> Vocabulary:
    """A :class:`Vocabulary` querying the family's names; on VOC21, PC60 and COCO-Object
    class 0 is the background class made of line 0's words."""
    groups, _ = protocol_queries(family, benchmark)
    names = [g[0] for g in groups]
    if benchmark in WITH_BACKGROUND:
        names[0] = BACKGROUND_NAME
        return Vocabulary(tuple(names), tuple(tuple(g) for g in groups), background="words")
    return Vocabulary(tuple(names), tuple(tuple(g) for g in groups))
