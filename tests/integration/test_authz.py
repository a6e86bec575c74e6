"""Who may do what: the authorization matrix, node drain/resume, and `labq doctor`.

Real Unix users (created by the test when it runs as root), a real daemon, the real
`labq` command run as each of them (identity comes from the socket's peer credentials).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from scheduler.client import Client
from tests.conftest import SYSTEM_PYTHON, Labq, cleanup, free_port, make_labq, unix_user, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create Unix users"),
    pytest.mark.skipif(
        not os.path.exists(SYSTEM_PYTHON), reason="needs a system python3 other users can run"
    ),
]

OWNER, OTHER = "labqtest-alice", "labqtest-bob"
WHO = ("owner", "other", "admin", "owner by token", "other by token", "unauthenticated")


@pytest.fixture(scope="module")
def lq() -> Iterator[Labq]:
    """A daemon with 4 logical GPUs and a TLS listener on loopback for remote clients."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a certificate")
    # The users first: the tokens below are issued for them (a fresh machine has none).
    unix_user(OWNER)
    unix_user(OTHER)
    lq = make_labq()
    try:
        cert, key = lq.root / "cert.pem", lq.root / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
            + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )
        port = free_port()
        (lq.state_dir / "labq.yaml").write_text(
            f"grace_period_s: 3\nmin_runtime_s: 0\nlisten: 127.0.0.1:{port}\ntls_cert: {cert}\ntls_key: {key}\n"
        )
        lq.up("--gpus", "4")
        lq.url = f"https://127.0.0.1:{port}"  # type: ignore[attr-defined]
        lq.tokens = {  # type: ignore[attr-defined]
            who: lq.json("token", "create", user)["token"] for who, user in (("owner", OWNER), ("other", OTHER))
        }
        yield lq
    finally:
        cleanup(lq)


def as_(lq: Labq, who: str) -> dict[str, Any]:
    """How to run `labq` as `who`: a local Unix user on the socket, or a remote client."""
    if who == "admin":
        return {}
    if who in ("owner", "other"):
        return {"user": unix_user(OWNER if who == "owner" else OTHER)}
    remote = {"LABQ_URL": lq.url, "LABQ_CA": str(lq.root / "cert.pem")}  # type: ignore[attr-defined]
    if who != "unauthenticated":
        # Run by root, but the daemon knows this client only by its token.
        remote["LABQ_TOKEN"] = lq.tokens[who.split()[0]]  # type: ignore[attr-defined]
    return {"env": remote}


def node_name(lq: Labq) -> str:
    return str(lq.json("gpus")["nodes"][0]["name"])


@pytest.fixture(scope="module")
def victim(lq: Labq) -> int:
    """The owner's running job whose log the others must not read."""
    job = lq.submit("--", "sh", "-c", "echo secret-output; sleep 600", user=unix_user(OWNER), cwd="/tmp")
    lq.wait(job, ("RUNNING",))
    deadline = time.monotonic() + 30
    while "secret-output" not in lq.log(job):  # log lines reach the daemon a moment later
        assert time.monotonic() < deadline, "the job's first line never reached the daemon"
        time.sleep(0.2)
    return job


# action -> who may do it, in the order of WHO
MATRIX = {
    "submit": (True, True, True, True, True, False),
    "cancel": (True, False, True, True, False, False),
    "logs": (True, False, True, True, False, False),
    "quota set": (False, False, True, False, False, False),
    "issue token": (False, False, True, False, False, False),
    "node drain": (False, False, True, False, False, False),
}


@pytest.mark.parametrize("action", list(MATRIX))
@pytest.mark.parametrize("who", WHO)
def test_authorization_matrix(lq: Labq, victim: int, action: str, who: str) -> None:
    allowed = MATRIX[action][WHO.index(who)]
    job = victim
    if action == "cancel":
        job = lq.submit("--", "sleep", "600", user=unix_user(OWNER), cwd="/tmp")
    before = len(lq.json("queue", "--all"))
    args = {
        "submit": ["submit", "--", "true"],
        "cancel": ["cancel", str(job)],
        "logs": ["logs", str(job)],
        "quota set": ["quota", "set", OTHER, "--max-gpus", "3"],
        "issue token": ["token", "create", OTHER, "--json"],
        "node drain": ["node", "drain", node_name(lq)],
    }[action]
    r = lq.run(*args, check=False, cwd="/tmp", **as_(lq, who))
    try:
        if allowed:
            assert r.returncode == 0, r.stderr
            if action == "logs":
                assert "secret-output" in r.stdout
            if action == "submit":
                mine = lq.job(int(r.stdout.split()[-1]))
                # Remote or local, the job belongs to whom the daemon says, not the client.
                assert mine["user"] == {"admin": "root"}.get(who, OWNER if "owner" in who else OTHER)
        else:
            assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
            assert "Traceback" not in r.stderr
            words = ("unauthenticated",) if who == "unauthenticated" else ("admin", "belongs to", "only")
            assert any(w in r.stderr for w in words), r.stderr
            assert "secret-output" not in r.stdout and "labq_" not in r.stdout
        # Nothing changed behind a refusal.
        if not allowed:
            assert len(lq.json("queue", "--all")) == before
        if action == "cancel" and not allowed:
            assert lq.job(job)["state"] in ("PENDING", "STARTING", "RUNNING")
        if action == "quota set" and not allowed:
            q = {x["user"]: x for x in lq.json("quota", "show")["quotas"]}
            assert q.get(OTHER, {}).get("max_gpus") is None
        if action == "issue token" and not allowed:
            assert len([t for t in lq.json("token", "list") if not t["revoked"]]) == 2
        if action == "node drain" and not allowed:
            assert all(n["schedulable"] for n in lq.json("gpus")["nodes"])
    finally:
        if action == "cancel":
            lq.run("cancel", str(job), check=False)
        if action == "node drain" and allowed:
            lq.run("node", "resume", node_name(lq))
        if action == "quota set" and allowed:
            lq.run("quota", "set", OTHER, "--max-gpus", "none")
        if action == "issue token" and allowed:
            lq.run("token", "revoke", json.loads(r.stdout)["id"])


def test_tokens_are_stored_hashed_and_revoked_or_expired_ones_are_refused(lq: Labq) -> None:
    out = lq.json("token", "create", OWNER, "--note", "alice laptop", "--expires", "90d")
    token, tid = out["token"], out["id"]
    remote = as_(lq, "unauthenticated")["env"]
    ok = lq.run("queue", env={**remote, "LABQ_TOKEN": token})
    assert ok.returncode == 0
    # Only a hash is kept: the secret is nowhere in the database.
    secret = token.split("_", 2)[2].encode()  # labq_<id>_<secret>; the secret may hold "_" itself
    for f in lq.state_dir.glob("labq.db*"):
        assert secret not in f.read_bytes()
    listed = {t["id"]: t for t in lq.json("token", "list")}
    assert listed[tid]["note"] == "alice laptop" and listed[tid]["last_used"] is not None
    assert "hash" not in listed[tid] and "token" not in listed[tid]
    # A user sees only their own tokens, and may revoke them.
    mine = json.loads(lq.run("token", "list", "--json", user=unix_user(OWNER)).stdout)
    assert {t["user"] for t in mine} == {OWNER}
    theirs = lq.tokens["other"]  # type: ignore[attr-defined]
    other_id = theirs.split("_")[1]
    r = lq.run("token", "revoke", other_id, check=False, user=unix_user(OWNER))
    assert r.returncode == 1 and f"no token '{other_id}'" in r.stderr
    lq.run("token", "revoke", tid, user=unix_user(OWNER))
    r = lq.run("queue", check=False, env={**remote, "LABQ_TOKEN": token})
    assert r.returncode == 1 and r.stderr.strip() == f"labq: unauthenticated: token {tid} was revoked"
    # Forged: right id, wrong secret; and garbage.
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for bad in (forged, "labq_nothing", "x" * 5000):
        r = lq.run("queue", check=False, env={**remote, "LABQ_TOKEN": bad})
        assert r.returncode == 1 and "unauthenticated" in r.stderr, r.stderr
    # Expired: a token whose expiry passed is refused (expiry set in the past directly).
    out = lq.json("token", "create", OWNER)
    import sqlite3

    with sqlite3.connect(lq.state_dir / "labq.db") as db:
        db.execute("UPDATE api_tokens SET expires=? WHERE id=?", (time.time() - 1, out["id"]))
    r = lq.run("queue", check=False, env={**remote, "LABQ_TOKEN": out["token"]})
    assert r.returncode == 1 and "has expired" in r.stderr
    lq.run("token", "revoke", out["id"])
    actions = [(a["action"], a["target"]) for a in lq.json("audit")]
    assert ("token.create", OWNER) in actions and ("token.revoke", OWNER) in actions
    # Bad requests to issue one: no such user, root, nonsense expiry.
    for args, words in (
        (["nobody-here"], "no Unix user 'nobody-here'"),
        (["root"], "no tokens for root"),
        ([OWNER, "--expires", "soon"], "expires"),
    ):
        r = lq.run("token", "create", *args, check=False)
        assert r.returncode == 1 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_the_network_listener_needs_tls_beyond_loopback_and_a_token_always() -> None:
    other = make_labq(f"listen: 0.0.0.0:{free_port()}\n")
    try:
        # Refused before anything starts: a token would cross the network in clear.
        r = other.run("up", "--state-dir", str(other.state_dir), "--gpus", "1", check=False)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert "tls_cert and tls_key" in r.stderr and "SSH tunnel" in r.stderr
        # By default labq opens no network listener of its own...
        (other.state_dir / "labq.yaml").write_text("")
        other.up("--gpus", "1")
        assert Client(other.socket).health()["listen"] is None
        # ...and the embedded Ray, whose servers listen on every interface, takes no
        # one without its token (a 0600 file of the daemon's user): otherwise anyone
        # on the network, or any job, could run code as the daemon's user.
        token_file = other.state_dir / "ray-auth-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        address = json.loads((other.state_dir / "ray-head.json").read_text())["address"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        intruder = subprocess.Popen(
            [sys.executable, "-c", f"import ray; ray.init(address={address!r}); print('CONNECTED')"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            seen = ""
            assert intruder.stdout is not None
            for line in intruder.stdout:
                seen += line
                if "InvalidAuthToken" in line or "CONNECTED" in line:
                    break
            assert "InvalidAuthToken" in seen and "CONNECTED" not in seen, seen
        finally:
            intruder.kill()
            intruder.wait()
    finally:
        cleanup(other)


def test_audit_shows_others_only_what_concerns_them(lq: Labq) -> None:
    job = lq.submit("--", "sleep", "30", user=unix_user(OWNER), cwd="/tmp")
    lq.run("cancel", str(job))  # the admin cancels alice's job
    lq.run("quota", "set", OTHER, "--shares", "2")
    mine = json.loads(lq.run("audit", "--json", user=unix_user(OWNER)).stdout)
    assert any(r["action"] == "job.cancel" and r["target"] == str(job) for r in mine)
    assert not any(r["target"] == OTHER for r in mine)  # bob's quota is bob's business
    everything = lq.json("audit")
    assert any(r["target"] == OTHER for r in everything)
    # Chosen before the limit: the admin's later entries do not push hers out of it.
    for shares in (3, 4, 5):
        lq.run("quota", "set", OTHER, "--shares", str(shares))
    latest = json.loads(lq.run("audit", "--json", "--limit", "1", user=unix_user(OWNER)).stdout)
    assert [(r["action"], r["target"]) for r in latest] == [("job.cancel", str(job))]
    r = lq.run("audit", "--limit", "0", user=unix_user(OWNER), check=False)
    assert r.returncode != 0 and "limit must be 1 or more" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_drain_keeps_running_jobs_and_places_nothing_new(lq: Labq) -> None:
    name = node_name(lq)
    running = lq.submit("--gpus", "1", "--", "sleep", "30", cwd="/tmp")
    lq.wait(running, ("RUNNING",))
    out = lq.run("node", "drain", name)
    # (other tests' jobs may still be running there too)
    assert f"{name}: drained" in out.stdout and "running job" in out.stdout
    try:
        waiting = lq.submit("--gpus", "1", "--", "true", cwd="/tmp")
        j = wait_for("a pass to consider it", lambda: (x := lq.job(waiting))["why"][0]["kind"] != "scheduling" and x)
        assert j["state"] == "PENDING" and j["why"][0]["kind"] == "drained"
        assert "no schedulable node" in j["reasons"][0]
        assert lq.job(running)["state"] == "RUNNING"
        assert any(n["name"] == name and not n["schedulable"] for n in lq.json("gpus")["nodes"])
        assert "drained" in lq.run("gpus").stdout
        r = lq.run("node", "drain", "no-such-node", check=False)
        assert r.returncode == 1 and "no node 'no-such-node'" in r.stderr
    finally:
        lq.run("node", "resume", name)
    lq.wait(waiting, ("SUCCEEDED",))
    lq.run("cancel", str(running))
    actions = [r["action"] for r in lq.json("audit")]
    assert "node.drain" in actions and "node.resume" in actions


def test_doctor_says_everything_is_fine_and_finds_what_is_not(lq: Labq, tmp_path: object) -> None:
    r = lq.run("doctor")
    assert r.returncode == 0, r.stdout
    names = [line.split()[1] for line in r.stdout.splitlines()]
    for check in ("python", "socket", "database", "disk", "ray", "executor", "nodes", "nvml"):
        assert check in names, r.stdout
    assert "integrity ok" in r.stdout and "no real GPUs here" in r.stdout
    # No daemon: one FAIL line that says so, exit 1.
    r = lq.run("--socket", "/tmp/labq-nothing-here.sock", "doctor", check=False)
    assert r.returncode == 1 and "FAIL  daemon" in r.stdout and "no labq daemon" in r.stdout
