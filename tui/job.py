"""One job in full: every field, every reason, its history, and its log."""

from __future__ import annotations

import re
from typing import Any

from rich.highlighter import Highlighter
from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Input, Log

from scheduler.present import clean, clean_log, job_lines
from tui.api import BackendError
from tui.base import DataScreen
from tui.model import TERMINAL_STATES
from tui.widgets import TextLine

# The log is read as a window: its last WINDOW bytes when the screen opens, WINDOW more
# each time the user asks for earlier lines, and what the job appends while it is
# followed. At most MAX_LOG_LINES are held; a 256 MiB log never is.
WINDOW = 256 * 1024
MAX_LOG_LINES = 100_000
FOLLOW_READ = 4 * 1024 * 1024  # at most this much new output is read per refresh
READING_EARLIER = "reading earlier lines…"
EARLIER = "\\[ loads earlier"  # the bar's hint (markup: `[` escaped)


def wrapped(lines: list[str], width: int) -> list[str]:
    """`lines` cut to `width` columns (an empty line stays one line)."""
    out: list[str] = []
    for line in lines:
        out += [line[i : i + width] for i in range(0, max(1, len(line)), width)] or [""]
    return out


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


class _Match(Highlighter):
    """Marks the search pattern in the lines being drawn (only those: LogView draws
    what is on screen)."""

    def __init__(self) -> None:
        self.pattern = ""

    def highlight(self, text: Text) -> None:
        if self.pattern:
            text.highlight_regex(re.compile(re.escape(self.pattern), re.IGNORECASE), style="black on yellow")


class LogView(Log):
    """Textual's Log (renders only the visible lines, whatever their number) with the
    search pattern highlighted and the job's control characters shown, not obeyed."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(highlight=True, max_lines=MAX_LOG_LINES, auto_scroll=False, **kw)
        self.match = _Match()
        self.highlighter = self.match

    def set_pattern(self, pattern: str) -> None:
        self.match.pattern = pattern
        self._render_line_cache.clear()
        self.refresh()


class JobScreen(DataScreen):
    title_text = "Job"
    DEFAULT_CSS = """
    JobScreen #details { height: 45%; border-bottom: solid $primary; padding: 0 1; }
    JobScreen #logbar { height: 1; padding: 0 1; background: $panel; }
    JobScreen #search { dock: bottom; display: none; }
    JobScreen #search.-shown { display: block; }
    JobScreen LogView { height: 1fr; }
    """
    BINDINGS = [
        Binding("escape", "back", "Back", id="labq.job.back"),
        Binding("c", "cancel", "Cancel", id="labq.job.cancel"),
        Binding("r", "resubmit", "Resubmit", id="labq.job.resubmit"),
        Binding("s", "follow", "Follow", id="labq.job.follow"),
        Binding("w", "wrap", "Wrap", id="labq.job.wrap"),
        Binding("slash", "search", "Search", id="labq.job.search"),
        Binding("n", "next_match", "Next", id="labq.job.next"),
        Binding("N", "previous_match", "Previous", show=False, id="labq.job.previous"),
        Binding("left_square_bracket", "earlier", "Earlier", id="labq.job.earlier"),
        Binding("e", "stderr", "Stderr", id="labq.job.stderr"),
        Binding("o", "rank", "Other rank", id="labq.job.rank"),
        Binding("end", "end", "End", show=False, id="labq.job.end"),
    ]

    def __init__(self, job_id: int, focus_log: bool = False) -> None:
        super().__init__()
        self.job_id = job_id
        self.job: dict[str, Any] | None = None
        self.focus_log = focus_log
        self.follow = True
        self.wrap = False
        self.pattern = ""
        self.matches: list[int] = []
        self.match_at = -1
        self.lines: list[str] = []  # the window, as received (cleaned, unwrapped)
        self.partial = ""
        self.start = 0  # byte offset where the window begins
        self.full = False  # `[` found no room for earlier lines (MAX_LOG_LINES): it reads no more
        self.log_offset = 0  # next byte to read
        self.log_size = 0
        self.log_state = "loading"  # loading, ok, private, removed, error
        self.log_note = ""
        self.done = False
        self.opened = False
        self.stderr = False  # show only what the job wrote to stderr
        self.rank = 0  # a job over several nodes: whose output is shown (k: the next rank)
        self.title_text = f"Job {job_id}"
        self._bindings_for: tuple[Any, ...] | None = None

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        with VerticalScroll(id="details"):
            yield TextLine("loading…", id="fields")
        yield TextLine("", id="logbar")
        yield LogView(id="log")
        yield Input(placeholder="search the log (enter: find, n/N: next/previous, esc: clear)", id="search")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        if self.focus_log:
            self.view.focus()
        self.fetch()
        self.set_interval(self.lapp.refresh_s, self.fetch)

    @property
    def view(self) -> LogView:
        return self.query_one("#log", LogView)

    # -- fetching (worker threads; results come back on the UI loop) ------------------------------
    @work(thread=True, exclusive=True, group="job")
    def fetch(self) -> None:
        """The job's details first (shown at once), then the log: its last window when
        the screen opens, what was appended since afterwards."""
        backend = self.lapp.backend
        try:
            job = backend.job(self.job_id)
        except BackendError as e:
            self.later(self.show_error, str(e))
            return
        self.later(self.show_job, job)
        if self.done or self.log_state in ("private", "removed", "array"):
            return
        if job.get("array"):
            self.later(self.no_log, "an array: each task has its own log (t in the queue lists its tasks)")
            return
        # What this read is of: apply() drops it unless the screen still wants exactly
        # that (a timer's read and a key's read can both be in flight; `exclusive` does
        # not stop a thread already waiting on the daemon, and both would be applied).
        stream, rank, base = self.stderr, self.rank, self.read_from
        try:
            if base is None:
                part = backend.log(self.job_id, tail=WINDOW, stderr=stream, rank=rank)
                chunks = [part]
            else:
                chunks, off, got = [], base, 0
                while got < FOLLOW_READ:
                    part = backend.log(self.job_id, off, stderr=stream, rank=rank)
                    if not part["data"]:
                        chunks.append(part)
                        break
                    chunks.append(part)
                    got += len(part["data"])
                    off = int(part["offset"])
                    if off >= part["size"]:
                        break
        except BackendError as e:
            self.later(self.log_refused, e)
            return
        self.later(self.apply, job, chunks, (stream, rank, base))

    @property
    def read_from(self) -> int | None:
        """Where the next read of the log starts: None for its last window (not opened yet)."""
        return self.log_offset if self.opened else None

    @work(thread=True, exclusive=True, group="earlier")
    def fetch_earlier(self, read: tuple[bool, int, int]) -> None:
        """`read`: (stderr alone, rank, the screen's start), taken when `[` was pressed.
        As in fetch(): the window goes on top only if the screen still starts there, on
        the same stream and rank (`[` twice, or `e`/`o` meanwhile); so does an error."""
        stream, rank, before = read
        try:
            part = self.lapp.backend.log(self.job_id, tail=WINDOW, before=before, stderr=stream, rank=rank)
        except BackendError as e:
            self.later(self.earlier_refused, e, read)
            return
        self.later(self.prepend, part, read)

    # -- applying (UI loop) ------------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        self.query_one("#logbar", TextLine).show(f"[b]{_escape(message)}[/b]")

    def show_job(self, job: dict[str, Any]) -> None:
        self.job = job
        self.title_text = f"{'Array' if job.get('array') else 'Job'} {job.get('ref') or self.job_id}"
        self.query_one("#fields", TextLine).show(job_details(job, self.lapp.now()))
        self.update_status()
        key = (job.get("state"), job.get("user"), job.get("private"))
        if key != self._bindings_for:
            self._bindings_for = key
            self.refresh_bindings()

    def log_refused(self, e: BackendError) -> None:
        if e.status == 403:
            self.log_state = "private"
            self.log_note = "log: private (only its owner and admins read it)"
        elif e.status == 410:
            self.log_state = "removed"
            self.log_note = f"log: {e}"
        else:
            self.log_state = "error"
            self.log_note = f"log: {e}"
        self.update_logbar()

    def no_log(self, note: str) -> None:
        """A job with no log of its own (an array): say why, and read none."""
        self.log_state = "array"
        self.log_note = note
        self.update_logbar()

    def _split(self, text: str) -> list[str]:
        text = self.partial + text
        *complete, self.partial = text.split("\n")
        return [clean_log(line) for line in complete]

    def apply(self, job: dict[str, Any], chunks: list[dict[str, Any]], read: tuple[bool, int, int | None]) -> None:
        """`read`: (stderr alone, rank, the offset it read from; None: the last window)."""
        if read != (self.stderr, self.rank, self.read_from):
            # Read before `e` or `o` switched the stream, or another read got there first
            # (or `e` began afresh): stale; the next read is the right one.
            return
        at_end = self.view.scroll_offset.y >= self.view.max_scroll_y
        new: list[str] = []
        for c in chunks:
            if not self.opened:
                self.start = int(c.get("start", 0))
                self.opened = True
            self.log_offset = int(c["offset"])
            self.log_size = int(c["size"])
            new += self._split(c["data"])
        if job.get("state") in TERMINAL_STATES and self.log_offset >= self.log_size:
            if self.partial:
                new.append(clean_log(self.partial))
                self.partial = ""
            self.done = True
        self.log_state = "ok"
        if new:
            self.lines += new
            if len(self.lines) > MAX_LOG_LINES:
                del self.lines[: len(self.lines) - MAX_LOG_LINES]
                self.start = -1  # no longer known exactly: earlier lines were dropped
            self.view.write_lines(self._shown(new))
            if self.follow and at_end:
                self.view.scroll_end(animate=False)
        self.update_logbar()

    def _wanted(self, read: tuple[bool, int, int]) -> bool:
        """Does the screen still want the earlier window `read` asked for? If so, the
        note that it is being read goes (the bar says where the window starts)."""
        if read != (self.stderr, self.rank, self.start):
            return False  # the screen moved on (another window went on top, or `e`/`o`): stale
        if self.log_note == READING_EARLIER:
            self.log_note = ""
        return True

    def earlier_refused(self, e: BackendError, read: tuple[bool, int, int]) -> None:
        if not self._wanted(read):
            return
        if e.status in (403, 410):
            self.log_refused(e)  # the log itself is no longer readable
        else:
            # The window shown is still good: say why no earlier lines came, keep it.
            self.log_note = f"earlier lines: {e}"
            self.update_logbar()

    def prepend(self, part: dict[str, Any], read: tuple[bool, int, int]) -> None:
        """`read`: (stderr alone, rank, the offset the window ends at)."""
        if not self._wanted(read):
            return
        text = part["data"]
        if not text:
            self.update_logbar()
            return
        earlier = [clean_log(line) for line in text.split("\n")]
        if earlier and earlier[-1] == "":
            earlier.pop()
        if len(self.lines) + len(earlier) > MAX_LOG_LINES:
            # The bar says so in place of "[ loads earlier"; `[` stops reading a window it
            # would refuse again (reset when the window is read afresh: `e`, `o`).
            self.full = True
            self.update_logbar()
            return
        self.start = int(part.get("start", 0))
        self.lines = earlier + self.lines
        self.follow = False
        self.redraw(keep_top=len(earlier))

    def _shown(self, lines: list[str]) -> list[str]:
        """Lines as drawn: cut to the view's width when wrapping."""
        return wrapped(lines, max(20, self.view.size.width - 2)) if self.wrap else lines

    def redraw(self, keep_top: int = 0) -> None:
        view = self.view
        view.clear()
        view.write_lines(self._shown(self.lines))
        if self.follow:
            view.scroll_end(animate=False)
        elif keep_top:
            view.scroll_to(y=keep_top, animate=False)
        self.update_logbar()

    def update_logbar(self) -> None:
        if self.log_state in ("private", "removed", "error", "loading", "array"):
            self.query_one("#logbar", TextLine).show(_escape(self.log_note or "log: loading…"))
            return
        ranks = len((self.job or {}).get("ranks") or ())
        whose = f"rank {self.rank} of {ranks} (o: next)" if ranks else "log"
        parts = [f"{'stderr only (e: both)' if self.stderr else whose} · {len(self.lines):,} lines"]
        if self.start > 0:
            full = f"the window holds {MAX_LOG_LINES:,} lines: `labq logs {self.job_id}` prints them"
            parts.append(f"{self.start / 2**20:.1f} MiB before them not shown ({full if self.full else EARLIER})")
        elif self.start < 0:
            parts.append(f"the first lines were dropped (the window holds {MAX_LOG_LINES:,})")
        parts.append("following" if self.follow else "paused")
        parts.append("wrap" if self.wrap else "no wrap")
        if self.pattern:
            where = f" ({self.match_at + 1}/{len(self.matches)})" if self.matches and self.match_at >= 0 else ""
            parts.append(f"'{_escape(self.pattern)}': {len(self.matches)} line{'s' if len(self.matches) != 1 else ''}{where}")
        if self.done:
            parts.append("ended")
        if self.log_note:
            parts.append(_escape(self.log_note))
        self.query_one("#logbar", TextLine).show(" · ".join(parts))

    # -- search (off the UI thread) -----------------------------------------------------------------
    @work(thread=True, exclusive=True, group="search")
    def find(self, pattern: str, lines: list[str]) -> None:
        low = pattern.lower()
        hits = [i for i, line in enumerate(lines) if low in line.lower()]
        self.later(self.found, pattern, hits)

    def found(self, pattern: str, hits: list[int]) -> None:
        if pattern != self.pattern:
            return  # a newer search is under way
        self.matches = hits
        self.match_at = -1
        self.action_next_match()

    def _goto(self, i: int) -> None:
        self.match_at = i
        line = self.matches[i]
        if self.wrap:
            width = max(20, self.view.size.width - 2)
            line = sum(max(1, -(-len(x) // width)) for x in self.lines[:line])
        self.view.scroll_to(y=max(0, line - 2), animate=False)
        self.update_logbar()

    # -- actions -----------------------------------------------------------------------------------
    def action_back(self) -> None:
        search = self.query_one("#search", Input)
        if search.has_class("-shown") or self.pattern:
            search.value = ""
            search.remove_class("-shown")
            self.pattern, self.matches, self.match_at = "", [], -1
            self.view.set_pattern("")
            self.update_logbar()
            return
        self.app.pop_screen()

    def action_follow(self) -> None:
        self.follow = not self.follow
        if self.follow:
            self.view.scroll_end(animate=False)
        self.update_logbar()

    def action_end(self) -> None:
        self.view.scroll_end(animate=False)

    def action_rank(self) -> None:
        """A job over several nodes: the next rank's output (rank 0's is the job's log;
        a rank's log has both streams, so this shows both)."""
        ranks = len((self.job or {}).get("ranks") or ())
        self.rank = (self.rank + 1) % max(ranks, 1)
        self.stderr = False
        self._reread()

    def action_stderr(self) -> None:
        """Stderr alone, or both streams again: the window is read afresh from its end."""
        self.stderr = not self.stderr
        if self.stderr:
            self.rank = 0  # stderr apart is kept for rank 0 (the job's own log)
        self._reread()

    def _reread(self) -> None:
        self.lines, self.partial, self.start, self.log_offset, self.log_size = [], "", 0, 0, 0
        self.full = False
        if self.log_note == READING_EARLIER:
            self.log_note = ""  # that read was of the stream left behind
        self.opened = self.done = False
        self.matches, self.match_at = [], -1
        self.follow = True
        self.redraw()
        self.fetch()

    def action_wrap(self) -> None:
        self.wrap = not self.wrap
        self.redraw()

    def action_earlier(self) -> None:
        if self.start > 0 and self.log_state == "ok" and not self.full:
            self.log_note = READING_EARLIER
            self.update_logbar()
            self.fetch_earlier((self.stderr, self.rank, self.start))

    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.add_class("-shown")
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.pattern = event.value
        self.follow = False if self.pattern else self.follow
        self.view.set_pattern(self.pattern)
        self.view.focus()
        if self.pattern:
            self.find(self.pattern, list(self.lines))
        else:
            self.matches, self.match_at = [], -1
        self.update_logbar()

    def action_next_match(self) -> None:
        if not self.pattern:
            self.lapp.action_new_job()  # `n` is "new job" everywhere else
            return
        if self.matches:
            self._goto((self.match_at + 1) % len(self.matches))

    def action_previous_match(self) -> None:
        if self.matches:
            self._goto((self.match_at - 1) % len(self.matches))

    def action_cancel(self) -> None:
        if self.job is not None:
            self.lapp.confirm_cancel(self.job)

    def action_resubmit(self) -> None:
        if self.job is not None:
            self.lapp.action_new_job(self.job.get("spec"))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("cancel", "resubmit") and self.lapp.read_only:
            return False
        if action == "cancel" and self.job is not None and not self.lapp.may_cancel(self.job):
            return False
        # someone else's command, environment and output are not ours to see
        if action == "rank" and not (self.job or {}).get("ranks"):
            return False
        return not (action in ("resubmit", "stderr") and self.job is not None and self.job.get("private"))
