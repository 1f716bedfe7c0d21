"""The shipped protocol name files: provenance (git blob ids), the families' own parsing rule,
and the query counts the official code sees."""

from __future__ import annotations

import hashlib
import re
from importlib import resources

import pytest

from ovss.data.protocol_names import (
    BENCHMARK_FILES,
    NAME_SOURCES,
    protocol_names,
    protocol_queries,
    protocol_vocabulary,
)
from ovss.errors import InputError
from ovss.vocab import BACKGROUND_WORDS_26

NAMES = resources.files("ovss.data").joinpath("names")


def _recorded_blobs() -> dict[str, str]:
    text = NAMES.joinpath("SOURCES.md").read_text()
    return dict(re.findall(r"\| `([a-z_]+/cls_[a-z0-9_]+\.txt)` \| `([0-9a-f]{40})` \|", text))


def test_every_shipped_file_has_its_recorded_git_blob_id():
    recorded = _recorded_blobs()
    shipped = {f"{d.name}/{f.name}" for d in NAMES.iterdir() if d.is_dir() for f in d.iterdir()}
    assert shipped == set(recorded) and len(shipped) >= 40
    for name, blob in recorded.items():
        data = NAMES.joinpath(name).read_bytes()
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob, name


def _get_cls_idx(path, separator):
    """The families' own parser: readlines(), split on the separator, drop line breaks."""
    with open(path) as f:
        name_sets = f.readlines()
    return [[n.replace("\n", "") for n in line.split(separator)] for line in name_sets]


@pytest.mark.parametrize("family", list(NAME_SOURCES))
def test_queries_are_split_as_the_family_splits_them(family):
    src = NAME_SOURCES[family]
    for benchmark, stem in BENCHMARK_FILES.items():
        path = NAMES.joinpath(src.folder, f"cls_{stem}.txt")
        if not path.is_file():
            with pytest.raises(InputError, match="ships no"):
                protocol_names(family, benchmark)
            continue
        groups, source = protocol_queries(family, benchmark)
        with resources.as_file(path) as real:
            assert groups == _get_cls_idx(real, src.separator), (family, benchmark)
        assert source == f"{src.repository}@{src.commit}:{src.path}/cls_{stem}.txt"


def test_sclip_voc21_and_coco_object_query_counts():
    vocab = protocol_vocabulary("sclip", "voc21")
    assert vocab.num_classes == 21 and len(vocab.queries) == 56 and vocab.has_background
    assert vocab.synonyms[0] == BACKGROUND_WORDS_26  # line 0 is the background line
    person = vocab.names.index("person")
    assert len(vocab.synonyms[person]) == 7 and len(vocab.synonyms[vocab.names.index("television monitor")]) == 5
    coco = protocol_vocabulary("naclip", "coco_object")
    assert coco.num_classes == 81 and len(coco.queries) == 113
    voc20 = protocol_vocabulary("sclip", "voc20")
    assert not voc20.has_background and voc20.num_classes == 20


def test_families_differ_where_their_files_differ():
    assert protocol_names("naclip", "voc21")[0] == protocol_names("sclip", "voc21")[0]
    clear = protocol_vocabulary("clearclip", "voc21")
    assert clear.synonyms[0] == ("background",) and len(clear.queries) == 21
    proxy, _ = protocol_queries("proxyclip", "voc21")
    assert proxy[0][:2] == ["sky", "wall"] and sum(map(len, proxy)) == 46


def test_unknown_family_or_benchmark_is_one_line():
    with pytest.raises(InputError, match="choose one of"):
        protocol_names("nosuch", "voc21")
    with pytest.raises(InputError, match="choose one of"):
        protocol_names("sclip", "voc22")
