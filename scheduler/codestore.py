"""The head's store of code snapshots (issue 17): `state/code/<uid>/<sha256>`.

Content-addressed per user: a 48-task sweep, or the same code submitted twice, is
stored once. Per user, not shared, so that nobody learns whether someone else holds
some code (an upload answers the same either way) and nobody reads another's code:
the API serves a snapshot only to its owner and admins. The state directory is the
daemon's alone (0700), so the files need no other protection.

The daemon never unpacks a snapshot. It checks one (bounded gunzip, a tar holding
labq's meta) and keeps its meta beside it, so what `labq show` says about a job's code
is the daemon's reading, not the client's word.

Owns: that directory. Written by API threads (put) and the scheduler thread (sweep);
a lock makes a user's size check and write one step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scheduler import safefs, snapshot
from scheduler.errors import DaemonError
from scheduler.units import format_size

SHA = re.compile(r"[0-9a-f]{64}", re.ASCII)
UNREFERENCED_KEEP_S = 3600.0  # an upload waits this long for the submit that uses it
KEEP_ENDED_S = 30 * 86400.0  # an ended job's code is kept this long (for rerun and diff)


class CodeStore:
    def __init__(self, root: Path, max_bytes: int, user_max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.user_max_bytes = user_max_bytes
        self._lock = threading.Lock()

    def _dir(self, uid: int) -> Path:
        return self.root / str(int(uid))

    def _path(self, uid: int, sha: str) -> Path:
        if not SHA.fullmatch(sha):
            raise DaemonError(f"no code snapshot {sha[:80]!r}", 404)
        return self._dir(uid) / sha

    def usage(self, uid: int) -> int:
        """Bytes a user's snapshots take, their meta files included (a meta compresses
        far better than code: uncounted, it would be the way past the cap)."""
        try:
            return sum(
                e.stat().st_size for e in os.scandir(self._dir(uid))
                if SHA.fullmatch(e.name.removesuffix(".json"))
            )
        except OSError:
            return 0

    def put(
        self, uid: int, data: bytes, referenced: Callable[[], set[tuple[int, str]]] = set
    ) -> dict[str, Any]:
        """Check and keep a snapshot; its id and meta. The same bytes again: the same
        answer. Past the user's cap, their snapshots no job needs (`referenced`) go first."""
        if len(data) > self.max_bytes:
            raise DaemonError(
                f"the code snapshot is {format_size(len(data))}, over this daemon's cap of "
                f"{format_size(self.max_bytes)} (submit with --no-snapshot)",
                413,
            )
        meta = self._check(data)
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            path = self._path(uid, sha)
            if not path.exists():
                meta_text = json.dumps(meta)
                size = len(data) + len(meta_text)
                used = self.usage(uid)
                if used + size > self.user_max_bytes:
                    self._sweep_user(uid, referenced(), time.time(), keep_s=0)
                    used = self.usage(uid)
                if used + size > self.user_max_bytes:
                    raise DaemonError(
                        f"your stored code snapshots take {format_size(used)}; this one would pass the "
                        f"{format_size(self.user_max_bytes)} each user may keep (the snapshots of your "
                        f"waiting, running and recent jobs; or use --no-snapshot)",
                        413,
                    )
                safefs.private_dir(self.root, 0o700)
                safefs.private_dir(self._dir(uid), 0o700)
                tmp = path.with_name(f".{sha}.{threading.get_ident()}")
                tmp.write_bytes(data)
                (path.with_name(sha + ".json")).write_text(meta_text)
                os.replace(tmp, path)
            else:
                os.utime(path)  # just used: not swept as unreferenced
        return {"id": sha, "bytes": len(data), "summary": snapshot.summary(meta), **_public_meta(meta)}

    def _check(self, data: bytes) -> dict[str, Any]:
        """The snapshot's meta, read without unpacking and without tarfile (whose header
        parsing has had quadratic regexes: a 1 KB upload must not stall the daemon).
        Every gzip member is inflated, bounded (the node would unpack them all: a small
        bomb must not take the head's memory, nor a node's disk), and the first tar
        member must be labq's meta as a plain ustar header."""
        limit = 4 * self.max_bytes + (1 << 20)
        head = b""
        total = 0
        rest = data
        try:
            while rest:
                z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                chunk = rest
                while chunk:
                    out = z.decompress(chunk, 1 << 20)
                    total += len(out)
                    if total > limit:
                        raise DaemonError("the code snapshot unpacks to far more than its cap", 413)
                    if len(head) < 2 << 20:
                        head += out[: (2 << 20) - len(head)]
                    chunk = z.unconsumed_tail
                total += len(z.flush())
                if not z.eof:
                    raise DaemonError("the upload is not a labq code snapshot (truncated)")
                rest = z.unused_data
        except zlib.error:
            raise DaemonError("the upload is not a labq code snapshot") from None
        meta = _first_member_json(head)
        if meta is None:
            raise DaemonError("the upload is not a labq code snapshot")
        return _checked_meta(meta)

    def get(self, uid: int, sha: str) -> bytes:
        try:
            return self._path(uid, sha).read_bytes()
        except FileNotFoundError:
            raise DaemonError(f"code snapshot {sha[:12]} is not stored (removed, or not yours)", 404) from None

    def meta(self, uid: int, sha: str) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads(self._path(uid, sha).with_name(sha + ".json").read_text())
        except (FileNotFoundError, ValueError):
            raise DaemonError(
                f"code snapshot {sha[:12]} is not stored for you: upload it first (labq does, on submit)", 404
            ) from None
        return meta

    def sweep(self, referenced: set[tuple[int, str]], now: float | None = None) -> int:
        """Remove snapshots no job needs (`referenced`: those of jobs waiting, running or
        ended lately) that are older than an hour; how many."""
        now = time.time() if now is None else now
        try:
            users = [int(e.name) for e in os.scandir(self.root) if e.name.isdigit()]
        except OSError:
            return 0
        removed = 0
        for uid in users:
            with self._lock:
                removed += self._sweep_user(uid, referenced, now, UNREFERENCED_KEEP_S)
        return removed

    def _sweep_user(self, uid: int, referenced: set[tuple[int, str]], now: float, keep_s: float) -> int:
        removed = 0
        try:
            entries = list(os.scandir(self._dir(uid)))
        except OSError:
            return 0
        for e in entries:
            if not SHA.fullmatch(e.name) or (uid, e.name) in referenced:
                continue
            try:
                if now - e.stat().st_mtime < keep_s:
                    continue
                os.unlink(e.path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path + ".json")
                removed += 1
            except OSError:
                pass
        return removed


def _first_member_json(tar: bytes) -> Any:
    """The first member of a tar, by hand: a 512-byte ustar header (checksum checked)
    naming labq's meta, then its JSON."""
    if len(tar) < 512:
        return None
    header = tar[:512]
    try:
        want = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    if sum(header[:148]) + 8 * 32 + sum(header[156:]) != want:
        return None
    if header[:100].split(b"\0", 1)[0] != snapshot.META.encode() or header[156:157] not in (b"0", b"\0"):
        return None
    if size > MAX_META or len(tar) < 512 + size:
        return None
    try:
        return json.loads(tar[512 : 512 + size])
    except ValueError:
        return None


MAX_META = 1 << 20


def _checked_meta(meta: Any) -> dict[str, Any]:
    """Only what snapshot.take writes, with the types it writes: a crafted meta is a
    one-line refusal, never a 500 further on."""
    def bad(what: str) -> DaemonError:
        return DaemonError(f"the code snapshot's meta is not labq's: {what}")

    if not isinstance(meta, dict) or meta.get("kind") not in ("git", "files"):
        raise bad("kind")
    for key in ("repo", "rel", "commit", "branch"):
        if not isinstance(meta.get(key, ""), str) or len(meta.get(key, "")) > 4096:
            raise bad(key)
    repo = meta.get("repo", "")
    if repo and (not repo.startswith("/") or any(ord(ch) < 32 for ch in repo) or os.path.normpath(repo) != repo):
        raise bad("repo")  # where a node looks for it: an absolute path or nothing
    if meta.get("commit") and not re.fullmatch(r"[0-9a-f]{7,64}", meta["commit"]):
        raise bad("commit")
    for key in ("changed", "deleted", "untracked"):
        v = meta.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise bad(key)
    if not isinstance(meta.get("diff_bytes", 0), int) or meta.get("diff_bytes", 0) < 0:
        raise bad("diff_bytes")
    return meta


def _public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """What a job's spec records of its code (the owner's to see, as the spec is)."""
    return {
        "kind": meta.get("kind", ""),
        "commit": str(meta.get("commit", ""))[:64],
        "branch": str(meta.get("branch", ""))[:256],
        "repo": str(meta.get("repo", ""))[:4096] if meta.get("kind") == "git" else "",
    }


def code_ref(meta: dict[str, Any], sha: str) -> dict[str, Any]:
    """The `code` field of a spec, from the daemon's own reading of the snapshot."""
    return {"id": sha, "summary": snapshot.summary(meta), **_public_meta(meta)}
