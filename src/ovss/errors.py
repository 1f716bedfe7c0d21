"""User-facing errors: one line that names the problem and the fix.

An error about one setting or argument carries it as ``option`` (the API keyword, e.g.
``"pamr_iterations"``); the library shows it as ``pamr_iterations=``, the CLI as the flag that
sets it (``--pamr``), so each message has one wording for both.
"""

from __future__ import annotations


class OvssError(Exception):
    """A problem with the user's input or set-up, shown as one line (CLI exit code 2)."""

    def __init__(self, message: str = "", option: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.option = option

    def __str__(self) -> str:
        return f"{self.message} ({self.option}=...)" if self.option else self.message

    def with_flag(self, flag: str | None) -> str:
        """The message for the command line, naming the flag instead of the keyword."""
        return f"{self.message} ({flag})" if flag else str(self)


class InputError(OvssError, ValueError):
    """Bad input: an unreadable image, an empty class list, an unknown name."""


class ModelLoadError(OvssError):
    """A model could not be loaded: wrong kind, missing files, no network."""
