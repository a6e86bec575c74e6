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

import hashlib
import io
import json
import os
import re
import tarfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from scheduler import safefs, snapshot
from scheduler.errors import DaemonError
from scheduler.units import format_size

SHA = re.compile(r"[0-9a-f]{64}", re.ASCII)
UNREFERENCED_KEEP_S = 3600.0  # an upload waits this long for the submit that uses it


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
        try:
            return sum(e.stat().st_size for e in os.scandir(self._dir(uid)) if SHA.fullmatch(e.name))
        except OSError:
            return 0

    def put(self, uid: int, data: bytes) -> dict[str, Any]:
        """Check and keep a snapshot; its id and meta. The same bytes again: the same answer."""
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
                used = self.usage(uid)
                if used + len(data) > self.user_max_bytes:
                    raise DaemonError(
                        f"your stored code snapshots take {format_size(used)}; this one would pass the "
                        f"{format_size(self.user_max_bytes)} each user may keep (snapshots of jobs you "
                        "no longer have are removed after an hour; or use --no-snapshot)",
                        413,
                    )
                safefs.private_dir(self.root, 0o700)
                safefs.private_dir(self._dir(uid), 0o700)
                tmp = path.with_name(f".{sha}.{threading.get_ident()}")
                tmp.write_bytes(data)
                (path.with_name(sha + ".json")).write_text(json.dumps(meta))
                os.replace(tmp, path)
            else:
                os.utime(path)  # just used: not swept as unreferenced
        return {"id": sha, "bytes": len(data), "summary": snapshot.summary(meta), **_public_meta(meta)}

    def _check(self, data: bytes) -> dict[str, Any]:
        """The snapshot's meta, read without unpacking: gunzip bounded (a small bomb must
        not take the head's memory), and a tar that holds labq's meta."""
        limit = 4 * self.max_bytes + (1 << 20)
        try:
            z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            raw = z.decompress(data, limit)
            if z.unconsumed_tail or len(raw) >= limit:
                raise DaemonError("the code snapshot unpacks to far more than its cap", 413)
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
                member = tar.getmember(snapshot.META)
                f = tar.extractfile(member)
                meta = json.loads(f.read(1 << 20)) if f is not None else None
        except (zlib.error, tarfile.TarError, KeyError, ValueError, EOFError):
            raise DaemonError("the upload is not a labq code snapshot") from None
        if not isinstance(meta, dict) or meta.get("kind") not in ("git", "files"):
            raise DaemonError("the upload is not a labq code snapshot")
        return meta

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
        """Remove snapshots no job uses that are older than an hour; how many."""
        now = time.time() if now is None else now
        removed = 0
        try:
            users = [e for e in os.scandir(self.root) if e.name.isdigit()]
        except OSError:
            return 0
        for u in users:
            for e in os.scandir(u.path):
                if not SHA.fullmatch(e.name) or (int(u.name), e.name) in referenced:
                    continue
                with self._lock:
                    try:
                        if now - e.stat().st_mtime < UNREFERENCED_KEEP_S:
                            continue
                        os.unlink(e.path)
                        os.unlink(e.path + ".json")
                        removed += 1
                    except OSError:
                        pass
        return removed


def _public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """What a job's spec records of its code (the owner's to see, as the spec is)."""
    return {
        "kind": meta.get("kind", ""),
        "commit": str(meta.get("commit", ""))[:64],
        "branch": str(meta.get("branch", ""))[:256],
    }


def code_ref(meta: dict[str, Any], sha: str) -> dict[str, Any]:
    """The `code` field of a spec, from the daemon's own reading of the snapshot."""
    return {"id": sha, "summary": snapshot.summary(meta), **_public_meta(meta)}
