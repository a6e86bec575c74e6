"""GPU monitoring end to end: a real daemon, real Ray, node agents, simulated GPUs.

This machine has no NVIDIA GPU, so the agents serve `--gpus 3` from the fake NVML
built from the H200 recording; utilization follows what each job really does.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Labq, daemon, free_port, unix_user

pytestmark = pytest.mark.integration

BUSY = [
    sys.executable,
    "-c",
    "import time\nend=time.time()+float(__import__('sys').argv[1])\nwhile time.time()<end: pass",
    "8",
]
SLEEPY = ["sleep", "300"]


@pytest.fixture(scope="module")
def gpulq() -> Iterator[tuple[Labq, int]]:
    port = free_port()
    config = (
        "grace_period_s: 2\nmin_runtime_s: 0\nmonitor_interval_s: 0.5\nidle_window_s: 3\nidle_action_after_s: 3\n"
        "session_idle_s: 8\nsession_idle_warn_s: 4\n"
    )
    with daemon(config, "--gpus", "3", "--metrics-port", str(port)) as lq:
        yield lq, port


def scrape(port: int) -> str:
    return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())


DASHBOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana" / "labq.json"


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


def gpus_of(lq: Labq) -> dict[int, dict[str, Any]]:
    nodes = lq.json("gpus")["nodes"]
    assert len(nodes) == 1
    return {g["index"]: g for g in nodes[0]["gpu_list"]}


def wait_for(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        out = check()
        if out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_gpus_follow_the_jobs_holding_them(gpulq: tuple[Labq, int]) -> None:
    lq, port = gpulq
    busy = lq.submit("--gpus", "1", "--name", "busy", "--", *BUSY)
    sleepy = lq.submit("--gpus", "1", "--name", "sleepy", "--", *SLEEPY)
    lq.wait_all([busy, sleepy], ("RUNNING",))
    jobs = {j["id"]: j for j in lq.json("queue")}
    g_busy, g_sleepy = int(jobs[busy]["gpu_ids"]), int(jobs[sleepy]["gpu_ids"])

    def seen() -> dict[int, dict[str, Any]] | None:
        gpus = gpus_of(lq)
        if g_busy not in gpus or g_sleepy not in gpus:
            return None  # the node's monitor has not reported yet
        if (gpus[g_busy]["util_gpu"] or 0) >= 30 and gpus[g_sleepy]["util_gpu"] == 0:
            return gpus
        return None

    gpus = wait_for("the busy job's GPU to look busy", seen)
    node = lq.json("gpus")["nodes"][0]
    assert node["simulated"] and "simulated" in node["note"] and not node["stale"]
    assert gpus[g_busy]["job_id"] == busy and gpus[g_sleepy]["job_id"] == sleepy
    user = jobs[busy]["user"]
    assert gpus[g_busy]["user"] == user
    assert [p["job_id"] for p in gpus[g_busy]["processes"]] == [busy]
    free = ({0, 1, 2} - {g_busy, g_sleepy}).pop()
    assert gpus[free]["job_id"] is None and gpus[free]["processes"] == [] and gpus[free]["util_gpu"] == 0
    assert gpus[free]["fan_speed"] is None and gpus[free]["healthy"]

    text = lq.run("gpus").stdout
    assert "SIMULATED" in text and f"job {busy} ({user})" in text and "NVIDIA H200" in text
    # Another researcher sees which job and user hold a GPU, never the job's pid.
    other = unix_user("labqtest-bob")
    theirs = [p for g in json.loads(lq.run("gpus", "--json", user=other).stdout)["nodes"][0]["gpu_list"]
              for p in g["processes"]]  # fmt: skip
    assert theirs and all("pid" not in p and p["job_id"] in (busy, sleepy) for p in theirs), theirs
    assert "pid -" in lq.run("gpus", user=other).stdout

    # Prometheus: DCGM names, the job (dcgm-exporter's `hpc_job`: Prometheus renames a
    # `job` label to `exported_job`) and the user as labels.
    body = scrape(port)
    util = [
        ln for ln in body.splitlines() if ln.startswith("DCGM_FI_DEV_GPU_UTIL{") and f'hpc_job="{busy}"' in ln
    ]
    assert len(util) == 1 and f'user="{user}"' in util[0] and f'gpu="{g_busy}"' in util[0]
    assert not re.search(r'[{,]job="', body)
    assert f'labq_jobs_running{{user="{user}"}} 2.0' in body
    assert f'labq_fair_share_factor{{user="{user}"}}' in body
    health = lq.json("show", str(busy))
    assert health["gpu"]["util_now"] is not None

    # The sleeper is flagged idle (window 3 s here), in the queue and in its history.
    def flagged() -> dict[str, Any] | None:
        j = lq.job(sleepy)
        noted = any(
            e["reason"].startswith("idle: its GPUs have been under 2% utilization") for e in j["events"]
        )
        return j if noted and any(f.startswith("idle") for f in j.get("flags", [])) else None

    wait_for("the idle flag and its note in the history", flagged)
    assert "[idle " in lq.run("queue").stdout
    idle_h = wait_for(
        "idle GPU-hours in /metrics",
        lambda: re.search(rf'labq_idle_gpu_hours_7d{{user="{user}"}} ([0-9.e-]+)', scrape(port)),
    )
    assert float(idle_h.group(1)) >= 0  # the series exists; its value is checked against `labq usage` below

    # The busy job ends by itself; what it did is stored with it.
    done = lq.wait(busy, ("SUCCEEDED",), timeout=60)
    assert done["gpu"]["util_mean"] > 20 and done["gpu"]["mem_peak"] > 10 * 2**30
    lq.run("cancel", str(sleepy))
    lq.wait(sleepy, ("CANCELLED",))

    rows = {r["user"]: r for r in lq.json("usage")["rows"]}
    mine = rows[user]
    assert mine["jobs"] >= 2 and mine["allocated_gpu_h"] > 0 and mine["busy_gpu_h"] > 0
    assert mine["idle_gpu_h"] > 0 and 0 < mine["util_mean"] < 100
    exported = re.search(rf'labq_idle_gpu_hours_7d{{user="{user}"}} ([0-9.e-]+)', scrape(port))
    assert exported and float(exported.group(1)) == pytest.approx(mine["idle_gpu_h"], abs=2e-3)
    by_job = {r["job_id"]: r for r in lq.json("usage", "--by", "job")["rows"]}
    assert by_job[busy]["util_mean"] > by_job[sleepy]["util_mean"] == 0
    csv_out = lq.run("usage", "--by", "job", "--csv", "--since", "1h").stdout.splitlines()
    assert csv_out[0].startswith("job_id,name,user,gpus,state,allocated_gpu_h")
    assert any(line.startswith(f"{busy},busy,{user},1,SUCCEEDED,") for line in csv_out)


def test_idle_action_cancel_from_the_quota(gpulq: tuple[Labq, int]) -> None:
    lq, _ = gpulq
    me = _caller(lq)
    lq.run("quota", "set", me, "--idle-action", "cancel")
    try:
        job = lq.submit("--gpus", "1", "--", *SLEEPY)
        j = lq.wait(job, ("CANCELLED",), timeout=60)
        assert "idle_action: cancel" in j["reasons"][0] and "under 2% utilization" in j["reasons"][0]
    finally:
        lq.run("quota", "set", me, "--idle-action", "notify")


def _caller(lq: Labq) -> str:
    from scheduler.client import Client

    return str(Client(lq.socket).health()["caller"])


def test_bad_usage_input_is_one_line(gpulq: tuple[Labq, int]) -> None:
    lq, _ = gpulq
    r = lq.run("usage", "--since", "yesterday", check=False)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "since" in r.stderr
    r = lq.run("quota", "set", _caller(lq), "--idle-action", "delete", check=False)
    assert r.returncode != 0 and "idle_action must be one of notify, cancel, requeue" in r.stderr
    assert lq.json("quota", "show")["defaults"]["idle_action"] == "notify"


def test_simulate_replays_the_daemons_own_history(gpulq: tuple[Labq, int]) -> None:
    lq, _ = gpulq
    r = lq.run(
        "simulate",
        "--from-history",
        "--state-dir",
        str(lq.state_dir),
        "--nodes",
        "1",
        "--gpus-per-node",
        "3",
        "--policy",
        "fifo,fairshare",
        "--json",
        "-",
    )
    out = json.loads(r.stdout)["policies"]
    ended = [
        j for j in lq.json("queue", "--all") if j["state"] in ("SUCCEEDED", "CANCELLED") and j["start_time"]
    ]
    assert out["fairshare"]["jobs"] == out["fifo"]["jobs"] == len(ended) >= 2
    assert out["fairshare"]["finished"] == len(ended)


def test_every_dashboard_query_names_series_the_daemon_exports(gpulq: tuple[Labq, int]) -> None:
    """configs/grafana/labq.json asks only for what /metrics has (a renamed series would
    leave a panel empty without an error anywhere)."""
    lq, port = gpulq
    job = lq.submit("--gpus", "1", "--", "sleep", "300")
    lq.wait(job, ("RUNNING",))
    try:
        wait_for("the job's GPU in /metrics", lambda: f'hpc_job="{job}"' in scrape(port))
        exported = set(re.findall(r"^# TYPE (\S+) ", scrape(port), re.M))
        queries = dashboard_queries()
        assert len(queries) >= 10
        for title, expr in queries:
            names = set(re.findall(r"\b(?:DCGM_FI_\w+|labq_\w+)", expr))
            assert names, (title, expr)
            assert names <= exported, (title, names - exported)
        titles = " ".join(t for t, _ in queries).lower()
        for topic in ("per node", "per person", "idle gpu-hours", "queue length", "wait", "fair-share"):
            assert topic in titles, topic
    finally:
        lq.run("cancel", "--now", str(job))


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed on this machine")
def test_the_dashboard_queries_answer_from_a_real_prometheus(gpulq: tuple[Labq, int], tmp_path: Path) -> None:
    """A real Prometheus scrapes the daemon; each dashboard query returns series."""
    lq, port = gpulq
    job = lq.submit("--gpus", "1", "--", "sleep", "300")
    lq.wait(job, ("RUNNING",))
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs: [{{job_name: labq, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}]\n"
    )
    prom = subprocess.Popen(
        [shutil.which("prometheus") or "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def query(expr: str) -> list[Any]:
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            out = json.loads(urllib.request.urlopen(url, timeout=5).read())
        except OSError:
            return []
        return list(out["data"]["result"]) if out.get("status") == "success" else []

    try:
        wait_for("the job in Prometheus", lambda: query(f'DCGM_FI_DEV_GPU_UTIL{{hpc_job="{job}"}}'), 60)
        assert not query('DCGM_FI_DEV_GPU_UTIL{exported_job!=""}')  # no renamed label
        for title, expr in dashboard_queries():
            assert wait_for(f"{title}: {expr}", lambda e=expr: query(e), 20), (title, expr)
    finally:
        prom.terminate()
        prom.wait(10)
        lq.run("cancel", "--now", str(job))


def test_an_idle_session_is_warned_on_its_terminal_then_ended(gpulq: tuple[Labq, int]) -> None:
    """A shell session whose GPU sits idle: a line on its screen (its log) and in its
    history session_idle_warn_s before session_idle_s, then it ends, saying why."""
    lq, _ = gpulq
    c = lq.client()
    try:
        job = c.submit({"command": ["/bin/sh"], "session": "shell", "name": "shell", "gpus": 1})
        lq.wait(job, ("RUNNING",))
        t0 = time.monotonic()
        wait_for("the warning on its terminal", lambda: "it ends in" in c.log(job, 0)["data"], 20)
        warned = time.monotonic() - t0
        j = lq.wait(job, ("CANCELLED",), timeout=30)
        ended = time.monotonic() - t0
        assert j["reasons"][0].startswith("session ended: its GPUs were idle for "), j["reasons"]
        assert "labq: this session's GPUs have been idle for" in c.log(job, 0)["data"]
        assert any("it ends in" in e["reason"] for e in j["events"])
        assert ended - warned >= 2, (warned, ended)  # warned ahead, not at the end
    finally:
        c.close()


def test_jobs_started_around_a_nodes_first_gpu_report_never_share_a_gpu() -> None:
    """A fresh daemon, its first GPU report 2 s in, one 1-GPU job submitted every 0.3 s
    on a busy machine (two busy loops, as when the suite runs on two workers): a job
    Ray placed before the report says which GPU it got only once it runs. labq used to
    pick GPU 0 for the next job meanwhile (4 runs in 5 ended with two RUNNING jobs on
    one GPU index); now Ray chooses there until the indices are known."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        with daemon("monitor_interval_s: 2\n", "--gpus", "4") as lq:
            ids = []
            for _ in range(8):
                ids.append(lq.submit("--gpus", "1", "--", "sleep", "300"))
                time.sleep(0.3)

            def four() -> list[dict[str, Any]] | None:
                running = [j for j in lq.json("queue") if j["id"] in ids and j["state"] == "RUNNING"]
                return running if len(running) == 4 else None

            running = wait_for("four jobs RUNNING", four, 90)
            assert sorted(j["gpu_ids"] for j in running) == ["0", "1", "2", "3"], running
    finally:
        for h in hogs:
            h.kill()
            h.wait()
