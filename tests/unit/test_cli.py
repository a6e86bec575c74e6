"""The command line's parsing: building only the command being run changes nothing
but its start-up time."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize(
    "argv, prog",
    [
        (["submit", "--gpu-count", "2", "--", "true"], "labq submit"),
        (["queue", "--bogus"], "labq queue"),
        (["quota", "set", "ana", "--gpus", "4"], "labq quota set"),
        (["--socket", "/tmp/x.sock", "logs", "7", "--since", "1h"], "labq logs"),
    ],
)
def test_an_option_the_command_does_not_know_is_reported_by_that_command(
    argv: list[str], prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for parser in (build_parser(command_of(argv)), build_parser()):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"usage: {prog} ") and f"\n{prog}: error: unrecognized arguments: " in err, err


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


def test_a_placeholder_no_task_replaces_gets_a_warning_and_the_job_goes_ahead() -> None:
    # `{lrr}` for `{lr}` ran a whole sweep with the literal text, silently (a newcomer).
    from scheduler.cli import build_spec
    from scheduler.present import placeholder_warning

    def warn(*argv: str) -> str | None:
        return placeholder_warning(build_spec(build_parser("submit").parse_args(["submit", *argv]), remote=True)[0])

    assert warn("--sweep", "lr=1,2", "--", "echo", "{lrr}") == (
        "{lrr} is not one of {index}, {array_id}, {lr}: each task gets it as written"
    )
    assert warn("--array", "0-1", "--", "echo", "{idx}") == (
        "{idx} is not one of {index}, {array_id}: each task gets it as written"
    )
    assert "{lrr}" in (warn("--sweep", "lr=1", "--env", "LR={lrr}", "--", "x") or "")
    assert warn("--", "echo", "{index}") == (
        "{index} is replaced only in an array or a sweep (--array, --sweep): this job gets it as written"
    )
    # What a task does replace, a shell's ${HOME}, JSON and Python braces: no warning.
    assert warn("--sweep", "lr=1,2", "--", "sh", "-c", "echo {lr} {index} {array_id} ${HOME}") is None
    assert warn("--", "python", "-c", "print({1: 2}); d = {}") is None
    assert warn("--", "sh", "-c", "echo ${HOME} {name}") is None  # not an array: braces are its own


def test_nodes_and_gpus_per_node_build_the_spec_and_say_what_is_missing(tmp_path: Path) -> None:
    import pytest

    from scheduler.cli import build_spec
    from scheduler.cliparse import build_parser
    from scheduler.console import UsageError
    from scheduler.jobfile import JobFileError, load_job_file

    def spec(*argv: str) -> dict[str, object]:
        return build_spec(build_parser("submit").parse_args(["submit", *argv]), remote=True)[0]

    got = spec("--nodes", "2", "--gpus-per-node", "8", "--gpu-type", "H100", "--constraint", "ib", "--", "x")
    assert (got["nodes"], got["gpus"], got["gpu_type"], got["constraint"]) == (2, 16, "H100", "ib")
    assert spec("--gpus", "16", "--gpus-per-node", "8", "--", "x")["nodes"] == 2  # worked out
    with pytest.raises(UsageError, match="--gpus-per-node goes with --nodes"):
        spec("--gpus-per-node", "2", "--", "x")
    with pytest.raises(UsageError, match="--gpus 8 disagrees with --nodes 3 x --gpus-per-node 2"):
        spec("--nodes", "3", "--gpus", "8", "--gpus-per-node", "2", "--", "x")
    with pytest.raises(UsageError, match="--nodes needs --gpus-per-node"):
        spec("--nodes", "2", "--", "x")
    job = tmp_path / "job.yaml"
    job.write_text("command: [x]\nnodes: 2\ngpus_per_node: 4\ngpu_type: h100\nconstraint: [ib]\n")
    data, _ = load_job_file(job)
    assert data["gpus"] == 8 and data["nodes"] == 2 and "gpus_per_node" not in data
    job.write_text("command: [x]\nnodes: 2\ngpus_per_node: 4\ngpus: 6\n")
    with pytest.raises(JobFileError, match="line 3: gpus 6 disagrees with nodes x gpus_per_node .8."):
        load_job_file(job)


def test_quota_set_takes_overall_and_per_type_caps_and_none_clears_both() -> None:
    from scheduler.cli import cmd_quota
    from scheduler.cliparse import build_parser

    sent: list[dict[str, object]] = []

    class Fake:
        def set_quota(self, user: str, fields: dict[str, object]) -> dict[str, object]:
            sent.append(fields)
            return {"old": {}, "new": fields}

    def run(*argv: str) -> None:
        cmd_quota(Fake(), build_parser("quota").parse_args(["quota", "set", "ana", *argv]))  # type: ignore[arg-type]

    run("--max-gpus", "8,h100:4,a100-80g:2")
    run("--max-gpus", "none")
    assert sent == [{"max_gpus": 8, "max_gpus_per_type": {"h100": 4, "a100-80g": 2}},
                    {"max_gpus": None, "max_gpus_per_type": None}]  # fmt: skip
    with pytest.raises(Exception, match="one overall N at most"):
        run("--max-gpus", "4,8")
