"""Small modal dialogs: confirm, and the help screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Label, Static

from tui.base import Modal


class Confirm(Modal):
    """Yes/no; dismisses with True only on an explicit yes."""

    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Vertical { width: 64; height: auto; border: thick $error; background: $surface; padding: 1 2; }
    Confirm Horizontal { height: auto; align-horizontal: right; margin-top: 1; }
    Confirm Button { margin-left: 2; }
    """
    BINDINGS = [
        Binding("y", "yes", "Yes", id="labq.confirm.yes"),
        Binding("n,escape", "no", "No", id="labq.confirm.no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            with Horizontal():
                yield Button("No", id="no")
                yield Button("Yes", variant="error", id="yes")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


HELP = """\
[b]labq[/b] — the team's GPU queue

[b]Anywhere[/b]
  1 2 3 4     Queue, GPUs, Team, Quotas
  n           new job            ctrl+p   jump to a job, node or user
  ?           this help          q        quit
  esc         back

[b]Queue[/b]
  j/k ↑/↓     move               enter    open the job
  /           filter by text     m        mine / everyone
  f           state filter       o        sort by the next column
  l           the job's log      c        cancel (asks first)

[b]Job[/b]
  s  follow the log tail         w        wrap long lines
  /  search the log (highlights) r        resubmit with changes
  c  cancel (asks first)

[b]Quotas[/b] (admins) pick a researcher, edit, ctrl+s saves.

Keys can be remapped: labq tui --keymap 'labq.new=ctrl+n,labq.quit=ctrl+q'
(every binding has an id, e.g. labq.queue.cancel).
"""


class Help(Modal):
    DEFAULT_CSS = """
    Help { align: center middle; }
    Help > Static { width: 76; height: auto; max-height: 90%; border: thick $primary; background: $surface; padding: 1 2; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="labq.help.close")]

    def compose(self) -> ComposeResult:
        yield Static(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
