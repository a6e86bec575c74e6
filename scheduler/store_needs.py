"""What waiting jobs need of a node, read each pass without their specs: a directory
(no shared filesystem, issue 14) and a kind of node (a GPU type and labels, issue 15).

A mixin of `Store` (store.py), which provides the connection; the columns are written
with the job itself (`Store._insert_job`, `ArrayTables._insert_task`).
"""

from __future__ import annotations

from scheduler.shapes import JobState
from scheduler.store_base import Tables


class NeedTables(Tables):
    def wanted_kinds(self) -> dict[int, str]:
        """Waiting job id -> the kind of node it must run on (JobRow.wants), for those
        that name one (read each pass: few jobs do)."""
        rows = self._reader().execute(
            "SELECT id, wants FROM jobs WHERE state=? AND wants != '' AND array_size = 0", (JobState.PENDING.value,)
        )
        return {int(i): str(w) for i, w in rows}

    def needs_dirs(self) -> dict[int, tuple[int, str, str]]:
        """Waiting job id -> (owner's uid, their name, the directories its node must have,
        one per line), for the jobs that need any; read only on a cluster."""
        rows = self._reader().execute(
            "SELECT id, uid, user, needs_dir FROM jobs WHERE state=? AND needs_dir != '' AND array_size = 0",
            (JobState.PENDING.value,),
        )
        return {int(i): (int(u), str(n), str(d)) for i, u, n, d in rows}
