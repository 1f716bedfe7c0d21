"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations


class OvssError(Exception):
    """A problem with the user's input or set-up, shown as one line (CLI exit code 2)."""


class InputError(OvssError, ValueError):
    """Bad input: an unreadable image, an empty class list, an unknown name."""


class ModelLoadError(OvssError):
    """A model could not be loaded: wrong kind, missing files, no network."""
