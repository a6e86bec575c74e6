"""Widgets shared by the screens."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable, Static

Row = tuple[str, tuple[str, ...]]


class SyncTable(DataTable[Text]):
    """A DataTable fed whole snapshots, that touches only what changed.

    With 10,000 jobs a full rebuild per refresh would cost far more than the cells
    that really change (a few states and times), so `sync` updates cells in place
    while the row order stays the same, and rebuilds only when it does not.
    """

    DEFAULT_CSS = """
    SyncTable { height: 1fr; }
    """

    def __init__(self, columns: Sequence[str], **kw: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)  # type: ignore[arg-type]
        self._columns = tuple(columns)
        self._rows: dict[str, tuple[str, ...]] = {}
        self._order: list[str] = []

    def on_mount(self) -> None:
        for c in self._columns:
            self.add_column(c, key=c)

    def sync(self, rows: Sequence[Row]) -> int:
        """Show exactly `rows` (key, cells) in this order; returns how many cells changed."""
        order = [k for k, _ in rows]
        changed = 0
        if order == self._order:
            for key, cells in rows:
                old = self._rows[key]
                if old == cells:
                    continue
                for col, (a, b) in zip(self._columns, zip(old, cells, strict=True), strict=True):
                    if a != b:
                        # Text, not str: job names and reasons are data, never markup.
                        self.update_cell(key, col, Text(b))
                        changed += 1
                self._rows[key] = cells
            return changed
        selected = self.selected_key()
        self.clear(columns=False)
        for key, cells in rows:
            self.add_row(*(Text(c) for c in cells), key=key)
        self._rows = dict(rows)
        self._order = order
        if selected in self._rows:
            self.move_cursor(row=order.index(selected), animate=False)
        return len(rows) * len(self._columns)

    def selected_key(self) -> str | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]


class StatusLine(Static):
    """One line at the top of each screen: who you are, and whether the data is fresh."""

    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; color: $text; padding: 0 1; }
    StatusLine.-stale { background: $error; color: $text; }
    """
