"""TUSS (Yang & Gong, arXiv 2405.14294): tuning-free universally-supervised segmentation (METHODS.md §1)."""
