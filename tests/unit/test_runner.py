"""The process side of a job attempt, without Ray: signals, grace, limits, logs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from scheduler.runner import Launch, _Output, run


class Recorder:
    def __init__(self, stop_after: float | None = None, grace: float = 1.0, ready: bytes = b"") -> None:
        self.info: dict[str, Any] | None = None
        self.data = bytearray()
        self.err = bytearray()
        self.result: dict[str, Any] | None = None
        self.stop_after = stop_after
        self.grace = grace
        self.ready = ready  # stop only once the job said this (its trap is set)
        self.t0 = time.monotonic()

    def __call__(self, info: Any, offset: int, data: bytes, result: Any, err: Any = ()) -> dict[str, Any] | None:
        if info is not None:
            self.info = info
        assert offset == len(self.data) or not data  # reports arrive in order, no gaps
        self.data += data
        for at, err_at, length in err:
            assert err_at == len(self.err)  # stderr parts arrive in order too
            self.err += data[at - offset : at - offset + length]
        if result is not None:
            self.result = result
        if self.stop_after is not None and time.monotonic() - self.t0 > self.stop_after and self.ready in self.data:
            return {"outcome": "cancelled", "reason": "test", "grace": self.grace}
        return None


def launch(tmp_path: Path, argv: list[str], **kw: Any) -> Launch:
    base = dict(
        job_id=1,
        attempt=1,
        argv=argv,
        workdir=str(tmp_path),
        env={"PATH": os.environ["PATH"]},
        uid=os.getuid(),
        time_limit=None,
        grace=1.0,
        log_limit=1 << 30,
        job_dir=str(tmp_path / "jobs"),
    )
    base.update(kw)
    return Launch(**base)


def test_success_streams_the_whole_log(tmp_path: Path) -> None:
    rec = Recorder()
    res = run(
        launch(tmp_path, ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES $LABQ_JOB_ID; seq 1 20000"]),
        ["2", "3"],
        "node-a",
        rec,
    )
    end = res.pop("end_time")
    assert res == {"outcome": "succeeded", "exit_code": 0, "signal": None, "reason": ""}
    assert abs(end - time.time()) < 5  # stamped on the node when the process ended
    lines = rec.data.decode().splitlines()
    assert lines[0] == "2,3 1" and lines[-1] == "20000" and len(lines) == 20001
    assert rec.info is not None and rec.info["pid"] > 0


def test_failure_exit_code(tmp_path: Path) -> None:
    res = run(launch(tmp_path, ["sh", "-c", "exit 7"]), [], "n", Recorder())
    assert res["outcome"] == "failed" and res["exit_code"] == 7


def test_stop_request_terms_then_kills_after_grace(tmp_path: Path) -> None:
    rec = Recorder(stop_after=0.5, grace=1.0)
    script = "trap 'echo term $(cat $LABQ_PREEMPT_DEADLINE)' TERM; while true; do sleep 0.05; done"
    t0 = time.monotonic()
    res = run(launch(tmp_path, ["sh", "-c", script]), [], "n", rec)
    took = time.monotonic() - t0
    assert res["outcome"] == "cancelled" and res["signal"] == signal.SIGKILL
    assert 1.4 < took < 6
    # The job was told when it would be killed: the deadline file holds the time.
    said = rec.data.decode().split("term", 1)[1].split()[0]
    assert abs(float(said) - time.time()) < 10
    # The file goes with the attempt.
    assert not list((tmp_path / "jobs").iterdir())


def test_time_limit(tmp_path: Path) -> None:
    res = run(launch(tmp_path, ["sleep", "30"], time_limit=0.5, grace=5), [], "n", Recorder())
    assert res["outcome"] == "timeout" and res["signal"] == signal.SIGTERM


def test_missing_command_and_workdir(tmp_path: Path) -> None:
    rec = Recorder()
    res = run(launch(tmp_path, ["/no/such/prog"]), [], "n", rec)
    assert res["outcome"] == "failed" and res["exit_code"] == 127 and rec.result == res
    rec = Recorder()
    res = run(launch(tmp_path, ["true"], workdir=str(tmp_path / "gone")), [], "n", rec)
    assert res["outcome"] == "failed" and res["exit_code"] == 126
    assert "cannot enter its workdir" in res["reason"] and "No such file or directory" in res["reason"]
    assert f"cannot enter workdir {tmp_path / 'gone'}".encode() in rec.data


def test_leftover_children_are_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    res = run(launch(tmp_path, ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; exit 0"]), [], "n", Recorder())
    assert res["outcome"] == "succeeded"
    pid = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        # A zombie until reaped by init is gone for our purposes.
        try:
            if "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("background child survived its job")


def test_a_flood_of_output_is_cut_at_the_limit_and_does_not_slow_the_job(tmp_path: Path) -> None:
    rec = Recorder()
    t0 = time.monotonic()
    # 200 MB as fast as dd can write it, against a 1 MB limit.
    argv = ["sh", "-c", "echo first; dd if=/dev/zero bs=1M count=200 status=none; echo last"]
    res = run(launch(tmp_path, argv, log_limit=1 << 20), [], "n", rec)
    took = time.monotonic() - t0
    assert res["outcome"] == "succeeded"
    assert len(rec.data) <= 1 << 20
    assert rec.data.startswith(b"first\n")
    assert rec.data.endswith(b"labq: output beyond this point was discarded (log limit reached)\n")
    kept = len(rec.data) - len(_Output.NOTE)
    assert res["log_dropped"] == 200 * (1 << 20) + len("first\nlast\n") - kept
    assert took < 30, took  # past the limit output is drained, not throttled
    assert not list(tmp_path.glob("*.log"))  # nothing spooled on the node's disk


def test_output_of_a_leftover_child_does_not_hold_the_end(tmp_path: Path) -> None:
    # A descendant that left the process group keeps the pipe open; the job still ends.
    argv = ["sh", "-c", "setsid sh -c 'sleep 20' & echo done"]
    t0 = time.monotonic()
    rec = Recorder()
    res = run(launch(tmp_path, argv), [], "n", rec)
    assert res["outcome"] == "succeeded" and b"done" in rec.data
    assert time.monotonic() - t0 < 10


def test_stderr_is_kept_apart_and_in_order_within_the_log(tmp_path: Path) -> None:
    """The log has both streams in the order they came; the stderr parts are marked, so
    stderr alone can be read back; a part split across reports comes back whole. (Two
    pipes: writes to both within the same instant may swap; apart in time, they never do.)"""
    script = (
        "import sys, time\n"
        "for i in range(3):\n"
        "    print(f'out {i}', flush=True); time.sleep(0.05)\n"
        "    print(f'err {i}', file=sys.stderr, flush=True); time.sleep(0.05)\n"
        "sys.stderr.write('x' * 3_000_000); sys.stderr.flush(); time.sleep(0.05)\n"
        "print('last', flush=True); time.sleep(0.05)\n"
        "raise SystemExit('boom')\n"
    )
    rec = Recorder()
    res = run(launch(tmp_path, ["python3", "-c", script]), [], "n", rec)
    assert res["outcome"] == "failed" and res["exit_code"] == 1
    text = rec.data.decode()
    assert text.startswith("out 0\nerr 0\nout 1\nerr 1\nout 2\nerr 2\n" + "x" * 3_000_000 + "last\n"), text[:80]
    assert rec.err.decode() == "err 0\nerr 1\nerr 2\n" + "x" * 3_000_000 + "boom\n"


def test_a_job_gets_default_signal_actions_even_if_its_worker_ignored_some() -> None:
    """A Ray worker thread inside system(3) ignores SIGINT and SIGQUIT while it waits;
    a job forked then would inherit that across exec (a session's ^C did nothing)."""
    import signal
    import subprocess

    from scheduler import runner

    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)}
    r, w = os.pipe()
    try:
        out = subprocess.run(
            ["grep", "SigIgn", "/proc/self/status"],
            preexec_fn=lambda: runner._child_setup(None, 0o022, "/", "", w, "here"),
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        os.close(r)
        os.close(w)
    ignored = int(out.split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1)) and not ignored & (1 << (signal.SIGQUIT - 1)), out


def test_a_session_that_never_reads_what_is_typed_still_stops_on_time(tmp_path: Path) -> None:
    """Typing ~200 KB into a session whose program does not read its terminal once
    wedged the runner on a full pty: the job outlived its limit and `cancel --now`, and
    the silent runner made the head take the whole node for dead. The runner keeps
    reporting, takes no more than it can hold, and enforces the limit."""
    rec = Recorder()
    calls: list[float] = []
    # Lines: a terminal holds whole lines for a reader, and refuses more once full.
    flood = [{"input": b"x" * 99 + b"\n", "winsize": None, "notice": ""}] * 2000

    def tty_in() -> list[dict[str, Any]]:
        calls.append(time.monotonic())
        return list(flood) if len(calls) == 1 else []

    t0 = time.monotonic()
    res = run(launch(tmp_path, ["sleep", "30"], tty=True, time_limit=2.0, grace=0.5), [], "n", rec, tty_in)
    took = time.monotonic() - t0
    assert res["outcome"] == "timeout", res
    assert took < 6, f"the runner stalled for {took:.1f}s"
    # After the flood it stopped asking for more (its own buffer was full) ...
    assert len(calls) == 1, len(calls)
    # ... but kept talking to the head all along (heartbeats while the terminal was full).
    assert rec.result is not None
