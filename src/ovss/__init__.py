"""ovss: open-vocabulary semantic segmentation with vision foundation models."""

from ._version import __version__
from .api import Segmenter
from .errors import InputError, ModelLoadError, OvssError
from .labelling import label
from .methods import available_methods
from .result import SegResult
from .vocab import Vocabulary, build_vocabulary, parse_classes

__all__ = [
    "InputError",
    "ModelLoadError",
    "OvssError",
    "SegResult",
    "Segmenter",
    "Vocabulary",
    "__version__",
    "available_methods",
    "build_vocabulary",
    "label",
    "parse_classes",
]
