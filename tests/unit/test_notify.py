"""`--notify` (issue 16): the webhook rules a root daemon needs, and a job's end told once,
to a real HTTP server on loopback, or by a command run as its owner."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from scheduler.errors import DaemonError
from scheduler.launcher import MemoryLauncher
from scheduler.notify import Notifier, NotifyRefused, check_webhook, message
from scheduler.shapes import JobState
from tests.unit.test_control import ALICE, BOB, ROOT, SPEC, open_daemon, pump


class Hook:
    """A webhook receiver on loopback: what it was sent."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.got.append((self.path, json.loads(body)))
                self.send_response(302)  # a redirect is not followed
                self.send_header("Location", "http://169.254.169.254/")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T0/secret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://127.0.0.1:9/x", "127.0.0.1, not a public address"),
        ("http://localhost/x", "not a public address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254, not a public address"),
        ("http://10.1.2.3/x", "10.1.2.3, not a public address"),
        ("http://[::1]/x", "::1, not a public address"),
        ("ftp://example.com/x", "http:// or https://"),
        ("https://user:pw@example.com/x", "user or password"),
        ("http://example.com:99999/x", "port is not a number"),
        ("http://[::ffff:127.0.0.1]/x", "not a public address"),
        ("http://[::127.0.0.1]/x", "not a public address"),
        ("http://[64:ff9b::a9fe:a9fe]/x", "not a public address"),
        ("http://[2002:a9fe:a9fe::1]/x", "not a public address"),
        ("http://2130706433/x", "not a public address"),
    ],
)
def test_a_webhook_must_be_public_unless_an_admin_allows_it(url: str, why: str) -> None:
    with pytest.raises(NotifyRefused, match=why.replace("(", r"\(").replace(".", r"\.")):
        check_webhook(url)


def test_the_allow_list_takes_names_addresses_and_networks() -> None:
    assert check_webhook("http://127.0.0.1:8/x", ["127.0.0.0/8"])[3] == "127.0.0.1"
    assert check_webhook("http://10.1.2.3/x", ["10.1.2.3"])[3] == "10.1.2.3"
    assert check_webhook("http://localhost:8/x", ["localhost"])[1] == "localhost"
    with pytest.raises(NotifyRefused):
        check_webhook("http://10.1.2.4/x", ["10.1.2.3"])


def test_a_job_end_is_told_once_to_the_webhook_and_its_history_says_so(tmp_path: Path, hook: Hook) -> None:
    launcher = MemoryLauncher()
    d = open_daemon(tmp_path / "state", launcher, notify_allow_hosts=("127.0.0.1",))
    try:
        job = d.control.submit(ALICE, {**SPEC, "name": "train.py", "notify": {"webhook": hook.url}})
        # Someone else never sees the URL (a secret), only that there is one.
        assert "notify" not in d.views.job(d.store.get(job), BOB, full=True)["spec"]
        notifier = Notifier(d.store, ("127.0.0.1",))
        assert notifier.once(wait=5) == 0  # not ended yet
        d.scheduler.one_pass()
        launcher.start(job, 1, at=100.0)
        launcher.finish(job, 1, "failed", exit_code=3, reason="exit code 3", at=3820.0)
        pump(d, launcher)
        assert notifier.once(wait=5) == 1 and notifier.once(wait=5) == 0
        path, body = hook.got[0]
        assert path == "/hooks/T0/secret" and len(hook.got) == 1
        assert body["text"] == "labq: job 1 train.py (alice) FAILED after 1h02m on box-n1: exit code 3"
        assert body["job"]["exit_code"] == 3 and body["job"]["state"] == "FAILED"
        assert d.store.events(job)[-1]["reason"] == "notify: webhook to 127.0.0.1 answered 302"
        # Others see that it was sent, not where (the host is the owner's business).
        bob_view = d.views.job(d.store.get(job), BOB, full=True)["events"][-1]["reason"]
        assert bob_view == "notify: sent to its owner"
        # Loopback is refused at submit unless allowed, in one line, and nothing is queued.
        d2 = open_daemon(tmp_path / "state2", MemoryLauncher())
        with pytest.raises(DaemonError, match="notify: the webhook's host 127.0.0.1 is 127.0.0.1, not a public address"):
            d2.control.submit(ALICE, {**SPEC, "notify": {"webhook": hook.url}})
        assert d2.store.jobs() == []
        d2.store.close()
    finally:
        d.store.close()


def test_an_array_is_told_once_when_all_of_it_has_ended(tmp_path: Path, hook: Hook) -> None:
    launcher = MemoryLauncher()
    d = open_daemon(tmp_path / "state", launcher, notify_allow_hosts=("127.0.0.1",))
    try:
        arr = d.control.submit(ALICE, {**SPEC, "name": "seeds", "array": "0-2", "notify": {"webhook": hook.url}})
        d.scheduler.one_pass()
        tasks = [r.id for r in d.store.jobs(states=(JobState.STARTING,))]
        assert len(tasks) == 3 and all("notify" not in d.store.get(t).spec for t in tasks)
        for t in tasks:
            launcher.start(t, 1)
            launcher.finish(t, 1, "succeeded")
        pump(d, launcher)
        notifier = Notifier(d.store, ("127.0.0.1",))
        assert notifier.once(wait=5) == 0  # the tasks have ended, the array is not settled yet
        d.scheduler.one_pass()
        assert notifier.once(wait=5) == 1
        assert [b["text"] for _, b in hook.got] == [f"labq: array {arr} seeds (alice) SUCCEEDED: all 3 tasks succeeded"]
    finally:
        d.store.close()


def test_a_command_runs_as_its_owner_with_the_jobs_facts(tmp_path: Path) -> None:
    d = open_daemon(tmp_path / "state", MemoryLauncher())
    try:
        out = tmp_path / "told"
        job = d.control.submit(
            ROOT, {**SPEC, "notify": {"command": f'echo "$LABQ_JOB_STATE $(id -u) $LABQ_MESSAGE" > {out}'}}
        )
        d.control.cancel(ROOT, job)
        assert Notifier(d.store).once(wait=10) == 1
        assert out.read_text() == f"CANCELLED {os.geteuid()} labq: job {job} train (root) CANCELLED: cancelled by root\n"
        assert d.store.events(job)[-1]["reason"] == "notify: command exited 0"
        # A job whose owner has no account here: nothing runs, and the history says why.
        ghost = d.control.submit(ALICE, {**SPEC, "notify": {"command": f"touch {tmp_path}/ghost"}})
        d.control.cancel(ALICE, ghost)
        Notifier(d.store).once(wait=10)
        assert not (tmp_path / "ghost").exists()
        assert d.store.events(ghost)[-1]["reason"].startswith("notify: command not run")
    finally:
        d.store.close()


def test_the_message_names_what_a_person_needs() -> None:
    job = {"ref": "42.7", "name": "t.py", "user": "ana", "state": "SUCCEEDED", "start_time": 0.0, "end_time": 59.0, "reason": ""}
    assert message(job) == "labq: job 42.7 t.py (ana) SUCCEEDED after 59s"


def test_one_bad_notification_or_one_slow_owner_holds_up_nobody_else(tmp_path: Path, hook: Hook) -> None:
    """A send that raises is recorded as failed and never sent again; a user whose
    command takes long occupies one slot of their own while others' go out."""
    d = open_daemon(tmp_path / "state", MemoryLauncher(), notify_allow_hosts=("127.0.0.1",))
    try:
        with pytest.raises(DaemonError, match="must be ASCII"):
            d.control.submit(ALICE, {**SPEC, "notify": {"webhook": "http://8.8.8.8:8080/h\u00e9"}})
        slow = d.control.submit(ROOT, {**SPEC, "notify": {"command": "sleep 3; echo late"}})
        poison = d.control.submit(ALICE, {**SPEC, "notify": {"webhook": hook.url}})
        fine = d.control.submit(BOB, {**SPEC, "notify": {"webhook": hook.url}})
        for job, who in ((slow, ROOT), (poison, ALICE), (fine, BOB)):
            d.control.cancel(who, job)
        notifier = Notifier(d.store, ("127.0.0.1",))
        real = notifier.send

        def send(job: dict[str, Any]) -> str:
            if job["id"] == poison:
                raise UnicodeEncodeError("ascii", "\u00e9", 0, 1, "a bug in a send")
            return real(job)

        notifier.send = send  # type: ignore[method-assign]
        t0 = time.monotonic()
        assert notifier.once(wait=1) == 3
        assert [b["job"]["id"] for _, b in hook.got] == [fine]  # not held up by the slow command
        assert time.monotonic() - t0 < 2.5
        assert d.store.events(poison)[-1]["reason"] == "notify: failed: UnicodeEncodeError"
        assert notifier.once(wait=5) == 0  # the poisoned one is done with; the slow one in flight
        for _ in range(100):
            if d.store.events(slow)[-1]["reason"] == "notify: command exited 0":
                break
            time.sleep(0.05)
        assert d.store.events(slow)[-1]["reason"] == "notify: command exited 0"
    finally:
        d.store.close()


def test_a_notify_command_leaves_nothing_running(tmp_path: Path) -> None:
    from scheduler.notify import run_command

    marker = tmp_path / "never"
    t0 = time.monotonic()
    out = run_command(["sh", "-c", f"(sleep 2; touch {marker}) & sleep 30"], "root", 0, {}, timeout=0.5)
    assert out == "command killed after 0.5s" and time.monotonic() - t0 < 5
    out = run_command(["sh", "-c", f"(sleep 1; touch {marker}) & exit 0"], "root", 0, {})
    assert out == "command exited 0"
    time.sleep(2.5)
    assert not marker.exists()  # its background child went with it, both times
