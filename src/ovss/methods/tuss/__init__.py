"""TUSS (Yang & Gong, "Tuning-free Universally-Supervised Semantic Segmentation", arXiv 2405.14294).

The open-vocabulary setting is registered as method ``tuss``: SAM level-aware masks, DBA-CLIP
mask embeddings, the zero-shot text classifier and painting (docs/methods.md §1.2-1.4). The GLCC
classifier for the weak, semi- and fully-supervised settings is in :mod:`.glcc`.
"""

from . import ov as _ov  # noqa: F401  (registers "tuss")
