"""The team cluster on "hosts" that are network namespaces (benchmarks/netns.py): a head
with `labq up --advertise`, a worker that joins by invite, an outsider that gets
nothing, a rogue Ray node that gets no job, and a worker that dies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from benchmarks.netns import Host, hosts
from scheduler import raycluster
from tests.conftest import Labq, cleanup, free_port, make_labq, unix_user, wait_for
from tests.integration.test_multinode import RENDEZVOUS

pytestmark = pytest.mark.integration

RESEARCHER = "labqtest-team"
# node_timeout_s: short here, so that a cut cable is noticed in seconds (default 60 s).
CONFIG = "grace_period_s: 2\nmin_runtime_s: 0\nmonitor_interval_s: 0.5\nnode_lost_retries: 1\nnode_timeout_s: 10s\n"


def labq_on(host: Host, lq: Labq, *args: str) -> list[str]:
    return host.cmd(sys.executable, "-m", "scheduler.cli", *args)


def run_on(host: Host, lq: Labq, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        labq_on(host, lq, *args), env=lq.env(), capture_output=True, text=True, timeout=timeout, cwd=str(lq.work())
    )


def nodes(lq: Labq) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in lq.json("gpus")["nodes"]}


def doctor(lq: Labq) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in json.loads(lq.run("doctor", "--json", check=False).stdout)}


@pytest.fixture(scope="module")
def team() -> Iterator[tuple[Labq, list[Host]]]:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        pytest.skip("namespace hosts need root, ip and unshare")
    with hosts("lq-head", "lq-w1", "lq-x") as hs:
        head = hs[0]
        lq = make_labq(CONFIG)
        try:
            up = run_on(head, lq, "up", "--state-dir", str(lq.state_dir), "--advertise", head.ip, "--gpus", "2", "--cpus", "2")
            assert up.returncode == 0, up.stderr
            yield lq, hs
        finally:
            cleanup(lq)


def test_invite_join_outsider_rogue_and_a_worker_lost(team: tuple[Labq, list[Host]]) -> None:
    lq, (head, worker, outsider) = team
    uid = unix_user(RESEARCHER)
    # No shared filesystem: a directory the head has and the worker does not.
    only_head = lq.root / "only-head"
    proj = only_head / "proj"
    proj.mkdir(parents=True)
    (proj / "train.py").write_text("import socket\nprint('ran on', socket.gethostname())\n")
    for p in (only_head, proj, proj / "train.py"):
        os.chown(p, uid if p != only_head else 0, -1)
        os.chmod(p, 0o755)
    worker = replace(worker, hide=(str(only_head),))
    health = lq.client().health()
    assert health["ray"]["address"] == f"{head.ip}:6379"

    invite = lq.json("node", "invite", "--ttl", "10m")
    assert invite["url"] == f"https://{head.ip}:7450"
    assert invite["command"].startswith(f"labq join https://{head.ip}:7450 --secret lqjoin_")
    # Only admins invite (and only on the head, over the socket).
    refused = lq.run("node", "invite", user=uid, check=False)
    assert refused.returncode == 1 and "only admins" in refused.stderr

    # The outsider reaches Ray's port, but Ray wants the token: refused at once.
    t0 = time.monotonic()
    probe = subprocess.run(
        outsider.cmd(sys.executable, "-c", raycluster._PROBE, f"{head.ip}:6379"),
        capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert "AuthenticationError" in probe.stdout, probe.stdout + probe.stderr
    assert time.monotonic() - t0 < 20
    # ... and a guessed invite, or a head that is not the invited one, gets nothing.
    wstate = lq.root / "w1"
    fake = "lqjoin_00000000_" + "A" * 43
    bad = run_on(outsider, lq, "join", invite["url"], "--secret", fake, "--cert-sha256", invite["cert_sha256"],
                 "--state-dir", str(lq.root / "x"), "--once")  # fmt: skip
    assert bad.returncode == 1 and "invite is not valid" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = run_on(outsider, lq, "join", invite["url"], "--secret", invite["secret"], "--cert-sha256", "ab" * 32,
                 "--state-dir", str(lq.root / "x"), "--once")  # fmt: skip
    assert bad.returncode == 1 and "different certificate" in bad.stderr
    assert not (lq.root / "x" / "ray-token").exists()

    # The worker joins with the invite; the invite is spent.
    agent = subprocess.Popen(
        labq_on(worker, lq, "join", invite["url"], "--secret", invite["secret"], "--cert-sha256",
                invite["cert_sha256"], "--gpus", "2", "--cpus", "1", "--state-dir", str(wstate),
                "--simulate-gpu", "h100", "--labels", "ib"),
        env=lq.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        both = wait_for("the worker in labq's nodes", lambda: {"lq-head", "lq-w1"} <= set(nodes(lq)), 90)
        assert both
        ns = nodes(lq)
        assert ns["lq-w1"]["trusted"] and ns["lq-w1"]["schedulable"] and ns["lq-w1"]["address"] == worker.ip
        assert oct((wstate / "ray-token").stat().st_mode & 0o777) == "0o600"
        again = run_on(outsider, lq, "join", invite["url"], "--secret", invite["secret"], "--cert-sha256",
                       invite["cert_sha256"], "--state-dir", str(lq.root / "x"), "--once")  # fmt: skip
        assert again.returncode == 1 and "invite is not valid" in again.stderr

        # A mixed cluster (issue 15): the head's GPUs are H200s, the worker's H100s (each
        # served from NVML's own recording of that model), the worker has InfiniBand.
        wait_for("the worker's GPU type", lambda: nodes(lq)["lq-w1"].get("gpu_type") == "h100", 30)
        ns = nodes(lq)
        assert ns["lq-head"]["gpu_type"] == "h200" and ns["lq-w1"]["labels"] == ["ib"], ns
        shown = lq.run("gpus").stdout
        assert "2 h100 GPUs in use" in shown and "labels: ib" in shown, shown
        kinds = [lq.submit(*ask, "--", "hostname", user=uid) for ask in (("--gpu-type", "h100"), ("--constraint", "ib"))]
        for j in lq.wait_all(kinds, ("SUCCEEDED", "FAILED"), timeout=90):
            assert j["state"] == "SUCCEEDED" and j["node_name"] == "lq-w1", (j["reason"], j["node_name"])
        h200 = lq.submit("--gpu-type", "h200", "--", "hostname", user=uid)
        assert lq.wait(h200, ("SUCCEEDED", "FAILED"), timeout=90)["node_name"] == "lq-head"
        none = lq.run("submit", "--gpu-type", "a100-80g", "--", "true", user=uid, check=False)
        assert none.returncode == 1 and "no node has a100-80g GPUs (GPU types here: h100, h200" in none.stderr
        assert len(none.stderr.strip().splitlines()) == 1

        # Run live from the head-only directory, a job goes to the head alone: the
        # second waits there although the worker's GPUs are free ...
        live = [lq.submit("--no-snapshot", "--gpus", "2", "--", "sleep", "300", user=uid, cwd=str(proj))
                for _ in range(2)]  # fmt: skip
        lq.wait(live[0], ("RUNNING",), timeout=90)
        wait_for(
            "the second live job's reason",
            lambda: "on lq-head (its directory is there only)" in " ".join(lq.job(live[1]).get("reasons", [])),
            30,
        )
        assert lq.job(live[0])["node_name"] == "lq-head" and lq.job(live[1])["state"] == "PENDING"
        # ... while its code snapshot (plain files, frozen at submit) runs on the worker.
        frozen = lq.submit("--gpus", "2", "--", "python3", "train.py", user=uid, cwd=str(proj))
        j = lq.wait(frozen, ("SUCCEEDED", "FAILED"), timeout=90)
        assert j["state"] == "SUCCEEDED" and j["node_name"] == "lq-w1", (j, lq.log(frozen))
        assert "ran on lq-w1" in lq.log(frozen)
        for i in live:
            lq.run("cancel", "--now", str(i))
        lq.wait_all(live, ("CANCELLED",), timeout=60)

        # A job over both hosts (issue 15): a rank on each, as the researcher; they meet
        # at rank 0's address and port, across the hosts' own network.
        met = lq.submit("--nodes", "2", "--gpus-per-node", "2", "--", "python3", "-c", RENDEZVOUS, user=uid)
        j = lq.wait(met, ("SUCCEEDED", "FAILED", "LOST"), timeout=90)
        assert j["state"] == "SUCCEEDED", (j["reason"], lq.run("logs", str(met), "--all-ranks").stdout)
        assert sorted(r["node_name"] for r in j["ranks"]) == ["lq-head", "lq-w1"]
        every = lq.run("logs", str(met), "--all-ranks").stdout
        assert "[rank 0] rank 0 heard: hello from rank 1" in every and "[rank 1] rank 1 said hello" in every
        # One fate: rank 1 (on the worker) fails, rank 0 (on the head) is stopped.
        fails = lq.submit("--nodes", "2", "--gpus-per-node", "2", "--", "sh", "-c",
                          'if [ "$LABQ_NODE_RANK" = 1 ]; then sleep 1; exit 3; fi; sleep 300', user=uid)  # fmt: skip
        j = lq.wait(fails, ("FAILED", "SUCCEEDED", "LOST"), timeout=90)
        assert j["state"] == "FAILED" and j["reason"] == "rank 1 exited 3", j["reason"]
        assert j["end_time"] - j["start_time"] < 1 + 2 + 5  # rank 1's second, the grace, 5 s
        assert lq.run("logs", str(met), "--rank", "1", user=uid).returncode == 0
        # Another researcher gets none of it: no rank's log, no pid, no way to stop it.
        other = unix_user("labqtest-team2")
        peek = lq.run("logs", str(met), "--rank", "1", user=other, check=False)
        assert peek.returncode == 1 and "belongs to labqtest-team" in peek.stderr, peek.stderr
        seen = json.loads(lq.run("show", "--json", str(met), user=other).stdout)
        assert seen["ranks"] and all("pid" not in r for r in seen["ranks"])

        # A researcher's jobs spread over both hosts and run there, as the researcher.
        ids = [lq.submit("--gpus", "2", "--", "sh", "-c", "echo on $(hostname) as $(id -un); sleep 300", user=uid)
               for _ in range(2)]  # fmt: skip
        lq.wait_all(ids, ("RUNNING",), timeout=90)
        where = {i: lq.job(i)["node_name"] for i in ids}
        assert sorted(where.values()) == ["lq-head", "lq-w1"], where
        on_worker = next(i for i, n in where.items() if n == "lq-w1")
        on_head = next(i for i, n in where.items() if n == "lq-head")
        wait_for("the worker job's output", lambda: f"on lq-w1 as {RESEARCHER}" in lq.log(on_worker), 30)

        # A rogue Ray node (someone copied the token and ran `ray start` by hand) is
        # let in by Ray but trusted by nobody: no job, `untrusted`, doctor fails.
        token = lq.root / "stolen-token"
        shutil.copy(raycluster.auth_token_path(lq.state_dir), token)
        rogue_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        rogue = subprocess.run(
            outsider.cmd(str(Path(sys.executable).parent / "ray"), "start", f"--address={head.ip}:6379",
                         f"--node-ip-address={outsider.ip}", "--num-gpus=2", "--num-cpus=1",
                         f"--temp-dir={lq.root / 'xr'}", "--disable-usage-stats"),
            env=rogue_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert rogue.returncode == 0, rogue.stderr[-500:]
        wait_for("the rogue node", lambda: "lq-x" in nodes(lq), 60)
        x = nodes(lq)["lq-x"]
        assert not x["trusted"] and not x["schedulable"]
        gpus_text = lq.run("gpus").stdout
        assert "lq-x" in gpus_text and "UNTRUSTED" in gpus_text
        checks = doctor(lq)
        assert not checks["cluster"]["ok"] and "lq-x" in checks["cluster"]["detail"], checks["cluster"]
        assert checks["ray auth"]["ok"]
        third = lq.submit("--gpus", "2", "--", "sleep", "300", user=uid)
        lq.passes(3)
        assert lq.job(third)["state"] == "PENDING"
        outsider.kill_all()

        audit = lq.json("audit")
        actions = {(a["action"], a["target"]) for a in audit}
        assert ("node join", "lq-w1") in actions and ("node up untrusted", "lq-x") in actions
        assert any(a == "node join refused" for a, _ in actions)

        # The worker machine dies. The daemon stays up (same pid), the head's job
        # keeps running, the worker's job is NODE_LOST and requeued.
        pid = lq.daemon_pid()
        old_id = nodes(lq)["lq-w1"]["id"]
        lost_at = time.time()
        worker.kill_all()
        j = lq.wait(on_worker, ("PENDING", "RUNNING"), timeout=90)
        j = lq.job(on_worker)
        lost = [e for e in j["events"] if e["new_state"] == "NODE_LOST"]
        assert lost and lost[0]["time"] - lost_at < 40, (lost, lost_at)
        assert lq.daemon_pid() == pid
        assert lq.job(on_head)["state"] == "RUNNING"
        checks = doctor(lq)
        assert not checks["cluster"]["ok"] and "lq-w1" in checks["cluster"]["detail"]
        assert checks["executor"]["ok"], checks["executor"]
        for i in (on_worker, third):
            lq.run("cancel", "--now", str(i))

        # The machine boots again: its supervised `labq join --rejoin` brings it back.
        agent.kill()
        agent = rejoin(lq, worker, wstate)
        # Back as a new Ray node: while Ray still lists the old one (it notices a dead
        # raylet after a while) the name lq-w1 may still be the old node's.
        wait_for(
            "the worker back after its reboot",
            lambda: (n := nodes(lq).get("lq-w1", {})).get("trusted") and n.get("id") != old_id,
            90,
        )

        # Its cable is cut while a job over both hosts runs: the job is NODE_LOST after
        # node_timeout_s (dated when the worker's rank last spoke) and requeued whole;
        # its rank on the head is stopped, the one on the cut-off machine stops by itself.
        lq.run("cancel", "--now", str(on_head))
        cut = lq.submit("--nodes", "2", "--gpus-per-node", "2", "--", "sleep", "300", user=uid)
        j = lq.wait(cut, ("RUNNING",), timeout=90)
        # The worker's rank: on lq-w1, or lq-w1-<id> while Ray still lists the dead raylet
        # of before the reboot under the same host name (both get the suffix then).
        by_name = {r["node_name"][:5]: r for r in j["ranks"]}
        assert sorted(by_name) == ["lq-he", "lq-w1"], j["ranks"]
        pid, head_pid = int(by_name["lq-w1"]["pid"]), int(by_name["lq-he"]["pid"])
        time.sleep(1)
        t0 = time.time()
        worker.link(False)
        lq.wait(cut, ("PENDING",), timeout=60)  # requeued, per node_lost_retries
        lost = [e for e in lq.job(cut)["events"] if e["new_state"] == "NODE_LOST"]
        requeued = [e for e in lq.job(cut)["events"] if e["new_state"] == "PENDING"][-1]
        assert requeued["time"] - t0 < 10 + 8, (t0, requeued)
        assert lost and t0 - 2 <= lost[0]["time"] <= t0 + 1 and "lq-w1" in lost[0]["reason"], (t0, lost)
        wait_for("the head's rank stopped with its gang", lambda: not psutil.pid_exists(head_pid), 2 + 10)
        wait_for("the cut-off rank to stop by itself", lambda: not psutil.pid_exists(pid), 10 + 30)
        worker.link(True)
        wait_for("the worker back after the cut", lambda: nodes(lq).get("lq-w1", {}).get("trusted"), 90)
        lq.run("cancel", "--now", str(cut))

        # The head dies and is started again (as systemd would): the worker rejoins by itself.
        old = lq.daemon_pid()
        head.kill_all()
        wait_for("the old daemon gone", lambda: not psutil.pid_exists(old), 30)
        up = run_on(head, lq, "up", "--state-dir", str(lq.state_dir), "--advertise", head.ip, "--gpus", "2", "--cpus", "2")
        assert up.returncode == 0, up.stderr
        t1 = time.monotonic()
        wait_for("the worker rejoining the new head", lambda: nodes(lq).get("lq-w1", {}).get("trusted"), 90)
        assert time.monotonic() - t1 < 60
        assert doctor(lq)["cluster"]["ok"]

        # An admin removes the worker: its Ray node, which keeps Ray's token, is
        # untrusted from the next look on (and the admin is told to wipe that token).
        refused = lq.run("node", "remove", "lq-w1", user=uid, check=False)
        assert refused.returncode == 1 and "only admins may remove nodes" in refused.stderr
        said = lq.run("node", "remove", "lq-w1").stdout
        assert "untrusted now" in said and "stop labq-join there" in said, said
        wait_for(
            "the removed worker untrusted",
            lambda: (on := [n for n in nodes(lq).values() if n.get("address") == worker.ip])
            and not any(n["trusted"] or n["schedulable"] for n in on),
            30,
        )
        assert ("node remove", "lq-w1") in {(a["action"], a["target"]) for a in lq.json("audit")}
        for i in (on_head, on_worker, third, cut):
            lq.run("cancel", "--now", str(i), check=False)
    finally:
        agent.kill()
        agent.wait(timeout=10)


def rejoin(lq: Labq, worker: Host, state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        labq_on(worker, lq, "join", "--rejoin", "--gpus", "2", "--cpus", "1", "--state-dir", str(state)),
        env=lq.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def test_an_open_external_cluster_is_refused_unless_the_config_accepts_it(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_MODE"] = "disabled"
    temp = f"/tmp/labq-open-{port}"
    proc = subprocess.Popen(
        raycluster.head_command(port, 0, temp, cpus=1), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    lq = make_labq()
    try:
        wait_for("the open Ray head", lambda: raycluster.reachable(f"127.0.0.1:{port}"), 90)
        up = lq.run("up", "--state-dir", str(lq.state_dir), "--address", f"127.0.0.1:{port}", check=False)
        assert up.returncode == 1
        line = up.stderr.strip()
        assert len(line.splitlines()) == 1 and "without token auth" in line and "ray_auth: disabled" in line, line
        (lq.state_dir / "labq.yaml").write_text("ray_auth: disabled\n")
        lq.up("--address", f"127.0.0.1:{port}")
        checks = doctor(lq)
        assert not checks["ray auth"]["ok"] and "RAY_AUTH_MODE=token" in checks["ray auth"]["detail"]
    finally:
        cleanup(lq)
        os.killpg(proc.pid, 9)
        shutil.rmtree(temp, ignore_errors=True)

