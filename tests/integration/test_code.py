"""The code a queued job runs is the code that was submitted (issue 17), on a real
daemon and real Ray: git and plain directories, the size cap, rerun (exact and
--live), `labq diff`, an array's one snapshot, and another user's reach."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import Labq, unix_user, wait_for

pytestmark = pytest.mark.integration


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
        check=True, capture_output=True,
    )


def _repo(root: Path) -> Path:
    repo = root / "proj"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "train.py").write_text("print('train v1')\n")
    (repo / "README.md").write_text("a project\n")
    (repo / ".gitignore").write_text("data/\n")
    (repo / "data").mkdir()
    (repo / "data" / "in.txt").write_text("the data\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "first")
    return repo


def _gate(labq4: Labq, name: str) -> tuple[int, Path]:
    """A job that ends when a file appears: what the job under test waits behind."""
    go = labq4.root / f"go-{name}"
    job = labq4.submit("--no-snapshot", "--", "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.1; done")
    return job, go


def _log(labq4: Labq, job: int) -> str:
    return labq4.run("logs", str(job)).stdout


def test_a_waiting_job_runs_the_code_as_submitted_in_git(labq4: Labq) -> None:
    repo = _repo(Path(tempfile.mkdtemp(dir=labq4.root)))
    # Uncommitted work is part of what is frozen: a change and a new file.
    (repo / "src" / "train.py").write_text("import helper\nprint('train v2 (uncommitted)')\n")
    (repo / "src" / "helper.py").write_text("print('helper v1')\n")
    gate, go = _gate(labq4, "git")
    out = labq4.run(
        "submit", "--json", "--after", str(gate), "--",
        "sh", "-c", "python3 train.py; cat ../data/in.txt; echo out > ../data/out.txt; echo \"$LABQ_SUBMIT_DIR\"; "
        "test -e ../.git || echo no-git-here",
        cwd=str(repo / "src"),
    )
    job = json.loads(out.stdout)["id"]
    # Edited while the job waits: the job must not see any of it.
    (repo / "src" / "train.py").write_text("print('train v3 (edited while waiting)')\n")
    (repo / "src" / "helper.py").unlink()
    go.touch()
    assert labq4.run("wait", str(job), timeout=120).returncode == 0, _log(labq4, job)
    lines = _log(labq4, job).splitlines()
    assert lines[:3] == ["helper v1", "train v2 (uncommitted)", "the data"], lines
    assert lines[3] == str(repo / "src"), lines
    assert lines[4] == "no-git-here"  # the copy has no .git: `git rev-parse` cannot lie
    assert (repo / "data" / "out.txt").read_text() == "out\n"  # outputs land in the real tree

    show = labq4.run("show", str(job)).stdout
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    code_line = next(line for line in show.splitlines() if line.startswith("  code:"))
    assert f"{commit[:7]} (master, dirty: 2 files" in code_line or f"{commit[:7]} (main, dirty: 2 files" in code_line, code_line

    diff = labq4.run("diff", str(job)).stdout
    assert "-print('train v1')" in diff and "+print('train v2 (uncommitted)')" in diff, diff
    assert "+print('helper v1')" in diff, diff  # an untracked file shows as added

    # rerun: the same frozen code again; --live: today's tree.
    again = json.loads(labq4.run("rerun", str(job), "--json").stdout)["id"]
    live = json.loads(labq4.run("rerun", str(job), "--live", "--json").stdout)["id"]
    assert labq4.run("wait", str(again), timeout=120).returncode == 0
    assert _log(labq4, again).splitlines()[:2] == ["helper v1", "train v2 (uncommitted)"]
    assert labq4.run("wait", str(live), check=False, timeout=120).returncode == 0
    assert _log(labq4, live).splitlines()[0] == "train v3 (edited while waiting)"
    assert labq4.job(again)["spec"]["code"]["id"] == labq4.job(job)["spec"]["code"]["id"]
    between = labq4.run("diff", str(job), str(live)).stdout
    assert "-print('train v2 (uncommitted)')" in between and "+print('train v3 (edited while waiting)')" in between
    assert f"{job}/src/helper.py" in between  # gone in the later code
    assert labq4.run("diff", str(job), str(again)).stdout.endswith("the same code\n")


def test_outside_git_the_source_files_are_frozen(labq4: Labq) -> None:
    work = Path(tempfile.mkdtemp(dir=labq4.root))
    (work / "run.py").write_text("print(open('cfg.yaml').read().strip())\n")
    (work / "cfg.yaml").write_text("lr: 1\n")
    (work / "weights.bin").write_bytes(b"\0" * 1000)  # not code: not frozen, reached through a link
    (work / "exp").mkdir()
    (work / "exp" / "model.py").write_text("")
    (work / "exp" / "train.bin").write_bytes(b"\0" * 7)  # data beside code, one level down
    gate, go = _gate(labq4, "plain")
    out = labq4.run(
        "submit", "--json", "--after", str(gate), "--", "sh", "-c", "python3 run.py; wc -c < weights.bin; wc -c < exp/train.bin",
        cwd=str(work),
    )
    job = json.loads(out.stdout)["id"]
    (work / "cfg.yaml").write_text("lr: 2\n")
    go.touch()
    assert labq4.run("wait", str(job), timeout=120).returncode == 0, _log(labq4, job)
    assert _log(labq4, job).split() == ["lr:", "1", "1000", "7"]
    assert "3 source files (not in git)" in labq4.run("show", str(job)).stdout


def test_code_over_the_cap_is_refused_naming_the_cap_and_nothing_is_queued(labq4: Labq) -> None:
    repo = _repo(Path(tempfile.mkdtemp(dir=labq4.root)))
    with open(repo / "model.ckpt", "wb") as f:  # untracked, not ignored
        f.truncate(21 * 1024 * 1024)
    before = len(labq4.client().jobs(include_finished=True))
    r = labq4.run("submit", "--", "python3", "src/train.py", cwd=str(repo), check=False)
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "over the 20.0 MiB cap" in lines[0] and "model.ckpt" in lines[0], lines
    assert "--no-snapshot" in lines[0]
    assert len(labq4.client().jobs(include_finished=True)) == before
    ok = labq4.submit("--no-snapshot", "--", "true", cwd=str(repo))
    assert "no snapshot" in labq4.run("show", str(ok)).stdout


def test_an_array_stores_one_snapshot_and_its_tasks_run_it(labq4: Labq) -> None:
    repo = _repo(Path(tempfile.mkdtemp(dir=labq4.root)))
    code_dir = labq4.state_dir / "code" / "0"
    before = set(os.listdir(code_dir)) if code_dir.exists() else set()
    out = labq4.run("submit", "--json", "--array", "0-47", "--", "python3", "train.py", cwd=str(repo / "src"))
    array = json.loads(out.stdout)["id"]
    assert labq4.run("wait", str(array), timeout=180).returncode == 0
    new = {n for n in set(os.listdir(code_dir)) - before if not n.endswith(".json")}
    assert len(new) <= 1  # this code may already have been stored by another test
    ids = {labq4.job(int(t["id"]))["spec"]["code"]["id"] for t in labq4.client().jobs(include_finished=True, tasks=True) if t.get("array_id") == array}
    assert len(ids) == 1 and (code_dir / ids.pop()).exists()
    assert labq4.run("logs", f"{array}.47").stdout == "train v1\n"


def test_another_user_gets_nothing_of_someone_elses_code(labq4: Labq) -> None:
    bob = unix_user("labqtest-bob")
    repo = _repo(Path(tempfile.mkdtemp(dir=labq4.root)))
    job = labq4.submit("--", "python3", "src/train.py", cwd=str(repo))
    sha = labq4.job(job)["spec"]["code"]["id"]
    r = labq4.run("diff", str(job), user=bob, check=False, cwd="/tmp")
    assert r.returncode == 1 and r.stderr.strip() == f"labq: job {job}'s code belongs to root", r.stderr
    assert "code" not in labq4.run("show", str(job), "--json", user=bob, cwd="/tmp").stdout.split('"spec"')[1].split("}")[0]
    # Naming root's snapshot in a spec of bob's: not his to run.
    spec = {"command": ["true"], "code": {"id": sha}}
    probe = subprocess.run(
        ["/usr/bin/python3", "-c", (
            "import json,sys; from scheduler.client import Client, ClientError\n"
            "try: Client().submit(json.loads(sys.argv[1]))\n"
            "except ClientError as e: print(e.status, e)\n"
        ), json.dumps(spec)],
        env={**labq4.env(), "PYTHONPATH": str(labq4.client_copy())}, capture_output=True, text=True,
        preexec_fn=_drop(bob), cwd="/tmp",
    )
    assert probe.stdout.startswith("404 code snapshot") and "not stored for you" in probe.stdout, probe

    # bob's own code runs as bob, unpacked in bob's own cache.
    home = Path(pwd.getpwuid(bob).pw_dir)
    work = Path(tempfile.mkdtemp(dir=home))  # fresh: bob's home may outlive a run
    (work / "main.py").write_text("import os; print(os.getuid(), os.getcwd())\n")
    os.chmod(work, 0o755)
    os.chown(work, bob, bob)
    os.chown(work / "main.py", bob, bob)
    out = labq4.run("submit", "--json", "--", "python3", "main.py", user=bob, cwd=str(work))
    bjob = json.loads(out.stdout)["id"]
    assert labq4.run("wait", str(bjob), user=bob, cwd="/tmp", timeout=120).returncode == 0
    # An admin reading bob's code sees escape sequences shown, not obeyed, and two of
    # bob's jobs are compared in memory (nothing of his unpacked or run as root).
    (work / "evil.py").write_text("print('\x1b]52;c;cHduZWQ=\x07\x1b[2J')\n")
    os.chown(work / "evil.py", bob, bob)
    out2 = labq4.run("submit", "--json", "--", "true", user=bob, cwd=str(work))
    bjob2 = json.loads(out2.stdout)["id"]
    seen = labq4.run("diff", str(bjob), str(bjob2)).stdout
    assert "\x1b" not in seen and "evil.py" in seen and "only the frozen files are compared" in seen, seen
    uid, cwd = labq4.run("logs", str(bjob), user=bob, cwd="/tmp").stdout.split()
    assert int(uid) == bob and cwd.startswith(str(home / ".cache" / "labq" / "code")), cwd
    st = os.stat(cwd)
    assert st.st_uid == bob and st.st_mode & 0o077 == 0


def _drop(uid: int):  # type: ignore[no-untyped-def]
    from tests.conftest import as_user

    return as_user(uid)


def test_a_commit_gone_from_the_repository_fails_the_job_saying_why(labq4: Labq) -> None:
    repo = _repo(Path(tempfile.mkdtemp(dir=labq4.root)))
    gate, go = _gate(labq4, "gone")
    job = labq4.submit("--after", str(gate), "--", "python3", "src/train.py", cwd=str(repo))
    wait_for("the job to be queued", lambda: labq4.job(job)["state"] == "PENDING")
    import shutil

    shutil.rmtree(repo / ".git")  # history rewritten away, say
    go.touch()
    j = labq4.wait(job, ("FAILED",), timeout=60)
    assert j["reasons"][0].startswith("cannot unpack its code snapshot on "), j["reasons"]
    log = _log(labq4, job)
    assert "cannot read commit" in log and "not a git repository" in log, log
