"""Runs one job attempt as a subprocess on the node Ray picked, and watches it.

No Ray here: the Ray task in executor.py calls `run()` with a `report` callback that
carries log bytes and status to the Executor actor and brings back stop requests.
That keeps the process handling (signals, grace, time limit, logs) testable alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import pwd
import select
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from scheduler import safefs, unpack
from scheduler.headguard import HeadGuard

CHUNK = 1 << 20  # log bytes carried per report
HEARTBEAT_S = 0.25  # how often a running job asks whether it should stop

# tty_in() -> what was typed into a session since the last call: [{"input": bytes,
# "winsize": [rows, cols] or None, "notice": a line labq shows on its screen}].
TtyIn = Callable[[], list[dict[str, Any]]]
TTY_HEARTBEAT_S = 0.025  # a session's keystrokes wait at most this long on the node
TTY_ECHO_S = 0.005  # and what it prints, at most this long (batched a little)
# Typed bytes the session's terminal has not taken yet: past this, the runner takes no
# more from the Executor, whose own bound then refuses typing with a clear error.
TTY_PENDING_MAX = 1 << 16
TTY_RETRY_S = 0.05  # how soon a full terminal is offered the rest again

# report(info, offset, data, result) -> stop request or None.
# report(info, offset, data, result, err): `err` lists the stderr parts of `data` as
# (offset in the log, offset in the stderr stream, length); the log is both, in order.
Span = tuple[int, int, int]
Report = Callable[[dict[str, Any] | None, int, bytes, dict[str, Any] | None, list[Span]], dict[str, Any] | None]


@dataclass(frozen=True)
class Launch:
    job_id: int
    attempt: int
    argv: list[str]
    workdir: str
    env: dict[str, str]
    uid: int
    time_limit: float | None
    grace: float
    # Output beyond this many bytes is read and dropped: a job flooding stdout can fill
    # neither the node's disk nor the Executor's memory while the daemon is away.
    log_limit: int
    # The owner's name: a root runner starts the job only as the account of that name
    # and uid on this node, never as root in their place.
    user: str = ""
    # Keeps the node-local files of daemons sharing a machine apart (the executor id).
    namespace: str = "labq"
    # GPU indices labq chose (NVML order), so it can steer around unhealthy GPUs;
    # None leaves Ray's own choice (a node whose Ray and NVML GPU counts disagree).
    gpu_indices: tuple[int, ...] | None = None
    # The submitter's umask (as Slurm propagates it); the daemon itself runs with 077.
    umask: int = 0o022
    # Put the job in a cgroup of its own where the node allows it, so that everything
    # it started can be killed, whatever process group or session it moved to.
    cgroup: bool = True
    # Where the deadline file goes; "" = this node's own (safefs.node_job_dir()).
    job_dir: str = ""
    # The code snapshot to run (issue 17, snapshot.py): unpacked as the owner into a
    # fresh directory, where the job then starts. `code_error`: why it cannot be had.
    code: bytes = b""
    code_error: str = ""
    code_commit: str = ""
    # The head (its Executor) unanswered this long: the job stops, so that nothing
    # holds GPUs unaccounted on a node cut off from the daemon (node_timeout_s).
    head_timeout: float = 60.0
    # An interactive session (issue 17): the command gets a terminal (a pty) of its
    # own; what `labq attach` types arrives through `tty_in`, its screen is the log.
    tty: bool = False
    # One rank of a job over several nodes (gang.py): its files and process tree are
    # named apart, as two ranks may share a machine's /run (namespace hosts, tests).
    rank: int = 0
    nnodes: int = 1

    @property
    def tag(self) -> str:
        """This attempt's (and rank's) name for node-local files and cgroups."""
        base = f"{self.namespace}-{self.job_id}.{self.attempt}"
        return f"{base}-r{self.rank}" if self.nnodes > 1 else base


class Refused(Exception):
    """The job cannot start on this node; the message says why (it becomes the reason)."""


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    name: str


def _account(launch: Launch, host: str) -> _Account | None:
    """Whom the job runs as: None = as this process (a daemon run by an ordinary user
    runs only that user's jobs). A root runner needs the owner's account on this node,
    with the same name and uid; it never falls back to its own uid."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwuid(launch.uid)
    except KeyError:
        raise Refused(
            f"user {launch.user or launch.uid} (uid {launch.uid}) has no account on {host}; "
            "labq never runs a job as root in their place"
        ) from None
    if launch.user and pw.pw_name != launch.user:
        raise Refused(f"uid {launch.uid} is {pw.pw_name} on {host}, not {launch.user}: the accounts differ")
    if pw.pw_uid == 0 and launch.user not in ("", "root"):
        raise Refused(f"{launch.user}'s job would run as root on {host}")
    groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    return _Account(pw.pw_uid, pw.pw_gid, groups, pw.pw_dir, pw.pw_name)


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()
# Signals a job starts with at their default action, whatever the worker had.
_DEFAULT_SIGNALS = tuple(
    int(s)
    for s in (
        signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
        signal.SIGALRM, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD,
    )
)
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _child_setup(
    acct: _Account | None, umask: int, cwd: str, cgroup_procs: str, status_fd: int, host: str, ctty: bool = False
) -> None:
    """In the child, between fork and exec. Order matters: join the job's cgroup while
    still root, drop privileges, and only then enter the workdir, so a directory the
    user cannot reach stays unreachable. No Python locks here (the parent has threads):
    plain system calls only, and the account was looked up before the fork."""
    try:
        # The Ray worker we were forked from blocks some signals (SIGINT): a blocked
        # mask survives exec, and a job (a session's ^C above all) must get them all.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        # ... and an ignored signal survives exec too: if another thread of the worker
        # was inside system(3) as we forked (it ignores SIGINT and SIGQUIT meanwhile),
        # the job, a session's shell above all, would never see ^C. Seen in CI.
        if _LIBC is not None:
            for sig in _DEFAULT_SIGNALS:
                _LIBC.signal(sig, 0)  # SIG_DFL (libc's own call: no Python handler state)
        if ctty:
            # The pty on stdin becomes the session's controlling terminal (Popen made
            # the session), so a shell has job control and ^C reaches its foreground.
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if cgroup_procs:
            fd = os.open(cgroup_procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        if acct is not None:
            os.setgroups(list(acct.groups))
            os.setgid(acct.gid)
            os.setuid(acct.uid)
        os.umask(umask)
        os.chdir(cwd)
    except OSError as e:
        who = acct.name if acct is not None else "this user"
        if e.filename == cwd:
            public = f"cannot enter its workdir as {who} on {host}: {e.strerror}"
            detail = f"cannot enter workdir {cwd} as {who} on {host}: {e.strerror}"
        else:
            public = detail = f"cannot set up the job as {who} on {host}: {e.strerror}"
        os.write(status_fd, f"{public}\0{detail}".encode())
        os._exit(126)
    # Die with the Ray worker that watches us: a crashed worker must not leave a job
    # holding GPUs that Ray believes are free. (After setuid, which clears it.)
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _cgroup2_mount() -> str:
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return ""


class _Tree:
    """Every process of one job, wherever it went (own session, double fork).

    With cgroup v2 (a root runner on most nodes) the job runs in a cgroup of its own
    and `cgroup.kill` ends all of it at once. Otherwise this process is a child
    subreaper: whatever the job orphans is re-parented to us instead of init, so it
    stays among our descendants, and the sweep kills those that were not ours before.
    """

    def __init__(self, key: str, want_cgroup: bool) -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.before = self._children()
        self.cgroup = self._make_cgroup(key) if want_cgroup and os.geteuid() == 0 else ""
        self.top: int | None = None

    _last_tidy = 0.0  # per worker process: when it last removed stale job cgroups

    @staticmethod
    def _make_cgroup(key: str) -> str:
        mount = _cgroup2_mount()
        if not mount:
            return ""
        _Tree._tidy(os.path.join(mount, "labq"))
        path = os.path.join(mount, "labq", key)
        try:
            os.makedirs(path, exist_ok=True)
            if not os.path.exists(os.path.join(path, "cgroup.kill")):
                os.rmdir(path)  # a kernel before 5.14: the sweep does it
                return ""
        except OSError:
            return ""  # read-only cgroupfs (a container): the sweep does it
        return path

    @staticmethod
    def _tidy(parent: str, min_age: float = 60.0) -> None:
        """Remove job cgroups left empty: a job's own is removed when it ends, but not
        when its runner died with it (a worker killed, a node rebooted mid-job) or the
        kernel still held it past close()'s wait. Empty and older than `min_age` (so
        never one a runner just made), at most once a minute per worker."""
        now = time.time()
        if now - _Tree._last_tidy < 60.0:
            return
        _Tree._last_tidy = now
        try:
            names = os.listdir(parent)
        except OSError:
            return
        for name in names:
            path = os.path.join(parent, name)
            try:
                if now - os.stat(path).st_mtime < min_age or not os.path.isdir(path):
                    continue
                with open(os.path.join(path, "cgroup.events")) as f:
                    if "populated 0" not in f.read():
                        continue
                os.rmdir(path)
            except OSError:
                continue

    @staticmethod
    def _children() -> set[int]:
        """This process's children: the kernel's per-thread lists (a few small reads),
        not a scan of every process on the node (psutil, ~ms on a busy node)."""
        try:
            pids: set[int] = set()
            for tid in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{tid}/children") as f:
                    pids.update(int(p) for p in f.read().split())
            return pids
        except (OSError, ValueError):
            try:
                return {p.pid for p in psutil.Process().children()}
            except psutil.Error:
                return set()

    def procs(self) -> set[int]:
        pids: set[int] = set()
        if self.cgroup:
            try:
                with open(os.path.join(self.cgroup, "cgroup.procs")) as f:
                    pids.update(int(x) for x in f.read().split())
            except (OSError, ValueError):
                pass
        new = self._children() - self.before
        pids |= new
        if self.cgroup:
            return pids  # the cgroup holds every descendant already
        for pid in new:
            try:
                pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                pass
        return pids

    def signal(self, sig: int) -> None:
        """`sig` to the job's process group, and to every process of the job that left
        it (once each: a shell that traps SIGTERM must not run its trap twice)."""
        if self.top is not None:
            _signal_group(self.top, sig)
        for pid in self.procs():
            try:
                if self.top is not None and os.getpgid(pid) == self.top:
                    continue  # the group got it already
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def kill_all(self) -> None:
        """SIGKILL everything the job left; reap what became ours."""
        if self.cgroup:
            try:
                with open(os.path.join(self.cgroup, "cgroup.kill"), "w") as f:
                    f.write("1")
            except OSError:
                pass
        for _ in range(50):  # a fork loop may add processes while we kill
            pids = self.procs()
            if self.top is not None:
                _signal_group(self.top, signal.SIGKILL)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            self._reap(pids)
            time.sleep(0.02)

    def _reap(self, pids: set[int]) -> None:
        for pid in pids:
            if pid == self.top:
                continue  # subprocess.Popen reaps its own child
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def close(self) -> None:
        if not self.cgroup:
            return
        for _ in range(50):
            try:
                os.rmdir(self.cgroup)
                return
            except OSError:
                time.sleep(0.02)


def _unpack(
    launch: Launch, acct: _Account | None, host: str, env: dict[str, str], cgroup_procs: str, report: Report
) -> str:
    """The job's code, unpacked as its owner in the job's own tree (unpack.py)."""
    home = acct.home if acct is not None else env.get("HOME") or os.path.expanduser("~")
    user = acct.name if acct is not None else env.get("USER", "")
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    return unpack.unpack(
        launch.code,
        launch.tag,
        launch.workdir,
        home,
        user,
        # In "/", not the workdir: a snapshot runs on nodes that lack the workdir
        # (no shared filesystem); the unpacker names every path it uses in full.
        lambda: _child_setup(acct, 0o077, "/", cgroup_procs, status_w, host),
        status_r,
        status_w,
        lambda: report(None, 0, b"", None, []),
    )


def run(launch: Launch, gpu_ids: list[str], node: str, report: Report, tty_in: TtyIn | None = None) -> dict[str, Any]:
    """Start the job, stream its log through `report`, enforce limits, return its result.
    A session (`launch.tty`) reads what is typed into it through `tty_in`."""
    host = socket.gethostname()
    try:
        acct = _account(launch, host)
        base = Path(launch.job_dir) if launch.job_dir else safefs.node_job_dir()
        safefs.private_dir(base, 0o711 if os.geteuid() == 0 else 0o700)
    except (Refused, safefs.UnsafePath, OSError) as e:
        return _refuse(report, str(e))
    deadline_path = base / f"{launch.tag}.deadline"
    dfd = safefs.create_exclusive(deadline_path, 0o644)
    try:
        return _run(launch, gpu_ids, node, report, acct, host, deadline_path, dfd, tty_in)
    finally:
        os.close(dfd)
        with contextlib.suppress(OSError):
            os.unlink(deadline_path)


def _refuse(report: Report, reason: str, exit_code: int | None = None, detail: str = "") -> dict[str, Any]:
    """The job failed before it ran. `reason` is public (everyone sees a job's reason);
    `detail`, with its paths and command, goes only to the log, which is the owner's."""
    result = _result("failed", exit_code, None, reason)
    report(None, 0, f"labq: {detail or reason}\n".encode(), result, [])
    return result


def _run(
    launch: Launch,
    gpu_ids: list[str],
    node: str,
    report: Report,
    acct: _Account | None,
    host: str,
    deadline_path: Path,
    dfd: int,
    tty_in: TtyIn | None = None,
) -> dict[str, Any]:
    env = dict(launch.env)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    # CUDA numbers GPUs fastest-first unless told otherwise; NVML (and labq) by PCI bus.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env["LABQ_JOB_ID"] = str(launch.job_id)
    env["LABQ_ATTEMPT"] = str(launch.attempt)
    env["LABQ_GPUS"] = str(len(gpu_ids))
    env["LABQ_NODE"] = node
    env["LABQ_GRACE_SECONDS"] = f"{launch.grace:g}"
    env["LABQ_PREEMPT_DEADLINE"] = str(deadline_path)
    if acct is not None:
        env.setdefault("HOME", acct.home)
        env.setdefault("USER", acct.name)
        env.setdefault("LOGNAME", acct.name)
        home = acct.home
    else:
        home = env.get("HOME") or os.path.expanduser("~")
    cwd = launch.workdir or home
    env["LABQ_SUBMIT_DIR"] = cwd  # where it was submitted from, frozen code or not
    if launch.code_error:
        return _refuse(report, launch.code_error)

    tree = _Tree(launch.tag, launch.cgroup)
    # Closed by the last report (every way out of here below makes one).
    report = HeadGuard(tree.kill_all, launch.head_timeout).wrap(report)
    cgroup_procs = os.path.join(tree.cgroup, "cgroup.procs") if tree.cgroup else ""
    if launch.code:
        try:
            run_in = _unpack(launch, acct, host, env, cgroup_procs, report)
        except unpack.Stopped as stopped:
            tree.kill_all()
            tree.close()
            result = _result(str(stopped.request["outcome"]), None, None, str(stopped.request.get("reason", "")))
            report(None, 0, b"labq: stopped while its code was being unpacked\n", result, [])
            return result
        except unpack.UnpackFailed as e:
            tree.kill_all()
            tree.close()
            return _refuse(report, f"cannot unpack its code snapshot on {host}", 126, f"cannot unpack the code snapshot on {host}: {e}")
        tree.kill_all()  # nothing the unpacking started outlives it
        # The job runs the submitted code; data and outputs stay in the workdir.
        env["LABQ_CODE_DIR"] = run_in
        if launch.code_commit:
            env["LABQ_CODE_COMMIT"] = launch.code_commit
        cwd = run_in
    # Pipes, not files: the job's output streams through us, so it is bounded here
    # and a job that writes faster than we forward it waits, as on a terminal. Two:
    # stdout and stderr, read in the order they come into one log, with the stderr
    # parts marked (`labq logs --stderr`).
    # A session's command gets a pty instead: one stream, as a terminal shows it.
    if launch.tty:
        rfd, wfd = os.openpty()
        _set_winsize(rfd, 24, 80)
        if acct is not None:
            # The owner's terminal, as login gives one (tty(1), screen and password
            # prompts open it by name): theirs, nobody else's.
            os.fchown(wfd, acct.uid, -1)
            os.fchmod(wfd, 0o620)
        efd, ewfd = -1, -1
        env.setdefault("TERM", "xterm-256color")
    else:
        rfd, wfd = os.pipe()
        efd, ewfd = os.pipe()
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(
            launch.argv,
            env=env,
            stdin=wfd if launch.tty else subprocess.DEVNULL,
            stdout=wfd,
            stderr=wfd if launch.tty else ewfd,
            start_new_session=True,
            preexec_fn=lambda: _child_setup(acct, launch.umask, cwd, cgroup_procs, status_w, host, launch.tty),
        )
    except OSError as e:
        for fd in (rfd, efd):
            if fd >= 0:
                os.close(fd)
        tree.close()
        why = e.strerror or str(e)
        return _refuse(report, f"cannot run its command: {why}", 127, f"cannot run {launch.argv[0]!r}: {why}")
    finally:
        for fd in (wfd, ewfd, status_w):
            if fd >= 0:
                os.close(fd)
    tree.top = proc.pid
    os.set_blocking(rfd, False)
    if efd >= 0:
        os.set_blocking(efd, False)
    out = _Output(rfd, launch.log_limit, efd if efd >= 0 else None)
    keys = _Typed(rfd)
    heartbeat_s = TTY_HEARTBEAT_S if launch.tty else HEARTBEAT_S

    started = time.time()
    info = {"pid": proc.pid, "gpu_ids": gpu_ids, "host": host, "start_time": started}
    outcome: str | None = None
    reason = ""
    kill_at: float | None = None
    deadline = started + launch.time_limit if launch.time_limit else None
    stop = report(info, 0, b"", None, [])
    last_report = time.monotonic()

    def ask_to_stop(why: str, grace: float) -> None:
        if launch.tty:
            # A session: say so on its screen, and hang up (an interactive shell ignores
            # SIGTERM; a closing terminal is what it understands).
            out.buf += f"\r\nlabq: this session is stopping ({why}); it is killed in {grace:g}s\r\n".encode(errors="replace")
            tree.signal(signal.SIGHUP)
        tree.signal(signal.SIGTERM)

    while True:
        now = time.time()
        if stop is not None:
            grace = max(0.0, float(stop.get("grace", launch.grace)))
            if outcome is None:
                outcome, reason = str(stop["outcome"]), str(stop.get("reason", ""))
                kill_at = now + grace
                _write_deadline(dfd, kill_at)
                ask_to_stop(reason or outcome, grace)
            elif kill_at is not None and now + grace < kill_at:
                # A second, shorter request (`labq cancel --now`) brings the kill forward.
                kill_at = now + grace
                _write_deadline(dfd, kill_at)
        elif outcome is None and deadline is not None and now >= deadline:
            outcome, reason = "timeout", f"time limit of {launch.time_limit:g}s reached"
            kill_at = now + launch.grace
            _write_deadline(dfd, kill_at)
            ask_to_stop(reason, launch.grace)
        if kill_at is not None and now >= kill_at:
            tree.kill_all()
        wait_s = max(0.0, heartbeat_s - (time.monotonic() - last_report))
        if kill_at is not None:
            wait_s = min(wait_s, max(0.01, kill_at - now))
        if deadline is not None and outcome is None:
            wait_s = min(wait_s, max(0.01, deadline - now))
        if launch.tty and out.pending():
            wait_s = min(wait_s, TTY_ECHO_S)
        if keys.pending():
            wait_s = min(wait_s, TTY_RETRY_S)
        out.pump(wait_s)
        keys.flush()
        if proc.poll() is not None:
            break
        # A session's screen goes out as soon as it changes (an echo is waited for).
        due = time.monotonic() - last_report >= (TTY_ECHO_S if launch.tty and out.pending() else heartbeat_s)
        if due or out.pending() >= CHUNK:
            offset, data, err = out.take()
            stop = report(None, offset, data, None, err) or stop
            last_report = time.monotonic()
            if launch.tty and tty_in is not None and not out.closed and keys.pending() < TTY_PENDING_MAX:
                typed = tty_in()
                for item in typed:
                    if item.get("notice"):  # labq's own line on the session's screen
                        out.buf += f"\r\n{item['notice']}\r\n".encode(errors="replace")
                keys.add(typed)
                keys.flush()

    # Whatever the job left behind goes too, wherever it went: nothing may keep GPUs
    # after labq records the job as ended.
    tree.kill_all()
    tree.close()
    rc = proc.returncode
    failure, detail = _read_status(status_r)
    exit_code = rc if rc >= 0 else None
    sig = -rc if rc < 0 else None
    if failure:
        outcome, reason = "failed", failure
    elif outcome is None:
        outcome = "succeeded" if rc == 0 else "failed"
        reason = "" if rc == 0 else (f"exit code {rc}" if rc > 0 else f"killed by {signal.Signals(-rc).name}")
    result = _result(outcome, exit_code, sig, reason)
    out.drain()
    if failure:
        out.buf += f"labq: {detail}\n".encode()
    while out.pending() > CHUNK:
        offset, data, err = out.take(CHUNK)
        report(None, offset, data, None, err)
    if out.dropped:
        result["log_dropped"] = out.dropped
    offset, data, err = out.take()
    report(None, offset, data, result, err)
    return result


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class _Typed:
    """What was typed into a session and its terminal has not taken yet.

    Written without ever blocking: a program that does not read its terminal (a full
    line buffer, a `sleep` in the foreground) must not stop this loop, which is also
    what enforces the time limit, acts on `labq cancel` and tells the head the node is
    alive. What waits here is bounded by TTY_PENDING_MAX (the loop stops taking more).
    """

    def __init__(self, master: int) -> None:
        self.master = master
        self.buf = bytearray()
        self.gone = False

    def pending(self) -> int:
        return len(self.buf)

    def add(self, typed: list[dict[str, Any]]) -> None:
        for item in typed:
            size = item.get("winsize")
            if size:
                _set_winsize(self.master, int(size[0]), int(size[1]))
            if not self.gone:
                self.buf += item.get("input") or b""

    def flush(self) -> None:
        while self.buf:
            try:
                n = os.write(self.master, self.buf)
            except BlockingIOError:
                return  # the terminal is full: the rest when it has room
            except OSError:
                self.gone = True  # the session's terminal is gone
                self.buf.clear()
                return
            del self.buf[:n]


def _read_status(fd: int) -> tuple[str, str]:
    """What the child said before it gave up, as (public reason, detail for the log);
    empty once it reached exec."""
    try:
        os.set_blocking(fd, False)
        said = os.read(fd, 4096).decode(errors="replace")
    except BlockingIOError:
        said = ""
    finally:
        os.close(fd)
    public, _, detail = said.partition("\0")
    return public, detail or public


class _Output:
    """The job's output pipes (stdout, and stderr apart): bytes read but not yet
    reported, up to a limit, and which of them came from stderr."""

    NOTE = b"\nlabq: output beyond this point was discarded (log limit reached)\n"

    def __init__(self, fd: int, limit: int, err_fd: int | None = None) -> None:
        self.fds = [fd] if err_fd is None else [fd, err_fd]
        self.err_fd = err_fd
        self.limit = max(0, limit - len(self.NOTE))
        self.buf = bytearray()
        self.offset = 0  # bytes reported so far
        self.dropped = 0
        # Stderr parts of the stream not yet taken: [log offset, stderr offset, length].
        self.spans: list[list[int]] = []
        self.err_bytes = 0

    @property
    def closed(self) -> bool:
        return not self.fds

    def pending(self) -> int:
        return len(self.buf)

    def _close(self, fd: int) -> None:
        os.close(fd)
        self.fds.remove(fd)

    def _read(self, fd: int) -> bool:
        """One read; False when nothing more is there right now (or ever)."""
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""  # a pty whose last user closed it: the end, as a pipe's EOF
        if not data:
            self._close(fd)
            return False
        room = self.limit - self.offset - len(self.buf)
        kept = data if room >= len(data) else data[: max(0, room)] if self.dropped == 0 else b""
        if kept and fd == self.err_fd:
            at = self.offset + len(self.buf)
            last = self.spans[-1] if self.spans else None
            if last is not None and last[0] + last[2] == at:
                last[2] += len(kept)
            else:
                self.spans.append([at, self.err_bytes, len(kept)])
            self.err_bytes += len(kept)
        if room >= len(data):
            self.buf += data
        else:
            if self.dropped == 0:
                self.buf += kept + self.NOTE
            self.dropped += len(data) - max(0, room)
        return True

    def pump(self, timeout: float) -> None:
        """Wait up to `timeout` for output, then read what is there (a bounded amount)."""
        if self.closed:
            time.sleep(timeout)
            return
        ready, _, _ = select.select(self.fds, [], [], timeout)
        for fd in ready:
            for _ in range(16):  # past the limit we read fast, so a flood never stalls the job
                if not self._read(fd) or (self.pending() >= CHUNK and not self.dropped):
                    break

    def drain(self, timeout: float = 2.0) -> None:
        """After the job ended: what is left in the pipes. A descendant that escaped its
        process group may keep a pipe open; don't wait for it beyond `timeout`."""
        end = time.monotonic() + timeout
        while not self.closed and time.monotonic() < end:
            if not any([self._read(fd) for fd in list(self.fds)]):
                if self.closed:
                    break
                select.select(self.fds, [], [], max(0.0, min(0.1, end - time.monotonic())))
        for fd in list(self.fds):
            self._close(fd)

    def take(self, n: int | None = None) -> tuple[int, bytes, list[Span]]:
        n = len(self.buf) if n is None else min(n, len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        offset = self.offset
        self.offset += n
        err: list[Span] = []
        while self.spans and self.spans[0][0] < self.offset:
            at, err_at, length = self.spans[0]
            if at + length <= self.offset:
                err.append((at, err_at, length))
                self.spans.pop(0)
            else:  # split at the chunk's end; the rest goes with the next chunk
                k = self.offset - at
                err.append((at, err_at, k))
                self.spans[0] = [self.offset, err_at + k, length - k]
        return offset, data, err


def _write_deadline(fd: int, kill_at: float) -> None:
    # Through the descriptor opened at creation: the path is never looked up again.
    try:
        data = f"{kill_at:.3f}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass


def _result(outcome: str, exit_code: int | None, sig: int | None, reason: str) -> dict[str, Any]:
    # The end as the node saw it: the daemon may store it much later (it may be down).
    return {
        "outcome": outcome,
        "exit_code": exit_code,
        "signal": sig,
        "reason": reason,
        "end_time": time.time(),
    }
