"""The code a job runs is the code that was submitted (issue 17).

At submit the client (as the user) freezes the job's code into one blob:
- in a git repository: the commit, the branch, the uncommitted diff (for `labq diff`),
  and the working-tree content of every changed and untracked file (.gitignore
  respected); the commit's own files come from the repository when the job starts;
- elsewhere: the workdir's source files (by extension; see SOURCE_SUFFIXES).
The blob is a deterministic tar.gz, so the same code gives the same sha256: the head
stores it once per user (codestore.py). When the job starts, the runner runs
`materialize()` on the node *as the job's owner* (this file is stdlib-only and is
handed to a plain python as its source), which unpacks it into a fresh directory.

Stdlib only: the client, the materializer and `labq diff` all use it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from typing import Any

META = "labq-snapshot.json"
DIFF = "diff.patch"
FILES = "files/"
# Outside git, how much of a directory is looked at before it is taken for something
# other than a code directory (a home, /tmp, a dataset): a bounded cost at submit.
MAX_FILES = 5000
MAX_DEPTH = 4
# Outside git, what counts as code. Data, checkpoints and logs do not.
SOURCE_SUFFIXES = (
    ".py", ".pyx", ".pxd", ".pyi", ".ipynb", ".sh", ".bash", ".zsh", ".yaml", ".yml", ".toml",
    ".cfg", ".ini", ".json", ".txt", ".md", ".c", ".cc", ".cpp", ".cxx", ".h", ".hpp", ".cu",
    ".cuh", ".jl", ".r", ".lua", ".rs", ".go", ".js", ".ts", ".proto", ".jinja", ".j2",
)
SOURCE_NAMES = ("Makefile", "Dockerfile", "requirements.txt", "setup.py", "pyproject.toml")
# .json/.txt/.md may be data: outside git, only small ones count as code.
SMALL_ONLY = (".json", ".txt", ".md")
SMALL = 1 << 20
SKIP_DIRS = ("__pycache__", "node_modules", "venv", "env", "site-packages", "wandb", "mlruns")
KEEP_DAYS = 7  # materialized copies older than this are removed by the next job's start


class SnapshotError(Exception):
    """Why the code cannot be frozen (one line for the user)."""


class NotCode(Exception):
    """Outside git, a directory that is not a code directory (a home, /tmp, a dataset):
    the job runs it live, and the user is told why."""


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _git(cwd: str, *args: str) -> bytes:
    try:
        r = subprocess.run(
            ["git", "-C", cwd, *args], capture_output=True, timeout=60,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except FileNotFoundError:
        raise SnapshotError("git is not installed here") from None
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"git {args[0]} took over 60 s in {cwd}") from None
    if r.returncode != 0:
        msg = r.stderr.decode(errors="replace").strip().splitlines()
        raise SnapshotError(f"git {args[0]} failed in {cwd}: {msg[-1] if msg else r.returncode}")
    return r.stdout


def _repo_top(workdir: str) -> str | None:
    """The top of the git work tree `workdir` is in, or None (not in git, or no git)."""
    if shutil.which("git") is None:
        return None
    try:
        r = subprocess.run(
            ["git", "-C", workdir, "rev-parse", "--show-toplevel"], capture_output=True, timeout=30,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    top = r.stdout.decode(errors="surrogateescape").strip()
    return top if r.returncode == 0 and top else None


class _Blob:
    """A deterministic tar.gz: sorted names, no times, no owners."""

    def __init__(self, cap: int) -> None:
        self.entries: dict[str, tuple[bytes, int, bool]] = {}  # name -> (data, mode, is_link)
        self.size = 0
        self.cap = cap

    def add(self, name: str, data: bytes, mode: int = 0o644, link: bool = False) -> None:
        self.entries[name] = (data, mode, link)
        self.size += len(data)

    def add_file(self, name: str, path: str) -> None:
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                self.add(name, os.readlink(path).encode(errors="surrogateescape"), 0o777, link=True)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    self.add(name, f.read(), 0o755 if st.st_mode & 0o100 else 0o644)
        except OSError as e:
            raise SnapshotError(
                f"cannot read {path} to freeze it: {e.strerror or e} (fix its permissions, ignore it, or use --no-snapshot)"
            ) from None

    def check_cap(self, what: str) -> None:
        if self.size <= self.cap:
            return
        big = sorted(
            ((len(d), n[len(FILES):]) for n, (d, _m, _l) in self.entries.items() if n.startswith(FILES)),
            reverse=True,
        )[:3]
        largest = ", ".join(f"{n} {human(s)}" for s, n in big)
        raise SnapshotError(
            f"the code snapshot of {what} would be {human(self.size)}, over the {human(self.cap)} cap "
            f"(largest: {largest}): add such files to .gitignore, move them out, or submit with --no-snapshot"
        )

    def pack(self) -> bytes:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            # The meta first, as a plain header: the daemon reads only it, by hand.
            for name in sorted(self.entries, key=lambda n: (n != META, n)):
                data, mode, link = self.entries[name]
                info = tarfile.TarInfo(name)
                info.mode = mode
                info.mtime = 0
                if link:
                    info.type = tarfile.SYMTYPE
                    info.linkname = data.decode(errors="surrogateescape")
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
            gz.write(raw.getvalue())
        return out.getvalue()


def take(workdir: str, cap: int) -> tuple[bytes, dict[str, Any]]:
    """Freeze the code under `workdir`: (blob, meta). SnapshotError if it cannot be;
    NotCode outside git where `workdir` is no code directory."""
    workdir = os.path.realpath(workdir)
    if not os.path.isdir(workdir):
        raise SnapshotError(f"workdir {workdir} is not a directory")
    top = _repo_top(workdir)
    blob = _Blob(cap)
    meta = _take_git(top, workdir, blob) if top is not None else _take_files(workdir, blob)
    blob.add(META, json.dumps(meta, sort_keys=True).encode())
    data = blob.pack()
    meta["id"] = hashlib.sha256(data).hexdigest()
    meta["bytes"] = len(data)
    return data, meta


def _z(raw: bytes) -> list[str]:
    return [p for p in raw.decode(errors="surrogateescape").split("\0") if p]


def _take_git(top: str, workdir: str, blob: _Blob) -> dict[str, Any]:
    rel = os.path.relpath(workdir, top)
    try:
        commit = _git(top, "rev-parse", "--verify", "-q", "HEAD").decode().strip()
    except SnapshotError:
        commit = ""  # a repository without a commit yet: every file is new
    branch = _git(top, "rev-parse", "--abbrev-ref", "HEAD").decode().strip() if commit else ""
    changed: list[str] = []
    deleted: list[str] = []
    diff = b""
    if commit:
        status = _z(_git(top, "diff", "HEAD", "--name-status", "-z", "--no-renames", "--ignore-submodules"))
        for code, path in zip(status[::2], status[1::2], strict=False):
            (deleted if code.startswith("D") else changed).append(path)
        diff = _git(top, "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff", "--ignore-submodules")
    else:
        changed = _z(_git(top, "ls-files", "-z", "--cached"))
    # Bytecode is no code of yours even where .gitignore forgot it.
    untracked = [
        p for p in _z(_git(top, "ls-files", "-z", "--others", "--exclude-standard"))
        if "__pycache__/" not in p and not p.endswith((".pyc", ".pyo"))
    ]
    for path in changed + untracked:
        full = os.path.join(top, path)
        if os.path.lexists(full):
            blob.add_file(FILES + path, full)
            if blob.size > blob.cap:
                break  # enough read to say so
    if diff:
        blob.add(DIFF, diff)
    blob.check_cap(f"{top} (uncommitted changes and untracked files)")
    return {
        "kind": "git",
        "repo": top,
        "rel": "" if rel == "." else rel,
        "commit": commit,
        "branch": branch if branch != "HEAD" else "",
        "changed": sorted(changed),
        "deleted": sorted(deleted),
        "untracked": sorted(untracked),
        "diff_bytes": len(diff),
    }


def _is_source(name: str, size: int) -> bool:
    if name in SOURCE_NAMES:
        return True
    low = name.lower()
    if not low.endswith(SOURCE_SUFFIXES):
        return False
    return size <= SMALL or not low.endswith(SMALL_ONLY)


def _take_files(workdir: str, blob: _Blob) -> dict[str, Any]:
    """Outside git: the source files under `workdir`, by name (data is not code). Only
    names are looked at for most entries (scandir), so a data directory costs little."""
    seen = 0
    files: list[str] = []
    if workdir in ("/", "/tmp", "/var/tmp") or workdir == os.path.realpath(os.path.expanduser("~")):
        raise NotCode(f"{workdir} is not a code directory")
    todo = [(workdir, 0)]
    while todo:
        root, depth = todo.pop()
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError:
            continue
        seen += len(entries)
        if seen > MAX_FILES:
            raise NotCode(f"{workdir} holds over {MAX_FILES} files and is not in git")
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if depth + 1 < MAX_DEPTH and not e.name.startswith(".") and e.name not in SKIP_DIRS:
                    todo.append((e.path, depth + 1))
                continue
            low = e.name.lower()
            if e.name not in SOURCE_NAMES and not low.endswith(SOURCE_SUFFIXES):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) or not _is_source(e.name, st.st_size):
                continue
            rel = os.path.relpath(e.path, workdir)
            blob.add_file(FILES + rel, e.path)
            files.append(rel)
            if blob.size > blob.cap:
                blob.check_cap(workdir)
    return {"kind": "files", "repo": workdir, "rel": "", "commit": "", "branch": "",
            "changed": [], "deleted": [], "untracked": sorted(files), "diff_bytes": 0}


def summary(meta: dict[str, Any]) -> str:
    """`3f2a91c (main, dirty: 2 files, 4.1 KiB diff)` or `12 source files (not in git)`."""
    if meta.get("kind") == "git":
        if not meta.get("commit"):
            return f"{len(_strs(meta.get('untracked')))} files (a repository with no commit yet)"
        branch = str(meta.get("branch") or "")
        parts = [branch if len(branch) <= 80 else branch[:77] + "..."] if branch else ["detached"]
        dirty = len(_strs(meta.get("changed"))) + len(_strs(meta.get("deleted"))) + len(_strs(meta.get("untracked")))
        if dirty:
            diff = meta.get("diff_bytes", 0)
            new = len(_strs(meta.get("untracked")))
            what = f"dirty: {dirty} file{'s' if dirty != 1 else ''}"
            what += f" ({new} new)" if new and new < dirty else " (new)" if new else ""
            parts.append(what + (f", {human(diff)} diff" if diff else ""))
        else:
            parts.append("clean")
        return f"{str(meta['commit'])[:7]} ({', '.join(parts)})"
    n = len(_strs(meta.get("untracked")))
    return f"{n} source file{'s' if n != 1 else ''} (not in git)"


# -- reading a blob (the materializer and `labq diff`) -------------------------------------------
def read(data: bytes) -> tuple[dict[str, Any], dict[str, tarfile.TarInfo], tarfile.TarFile]:
    """(meta, the frozen members it lists, the open tar). The meta is the first member
    (what the daemon read), and only the files it lists count: a blob cannot run other
    code than its meta (and so `labq show`) says."""
    tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")  # noqa: SIM115 - the caller closes it
    first = tar.next()
    if first is None or first.name != META or not first.isfile():
        raise SnapshotError("not a labq code snapshot")
    f = tar.extractfile(first)
    try:
        meta = json.loads(f.read(1 << 20)) if f is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise SnapshotError("not a labq code snapshot")
    listed = {FILES + p for p in (*_strs(meta.get("changed")), *_strs(meta.get("untracked")))}
    members: dict[str, tarfile.TarInfo] = {}
    for m in tar:
        if m.name in listed or m.name == DIFF:
            members.setdefault(m.name, m)  # the first of a name, as the daemon would
    return meta, members, tar


def _strs(v: Any) -> list[str]:
    return [x for x in v if isinstance(x, str)] if isinstance(v, list) else []


def _extract(tar: tarfile.TarFile, m: tarfile.TarInfo, name: str, dest: str) -> None:
    """One member, written only inside `dest`: no absolute name, no `..`, no write
    through a link (by hand: the system python of a node may lack tarfile's filters)."""
    parts = name.split("/")
    if not name or name.startswith("/") or ".." in parts:
        raise SnapshotError(f"refusing a snapshot entry named {name!r}")
    target = os.path.join(dest, *[p for p in parts if p not in ("", ".")])
    parent = os.path.dirname(target)
    real = os.path.realpath(dest)

    def inside(path: str) -> bool:
        r = os.path.realpath(path)
        return r == real or r.startswith(real + os.sep)

    # Checked before anything is made: a directory entry under a link to /etc would
    # otherwise be made there (as whoever unpacks it: an admin's `labq diff`).
    if not inside(parent) or (m.isdir() and not inside(target)):
        raise SnapshotError(f"refusing a snapshot entry that leaves its directory: {name!r}")
    if m.isdir():
        os.makedirs(target, mode=0o755, exist_ok=True)
        return
    os.makedirs(parent, mode=0o755, exist_ok=True)
    if not inside(parent):
        raise SnapshotError(f"refusing a snapshot entry that leaves its directory: {name!r}")
    if os.path.lexists(target) and not os.path.isdir(target):
        os.unlink(target)  # a changed file replaces the commit's
    if m.issym():
        os.symlink(m.linkname, target)  # as the owner: a link reaches only what they can
    elif m.isfile():
        src = tar.extractfile(m)
        if src is None:
            return
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if m.mode & 0o100 else 0o644)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out)


def materialize(data: bytes, dest: str, with_commit: bool = True) -> tuple[str, dict[str, Any]]:
    """Unpack the snapshot into the new directory `dest`; the directory to run in.

    Runs as the job's owner: it reads their repository and writes under their own
    cache. Every name is checked (`_extract`), so even a crafted blob writes only inside
    `dest`, and only with its owner's rights."""
    meta, members, tar = read(data)
    os.makedirs(dest, mode=0o700)
    if with_commit and meta.get("kind") == "git" and meta.get("commit"):
        repo = meta["repo"]
        if not os.path.isdir(repo):
            raise SnapshotError(f"its repository {repo} is not on this node")
        try:
            archive = subprocess.run(
                ["git", "-C", repo, "archive", "--format=tar", meta["commit"]],
                capture_output=True, timeout=600, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            )
        except FileNotFoundError:
            raise SnapshotError("git is not installed on this node") from None
        if archive.returncode != 0:
            why = archive.stderr.decode(errors="replace").strip().splitlines()
            raise SnapshotError(f"cannot read commit {meta['commit'][:12]} from {repo}: {why[-1] if why else 'git archive failed'}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout), mode="r:") as commit_tar:
            for m in commit_tar.getmembers():
                _extract(commit_tar, m, m.name, dest)
        for path in _strs(meta.get("deleted")):
            target = os.path.join(dest, path)
            if os.path.realpath(target).startswith(os.path.realpath(dest) + os.sep) and os.path.lexists(target):
                os.unlink(target)
    for name, m in members.items():
        if name.startswith(FILES):
            _extract(tar, m, name[len(FILES):], dest)
    tar.close()
    run_in = os.path.join(dest, meta.get("rel") or "")
    os.makedirs(run_in, exist_ok=True)
    return run_in, meta


def link_outside(run_in: str, submit_dir: str, depth: int = 0) -> None:
    """Data and outputs stay where they were: each entry of the submit directory the
    snapshot does not hold (data/, checkpoints/, .venv, exp/data/) is a link to the
    original. Only directories the copy has are descended into, so it costs what the
    code's own tree costs, not what the data's does."""
    try:
        names = os.listdir(submit_dir)
    except OSError:
        return
    for name in names:
        if name == ".git":
            continue  # the job's `git rev-parse HEAD` must not see the live tree's HEAD
        here, there = os.path.join(run_in, name), os.path.join(submit_dir, name)
        if not os.path.lexists(here):
            try:
                os.symlink(there, here)
            except OSError:
                pass
        elif depth < 32 and os.path.isdir(here) and not os.path.islink(here) and os.path.isdir(there):
            link_outside(here, there, depth + 1)


def _prune(parent: str) -> None:
    cutoff = time.time() - KEEP_DAYS * 86400
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        path = os.path.join(parent, name)
        try:
            if os.lstat(path).st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def code_root(home: str) -> str:
    """Where a user's materialized copies go on a node: their cache directory."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return os.path.join(base, "labq", "code")


def _materialize_main() -> None:
    """`python -I -c <this file> KEY SUBMIT_DIR HOME`, as the job's owner, blob on
    stdin: prints the directory to run in; on failure one line on stderr and exit 1."""
    key, submit_dir, home = sys.argv[1], sys.argv[2], sys.argv[3]
    data = sys.stdin.buffer.read()
    try:
        root = code_root(home)
        os.makedirs(root, mode=0o700, exist_ok=True)
        _prune(root)
        dest = os.path.join(root, key)
        if os.path.lexists(dest):
            shutil.rmtree(dest)
        run_in, meta = materialize(data, dest)
        if submit_dir:
            link_outside(run_in, submit_dir)
        if meta.get("rel") and meta.get("repo"):
            link_outside(dest, meta["repo"])  # ../data from a subdirectory
    except (SnapshotError, OSError, tarfile.TarError, ValueError) as e:
        sys.stderr.write(f"{e}\n")
        sys.exit(1)
    sys.stdout.write(run_in)
