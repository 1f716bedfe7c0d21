"""Where the real data and the one real backbone live: beside the checkout (../shared), or wherever
OVSS_EVALDATA points (its parent then holds models/). One home for every test and bench script
(tests/conftest.py puts bench/ on the import path)."""

from __future__ import annotations

import os
from pathlib import Path

EVALDATA = Path(os.environ.get("OVSS_EVALDATA", Path(__file__).resolve().parents[2] / "shared" / "evaldata"))
ADE_IMAGES = EVALDATA / "ade20k_sceneparsing" / "sampleData" / "images"
REAL_DINO = EVALDATA.parent / "models" / "dinov2-small-imgfocus"
