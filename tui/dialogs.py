"""Small modal dialogs: confirm, and the help screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui.base import Modal


class Confirm(Modal):
    """Yes/no; dismisses with True only on an explicit yes."""

    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Vertical { width: 72; max-width: 100%; height: auto; border: thick $error; background: $surface; padding: 1 2; }
    Confirm Label { width: 100%; }
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


class Pick(Modal):
    """Choose one of a few values (enter), or keep the current one (esc)."""

    DEFAULT_CSS = """
    Pick { align: center middle; }
    Pick > Vertical { width: 44; max-width: 100%; height: auto; max-height: 100%; border: thick $primary; background: $surface; padding: 0 1; }
    Pick OptionList { height: auto; max-height: 16; border: none; }
    """
    BINDINGS = [Binding("escape", "close", "Close", id="labq.pick.close")]

    def __init__(self, title: str, options: list[tuple[str, str]], current: str) -> None:
        super().__init__()
        self.title_text = title
        self.options = options
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"[b]{self.title_text}[/b]")
            yield OptionList(*(Option(label, id=value or "-") for value, label in self.options))

    def on_mount(self) -> None:
        box = self.query_one(OptionList)
        box.highlighted = next((i for i, (v, _) in enumerate(self.options) if v == self.current), 0)
        box.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        value = event.option.id or ""
        self.dismiss("" if value == "-" else value)

    def action_close(self) -> None:
        self.dismiss(None)


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
  f           pick the states    o        sort by the next column
  l           the job's log      c        cancel (asks first)
  home/end    first / last row

[b]Job[/b]
  s  follow the log tail         w        wrap long lines
  /  search the log             n/N      next / previous match
  \\[  load earlier lines          end      the last line
  r  resubmit with changes       c        cancel (asks first)

[b]Quotas[/b] (admins) pick a researcher, edit, ctrl+s saves.

Keys can be remapped: labq tui --keymap 'labq.new=ctrl+n,labq.quit=ctrl+q'
(every binding has an id, e.g. labq.queue.cancel).
"""


class Help(Modal):
    DEFAULT_CSS = """
    Help { align: center middle; }
    Help > VerticalScroll { width: 76; max-width: 100%; height: auto; max-height: 100%; border: thick $primary; background: $surface; padding: 0 1; }
    Help Static { width: auto; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="labq.help.close")]

    def compose(self) -> ComposeResult:
        # Scrolls: at 80x24 the last sections are below the screen's edge.
        with VerticalScroll():
            yield Static(HELP)

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()

    def action_close(self) -> None:
        self.dismiss(None)
