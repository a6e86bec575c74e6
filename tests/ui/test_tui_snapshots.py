"""SVG snapshots of every screen at 80x24 and 160x48, fixed clock, fake API.

Update after an intended change with: pytest tests/ui --snapshot-update
"""

from __future__ import annotations

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


def then(*keys: str, wait: float = 0.0) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def run_before(pilot: Pilot[None]) -> None:
        for _ in range(3):
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
        if keys:
            await pilot.press(*keys)
        if wait:
            await pilot.pause(wait)
        for _ in range(3):
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_queue(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(), terminal_size=size, run_before=then())


@pytest.mark.parametrize("size", SIZES)
def test_job_with_log(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(), terminal_size=size, run_before=then("enter"))


@pytest.mark.parametrize("size", SIZES)
def test_gpus_64_on_8_nodes(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(nodes=8, per=8, jobs=40), terminal_size=size, run_before=then("2"))


@pytest.mark.parametrize("size", SIZES)
def test_gpus_one_gpu(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(nodes=1, per=1, jobs=2), terminal_size=size, run_before=then("2"))


@pytest.mark.parametrize("size", SIZES)
def test_team(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(), terminal_size=size, run_before=then("3"))


@pytest.mark.parametrize("size", SIZES)
def test_quotas_admin(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(), terminal_size=size, run_before=then("4"))


@pytest.mark.parametrize("size", SIZES)
def test_quotas_read_only_for_others(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(admin=False), terminal_size=size, run_before=then("4"))


@pytest.mark.parametrize("size", SIZES)
def test_submit_with_preview(snap_compare: Any, size: tuple[int, int], monkeypatch: Any) -> None:
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

    assert snap_compare(app(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_empty_cluster(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(nodes=0, per=1, jobs=0), terminal_size=size, run_before=then())


@pytest.mark.parametrize("size", SIZES)
def test_daemon_down(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(down=True), terminal_size=size, run_before=then())


@pytest.mark.parametrize("size", SIZES)
def test_help(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(), terminal_size=size, run_before=then("question_mark"))


@pytest.mark.parametrize("size", SIZES)
def test_help_scrolled_to_its_end(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(), terminal_size=size, run_before=then("question_mark", "end"))


@pytest.mark.parametrize("size", SIZES)
def test_cancel_dialog(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(), terminal_size=size, run_before=then("c"))


@pytest.mark.parametrize("size", SIZES)
def test_state_picker(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(), terminal_size=size, run_before=then("f"))


@pytest.mark.parametrize("size", SIZES)
def test_someone_elses_job(snap_compare: Any, size: tuple[int, int]) -> None:
    """Details shown, the log said to be private, no Cancel or Resubmit offered."""
    assert snap_compare(app(me="zed", admin=False), terminal_size=size, run_before=then("enter"))
