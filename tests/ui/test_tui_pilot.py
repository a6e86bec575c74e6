"""The UI's flows, driven with Textual's pilot against the fake API (fixed data)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input, RichLog, Static

from tui.app import LabqApp
from tui.dialogs import Confirm
from tui.job import JobScreen
from tui.queue import QueueScreen
from tui.quotas import QuotasScreen, parse_field
from tui.sample import NOW, FakeBackend
from tui.submit import SubmitScreen, form_to_spec, spec_to_form
from tui.widgets import SyncTable


def run(fake: FakeBackend, body: Callable[[LabqApp, Pilot[None]], Awaitable[None]], **kw: Any) -> LabqApp:
    app = LabqApp(fake, clock=lambda: NOW, auto_refresh=False, **kw)

    async def go() -> None:
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot)
            await body(app, pilot)

    asyncio.run(go())
    return app


async def settle(pilot: Pilot[None]) -> None:
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


def rows(app: LabqApp, table_id: str = "#jobs") -> list[tuple[str, ...]]:
    t = app.screen.query_one(table_id, SyncTable)
    return [t._rows[k] for k in t._order]


def test_queue_shows_active_jobs_in_rank_order_with_reasons_and_eta() -> None:
    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        shown = rows(app)
        states = [r[4] for r in shown]
        assert states == sorted(states, key=lambda s: {"RUNNING": 0, "PENDING": 1}[s])  # no finished ones
        pending = [r for r in shown if r[4] == "PENDING"]
        assert pending and all(r[6] not in ("", "?") for r in pending)  # an ETA each
        assert all(r[8].startswith("resources:") for r in pending)
        assert any("[idle 35m]" in r[8] for r in shown if r[4] == "RUNNING")

    run(FakeBackend(), body)


def test_filter_mine_state_and_text() -> None:
    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("m")
        assert {r[1] for r in rows(app)} == {"ana"}
        await pilot.press("m", "f")  # everyone, every state
        assert {r[4] for r in rows(app)} >= {"SUCCEEDED", "FAILED", "RUNNING", "PENDING"}
        await pilot.press("slash", *"llama")
        assert rows(app) and all("llama" in r[2] for r in rows(app))
        await pilot.press("enter", "escape")
        assert len(rows(app)) > 5 and not app.screen.query_one("#filter", Input).value

    run(FakeBackend(), body)


def test_open_a_job_follow_its_log_and_search() -> None:
    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, JobScreen)
        assert len(screen.lines) == 200 and screen.follow
        fields = str(screen.query_one("#fields", Static).render())
        assert f"job {screen.job_id}" in fields and "history" in fields
        await pilot.press("slash", *"nan", "enter")
        assert screen.pattern == "nan" and not screen.follow
        bar = str(screen.query_one("#logbar", Static).render())
        assert "'nan': 1 line" in bar
        await pilot.press("w")
        assert screen.wrap and screen.query_one("#log", RichLog).wrap
        await pilot.press("s")
        assert screen.follow
        await pilot.press("escape", "escape")  # clear the search, then back
        assert isinstance(app.screen, QueueScreen)

    run(FakeBackend(), body)


def test_cancel_asks_first_and_only_yes_cancels() -> None:
    fake = FakeBackend()

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        first = int(rows(app)[0][0])
        await pilot.press("c")
        assert isinstance(app.screen, Confirm)
        await pilot.press("n")
        await settle(pilot)
        assert fake.cancelled == []
        await pilot.press("c")
        await pilot.press("y")
        await settle(pilot)
        assert fake.cancelled == [first]

    run(fake, body)


def test_submit_checks_as_you_type_previews_and_submits() -> None:
    fake = FakeBackend()

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("n")
        screen = app.screen
        assert isinstance(screen, SubmitScreen)
        await pilot.press(*"python train.py --lr 3e-4")
        gpus = screen.query_one("#f-gpus", Input)
        gpus.value = "zero"
        await pilot.pause()
        assert "whole number" in str(screen.query_one("#e-gpus", Static).render())
        gpus.value = "4"
        await pilot.pause(0.6)
        await settle(pilot)
        preview = str(screen.query_one("#preview", Static).render())
        assert "would wait" in preview and "largest free block is 1" in preview
        gpus.value = "1"
        await pilot.pause(0.6)
        await settle(pilot)
        assert "starts now on gpu-node-1" in str(screen.query_one("#preview", Static).render())
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert not isinstance(app.screen, SubmitScreen)

    run(fake, body)
    assert len(fake.submitted) == 1
    spec = fake.submitted[0]
    assert spec["command"] == ["python", "train.py", "--lr", "3e-4"] and spec["gpus"] == 1
    assert "PATH" in spec["env"]  # inherited like `labq submit` does


def test_a_refused_submission_keeps_the_form_and_says_why() -> None:
    fake = FakeBackend()

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("n", *"python x.py")
        app.screen.query_one("#f-gpus", Input).value = "16"
        await pilot.pause(0.6)
        await settle(pilot)
        assert "would be refused" in str(app.screen.query_one("#preview", Static).render())
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert isinstance(app.screen, SubmitScreen)
        assert "largest node has 8" in str(app.screen.query_one("#preview", Static).render())

    run(fake, body)
    assert fake.submitted == []


def test_admin_edits_a_quota() -> None:
    fake = FakeBackend()

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("4")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, QuotasScreen) and screen.editable
        box = screen.query_one("#q-max_gpus", Input)
        box.value = "-3"
        await pilot.pause()
        assert "whole number" in str(screen.query_one("#formerror", Static).render())
        box.value = "6"
        await pilot.press("ctrl+s")
        await settle(pilot)

    run(fake, body)
    assert fake.quota_changes == [("ana", {"max_gpus": 6})]


def test_non_admin_sees_quotas_read_only() -> None:
    fake = FakeBackend(admin=False)

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("4")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, QuotasScreen) and not screen.editable
        assert screen.query_one("#q-shares", Input).disabled
        assert "only admins" in str(screen.query_one("#formerror", Static).render())
        await pilot.press("ctrl+s")
        await settle(pilot)

    run(fake, body)
    assert fake.quota_changes == []


def test_daemon_going_away_keeps_the_last_values_marked_stale() -> None:
    fake = FakeBackend()

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        before = rows(app)
        fake.down = True
        app.poll_now()
        await settle(pilot)
        status = str(app.screen.query_one("#status", Static).render())
        assert "no labq daemon" in status and "showing values from" in status
        assert rows(app) == before
        fake.down = False
        app.poll_now()
        await settle(pilot)
        assert "no labq daemon" not in str(app.screen.query_one("#status", Static).render())

    run(fake, body)


def test_read_only_hides_every_action() -> None:
    fake = FakeBackend()

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        footer_actions = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert "new_job" not in footer_actions and "cancel" not in footer_actions
        await pilot.press("c", "n")
        await settle(pilot)
        assert isinstance(app.screen, QueueScreen)

    run(fake, body, read_only=True)
    assert fake.cancelled == [] and fake.submitted == []


def test_keys_can_be_remapped_by_binding_id() -> None:
    fake = FakeBackend()

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("n")
        assert isinstance(app.screen, QueueScreen)  # n no longer opens the form
        await pilot.press("ctrl+n")
        assert isinstance(app.screen, SubmitScreen)

    run(fake, body, keymap={"labq.new": "ctrl+n"})


def test_form_helpers_round_trip_a_spec() -> None:
    spec = {
        "command": ["python", "a b.py", "--x=1"],
        "gpus": 2,
        "cpus": 4.0,
        "memory": "16G",
        "time": 3600.0,
        "workdir": "/tmp",
        "env": {"PATH": "/bin", "A": "x y"},
        "name": "n",
    }
    form = spec_to_form(spec)
    assert form["command"] == "python 'a b.py' --x=1" and form["env"] == "A='x y'" and form["time"] == "3600s"
    back, errors = form_to_spec(form, {"PATH": "/usr/bin"})
    assert errors == {}
    assert back["command"] == spec["command"] and back["env"] == {"PATH": "/usr/bin", "A": "x y"}
    assert parse_field("max_gpus", "") == (None, "") and parse_field("shares", "0")[1]


def test_sync_table_edits_in_place_and_keeps_the_order_it_is_given() -> None:
    from textual.app import App, ComposeResult

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield SyncTable(("A", "B"), id="t")

    async def go() -> None:
        app = One()
        async with app.run_test() as pilot:
            t = app.query_one("#t", SyncTable)

            def shown() -> list[tuple[str, ...]]:
                return [tuple(str(c) for c in t.get_row_at(i)) for i in range(t.row_count)]

            assert t.sync([("1", ("a", "x")), ("2", ("b", "y")), ("3", ("c", "z"))]) == 6
            assert t.sync([("1", ("a", "x")), ("2", ("b", "Y")), ("3", ("c", "z"))]) == 1  # one cell
            t.move_cursor(row=1)
            t.sync([("3", ("c", "z")), ("1", ("a", "x")), ("4", ("d", "[b]w[/b]")), ("2", ("b", "Y"))])
            await pilot.pause()
            assert shown() == [("c", "z"), ("a", "x"), ("d", "[b]w[/b]"), ("b", "Y")]  # markup stays text
            assert t.selected_key() == "2"  # the cursor follows its row
            t.sync([("9", ("q", "q"))])
            assert shown() == [("q", "q")]

    asyncio.run(go())
