"""``python -m ovss ...`` (and ``torchrun -m ovss ...``): the same as the ``ovss`` command."""

from .cli import _entry

_entry()
