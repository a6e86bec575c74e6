"""The runner as root: whom a job runs as, where it may go, what root writes, what it kills.

Real processes and real Unix users (created here, removed at the end of the session);
no Ray: `runner.run` is called directly, as the Ray task calls it.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from scheduler import safefs
from scheduler.runner import Launch, _cgroup2_mount, run
from tests.conftest import as_user, unix_user
from tests.unit.test_runner import Recorder

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: jobs run as other users")

ALICE, BOB = "labqtest-alice", "labqtest-bob"


def launch(tmp_path: Path, argv: list[str], user: str, **kw: Any) -> Launch:
    pw = pwd.getpwnam(user) if user != "ghost" else None
    base: dict[str, Any] = dict(
        job_id=7,
        attempt=1,
        argv=argv,
        workdir="/tmp",
        env={"PATH": "/usr/bin:/bin"},
        uid=pw.pw_uid if pw else 54321,
        user=user,
        time_limit=None,
        grace=1.0,
        log_limit=1 << 20,
        job_dir=str(tmp_path / "jobs"),
    )
    base.update(kw)
    return Launch(**base)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A directory every test user may write (tmp_path itself is root's, 0700)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="lqsec", dir="/tmp"))
    d.chmod(0o1777)
    yield d  # type: ignore[misc]
    shutil.rmtree(d, ignore_errors=True)


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_job_whose_owner_has_no_account_here_never_runs_as_root(tmp_path: Path) -> None:
    # Before: runner._user_kwargs() returned {} for an unknown uid and the job ran as root.
    marker = tmp_path / "ran"
    rec = Recorder()
    res = run(launch(tmp_path, ["sh", "-c", f"id -u > {marker}"], "ghost"), [], "n", rec)
    assert res["outcome"] == "failed" and "has no account on" in res["reason"]
    assert "never runs a job as root" in res["reason"]
    assert rec.info is None and not marker.exists()


def test_a_uid_that_names_someone_else_here_is_refused(tmp_path: Path) -> None:
    uid = unix_user(ALICE)
    unix_user(BOB)
    res = run(launch(tmp_path, ["true"], BOB, uid=uid), [], "n", Recorder())
    assert res["outcome"] == "failed" and f"is {ALICE} on" in res["reason"]


def test_the_job_runs_as_its_owner_with_their_groups_and_umask(tmp_path: Path) -> None:
    uid = unix_user(ALICE)
    out = Path(pwd.getpwnam(ALICE).pw_dir) / "made-by-job"
    out.unlink(missing_ok=True)
    rec = Recorder()
    argv = ["sh", "-c", f"id -u; id -G; touch {out}"]
    home = pwd.getpwnam(ALICE).pw_dir
    res = run(launch(tmp_path, argv, ALICE, workdir=home, umask=0o027), [], "n", rec)
    assert res["outcome"] == "succeeded", rec.data
    lines = rec.data.decode().split("\n")
    assert lines[0] == str(uid) and "0" not in lines[1].split()
    st = out.stat()
    assert st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o640


def test_the_workdir_is_entered_as_the_user_not_as_root(tmp_path: Path) -> None:
    # Before: the runner changed directory as root, then dropped privileges, so bob's
    # job could start inside a directory only alice (or root) may enter.
    unix_user(ALICE)
    secret = Path(pwd.getpwnam(ALICE).pw_dir) / "private"
    secret.mkdir(exist_ok=True)
    os.chown(secret, pwd.getpwnam(ALICE).pw_uid, pwd.getpwnam(ALICE).pw_gid)
    os.chmod(Path(pwd.getpwnam(ALICE).pw_dir), 0o700)
    unix_user(BOB)
    rec = Recorder()
    res = run(launch(tmp_path, ["ls"], BOB, workdir=str(secret)), [], "n", rec)
    assert res["outcome"] == "failed" and res["exit_code"] == 126
    assert f"cannot enter its workdir as {BOB}" in res["reason"] and "Permission denied" in res["reason"]
    assert str(secret) not in res["reason"]  # the reason is public; the path is in the log only
    assert f"cannot enter workdir {secret} as {BOB}".encode() in rec.data
    # ...and the same path works for its owner.
    res = run(launch(tmp_path, ["pwd"], ALICE, workdir=str(secret)), [], "n", Recorder())
    assert res["outcome"] == "succeeded"


def test_root_never_writes_through_a_planted_link_or_a_directory_another_user_made(
    tmp_path: Path, shared: Path
) -> None:
    # Before: root did makedirs(exist_ok=True) + open(path, "w") on a predictable
    # path under /tmp, so whoever made the directory first chose what root wrote.
    unix_user(BOB)
    bob = pwd.getpwnam(BOB)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, bob.pw_uid, bob.pw_gid)
    res = run(launch(tmp_path, ["true"], BOB, job_dir=str(theirs)), [], "n", Recorder())
    assert res["outcome"] == "failed" and f"belongs to {BOB}" in res["reason"]
    # A link where the deadline file will be: root makes a new file, the target stays.
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    jobs = safefs.private_dir(shared / "jobs", 0o711)
    (jobs / "labq-7.1.deadline").symlink_to(precious)
    rec = Recorder(stop_after=0.3, grace=0.5, ready=b"ready")
    script = "trap 'echo deadline=$(cat $LABQ_PREEMPT_DEADLINE); exit 0' TERM; echo ready; while true; do sleep 0.05; done"
    res = run(launch(tmp_path, ["sh", "-c", script], BOB, job_dir=str(jobs)), [], "n", rec)
    assert res["outcome"] == "cancelled"
    assert precious.read_text() == "keep me\n"
    # The job read its real deadline (the shell may also say "Terminated" of its sleep).
    said = re.search(rb"deadline=([0-9.]+)", bytes(rec.data))
    assert said and float(said.group(1)) > time.time() - 60, rec.data


def test_the_node_job_dir_is_roots_and_closed_to_others() -> None:
    base = safefs.ensure_node_job_dir()
    st = os.lstat(base)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o711
    assert safefs.exposure(base) == ""
    # Someone else's directory in its place is refused, not used.
    assert str(base) == "/run/labq-jobs"


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "subreaper"])
def test_a_process_that_left_the_job_is_killed_when_it_ends(
    tmp_path: Path, shared: Path, cgroups: bool
) -> None:
    # Before: `setsid -f sleep 300` left the process group, survived the job and kept its GPU.
    if cgroups and not _cgroup2_mount():
        pytest.skip("no cgroup v2 here")
    unix_user(ALICE)
    pidfile = shared / "escaped.pid"
    argv = ["sh", "-c", f"setsid -f sh -c 'echo $$ > {pidfile}; exec sleep 300'; sleep 0.3; exit 0"]
    res = run(launch(tmp_path, argv, ALICE, cgroup=cgroups), [], "n", Recorder())
    assert res["outcome"] == "succeeded"
    pid = int(pidfile.read_text())
    assert gone(pid), f"escaped process {pid} survived its job"


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "subreaper"])
def test_cancel_kills_a_double_forked_process_too(tmp_path: Path, shared: Path, cgroups: bool) -> None:
    if cgroups and not _cgroup2_mount():
        pytest.skip("no cgroup v2 here")
    unix_user(ALICE)
    pidfile = shared / "escaped.pid"
    argv = ["sh", "-c", f"(setsid sh -c 'echo $$ > {pidfile}; trap \"\" TERM; exec sleep 300' &); sleep 300"]
    rec = Recorder(stop_after=0.8, grace=0.5)
    t0 = time.monotonic()
    res = run(launch(tmp_path, argv, ALICE, cgroup=cgroups), [], "n", rec)
    assert res["outcome"] == "cancelled" and time.monotonic() - t0 < 10
    assert gone(int(pidfile.read_text()))


def test_a_shorter_second_stop_request_kills_sooner(tmp_path: Path) -> None:
    """`labq cancel --now` after a cancel with a long grace: the kill comes at once."""
    unix_user(ALICE)
    t0 = time.monotonic()
    asks = {"n": 0}

    def report(info: Any, offset: int, data: bytes, result: Any, err: Any = ()) -> dict[str, Any] | None:
        asks["n"] += 1
        if time.monotonic() - t0 < 0.5:
            return None
        grace = 300.0 if time.monotonic() - t0 < 1.5 else 0.0
        return {"outcome": "cancelled", "reason": "test", "grace": grace}

    script = "trap '' TERM; while true; do sleep 0.05; done"  # ignores SIGTERM
    res = run(launch(tmp_path, ["sh", "-c", script], ALICE), [], "n", report)
    took = time.monotonic() - t0
    assert res["outcome"] == "cancelled" and res["signal"] == signal.SIGKILL
    assert 1.4 < took < 5, took


def test_a_user_cannot_hijack_the_job_dir_of_a_personal_runner(shared: Path) -> None:
    """As bob (an ordinary user), /tmp/labq-UID made by someone else is refused."""
    import shutil

    bob = unix_user(BOB)
    pkg = shared / "client" / "scheduler"
    pkg.mkdir(parents=True)
    repo = Path(__file__).resolve().parents[2]
    for name in ("__init__.py", "safefs.py"):
        shutil.copy(repo / "scheduler" / name, pkg / name)
    for p in (shared / "client", pkg, *pkg.iterdir()):
        p.chmod(0o755)
    victim_dir = Path(f"/tmp/labq-{bob}")
    subprocess.run(["rm", "-rf", str(victim_dir)], check=True)
    victim_dir.mkdir(mode=0o777)  # made first by root here: "someone else"
    try:
        code = (
            "from scheduler import safefs\n"
            "try:\n    safefs.ensure_node_job_dir(); print('USED')\n"
            "except safefs.UnsafePath as e:\n    print('REFUSED', e)\n"
        )
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(shared / "client")}
        out = subprocess.run(
            ["/usr/bin/python3", "-c", code], env=env, capture_output=True, text=True, preexec_fn=as_user(bob)
        )
        assert out.stdout.startswith("REFUSED") and "belongs to root" in out.stdout, out
    finally:
        subprocess.run(["rm", "-rf", str(victim_dir)], check=True)


def test_empty_job_cgroups_left_behind_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """A runner that died with its job leaves an empty cgroup; the next runner removes
    such ones once they are a minute old, never a populated or a fresh one."""
    from scheduler.runner import _Tree

    mount = _cgroup2_mount()
    if not mount or os.geteuid() != 0:
        pytest.skip("no cgroup v2 here, or not root")
    parent = Path(mount) / "labq"
    parent.mkdir(exist_ok=True)
    stale, fresh, busy = (parent / f"test-{os.getpid()}-{n}" for n in ("stale", "fresh", "busy"))
    for p in (stale, fresh, busy):
        p.mkdir()
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(busy, (old, old))
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        _Tree._last_tidy = 0.0
        _Tree._tidy(str(parent))
        assert not stale.exists() and fresh.exists() and busy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        for p in (fresh, busy):
            for _ in range(50):
                try:
                    p.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)
