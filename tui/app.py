"""The labq Textual app: the team's launcher and monitor.

It polls the daemon in a background thread (one poll at a time: a slow daemon never
queues polls behind each other nor freezes a key press) and keeps the last answers
in `self.data`; when a poll fails, the screens keep those values and say how old
they are. Everything goes through `tui.api.Backend`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

from rich.markup import escape
from textual import events, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import Hit, Hits, Provider

from tui.api import Backend, BackendError
from tui.base import Later, run_later
from tui.dialogs import Confirm, Help
from tui.ended import ended_jobs
from tui.gpus import GpusScreen
from tui.job import JobScreen
from tui.model import TERMINAL_STATES, Data
from tui.queue import QueueScreen
from tui.quotas import QuotasScreen
from tui.submit import SubmitScreen
from tui.team import TeamScreen

# Quota and usage change slowly; ask for them less often than for jobs and GPUs.
SLOW_EVERY = 10
# A screen nobody touches, on a queue where nothing changes (a wall display on a head
# node), polls less and less often, down to every IDLE_POLL_S; a key, a click or a
# change brings it back to every refresh_s at once.
IDLE_POLL_S = 5.0
QUIET_POLLS = 5  # unchanged polls before slowing down


def fingerprint(got: dict[str, Any]) -> int:
    """What a poll brought that the screens show, without what only a clock moves:
    the daemon's sample times and pass durations, a running job's `runtime_s` and its
    GPU accounting (seconds sampled, busy, idle), which change every poll even on a
    quiet queue. Its GPU use counts as shown (whole %, GiB to 0.1, GPU-h to 0.01); the
    elapsed times on screen come from the UI's own clock."""
    nodes = [
        (n.get("id"), n.get("state"), [tuple(sorted((k, repr(v)) for k, v in g.items() if k != "history")) for g in n.get("gpu_list", [])])
        for n in got["nodes"]
    ]
    jobs = [{**j, "runtime_s": None, "gpu": _shown_use(j.get("gpu"))} for j in got["jobs"]]
    return hash((repr(jobs), repr(nodes), repr(got["health"].get("counts"))))


def _shown_use(gpu: dict[str, Any] | None) -> tuple[float, ...] | None:
    if not gpu:
        return None
    return (
        round(gpu.get("util_now") or 0),
        round(gpu.get("util_mean") or 0),
        round((gpu.get("mem_peak") or 0) / 2**30, 1),
        round((gpu.get("busy_gpu_s") or 0) / 3600, 2),
        round((gpu.get("idle_gpu_s") or 0) / 3600, 2),
    )


class Jump(Provider):
    """ctrl+p: jump to a job, a node or a researcher."""

    async def search(self, query: str) -> Hits:
        app = self.app
        assert isinstance(app, LabqApp)
        matcher = self.matcher(query)
        for j in app.data.jobs[-2000:]:
            text = f"job {j['id']} {j.get('name', '')} ({j['user']}, {j['state']})"
            score = matcher.match(text)
            if score > 0:
                yield Hit(
                    score, matcher.highlight(text), partial(app.open_job, int(j["id"])), help="open the job"
                )
        for n in app.data.nodes:
            text = f"node {n['name']}"
            score = matcher.match(text)
            if score > 0:
                yield Hit(
                    score, matcher.highlight(text), partial(app.switch_mode, "gpus"), help="GPUs screen"
                )
        for user in sorted({j["user"] for j in app.data.jobs}):
            text = f"user {user}"
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(app.show_user, user), help="their jobs")


class LabqApp(App[None]):
    TITLE = "labq"
    MODES: ClassVar[dict[str, Any]] = {
        "queue": QueueScreen,
        "gpus": GpusScreen,
        "team": TeamScreen,
        "quotas": QuotasScreen,
    }
    DEFAULT_MODE = "queue"
    COMMANDS = App.COMMANDS | {Jump}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "switch_mode('queue')", "Queue", id="labq.queue"),
        Binding("2", "switch_mode('gpus')", "GPUs", id="labq.gpus"),
        Binding("3", "switch_mode('team')", "Team", id="labq.team"),
        Binding("4", "switch_mode('quotas')", "Quotas", id="labq.quotas"),
        Binding("n", "new_job", "New job", id="labq.new"),
        Binding("question_mark", "help", "Help", id="labq.help"),
        Binding("q", "quit", "Quit", id="labq.quit"),
    ]

    def __init__(
        self,
        backend: Backend,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        refresh_s: float = 1.0,
        keymap: dict[str, str] | None = None,
        auto_refresh: bool = True,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.now = clock
        self.read_only = read_only
        self.show_tasks = False  # arrays: each started task as a row too (queue: t)
        self.refresh_s = refresh_s
        self.poll_auto = auto_refresh
        self.data = Data()
        self.polls = 0
        self._who: tuple[str, bool, bool] | None = None
        self.poll_delay = refresh_s
        self._quiet = 0
        self._last_print = 0
        self._mine_running: set[int] | None = None  # the poll thread's: my running jobs at the last poll
        self._next_poll: Any = None
        if keymap:
            self.set_keymap(keymap)

    def on_mount(self) -> None:
        self.poll_now()

    # -- polling ---------------------------------------------------------------------------------
    def poll_now(self) -> None:
        if self._next_poll is not None:
            self._next_poll.stop()
            self._next_poll = None
        self.poll()

    def _schedule(self, changed: bool) -> None:
        """The next poll: soon after a change, later and later while nothing changes."""
        if not self.poll_auto:
            return
        self._quiet = 0 if changed else self._quiet + 1
        if self._quiet < QUIET_POLLS:
            self.poll_delay = self.refresh_s
        else:
            self.poll_delay = min(max(IDLE_POLL_S, self.refresh_s), self.poll_delay * 1.5)
        if self._next_poll is not None:
            self._next_poll.stop()
        self._next_poll = self.set_timer(self.poll_delay, self.poll_now)

    async def on_event(self, event: events.Event) -> None:
        # Someone is using the UI: back to full speed (and fresh data now if it was idling).
        if isinstance(event, (events.Key, events.MouseDown, events.Resize)) and self.poll_delay > self.refresh_s:
            self._quiet = 0
            self.poll_delay = self.refresh_s
            self.poll_now()
        await super().on_event(event)

    @work(thread=True, exclusive=True, group="poll")
    def poll(self) -> None:
        b = self.backend
        first = self.polls == 0
        slow = self.polls % SLOW_EVERY == 0 or not self.data.quotas
        try:
            got: dict[str, Any] = {
                "health": b.health(),
                "jobs": b.jobs(tasks=self.show_tasks),
                # The daemon's own history once, to seed the sparklines; then one sample per poll.
                "nodes": b.nodes(history=first).get("nodes", []),
            }
            if slow:
                got["quotas"] = b.quotas()
                got["usage"] = b.usage("7d")
        except BackendError as e:
            self.later(self.failed, str(e))
            return
        got["fingerprint"] = fingerprint(got)
        self._mine_running, got["ended"] = ended_jobs(
            self._mine_running, got["jobs"], str(got["health"].get("caller", "")), b
        )
        self.later(self.apply, got)

    def later(self, fn: Callable[..., Any], *args: Any) -> None:
        """From a worker thread: run fn(*args) on the UI loop."""
        self.post_message(Later(fn, *args))

    def on_later(self, m: Later) -> None:
        run_later(m, self)

    def apply(self, got: dict[str, Any]) -> None:
        self.polls += 1
        d = self.data
        d.health = got["health"]
        d.jobs = got["jobs"]
        d.nodes = got["nodes"]
        d.record_history(d.nodes)
        if "quotas" in got:
            d.quotas = got["quotas"]
            d.usage = got["usage"]
        d.fetched_at = self.now()
        d.error = ""
        d.down_since = None
        self.redraw()
        for message, severity in got.get("ended", []):
            self.notify(escape(message), title="labq: your job ended", severity=severity, timeout=12)  # type: ignore[arg-type]
        changed = got.get("fingerprint") != self._last_print
        self._last_print = got.get("fingerprint", 0)
        self._schedule(changed)

    def failed(self, message: str) -> None:
        d = self.data
        if not d.error:
            d.down_since = self.now()
        d.error = message
        self.redraw()
        self._schedule(True)  # keep trying every refresh_s until the daemon is back

    def redraw(self) -> None:
        screen = self.screen
        refresh = getattr(screen, "refresh_data", None)
        if refresh is not None:
            refresh()
        # The footer is rebuilt on refresh_bindings (the costliest thing an idle UI did
        # each poll): only when who may do what could have changed.
        who = (self.data.me, self.data.admin, bool(self.data.error))
        if who != self._who:
            self._who = who
            self.refresh_bindings()

    # -- navigation and actions shared by the screens ----------------------------------------------
    def open_job(self, job_id: int, focus_log: bool = False) -> None:
        self.push_screen(JobScreen(job_id, focus_log=focus_log))

    def show_user(self, user: str) -> None:
        self.switch_mode("queue")
        screen = self.screen
        if isinstance(screen, QueueScreen):
            screen.show_user(user)

    def action_new_job(self, spec: dict[str, Any] | None = None) -> None:
        if self.read_only:
            return

        def done(job_id: int | None) -> None:
            if job_id is not None:
                self.notify(f"submitted job {job_id}", title="labq")
                self.poll_now()

        self.push_screen(SubmitScreen(spec), done)

    def action_help(self) -> None:
        self.push_screen(Help())

    def may_cancel(self, job: dict[str, Any]) -> bool:
        """Only its owner and admins may cancel a job: nobody else is offered to."""
        return not self.read_only and (self.data.admin or job.get("user") == self.data.me)

    def confirm_cancel(self, job: dict[str, Any]) -> None:
        if self.read_only:
            return
        if not self.may_cancel(job):
            self.notify(f"job {job['id']} is {job['user']}'s: only they or an admin may cancel it", severity="warning")
            return
        if job["state"] in TERMINAL_STATES:
            self.notify(f"job {job['id']} already ended ({job['state']})", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.cancel_job(int(job["id"]))

        what = (
            "stop it (SIGTERM, then SIGKILL after its grace period)"
            if job["state"]
            in (
                "RUNNING",
                "STARTING",
            )
            else "remove it from the queue"
        )
        self.push_screen(
            Confirm(f"Cancel job {job['id']} ({job.get('name', '')}, {job['user']})?\nThis will {what}."),
            answered,
        )

    @work(thread=True, group="cancel")
    def cancel_job(self, job_id: int) -> None:
        try:
            out = self.backend.cancel(job_id)
        except BackendError as e:
            self.later(partial(self.notify, str(e), title=f"job {job_id}", severity="error"))
            return
        self.later(partial(self.notify, f"job {job_id}: {out.get('result', 'cancelled')}", title="labq"))
        self.later(self.poll_now)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # False hides the key from the footer (None would only dim it).
        return not (action == "new_job" and self.read_only)
