"""One job in full: every field, every reason, its history, and its log."""

from __future__ import annotations

import re
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Input, RichLog, Static

from scheduler.present import clean, clean_log, job_lines
from tui.api import BackendError
from tui.base import DataScreen
from tui.model import TERMINAL_STATES

MAX_LOG_LINES = 20_000


def job_details(j: dict[str, Any], now: float) -> str:
    """The job's lines as `labq show` writes them (present.job_lines), with markup."""
    out = []
    for line in job_lines(j, now, events=12):
        text = escape(line.text)  # names, commands and reasons are data, never markup
        if line.kind == "head":
            out.append(f"[b]{text}[/b]")
        elif line.kind == "flag":
            out.append(f"[reverse] flag [/reverse] {text}")
        elif line.kind == "reason":
            out.append(f"  • {text}")
        elif line.kind == "event":
            out.append(f"  {text}")
        else:
            out.append(f"{line.label:<10}{text}".rstrip())
    return "\n".join(out)


def _escape(s: str) -> str:
    # Rich markup and terminal controls in what the daemon or other users wrote are
    # shown as text.
    return escape(clean(s))


class JobScreen(DataScreen):
    title_text = "Job"
    DEFAULT_CSS = """
    JobScreen #details { height: 45%; border-bottom: solid $primary; padding: 0 1; }
    JobScreen #logbar { height: 1; padding: 0 1; background: $panel; }
    JobScreen #search { dock: bottom; display: none; }
    JobScreen #search.-shown { display: block; }
    JobScreen RichLog { height: 1fr; }
    """
    BINDINGS = [
        Binding("escape", "back", "Back", id="labq.job.back"),
        Binding("c", "cancel", "Cancel", id="labq.job.cancel"),
        Binding("r", "resubmit", "Resubmit", id="labq.job.resubmit"),
        Binding("s", "follow", "Follow", id="labq.job.follow"),
        Binding("w", "wrap", "Wrap", id="labq.job.wrap"),
        Binding("slash", "search", "Search", id="labq.job.search"),
    ]

    def __init__(self, job_id: int, focus_log: bool = False) -> None:
        super().__init__()
        self.job_id = job_id
        self.job: dict[str, Any] | None = None
        self.focus_log = focus_log
        self.follow = True
        self.wrap = False
        self.pattern = ""
        self.lines: list[str] = []
        self.partial = ""
        self.log_offset = 0
        self.done = False
        self.title_text = f"Job {job_id}"

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        with VerticalScroll(id="details"):
            yield Static("loading…", id="fields")
        yield Static("", id="logbar")
        yield RichLog(id="log", wrap=False, highlight=False, markup=False, max_lines=MAX_LOG_LINES)
        yield Input(placeholder="search the log (enter to highlight, esc to clear)", id="search")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        if self.focus_log:
            self.query_one("#log", RichLog).focus()
        self.fetch()
        self.set_interval(self.lapp.refresh_s, self.fetch)

    @work(thread=True, exclusive=True, group="job")
    def fetch(self) -> None:
        backend = self.lapp.backend
        try:
            job = backend.job(self.job_id)
            chunks = []
            off = self.log_offset
            # Read everything there is now (the API returns at most 1 MiB per call).
            while not self.done:
                part = backend.log(self.job_id, off)
                if part["data"]:
                    chunks.append(part)
                off = int(part["offset"])
                if off >= part["size"] or not part["data"]:
                    break
        except BackendError as e:
            self.later(self.show_error, str(e))
            return
        self.later(self.apply, job, chunks)

    def show_error(self, message: str) -> None:
        self.query_one("#logbar", Static).update(f"[b]{_escape(message)}[/b]")

    def apply(self, job: dict[str, Any], chunks: list[dict[str, Any]]) -> None:
        self.job = job
        self.query_one("#fields", Static).update(job_details(job, self.lapp.now()))
        log = self.query_one("#log", RichLog)
        at_end = log.scroll_offset.y >= log.max_scroll_y
        for c in chunks:
            self.log_offset = int(c["offset"])
            text = self.partial + c["data"]
            *complete, self.partial = text.split("\n")
            for line in complete:
                self.lines.append(line)
                log.write(self._line_text(line), scroll_end=self.follow and at_end)
        if len(self.lines) > MAX_LOG_LINES:
            del self.lines[: len(self.lines) - MAX_LOG_LINES]
        if job.get("state") in TERMINAL_STATES and not chunks:
            if self.partial:
                self.lines.append(self.partial)
                log.write(self._line_text(self.partial), scroll_end=self.follow and at_end)
                self.partial = ""
            self.done = True
        self.update_logbar()
        self.update_status()

    def update_logbar(self) -> None:
        follow = "following" if self.follow else "paused"
        wrap = "wrap" if self.wrap else "no wrap"
        search = ""
        if self.pattern:
            hits = sum(1 for line in self.lines if self.pattern.lower() in line.lower())
            search = f" · '{_escape(self.pattern)}': {hits} line{'s' if hits != 1 else ''}"
        end = " · ended" if self.done else ""
        self.query_one("#logbar", Static).update(
            f"log (stdout and stderr together) · {len(self.lines)} lines · {follow} · {wrap}{search}{end}"
        )

    def _line_text(self, line: str) -> Text:
        text = Text(clean_log(line))
        if self.pattern:
            text.highlight_regex(re.escape(self.pattern), style="black on yellow")
        return text

    def redraw(self) -> None:
        log = self.query_one("#log", RichLog)
        log.wrap = self.wrap
        log.clear()
        for line in self.lines:
            log.write(self._line_text(line), scroll_end=False)
        if self.follow:
            log.scroll_end(animate=False)
        self.update_logbar()

    # -- actions -----------------------------------------------------------------------------------
    def action_back(self) -> None:
        search = self.query_one("#search", Input)
        if search.has_class("-shown"):
            search.value = ""
            search.remove_class("-shown")
            self.pattern = ""
            self.redraw()
            return
        self.app.pop_screen()

    def action_follow(self) -> None:
        self.follow = not self.follow
        if self.follow:
            self.query_one("#log", RichLog).scroll_end(animate=False)
        self.update_logbar()

    def action_wrap(self) -> None:
        self.wrap = not self.wrap
        self.redraw()

    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.add_class("-shown")
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.pattern = event.value
        self.follow = False if self.pattern else self.follow
        self.redraw()
        if self.pattern:
            first = next(
                (i for i, line in enumerate(self.lines) if self.pattern.lower() in line.lower()), None
            )
            if first is not None:
                self.query_one("#log", RichLog).scroll_to(y=first, animate=False)
        self.query_one("#log", RichLog).focus()

    def action_cancel(self) -> None:
        if self.job is not None:
            self.lapp.confirm_cancel(self.job)

    def action_resubmit(self) -> None:
        if self.job is not None:
            self.lapp.action_new_job(self.job.get("spec"))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("cancel", "resubmit") and self.lapp.read_only:
            return None
        return True
