"""Files and directories a privileged labq creates, made so no other user can touch them.

A root daemon (and the root Ray workers that run jobs) must never follow a path that
another user can influence: a directory someone else made first, a symlink planted
where labq will write, a file another user can read, lock or replace. The rules:

- everything labq keeps (state dir, logs, database, lock, Ray's temp dir, node job
  dirs) lives in a directory owned by labq's user that no one else may write, and is
  created with `umask 077`;
- a directory is created with `mkdir` and then *checked* (`lstat`: a real directory,
  our owner, no write bit for group/other); one that fails the check is refused with
  a sentence that says what is wrong, never "fixed" by following it;
- a file root writes on a user's behalf is created with O_CREAT|O_EXCL|O_NOFOLLOW in
  such a directory and written through the descriptor it was opened with.

Standard library only: the CLI and the runner import it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import time
from dataclasses import dataclass
from pathlib import Path


class UnsafePath(Exception):
    """A path labq will not use because another user could control it."""


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def private_dir(path: Path, mode: int = 0o700, parents: bool = True) -> Path:
    """Create `path` (mode `mode`) or check an existing one: ours, a real directory,
    writable by nobody else. Raises UnsafePath with the reason otherwise."""
    me = os.geteuid()
    if parents and not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o755 if mode & 0o055 else 0o700)
    try:
        os.mkdir(path, mode)
        created = True
    except FileExistsError:
        created = False
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} is a symbolic link: labq will not follow it (remove it)")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory (remove it)")
    if st.st_uid != me:
        raise UnsafePath(
            f"{path} belongs to {_owner_name(st.st_uid)}, not {_owner_name(me)}: "
            "another user made it first; remove it"
        )
    if created or st.st_mode & 0o777 != mode:
        # mkdir's mode passes through the umask; an existing dir of ours gets its mode back.
        os.chmod(path, mode)
    return path


def create_exclusive(path: Path, mode: int = 0o644) -> int:
    """A new file at `path`, never an existing one or a link's target; returns its fd.

    The directory must be one only we can write (see `private_dir`), so an earlier
    file of ours may be removed first: nobody else can have put it there.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        os.unlink(path)
        fd = os.open(path, flags, mode)
    os.fchmod(fd, mode)
    return fd


@dataclass(frozen=True)
class Exposure:
    path: str
    problem: str


def exposure(path: Path, owner: int | None = None) -> str:
    """Why another user could read, write or lock `path` ('' when nobody can)."""
    owner = os.geteuid() if owner is None else owner
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ""
    except OSError as e:
        return f"cannot check: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if st.st_uid != owner:
        return f"belongs to {_owner_name(st.st_uid)}, not {_owner_name(owner)}"
    mode = st.st_mode & 0o777
    if mode & 0o022:
        return f"mode {mode:04o}: writable by others"
    if stat.S_ISDIR(st.st_mode):
        if mode & 0o044:
            return f"mode {mode:04o}: others can list it"
    elif mode & 0o044:
        # Readable means lockable too (flock needs only an open descriptor).
        return f"mode {mode:04o}: others can read (and lock) it"
    return ""


def audit_tree(root: Path, limit: int = 20000, owner: int | None = None) -> list[Exposure]:
    """Every entry under `root` (itself included) that others could touch, stopping
    below a directory others cannot enter (what is inside is then out of their reach)."""
    out: list[Exposure] = []
    seen = 0
    stack = [root]
    while stack and seen < limit:
        p = stack.pop()
        seen += 1
        problem = exposure(p, owner)
        if problem:
            out.append(Exposure(str(p), problem))
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            if not problem and st.st_mode & 0o011 == 0:
                continue  # nobody else can enter: the rest is private whatever its modes
            try:
                stack.extend(sorted(p.iterdir(), reverse=True))
            except OSError:
                continue
    return out


def node_job_dir() -> Path:
    """This node's directory for the files a runner keeps beside a job (the deadline file).

    Root: /run/labq-jobs (0711: jobs may read their own file by name, nobody else may
    write or list). Another user: their own runtime dir, or /tmp/labq-UID/jobs after
    checking that they, not someone else, made /tmp/labq-UID.
    """
    if os.geteuid() == 0:
        return Path("/run/labq-jobs")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == os.geteuid():
        return Path(runtime) / "labq-jobs"
    return Path(f"/tmp/labq-{os.geteuid()}") / "jobs"


def ensure_node_job_dir() -> Path:
    base = node_job_dir()
    if os.geteuid() == 0:
        return private_dir(base, 0o711)
    if base.parent.name.startswith("labq-"):
        private_dir(base.parent, 0o700, parents=False)
    return private_dir(base, 0o700)


def tighten(directory: Path, into: tuple[str, ...] = ()) -> int:
    """Take group/other access off what labq keeps in `directory` (and in its
    sub-directories named in `into`): state dirs made by an older labq were 0755 with
    0644 files. Only our own plain files and directories; links are left alone.
    Returns how many modes changed."""
    changed = 0
    for d in (directory, *(directory / name for name in into)):
        try:
            entries = [d, *d.iterdir()] if d == directory else list(d.iterdir())
        except OSError:
            continue
        for p in entries:
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid() or not st.st_mode & 0o077:
                continue
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                with contextlib.suppress(OSError):
                    os.chmod(p, st.st_mode & 0o700)
                    changed += 1
    return changed


def _searchable(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


_GROUPS: dict[int, tuple[float, set[int] | None]] = {}
GROUPS_TTL_S = 60.0


def _groups(uid: int) -> set[int] | None:
    """The groups of `uid` (None: no such account), remembered for a minute: looking
    them up reads the group database, ~150 µs, on every submission otherwise."""
    now = time.monotonic()
    hit = _GROUPS.get(uid)
    if hit is not None and now - hit[0] < GROUPS_TTL_S:
        return hit[1]
    try:
        pw = pwd.getpwuid(uid)
        gids: set[int] | None = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except KeyError:
        gids = None
    if len(_GROUPS) > 10000:
        _GROUPS.clear()
    _GROUPS[uid] = (now, gids)
    return gids


def workdir_problem(path: str, uid: int) -> str:
    """What is wrong with `path` as a job's working directory, as far as user `uid`
    could find out by themselves; '' when it looks fine or when they could not tell.

    A root daemon must not answer "does not exist" for /root/.ssh/x and "ok" for
    /root/.ssh: that tells anyone what lies behind a directory they cannot enter. So
    the walk looks at a name only inside directories `uid` may search (by the mode
    bits), and stops without a verdict at the first one they may not, or at a link.
    The runner then enters the directory as the user, and the job fails with the
    reason if it cannot."""
    gids = _groups(uid)
    if gids is None:
        return ""
    # One descriptor per step, never the path again: a user who swaps a directory of
    # theirs for a link between our look at it and our look inside it must not steer
    # root into a directory they cannot enter (a name is resolved once, here).
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open("/", flags)
    except OSError:
        return ""
    try:
        for part in Path(path).parts[1:]:
            try:
                st = os.fstat(fd)
            except OSError:
                return ""
            if not _searchable(st, uid, gids):
                return ""  # they could not tell what is inside: neither do we
            try:
                lst = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return "does not exist"
            except OSError:
                return ""
            if stat.S_ISLNK(lst.st_mode):
                return ""  # where it points is for the runner to find out, as the user
            if not stat.S_ISDIR(lst.st_mode):
                return "is not a directory"
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError:
                return ""  # it changed under us: no verdict
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    return ""


def untrusted_ancestor(path: Path, final_private: bool = True) -> str:
    """Why another user could replace `path` or one of the directories above it; ''
    when none can. Each directory on the way must belong to root or to us, and be
    writable by no one else, except that a sticky directory (/tmp) may be on the way:
    there nobody can rename or remove what others own. `final_private`: `path` itself
    may not be sticky-and-writable either (we create files in it by name)."""
    me = os.geteuid()
    real = Path(os.path.realpath(path))
    chain = [real, *real.parents]
    for i, p in enumerate(chain):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        except OSError as e:
            return f"{p}: cannot check ({e.strerror})"
        if st.st_uid not in (0, me):
            return f"{p} belongs to {_owner_name(st.st_uid)}"
        writable = st.st_mode & 0o022
        sticky = st.st_mode & stat.S_ISVTX
        if writable and (not sticky or (i == 0 and final_private)):
            return f"{p} is writable by others (mode {st.st_mode & 0o7777:04o})"
    # A link on the way must be ours (or root's) too: whoever owns it chooses its target.
    cur = Path(path)
    for p in [cur, *cur.parents]:
        try:
            lst = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISLNK(lst.st_mode) and lst.st_uid not in (0, me):
            return f"{p} is a link that belongs to {_owner_name(lst.st_uid)}"
    return ""
