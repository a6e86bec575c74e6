"""Interactive sessions (issue 17) on a real daemon and real Ray: `labq shell` driven
through a pty as another Unix user, detach and `labq attach`, who may type into one,
and `labq notebook` where JupyterLab is installed."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import termios
import time
from typing import Any

import pytest

from tests.conftest import SYSTEM_PYTHON, Labq, as_user, unix_user, wait_for

pytestmark = pytest.mark.integration


class Pty:
    """`labq ARGS` as `uid`, on a terminal of its own, read and typed into as a person would."""

    def __init__(self, lq: Labq, uid: int, *args: str, sigint_ignored: bool = False) -> None:
        self.master, slave = os.openpty()
        env = {**lq.env(), "PYTHONPATH": str(lq.client_copy()), "HOME": "/tmp", "TERM": "xterm"}
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-m", "scheduler.cli", *args],
            stdin=slave, stdout=slave, stderr=slave, env=env, cwd="/tmp",
            preexec_fn=self._setup(uid, sigint_ignored), start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    @staticmethod
    def _setup(uid: int, sigint_ignored: bool):  # type: ignore[no-untyped-def]
        drop = as_user(uid)

        def setup() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # its terminal, as a login's: ^C is SIGINT
            # As a login would give it, or (`sigint_ignored`) as a parent caught in
            # system(3) would: labq must take ^C back where it promises to honour it.
            signal.signal(signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.SIG_DFL)
            drop()

        return setup

    def expect(self, pattern: str, timeout: float = 60) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern.encode())
        while True:
            found = rx.search(self.seen)
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout}s; the terminal shows:\n{self.seen.decode(errors='replace')}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    time.sleep(0.1)

    def type(self, text: str | bytes) -> None:
        os.write(self.master, text.encode() if isinstance(text, str) else text)

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                self.expect(r"\Z\A", timeout=0.2)  # keep draining the terminal
            except AssertionError:
                pass
        return self.proc.wait(timeout=1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def _session_procs(leader: int) -> list[tuple[int, str, list[str]]]:
    """(pid, comm, stat fields after comm) of every process in the session `leader` leads."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields: state ppid pgrp session tty_nr tpgid ...
        if fields[3] == str(leader):
            out.append((int(pid), stat[stat.index("(") + 1 : stat.rindex(")")], fields))
    return out


def _foreground_sleep(leader: int) -> bool:
    """The session's `sleep` is its terminal's foreground process group."""
    return any(comm == "sleep" and f[2] == f[5] for _, comm, f in _session_procs(leader))


def _signals(leader: int) -> str:
    """Each of the session's processes and its blocked and ignored signals (for a failure)."""
    lines = []
    for pid, comm, f in _session_procs(leader):
        try:
            with open(f"/proc/{pid}/status") as st:
                sig = " ".join(x.strip() for x in st if x.startswith(("SigBlk", "SigIgn")))
        except OSError:
            sig = "gone"
        lines.append(f"{pid} {comm} pgrp={f[2]} tpgid={f[5]} {sig}")
    return "\n".join(lines)


def _session_of(lq: Labq, user: str) -> dict[str, Any]:
    c = lq.client()
    try:
        found = [j for j in c.jobs(user=user) if j.get("kind") == "shell" and j["state"] == "RUNNING"]
    finally:
        c.close()
    return found[-1] if found else {}


def test_a_shell_session_runs_as_the_user_on_its_gpus_and_exit_ends_it(labq4: Labq) -> None:
    bob = unix_user("labqtest-bob")
    term = Pty(labq4, bob, "shell", "--gpus", "2", "--time", "10m")
    try:
        job_id = int(term.expect(r"session (\d+) queued").group(1))
        term.expect(r"[$#] $")  # the prompt: typed before it, input may be flushed by the shell
        term.type("echo CVD=$CUDA_VISIBLE_DEVICES U=$(id -un) T=$(tty)\n")
        found = term.expect(r"CVD=(\d+,\d+) U=(\S+) T=(/dev/pts/\d+)")
        assert found.group(2) == b"labqtest-bob"
        assert found.group(1).decode() == labq4.job(job_id)["gpu_ids"]
        # The queue says what it is; an admin sees it but cannot type into it.
        queue = labq4.run("queue").stdout
        assert re.search(rf"^\s*{job_id}\s.*\bshell\b", queue, re.M), queue
        c = labq4.client()
        try:
            with pytest.raises(Exception, match="only its owner may type into it"):
                c.tty(job_id, b"id\n")
        finally:
            c.close()
        # ^C reaches the foreground command (the Ray worker's blocked SIGINT is not inherited).
        term.type("sleep 100\n")
        # ^C only once sleep is the terminal's foreground: a ^C that lands while the
        # shell is still starting it goes to the shell, as on any terminal.
        leader = int(labq4.job(job_id)["pid"])  # the shell, its session's leader
        wait_for("sleep in the foreground", lambda: _foreground_sleep(leader), 20)
        t0 = time.monotonic()
        term.type(b"\x03")
        term.type("echo after-$((6*7))\n")
        try:
            term.expect("after-42", timeout=10)
        except AssertionError as e:
            raise AssertionError(f"{e}\nthe session's processes:\n{_signals(leader)}") from None
        assert time.monotonic() - t0 < 5
        term.type("exit 0\n")
        assert term.wait() == 0
        term.expect(rf"session {job_id} ended SUCCEEDED")
        assert labq4.job(job_id)["state"] == "SUCCEEDED"
    finally:
        term.close()


def test_cancelling_a_session_hangs_it_up_at_once_saying_so(labq4: Labq) -> None:
    """An interactive shell ignores SIGTERM: a session is hung up (SIGHUP) and told why,
    not left to its grace period (60 s here)."""
    bob = unix_user("labqtest-bob")
    term = Pty(labq4, bob, "shell", "--grace", "60")
    try:
        job_id = int(term.expect(r"session (\d+) queued").group(1))
        term.expect(r"[$#] $")
        t0 = time.monotonic()
        labq4.run("cancel", str(job_id))
        term.expect(r"this session is stopping \(cancelled by root\); it is killed in 60s")
        assert term.wait() == 1
        assert labq4.job(job_id)["state"] == "CANCELLED" and time.monotonic() - t0 < 20
    finally:
        term.close()
    r = labq4.run("shell", check=False, user=bob, cwd="/tmp")  # no terminal: nothing queued
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "labq: `labq shell` needs a terminal (stdin and stdout are not one): for a script, use `labq submit`"
    ], r.stderr


def test_a_session_that_does_not_read_refuses_more_typing_and_attach_stays_usable(labq4: Labq) -> None:
    """A big paste into a session that does not read its terminal: labq holds a bounded
    amount, then says so on the terminal; Ctrl-] still detaches (a red-team pass found
    the client stuck for good in raw mode), and cancel --now ends the session at once."""
    bob = unix_user("labqtest-bob")
    term = Pty(labq4, bob, "shell", "--time", "10m")
    try:
        job_id = int(term.expect(r"session (\d+) queued").group(1))
        term.expect(r"[$#] $")
        term.type("stty raw -echo; echo not-$((6*7)); exec sleep 1000\n")
        term.expect("not-42")
        chunk = b"y" * 4095 + b"\n"
        sent, deadline = 0, time.monotonic() + 90
        while b"is not reading what you type" not in term.seen:
            assert time.monotonic() < deadline and sent < 4 << 20, f"{sent} bytes typed, no refusal"
            _, writable, _ = select.select([], [term.master], [], 0.2)
            if writable:
                sent += os.write(term.master, chunk)
            try:
                term.expect(r"\Z\A", timeout=0.01)  # drain the screen
            except AssertionError:
                pass
        assert sent < 1 << 20  # bounded: runner 64 KiB, Executor 64 KiB, the terminal's own
        term.type(b"\x1d")  # Ctrl-]
        assert term.wait(timeout=30) == 0
        term.expect(rf"detached from session {job_id}; it keeps running")
        t0 = time.monotonic()
        labq4.run("cancel", "--now", str(job_id))
        wait_for("the session cancelled", lambda: labq4.job(job_id)["state"] == "CANCELLED", 30)
        assert time.monotonic() - t0 < 15
    finally:
        term.close()


def test_detach_and_attach_again(labq4: Labq) -> None:
    bob = unix_user("labqtest-bob")
    term = Pty(labq4, bob, "shell")
    again = None
    try:
        job_id = int(term.expect(r"session (\d+) queued").group(1))
        term.expect(r"[$#] $")
        term.type("X=remembered; echo ready-$((40+2))\n")
        term.expect("ready-42")
        term.type(b"\x1d")  # Ctrl-]
        assert term.wait() == 0
        term.expect(rf"detached from session {job_id}; it keeps running")
        assert labq4.job(job_id)["state"] == "RUNNING"
        # Someone else cannot attach to it (nor see its screen).
        alice = unix_user("labqtest-alice")
        other = Pty(labq4, alice, "attach", str(job_id))
        try:
            other.expect(f"labq: job {job_id}'s log belongs to labqtest-bob")
            assert other.wait() == 1
            assert b"ready-42" not in other.seen
        finally:
            other.close()
        again = Pty(labq4, bob, "attach", str(job_id))
        again.expect("ready-42")  # the screen's recent past comes back
        again.type("echo still-$X\n")
        again.expect("still-remembered")
        # From a desktop, with a token over TCP: the same session, the same rule.
        from scheduler.client import Client, ClientError, Remote

        listen = re.search(r"listen: (\S+)", (labq4.state_dir / "labq.yaml").read_text()).group(1)  # type: ignore[union-attr]
        for who, ok in (("labqtest-bob", True), ("labqtest-alice", False)):
            token = labq4.json("token", "create", who)["token"]
            remote = Client(remote=Remote(f"http://{listen}", token))
            try:
                if ok:
                    remote.tty(job_id, b"echo via-token-$X\n")
                    again.expect("via-token-remembered")
                else:
                    with pytest.raises(ClientError, match="only its owner may type into it"):
                        remote.tty(job_id, b"id\n")
            finally:
                remote.close()
        again.type("exit 3\n")
        assert again.wait() == 3  # as ssh: the shell's own status
        again.expect(rf"session {job_id} ended FAILED")
    finally:
        term.close()
        if again is not None:
            again.close()


def test_a_session_that_waits_says_why_and_ctrl_c_gives_it_up(labq4: Labq) -> None:
    bob = unix_user("labqtest-bob")
    big = labq4.submit("--no-snapshot", "--gpus", "4", "--", "sleep", "300")
    term = Pty(labq4, bob, "shell", "--gpus", "1", sigint_ignored=True)
    try:
        labq4.wait(big, ("RUNNING",))
        job_id = int(term.expect(r"session (\d+) queued").group(1))
        term.expect(rf"session {job_id} waits: ")
        term.type(b"\x03")  # Ctrl-C while it waits
        term.expect(rf"session {job_id} cancelled before it started")
        wait_for("it to be cancelled", lambda: labq4.job(job_id)["state"] == "CANCELLED")
    finally:
        term.close()
        labq4.run("cancel", "--now", str(big), check=False)


@pytest.mark.skipif(shutil.which("jupyter-lab") is None, reason="JupyterLab is not installed in this environment")
def test_a_notebook_prints_its_url_and_the_url_answers(labq4: Labq) -> None:
    import pwd
    import urllib.request

    bob = unix_user("labqtest-bob")
    home = pwd.getpwuid(bob).pw_dir
    out = labq4.run("notebook", "--gpus", "1", timeout=300, user=bob, cwd="/tmp", env={"HOME": home})
    url = re.search(r"(http://127\.0\.0\.1:\d+/lab\?token=\S+)", out.stdout)
    assert url, out.stdout
    job_id = int(re.search(r"notebook (\d+) on", out.stdout).group(1))  # type: ignore[union-attr]
    try:
        with urllib.request.urlopen(url.group(1), timeout=30) as r:
            assert r.status == 200
        # The token is nowhere an admin reads: not in the job's spec, not in its log.
        token = url.group(1).split("token=")[1]
        assert token not in json.dumps(labq4.job(job_id)) and token not in labq4.run("logs", str(job_id)).stdout
    finally:
        labq4.run("cancel", str(job_id), check=False)


def test_notebook_without_jupyterlab_says_how_to_get_it(labq4: Labq) -> None:
    env_path = "/usr/bin:/bin"
    if any(os.path.exists(os.path.join(d, "jupyter-lab")) for d in env_path.split(":")):
        pytest.skip("jupyter-lab is installed system-wide here")
    r = labq4.run("notebook", check=False, env={"PATH": env_path})
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "labq: JupyterLab is not installed in this environment (labq runs `jupyter-lab` from your PATH "
        "on the node): pip install jupyterlab"
    ], r.stderr
