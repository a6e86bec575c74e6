from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from scheduler.job import TERMINAL, TRANSITIONS, IllegalTransition, JobSpec, JobState, transition


def test_every_state_has_a_rule_and_terminal_states_are_final() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for s in TERMINAL - {JobState.NODE_LOST}:
        assert TRANSITIONS[s] == frozenset()
    # A job whose node died may be requeued (retry setting), and only that.
    assert TRANSITIONS[JobState.NODE_LOST] == {JobState.PENDING}


@pytest.mark.parametrize("old,new", list(itertools.product(JobState, JobState)))
def test_transition_allows_exactly_the_table(old: JobState, new: JobState) -> None:
    if new in TRANSITIONS[old]:
        assert transition(1, old, new, reason="why") is new
    else:
        with pytest.raises(IllegalTransition):
            transition(1, old, new, reason="why")


def test_lost_needs_a_reason() -> None:
    with pytest.raises(ValueError):
        transition(1, JobState.RUNNING, JobState.LOST)
    with pytest.raises(ValueError):
        transition(1, JobState.RUNNING, JobState.NODE_LOST)


def test_preempted_jobs_go_back_to_pending_only() -> None:
    assert TRANSITIONS[JobState.PREEMPTED] == {JobState.PENDING, JobState.CANCELLED}


def test_spec_parses_units_and_defaults() -> None:
    s = JobSpec.model_validate({"command": ["python", "train.py"], "time": "4h", "memory": "16G"})
    assert s.time == 4 * 3600 and s.memory == 16 * 1024**3 and s.gpus == 1 and s.name == "train.py"


@pytest.mark.parametrize(
    "command,name",
    [
        (["python", "train.py", "--lr", "3"], "train.py"),
        (["/usr/bin/python3.11", "-u", "scripts/train.py"], "train.py"),
        (["torchrun", "--nproc-per-node", "4", "train.py"], "train.py"),
        (["python", "-m", "pkg.main", "--x"], "pkg.main"),
        (["bash", "run.sh"], "run.sh"),
        (["./sweep"], "sweep"),
        (["python"], "python"),
    ],
)
def test_default_name_is_the_script(command: list[str], name: str) -> None:
    assert JobSpec.model_validate({"command": command}).name == name


@pytest.mark.parametrize("text", ["2", "90", " 30 ", "1.5"])
def test_time_limit_without_a_unit_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="what\\? give a unit"):
        JobSpec.model_validate({"command": ["x"], "time": text})


def test_time_limit_as_a_json_number_is_seconds() -> None:
    assert JobSpec.model_validate({"command": ["x"], "time": 90}).time == 90


def test_spec_string_command_runs_through_the_shell_explicitly() -> None:
    s = JobSpec.model_validate({"command": "echo $HOME"})
    assert s.command == ["/bin/sh", "-c", "echo $HOME"]


@pytest.mark.parametrize(
    "bad",
    [
        {"command": []},
        {"command": [""]},
        {"command": ["x"], "gpus": 0},
        {"command": ["x"], "gpus": -1},
        {"command": ["x"], "gpu": 1},
        {"command": ["x"], "time": "forever"},
        {"command": ["x"], "workdir": "relative/dir"},
        {"command": ["x"], "env": {"A=B": "c"}},
        {"command": ["x"], "name": "bad\nname"},
        {"command": ["x\x00y"]},
    ],
)
def test_spec_rejects_bad_input(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        JobSpec.model_validate(bad)
