"""`make install` for a team: into a temporary prefix, used by another Unix user.

The client-only install (a desktop's, and the part every user runs) is built here
for real from a python every user can run; a python under a private home is refused
with the directory named. (The full install adds the daemon's packages to the same
venv; it is timed in docs/benchmarks.md, not repeated in every run of the suite.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.config import load_daemon_config
from tests.conftest import REPO, Labq, as_user, unix_user

pytestmark = pytest.mark.integration

USER = "labqtest-inst"


@pytest.fixture
def prefix() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="lqinst", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make(root: Path, target: str, **env: str) -> subprocess.CompletedProcess[str]:
    where = {"PREFIX": str(root / "opt"), "BINDIR": str(root / "bin"), "ETC": str(root / "etc"),
             "STATE": str(root / "state"), "UNITDIR": str(root / "units")}  # fmt: skip
    return subprocess.run(
        ["make", "-s", "-C", str(REPO), target],
        env={**os.environ, **where, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="installs for every user: root")
def test_a_client_install_every_user_can_run_and_a_private_python_is_refused(prefix: Path, labq4: Labq) -> None:
    out = make(prefix, "install", CLIENT_ONLY="1")
    assert out.returncode == 0, out.stderr
    labq = prefix / "bin" / "labq"
    assert labq.is_symlink() and os.readlink(labq) == str(prefix / "opt" / "venv" / "bin" / "labq")
    # Built from a python outside any private home, and nothing of the daemon's in it.
    venv_python = Path(os.path.realpath(prefix / "opt" / "venv" / "bin" / "python"))
    assert not str(venv_python).startswith(("/root", "/home"))
    no_ray = subprocess.run([str(prefix / "opt" / "venv" / "bin" / "python"), "-c", "import ray"], capture_output=True)
    assert no_ray.returncode != 0

    # Another user runs it against the team's daemon: submit, queue, cancel.
    uid = unix_user(USER)
    env = {"PATH": f"{prefix / 'bin'}:/usr/bin:/bin", "LABQ_SOCKET": str(labq4.socket), "HOME": f"/home/{USER}"}

    def as_researcher(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["labq", *args], env=env, capture_output=True, text=True, timeout=60,
                              preexec_fn=as_user(uid), cwd="/tmp")  # fmt: skip

    sub = as_researcher("submit", "--json", "--no-snapshot", "--", "sleep", "60")
    assert sub.returncode == 0, sub.stderr
    job = str(json.loads(sub.stdout)["id"])
    queue = as_researcher("queue")
    assert queue.returncode == 0 and USER in queue.stdout
    cancel = as_researcher("cancel", "--now", job)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr

    # A python only root can reach (an admin's pyenv under /root): refused, saying where.
    private = prefix / "private"
    private.mkdir(mode=0o700)
    (private / "python3").symlink_to(os.path.realpath("/usr/bin/python3"))
    refused = make(prefix, "install", CLIENT_ONLY="1", PYTHON=str(private / "python3"), PREFIX=str(prefix / "opt2"))
    assert refused.returncode != 0
    assert f"lives under {private}" in refused.stderr, refused.stderr
    assert not (prefix / "opt2").exists()

    gone = make(prefix, "uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not labq.exists() and not (prefix / "opt").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="installs for every user: root")
def test_a_head_install_writes_a_config_that_loads_and_units_that_point_at_it(prefix: Path) -> None:
    # The daemon's packages are the wheels' business: --no-deps keeps this test fast.
    (prefix / "units").mkdir()
    out = make(prefix, "install", PIP_ARGS="--no-deps", NODE_STATE=str(prefix / "node"))
    assert out.returncode == 0, out.stderr
    config = load_daemon_config(prefix / "etc" / "labq.yaml")
    assert config.quotas_file == ""  # not the demo's quotas (alice, bob, carol)
    assert oct((prefix / "state").stat().st_mode & 0o777) == "0o700"
    head = (prefix / "units" / "labq.service").read_text()
    assert f"ExecStart={prefix}/opt/venv/bin/labq up --foreground --state-dir {prefix}/state --config {prefix}/etc/labq.yaml" in head
    worker = (prefix / "units" / "labq-join.service").read_text()
    assert f"ExecStart={prefix}/opt/venv/bin/labq join --rejoin --state-dir {prefix}/node" in worker
    (prefix / "etc" / "labq.yaml").write_text("admins: [someone]\n")
    again = make(prefix, "install", PIP_ARGS="--no-deps", NODE_STATE=str(prefix / "node"))
    assert again.returncode == 0 and "kept" in again.stdout
    assert (prefix / "etc" / "labq.yaml").read_text() == "admins: [someone]\n"  # an admin's edits survive
    (prefix / "node").mkdir()
    gone = make(prefix, "uninstall", PURGE="1", NODE_STATE=str(prefix / "node"))
    assert gone.returncode == 0, gone.stderr
    assert not any((prefix / d).exists() for d in ("opt", "etc", "state", "node"))
    assert not (prefix / "units" / "labq.service").exists()
