"""The queue: every job, why it waits and when it will start."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from tui.base import DataScreen
from tui.model import QUEUE_COLUMNS, STATES, QueueFilter, filter_jobs, job_cells, sort_jobs
from tui.widgets import SyncTable

STATE_CYCLE = ("", "ALL", *STATES)
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
    """
    BINDINGS = [
        Binding("enter", "open", "Open", id="labq.queue.open"),
        Binding("l", "logs", "Log", id="labq.queue.logs"),
        Binding("c", "cancel", "Cancel", id="labq.queue.cancel"),
        Binding("slash", "filter", "Filter", id="labq.queue.filter"),
        Binding("m", "mine", "Mine/all", id="labq.queue.mine"),
        Binding("f", "state", "State", id="labq.queue.state"),
        Binding("o", "sort", "Sort", id="labq.queue.sort"),
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

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        yield Input(
            placeholder="filter: text in id, user, name, state or reason (enter to keep, esc to clear)",
            id="filter",
        )
        yield Static("", id="summary")
        yield SyncTable(QUEUE_COLUMNS, id="jobs")
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
        self.table.sync([(str(j["id"]), job_cells(j, now)) for j in jobs])
        f = self.filter
        parts = ["mine" if f.mine else "everyone", {"": "active", "ALL": "all states"}.get(f.state, f.state)]
        if f.user:
            parts.append(f"user {f.user}")
        if f.text:
            parts.append(f"'{f.text}'")
        arrow = "↓" if self.sort_reverse else "↑"
        self.query_one("#summary", Static).update(
            f"{total} of {len(self.data.jobs)} jobs"
            + (f" (first {MAX_ROWS} shown: / filters)" if total > MAX_ROWS else "")
            + f" · {' · '.join(parts)} · sorted by {self.sort_column.lower()} {arrow}"
        )

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
        i = STATE_CYCLE.index(self.filter.state)
        self.filter = replace(self.filter, state=STATE_CYCLE[(i + 1) % len(STATE_CYCLE)])
        self.refresh_data()

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

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel" and self.lapp.read_only:
            return None
        return True
