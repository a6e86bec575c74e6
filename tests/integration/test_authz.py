"""Who may do what: the authorization matrix, node drain/resume, and `labq doctor`.

Real Unix users (created by the test when it runs as root), a real daemon, the real
`labq` command run as each of them (identity comes from the socket's peer credentials).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.conftest import SYSTEM_PYTHON, Labq, unix_user

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create Unix users"),
    pytest.mark.skipif(
        not os.path.exists(SYSTEM_PYTHON), reason="needs a system python3 other users can run"
    ),
]

OWNER, OTHER = "labqtest-alice", "labqtest-bob"


def as_(who: str) -> dict[str, int]:
    return {} if who == "admin" else {"user": unix_user(OWNER if who == "owner" else OTHER)}


def node_name(lq: Labq) -> str:
    return str(lq.json("gpus")["nodes"][0]["name"])


# action -> (owner, other user, admin) may do it
MATRIX = {
    "submit": (True, True, True),
    "cancel": (True, False, True),
    "logs": (True, False, True),
    "quota set": (False, False, True),
    "node drain": (False, False, True),
}


@pytest.mark.parametrize("action", list(MATRIX))
@pytest.mark.parametrize("who", ["owner", "other", "admin"])
def test_authorization_matrix(labq4: Labq, action: str, who: str) -> None:
    allowed = MATRIX[action][("owner", "other", "admin").index(who)]
    job = labq4.submit("--", "sh", "-c", "echo secret-output; sleep 30", user=unix_user(OWNER), cwd="/tmp")
    labq4.wait(job, ("RUNNING",))
    deadline = time.monotonic() + 30
    while "secret-output" not in labq4.log(job):  # log lines reach the daemon a moment later
        assert time.monotonic() < deadline, "the job's first line never reached the daemon"
        time.sleep(0.2)
    args = {
        "submit": ["submit", "--", "true"],
        "cancel": ["cancel", str(job)],
        "logs": ["logs", str(job)],
        "quota set": ["quota", "set", OTHER, "--max-gpus", "3"],
        "node drain": ["node", "drain", node_name(labq4)],
    }[action]
    r = labq4.run(*args, check=False, cwd="/tmp", **as_(who))
    try:
        if allowed:
            assert r.returncode == 0, r.stderr
            if action == "logs":
                assert "secret-output" in r.stdout
        else:
            assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
            assert "admin" in r.stderr or "belongs to" in r.stderr or "only" in r.stderr
            assert "secret-output" not in r.stdout
        # Nothing changed behind a refusal.
        if action == "cancel" and not allowed:
            assert labq4.job(job)["state"] == "RUNNING"
        if action == "quota set" and not allowed:
            q = {x["user"]: x for x in labq4.json("quota", "show")["quotas"]}
            assert q.get(OTHER, {}).get("max_gpus") is None
    finally:
        labq4.run("cancel", str(job), check=False)
        if action == "node drain" and allowed:
            labq4.run("node", "resume", node_name(labq4))
        if action == "quota set" and allowed:
            labq4.run("quota", "set", OTHER, "--max-gpus", "none")


def test_audit_shows_others_only_what_concerns_them(labq4: Labq) -> None:
    job = labq4.submit("--", "sleep", "30", user=unix_user(OWNER), cwd="/tmp")
    labq4.run("cancel", str(job))  # the admin cancels alice's job
    labq4.run("quota", "set", OTHER, "--shares", "2")
    mine = json.loads(labq4.run("audit", "--json", user=unix_user(OWNER)).stdout)
    assert any(r["action"] == "job.cancel" and r["target"] == str(job) for r in mine)
    assert not any(r["target"] == OTHER for r in mine)  # bob's quota is bob's business
    everything = labq4.json("audit")
    assert any(r["target"] == OTHER for r in everything)


def test_drain_keeps_running_jobs_and_places_nothing_new(labq4: Labq) -> None:
    name = node_name(labq4)
    running = labq4.submit("--gpus", "1", "--", "sleep", "30", cwd="/tmp")
    labq4.wait(running, ("RUNNING",))
    out = labq4.run("node", "drain", name)
    assert f"{name}: drained" in out.stdout and "1 running job" in out.stdout
    try:
        waiting = labq4.submit("--gpus", "1", "--", "true", cwd="/tmp")
        time.sleep(3)
        j = labq4.job(waiting)
        assert j["state"] == "PENDING" and "no schedulable node" in j["reasons"][0]
        assert labq4.job(running)["state"] == "RUNNING"
        assert any(n["name"] == name and not n["schedulable"] for n in labq4.json("gpus")["nodes"])
        assert "drained" in labq4.run("gpus").stdout
        r = labq4.run("node", "drain", "no-such-node", check=False)
        assert r.returncode == 1 and "no node 'no-such-node'" in r.stderr
    finally:
        labq4.run("node", "resume", name)
    labq4.wait(waiting, ("SUCCEEDED",))
    labq4.run("cancel", str(running))
    actions = [r["action"] for r in labq4.json("audit")]
    assert "node.drain" in actions and "node.resume" in actions


def test_doctor_says_everything_is_fine_and_finds_what_is_not(labq4: Labq, tmp_path: object) -> None:
    r = labq4.run("doctor")
    assert r.returncode == 0, r.stdout
    names = [line.split()[1] for line in r.stdout.splitlines()]
    for check in ("python", "socket", "database", "disk", "ray", "executor", "nodes", "nvml"):
        assert check in names, r.stdout
    assert "integrity ok" in r.stdout and "no real GPUs here" in r.stdout
    # No daemon: one FAIL line that says so, exit 1.
    r = labq4.run("--socket", "/tmp/labq-nothing-here.sock", "doctor", check=False)
    assert r.returncode == 1 and "FAIL  daemon" in r.stdout and "no labq daemon" in r.stdout
