"""Every node and GPU: utilization and memory over the last minutes, who holds it, health."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding

from tui.base import DataScreen
from tui.model import GPU_COLUMNS, gpu_columns, gpu_rows, pick
from tui.widgets import SyncTable, TextLine


class GpusScreen(DataScreen):
    title_text = "GPUs"
    DEFAULT_CSS = """
    GpusScreen #gpusummary { height: 1; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False, id="labq.gpus.down"),
        Binding("k", "cursor_up", "Up", show=False, id="labq.gpus.up"),
        Binding("enter", "open", "Open job", id="labq.gpus.open"),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        yield TextLine("", id="gpusummary")
        yield SyncTable(GPU_COLUMNS, id="gpus")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        self.query_one("#gpus", SyncTable).focus()
        self.refresh_data()

    def refresh_data(self) -> None:
        super().refresh_data()
        # Sparklines get what the screen can spare: wide terminals see more history.
        width = max(10, min(30, self.size.width - 120))
        rows = gpu_rows(self.data, self.lapp.now(), spark_width=width)
        columns = gpu_columns(self.size.width or 160)
        table = self.query_one("#gpus", SyncTable)
        table.set_columns(columns)
        table.sync([(key, pick(cells, GPU_COLUMNS, columns)) for key, cells in rows])
        gpus = [g for n in self.data.nodes for g in n.get("gpu_list", [])]
        busy = [g["util_gpu"] for g in gpus if g.get("util_gpu") is not None]
        bad = sum(1 for g in gpus if not g.get("healthy", True))
        mean = f"{sum(busy) / len(busy):.0f}%" if busy else "n/a"
        held = sum(1 for g in gpus if g.get("job_id"))
        sim = " · simulated GPUs" if any(n.get("simulated") for n in self.data.nodes) else ""
        count = len(self.data.nodes)
        empty = "no nodes" if not count else f"{count} node{'s' if count != 1 else ''}"
        self.query_one("#gpusummary", TextLine).show(
            f"{empty} · {len(gpus)} GPUs · {held} held by jobs · mean utilization {mean}"
            f"{f' · {bad} UNHEALTHY' if bad else ''}{sim}"
        )

    def on_resize(self) -> None:
        self.refresh_data()

    def action_cursor_down(self) -> None:
        self.query_one("#gpus", SyncTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one("#gpus", SyncTable).action_cursor_up()

    def action_open(self) -> None:
        key = self.query_one("#gpus", SyncTable).selected_key() or ""
        if key.startswith("gpu:"):
            _, node, idx = key.split(":")
            for n in self.data.nodes:
                if n["id"] == node:
                    for g in n.get("gpu_list", []):
                        if str(g["index"]) == idx and g.get("job_id"):
                            self.lapp.open_job(int(g["job_id"]))
