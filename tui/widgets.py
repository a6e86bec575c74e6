"""Widgets shared by the screens."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.binding import Binding
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
    # Home/End go to the first/last row (DataTable's own scroll sideways).
    BINDINGS = [
        Binding("home", "first_row", "First", show=False),
        Binding("end", "last_row", "Last", show=False),
    ]

    def __init__(self, columns: Sequence[str], **kw: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)  # type: ignore[arg-type]
        self._columns = tuple(columns)
        self._rows: dict[str, tuple[str, ...]] = {}
        self._order: list[str] = []

    def on_mount(self) -> None:
        for c in self._columns:
            self.add_column(c, key=c)

    def set_columns(self, columns: Sequence[str]) -> None:
        """Show these columns (a narrow terminal shows fewer): the rows come back with
        the next `sync`, which must then give cells for exactly these."""
        columns = tuple(columns)
        if columns == self._columns:
            return
        self._columns = columns
        self.clear(columns=True)
        for c in columns:
            self.add_column(c, key=c)
        self._rows, self._order = {}, []

    def sync(self, rows: Sequence[Row]) -> int:
        """Show exactly `rows` (key, cells) in this order; returns how many cells changed."""
        order = [k for k, _ in rows]
        new = dict(rows)
        selected = self.selected_key()
        gone = [k for k in self._order if k not in new]
        if len(gone) + (len(new) - len(self._order) + len(gone)) > max(8, len(new) // 4):
            # Many rows come and go (a new filter): DataTable.remove_row is linear in the
            # table, so starting again is cheaper than editing.
            self.clear(columns=False)
            for key, cells in rows:
                self.add_row(*(Text(c) for c in cells), key=key)
            self._rows, self._order = new, order
            if selected in new:
                self.move_cursor(row=order.index(selected), animate=False)
            return len(rows) * len(self._columns)
        changed = 0
        for key in gone:
            self.remove_row(key)
            del self._rows[key]
            changed += len(self._columns)
        for key, cells in rows:
            old = self._rows.get(key)
            if old is None:
                # Text, not str: job names and reasons are data, never markup.
                self.add_row(*(Text(c) for c in cells), key=key)
                changed += len(cells)
            elif old != cells:
                for col, a, b in zip(self._columns, old, cells, strict=True):
                    if a != b:
                        self.update_cell(key, col, Text(b))
                        changed += 1
            self._rows[key] = cells
        if order != self._order:
            self._reorder(order)
            self._order = order
            if selected in new:
                self.move_cursor(row=order.index(selected), animate=False)
        return changed

    def _reorder(self, order: list[str]) -> None:
        """Put the rows in `order` without re-adding them (what DataTable.sort does inside)."""
        try:
            from textual._two_way_dict import TwoWayDict
            from textual.widgets._data_table import RowKey

            self._row_locations = TwoWayDict({RowKey(k): i for i, k in enumerate(order)})
            self._update_count += 1
            self.refresh()
        except (ImportError, AttributeError):  # a Textual without these internals: rebuild
            self.clear(columns=False)
            for key in order:
                self.add_row(*(Text(c) for c in self._rows[key]), key=key)

    def action_first_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=0, animate=False)

    def action_last_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1, animate=False)

    def selected_key(self) -> str | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]


class TextLine(Static):
    """A Static told its text again each poll: `show` redraws only when it changed
    (Static.update lays the whole screen out again, even for the same text, and an idle
    UI would spend most of its time doing that)."""

    _shown: str | None = None

    def show(self, text: str) -> None:
        if text != self._shown:
            self._shown = text
            self.update(text)


class StatusLine(TextLine):
    """One line at the top of each screen: who you are, and whether the data is fresh."""

    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; color: $text; padding: 0 1; }
    StatusLine.-stale { background: $error; color: $text; }
    """
