"""The README's examples run as written: every ``ovss`` command in it parses, and the ones that need
only images run, with ``tiny-random`` put where the README names a real model (no weights here)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from ovss.cli import _parse, main

README = Path(__file__).resolve().parents[1] / "README.md"
MODEL_ID = re.compile(r"^(openai|facebook)/[\w.-]+$")
# commands that read data or runs this test does not make: parsed, not run
NEEDS_DATA = ("eval", "leaderboard", "train", "fit", "pseudo-label", "convert", "data", "demo")


def readme_commands() -> list[str]:
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("torchrun"):
                line = line.split(" -m ovss.cli ", 1)[-1]
                line = "ovss " + line
            if line.startswith("ovss "):
                commands.append(line)
    return commands


def _argv(command: str, photos: Path) -> list[str]:
    argv = shlex.split(command)[1:]
    out = []
    for arg in argv:
        if MODEL_ID.match(arg) or arg == "...":
            arg = "tiny-random"
        elif arg in ("photos/", "train/"):
            arg = str(photos)
        elif arg in ("photo.jpg", "img.jpg", "new.jpg", "examples/chelsea.jpg"):
            arg = str(photos / "a.jpg")
        out.append(arg)
    return out


def help_commands() -> list[str]:
    """The examples printed by ``ovss --help``, ``ovss masks --help`` and ``ovss label --help``."""
    from ovss import cli, labelling
    from ovss.masks import cli as masks_cli

    lines = []
    for text in (cli.DESCRIPTION, masks_cli.DESCRIPTION, labelling.DESCRIPTION):
        # the indented example lines (prose such as "ovss labels every pixel..." is not indented)
        lines += [line.strip().split("  ")[0] for line in text.splitlines() if line.startswith("  ovss ")]
    return lines


@pytest.mark.parametrize("command", help_commands())
def test_every_help_example_parses(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    argv = _argv(command, tmp_path)
    args = _parse(argv)
    assert args is not None and callable(args.func)


def test_the_readme_has_commands():
    assert len(readme_commands()) >= 25


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    argv = _argv(command, tmp_path)
    if argv in (["--help"], ["-h"]):
        return
    args = _parse(argv)  # argparse exits 2 on an unknown option: the README would be wrong
    assert args is not None and callable(args.func)


RUN = [
    c
    for c in readme_commands()
    if c.split()[1] not in NEEDS_DATA and "--checkpoint" not in c and "--refine" not in c and "@" not in c
]


@pytest.mark.parametrize("command", RUN)
def test_readme_commands_run(command, tmp_path, evaldata, capsys, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "chelsea.jpg", photos / "a.jpg")
    monkeypatch.chdir(tmp_path)
    argv = _argv(command, photos)
    if argv[0] == "masks" and "--generator" not in argv:
        argv += ["--set", "points_per_side=4"]  # keep the random SAM quick
    argv = [a for a in argv if a != "--device" and a != "cuda"]
    try:
        code = main(argv)
    except SystemExit as e:  # --help
        code = e.code
    err = capsys.readouterr().err
    assert code == 0, f"{command}\n{err}"
    assert "Traceback" not in err
