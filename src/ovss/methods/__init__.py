"""Methods, registered by name. ``available_methods()`` lists them; ``get_method(name)`` builds one."""

from . import corrclip as _corrclip  # noqa: F401
from . import dense_clip as _dense_clip  # noqa: F401  (registers the training-free dense-CLIP methods)
from . import fmbseg as _fmbseg  # noqa: F401
from . import pixelclip as _pixelclip  # noqa: F401
from . import proxyclip as _proxyclip  # noqa: F401
from . import sam3 as _sam3  # noqa: F401
from . import sseg as _sseg  # noqa: F401
from . import tuss as _tuss  # noqa: F401
from .base import Method, MethodOutput, MethodSpec, available_methods, get_method_spec, register_method

__all__ = ["Method", "MethodOutput", "MethodSpec", "available_methods", "get_method_spec", "register_method"]
