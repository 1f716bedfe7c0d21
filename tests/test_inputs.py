"""Class lists and images: every accepted form, and one-line errors for bad ones."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ovss.errors import InputError
from ovss.io import atomic_path, find_images, load_image
from ovss.vocab import BACKGROUND_WORDS_26, build_vocabulary, parse_classes


def test_parse_classes_separators_and_synonyms():
    assert parse_classes("cat; sofa, couch; potted  plant") == [["cat"], ["sofa", "couch"], ["potted plant"]]
    assert parse_classes("cat\nsofa,couch\n\n") == [["cat"], ["sofa", "couch"]]
    assert parse_classes(["cat", "sofa, couch"]) == [["cat"], ["sofa", "couch"]]


@pytest.mark.parametrize("bad", ["", " ;; , ;", ";", ",,,", []])
def test_empty_class_lists_are_refused(bad):
    with pytest.raises(InputError, match="no class names"):
        parse_classes(bad)


@pytest.mark.parametrize("bad", ["cat; Cat", "cat; dog, cat", "sofa, sofa"])
def test_duplicate_names_are_refused(bad):
    with pytest.raises(InputError, match="given twice"):
        parse_classes(bad)


def test_vocabulary_background_modes():
    v = build_vocabulary("cat; sofa, couch", "words")
    assert v.names == ("background", "cat", "sofa")
    assert v.queries[: len(BACKGROUND_WORDS_26)] == BACKGROUND_WORDS_26
    assert v.query_class[-3:] == (1, 2, 2)
    t = build_vocabulary("cat", "threshold")
    assert t.names == ("background", "cat") and t.queries == ("cat",) and t.query_class == (1,)
    c = build_vocabulary("cat", "words:floor, wall")
    assert c.synonyms[0] == ("floor", "wall")
    n = build_vocabulary("cat; dog", None)
    assert n.names == ("cat", "dog") and not n.has_background
    with pytest.raises(InputError, match="both a class"):
        build_vocabulary("background; cat", "words")
    with pytest.raises(InputError, match="also a class"):
        build_vocabulary("sky; cat", "words")
    with pytest.raises(InputError, match="unknown background mode"):
        build_vocabulary("cat", "maybe")


def _png(path, mode, array):
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_image_forms(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert load_image(rgb).shape == (20, 30, 3)
    assert load_image(Image.fromarray(rgb)).tolist() == rgb.tolist()
    grey = load_image(_png(tmp_path / "g.png", "L", rgb[..., 0]))
    assert grey.shape == (20, 30, 3) and (grey[..., 0] == rgb[..., 0]).all()
    rgba = np.dstack([rgb, np.full((20, 30), 255, np.uint8)])
    assert (load_image(_png(tmp_path / "a.png", "RGBA", rgba)) == rgb).all()
    deep = rgb[..., 0].astype(np.uint16) * 257
    Image.fromarray(deep).save(tmp_path / "d.png")  # 16-bit greyscale
    assert (load_image(tmp_path / "d.png")[..., 0] == rgb[..., 0]).all()
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (20, 30, 3)
    assert load_image(rgb.astype(np.float32) / 255.0).shape == (20, 30, 3)


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((10, 30, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (30, 10, 3)


def _bytes(path, data):
    path.write_bytes(data)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(path, width, height):
    """A small file whose PNG header announces ``width x height`` pixels (its data is truncated)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return _bytes(path, b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.jpg", "no such file"),
        (lambda d: _bytes(d / "empty.jpg", b""), "empty"),
        (lambda d: _bytes(d / "bad.jpg", b"\xff\xd8\xff\xe0garbage" * 10), "not a readable image"),
        (lambda d: _png(d / "one.png", "RGB", np.zeros((1, 1, 3), np.uint8)), "at least"),
        (lambda d: _png_header_only(d / "huge.png", 20000, 20000), "MP limit"),
        (lambda d: d, "is a directory"),
    ],
)
def test_bad_images_give_one_line_errors(tmp_path, make, message):
    with pytest.raises(InputError, match=message) as info:
        load_image(make(tmp_path))
    assert "\n" not in str(info.value)


def test_truncated_jpeg_is_refused(tmp_path, evaldata):
    data = (evaldata / "ade20k_sceneparsing/sampleData/images/ADE_val_00000001.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="not a readable image"):
        load_image(tmp_path / "cut.jpg")


def test_find_images(tmp_path):
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "b.png", "L", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "a.png", "L", np.zeros((4, 4), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._a.png").write_bytes(b"\0\5\26\7")  # macOS metadata beside a copied image
    (tmp_path / ".a.png.host-1.x1.part.png").write_bytes(b"")  # what a killed write leaves
    assert [p.name for p in find_images([tmp_path])] == ["a.png", "b.png"]
    _png(tmp_path / ".party.png", "L", np.zeros((4, 4), np.uint8))  # a legal name, not a scratch file
    assert [p.name for p in find_images([tmp_path])] == [".party.png", "a.png", "b.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        find_images([tmp_path / "empty"])


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
