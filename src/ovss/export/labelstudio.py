"""Label Studio pre-annotations (https://labelstud.io/guide/predictions): one task per image with
``data.image`` and ``predictions[0].result``: one ``brushlabels`` region per instance, its mask in
Label Studio's brush RLE. Also writes the matching labelling config (``labeling_config.xml``).

The brush RLE is the bit-packed run-length code of thi.ng's rle-pack, which Label Studio's brush
tool decodes: over the image's RGBA bytes (row-major, 4 per pixel, all 255 inside the mask) it
writes a 32-bit value count, the word size minus 1 (5 bits), four run-length field sizes minus 1
(4 bits each), then chunks of: 1 bit (1 = a run of one repeated word, 0 = literal words), 2 bits
choosing a field size, the count minus 1 in that many bits, and the word(s); zero bits pad the
last byte.
"""

from __future__ import annotations

from typing import Any, ClassVar
from xml.sax.saxutils import quoteattr

import numpy as np

from .base import Exporter, ExportItem, class_colours, write_compact_json

WORD_BITS = 8
RUN_FIELD_BITS = (3, 4, 8, 16)  # Label Studio's choice of run-length field sizes


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """A boolean ``(H, W)`` mask as Label Studio brush RLE bytes."""
    return brush_rle(mask, (0, 0), mask.shape)


def brush_rle(crop: np.ndarray, offset: tuple[int, int], image_size: tuple[int, int]) -> list[int]:
    """Brush RLE of an image that is empty except for ``crop`` (bool) placed at ``offset`` (x, y).

    The runs come from the crop's row segments, so the cost follows the object's box, not the
    image (the RGBA stream of a 12 MP photo is 48 M values per object).
    """
    height, width = image_size
    total = height * width * 4
    x0, y0 = offset
    edges = np.diff(np.pad(crop.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(edges == 1)  # row-major, so starts and ends pair up
    _, ends = np.nonzero(edges == -1)
    begin = (rows + y0) * width + x0 + starts
    finish = (rows + y0) * width + x0 + ends
    joined = np.flatnonzero(begin[1:] != finish[:-1])  # a segment reaching the right edge may go on below
    begin = np.r_[begin[:1], begin[1:][joined]]
    finish = np.r_[finish[:-1][joined], finish[-1:]]
    cuts = np.r_[0, np.column_stack([begin, finish]).ravel(), height * width] * 4
    lengths = np.diff(cuts)
    values = np.resize([0, 255], lengths.size)  # runs alternate outside / inside, starting outside
    keep = lengths > 0
    return _pack(total, values[keep], lengths[keep])


def _pack(total: int, values: np.ndarray, lengths: np.ndarray) -> list[int]:
    bits = [f"{total:032b}", f"{WORD_BITS - 1:05b}", *(f"{b - 1:04b}" for b in RUN_FIELD_BITS)]
    longest = 1 << RUN_FIELD_BITS[-1]
    for value, length in zip(values.tolist(), lengths.tolist()):
        word = f"{value:0{WORD_BITS}b}"
        while length > 0:
            chunk = min(length, longest)
            field = next(k for k, b in enumerate(RUN_FIELD_BITS) if chunk <= 1 << b)
            bits.append(f"1{field:02b}{chunk - 1:0{RUN_FIELD_BITS[field]}b}{word}")
            length -= chunk
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return np.packbits(np.frombuffer(stream.encode("ascii"), dtype=np.uint8) - ord("0")).tolist()


def _hex(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


class LabelStudioExporter(Exporter):
    name: ClassVar[str] = "labelstudio"
    description: ClassVar[str] = "Label Studio brush pre-annotations: labelstudio/tasks.json + labeling_config.xml"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tasks: list[dict[str, Any]] = []

    def add(self, item: ExportItem) -> None:
        self.place_image(item, self.folder / "images")
        h, w = item.result.size
        s = self.settings
        regions, scores = [], []
        for k, inst in enumerate(item.instances(s)):
            region: dict[str, Any] = {
                "id": f"{len(self.tasks)}_{k}",
                "type": "brushlabels",
                "from_name": s.labelstudio_from_name,
                "to_name": s.labelstudio_to_name,
                "original_width": w,
                "original_height": h,
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": brush_rle(inst.crop, inst.bbox[:2], (h, w)),
                    "brushlabels": [inst.class_name],
                },
            }
            if inst.score is not None:
                region["score"] = round(inst.score, 6)
                scores.append(inst.score)
            regions.append(region)
        prediction: dict[str, Any] = {"model_version": "ovss", "result": regions}
        if scores:
            prediction["score"] = round(float(np.mean(scores)), 6)
        self.tasks.append({"data": {"image": s.labelstudio_url + item.file_name}, "predictions": [prediction]})

    def finish(self) -> None:
        from ..io import atomic_path

        write_compact_json(self.folder / "tasks.json", self.tasks)
        colours, _ = class_colours(self.class_names)
        labels = "".join(
            f"    <Label value={quoteattr(n)} background={quoteattr(_hex(colours[k]))}/>\n"
            for k, n in enumerate(self.class_names)
            if k >= self.skip
        )
        s = self.settings
        config = (
            "<View>\n"
            f'  <Image name={quoteattr(s.labelstudio_to_name)} value="$image" zoom="true"/>\n'
            f"  <BrushLabels name={quoteattr(s.labelstudio_from_name)} toName={quoteattr(s.labelstudio_to_name)}>\n"
            f"{labels}"
            "  </BrushLabels>\n"
            "</View>\n"
        )
        with atomic_path(self.folder / "labeling_config.xml") as tmp:
            tmp.write_text(config)
