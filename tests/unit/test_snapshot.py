"""Code snapshots (issue 17) without a daemon: freezing (git and plain directories),
unpacking, the head's store of them, and who may type into a session."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from scheduler import snapshot
from scheduler.auth import Caller
from scheduler.codestore import CodeStore
from scheduler.errors import DaemonError


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    (r / "pkg").mkdir(parents=True)
    (r / "pkg" / "train.py").write_text("v1\n")
    (r / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(r / "run.sh", 0o755)
    (r / "old.txt").write_text("old\n")
    (r / ".gitignore").write_text("ckpt/\n*.log\n")
    git(r, "init", "-q")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "one")
    return r


def test_git_snapshot_holds_the_dirty_state_and_unpacks_to_it(repo: Path, tmp_path: Path) -> None:
    (repo / "pkg" / "train.py").write_text("v2\n")
    (repo / "pkg" / "new.py").write_text("new\n")
    (repo / "old.txt").unlink()
    (repo / "ckpt").mkdir()
    (repo / "ckpt" / "big.bin").write_bytes(b"x" * 100)  # ignored: not frozen
    (repo / "train.log").write_text("ignored\n")
    blob, meta = snapshot.take(str(repo / "pkg"), 1 << 20)
    assert meta["kind"] == "git" and meta["rel"] == "pkg" and meta["commit"] == git(repo, "rev-parse", "HEAD")
    assert meta["changed"] == ["pkg/train.py"] and meta["deleted"] == ["old.txt"] and meta["untracked"] == ["pkg/new.py"]
    assert snapshot.summary(meta).endswith("dirty: 3 files (1 new), " + snapshot.human(meta["diff_bytes"]) + " diff)")
    # The same code, the same bytes: what lets the head store a sweep's code once.
    assert snapshot.take(str(repo / "pkg"), 1 << 20)[0] == blob
    (repo / "pkg" / "train.py").write_text("v3\n")
    run_in, _ = snapshot.materialize(blob, str(tmp_path / "out"))
    top = tmp_path / "out"
    assert run_in == str(top / "pkg")
    assert (top / "pkg" / "train.py").read_text() == "v2\n" and (top / "pkg" / "new.py").read_text() == "new\n"
    assert not (top / "old.txt").exists() and not (top / "ckpt").exists() and not (top / ".git").exists()
    assert os.stat(top / "run.sh").st_mode & 0o100  # modes come along


def test_a_clean_tree_and_the_cap(repo: Path) -> None:
    _, meta = snapshot.take(str(repo), 1 << 20)
    assert snapshot.summary(meta).endswith("clean)") and meta["diff_bytes"] == 0
    (repo / "weights.pt").write_bytes(b"\0" * 4096)
    with pytest.raises(snapshot.SnapshotError, match=r"over the 2\.0 KiB cap \(largest: weights\.pt 4\.0 KiB\)"):
        snapshot.take(str(repo), 2048)


def test_outside_git_only_source_files_are_frozen(tmp_path: Path) -> None:
    work = tmp_path / "exp"
    (work / "conf").mkdir(parents=True)
    (work / "main.py").write_text("print(1)\n")
    (work / "conf" / "a.yaml").write_text("x: 1\n")
    (work / "data.csv").write_text("1,2\n")
    (work / "huge.json").write_bytes(b"[" + b"1," * 600_000 + b"1]")  # data, though .json
    (work / ".venv").mkdir()
    (work / ".venv" / "x.py").write_text("")
    (work / "__pycache__").mkdir()
    (work / "__pycache__" / "m.py").write_text("")
    _, meta = snapshot.take(str(work), 1 << 20)
    assert meta["kind"] == "files" and meta["untracked"] == ["conf/a.yaml", "main.py"]
    with pytest.raises(snapshot.NotCode):
        snapshot.take("/tmp", 1 << 20)


def _crafted(name: str, data: bytes = b"x", kind: str = "files", link: str = "", listed: bool = True, is_dir: bool = False) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        untracked = ([name.removeprefix("files/")] if listed else []) + (["escape"] if link else [])
        meta = json.dumps({"kind": kind, "rel": "", "repo": "/nonexistent", "untracked": untracked}).encode()
        info = tarfile.TarInfo(snapshot.META)
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
        if link:
            li = tarfile.TarInfo(snapshot.FILES + "escape")
            li.type = tarfile.SYMTYPE
            li.linkname = link
            tar.addfile(li)
        info = tarfile.TarInfo(name)
        if is_dir:
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize(
    ("name", "link", "is_dir"),
    [
        ("files/../evil", "", False),
        ("files//etc/evil", "", False),
        ("files/escape/evil", str(Path("/tmp")), False),
        ("files/escape/evil", str(Path("/tmp")), True),  # a directory made through a link
    ],
)
def test_a_crafted_snapshot_writes_nowhere_but_its_directory(tmp_path: Path, name: str, link: str, is_dir: bool) -> None:
    with pytest.raises(snapshot.SnapshotError, match="refusing a snapshot entry"):
        snapshot.materialize(_crafted(name, link=link, is_dir=is_dir), str(tmp_path / "out"))
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_only_the_files_its_meta_lists_are_unpacked(tmp_path: Path) -> None:
    """What `labq show` says (from the meta, as the daemon read it) is what runs."""
    run_in, _ = snapshot.materialize(_crafted("files/hidden.py", listed=False), str(tmp_path / "out"))
    assert os.listdir(run_in) == []


def test_the_code_store_keeps_one_copy_per_user_and_checks_what_it_keeps(tmp_path: Path) -> None:
    store = CodeStore(tmp_path / "code", max_bytes=1 << 20, user_max_bytes=3000)
    work = tmp_path / "w"
    work.mkdir()
    (work / "a.py").write_text("a = 1\n")
    blob, meta = snapshot.take(str(work), 1 << 20)
    first = store.put(1001, blob)
    assert first["id"] == meta["id"] and store.put(1001, blob) == first
    assert store.get(1001, first["id"]) == blob
    with pytest.raises(DaemonError, match="not stored for you"):
        store.meta(1002, first["id"])  # someone else's id is no handle on it
    with pytest.raises(DaemonError, match="not a labq code snapshot"):
        store.put(1001, b"hello")
    # Two gzip members: the second counts toward the bound too (the node unpacks both).
    with pytest.raises(DaemonError, match="far more than its cap"):
        store.put(1001, blob + gzip.compress(b"\0" * (6 << 20)))
    with pytest.raises(DaemonError, match="meta is not labq's: commit"):
        store.put(1001, _crafted_meta({"kind": "git", "commit": "$(reboot)"}))
    with pytest.raises(DaemonError, match="meta is not labq's: untracked"):
        store.put(1001, _crafted_meta({"kind": "files", "untracked": [1, 2]}))
    bomb = gzip.compress(b"\0" * (8 << 20))  # small packed, huge unpacked
    assert len(bomb) < (1 << 20)
    with pytest.raises(DaemonError, match="far more than its cap"):
        store.put(1001, bomb)
    (work / "b.py").write_text("b = 2\n" * 400)
    ids: set[tuple[int, str]] = {(1001, first["id"])}

    def all_needed() -> set[tuple[int, str]]:
        return set(ids)

    # Past the cap, snapshots no job needs make room; if every one is needed: refused.
    for i in range(20):
        (work / "c.py").write_text(f"c = {i}\n" * 300)
        ids.add((1001, store.put(1001, snapshot.take(str(work), 1 << 20)[0], lambda: {(1001, first["id"])})["id"]))
    assert store.usage(1001) <= 3000 and store.get(1001, first["id"]) == blob
    with pytest.raises(DaemonError, match="each user may keep"):
        for i in range(20, 40):
            (work / "c.py").write_text(f"c = {i}\n" * 300)
            store.put(1001, snapshot.take(str(work), 1 << 20)[0], all_needed)
    # Unreferenced and old: swept; referenced: kept.
    on_disk = {p.name for p in (tmp_path / "code" / "1001").iterdir() if not p.name.endswith(".json")}
    assert store.sweep({(1001, first["id"])}, now=9e12) == len(on_disk) - 1
    assert store.get(1001, first["id"]) == blob


def _crafted_meta(meta: dict[str, object]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = json.dumps(meta).encode()
        info = tarfile.TarInfo(snapshot.META)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def test_only_the_owner_types_into_a_running_shell() -> None:
    from scheduler.launcher import MemoryLauncher
    from scheduler.sessions import parse_winsize, type_into
    from scheduler.shapes import JobState
    from scheduler.store import JobRow

    row = JobRow(
        id=7, user="ana", uid=1001, name="shell", spec={}, gpus=1, priority=0, time_limit=None,
        state=JobState.RUNNING, reason="", submit_time=0, start_time=1, end_time=None, attempt=1, node="n",
        node_name="n", gpu_ids="0", pid=1, exit_code=None, signal=None, stop_deadline=None, stop_outcome=None,
        stop_reason=None, requeued=False, log_base=0, kind="shell",
    )
    ml = MemoryLauncher()
    with pytest.raises(DaemonError, match="not running any more"):
        type_into(ml, Caller(1001, "ana", False), row, b"ls\n", None)
    from scheduler.runner import Launch

    ml.launch(7, 1, Launch(7, 1, ["sh"], "", {}, 1001, None, 1.0, 1000), "n", {})
    type_into(ml, Caller(1001, "ana", False), row, b"ls\n", [24, 80])
    assert ml.jobs["7.1"].typed == [(b"ls\n", [24, 80], "")]
    with pytest.raises(DaemonError, match="only its owner may type into it"):
        type_into(ml, Caller(0, "root", True), row, b"id\n", None)
    with pytest.raises(DaemonError, match="winsize must be"):
        parse_winsize([0, 80])
