"""The team: who uses how much, against their share."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from tui.base import DataScreen
from tui.model import TEAM_COLUMNS, pick, team_columns, team_rows
from tui.widgets import SyncTable


class TeamScreen(DataScreen):
    title_text = "Team"
    DEFAULT_CSS = """
    TeamScreen #teamnote { height: auto; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("enter", "jobs", "Their jobs", id="labq.team.jobs"),
        Binding("j", "cursor_down", "Down", show=False, id="labq.team.down"),
        Binding("k", "cursor_up", "Up", show=False, id="labq.team.up"),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        yield Static(
            "FS GPU-h: the decayed usage fair share counts (with each job's start charge), so it differs "
            "from WEEK GPU-h, the GPU-hours held in the last 7 days (`labq usage`). FACTOR 1 = no recent "
            "usage, 0.5 = used exactly their share. HELD vs SHARE: GPUs held now against their share "
            "(▶ = borrowing).",
            id="teamnote",
        )
        yield SyncTable(TEAM_COLUMNS, id="team")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        self.query_one("#team", SyncTable).focus()
        self.refresh_data()

    def refresh_data(self) -> None:
        super().refresh_data()
        width = self.size.width or 160
        columns = team_columns(width)
        table = self.query_one("#team", SyncTable)
        table.set_columns(columns)
        rows = team_rows(self.data, width=20 if width >= 110 else 8)
        table.sync([(key, pick(cells, TEAM_COLUMNS, columns)) for key, cells in rows])

    def on_resize(self) -> None:
        self.refresh_data()

    def action_jobs(self) -> None:
        user = self.query_one("#team", SyncTable).selected_key()
        if user:
            self.lapp.show_user(user)

    def action_cursor_down(self) -> None:
        self.query_one("#team", SyncTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one("#team", SyncTable).action_cursor_up()
