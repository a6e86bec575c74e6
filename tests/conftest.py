"""Shared fixtures: a real labq daemon on a real local Ray with logical GPUs."""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from scheduler.client import Client, ClientError
from scheduler.shapes import TERMINAL_NAMES

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
# Everything `labq` needs on the client side; stdlib only (see test_boundaries.py).
CLIENT_MODULES = (
    "__init__.py",
    "cli.py",
    "client.py",
    "config.py",
    "units.py",
    "present.py",
    "console.py",
    "jobfile.py",
    "shapes.py",
    "paths.py",
    "cliparse.py",
    "userconfig.py",
    "cli_code.py",
    "snapshot.py",
    "cli_spec.py",
    "cli_session.py",
    "cli_logs.py",
    "gputypes.py",
    "join.py",
)


@dataclass
class Labq:
    """A daemon under test and a way to run the real `labq` command against it."""

    root: Path
    state_dir: Path
    socket: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LABQ_SOCKET"] = str(self.socket)
        env["LABQ_STATE_DIR"] = str(self.state_dir)
        env["PYTHONPATH"] = str(REPO)
        return env

    def run(
        self,
        *args: str,
        check: bool = True,
        user: int | None = None,
        timeout: float = 180,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        preexec: Callable[[], None] | None = None
        python, env = sys.executable, {**self.env(), **(env or {})}
        if user is not None:
            # Another user cannot run this venv's python (it may live under /root), so
            # the stdlib-only client runs from a world-readable copy under the system python.
            python, env["PYTHONPATH"] = SYSTEM_PYTHON, str(self.client_copy())
            preexec = as_user(user) if _has_account(user) else _bare_uid(user)

        proc = subprocess.run(
            [python, "-m", "scheduler.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=preexec,
            cwd=cwd or str(self.work()),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"labq {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def work(self) -> Path:
        """Where `labq` runs unless a test says: a researcher's (empty) directory. Not the
        root, whose state dir (Ray's session files) every submit would look through
        for code to freeze."""
        dest = self.root / "work"
        if not dest.exists():
            dest.mkdir()
            os.chmod(dest, 0o755)  # other test users submit from here too
        return dest

    def client_copy(self) -> Path:
        dest = self.root / "client"
        if not dest.exists():
            (dest / "scheduler").mkdir(parents=True)
            for name in CLIENT_MODULES:
                shutil.copy(REPO / "scheduler" / name, dest / "scheduler" / name)
            for p in (dest, dest / "scheduler", *dest.joinpath("scheduler").iterdir()):
                os.chmod(p, 0o755)
        return dest

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def submit(self, *args: str, **kw: Any) -> int:
        out = self.run("submit", "--json", *args, **kw)
        return int(json.loads(out.stdout)["id"])

    def client(self) -> Client:
        """The daemon's API in this process, as root (an admin). The `labq` command is
        tested as such where it is the subject; polling goes through this instead of
        a new CLI process every few hundred milliseconds."""
        return Client(self.socket, timeout=60)

    def job(self, job_id: int) -> dict[str, Any]:
        c = self.client()
        try:
            return dict(c.job(job_id))
        finally:
            c.close()

    def wait(self, job_id: int, states: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            f"job {job_id} to be {'/'.join(states)}",
            lambda: (j := self.job(job_id))["state"] in states and j,
            timeout,
            lambda: self._why_not(job_id),
        )

    def _why_not(self, job_id: int) -> str:
        """The state a job is in, with its last events: what a failed wait needs to be
        diagnosed after the daemon's state directory is gone (e.g. a LOST job's reason)."""
        j = self.job(job_id)
        events = "; ".join(f"{e.get('new_state')}: {e.get('reason')}" for e in (j.get("events") or [])[-4:])
        return f"it is {j['state']}" + (f" (last events: {events})" if events else "")

    def wait_all(self, ids: list[int], states: tuple[str, ...], timeout: float = 120) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]] | None:
            c = self.client()
            try:
                jobs = [j for j in c.jobs(include_finished=True) if j["id"] in ids]
            finally:
                c.close()
            ok = len(jobs) == len(ids) and all(j["state"] in states for j in jobs)
            return jobs if ok else None

        return wait_for(f"jobs {ids} to be {'/'.join(states)}", done, timeout)

    def log(self, job_id: int) -> str:
        return self.run("logs", str(job_id)).stdout

    def daemon_pid(self) -> int:
        return int(json.loads((self.state_dir / "daemon.json").read_text())["pid"])

    def up(self, *args: str, cwd: str | None = None) -> None:
        self.run("up", "--state-dir", str(self.state_dir), *args, cwd=cwd)

    def passes(self, n: int = 3, timeout: float = 30) -> None:
        """Wait until the scheduler has made `n` more passes (to check that something
        stays as it is, pass after pass, without guessing how long that takes)."""
        seen: set[float] = set()

        def more() -> bool:
            c = self.client()
            try:
                seen.add(float(c.health()["last_pass"]))
            finally:
                c.close()
            return len(seen) > n

        wait_for(f"{n} scheduling passes", more, timeout)

    def queue(self, include_finished: bool = False) -> list[dict[str, Any]]:
        """Job summaries through the in-process client (see `client`)."""
        c = self.client()
        try:
            return list(c.jobs(include_finished=include_finished))
        finally:
            c.close()

    def down(self) -> None:
        """Stop everything this daemon started, fast and whatever state a failed test
        left: the daemon, its embedded Ray (whose workers' jobs die with them, by
        PDEATHSIG), and any job process left in labq's cgroups for this daemon."""
        ns = ""
        try:
            import sqlite3

            with sqlite3.connect(f"file:{self.state_dir / 'labq.db'}?mode=ro", uri=True, timeout=1) as db:
                row = db.execute("SELECT value FROM meta WHERE key='executor_id'").fetchone()
                ns = str(row[0])[:8] if row else ""
        except Exception:  # noqa: BLE001 - no database yet, or a broken one: nothing to name
            pass
        if not (self.state_dir / "ray-head.json").exists() and self.socket.exists():
            # An external cluster outlives this test: its detached actors (the Executor,
            # the GPU monitors) must go with the daemon, which only `down` does.
            self.run("down", "--kill", "--timeout", "30", check=False, timeout=60)
        try:
            pid = self.daemon_pid()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                ours = str(self.state_dir).encode() in f.read()
            if ours:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        from scheduler import raycluster

        raycluster.stop_embedded(self.state_dir, timeout=0)  # a test's cluster: no need to be gentle
        if ns:
            kill_job_cgroups(ns)


def kill_job_cgroups(namespace: str) -> None:
    """End and remove the job cgroups of one daemon (`<cgroup2>/labq/<ns>-<job>.<attempt>`)."""
    from scheduler.runner import _cgroup2_mount

    mount = _cgroup2_mount()
    base = Path(mount) / "labq" if mount else None
    if base is None or not base.is_dir():
        return
    for cg in base.glob(f"{namespace}-*"):
        try:
            (cg / "cgroup.kill").write_text("1")
        except OSError:
            pass
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.02)


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _bare_uid(uid: int) -> Callable[[], None]:
    """For a uid with no account at all (what a user namespace or `setpriv --reuid`
    reaches): no groups, gid = uid."""

    def drop() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return drop


T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None | bool], timeout: float = 30.0, why: Callable[[], str] | None = None) -> T:
    """Poll `check` until it returns something truthy (and return that); a clear
    failure after `timeout` seconds. Tests wait on conditions, never on fixed sleeps."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        got = check()
        if got:
            return got  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}" + (f": {why()}" if why else ""))
        time.sleep(delay)
        delay = min(0.3, delay * 1.5)


def free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


# Test users this run created are removed (with their homes and processes) when the run
# ends. Under pytest-xdist the workers share them: one lock makes `useradd` happen once,
# and the names go to a file the controller (the process without PYTEST_XDIST_WORKER)
# empties at its end, after every worker has finished with them.
_USERS_LOCK = "/tmp/labq-test-users.lock"


def _users_file() -> Path:
    """The file of names to remove: the controller's, set before its workers start (they
    inherit it); a run without workers is its own controller."""
    return Path(os.environ.setdefault("LABQ_TEST_USERS_FILE", f"/tmp/labq-test-users-{os.getpid()}"))


def pytest_configure(config: pytest.Config) -> None:
    _users_file()


# `make test` runs the files on two workers (pytest-xdist, `--dist loadfile
# --no-loadscope-reorder`), dealt out in collection order: the longest files go first, so
# that none of them starts last and runs alone at the end. Measured in docs/benchmarks.md
# ("The test suite's time"); a file missing here only costs balance, never a result.
_LONGEST_FIRST = (
    "integration/test_team.py",
    "integration/test_multinode.py",
    "integration/test_fuzz.py",
    "integration/test_core.py",
    "integration/test_authz.py",
    "integration/test_chaos.py",
    "integration/test_security.py",
    "integration/test_ray_lost.py",
    "integration/test_workflow.py",
    "ui/test_tui_pilot.py",
    "unit/test_policy.py",
    "ui/test_tui_snapshots.py",
    "integration/test_fairshare.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return next((i for i, f in enumerate(_LONGEST_FIRST) if path.endswith(f)), len(_LONGEST_FIRST))

    items.sort(key=rank)  # stable: each file's tests stay together and in their order


def unix_user(name: str) -> int:
    """The uid of a local test user, created (as root) if it does not exist yet, and
    removed again when the test run ends."""
    with open(_USERS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            subprocess.run(["useradd", "--create-home", name], check=True, capture_output=True)
            with _users_file().open("a") as made:
                made.write(name + "\n")
            return pwd.getpwnam(name).pw_uid


def remove_unix_user(name: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    for _ in range(50):
        if subprocess.run(["pgrep", "-u", name], capture_output=True).returncode != 0:
            break
        time.sleep(0.1)
    subprocess.run(["userdel", "--remove", name], capture_output=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    made = _users_file()
    if made.exists():
        for name in dict.fromkeys(made.read_text().split()):
            remove_unix_user(name)
        made.unlink()


def as_user(uid: int) -> Callable[[], None]:
    """A preexec_fn that drops to `uid` (and its primary group and groups)."""
    pw = pwd.getpwuid(uid)
    groups = os.getgrouplist(pw.pw_name, pw.pw_gid)

    def drop() -> None:
        os.setgroups(groups)
        os.setgid(pw.pw_gid)
        os.setuid(uid)

    return drop


def make_labq(config: str | None = None) -> Labq:
    root = Path(tempfile.mkdtemp(prefix="lq", dir="/tmp"))
    os.chmod(root, 0o755)
    lq = Labq(root=root, state_dir=root / "state", socket=root / "labq.sock")
    lq.state_dir.mkdir()
    if config is not None:
        (lq.state_dir / "labq.yaml").write_text(config)
    return lq


def cleanup(lq: Labq) -> None:
    lq.down()
    shutil.rmtree(lq.root, ignore_errors=True)


@contextmanager
def daemon(config: str | None = None, *up_args: str) -> Iterator[Labq]:
    """A daemon for one test or module, cleaned up whatever happens, setup included."""
    lq = make_labq(config)
    try:
        lq.up(*up_args)
        yield lq
    finally:
        cleanup(lq)


@pytest.fixture(scope="session")
def _shared4() -> Iterator[Labq]:
    """One daemon with 4 logical GPUs and a loopback TCP listener for the modules that
    need nothing else (a daemon costs ~5 s to start on 2 cores)."""
    config = f"grace_period_s: 3\nmin_runtime_s: 0\nlisten: 127.0.0.1:{free_port()}\nnotify_allow_hosts: [127.0.0.1]\n"
    with daemon(config, "--gpus", "4") as lq:
        yield lq


@pytest.fixture(scope="module")
def labq4(_shared4: Labq) -> Iterator[Labq]:
    """The shared 4-GPU daemon, quiet: whatever an earlier module left queued or running
    is cancelled (at once) before this module's tests begin."""
    c = _shared4.client()
    try:
        left = [j["id"] for j in c.jobs() if j["state"] not in TERMINAL_NAMES]
        for job_id in left:
            try:
                c.cancel(job_id, now=True)
            except ClientError:
                pass  # it ended meanwhile
        wait_for("the shared daemon to be quiet", lambda: not c.jobs(), 60)
    finally:
        c.close()
    yield _shared4
