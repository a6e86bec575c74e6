"""The team: who uses how much, against their share."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from tui.base import DataScreen
from tui.model import TEAM_COLUMNS, team_rows
from tui.widgets import SyncTable


class TeamScreen(DataScreen):
    title_text = "Team"
    DEFAULT_CSS = """
    TeamScreen #teamnote { height: 2; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("enter", "jobs", "Their jobs", id="labq.team.jobs"),
        Binding("j", "cursor_down", "Down", show=False, id="labq.team.down"),
        Binding("k", "cursor_up", "Up", show=False, id="labq.team.up"),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        yield Static(
            "HELD vs SHARE: GPUs held now against the GPUs the person's shares entitle them to "
            "(▶ = borrowing beyond it). FACTOR 1 = no recent usage, 0.5 = used exactly their share.",
            id="teamnote",
        )
        yield SyncTable(TEAM_COLUMNS, id="team")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        self.query_one("#team", SyncTable).focus()
        self.refresh_data()

    def refresh_data(self) -> None:
        super().refresh_data()
        self.query_one("#team", SyncTable).sync(team_rows(self.data))

    def action_jobs(self) -> None:
        user = self.query_one("#team", SyncTable).selected_key()
        if user:
            self.lapp.show_user(user)

    def action_cursor_down(self) -> None:
        self.query_one("#team", SyncTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one("#team", SyncTable).action_cursor_up()
