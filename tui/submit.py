"""New job: a form checked as you type that says what would happen before you submit."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.timer import Timer
from textual.widgets import Button, Input, Label, Static

from scheduler.jobfile import JobFileError, load_job_file
from scheduler.paths import INHERITED_ENV
from scheduler.present import parse_env, placeholder_warning, preview_lines
from scheduler.units import UnitError, parse_array, parse_job_ids, parse_size, parse_sweep, parse_time_limit
from tui.api import BackendError
from tui.base import Modal

FIELDS = (
    ("command", "command", "python train.py --lr 3e-4"),
    ("gpus", "GPUs", "1"),
    ("nodes", "nodes", "1 (more: the GPUs above, in all, over that many whole nodes, one rank each)"),
    ("gpu_type", "GPU type", "e.g. h100 (empty: any; the GPUs screen shows each node's)"),
    ("constraint", "node labels", "labels the node must have: ib,nvlink (empty: none)"),
    ("cpus", "CPUs", "0"),
    ("memory", "memory", "e.g. 32G (empty: none)"),
    ("time", "time limit", "e.g. 4h (empty: the default)"),
    ("workdir", "workdir", ""),
    ("env", "env", "KEY=VALUE KEY2=VALUE2"),
    ("name", "name", ""),
    ("priority", "priority", "0"),
    ("after", "after jobs", "ids that must succeed first: 41,42 or 40.* (empty: none)"),
    ("array", "array", "many tasks: 0-99%8 ({index} in the command; empty: one job)"),
    ("sweep", "sweep", "a grid: lr=1e-3,3e-4 bs=32,64 ({lr} in the command)"),
    ("notify", "notify me", "y: when it ends, as ~/.config/labq/config.yaml says (webhook or command)"),
    ("preemptible", "preemptible", "y: a scavenger: only idle GPUs, given back as soon as another job needs them"),
    ("code", "code", "now: freeze the workdir's code as it is now; live: run it as it is when the job starts"),
)
CODE_CHOICES = ("now", "live", "as submitted")


def form_to_spec(
    values: dict[str, str], base_env: dict[str, str], code: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """(spec, errors by field) from the form's text, checked like the daemon checks it.
    `code`: the frozen code of the job being resubmitted ("as submitted" keeps it)."""
    spec: dict[str, Any] = {}
    errors: dict[str, str] = {}
    choice = values.get("code", "").strip().lower() or "now"
    if choice not in CODE_CHOICES or (choice == "as submitted" and not code):
        errors["code"] = "now or live" + (" or as submitted" if code else "")
    elif choice == "as submitted" and code:
        spec["code"] = {"id": code["id"]}
    try:
        argv = shlex.split(values.get("command", ""))
    except ValueError as e:
        argv = []
        errors["command"] = f"cannot split: {e}"
    if argv:
        spec["command"] = argv
    elif "command" not in errors:
        errors["command"] = "give the command to run"
    for f, lo in (("gpus", 1), ("nodes", 1), ("priority", -1000)):
        raw = values.get(f, "").strip()
        if raw:
            try:
                spec[f] = int(raw)
                if spec[f] < lo:
                    errors[f] = f"must be >= {lo}"
            except ValueError:
                errors[f] = "must be a whole number"
    raw = values.get("cpus", "").strip()
    if raw:
        try:
            spec["cpus"] = float(raw)
            if spec["cpus"] < 0:
                errors["cpus"] = "must be >= 0"
        except ValueError:
            errors["cpus"] = "must be a number"
    for f, parse in (("memory", parse_size), ("time", parse_time_limit)):
        raw = values.get(f, "").strip()
        if raw:
            try:
                parse(raw)
                spec[f] = raw
            except UnitError as e:
                errors[f] = str(e)
    from scheduler.gputypes import check_name

    gtype = values.get("gpu_type", "").strip()
    if gtype:
        try:
            spec["gpu_type"] = check_name("GPU type", gtype)
        except ValueError as e:
            errors["gpu_type"] = str(e)
    labels = [x for x in values.get("constraint", "").replace(" ", ",").split(",") if x]
    if labels:
        try:
            spec["constraint"] = sorted({check_name("label", x) for x in labels})
        except ValueError as e:
            errors["constraint"] = str(e)
    workdir = values.get("workdir", "").strip()
    if workdir:
        spec["workdir"] = os.path.abspath(os.path.expanduser(workdir))
        if not os.path.isdir(spec["workdir"]):
            errors["workdir"] = "no such directory here"
    env = dict(base_env)
    try:
        items = shlex.split(values.get("env", ""))
    except ValueError as e:
        items = []
        errors["env"] = f"cannot split: {e}"
    try:
        env.update(parse_env(items))
    except ValueError as e:
        errors["env"] = str(e)
    spec["env"] = env
    if values.get("name", "").strip():
        spec["name"] = values["name"].strip()
    if values.get("after", "").strip():
        try:
            spec["after"] = parse_job_ids(values["after"])
        except ValueError as e:
            errors["after"] = str(e)
    array = values.get("array", "").strip()
    if array:
        try:
            parse_array(array)
            spec["array"] = array
        except UnitError as e:
            errors["array"] = str(e).removeprefix("--array: ")
    sweep = values.get("sweep", "").strip()
    if sweep:
        try:
            spec["sweep"] = parse_sweep(shlex.split(sweep))
        except (UnitError, ValueError) as e:
            errors["sweep"] = str(e).removeprefix("--sweep ")
        if array:
            errors["sweep"] = "an array or a sweep, not both"
    preemptible = values.get("preemptible", "").strip().lower()
    if preemptible in ("y", "yes"):
        spec["preemptible"] = True
    elif preemptible not in ("", "n", "no"):
        errors["preemptible"] = "y or empty"
    notify = values.get("notify", "").strip().lower()
    if notify in ("y", "yes"):
        from scheduler.console import UsageError
        from scheduler.userconfig import user_notify

        try:
            spec["notify"] = user_notify()
        except UsageError as e:
            errors["notify"] = str(e).removeprefix("--notify: ")
    elif notify not in ("", "n", "no"):
        errors["notify"] = "y or empty"
    return spec, errors


def spec_to_form(spec: dict[str, Any]) -> dict[str, str]:
    """The form's text for an existing job's spec (resubmit with changes) or a job YAML."""
    cmd = spec.get("command", [])
    out = {
        "command": cmd if isinstance(cmd, str) else shlex.join(str(a) for a in cmd),
        "workdir": str(spec.get("workdir") or ""),
        "name": str(spec.get("name") or ""),
    }
    for f in ("gpus", "nodes", "cpus", "priority"):
        if spec.get(f) is not None:
            out[f] = f"{spec[f]:g}" if isinstance(spec[f], float) else str(spec[f])
    if spec.get("memory"):
        out["memory"] = str(spec["memory"])
    if spec.get("gpu_type"):
        out["gpu_type"] = str(spec["gpu_type"])
    if spec.get("constraint"):
        out["constraint"] = ",".join(map(str, spec["constraint"]))
    if spec.get("time"):
        t = spec["time"]
        out["time"] = f"{int(t)}s" if isinstance(t, (int, float)) else str(t)
    env = {k: v for k, v in (spec.get("env") or {}).items() if k not in INHERITED_ENV}
    out["env"] = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())
    after = spec.get("after")
    if after:
        out["after"] = after if isinstance(after, str) else ",".join(str(i) for i in after)
    if spec.get("array"):
        cap = spec.get("max_running")
        out["array"] = str(spec["array"]) + (f"%{cap}" if cap and "%" not in str(spec["array"]) else "")
    if spec.get("notify"):
        out["notify"] = "y"
    if spec.get("preemptible"):
        out["preemptible"] = "y"
    out["code"] = "as submitted" if isinstance(spec.get("code"), dict) else "now"
    sweep = spec.get("sweep") or {}
    if sweep:
        out["sweep"] = " ".join(f"{k}={','.join(str(v) for v in vals)}" for k, vals in sweep.items())
    return out


class SubmitScreen(Modal):
    DEFAULT_CSS = """
    SubmitScreen { align: center middle; }
    SubmitScreen > Vertical { width: 96; max-width: 100%; height: 90%; max-height: 100%; border: thick $primary; background: $surface; padding: 0 1; }
    SubmitScreen VerticalScroll { height: 1fr; }
    SubmitScreen .row { height: 1; margin-top: 1; }
    SubmitScreen .err { display: none; }
    SubmitScreen .err.-shown { display: block; }
    SubmitScreen .row Label { width: 12; }
    SubmitScreen .row Input { width: 1fr; }
    SubmitScreen .err { color: $error; height: auto; padding-left: 12; }
    SubmitScreen #preview { height: auto; min-height: 3; border: round $accent; padding: 0 1; }
    SubmitScreen #buttons { height: 3; align-horizontal: right; }
    SubmitScreen Button { margin-left: 2; }
    """
    BINDINGS = [
        Binding("escape", "close", "Close", id="labq.submit.close"),
        Binding("ctrl+s", "submit", "Submit", id="labq.submit.submit"),
    ]

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.initial = spec_to_form(spec) if spec else {"gpus": "1", "workdir": os.getcwd(), "code": "now"}
        self.code = spec.get("code") if spec and isinstance(spec.get("code"), dict) else None
        self.base_env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        self._debounce: Timer | None = None
        self.spec: dict[str, Any] = {}
        self.errors: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("[b]New job[/b]  (checked as you type; the preview asks the scheduler)")
            with VerticalScroll():
                with Horizontal(classes="row"):
                    yield Label("job YAML")
                    yield Input(placeholder="path to a job.yaml (enter loads it)", id="yaml", compact=True)
                for key, label, placeholder in FIELDS:
                    with Horizontal(classes="row"):
                        yield Label(label)
                        yield Input(
                            value=self.initial.get(key, ""),
                            placeholder=placeholder,
                            id=f"f-{key}",
                            compact=True,
                        )
                    yield Static("", classes="err", id=f"e-{key}")
            yield Static("", id="preview")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Submit (ctrl+s)", id="submit", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#f-command", Input).focus()
        self.validate()

    def values(self) -> dict[str, str]:
        return {key: self.query_one(f"#f-{key}", Input).value for key, _, _ in FIELDS}

    def validate(self) -> None:
        self.spec, self.errors = form_to_spec(self.values(), self.base_env, self.code)
        for key, _, _ in FIELDS:
            err = self.query_one(f"#e-{key}", Static)
            err.update(self.errors.get(key, ""))
            err.set_class(key in self.errors, "-shown")  # no empty line under each field
        self.query_one("#submit", Button).disabled = bool(self.errors)
        if self._debounce is not None:
            self._debounce.stop()
        if not self.errors:
            # Said at once, not when the timer fires: "fix the fields" must not stay up
            # for the 0.4 s until the scheduler is asked.
            self.query_one("#preview", Static).update("asking the scheduler…")
            self._debounce = self.set_timer(0.4, self.ask_preview)
        else:
            self.query_one("#preview", Static).update("fix the fields above to see what would happen")

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id and event.input.id.startswith("f-"):
            self.validate()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "yaml" and event.value.strip():
            self.load_yaml(Path(event.value.strip()).expanduser())

    def load_yaml(self, path: Path) -> None:
        # The same reader and checks as `labq submit job.yaml` (unknown fields refused).
        try:
            data, _lines = load_job_file(path)
        except JobFileError as e:
            self.query_one("#preview", Static).update(escape(str(e)))
            return
        for key, value in spec_to_form(data).items():
            self.query_one(f"#f-{key}", Input).value = value
        self.validate()

    def ask_preview(self) -> None:
        self.query_one("#preview", Static).update("asking the scheduler…")
        self.preview(dict(self.spec))

    @work(thread=True, exclusive=True, group="preview")
    def preview(self, spec: dict[str, Any]) -> None:
        try:
            out = self.lapp.backend.preview(spec)
            text = _preview_text(out)
            typo = placeholder_warning(spec)  # as `labq submit` warns
            if typo:
                text += f"\n[b]warning:[/b] {escape(typo)}"
        except BackendError as e:
            text = f"[b]would be refused:[/b] {escape(str(e))}"
        self.later(self.query_one("#preview", Static).update, text)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit":
            self.action_submit()
        else:
            self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_submit(self) -> None:
        self.validate()
        if self.errors:
            return
        self.send(dict(self.spec), self.values().get("code", "").strip().lower() in ("", "now"))

    @work(thread=True, exclusive=True, group="submit")
    def send(self, spec: dict[str, Any], freeze: bool) -> None:
        try:
            job_id = self.lapp.backend.submit(spec, freeze=freeze)
        except BackendError as e:
            self.later(self.query_one("#preview", Static).update, f"[b]refused:[/b] {escape(str(e))}")
            return
        self.later(self.dismiss, job_id)


def _preview_text(out: dict[str, Any]) -> str:
    """The scheduler's answer, as `labq submit --dry-run` says it (present.preview_lines)."""
    import time

    rows = []
    for line in preview_lines(out, time.time()):
        text = escape(line.text)
        rows.append(f"[b]{text}[/b]" if line.kind == "head" else f"  • {text}" if line.kind == "reason" else text)
    return "\n".join(rows)
