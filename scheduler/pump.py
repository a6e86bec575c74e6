"""The event pump: what the nodes report, stored in order, acknowledged once stored.

Owns the acknowledgement cursor. It long-polls the launcher for events after the last
one stored (started, log bytes, finished), hands each to the job-control core, and
acknowledges what the store took: the launcher forgets only that. An event the store
cannot take (a full disk, a locked database) is not acknowledged, so it comes again
and is applied again once the store can take it; applying an event twice changes
nothing (state changes carry the states they expect; log bytes land at their offsets).

A launcher that stops answering means Ray is gone: after `ray_lost_after_s` (5 s), the pump asks
the Ray link to restart the daemon (the scheduler thread may be stuck in a Ray call
by then; this one is not).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from scheduler.control import JobControl
from scheduler.launcher import Launcher, LauncherDown
from scheduler.store import Store, StoreError, UnknownJob

log = logging.getLogger("labq.events")

ACK_KEY = "executor_ack"


class EventPump:
    def __init__(self, store: Store, control: JobControl) -> None:
        self.store = store
        self.control = control
        self.ack = 0

    def reset_if_new(self, launcher_id: str) -> None:
        """A new launcher (Executor) numbers its events from 1 again."""
        if self.store.get_meta("executor_id") != launcher_id:
            self.store.set_meta("executor_id", launcher_id)
            self.store.set_meta(ACK_KEY, "0")

    def apply(self, batch: list[tuple[int, dict[str, object]]]) -> bool:
        """Apply a batch in order and store the cursor; False when the store refused one."""
        applied = self.ack
        refused = False
        for seq, event in batch:
            try:
                self.control.apply(event)
            except UnknownJob:
                log.warning("event for unknown job %s", event.get("job_id"))
            except Exception as e:  # noqa: BLE001 - e.g. the disk is full
                log.error("cannot record an event of job %s yet: %s", event.get("job_id"), e)
                refused = True
                break
            applied = seq
        if applied != self.ack:
            try:
                self.store.set_meta(ACK_KEY, str(applied))
                self.ack = applied
            except StoreError as e:
                log.error("cannot record event progress yet: %s", e)
                refused = True
        return not refused

    def loop(
        self,
        stop: threading.Event,
        ready: threading.Event,
        launcher: Callable[[], Launcher | None],
        down: Callable[[str], None],
        up: Callable[[], None],
        restart: Callable[[], None],
        closing: Callable[[], bool],
        wake: Callable[[], None],
        lost_after: float = 5.0,
    ) -> None:
        # Until the launcher is attached and reconciled (at start, or once an external
        # head is back): its event numbering may have started again meanwhile.
        while not ready.wait(0.5):
            if stop.is_set():
                return
        self.ack = int(self.store.get_meta(ACK_KEY) or 0)
        failing_since: float | None = None
        while not stop.is_set():
            current = launcher()
            assert current is not None
            try:
                batch = current.poll(self.ack, 0.5)
            except LauncherDown as e:
                if current is launcher():
                    down(str(e))
                failing_since = failing_since or time.monotonic()
                if not closing() and time.monotonic() - failing_since > lost_after:
                    restart()
                time.sleep(1.0)
                continue
            failing_since = None
            up()
            if not batch:
                continue
            if not self.apply(batch):
                time.sleep(1.0)  # the store refused one: give it a moment
            wake()
