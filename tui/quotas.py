"""Quotas: admins edit a researcher's fields; everyone sees them and the audit log."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, DataTable, Input, Label, Select, Static

from scheduler.present import max_gpus_text
from tui.api import BackendError
from tui.base import DataScreen
from tui.model import stamp
from tui.widgets import SyncTable

FIELDS = ("shares", "guaranteed_gpus", "max_gpus", "max_jobs", "gpu_hours_per_week")
OPTIONAL = ("max_gpus", "max_jobs", "gpu_hours_per_week")  # empty or "none" = no limit
IDLE_ACTIONS = ("notify", "cancel", "requeue")
QUOTA_COLUMNS = ("USER", "SHARES", "GUAR", "MAX GPUS", "MAX JOBS", "GPU-h/WEEK", "IDLE ACTION")
AUDIT_COLUMNS = ("TIME", "WHO", "ACTION", "TARGET", "DETAIL")


def parse_max_gpus(raw: str) -> tuple[tuple[int | None, dict[str, int]], str]:
    """The max GPUs field as `quota show` writes it: `8`, `h100:4`, `8 h100:4` or empty."""
    overall: int | None = None
    per_type: dict[str, int] = {}
    for part in raw.replace(",", " ").split():
        t, sep, n = part.partition(":")
        v, err = parse_field("max_gpus", n if sep else t)
        if err or (sep and v is None):
            return (None, {}), "max gpus: N, TYPE:N (e.g. 8 h100:4) or empty for no limit" if sep else err
        if sep:
            per_type[t.lower()] = int(v)
        else:
            overall = v
    return (overall, per_type), ""


def parse_field(name: str, raw: str) -> tuple[Any, str]:
    """(value, error) for one form field, checked the way the daemon will check it."""
    raw = raw.strip()
    if name in OPTIONAL and raw.lower() in ("", "none", "-"):
        return None, ""
    try:
        v = float(raw)
    except ValueError:
        return None, f"{name} must be a number" + (" or empty for no limit" if name in OPTIONAL else "")
    if name == "shares":
        return (v, "") if v > 0 else (None, "shares must be > 0")
    if name == "gpu_hours_per_week":
        return (v, "") if v >= 0 else (None, "must be >= 0")
    if v != int(v) or v < 0:
        return None, f"{name} must be a whole number >= 0"
    return int(v), ""


def _opt(v: Any) -> str:
    return "" if v is None else f"{v:g}"


class QuotasScreen(DataScreen):
    title_text = "Quotas"
    DEFAULT_CSS = """
    QuotasScreen #top { height: 1fr; }
    QuotasScreen #quotas { width: 1fr; }
    QuotasScreen #form { width: 40%; min-width: 30; max-width: 44; padding: 0 1; border-left: solid $primary; }
    QuotasScreen #form Label { margin-top: 1; color: $text-muted; }
    QuotasScreen #formerror { color: $error; height: auto; }
    QuotasScreen #audit { height: 40%; border-top: solid $primary; }
    """
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", id="labq.quotas.save"),
        Binding("escape", "focus_table", "Back to list", show=False, id="labq.quotas.back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.user = ""
        self.audit_rows: list[dict[str, Any]] = []
        self._editable: bool | None = None

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        with Horizontal(id="top"):
            yield SyncTable(QUOTA_COLUMNS, id="quotas")
            with VerticalScroll(id="form"):
                yield Static("", id="formtitle")
                for f in FIELDS:
                    yield Label(f.replace("_", " ") + (" (empty = none)" if f in OPTIONAL else ""))
                    yield Input(id=f"q-{f}", compact=True)
                yield Label("idle action")
                yield Select(
                    [(a, a) for a in IDLE_ACTIONS], id="q-idle_action", allow_blank=False, compact=True
                )
                yield Static("", id="formerror")
                yield Button("Save (ctrl+s)", id="save", variant="primary")
        yield SyncTable(AUDIT_COLUMNS, id="audit")
        yield from self.compose_footer()

    @property
    def editable(self) -> bool:
        return self.data.admin and not self.lapp.read_only

    def on_mount(self) -> None:
        self.query_one("#quotas", SyncTable).focus()
        self.refresh_data()
        self.load_audit()

    @work(thread=True, exclusive=True, group="audit")
    def load_audit(self) -> None:
        try:
            rows = self.lapp.backend.audit()
        except BackendError:
            return
        self.later(self.show_audit, rows)

    def show_audit(self, rows: list[dict[str, Any]]) -> None:
        self.audit_rows = rows
        self.query_one("#audit", SyncTable).sync(
            [
                (str(i), (stamp(r["time"]), r["actor"], r["action"], r["target"], str(r["detail"])[:80]))
                for i, r in enumerate(rows)
            ]
        )

    def refresh_data(self) -> None:
        super().refresh_data()
        quotas = self.data.quotas.get("quotas", [])
        self.query_one("#quotas", SyncTable).sync(
            [
                (
                    q["user"],
                    (
                        q["user"],
                        f"{q['shares']:g}",
                        str(q["guaranteed_gpus"]),
                        max_gpus_text(q),
                        _opt(q.get("max_jobs")) or "-",
                        _opt(q.get("gpu_hours_per_week")) or "-",
                        str(q.get("idle_action", "notify")),
                    ),
                )
                for q in quotas
            ]
        )
        if not self.user and quotas:
            self.load_user(quotas[0]["user"])
        self.set_editable()

    def set_editable(self) -> None:
        editable = self.editable
        if editable == self._editable:
            return  # each poll asks: only a change touches the widgets
        self._editable = editable
        for w in self.query("#form Input, #form Select"):
            w.disabled = not editable
        self.query_one("#save", Button).display = editable  # nothing to save for others
        if not editable:
            why = "read-only mode" if self.lapp.read_only else "only admins may change quotas"
            self.query_one("#formerror", Static).update(f"read-only: {why}")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "quotas" and event.row_key.value:
            self.load_user(str(event.row_key.value))

    def load_user(self, user: str) -> None:
        q = next((q for q in self.data.quotas.get("quotas", []) if q["user"] == user), None)
        if q is None:
            return
        self.user = user
        self.query_one("#formtitle", Static).update(f"[b]{user}[/b]")
        for f in FIELDS:
            self.query_one(f"#q-{f}", Input).value = _opt(q.get(f))
        # Per GPU type too (`8 h100:4`), as quota show writes it.
        self.query_one("#q-max_gpus", Input).value = max_gpus_text(q).strip("-")
        self.query_one("#q-idle_action", Select).value = q.get("idle_action", "notify")
        self.query_one("#formerror", Static).update("")
        self._editable = None  # said again for this user
        self.set_editable()

    def form_values(self) -> tuple[dict[str, Any], list[str]]:
        values: dict[str, Any] = {}
        errors: list[str] = []
        for f in FIELDS:
            raw = self.query_one(f"#q-{f}", Input).value
            if f == "max_gpus":
                (v, per_type), err = parse_max_gpus(raw)
                values["max_gpus_per_type"] = per_type
            else:
                v, err = parse_field(f, raw)
            if err:
                errors.append(err)
            else:
                values[f] = v
        values["idle_action"] = self.query_one("#q-idle_action", Select).value
        return values, errors

    def on_input_changed(self, event: Input.Changed) -> None:
        _, errors = self.form_values()
        if self.editable:
            self.query_one("#formerror", Static).update("\n".join(errors))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()

    def action_save(self) -> None:
        if not self.editable or not self.user:
            return
        values, errors = self.form_values()
        if errors:
            self.query_one("#formerror", Static).update("\n".join(errors))
            return
        current: dict[str, Any] = next(
            (q for q in self.data.quotas.get("quotas", []) if q["user"] == self.user), {}
        )
        current = {**current, "max_gpus_per_type": {t: n for t, n in current.get("max_gpus_per_type") or ()}}
        changed = {k: v for k, v in values.items() if current.get(k) != v}
        if not changed:
            self.query_one("#formerror", Static).update("nothing changed")
            return
        self.save(self.user, changed)

    @work(thread=True, exclusive=True, group="save")
    def save(self, user: str, changed: dict[str, Any]) -> None:
        try:
            out = self.lapp.backend.set_quota(user, changed)
        except BackendError as e:
            self.later(self.query_one("#formerror", Static).update, str(e))
            return
        self.later(self.saved, user, changed, out.get("warning"))

    def saved(self, user: str, changed: dict[str, Any], warning: str | None = None) -> None:
        self.notify(f"{user}: {', '.join(f'{k} = {v}' for k, v in changed.items())}", title="quota saved")
        if warning:
            self.notify(warning, title="check the name", severity="warning")
        self.query_one("#formerror", Static).update("saved")
        self.lapp.poll_now()
        self.load_audit()

    def action_focus_table(self) -> None:
        self.query_one("#quotas", SyncTable).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "save" and not self.editable)
