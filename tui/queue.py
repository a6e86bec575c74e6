"""The queue: every job, why it waits and when it will start."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input

from scheduler.present import array_state, ref, where_or_why
from tui.base import DataScreen
from tui.dialogs import Pick
from tui.model import (
    QUEUE_COLUMNS,
    STATES,
    TERMINAL_STATES,
    QueueFilter,
    filter_jobs,
    job_cells,
    queue_columns,
    sort_jobs,
)
from tui.widgets import SyncTable, TextLine

STATE_CHOICES = ("", "ALL", *STATES)
# Rows the table holds at once. Nobody scrolls through 10,000 jobs; the filter and
# ctrl+p find any job, and the UI stays fast however long the queue gets.
MAX_ROWS = 500
SORTABLE = ("RANK", "ID", "USER", "NAME", "GPUS", "STATE", "ETA")


class QueueScreen(DataScreen):
    title_text = "Queue"
    DEFAULT_CSS = """
    QueueScreen #filter { dock: top; display: none; }
    QueueScreen #filter.-shown { display: block; }
    QueueScreen #summary { height: 1; padding: 0 1; color: $text-muted; }
    QueueScreen #detail { height: auto; max-height: 3; padding: 0 1; background: $panel; }
    """
    BINDINGS = [
        Binding("enter", "open", "Open", id="labq.queue.open"),
        Binding("l", "logs", "Log", id="labq.queue.logs"),
        Binding("c", "cancel", "Cancel", id="labq.queue.cancel"),
        Binding("slash", "filter", "Filter", id="labq.queue.filter"),
        Binding("m", "mine", "Mine/all", id="labq.queue.mine"),
        Binding("f", "state", "State", id="labq.queue.state"),
        Binding("o", "sort", "Sort", id="labq.queue.sort"),
        Binding("t", "tasks", "Tasks", id="labq.queue.tasks"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="labq.queue.clear"),
        Binding("j", "cursor_down", "Down", show=False, id="labq.queue.down"),
        Binding("k", "cursor_up", "Up", show=False, id="labq.queue.up"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter = QueueFilter()
        self.sort_column = "RANK"
        self.sort_reverse = False
        self.shown: list[dict[str, Any]] = []
        self._bindings_for: tuple[Any, ...] | None = None

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        yield Input(
            placeholder="filter: text in id, user, name, state or reason (enter to keep, esc to clear)",
            id="filter",
        )
        yield TextLine("", id="summary")
        yield SyncTable(QUEUE_COLUMNS, id="jobs")
        yield TextLine("", id="detail")
        yield from self.compose_footer()

    @property
    def table(self) -> SyncTable:
        return self.query_one("#jobs", SyncTable)

    def on_mount(self) -> None:
        self.table.focus()
        self.refresh_data()

    def refresh_data(self) -> None:
        super().refresh_data()
        now = self.lapp.now()
        jobs = filter_jobs(self.data.jobs, self.filter, self.data.me)
        jobs = sort_jobs(jobs, self.sort_column, self.sort_reverse)
        total = len(jobs)
        jobs = jobs[:MAX_ROWS]
        self.shown = jobs
        columns = queue_columns(self.size.width or 160)
        self.table.set_columns(columns)
        self.table.sync([(str(j["id"]), job_cells(j, now, columns)) for j in jobs])
        f = self.filter
        parts = ["mine" if f.mine else "everyone", {"": "active", "ALL": "all states"}.get(f.state, f.state)]
        if f.user:
            parts.append(f"user {f.user}")
        if f.text:
            parts.append(f"'{f.text}'")
        arrow = "↓" if self.sort_reverse else "↑"
        self.query_one("#summary", TextLine).show(
            f"{total} of {len(self.data.jobs)} jobs"
            + (f" (first {MAX_ROWS} shown: / filters)" if total > MAX_ROWS else "")
            + f" · {' · '.join(parts)} · sorted by {self.sort_column.lower()} {arrow}"
        )
        self._check_bindings()
        self._show_detail()

    def selected(self) -> dict[str, Any] | None:
        key = self.table.selected_key()
        return next((j for j in self.shown if str(j["id"]) == key), None)

    # -- actions -------------------------------------------------------------------------------
    def action_open(self) -> None:
        j = self.selected()
        if j is not None:
            self.lapp.open_job(int(j["id"]))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        col = str(event.column_key.value)
        name = {"WAIT / RUN": "RANK", "REASON / NODE": "RANK", "UTIL": "RANK"}.get(col, col)
        if name == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = name, False
        self.refresh_data()

    def action_logs(self) -> None:
        j = self.selected()
        if j is not None:
            self.lapp.open_job(int(j["id"]), focus_log=True)

    def action_cancel(self) -> None:
        j = self.selected()
        if j is not None:
            self.lapp.confirm_cancel(j)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-shown")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.filter = replace(self.filter, text=event.value)
            self.refresh_data()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            if not event.value:
                event.input.remove_class("-shown")
            self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("-shown")
        self.filter = QueueFilter(mine=self.filter.mine)
        self.table.focus()
        self.refresh_data()

    def action_mine(self) -> None:
        self.filter = replace(self.filter, mine=not self.filter.mine)
        self.refresh_data()

    def action_state(self) -> None:
        """A picker with each state's count, rather than cycling through eleven."""
        counts: dict[str, int] = {}
        for j in self.data.jobs:
            counts[j["state"]] = counts.get(j["state"], 0) + 1
        active = sum(n for s, n in counts.items() if s not in TERMINAL_STATES)
        labels = {"": f"active (not ended)  {active}", "ALL": f"all states  {len(self.data.jobs)}"}
        options = [(s, labels.get(s) or f"{s.lower()}  {counts.get(s, 0)}") for s in STATE_CHOICES]
        self.app.push_screen(Pick("Show jobs that are…", options, self.filter.state), self._state_picked)

    def _state_picked(self, state: str | None) -> None:
        if state is not None:
            self.filter = replace(self.filter, state=state)
            self.refresh_data()

    def action_tasks(self) -> None:
        """Each started task of an array as a row of its own (ID.INDEX), or not."""
        self.lapp.show_tasks = not self.lapp.show_tasks
        self.notify("arrays: each started task shown" if self.lapp.show_tasks else "arrays: one row each")
        self.lapp.poll_now()

    def action_sort(self) -> None:
        i = SORTABLE.index(self.sort_column) if self.sort_column in SORTABLE else 0
        self.sort_column, self.sort_reverse = SORTABLE[(i + 1) % len(SORTABLE)], False
        self.refresh_data()

    def show_user(self, user: str) -> None:
        self.filter = replace(self.filter, user=user, state="ALL")
        self.refresh_data()

    def action_cursor_down(self) -> None:
        self.table.action_cursor_down()

    def action_cursor_up(self) -> None:
        self.table.action_cursor_up()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._check_bindings()
        self._show_detail()

    def on_resize(self) -> None:
        self.refresh_data()

    def _show_detail(self) -> None:
        """The selected job's reason or placement in full: the table cuts it."""
        j = self.selected()
        text = "" if j is None else f"job {ref(j)} ({j['user']}) {array_state(j).lower()}: {where_or_why(j, detail=True)}"
        self.query_one("#detail", TextLine).show(escape(text))

    def _check_bindings(self) -> None:
        """Cancel is offered only on a job this user may cancel: the footer changes when
        the selected job (or its state) does, not at each poll."""
        j = self.selected()
        key = None if j is None else (j["id"], j["state"], j["user"])
        if key != self._bindings_for:
            self._bindings_for = key
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            j = self.selected() if self.is_mounted else None
            if self.lapp.read_only or (j is not None and (not self.lapp.may_cancel(j) or j["state"] in TERMINAL_STATES)):
                return False
        return True
