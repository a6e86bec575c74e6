"""SVG snapshots of every screen at 80x24 and 160x48, fixed clock, fake API.

Update after an intended change with: pytest tests/ui --snapshot-update
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from tui.app import LabqApp
from tui.sample import NOW, FakeBackend

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


def app(**kw: Any) -> LabqApp:
    return LabqApp(FakeBackend(**kw), clock=lambda: NOW, auto_refresh=False)


def answered(app: Any) -> bool:
    """The first poll has come back, with data or with an error."""
    return bool(app.polls or app.data.error)


def then(*keys: str, wait: float = 0.0) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def settle(pilot: Pilot[None]) -> None:
        # A loaded machine can leave the first poll's answer still in flight after a few
        # pauses; wait for it by name (bounded) and then for the messages it causes.
        deadline = time.monotonic() + 20
        while not answered(pilot.app) and time.monotonic() < deadline:
            await pilot.app.workers.wait_for_complete()
            await pilot.pause(0.01)
        for _ in range(3):
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        if keys:
            await pilot.press(*keys)
        if wait:
            await pilot.pause(wait)
        await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_queue(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(), terminal_size=size, run_before=then())


@pytest.mark.parametrize("size", SIZES)
def test_job_with_log(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(), terminal_size=size, run_before=then("enter"))


@pytest.mark.parametrize("size", SIZES)
def test_gpus_64_on_8_nodes(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(nodes=8, per=8, jobs=40), terminal_size=size, run_before=then("2"))


@pytest.mark.parametrize("size", SIZES)
def test_gpus_one_gpu(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(nodes=1, per=1, jobs=2), terminal_size=size, run_before=then("2"))


@pytest.mark.parametrize("size", SIZES)
def test_team(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(), terminal_size=size, run_before=then("3"))


@pytest.mark.parametrize("size", SIZES)
def test_quotas_admin(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(), terminal_size=size, run_before=then("4"))


@pytest.mark.parametrize("size", SIZES)
def test_quotas_read_only_for_others(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(admin=False), terminal_size=size, run_before=then("4"))


@pytest.mark.parametrize("size", SIZES)
def test_submit_with_preview(snap: Any, size: tuple[int, int], monkeypatch: Any) -> None:
    monkeypatch.chdir("/tmp")  # the form starts in the current directory
    keys = ("n", *"python train.py --epochs 3")

    async def run_before(pilot: Pilot[None]) -> None:
        await then(*keys)(pilot)
        for box in pilot.app.screen.query(Input):
            box.cursor_blink = False  # a blinking cursor is on or off at random in a snapshot
        # The preview is asked 0.4 s after the last key; wait until it has answered.
        for _ in range(50):
            await pilot.pause(0.1)
            await pilot.app.workers.wait_for_complete()
            text = str(pilot.app.screen.query_one("#preview").render())
            # The scheduler's answer, not the form's own state ("fix the fields", "asking").
            if "asking" not in text and "fix the fields" not in text and text.strip():
                break
        await pilot.pause()

    assert snap(app(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_empty_cluster(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(nodes=0, per=1, jobs=0), terminal_size=size, run_before=then())


@pytest.mark.parametrize("size", SIZES)
def test_daemon_down(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(down=True), terminal_size=size, run_before=then())


@pytest.mark.parametrize("size", SIZES)
def test_help(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(), terminal_size=size, run_before=then("question_mark"))


@pytest.mark.parametrize("size", SIZES)
def test_help_scrolled_to_its_end(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(), terminal_size=size, run_before=then("question_mark", "end"))


@pytest.mark.parametrize("size", SIZES)
def test_cancel_dialog(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(), terminal_size=size, run_before=then("c"))


@pytest.mark.parametrize("size", SIZES)
def test_state_picker(snap: Any, size: tuple[int, int]) -> None:
    assert snap(app(), terminal_size=size, run_before=then("f"))


@pytest.mark.parametrize("size", SIZES)
def test_someone_elses_job(snap: Any, size: tuple[int, int]) -> None:
    """Details shown, the log said to be private, no Cancel or Resubmit offered."""
    assert snap(app(me="zed", admin=False), terminal_size=size, run_before=then("enter"))
