"""The UI's flows, driven with Textual's pilot against the fake API (fixed data)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input, Static

from tui.api import BackendError
from tui.app import LabqApp
from tui.dialogs import Confirm, Pick
from tui.job import WINDOW, JobScreen, LogView
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
        await pilot.press("m", "f")  # everyone; f opens the state picker
        assert isinstance(app.screen, Pick)
        await pilot.press("down", "enter")  # active -> all states
        await settle(pilot)
        assert {r[4] for r in rows(app)} >= {"SUCCEEDED", "FAILED", "RUNNING", "PENDING"}
        await pilot.press("slash", *"llama")
        assert rows(app) and all("llama" in r[2] for r in rows(app))
        await pilot.press("enter", "escape")
        assert len(rows(app)) > 5 and not app.screen.query_one("#filter", Input).value
        await pilot.press("f", *["down"] * 7, "enter")  # active, all, pending, starting, running, preempted, succeeded, failed
        await settle(pilot)
        assert {r[4] for r in rows(app)} == {"FAILED"}
        await pilot.press("f", "escape")  # esc keeps the filter
        await settle(pilot)
        assert {r[4] for r in rows(app)} == {"FAILED"}
        t = app.screen.query_one("#jobs", SyncTable)
        await pilot.press("f", "home", "enter", "end")
        await settle(pilot)
        assert t.cursor_row == t.row_count - 1 > 0
        await pilot.press("home")
        assert t.cursor_row == 0

    run(FakeBackend(), body)


def test_open_a_job_follow_its_log_and_search() -> None:
    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, JobScreen)
        assert len(screen.lines) == 200 and screen.follow
        assert screen.query_one("#log", LogView).line_count == 200
        fields = str(screen.query_one("#fields", Static).render())
        assert f"job {screen.job_id}" in fields and "history" in fields
        await pilot.press("slash", *"nan", "enter")
        await settle(pilot)
        assert screen.pattern == "nan" and not screen.follow
        bar = str(screen.query_one("#logbar", Static).render())
        assert "'nan': 1 line" in bar
        await pilot.press("slash", "ctrl+u", *"step 1", "enter")  # step 1, 10-19, 100-199
        await settle(pilot)
        assert len(screen.matches) == 111 and screen.match_at == 0
        await pilot.press("n", "n")
        assert screen.match_at == 2 and isinstance(app.screen, JobScreen)  # n: next match, not a new job
        await pilot.press("N", "N", "N")
        assert screen.match_at == 110
        await pilot.press("w")
        assert screen.wrap
        await pilot.press("s")
        assert screen.follow
        await pilot.press("escape", "escape")  # clear the search, then back
        assert isinstance(app.screen, QueueScreen)

    run(FakeBackend(), body)


def test_e_shows_stderr_alone_and_back() -> None:
    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, JobScreen) and len(screen.lines) == 200
        await pilot.press("e")
        await settle(pilot)
        assert screen.stderr and screen.lines == ["WARNING: NaN in gradients, skipping step"]
        assert "stderr only (e: both)" in str(screen.query_one("#logbar", Static).render())
        await pilot.press("e")
        await settle(pilot)
        assert not screen.stderr and len(screen.lines) == 200

    run(FakeBackend(), body)


def test_a_late_second_read_of_the_same_log_is_not_shown_twice() -> None:
    """Seen under load (the suite on two workers): after `e`, the timer's read and the
    key's read were both in flight, both of the last window, and the warning showed twice.
    Each read says what it read from; one the screen no longer wants is dropped."""
    fake = FakeBackend()

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, JobScreen)
        await pilot.press("e")
        await settle(pilot)
        warning = ["WARNING: NaN in gradients, skipping step"]
        assert screen.lines == warning
        job = fake.job(screen.job_id)
        late = fake.log(screen.job_id, tail=WINDOW, stderr=True)
        screen.apply(job, [late], (True, 0, None))  # the same window, read twice
        both = fake.log(screen.job_id, tail=WINDOW)
        screen.apply(job, [both], (False, 0, None))  # read before `e`
        from_start = fake.log(screen.job_id, 0, stderr=True)
        screen.apply(job, [from_start], (True, 0, 0))  # a follow read from where it no longer is
        assert screen.lines == warning

    run(fake, body)


def test_o_shows_the_next_ranks_output_of_a_job_over_several_nodes() -> None:
    fake = FakeBackend()
    first = next(j for j in fake.job_list if j["state"] == "RUNNING" and j["user"] == fake.me)
    first["ranks"] = [
        {"rank": 0, "node": "a", "node_name": "gpu-a", "gpus": 4, "gpu_ids": "0,1,2,3", "pid": 11},
        {"rank": 1, "node": "b", "node_name": "gpu-b", "gpus": 4, "gpu_ids": "0,1,2,3", "pid": 12},
    ]

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.app.push_screen(JobScreen(first["id"]))
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, JobScreen) and len(screen.lines) == 200
        assert "rank 0 of 2 (o: next)" in str(screen.query_one("#logbar", Static).render())
        assert "gpu-b" in str(screen.query_one("#fields", Static).render())  # a line per rank
        await pilot.press("e")  # stderr alone, then the next rank: both of its streams
        await settle(pilot)
        await pilot.press("o")
        await settle(pilot)
        assert screen.rank == 1 and not screen.stderr and screen.lines[0] == "rank 1 step 0" and len(screen.lines) == 50
        assert "rank 1 of 2" in str(screen.query_one("#logbar", Static).render())
        await pilot.press("o")
        await settle(pilot)
        assert screen.rank == 0 and len(screen.lines) == 200

    run(fake, body)


def test_an_array_is_one_row_and_t_shows_its_tasks() -> None:
    fake = FakeBackend()
    base = next(j for j in fake.job_list if j["state"] == "RUNNING" and j["user"] == fake.me)
    counts = {"size": 48, "cap": 8, "running": 1, "pending": 47, "done": 0, "failed": 0, "cancelled": 0}
    fake.job_list.append({**base, "id": 900, "name": "lr-sweep", "state": "PENDING", "array": counts, "reasons": []})
    fake.job_list.append({**base, "id": 901, "name": "lr-sweep", "ref": "900.0", "array_id": 900, "array_index": 0})

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        ids = [r[0] for r in rows(app)]
        assert "900[]" in ids and "900.0" not in ids
        row = next(r for r in rows(app) if r[0] == "900[]")
        assert "RUNNING" in row and any("1/48 running, 47 pending, 0 done, 0 failed" in c for c in row)
        await pilot.press("t")
        await settle(pilot)
        assert "900.0" in [r[0] for r in rows(app)]
        await pilot.press("t")
        await settle(pilot)
        assert "900.0" not in [r[0] for r in rows(app)]

    run(fake, body)


def test_a_huge_log_opens_at_its_end_reading_one_window() -> None:
    fake = FakeBackend()
    line = b"step 0000000 loss 0.1234 lr 3e-4 " + b"x" * 60 + b"\n"
    fake.log_blob = line * (64 * 2**20 // len(line))  # 64 MiB, ~700k lines

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, JobScreen)
        assert sum(fake.log_reads) <= WINDOW and len(screen.lines) == WINDOW // len(line) - 1 or len(
            screen.lines
        ) == WINDOW // len(line)
        bar = str(screen.query_one("#logbar", Static).render())
        assert "MiB before them not shown" in bar
        before, start = len(screen.lines), screen.start
        await pilot.press("left_square_bracket")
        await settle(pilot)
        assert len(screen.lines) > before and screen.start < start and not screen.follow
        assert sum(fake.log_reads) <= 2 * WINDOW  # never the whole log

    run(fake, body)


def test_a_full_window_says_where_the_rest_is_and_stops_reading_earlier(monkeypatch: Any) -> None:
    """Once earlier lines would take the window past MAX_LOG_LINES, `[` is refused: the
    bar says `labq logs` prints the rest instead of "[ loads earlier", and a second `[`
    reads nothing (each once re-read 256 KiB to be refused again)."""
    import tui.job

    fake = FakeBackend()
    line = b"step 0000000 loss 0.1234 lr 3e-4 " + b"x" * 60 + b"\n"
    fake.log_blob = line * (8 * 2**20 // len(line))
    monkeypatch.setattr(tui.job, "MAX_LOG_LINES", (WINDOW // len(line)) * 3 // 2)  # one window, not two

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, JobScreen)
        shown, start = list(screen.lines), screen.start
        assert "loads earlier" in str(screen.query_one("#logbar", Static).render())
        await pilot.press("left_square_bracket")
        await settle(pilot)
        bar = str(screen.query_one("#logbar", Static).render())
        assert screen.lines == shown and screen.start == start
        assert "loads earlier" not in bar and f"`labq logs {screen.job_id}` prints them" in bar
        read = sum(fake.log_reads)
        await pilot.press("left_square_bracket")
        await settle(pilot)
        assert sum(fake.log_reads) == read  # bytes: a follow poll of a log that does not grow reads none
        await pilot.press("e")  # the window read afresh (stderr alone): `[` may read again
        await settle(pilot)
        assert not screen.full

    run(fake, body)


def test_an_earlier_window_read_late_is_not_put_on_top_twice() -> None:
    """`[` reads the window before the screen's start; a read that comes back after the
    screen moved on (a second `[` got there first, or `e` switched the stream) is dropped,
    as fetch()'s are, and the bar stops saying it is reading."""
    fake = FakeBackend()
    line = b"step 0000000 loss 0.1234 lr 3e-4 " + b"x" * 60 + b"\n"
    warn = b"WARNING: NaN in gradients, skipping step " + b"y" * 50 + b"\n"
    fake.log_blob = (line * 9 + warn) * (8 * 2**20 // (10 * len(line)))  # stderr alone: ~0.8 MiB

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, JobScreen)
        first = screen.start
        late = fake.log(screen.job_id, tail=WINDOW, before=first)  # what `[` reads now
        await pilot.press("left_square_bracket")
        await settle(pilot)
        shown = list(screen.lines)
        assert screen.start < first and len(shown) > 0
        assert "reading earlier" not in str(screen.query_one("#logbar", Static).render())
        screen.prepend(late, (False, 0, first))  # the same window, read twice
        assert screen.lines == shown
        await pilot.press("e")
        await settle(pilot)
        stderr_only = list(screen.lines)
        earlier = fake.log(screen.job_id, tail=WINDOW, before=screen.start)
        screen.prepend(earlier, (False, 0, screen.start))  # read of both streams, before `e`
        assert screen.lines == stderr_only
        # So is a failed one: an old read's 410 does not end the new stream's reading ...
        screen.earlier_refused(BackendError("gone", 410), (False, 0, first))
        assert screen.log_state == "ok"
        # ... and a wanted one that fails keeps the window shown and says why.
        screen.earlier_refused(BackendError("the daemon is busy", 503), (True, 0, screen.start))
        bar = str(screen.query_one("#logbar", Static).render())
        assert screen.log_state == "ok" and screen.lines == stderr_only and "earlier lines: the daemon is busy" in bar

    run(fake, body)


def test_someone_elses_job_shows_its_details_and_says_the_log_is_private() -> None:
    fake = FakeBackend(me="zed", admin=False)

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        footer = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert "cancel" not in footer  # the selected job is not ours
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, JobScreen)
        assert f"job {screen.job_id}" in str(screen.query_one("#fields", Static).render())
        assert "private" in str(screen.query_one("#logbar", Static).render())
        footer = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert "cancel" not in footer and "resubmit" not in footer
        await pilot.press("c")
        await settle(pilot)
        assert not isinstance(app.screen, Confirm) and fake.cancelled == []

    run(fake, body)


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
        assert "would start now on gpu-node-1" in str(screen.query_one("#preview", Static).render())
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert not isinstance(app.screen, SubmitScreen)

    run(fake, body)
    assert len(fake.submitted) == 1
    spec = fake.submitted[0]
    assert spec["command"] == ["python", "train.py", "--lr", "3e-4"] and spec["gpus"] == 1
    assert "PATH" in spec["env"]  # inherited like `labq submit` does


def test_the_submit_preview_warns_of_a_placeholder_no_task_replaces() -> None:
    # As `labq submit` does (present.placeholder_warning): `{lrr}` for `{lr}`.
    fake = FakeBackend()

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("n", *"python train.py --lr {lrr}")
        screen = app.screen
        assert isinstance(screen, SubmitScreen)
        screen.query_one("#f-sweep", Input).value = "lr=1e-3,3e-4"
        await pilot.pause(0.6)
        await settle(pilot)
        preview = str(screen.query_one("#preview", Static).render())
        assert "warning: {lrr} is not one of {index}, {array_id}, {lr}" in preview, preview
        screen.query_one("#f-command", Input).value = "python train.py --lr {lr}"
        await pilot.pause(0.6)
        await settle(pilot)
        assert "warning" not in str(screen.query_one("#preview", Static).render())

    run(fake, body)


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
        box.value = "6 h100:x"
        await pilot.pause()
        assert "max gpus: N, TYPE:N" in str(screen.query_one("#formerror", Static).render())
        box.value = "6 H100:2"  # and at most 2 H100s (a per-type cap)
        await pilot.press("ctrl+s")
        await settle(pilot)

    run(fake, body)
    assert fake.quota_changes[0] == ("ana", {"max_gpus": 6})
    assert fake.quota_changes[1][1]["max_gpus_per_type"] == {"h100": 2} and len(fake.quota_changes) == 2


def test_a_quota_saved_for_a_name_nobody_knows_shows_the_daemons_warning() -> None:
    class Warns(FakeBackend):
        def set_quota(self, user: str, fields: dict[str, Any]) -> dict[str, Any]:
            return {**super().set_quota(user, fields), "warning": f"no account ... for {user!r} here"}

    fake = Warns()
    seen: list[str] = []

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("4")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, QuotasScreen)
        screen.query_one("#q-max_gpus", Input).value = "5"
        await pilot.press("ctrl+s")
        await settle(pilot)
        seen.extend(n.message for n in app._notifications)

    run(fake, body)
    assert fake.quota_changes == [("ana", {"max_gpus": 5})]
    assert "no account ... for 'ana' here" in seen, seen


def test_non_admin_sees_quotas_read_only() -> None:
    fake = FakeBackend(admin=False)

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("4")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, QuotasScreen) and not screen.editable
        assert screen.query_one("#q-shares", Input).disabled
        assert "only admins" in str(screen.query_one("#formerror", Static).render())
        assert not screen.query_one("#save").display  # no Save button to press
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


def test_the_form_notifies_as_the_users_own_config_says(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    form = {"command": "python t.py", "notify": "y"}
    assert "where to?" in form_to_spec(form, {})[1]["notify"]
    (tmp_path / "labq").mkdir()
    (tmp_path / "labq" / "config.yaml").write_text("notify:\n  command: notify-send labq done\n")
    spec, errors = form_to_spec(form, {})
    assert errors == {} and spec["notify"] == {"command": "notify-send labq done"}
    assert spec_to_form(spec)["notify"] == "y"


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
        "after": [41, 42],
    }
    form = spec_to_form(spec)
    assert form["command"] == "python 'a b.py' --x=1" and form["env"] == "A='x y'" and form["time"] == "3600s"
    assert form["after"] == "41,42"
    back, errors = form_to_spec(form, {"PATH": "/usr/bin"})
    assert errors == {}
    assert back["command"] == spec["command"] and back["env"] == {"PATH": "/usr/bin", "A": "x y"}
    assert back["after"] == [41, 42]
    assert "not a job id" in form_to_spec({**form, "after": "41,x"}, {})[1]["after"]
    # Arrays and sweeps from the form, and back.
    arr = form_to_spec({**form, "array": "0-99%8", "after": "40.*"}, {})[0]
    assert arr["array"] == "0-99%8" and arr["after"] == [40]
    assert spec_to_form({**spec, "array": "0-9", "max_running": 2})["array"] == "0-9%2"
    sw = form_to_spec({**form, "sweep": "lr=1e-3,3e-4 bs=32,64"}, {})[0]
    assert sw["sweep"] == {"lr": ["1e-3", "3e-4"], "bs": ["32", "64"]}
    assert spec_to_form({**spec, "sweep": sw["sweep"]})["sweep"] == "lr=1e-3,3e-4 bs=32,64"
    assert "empty range" in form_to_spec({**form, "array": "9-1"}, {})[1]["array"]
    assert form_to_spec({**form, "array": "0-3", "sweep": "lr=1"}, {})[1]["sweep"] == "an array or a sweep, not both"
    assert form_to_spec({**form, "notify": "maybe"}, {})[1]["notify"] == "y or empty"
    # A job over several nodes (issue 15): GPUs in all, over that many whole nodes.
    gang = form_to_spec({**form, "gpus": "16", "nodes": "2"}, {})[0]
    assert gang["gpus"] == 16 and gang["nodes"] == 2 and spec_to_form(gang)["nodes"] == "2"
    assert form_to_spec({**form, "nodes": "0"}, {})[1]["nodes"] == "must be >= 1"
    # A scavenger from the form, and back (resubmit keeps it).
    assert form_to_spec({**form, "preemptible": "y"}, {})[0]["preemptible"] is True
    assert "preemptible" not in form_to_spec(form, {})[0]
    assert spec_to_form({**spec, "preemptible": True})["preemptible"] == "y"
    assert form_to_spec({**form, "preemptible": "maybe"}, {})[1]["preemptible"] == "y or empty"
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


def test_a_quiet_queue_is_polled_less_and_a_key_brings_it_back() -> None:
    """A wall screen on a head node idles near zero: unchanged polls slow down; a key
    press or a change goes back to every refresh_s."""
    fake = FakeBackend()
    app = LabqApp(fake, clock=lambda: NOW, refresh_s=0.05)

    async def go() -> None:
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause(1.5)
            assert app.poll_delay > 0.05  # nothing changed: slower
            polls = app.polls
            await pilot.pause(0.5)
            assert app.polls - polls <= 4, app.polls - polls  # at 0.05 s it would be ~10
            await pilot.press("j")
            assert app.poll_delay == 0.05
            await pilot.pause(1.5)
            assert app.poll_delay > 0.05
            fake.job_list[0] = {**fake.job_list[0], "name": "renamed"}  # a change
            for _ in range(60):  # seen at the next poll, however slow it had become
                if app.poll_delay == 0.05:
                    break
                await pilot.pause(0.05)
            assert app.poll_delay == 0.05
            assert "renamed" in {r[2] for r in rows(app)}

    asyncio.run(go())


def test_team_lists_everyone_who_used_gpus_and_explains_its_two_usage_numbers() -> None:
    """Someone who ran jobs this week without a quota entry of their own was missing, and
    the fair-share usage (decayed, with the entry penalty) differed from `labq usage`
    without a word."""
    from tui.model import Data, team_rows

    data = Data(
        nodes=[{"gpus": 4}],
        quotas={"quotas": [
            {"user": "ana", "shares": 1.0, "usage_gpu_s": 7200.0, "factor": 0.5, "held_gpus": 2,
             "guaranteed_gpus": None, "max_gpus": None, "pending_jobs": 1},
        ]},
        usage={"rows": [
            {"user": "ana", "allocated_gpu_h": 1.5, "idle_gpu_h": 0.25},
            {"user": "newcomer", "allocated_gpu_h": 3.0, "idle_gpu_h": 1.0},
        ]},
    )
    out = dict(team_rows(data))
    assert set(out) == {"ana", "newcomer"}
    assert out["ana"][2] == "2.0" and out["ana"][8] == "1.5"  # FS GPU-h (decayed) vs the week's GPU-h
    assert out["newcomer"][8] == "3.0" and out["newcomer"][9] == "1.0"
    assert out["newcomer"][-1] == "no quota entry (the default)"

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        await pilot.press("3")
        await settle(pilot)
        text = " ".join(str(w.render()) for w in app.screen.query(Static))
        assert "FS GPU-h" in text and "decayed" in text  # the header says what each number is

    run(FakeBackend(), body)


def test_a_running_jobs_clock_alone_does_not_count_as_a_change() -> None:
    """With jobs running, runtime_s and the GPU seconds grow every poll: an idle wall
    screen never slowed down. What is shown (state, whole-% util) still counts."""
    from tui.app import fingerprint

    def got(**job: Any) -> dict[str, Any]:
        j = {"id": 1, "state": "RUNNING", "start_time": 100.0, "runtime_s": 5.0,
             "gpu": {"util_now": 0.0, "util_mean": 0.0, "sampled_s": 5.0, "busy_gpu_s": 0.0, "idle_gpu_s": 5.0}}
        j.update(job)
        return {"jobs": [j], "nodes": [], "health": {"counts": {"RUNNING": 1}}}

    base = fingerprint(got())
    later = got(runtime_s=9.0, gpu={"util_now": 0.2, "util_mean": 0.1, "sampled_s": 9.0, "busy_gpu_s": 0.0, "idle_gpu_s": 9.0})
    assert fingerprint(later) == base
    assert fingerprint(got(state="STOPPING")) != base
    assert fingerprint(got(gpu={"util_now": 35.0, "util_mean": 0.0, "sampled_s": 5.0})) != base


def test_a_toast_when_one_of_my_jobs_ends_with_the_exit_code_and_last_line_if_it_failed() -> None:
    fake = FakeBackend()
    fake.log_blob = b"epoch 3\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory [x]\n"

    async def body(app: LabqApp, pilot: Pilot[None]) -> None:
        running = [j for j in fake.job_list if j["user"] == fake.me and j["state"] == "RUNNING"]
        waiting = [j for j in fake.job_list if j["user"] == fake.me and j["state"] == "PENDING"]
        others = [j for j in fake.job_list if j["user"] != fake.me and j["state"] == "RUNNING"]
        assert running and waiting and others
        waiting[0].update(state="RUNNING")  # seen running by the next poll
        app.poll_now()
        await settle(pilot)
        assert not list(app._notifications)
        running[0].update(state="FAILED", exit_code=3)
        waiting[0].update(state="SUCCEEDED", exit_code=0)
        others[0].update(state="SUCCEEDED", exit_code=0)  # someone else's: no toast for me
        app.poll_now()
        await settle(pilot)
        toasts = [(n.message, n.severity) for n in app._notifications]
        failed = f"job {running[0]['id']} {running[0]['name']} FAILED (exit code 3)\nRuntimeError: CUDA out of memory \\[x]"
        assert sorted(toasts) == sorted([(failed, "error"), (f"job {waiting[0]['id']} {waiting[0]['name']} SUCCEEDED", "information")]), toasts
        app.poll_now()
        await settle(pilot)
        assert len(list(app._notifications)) == 2  # once per job

    run(fake, body)
