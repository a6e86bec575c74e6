"""Job logs on the head node: one file per job, written by the event pump alone.

Bytes arrive from the nodes as (offset, data) and are written at their offset, so a
report delivered twice lands on itself. Each file is 0600 in the daemon's 0700 logs
dir: the API, not the file system, decides who reads a log. `log_max_bytes` bounds a
job's log (the node already cut the stream); `user_log_max_bytes` bounds what one
person keeps, removing their oldest ended jobs' logs first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from scheduler.store import JobRow, Store
from scheduler.units import format_size

log = logging.getLogger("labq.logs")

ATTEMPT_HEADER = 200  # room for the "--- labq: attempt N on NODE ---" line


class LogBook:
    def __init__(self, logs_dir: Path, store: Store, max_bytes: int, user_max_bytes: int) -> None:
        self.dir = logs_dir
        self.store = store
        self.max_bytes = max_bytes
        self.user_max_bytes = user_max_bytes

    def path(self, job_id: int) -> Path:
        return self.dir / f"{int(job_id)}.log"

    def err_path(self, job_id: int, attempt: int) -> Path:
        """The stderr of one attempt, apart: a copy of the log's stderr parts."""
        return self.dir / f"{int(job_id)}.{int(attempt)}.err"

    def rank_path(self, job_id: int, attempt: int, rank: int) -> Path:
        """Rank `rank`'s output of one attempt of a job over several nodes (rank 0's is
        the job's log); each is bounded as a job's log is."""
        return self.dir / f"{int(job_id)}.{int(attempt)}.r{int(rank)}.log"

    def write_rank(self, job: JobRow, rank: int, offset: int, data: bytes) -> None:
        """`data` at `offset` of rank `rank`'s output (a report applied twice lands on itself)."""
        if offset >= self.max_bytes:
            return
        try:
            self._pwrite(self.rank_path(job.id, job.attempt, rank), data[: self.max_bytes - offset], offset)
        except OSError as e:
            log.error("job %d rank %d: %d log bytes lost: %s", job.id, rank, len(data), e.strerror or e)

    def size(self, job_id: int) -> int:
        try:
            return self.path(job_id).stat().st_size
        except OSError:
            return 0

    def room(self, job: JobRow) -> int:
        """Bytes this attempt may still add to the job's log (earlier attempts used some)."""
        used = self.size(job.id)
        return max(0, self.max_bytes - used - (ATTEMPT_HEADER if used else 0))

    def open_attempt(self, job: JobRow) -> int:
        """Where this attempt's bytes start in the file (after a header from the 2nd on)."""
        if job.log_removed is not None:
            self.store.set_fields(job.id, log_removed=None)
        fd = os.open(self.path(job.id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        if job.attempt <= 1:
            os.close(fd)
            return 0
        with open(fd, "ab") as f:
            f.write(f"\n--- labq: attempt {job.attempt} on {job.node_name} ---\n".encode())
            return f.tell()

    def write(self, job: JobRow, offset: int, data: bytes, err: Iterable[Sequence[int]] = ()) -> None:
        """`data` at `offset` of this attempt's output; `err`: its stderr parts as (offset
        in the output, offset in stderr, length), copied to the attempt's stderr file.
        Both at fixed offsets: a report applied twice lands on itself."""
        pos = job.log_base + offset
        if pos >= self.max_bytes:
            return
        data = data[: self.max_bytes - pos]
        try:
            self._pwrite(self.path(job.id), data, pos)
            for at, err_at, length in err:
                part = data[at - offset : at - offset + length]
                if part:
                    self._pwrite(self.err_path(job.id, job.attempt), part, err_at)
        except OSError as e:
            # A full disk costs log bytes, not the job's state events behind them.
            log.error("job %d: %d log bytes lost: %s", job.id, len(data), e.strerror or e)

    @staticmethod
    def _pwrite(path: Path, data: bytes, pos: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.pwrite(fd, data, pos)
        finally:
            os.close(fd)

    def remove(self, job_id: int) -> None:
        """A job's log and its stderr files."""
        self.path(job_id).unlink(missing_ok=True)
        for pattern in (f"{int(job_id)}.*.err", f"{int(job_id)}.*.r*.log"):  # stderr copies, other ranks
            for p in self.dir.glob(pattern):
                p.unlink(missing_ok=True)

    def attempt_ended(self, job: JobRow, now: float) -> None:
        """Record the log's size; past the owner's cap, remove their oldest ended jobs'
        logs (each job's history says so)."""
        # Its stderr apart is a second copy of some of those bytes: it counts too.
        err = 0
        for attempt in range(1, job.attempt + 1):
            try:
                err += self.err_path(job.id, attempt).stat().st_size
            except OSError:
                pass
        # The other ranks' logs of a job over several nodes count too.
        err += sum(p.stat().st_size for p in self.dir.glob(f"{int(job.id)}.*.r*.log"))
        self.store.set_fields(job.id, log_bytes=self.size(job.id) + err)
        cap = self.user_max_bytes
        total = self.store.user_log_bytes(job.user)
        while total > cap:
            victims = self.store.oldest_kept_logs(job.user)
            if not victims:
                break
            for victim, n in victims:
                if total <= cap:
                    break
                self.remove(victim)
                self.store.log_removed(
                    victim,
                    now,
                    f"log removed: {job.user}'s logs passed the per-user cap of "
                    f"{format_size(cap)} (user_log_max_bytes), oldest first",
                )
                total -= n
