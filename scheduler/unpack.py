"""Unpacking a job's code snapshot on its node (issue 17), before the job starts.

The runner (root) starts a plain python *as the job's owner*, given snapshot.py as its
source (this project's python may live in root's private home), in the job's own
process tree: everything it starts dies with that tree. What the owner's process does
cannot hold root here: its output is read bounded and without waiting for pipes to
close, there is a deadline, and a cancel is heeded while it runs. No Ray here.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scheduler import snapshot

DEADLINE_S = 300.0  # git archive of a large repository from a slow disk, at most
MAX_SAID = 8192  # bytes of its output kept (the path it prints; an error line)
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

_SOURCE = Path(snapshot.__file__).read_text() + "\n_materialize_main()\n"


class UnpackFailed(Exception):
    """Why the code could not be unpacked (for the owner's log)."""


class Stopped(Exception):
    """The job was cancelled (or preempted) while its code was being unpacked."""

    def __init__(self, request: dict[str, Any]) -> None:
        super().__init__(str(request.get("reason", "")))
        self.request = request


def _everyone_can_run(path: str) -> bool:
    try:
        if not os.stat(path).st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        while parent and parent != "/":
            if not os.stat(parent).st_mode & 0o001:
                return False
            parent = os.path.dirname(parent)
    except OSError:
        return False
    return True


def plain_python() -> str:
    """A python the job's owner can run: ours may live in root's private home."""
    if os.geteuid() != 0:
        return sys.executable
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        if _everyone_can_run(candidate):
            return candidate
    raise UnpackFailed("no python every user may run on this node (/usr/bin/python3), needed to unpack code")


def unpack(
    code: bytes,
    key: str,
    workdir: str,
    home: str,
    user: str,
    preexec: Callable[[], None],
    status_r: int,
    status_w: int,
    stop_requested: Callable[[], dict[str, Any] | None],
) -> str:
    """Unpack into `~/.cache/labq/code/KEY` as the owner; the directory to run in.
    `preexec` drops to the owner (and joins the job's cgroup); it reports a setup
    failure on `status_w`. The caller kills what is left of the tree afterwards."""
    # A fixed environment: not the job's (LD_PRELOAD and the like are for the job).
    env = {"PATH": SYSTEM_PATH, "HOME": home, "USER": user, "LOGNAME": user, "LANG": "C.UTF-8"}
    try:
        proc = subprocess.Popen(
            [plain_python(), "-I", "-c", _SOURCE, key, workdir, home],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=preexec,
        )
    except OSError as e:
        raise UnpackFailed(f"cannot start python: {e.strerror or e}") from None
    finally:
        os.close(status_w)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    fds = {out_fd: bytearray(), err_fd: bytearray()}
    to_write = memoryview(code)
    stdin = proc.stdin.fileno()
    for fd in (stdin, *fds):
        os.set_blocking(fd, False)
    deadline = time.monotonic() + DEADLINE_S
    next_check = 0.0
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now > deadline:
                raise UnpackFailed(f"unpacking took over {DEADLINE_S:.0f}s")
            if now >= next_check:
                request = stop_requested()
                if request is not None:
                    raise Stopped(request)
                next_check = now + 0.25
            writers = [stdin] if to_write else []
            readable, writable, _ = select.select(list(fds), writers, [], 0.1)
            if writable:
                try:
                    n = os.write(stdin, to_write[: 1 << 16])
                    to_write = to_write[n:]
                except BlockingIOError:
                    pass
                except OSError:
                    to_write = to_write[:0]  # it stopped reading: its exit says why
                if not to_write:
                    proc.stdin.close()
            for fd in readable:
                try:
                    data = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    continue
                if data and len(fds[fd]) < MAX_SAID:
                    fds[fd] += data[: MAX_SAID - len(fds[fd])]
        # Whatever is already in the pipes; never a wait for them to close (a process
        # it left behind may hold them: the caller kills the tree).
        for fd, buf in fds.items():
            try:
                buf += os.read(fd, MAX_SAID)[: max(0, MAX_SAID - len(buf))]
            except (BlockingIOError, OSError):
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
    try:
        os.set_blocking(status_r, False)
        setup = os.read(status_r, 4096).decode(errors="replace")
    except (BlockingIOError, OSError):
        setup = ""
    finally:
        os.close(status_r)
    if setup:
        raise UnpackFailed(setup.split("\0", 1)[0])
    out = bytes(fds[out_fd])
    err = bytes(fds[err_fd]).decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not out:
        raise UnpackFailed(err[-1] if err else f"exit status {proc.returncode}")
    return out.decode(errors="surrogateescape")
