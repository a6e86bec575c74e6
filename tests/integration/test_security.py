"""A root daemon that no researcher can turn into root, spy on, or lock out (issue 12).

One real root daemon on a real Ray, two real Unix users (alice, bob) made for the run
and removed after it, the real `labq` command run as each of them, and raw sockets
where an attacker would use them. Each test names the escalation it closes.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler import safefs
from scheduler.client import Client
from tests.conftest import SYSTEM_PYTHON, Labq, as_user, cleanup, free_port, make_labq, unix_user, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a root daemon and real Unix users"),
    pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs a system python3 other users can run"),
]

ALICE, BOB = "labqtest-alice", "labqtest-bob"
CONFIG = """
grace_period_s: 2
min_runtime_s: 0
default_time_limit_s: 5s
max_grace_s: 10s
max_pending_jobs_per_user: 12
max_spec_bytes: 20000
max_connections_per_user: 8
request_timeout_s: 3
user_log_max_bytes: 30000
listen: 127.0.0.1:{port}
"""


@pytest.fixture(scope="module")
def lq() -> Iterator[Labq]:
    unix_user(ALICE)
    unix_user(BOB)
    lq = make_labq()
    try:
        port = free_port()
        (lq.state_dir / "labq.yaml").write_text(CONFIG.format(port=port))
        lq.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        lq.up("--gpus", "4")
        yield lq
    finally:
        cleanup(lq)


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A directory every test user may write (for marker files)."""
    d = Path(tempfile.mkdtemp(prefix="lqsec", dir="/tmp"))
    d.chmod(0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def as_(lq: Labq, name: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return lq.run(*args, check=False, user=uid(name), cwd="/tmp", **kw)


def one_line_refusal(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def node(lq: Labq) -> str:
    return str(lq.json("gpus")["nodes"][0]["name"])


# -- 1. a caller or owner without an account never becomes root ------------------------------
def test_a_uid_without_an_account_is_refused_at_the_door(lq: Labq) -> None:
    # What `unshare --map-auto` + `setpriv --reuid=<subuid>` reaches: a uid with no passwd entry.
    r = lq.run("submit", "--", "id", check=False, user=54321, cwd="/tmp")
    one_line_refusal(r, "uid 54321 has no entry in this machine's user database")
    assert not any(j["user"] == "54321" for j in lq.json("queue", "--all"))


def test_a_deleted_users_queued_job_fails_and_never_runs_as_root(lq: Labq, shared: Path) -> None:
    from tests.conftest import remove_unix_user

    carol = "labqtest-gone"
    unix_user(carol)
    marker = shared / "carol-ran-as"
    lq.run("node", "drain", node(lq))
    try:
        job = lq.submit("--", "sh", "-c", f"id -u > {marker}", user=uid(carol), cwd="/tmp")
        assert lq.job(job)["state"] == "PENDING"
        remove_unix_user(carol)
    finally:
        lq.run("node", "resume", node(lq))
    j = lq.wait(job, ("FAILED",))
    assert "has no account on" in j["reasons"][0] and "never runs a job as root" in j["reasons"][0]
    assert not marker.exists()


# -- 2, 3, 5, 11. labq's files and Ray's sockets are out of other users' reach ----------------------
def test_nothing_labq_keeps_can_be_read_locked_or_replaced_by_another_user(lq: Labq, shared: Path) -> None:
    job = lq.submit("--", "sh", "-c", "echo alice-secret-output", user=uid(ALICE), cwd="/tmp")
    lq.wait(job, ("SUCCEEDED",))
    head = json.loads((lq.state_dir / "ray-head.json").read_text())
    temp = Path(head["temp_dir"])
    assert str(temp).startswith(str(lq.state_dir))  # not /tmp/labq-ray-<hash> any more
    raylet = next(temp.glob("session_*/sockets/raylet"))
    targets = {
        "read db": f"open({str(lq.state_dir / 'labq.db')!r}, 'rb')",
        # A read lock on -shm froze every write; an flock on the lock file stopped restarts.
        "lock shm": f"open({str(lq.state_dir / 'labq.db-shm')!r}, 'rb')",
        "flock": f"import fcntl; fcntl.flock(open({str(lq.state_dir / 'daemon.lock')!r}), fcntl.LOCK_SH)",
        "read log": f"open({str(lq.state_dir / 'logs' / f'{job}.log')!r}, 'rb')",
        "read ray token": f"open({str(lq.state_dir / 'ray-auth-token')!r}, 'rb')",
        "list state": f"import os; os.listdir({str(lq.state_dir)!r})",
        # Renaming the raylet's socket and binding one's own made every job hang in STARTING.
        "swap raylet": f"import os; os.rename({str(raylet)!r}, {str(raylet) + '.x'!r})",
    }
    for what, code in targets.items():
        r = subprocess.run(
            [SYSTEM_PYTHON, "-c", code + "; print('GOT IN')"],
            capture_output=True,
            text=True,
            preexec_fn=as_user(uid(BOB)),
            cwd="/tmp",
        )
        assert "GOT IN" not in r.stdout and "PermissionError" in r.stderr, (what, r.stdout, r.stderr)
    assert raylet.exists()
    for f in (lq.state_dir / "labq.db", lq.state_dir / "daemon.lock", lq.state_dir / "logs" / f"{job}.log"):
        assert f.stat().st_mode & 0o077 == 0, f
    # The node's job dir is root's, and no job file was left in it.
    jobs_dir = safefs.node_job_dir()
    assert jobs_dir.stat().st_uid == 0 and jobs_dir.stat().st_mode & 0o777 == 0o711


def test_doctor_names_a_file_another_user_could_read(lq: Labq) -> None:
    r = lq.run("doctor")
    assert "ok    permissions" in r.stdout, r.stdout
    loose = lq.state_dir / "logs" / "loose.log"
    loose.write_text("x")
    loose.chmod(0o644)
    try:
        r = lq.run("doctor", check=False)
        assert r.returncode == 1
        line = next(ln for ln in r.stdout.splitlines() if "permissions" in ln)
        assert line.startswith("FAIL") and str(loose) in line and "others can read" in line
    finally:
        loose.unlink()


# -- 4, 17. what another user sees of a job --------------------------------------------------------
def test_another_user_sees_env_names_not_values_nor_command_or_workdir(lq: Labq) -> None:
    job = lq.submit(
        "--env",
        "WANDB_API_KEY=wandb-secret-123",
        "--",
        "sh",
        "-c",
        "sleep 2 # --token=cmdline-secret-456",
        user=uid(ALICE),
        cwd="/tmp",
    )
    secrets_ = ("wandb-secret-123", "cmdline-secret-456")
    for args in (("show", str(job), "--json"), ("queue", "--all", "--json"), ("show", str(job))):
        r = as_(lq, BOB, *args)
        assert r.returncode == 0, r.stderr
        assert not any(s in r.stdout for s in secrets_), (args, r.stdout)
    seen = json.loads(as_(lq, BOB, "show", str(job), "--json").stdout)
    assert seen["private"] and seen["spec"]["env_names"].count("WANDB_API_KEY") == 1
    assert "command" not in seen["spec"] and "workdir" not in seen["spec"] and "env" not in seen["spec"]
    assert "pid" not in seen and "log_path" not in seen
    assert "WANDB_API_KEY" in as_(lq, BOB, "show", str(job)).stdout
    # Over the network, a token holder is just another user too.
    token = lq.json("token", "create", BOB)["token"]
    remote = lq.run("show", str(job), "--json", env={"LABQ_URL": lq.url, "LABQ_TOKEN": token})  # type: ignore[attr-defined]
    assert not any(s in remote.stdout for s in secrets_)
    # A listing never carries a spec, for anyone.
    assert all("spec" not in j for j in Client(lq.socket).jobs(include_finished=True))
    # The owner sees it all; admins also see where the log lives.
    mine = json.loads(as_(lq, ALICE, "show", str(job), "--json").stdout)
    assert mine["spec"]["env"]["WANDB_API_KEY"] == "wandb-secret-123" and "log_path" not in mine
    assert "log_path" in lq.job(job)
    # Health and doctor: pids, paths and the executor id are for admins.
    h = json.loads(as_(lq, BOB, "doctor", "--json").stdout)
    assert not any("/" in c["detail"] for c in h if c["check"] not in ("socket", "python")), h
    bob_health = Client(lq.socket).health()  # root: admin
    assert "pid" in bob_health and "state_dir" in bob_health
    code = (
        "from scheduler.client import Client; import json; "
        f"print(json.dumps(Client(__import__('pathlib').Path({str(lq.socket)!r})).health()))"
    )
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(lq.client_copy())},
        preexec_fn=as_user(uid(BOB)),
        cwd="/tmp",
    )
    h2 = json.loads(out.stdout)
    assert "pid" not in h2 and "state_dir" not in h2 and "socket" not in h2


# -- 6. --workdir is the user's business, checked as the user ----------------------------------------
def test_workdir_is_checked_and_entered_as_the_submitter(lq: Labq, shared: Path) -> None:
    alice_home = Path(pwd.getpwnam(ALICE).pw_dir)
    private = alice_home / "private"
    private.mkdir(exist_ok=True)
    os.chown(private, uid(ALICE), pwd.getpwnam(ALICE).pw_gid)
    alice_home.chmod(0o700)
    # The daemon's answer for a directory bob cannot enter is the same whether or not
    # something exists behind it (before: "does not exist" vs. accepted, as root saw it).
    a = as_(lq, BOB, "submit", "--dry-run", "--workdir", "/root/.ssh", "--", "true")
    b = as_(lq, BOB, "submit", "--dry-run", "--workdir", "/root/no-such-dir", "--", "true")
    assert a.returncode == b.returncode and a.stdout == b.stdout and a.stderr == b.stderr
    # Where bob may look, a missing directory is said at once.
    r = as_(lq, BOB, "submit", "--workdir", str(shared / "nope"), "--", "true")
    one_line_refusal(r, "does not exist")
    # A job in a directory only alice may enter fails as bob, with the reason.
    job = lq.submit("--workdir", str(private), "--", "ls", user=uid(BOB), cwd="/tmp")
    j = lq.wait(job, ("FAILED",))
    assert f"cannot enter its workdir as {BOB}" in j["reasons"][0] and "Permission denied" in j["reasons"][0]
    # The reason is public, so it does not name the directory; bob's log (his alone) does.
    assert str(private) not in j["reasons"][0]
    assert f"cannot enter workdir {private} as {BOB}" in as_(lq, BOB, "logs", str(job)).stdout
    ok = lq.submit("--workdir", str(private), "--", "pwd", user=uid(ALICE), cwd="/tmp")
    assert lq.wait(ok, ("SUCCEEDED",))["state"] == "SUCCEEDED"


# -- 7, 8, 9. no job can make itself unkillable, outlive its end, or run past its limit -------------
def test_grace_is_capped_and_cancel_now_kills_at_once(lq: Labq) -> None:
    r = as_(lq, ALICE, "submit", "--grace", "365d", "--", "sleep", "1")
    one_line_refusal(r, "grace", "at most 10s", "max_grace_s")
    job = lq.submit("--grace", "10s", "--time", "5m", "--", "sh", "-c", "trap '' TERM; sleep 300", user=uid(ALICE), cwd="/tmp")
    lq.wait(job, ("RUNNING",))
    assert "stopping" in lq.run("cancel", str(job)).stdout
    time.sleep(1)
    assert lq.job(job)["state"] == "RUNNING"  # ignoring SIGTERM, inside its grace
    t0 = time.monotonic()
    assert "killed" in lq.run("cancel", "--now", str(job)).stdout
    lq.wait(job, ("CANCELLED",), timeout=8)
    assert time.monotonic() - t0 < 5


def test_a_process_that_leaves_its_process_group_dies_with_its_job(lq: Labq, shared: Path) -> None:
    pidfile = shared / "escaped.pid"
    script = f"setsid -f sh -c 'echo $$ > {pidfile}; exec sleep 300'; sleep 300"
    job = lq.submit("--time", "5m", "--", "sh", "-c", script, user=uid(ALICE), cwd="/tmp")
    lq.wait(job, ("RUNNING",))
    pid = int(wait_for("the escaped pid", lambda: pidfile.exists() and pidfile.read_text().strip()))
    lq.run("cancel", str(job))
    lq.wait(job, ("CANCELLED",), timeout=20)

    def dead() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True

    wait_for("the escaped process to die", dead, timeout=10)


def test_the_default_time_limit_is_enforced(lq: Labq) -> None:
    t0 = time.monotonic()
    job = lq.submit("--", "sleep", "120", user=uid(ALICE), cwd="/tmp")
    j = lq.wait(job, ("TIMEOUT",), timeout=40)
    assert "time limit of 5s reached" in j["reasons"][0]
    assert time.monotonic() - t0 < 30


# -- 10. idle connections lock nobody out -------------------------------------------------------------
HOLD = """
import socket, sys, time
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX if sys.argv[1].startswith('/') else socket.AF_INET)
    s.connect(sys.argv[1] if sys.argv[1].startswith('/') else ('127.0.0.1', int(sys.argv[1])))
    socks.append(s)
print('HELD', flush=True)
# Report when the daemon closes each one (the watchdog), or after 20 s.
t0 = time.time()
closed = 0
for s in socks:
    s.settimeout(max(0.1, 20 - (time.time() - t0)))
    try:
        if s.recv(1) == b'':
            closed += 1
        else:
            closed += 1
    except OSError:
        pass
print('CLOSED', closed, round(time.time() - t0, 1), flush=True)
"""


def test_idle_and_trickling_connections_lock_nobody_out(lq: Labq) -> None:
    # bob holds 40 idle connections (the cap is 8 per user); alice is served at once.
    hold = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", HOLD, str(lq.socket), "40"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=as_user(uid(BOB)),
        cwd="/tmp",
    )
    try:
        assert hold.stdout is not None and hold.stdout.readline().strip() == "HELD"
        t0 = time.monotonic()
        r = as_(lq, ALICE, "queue")
        assert r.returncode == 0 and time.monotonic() - t0 < 5, r.stderr
        r = as_(lq, BOB, "queue")
        one_line_refusal(r, "too many open connections from uid", "max_connections_per_user")
        # The watchdog closes bob's idle ones after request_timeout_s (3 s), not never.
        line = hold.stdout.readline().split()
        assert line[0] == "CLOSED" and int(line[1]) == 40 and float(line[2]) < 10, line
    finally:
        hold.kill()
        hold.wait()
    # A trickle (one byte every 0.5 s) cannot stretch a request past its deadline.
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(lq.socket))
    t0 = time.monotonic()
    closed_after = None
    for ch in b"GET /v1/health HTTP/1.1\r\nX-Slow: " + b"a" * 100:
        try:
            s.send(bytes([ch]))
            s.settimeout(0.5)
            if s.recv(1024) == b"":
                closed_after = time.monotonic() - t0
                break
        except TimeoutError:
            continue
        except OSError:
            closed_after = time.monotonic() - t0
            break
    s.close()
    assert closed_after is not None and closed_after < 6, closed_after
    assert as_(lq, BOB, "queue").returncode == 0  # and bob is welcome again


def test_tokenless_connections_to_the_listener_cannot_crowd_out_token_holders(lq: Labq) -> None:
    port = lq.url.rsplit(":", 1)[1]  # type: ignore[attr-defined]
    hold = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", HOLD, port, "50"], stdout=subprocess.PIPE, text=True, preexec_fn=as_user(uid(BOB))
    )
    try:
        assert hold.stdout is not None and hold.stdout.readline().strip() == "HELD"
        token = lq.json("token", "create", ALICE)["token"]
        t0 = time.monotonic()
        r = lq.run("queue", env={"LABQ_URL": lq.url, "LABQ_TOKEN": token})  # type: ignore[attr-defined]
        assert r.returncode == 0 and time.monotonic() - t0 < 5
    finally:
        hold.kill()
        hold.wait()


# -- 12. one user cannot bury the queue ----------------------------------------------------------------
def test_queue_and_spec_size_caps_and_paged_summaries(lq: Labq) -> None:
    big = "x" * 30000
    r = as_(lq, ALICE, "submit", "--", "echo", big)
    one_line_refusal(r, "max_spec_bytes")
    lq.run("node", "drain", node(lq))
    ids: list[int] = []
    try:
        for _ in range(12):
            ids.append(lq.submit("--", "true", user=uid(ALICE), cwd="/tmp"))
        r = as_(lq, ALICE, "submit", "--", "true")
        one_line_refusal(r, "already has 12 jobs waiting", "max_pending_jobs_per_user")
        assert as_(lq, BOB, "submit", "--dry-run", "--", "true").returncode == 0  # bob is not capped by alice
        c = Client(lq.socket)
        first = c.request("GET", "/v1/jobs", after=0, limit=5)
        assert len(first["jobs"]) == 5 and first["next_after"] == first["jobs"][-1]["id"]
        rest = c.request("GET", "/v1/jobs", after=first["next_after"], limit=1000)
        assert rest["next_after"] is None
        assert [j["id"] for j in first["jobs"] + rest["jobs"]] == [j["id"] for j in c.jobs()]
    finally:
        for j in ids:
            lq.run("cancel", str(j), check=False)
        lq.run("node", "resume", node(lq))


# -- 13. names and commands never drive an admin's terminal -------------------------------------------
def test_control_characters_are_refused_or_shown_escaped(lq: Labq, shared: Path) -> None:
    for name in ("\x1b]0;pwned\x07", "a\x9b2Jb", "evil\u202etxt"):
        r = as_(lq, ALICE, "submit", "--name", name, "--", "true")
        one_line_refusal(r, "name contains control characters")
    prog = shared / "x\x9b2J\x1b[5m"
    prog.write_text("#!/bin/sh\necho hi\n")
    prog.chmod(0o755)
    job = lq.submit("--", str(prog), user=uid(ALICE), cwd="/tmp")
    for args in (("queue", "--all"), ("show", str(job))):
        out = lq.run(*args).stdout  # an admin's terminal
        assert "\x1b" not in out and "\x9b" not in out, out
    assert "\\x1b[5m" in lq.run("show", str(job)).stdout  # shown, escaped


# -- 14. a personal daemon's socket cannot be impersonated -----------------------------------------
def test_the_client_never_talks_to_a_socket_someone_else_serves(lq: Labq) -> None:
    if Path("/run/labq/labq.sock").exists():
        pytest.skip("a team daemon answers on /run/labq/labq.sock here")
    alice = uid(ALICE)
    fake_dir = Path(f"/tmp/labq-{alice}")
    shutil.rmtree(fake_dir, ignore_errors=True)
    fake_dir.mkdir()
    os.chown(fake_dir, uid(BOB), uid(BOB))
    got: list[bytes] = []
    ready = threading.Event()

    def bob_listens() -> None:
        # bob's fake daemon: it only records what it is sent.
        pid = os.fork()
        if pid == 0:
            try:
                as_user(uid(BOB))()
                srv = socket.socket(socket.AF_UNIX)
                srv.bind(str(fake_dir / "tmp.sock"))
                os.chmod(fake_dir / "tmp.sock", 0o777)  # open to alice, as an attacker would
                srv.listen(5)
                os.rename(fake_dir / "tmp.sock", fake_dir / "labq.sock")
                srv.settimeout(15)
                conn, _ = srv.accept()
                conn.settimeout(3)
                data = b""
                try:
                    while chunk := conn.recv(65536):
                        data += chunk
                except OSError:
                    pass
                (fake_dir / "got").write_bytes(data)
            except BaseException as e:  # noqa: BLE001 - say it, for whoever debugs this test
                (fake_dir / "error").write_text(repr(e))
            finally:
                os._exit(0)
        ready.set()
        os.waitpid(pid, 0)

    t = threading.Thread(target=bob_listens)
    t.start()
    ready.wait()
    wait_for("bob's socket", lambda: (fake_dir / "labq.sock").exists(), 10)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(lq.client_copy()), "HOME": "/tmp"}
    r = subprocess.run(
        [SYSTEM_PYTHON, "-m", "scheduler.cli", "submit", "--env", "API_KEY=alice-secret", "--", "true"],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=as_user(alice),
        cwd="/tmp",
        timeout=60,
    )
    t.join(timeout=30)
    try:
        err = (fake_dir / "error").read_text() if (fake_dir / "error").exists() else ""
        assert not err, err
        one_line_refusal(r, "refusing to talk to", f"served by {BOB}")
        got.append((fake_dir / "got").read_bytes() if (fake_dir / "got").exists() else b"")
        assert got[0] == b"", got  # not one byte reached bob
    finally:
        shutil.rmtree(fake_dir, ignore_errors=True)


# -- 16. a per-user cap on kept logs ------------------------------------------------------------------------
def test_a_users_oldest_logs_go_when_they_pass_their_log_cap(lq: Labq) -> None:
    ids = []
    for _ in range(3):
        job = lq.submit("--", "sh", "-c", "head -c 12000 /dev/zero | tr '\\0' a", user=uid(BOB), cwd="/tmp")
        lq.wait(job, ("SUCCEEDED",))
        ids.append(job)
    first = ids[0]
    r = as_(lq, BOB, "logs", str(first))
    one_line_refusal(r, f"job {first}'s log was removed", "user_log_max_bytes")
    assert "removed" in as_(lq, BOB, "show", str(first)).stdout
    assert len(as_(lq, BOB, "logs", str(ids[-1])).stdout) == 12000
    kept = sum((lq.state_dir / "logs" / f"{j}.log").stat().st_size for j in ids if (lq.state_dir / "logs" / f"{j}.log").exists())
    assert kept <= 30000
    # Never another user's: alice's logs are untouched by bob's cap.
    assert not (lq.state_dir / "logs" / f"{first}.log").exists()


def test_a_state_dir_an_older_labq_left_open_is_closed_at_start() -> None:
    """Before: the state dir and logs/ were 0755, the database and logs 0644."""
    other = make_labq("grace_period_s: 1\n")
    try:
        other.state_dir.chmod(0o755)
        (other.state_dir / "logs").mkdir(mode=0o755)
        old = other.state_dir / "logs" / "1.log"
        old.write_text("an old job's output\n")
        old.chmod(0o644)
        other.up("--gpus", "1")
        assert safefs.audit_tree(other.state_dir) == []
        assert other.state_dir.stat().st_mode & 0o777 == 0o700 and old.stat().st_mode & 0o777 == 0o600
    finally:
        cleanup(other)


# -- found by a red-team pass, as an ordinary user, after the fixes above ----------------------------
def test_a_daemon_started_in_a_directory_another_user_owns_imports_nothing_from_it(shared: Path) -> None:
    """`labq up` from a directory bob can write: the daemon ran `python -m scheduler.cli`
    with that directory first on its import path (and Ray passed it to its root
    workers), so bob's own `scheduler/__init__.py` ran as root."""
    bobdir = shared / "bobs-dir"
    (bobdir / "scheduler").mkdir(parents=True)
    marker = shared / "pwned"
    (bobdir / "scheduler" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('root ran me')\n")
    for p in (bobdir, bobdir / "scheduler", bobdir / "scheduler" / "__init__.py"):
        os.chown(p, uid(BOB), uid(BOB))
    labq = Path(sys.executable).parent / "labq"  # the command, as an admin types it
    if not labq.exists():
        pytest.skip("no `labq` command next to this python")
    other = make_labq("grace_period_s: 1\n")
    try:
        up = subprocess.run(
            [str(labq), "up", "--state-dir", str(other.state_dir), "--gpus", "1"],
            env=other.env(),
            cwd=str(bobdir),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert up.returncode == 0, up.stderr
        job = other.submit("--", "true", cwd="/tmp")
        other.wait(job, ("SUCCEEDED",))
        assert not marker.exists()
    finally:
        cleanup(other)


def test_a_socket_path_another_user_controls_is_refused_before_anything_starts(shared: Path) -> None:
    """Root created the socket's directory (chmod 0755 through a planted link) and chmodded
    the socket by name (0666 through a swapped link): root changed modes of bob's choosing."""
    theirs = shared / "bob-sockets"
    theirs.mkdir()
    os.chown(theirs, uid(BOB), uid(BOB))
    link = shared / "bob-link"
    link.symlink_to("/root")
    os.lchown(link, uid(BOB), uid(BOB))
    mode_before = os.stat("/root").st_mode
    other = make_labq()
    try:
        for sock in (theirs / "labq.sock", link / "labq.sock"):
            r = other.run("--socket", str(sock), "up", "--state-dir", str(other.state_dir), "--gpus", "1", check=False)
            one_line_refusal(r, "socket directory", f"belongs to {BOB}")
        assert os.stat("/root").st_mode == mode_before
        assert not (other.state_dir / "ray-head.json").exists()  # refused before Ray started
    finally:
        cleanup(other)


def test_cpus_or_memory_no_node_has_are_refused_at_submit(lq: Labq) -> None:
    """`--gpus 4 --cpus 100` was accepted and its backfill reservation held every GPU."""
    r = as_(lq, BOB, "submit", "--gpus", "1", "--cpus", "1000", "--", "true")
    one_line_refusal(r, "asks for 1000 CPUs but the most a node with 1 GPU has is")
    r = as_(lq, BOB, "submit", "--gpus", "1", "--memory", "100T", "--", "true")
    one_line_refusal(r, "of memory but the most a node with 1 GPU has for jobs is", "GiB")


def test_newlines_in_what_others_chose_cannot_forge_lines_of_an_admins_output(lq: Labq, shared: Path) -> None:
    r = as_(lq, BOB, "submit", "--workdir", f"{shared}\n5 alice pwn 4 RUNNING", "--", "true")
    one_line_refusal(r, "workdir contains control characters")
    evil = shared / "evil\nFAKE LINE"
    evil.write_text("#!/bin/sh\nexit 3\n")
    evil.chmod(0o755)
    job = lq.submit("--", str(evil), user=uid(BOB), cwd="/tmp")
    lq.wait(job, ("FAILED",))
    for args in (("queue", "--all"), ("show", str(job))):
        out = lq.run(*args).stdout
        assert not any(line.startswith("FAKE LINE") for line in out.splitlines()), out
