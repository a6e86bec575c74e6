"""The CLI's side of code snapshots (issue 17): freezing the workdir at submit, and
`labq diff`. Stdlib-only, as the rest of the client.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import os
import sys
import tempfile
from typing import Any

from scheduler import snapshot
from scheduler.client import Client, ClientError
from scheduler.console import UsageError
from scheduler.present import clean_log
from scheduler.userconfig import user_setting

OFF = (False, "off", "false", "no", "0")


def freeze(c: Client, spec: dict[str, Any], opt_out: bool = False) -> str:
    """Freeze the job's workdir and name the snapshot in `spec["code"]`. Returns a note
    for after the job is accepted ("" when there is nothing to say): a refusal must
    stay the one line the daemon gives."""
    spec.pop("code", None)
    workdir = spec.get("workdir")
    if opt_out or c.remote is not None or not isinstance(workdir, str) or not workdir:
        return ""  # a remote daemon's job runs on another machine: this tree is not there
    if not workdir.isprintable() or not os.path.isdir(workdir):
        return ""  # the daemon says what is wrong with it
    if user_setting("snapshot") in OFF:
        return ""
    try:
        settings = c.code_settings()
    except ClientError as e:
        if e.status == 404:
            return ""  # a daemon from before snapshots
        raise
    if not settings.get("enabled"):
        return ""
    try:
        blob, _meta = snapshot.take(workdir, int(settings["max_bytes"]))
    except snapshot.SnapshotError as e:
        raise UsageError(str(e)) from None
    except snapshot.NotCode as e:
        return f"labq: note: nothing frozen ({e}): the job runs that directory as it is when it starts"
    ref = c.upload_code(blob)
    spec["code"] = {"id": ref["id"]}
    return ""


class _Out:
    """Where a diff goes: as it is for your own code; someone else's (an admin reading
    it) with escape sequences shown, not obeyed, as `labq logs` does."""

    def __init__(self, raw: bool) -> None:
        self.raw = raw

    def write(self, text: str) -> None:
        sys.stdout.write(text if self.raw else clean_log(text))


def cmd_diff(c: Client, args: argparse.Namespace) -> int:
    """`labq diff ID`: the job's uncommitted changes against its commit.
    `labq diff ID ID2`: the code of two jobs, file by file."""
    me = c.health()["caller"]
    a = c.job_code(args.job_id, blob=True)
    if args.other is None:
        return _one(a, _Out(a["user"] == me))
    b = c.job_code(args.other, blob=True)
    # The commits' files come from the owners' repositories: only your own are read,
    # and unpacked. An admin comparing others' jobs compares what was frozen, in
    # memory: nothing of theirs is written to disk or run (git in their repository).
    whole = a["user"] == me and b["user"] == me
    out = _Out(whole)
    out.write(f"job {a['id']}: {a['code'].get('summary', '')}\n")
    out.write(f"job {b['id']}: {b['code'].get('summary', '')}\n")
    if a["code"]["id"] == b["code"]["id"]:
        out.write("the same code\n")
        return 0
    blob_a, blob_b = base64.b64decode(a["blob"]), base64.b64decode(b["blob"])
    if not whole:
        out.write("(others' jobs: only the frozen files are compared, not their commits' trees)\n")
        _compare(_frozen(blob_a), _frozen(blob_b), str(a["id"]), str(b["id"]), out)
        return 0
    with tempfile.TemporaryDirectory(prefix="labq-diff-") as tmp:
        # Whole trees (a job's directory may be deep in its repository), named by job.
        left, right = os.path.join(tmp, str(a["id"])), os.path.join(tmp, str(b["id"]))
        try:
            snapshot.materialize(blob_a, left)
            snapshot.materialize(blob_b, right)
        except (snapshot.SnapshotError, OSError) as e:
            raise ClientError(f"cannot unpack the code to compare it: {e}") from None
        _compare(_tree(left), _tree(right), str(a["id"]), str(b["id"]), out)
    return 0


def _one(a: dict[str, Any], out: _Out) -> int:
    meta = a.get("meta") or {}
    out.write(f"job {a['id']}: {a['code'].get('summary', '')}\n")
    _meta, members, tar = snapshot.read(base64.b64decode(a["blob"]))
    with tar:
        if snapshot.DIFF in members:
            f = tar.extractfile(members[snapshot.DIFF])
            if f is not None:
                out.write(f.read().decode(errors="replace"))
        for path in meta.get("untracked", []) if meta.get("kind") == "git" else []:
            m = members.get(snapshot.FILES + path)
            f = tar.extractfile(m) if m is not None and m.isfile() else None
            if f is not None:
                _write_diff(b"", f.read(), "/dev/null", f"b/{path}", out)
    if meta.get("kind") == "git" and not (meta.get("changed") or meta.get("deleted") or meta.get("untracked")):
        out.write(f"no uncommitted changes: it ran commit {str(meta.get('commit', ''))[:12]} as committed\n")
    if meta.get("kind") == "files":
        out.write(f"not in git: {len(meta.get('untracked', []))} source files frozen from {meta.get('repo')}\n")
        out.write("(labq diff ID1 ID2 compares the code of two jobs)\n")
    sys.stdout.flush()
    return 0


def _frozen(blob: bytes) -> dict[str, bytes]:
    """The frozen files of a snapshot, read in memory (a link as its target's name)."""
    files: dict[str, bytes] = {}
    _meta, members, tar = snapshot.read(blob)
    with tar:
        for name, m in members.items():
            if not name.startswith(snapshot.FILES):
                continue
            if m.issym():
                files[name[len(snapshot.FILES):]] = f"-> {m.linkname}\n".encode()
            elif m.isfile():
                f = tar.extractfile(m)
                files[name[len(snapshot.FILES):]] = f.read() if f is not None else b""
    return files


def _tree(top: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for root, dirs, names in os.walk(top):
        dirs.sort()
        for name in names:
            full = os.path.join(root, name)
            if os.path.islink(full):
                data = f"-> {os.readlink(full)}\n".encode()
            else:
                with open(full, "rb") as f:
                    data = f.read()
            out[os.path.relpath(full, top)] = data
    return out


def _compare(fa: dict[str, bytes], fb: dict[str, bytes], name_a: str, name_b: str, out: _Out) -> None:
    same = True
    for rel in sorted(set(fa) | set(fb)):
        da, db = fa.get(rel, b""), fb.get(rel, b"")
        if rel in fa and rel in fb and da == db:
            continue
        same = False
        _write_diff(da, db, f"{name_a}/{rel}" if rel in fa else "/dev/null", f"{name_b}/{rel}" if rel in fb else "/dev/null", out)
    if same:
        out.write("no difference in the files (the snapshots differ only in what labq recorded)\n")
    sys.stdout.flush()


def _write_diff(a: bytes, b: bytes, name_a: str, name_b: str, out: _Out) -> None:
    if b"\0" in a[:8192] or b"\0" in b[:8192]:
        out.write(f"Binary files {name_a} and {name_b} differ\n")
        return
    out.write(f"diff {name_a} {name_b}\n")
    for line in difflib.unified_diff(
        a.decode(errors="replace").splitlines(keepends=True),
        b.decode(errors="replace").splitlines(keepends=True),
        name_a,
        name_b,
    ):
        out.write(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
