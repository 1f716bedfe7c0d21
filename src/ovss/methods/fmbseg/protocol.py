"""FMbSeg's protocol family: its test-time defaults live in FMbSegSettings (FMbSeg has no public
protocol); the benchmarks' background handling follows the SCLIP family."""

from __future__ import annotations

from ...protocols import register_family

register_family(
    "fmbseg",
    {
        "source": "docs/methods.md §3.8 and §3.9 (U32-U35, our choice); background: docs/reference-protocol.md §5.4",
        "background": {"default": "none", "voc21": "words", "coco_object": "words", "pc60": ["background"]},
        "metric": "union",
    },
)
