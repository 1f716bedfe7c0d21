"""Running the ``ovss`` command in-process from tests, and reading its error lines."""

from __future__ import annotations

from ovss.cli import main


def run(capsys, *argv):
    """(exit code, stdout, stderr) of ``ovss ARGV``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ovss: error:")]
