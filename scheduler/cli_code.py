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
from scheduler.console import UsageError, say
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


def cmd_diff(c: Client, args: argparse.Namespace) -> int:
    """`labq diff ID`: the job's uncommitted changes against its commit.
    `labq diff ID ID2`: the code of two jobs, file by file."""
    a = c.job_code(args.job_id, blob=True)
    if args.other is None:
        return _one(a)
    b = c.job_code(args.other, blob=True)
    say(f"job {a['id']}: {a['code'].get('summary', '')}")
    say(f"job {b['id']}: {b['code'].get('summary', '')}")
    if a["code"]["id"] == b["code"]["id"]:
        say("the same code")
        return 0
    # The commits' files come from the owners' repositories: read only your own (an
    # admin comparing others' jobs compares what was frozen, and never runs git in a
    # repository someone else controls).
    me = c.health()["caller"]
    whole = c.job(args.job_id)["user"] == me and c.job(args.other)["user"] == me
    if not whole:
        say("(others' jobs: only the frozen files are compared, not their commits' trees)")
    with tempfile.TemporaryDirectory(prefix="labq-diff-") as tmp:
        # Whole trees (a job's directory may be deep in its repository), named by job.
        left, right = os.path.join(tmp, str(a["id"])), os.path.join(tmp, str(b["id"]))
        try:
            snapshot.materialize(base64.b64decode(a["blob"]), left, with_commit=whole)
            snapshot.materialize(base64.b64decode(b["blob"]), right, with_commit=whole)
        except (snapshot.SnapshotError, OSError) as e:
            raise ClientError(f"cannot unpack the code to compare it: {e}") from None
        _compare(left, right, f"{a['id']}", f"{b['id']}")
    return 0


def _one(a: dict[str, Any]) -> int:
    meta = a.get("meta") or {}
    say(f"job {a['id']}: {a['code'].get('summary', '')}")
    data = base64.b64decode(a["blob"])
    _meta, members, tar = snapshot.read(data)
    with tar:
        if snapshot.DIFF in members:
            f = tar.extractfile(members[snapshot.DIFF])
            if f is not None:
                sys.stdout.write(f.read().decode(errors="replace"))
        for path in meta.get("untracked", []) if meta.get("kind") == "git" else []:
            m = members.get(snapshot.FILES + path)
            f = tar.extractfile(m) if m is not None and m.isfile() else None
            if f is not None:
                _write_diff(path, b"", f.read(), "/dev/null", f"b/{path}")
        if meta.get("kind") == "files":
            say(f"not in git: {len(meta.get('untracked', []))} source files frozen from {meta.get('repo')}")
            say("(labq diff ID1 ID2 compares the code of two jobs)")
    sys.stdout.flush()
    return 0


def _files(top: str) -> dict[str, str]:
    out = {}
    for root, dirs, names in os.walk(top):
        dirs.sort()
        for name in names:
            full = os.path.join(root, name)
            out[os.path.relpath(full, top)] = full
    return out


def _read(path: str | None) -> bytes:
    if path is None:
        return b""
    if os.path.islink(path):
        return f"-> {os.readlink(path)}\n".encode()
    with open(path, "rb") as f:
        return f.read()


def _compare(top_a: str, top_b: str, name_a: str, name_b: str) -> None:
    fa, fb = _files(top_a), _files(top_b)
    same = True
    for rel in sorted(set(fa) | set(fb)):
        da, db = _read(fa.get(rel)), _read(fb.get(rel))
        if da == db:
            continue
        same = False
        _write_diff(rel, da, db, f"{name_a}/{rel}" if rel in fa else "/dev/null", f"{name_b}/{rel}" if rel in fb else "/dev/null")
    if same:
        say("no difference in the files (the snapshots differ only in what labq recorded)")
    sys.stdout.flush()


def _write_diff(rel: str, a: bytes, b: bytes, name_a: str, name_b: str) -> None:
    if b"\0" in a[:8192] or b"\0" in b[:8192]:
        say(f"Binary files {name_a} and {name_b} differ")
        return
    lines = difflib.unified_diff(
        a.decode(errors="replace").splitlines(keepends=True),
        b.decode(errors="replace").splitlines(keepends=True),
        name_a,
        name_b,
    )
    say(f"diff {name_a} {name_b}")
    for line in lines:
        sys.stdout.write(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")

