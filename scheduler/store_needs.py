"""What waiting jobs need of a node that a pass reads apart from POLICY_COLUMNS, only on
a cluster: the directories their node must have (no shared filesystem, issue 14).

A mixin of `Store` (store.py), which provides the connection; the columns are written
with the job itself (`Store._insert_job`, `ArrayTables._insert_task`).
"""

from __future__ import annotations

from scheduler.shapes import JobState
from scheduler.store_base import Tables


class NeedTables(Tables):
    def needs_dirs(self) -> dict[int, tuple[int, str, str]]:
        """Waiting job id -> (owner's uid, their name, the directories its node must have,
        one per line), for the jobs that need any; read only on a cluster."""
        rows = self._reader().execute(
            "SELECT id, uid, user, needs_dir FROM jobs WHERE state=? AND needs_dir != '' AND array_size = 0",
            (JobState.PENDING.value,),
        )
        return {int(i): (int(u), str(n), str(d)) for i, u, n, d in rows}
