"""The command line's parsing: building only the command being run changes nothing
but its start-up time."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from scheduler.cliparse import COMMAND_NAMES, build_parser, command_of
from tests.conftest import REPO


def test_the_command_names_are_the_parsers_commands() -> None:
    full = build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == COMMAND_NAMES


@pytest.mark.parametrize(
    "argv",
    [
        ["queue"],
        ["queue", "--all", "--json"],
        ["--socket", "/tmp/x.sock", "submit", "--gpus", "2", "--time", "4h", "--", "python", "train.py"],
        ["--url=https://h:1", "show", "3"],
        ["quota", "set", "ana", "--max-gpus", "4"],
        ["node", "drain", "gpu-1"],
        ["token", "create", "ana", "--expires", "90d"],
        ["logs", "7", "-f"],
        ["tui", "--read-only"],
    ],
)
def test_parsing_with_only_the_command_built_is_the_same(argv: list[str]) -> None:
    assert command_of(argv) == next(a for a in argv if a in COMMAND_NAMES)
    assert build_parser(command_of(argv)).parse_args(argv) == build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [[], ["--help"], ["-x", "queue"], ["qeueu"], ["--socket"]])
def test_anything_else_gets_the_whole_parser(argv: list[str]) -> None:
    assert command_of(argv) is None


def test_a_command_imports_only_what_it_needs() -> None:
    """What `labq queue` imports before it talks to the daemon: no dataclasses, no
    config, no uuid (each cost a few ms of every command's ~100 ms budget)."""
    code = (
        "import sys, scheduler.cli, scheduler.cliparse as c; c.build_parser('queue').parse_args(['queue']);"
        "print(' '.join(sorted(sys.modules)))"
    )
    mods = set(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout.split())
    assert "scheduler.cli" in mods
    assert not mods & {
        "dataclasses", "inspect", "uuid", "shutil", "scheduler.config", "ray", "pydantic", "textual", "yaml"
    }


def test_array_and_sweep_options_build_the_spec_and_refuse_both() -> None:
    import pytest

    from scheduler.cli import build_spec
    from scheduler.cliparse import build_parser
    from scheduler.console import UsageError

    def spec(*argv: str) -> dict[str, object]:
        return build_spec(build_parser("submit").parse_args(["submit", *argv]), remote=True)[0]

    assert spec("--array", "0-9%2", "--", "x", "{index}")["array"] == "0-9%2"
    got = spec("--sweep", "lr=1,2", "--sweep", "bs=3", "--max-running", "1", "--", "x")
    assert got["sweep"] == {"lr": ["1", "2"], "bs": ["3"]} and got["max_running"] == 1
    with pytest.raises(UsageError, match="not both"):
        spec("--array", "5-9", "--sweep", "lr=1,2", "--", "x")
    with pytest.raises(UsageError, match="index 3 is given twice"):
        spec("--array", "1-5,3", "--", "x")
