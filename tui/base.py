"""What every screen shares: the status line, the footer, and being told of new data."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from textual.app import ComposeResult
from textual.message import Message
from textual.message_pump import MessagePump
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer

from tui.model import Data, age, clock
from tui.widgets import StatusLine

if TYPE_CHECKING:
    from tui.app import LabqApp


class Later(Message):
    """Run `fn(*args)` on the UI's own loop: how worker threads hand results back.

    A message rather than `call_from_thread`, so whatever the callback starts (timers,
    redraws) lives in the app's context.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__()
        self.fn = fn
        self.args = args


def run_later(m: Later, pump: MessagePump) -> None:
    """Run a worker's result on `pump` (the app, a screen), unless it is going away.

    A poll thread that finishes while the app shuts down posts its result after the
    screens were pruned; redrawing then fails (`No screens on stack`, `No nodes match`)
    and that error, not the data, is what the user would see on quit.
    """
    m.stop()
    app = pump.app
    if pump.is_running and not pump._closing and app.is_running and app.screen_stack:
        m.fn(*m.args)


class DataScreen(Screen[None]):
    """A screen that redraws from `app.data` after each poll (`refresh_data`)."""

    title_text = ""

    @property
    def lapp(self) -> LabqApp:
        return cast("LabqApp", self.app)

    @property
    def data(self) -> Data:
        return self.lapp.data

    def compose_status(self) -> ComposeResult:
        yield StatusLine(id="status")

    def compose_footer(self) -> ComposeResult:
        yield Footer()

    def on_screen_resume(self) -> None:
        self.refresh_data()

    def later(self, fn: Callable[..., Any], *args: Any) -> None:
        """From a worker thread: run fn(*args) on the UI loop."""
        self.post_message(Later(fn, *args))

    def on_later(self, m: Later) -> None:
        run_later(m, self)

    def refresh_data(self) -> None:
        self.update_status()

    def update_status(self) -> None:
        try:
            line = self.query_one("#status", StatusLine)
        except Exception:  # noqa: BLE001 - not composed yet
            return
        line.show(status_text(self.data, self.lapp.now(), self.title_text, self.lapp.read_only))
        line.set_class(bool(self.data.error), "-stale")


def status_text(data: Data, now: float, title: str, read_only: bool) -> str:
    who = data.me or "?"
    role = " (admin)" if data.admin else ""
    ro = "  read-only" if read_only else ""
    if data.error:
        since = f" since {clock(data.down_since)}" if data.down_since else ""
        last = f"; showing values from {age(now - data.fetched_at)} ago" if data.fetched_at else ""
        return f"labq · {title} · {data.error}{since}{last}"
    h = data.health
    counts = h.get("counts", {})
    running = counts.get("RUNNING", 0) + counts.get("STARTING", 0)
    pending = counts.get("PENDING", 0)
    ray = "" if (h.get("ray") or {}).get("connected", True) else "  Ray unreachable"
    return f"labq · {title} · {who}{role} · {running} running, {pending} pending{ray}{ro}"


class Modal(ModalScreen[Any]):
    @property
    def lapp(self) -> LabqApp:
        return cast("LabqApp", self.app)

    def later(self, fn: Callable[..., Any], *args: Any) -> None:
        self.post_message(Later(fn, *args))

    def on_later(self, m: Later) -> None:
        run_later(m, self)
