"""Interactive GPU sessions (issue 17): `labq shell`, `labq attach`, `labq notebook`.

A session is a job (it queues under fair share and quotas, says why it waits, counts
toward usage) whose command runs on a terminal on its node. The screen comes back as
the job's log; what is typed goes to the daemon (sessions.py), over the same socket or
token as every other command, so it works over SSH from a desktop as `labq` does.
Stdlib-only, as the rest of the client.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import secrets
import select
import shutil
import signal
import sys
import termios
import threading
import time
import tty
from typing import Any

from scheduler.cli_spec import build_spec
from scheduler.client import Client, ClientError
from scheduler.console import UsageError, say
from scheduler.present import where_or_why
from scheduler.shapes import TERMINAL_NAMES

DETACH = b"\x1d"  # Ctrl-]: detach, as telnet; the session keeps running
TAIL_ON_ATTACH = 8192  # bytes of the screen's past shown when re-attaching


def _session_spec(c: Client, args: argparse.Namespace, kind: str, command: list[str]) -> dict[str, Any]:
    args.command, args.dashdash = command, True
    spec, _, _ = build_spec(args, remote=c.remote is not None)
    spec["session"] = kind
    spec.setdefault("name", kind)
    return spec


def _wait_started(c: Client, job_id: int, what: str) -> dict[str, Any]:
    """Until the session runs, saying why it waits when that changes; ^C cancels it
    (as Slurm's salloc gives up its allocation)."""
    said = ""
    # ^C must reach us even if whatever started us ignored SIGINT (a Python started
    # with SIGINT ignored leaves it so): the wait is promised to give up on ^C.
    with contextlib.suppress(ValueError):  # not the main thread: leave it as it is
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            j: dict[str, Any] = dict(c.job(job_id))
            if j["state"] == "RUNNING":
                return j
            if j["state"] in TERMINAL_NAMES:
                raise ClientError(f"{what} {job_id} ended {j['state']} before it started: {(j.get('reasons') or [''])[0]}")
            why = where_or_why(j) if j["state"] == "PENDING" else j["state"].lower()
            if why != said:
                say(f"labq: {what} {job_id} waits: {why}", file=sys.stderr)
                said = why
            time.sleep(0.3)
    except KeyboardInterrupt:
        c.cancel(job_id)
        sys.stderr.write("\n")
        say(f"labq: {what} {job_id} cancelled before it started", file=sys.stderr)
        raise


def _need_terminal(verb: str) -> None:
    if not (os.isatty(0) and os.isatty(1)):
        raise UsageError(
            f"`labq {verb}` needs a terminal (stdin and stdout are not one): for a script, use `labq submit`"
        )


def cmd_shell(c: Client, args: argparse.Namespace) -> int:
    _need_terminal("shell")
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    if not shell or shell.endswith(("nologin", "false")):
        shell = "/bin/bash"
    spec = _session_spec(c, args, "shell", [shell, "-l"])
    job_id = c.submit(spec)
    say(f"labq: session {job_id} queued (Ctrl-C while it waits gives it up; once it runs, Ctrl-] detaches and `exit` ends it)", file=sys.stderr)
    _wait_started(c, job_id, "session")
    return attach(c, str(job_id), fresh=True)


def cmd_attach(c: Client, args: argparse.Namespace) -> int:
    _need_terminal("attach")
    return attach(c, args.job_id, fresh=False)


def attach(c: Client, job_ref: str, fresh: bool) -> int:
    j: dict[str, Any] = dict(c.job(job_ref))
    if j.get("kind") != "shell":
        raise UsageError(f"job {job_ref} is not a shell session (labq logs -f {job_ref} follows a job's output)")
    if j["state"] in TERMINAL_NAMES:
        raise ClientError(f"session {job_ref} has ended ({j['state']}); labq logs {job_ref} shows what it printed")
    if j["state"] != "RUNNING":
        j = _wait_started(c, int(j["id"]), "session")
    offset = 0
    if not fresh:
        offset = int(c.log(job_ref, tail=TAIL_ON_ATTACH)["start"])
    return _Terminal(c, job_ref).run(offset)


class _Terminal:
    """This terminal joined to a session: raw mode, keystrokes to the daemon from a
    thread, the screen from the session's log in the main thread."""

    def __init__(self, c: Client, job_ref: str) -> None:
        self.c = c
        self.job_ref = job_ref
        self.typer = Client(c.socket_path, timeout=c.timeout, remote=c.remote)  # its own connection
        self.done = threading.Event()
        self.detached = False
        self.error = ""
        self.resized = threading.Event()
        self.tty = os.isatty(0)
        self._said_full = 0.0

    def _size(self) -> tuple[int, int] | None:
        try:
            size = os.get_terminal_size(0 if self.tty else 1)
        except OSError:
            return None
        return (size.lines, size.columns) if size.lines > 0 and size.columns > 0 else None

    def _type(self) -> None:
        """Keystrokes (and new sizes) to the session until detached or it ends."""
        try:
            self._send(b"", self._size())
            while not self.done.is_set():
                if self.resized.is_set():
                    self.resized.clear()
                    self._send(b"", self._size())
                ready, _, _ = select.select([0], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(0, 4096)
                if not data:
                    return  # the terminal went away: the session keeps running (attach again)
                if DETACH in data:
                    data = data[: data.index(DETACH)]
                    if data:
                        self._send(data)
                    self.detached = True
                    self.done.set()
                    return
                self._send(data)
        except ClientError as e:
            if e.status != 409:  # 409: the session ended, and the main thread says how
                self.error = str(e)
                self.done.set()
        finally:
            self.typer.close()

    def _send(self, data: bytes, size: tuple[int, int] | None = None) -> None:
        try:
            self.typer.tty(self.job_ref, data, size)
        except ClientError as e:
            if e.status != 429:
                raise
            # The session is not reading what it is sent (its terminal is full): this
            # input is dropped, and this terminal stays joined, Ctrl-] still detaching.
            now = time.monotonic()
            if now - self._said_full > 2.0:
                self._said_full = now
                sys.stderr.write(f"\r\nlabq: {e}\r\n")
                sys.stderr.flush()

    def run(self, offset: int) -> int:
        saved = None
        if self.tty:
            saved = termios.tcgetattr(0)
            tty.setraw(0)
        old_winch = signal.signal(signal.SIGWINCH, lambda *_: self.resized.set())
        typer = threading.Thread(target=self._type, name="labq-typer", daemon=True)
        typer.start()
        out = sys.stdout.buffer
        idle = 0.02
        try:
            while not self.done.is_set():
                chunk = self.c.log(self.job_ref, offset)
                if chunk["data"]:
                    out.write(chunk["data"].encode())
                    out.flush()
                    idle = 0.02
                offset = chunk["offset"]
                if offset < chunk["size"]:
                    continue
                if chunk["done"]:
                    last = self.c.log(self.job_ref, offset)
                    out.write(last["data"].encode())
                    out.flush()
                    break
                time.sleep(idle)
                idle = min(0.1, idle * 1.5)  # quick while it talks, cheap while it is quiet
        finally:
            self.done.set()
            signal.signal(signal.SIGWINCH, old_winch)
            if saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
        sys.stderr.write("\r\n")  # the shell's last line may have no end
        if self.error:
            say(f"labq: {self.error}", file=sys.stderr)
            return 1
        if self.detached:
            say(f"labq: detached from session {self.job_ref}; it keeps running (labq attach {self.job_ref})", file=sys.stderr)
            return 0
        j = self.c.job(self.job_ref)
        say(f"labq: session {self.job_ref} ended {j['state']}", file=sys.stderr)
        # As ssh does: the shell's own exit status (1 if it had none: killed, cancelled).
        code = j.get("exit_code")
        return int(code) if isinstance(code, int) and 0 <= code < 256 and j["state"] in ("SUCCEEDED", "FAILED") else 1


URL = re.compile(r"https?://(?:127\.0\.0\.1|localhost)[^\s]*:(\d+)/lab\S*")


def cmd_notebook(c: Client, args: argparse.Namespace) -> int:
    """JupyterLab as a session: loopback on its node, a token only its owner can read
    (a file in their home, which the node reads as them), and the SSH tunnel, printed."""
    if shutil.which("jupyter-lab") is None:
        raise UsageError(
            "JupyterLab is not installed in this environment (labq runs `jupyter-lab` from your PATH "
            "on the node): pip install jupyterlab"
        )
    # The token goes in a file of the user's (0600), not in the job's environment,
    # which admins can read: an admin could otherwise use the notebook as its owner.
    token = secrets.token_urlsafe(24)
    # A directory of its own: the daemon places the notebook only on a node that sees
    # it (JobSpec.needs_dir), so a cluster without shared homes picks this machine.
    base = os.path.join(os.path.expanduser("~"), ".local", "share", "labq")
    os.makedirs(base, mode=0o700, exist_ok=True)
    token_dir = os.path.join(base, f"notebook-{secrets.token_hex(6)}")
    os.mkdir(token_dir, 0o700)
    token_file = os.path.join(token_dir, "token")
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    args.env = [*(args.env or []), f"JUPYTER_TOKEN_FILE={token_file}"]
    command = ["jupyter-lab", "--no-browser", "--ip=127.0.0.1", "--port=8888", "--port-retries=200"]
    if os.getuid() == 0:
        command.append("--allow-root")  # the job runs as its submitter: here, root
    spec = _session_spec(c, args, "notebook", command)
    job_id = c.submit(spec)
    say(f"labq: notebook {job_id} queued", file=sys.stderr)
    j = _wait_started(c, job_id, "notebook")
    deadline = time.monotonic() + args.start_timeout
    offset, text = 0, ""
    while time.monotonic() < deadline:
        chunk = c.log(job_id, offset)
        offset, text = chunk["offset"], text + chunk["data"]
        found = URL.search(text)
        if found:
            port = found.group(1)
            node = j.get("node_name") or "its node"
            say(f"JupyterLab is up (notebook {job_id} on {node}):")
            say(f"  http://127.0.0.1:{port}/lab?token={token}")
            say(f"  from your desktop, first: ssh -N -L {port}:127.0.0.1:{port} {node}")
            say(f"  labq cancel {job_id} ends it; it counts toward your GPU use while it runs")
            return 0
        if chunk["done"]:
            last = [line for line in (text + c.log(job_id, offset)["data"]).splitlines() if line.strip()]
            said = f": {last[-1].strip()[:300]}" if last else ""
            raise ClientError(f"notebook {job_id} ended before JupyterLab was up{said} (labq logs {job_id})")
        time.sleep(0.5)
    raise ClientError(f"JupyterLab did not say its address within {args.start_timeout:.0f}s: labq logs {job_id}")
