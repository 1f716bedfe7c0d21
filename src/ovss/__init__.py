"""ovss: open-vocabulary semantic segmentation with vision foundation models."""

__version__ = "0.1.0"

from .api import Segmenter  # noqa: E402
from .errors import InputError, ModelLoadError, OvssError  # noqa: E402
from .methods import available_methods  # noqa: E402
from .result import SegResult  # noqa: E402
from .vocab import Vocabulary, build_vocabulary, parse_classes  # noqa: E402

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
    "parse_classes",
]
