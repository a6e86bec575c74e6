"""How researchers work (issue 16), on a real daemon and real Ray: chains (--after /
--after-any), `labq wait`, `labq logs --tail`."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Labq, unix_user, wait_for

pytestmark = pytest.mark.integration


def test_a_three_stage_chain_with_a_failing_middle(labq4: Labq) -> None:
    """preprocess -> train (fails) -> eval: eval is cancelled saying why, never runs;
    a cleanup chained with --after-any runs anyway; `labq wait` says so in its status."""
    marker = labq4.root / "eval-ran"
    # `pre` runs until the test opens the gate: under load a fixed sleep could end, and
    # `train` fail, before the queue below is read.
    gate = labq4.root / "pre-gate"
    pre = labq4.submit("--name", "pre", "--", "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.2; done")
    train = labq4.submit("--name", "train", "--after", str(pre), "--", "sh", "-c", "exit 3")
    ev = labq4.submit("--name", "eval", "--after", str(train), "--", "touch", str(marker))
    cleanup = labq4.submit("--name", "cleanup", "--after-any", f"{train},{pre}", "--", "true")
    show = labq4.run("show", str(ev)).stdout
    assert f"after:     {train} (must succeed)" in show
    queue = labq4.run("queue").stdout
    row = next(line for line in queue.splitlines() if line.lstrip().startswith(f"{train} "))
    assert f"dependency: waits for job {pre}" in row, row

    gate.touch()
    t0 = time.monotonic()
    out = labq4.run("wait", str(pre), str(train), str(ev), str(cleanup), check=False, timeout=120)
    assert out.returncode == 1, out  # not all succeeded
    lines = out.stdout.splitlines()  # each as it ends
    assert sorted(lines) == sorted(
        [f"job {pre} SUCCEEDED", f"job {train} FAILED (exit code 3)", f"job {ev} CANCELLED", f"job {cleanup} SUCCEEDED"]
    ), out.stdout
    assert lines.index(f"job {pre} SUCCEEDED") < lines.index(f"job {train} FAILED (exit code 3)")
    assert time.monotonic() - t0 < 60
    j = labq4.job(ev)
    assert j["reasons"][0] == f"dependency {train} FAILED: --after needs it to succeed"
    assert j["start_time"] is None and not marker.exists()
    assert labq4.run("wait", str(pre), str(cleanup)).returncode == 0
    assert labq4.run("wait", "-q", str(ev), check=False).stdout == ""


def test_wait_times_out_with_124_and_dependencies_are_checked_at_submit(labq4: Labq) -> None:
    long = labq4.submit("--", "sleep", "300")
    try:
        t0 = time.monotonic()
        out = labq4.run("wait", str(long), "--timeout", "2", check=False)  # seconds; said with a unit
        assert out.returncode == 124 and time.monotonic() - t0 < 10
        assert out.stderr.strip() == f"labq: still waiting for job {long} after 2s"
        for args, msg in (
            (("--after", "999999"), "--after 999999: there is no job 999999"),
            (("--after", "12,x"), "--after: 'x' is not a job id (give ids like 41,42 or 42.* for an array)"),
        ):
            r = labq4.run("submit", *args, "--", "true", check=False)
            assert r.returncode == 1 and r.stderr.strip().splitlines() == [f"labq: {msg}"], r.stderr
        bob = unix_user("labqtest-bob")
        r = labq4.run("submit", "--after", str(long), "--", "true", user=bob, check=False, cwd="/tmp")
        assert r.returncode == 1 and "belongs to" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        r = labq4.run("wait", "999999", check=False)
        assert r.returncode == 1 and r.stderr.strip() == "labq: no job 999999"
    finally:
        labq4.run("cancel", "--now", str(long), check=False)


def test_logs_tail_prints_the_last_lines_of_a_big_log(labq4: Labq) -> None:
    job = labq4.submit("--", "python3", "-c", "for i in range(200000): print(f'line {i}')")
    assert labq4.run("wait", str(job)).returncode == 0
    assert labq4.run("logs", str(job), "--tail", "3").stdout == "line 199997\nline 199998\nline 199999\n"
    assert labq4.run("logs", str(job), "-n", "0").stdout == ""
    many = labq4.run("logs", str(job), "--tail", "5000").stdout.splitlines()
    assert len(many) == 5000 and many[0] == "line 195000"
    r = labq4.run("logs", str(job), "--tail", "-1", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "labq: --tail takes a number of lines, 0 or more"


def test_rerun_repeats_a_job_with_changes_and_only_for_its_owner(labq4: Labq) -> None:
    first = labq4.submit("--name", "orig", "--env", "LR=3e-4", "--time", "5m", "--", "sh", "-c", "echo lr=$LR")
    assert labq4.run("wait", str(first)).returncode == 0
    out = labq4.run("rerun", str(first), "--gpus", "2", "--env", "EXTRA=1", "--json")
    again = int(json.loads(out.stdout)["id"])
    assert json.loads(out.stdout)["rerun_of"] == first
    assert labq4.run("wait", str(again)).returncode == 0
    a, b = labq4.job(first)["spec"], labq4.job(again)["spec"]
    assert b["command"] == a["command"] and b["workdir"] == a["workdir"] and b["time"] == a["time"]
    assert b["gpus"] == 2 and b["name"] == "orig" and b["env"]["LR"] == "3e-4" and b["env"]["EXTRA"] == "1"
    assert labq4.run("logs", str(again)).stdout == "lr=3e-4\n"
    assert labq4.run("rerun", str(first), "--dry-run").stdout.startswith("would start now on ")
    bob = unix_user("labqtest-bob")
    r = labq4.run("rerun", str(first), user=bob, check=False, cwd="/tmp")
    assert r.returncode == 1 and r.stderr.strip() == f"labq: job {first} belongs to root: you can rerun only your own jobs"


def test_an_array_of_100_tasks_with_a_cap_of_2_on_real_ray(labq4: Labq) -> None:
    """100 tasks, at most 2 at once on 4 GPUs; each writes its index and its env; the
    queue shows one row; a task is named 42.7 by show, logs and cancel; `wait 42` and
    `--after 42.*` wait for all of it."""
    out_dir = labq4.root / "array-out"
    out_dir.mkdir()
    out_dir.chmod(0o777)
    arr = labq4.submit(
        "--array", "0-99%2", "--name", "seeds", "--",
        "sh", "-c", f'echo "$LABQ_ARRAY_ID $LABQ_ARRAY_INDEX {{index}}" > {out_dir}/{{index}}; echo task {{index}}',
    )
    after = labq4.submit("--after", f"{arr}.*", "--", "true")
    # A task not started yet: show answers as that task; cancel makes sure it never starts.
    assert labq4.run("cancel", f"{arr}.99").stdout.strip() == f"job {arr}.99: cancelled"
    show = labq4.run("show", f"{arr}.50").stdout
    assert show.splitlines()[0].startswith(f"job {arr}.50  seeds") and f"> {out_dir}/50" in show, show
    queue = labq4.run("queue").stdout
    rows = [line for line in queue.splitlines() if line.startswith(f"{arr}[]")]
    assert len(rows) == 1 and "at most 2 at once" in rows[0], queue
    peak = 0
    c = labq4.client()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            live = [j for j in c.jobs(tasks=True) if j.get("array_id") == arr and j["state"] in ("STARTING", "RUNNING")]
            peak = max(peak, len(live))
            if c.job(arr)["state"] != "PENDING":
                break
            time.sleep(0.05)
    finally:
        c.close()
    assert 1 <= peak <= 2
    r = labq4.run("wait", str(arr), check=False, timeout=60)
    assert r.returncode == 1 and r.stdout.strip() == f"job {arr} CANCELLED", r  # one task was cancelled
    j = labq4.job(arr)
    assert j["array"]["done"] == 99 and j["array"]["cancelled"] == 1 and j["array"]["failed"] == 0, j["array"]
    assert sorted(int(p.name) for p in out_dir.iterdir()) == list(range(99))
    assert (out_dir / "7").read_text() == f"{arr} 7 7\n"
    assert labq4.run("logs", f"{arr}.7").stdout == "task 7\n"
    r = labq4.run("logs", str(arr), check=False)
    assert r.returncode == 1 and "is an array: each task has its own log" in r.stderr
    # The chain needed every task to succeed: one was cancelled, so it never runs.
    assert labq4.run("wait", str(after), check=False).stdout.strip() == f"job {after} CANCELLED"
    assert labq4.job(after)["reasons"][0] == f"dependency {arr} CANCELLED: --after needs it to succeed"
    r = labq4.run("show", f"{arr}.100", check=False)
    assert r.returncode == 1 and r.stderr.strip() == f"labq: no job {arr}.100"


def test_a_sweep_runs_the_grid_and_cancel_stops_the_whole_array(labq4: Labq) -> None:
    arr = labq4.submit("--sweep", "lr=1e-3,3e-4", "--sweep", "bs=32,64", "--", "sh", "-c", "echo lr={lr} bs=$LABQ_PARAM_BS; sleep 300")
    c = labq4.client()
    try:
        deadline = time.monotonic() + 60
        while c.job(arr)["array"]["running"] < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        tasks = {j["ref"]: j for j in c.jobs(tasks=True) if j.get("array_id") == arr}
        assert len(tasks) == 4
        deadline = time.monotonic() + 30
        while not c.log(f"{arr}.2")["data"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.log(f"{arr}.2")["data"] == "lr=3e-4 bs=32\n"
    finally:
        c.close()
    bob = unix_user("labqtest-bob")
    r = labq4.run("cancel", str(arr), user=bob, check=False, cwd="/tmp")
    assert r.returncode == 1 and "belongs to" in r.stderr
    assert labq4.run("cancel", "--now", f"{arr}.*").stdout.strip() == f"job {arr}: cancelled (4 running tasks killed)"
    assert labq4.run("wait", str(arr), check=False).stdout.strip() == f"job {arr} CANCELLED"


def test_stderr_apart_on_real_ray(labq4: Labq) -> None:
    script = (
        "import sys, time\n"
        "print('epoch 1', flush=True); time.sleep(0.1)\n"
        "print('warning: lr high', file=sys.stderr, flush=True); time.sleep(0.1)\n"
        "print('epoch 2', flush=True); time.sleep(0.1)\n"
        "raise SystemExit('Traceback: boom')\n"
    )
    job = labq4.submit("--", "python3", "-c", script)
    assert labq4.run("wait", str(job), check=False).returncode == 1
    assert labq4.run("logs", str(job)).stdout == "epoch 1\nwarning: lr high\nepoch 2\nTraceback: boom\n"
    assert labq4.run("logs", str(job), "--stderr").stdout == "warning: lr high\nTraceback: boom\n"
    assert labq4.run("logs", str(job), "-e", "--tail", "1").stdout == "Traceback: boom\n"
    bob = unix_user("labqtest-bob")
    r = labq4.run("logs", str(job), "--stderr", user=bob, check=False, cwd="/tmp")
    assert r.returncode == 1 and "log belongs to root" in r.stderr


def test_notify_posts_to_a_webhook_and_runs_a_command_as_its_owner(labq4: Labq, tmp_path: Path) -> None:
    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conf = tmp_path / "root-config"
        (conf / "labq").mkdir(parents=True)
        (conf / "labq" / "config.yaml").write_text(f"notify:\n  webhook: http://127.0.0.1:{server.server_port}/T/secret\n")
        (conf / "labq" / "config.yaml").chmod(0o600)
        env = {"XDG_CONFIG_HOME": str(conf)}
        job = labq4.submit("--notify", "--name", "crash", "--", "sh", "-c", "exit 2", env=env)
        assert labq4.run("wait", str(job), check=False).returncode == 1
        wait_for("the webhook", lambda: got, 20)
        assert got[0]["text"].startswith(f"labq: job {job} crash (root) FAILED after ") and got[0]["text"].endswith(": exit code 2")
        wait_for("the history", lambda: "answered 200" in labq4.run("show", str(job)).stdout, 10)
        # Loopback beyond the allowed address: refused at submit, in one line.
        (conf / "labq" / "config.yaml").write_text("notify:\n  webhook: http://127.0.0.2:9/x\n")
        r = labq4.run("submit", "--notify", "--", "true", env=env, check=False)
        assert r.returncode == 1 and r.stderr.strip().splitlines() == [
            "labq: notify: the webhook's host 127.0.0.2 is 127.0.0.2, not a public address; an admin may allow it "
            "with notify_allow_hosts in the daemon's config"
        ], r.stderr
        r = labq4.run("submit", "--notify", "--", "true", env={"XDG_CONFIG_HOME": str(tmp_path / "none")}, check=False)
        assert r.returncode == 1 and r.stderr.startswith("labq: --notify: where to? write it in ")
    finally:
        server.shutdown()
        server.server_close()
    # Bob's command runs as bob (under the system python's stdlib-only client, no PyYAML).
    bob = unix_user("labqtest-bob")
    home = Path(pwd.getpwuid(bob).pw_dir)
    out = Path(tempfile.mkdtemp(prefix="lqn", dir="/tmp"))  # bob cannot reach pytest's tmp_path
    out.chmod(0o1777)
    cfg = home / ".config" / "labq"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "config.yaml").write_text(f'notify:\n  command: "echo $LABQ_JOB_STATE $(id -un) > {out}/told"\n')
    for p in (home / ".config", cfg, cfg / "config.yaml"):
        os.chown(p, bob, bob)
    r = labq4.run("submit", "--notify", "--", "true", user=bob, cwd="/tmp", env={"HOME": str(home)})
    job = int(r.stdout.split()[-1])
    wait_for("bob's command", lambda: (out / "told").exists(), 20, why=lambda: labq4.run("show", str(job)).stdout)
    assert (out / "told").read_text() == "SUCCEEDED labqtest-bob\n" and (out / "told").stat().st_uid == bob
    assert labq4.job(job)["spec"]["notify"]["command"][:2] == ["/bin/sh", "-c"]  # an admin sees it
    r = labq4.run("show", str(job), "--json", user=unix_user("labqtest-carol"), cwd="/tmp")
    assert "notify" not in json.loads(r.stdout)["spec"]  # a colleague never sees it
    shutil.rmtree(out)


def test_the_example_sweep_file_makes_one_array_of_six(labq4: Labq) -> None:
    """examples/sweep.yaml as a newcomer would submit it: six tasks, each its own values."""
    repo = Path(__file__).resolve().parents[2]
    arr = labq4.submit("--time", "2m", str(repo / "examples" / "sweep.yaml"))
    j = labq4.job(arr)
    assert j["array"]["size"] == 6 and j["array"]["cap"] == 4 and j["name"] == "lr-bs-sweep"
    assert labq4.run("wait", str(arr), timeout=170).returncode == 0
    assert "lr 0.0001 batch size 64" in labq4.run("logs", f"{arr}.5").stdout
