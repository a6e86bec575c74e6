"""Whether a submission may enter the queue: the same checks for a real one and a preview.

Pure checks over the config, the node sizes and the caller; nothing is written here.
Called from API threads.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import Any

from scheduler import safefs
from scheduler.auth import Caller, user_name
from scheduler.codestore import CodeStore, code_ref
from scheduler.config import DaemonConfig
from scheduler.errors import DaemonError
from scheduler.gputypes import describe_wants, matching, parse_wants
from scheduler.job import JobSpec, JobState
from scheduler.nodes import NodeBook, NodeRecord
from scheduler.present import memory
from scheduler.store import Store, UnknownJob
from scheduler.units import format_duration


class Admission:
    def __init__(self, config: DaemonConfig, nodes: NodeBook, store: Store, codes: CodeStore | None = None) -> None:
        self.config = config
        self.codes = codes
        self.nodes = nodes
        self.store = store
        self.uid = os.geteuid()
        self.user = user_name(self.uid)
        self.closed = False  # `labq down`: no new jobs
        self.clustered: Callable[[], bool] = lambda: False  # the daemon sets Scheduler.clustered
        self._rate_lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, when)
        self._pending: dict[str, int] = {}  # waiting jobs per user at the last pass
        self._since: dict[str, int] = {}  # submissions since then

    def accept(self, caller: Caller, spec_data: dict[str, Any]) -> JobSpec:
        """The validated spec, or a DaemonError saying in one line what is wrong."""
        from pydantic import ValidationError

        from scheduler.job import first_error

        c = self.config
        if self.closed:
            raise DaemonError("the daemon is shutting down and accepts no new jobs", 503)
        if self.uid != 0 and caller.uid != self.uid and not c.shared_account:
            raise DaemonError(
                f"this labq daemon runs as {self.user} and only takes {self.user}'s jobs "
                "(set shared_account: true in its config if the team shares that account)",
                403,
            )
        size = len(json.dumps(spec_data, default=str))
        if size > c.max_spec_bytes:
            raise DaemonError(
                f"the job's spec is {size // 1024} KiB, over this daemon's max_spec_bytes of "
                f"{c.max_spec_bytes // 1024} KiB (put large inputs in a file the job reads)",
                413,
            )
        spec_data = self._code(caller, spec_data)
        try:
            spec = JobSpec.model_validate(spec_data)
        except ValidationError as e:
            field_name, msg = first_error(e)
            raise DaemonError(f"{field_name}: {msg}" if field_name else msg) from None
        if spec.is_array:
            self._check_expanded(spec)
        if spec.grace is not None and spec.grace > c.max_grace_s:
            raise DaemonError(f"grace: at most {format_duration(c.max_grace_s)} on this cluster (max_grace_s)")
        self._check_fits(spec)
        self._check_deps(caller, spec)
        self._check_notify(spec)
        if spec.workdir and not self.clustered():
            # On a cluster the head's disk says nothing of the others' (no shared
            # filesystem): there the scheduler places the job where the directory is,
            # or says that no node has it.
            problem = safefs.workdir_problem(spec.workdir, caller.uid)
            if problem:
                raise DaemonError(f"workdir {spec.workdir} {problem}")
        return spec

    def _check_expanded(self, spec: JobSpec) -> None:
        """Each task is stored as its own spec, placeholders replaced: a 45 KiB sweep
        once made 150 MB of task rows. Bounded as expanded, not as submitted."""
        c = self.config
        each = spec.task_bytes_bound()
        if each > c.max_spec_bytes:
            raise DaemonError(
                f"each task's spec would be up to {each // 1024} KiB with its sweep values and index filled in, "
                f"over this daemon's max_spec_bytes of {c.max_spec_bytes // 1024} KiB",
                413,
            )
        n = len(spec.array_plan()[0])
        if n * each > c.max_array_bytes:
            raise DaemonError(
                f"the array's {n:,} tasks would take up to {n * each / 1024**2:.0f} MiB together, over this "
                f"daemon's max_array_bytes of {c.max_array_bytes / 1024**2:.0f} MiB (fewer tasks, or a shorter "
                "command and environment)",
                413,
            )

    def _code(self, caller: Caller, spec_data: dict[str, Any]) -> dict[str, Any]:
        """A job's `code` names a snapshot the caller uploaded; what it says about that
        code is the daemon's own reading of it, whatever the client sent."""
        code = spec_data.get("code")
        if code is None:
            return spec_data
        if not isinstance(code, dict) or not isinstance(code.get("id"), str):
            raise DaemonError('code: must be {"id": SHA256} of a snapshot you uploaded')
        if not self.config.code_snapshots or self.codes is None:
            raise DaemonError("code: snapshots are off on this cluster (code_snapshots: false); submit with --no-snapshot")
        sha = code["id"]
        return {**spec_data, "code": code_ref(self.codes.meta(caller.uid, sha), sha)}

    def _check_notify(self, spec: JobSpec) -> None:
        """Said at submit rather than found out when the job ends: a webhook labq will
        not call (not public, not allowed), or a kind of notification turned off."""
        from scheduler.notify import NotifyRefused, check_webhook

        if not spec.notify:
            return
        if "webhook" in spec.notify:
            if not self.config.notify_webhooks:
                raise DaemonError("notify: webhooks are off on this cluster (notify_webhooks: false)")
            try:
                check_webhook(spec.notify["webhook"], self.config.notify_allow_hosts)
            except NotifyRefused as e:
                raise DaemonError(f"notify: {e}") from None
        elif not self.config.notify_commands:
            raise DaemonError("notify: commands are off on this cluster (notify_commands: false)")

    def _check_deps(self, caller: Caller, spec: JobSpec) -> None:
        """A job waits only for jobs that exist and that its owner may see (their own, or
        anyone's for an admin); `--after` on a job that already failed would never start."""
        for dep in (*spec.after, *spec.after_any):
            flag = "--after" if dep in spec.after else "--after-any"
            try:
                row = self.store.get(dep)
            except UnknownJob:
                raise DaemonError(f"{flag} {dep}: there is no job {dep}") from None
            if not caller.may_see(row.user):
                raise DaemonError(f"{flag} {dep}: job {dep} belongs to {row.user}; a job may wait only for its owner's jobs", 403)
            if flag == "--after" and row.state.terminal and row.state is not JobState.SUCCEEDED:
                raise DaemonError(
                    f"--after {dep}: job {dep} already ended {row.state.value}, so this job could never start "
                    "(--after-any waits for any end)"
                )

    def check_rate(self, caller: Caller, now: float) -> None:
        """At most max_submissions_per_minute from one person (a bucket that refills
        continuously, so a burst of that many is fine): a script in a loop cannot fill
        the disk with jobs it cancels again at once."""
        per_min = self.config.max_submissions_per_minute
        if per_min <= 0 or caller.admin:
            return  # admins are trusted with the daemon as a whole
        with self._rate_lock:
            level, at = self._buckets.get(caller.user, (float(per_min), now))
            level = min(float(per_min), level + (now - at) * per_min / 60.0)
            if level < 1.0:
                raise DaemonError(
                    f"{caller.user} submitted {per_min} jobs within a minute, the most this daemon "
                    "takes (max_submissions_per_minute); wait a little and submit the rest",
                    429,
                )
            self._buckets[caller.user] = (level - 1.0, now)

    def seen_pending(self, counts: dict[str, int]) -> None:
        """Each pass tells how many jobs everyone has waiting (the scheduler's count)."""
        with self._rate_lock:
            self._pending = dict(counts)
            self._since = {}

    def check_room(self, caller: Caller, tasks: int = 1) -> None:
        """One person may keep at most max_pending_jobs_per_user jobs waiting; an array
        counts each task not started yet (`tasks`: what this submission adds).

        The last pass's count plus what they submitted since is an upper bound; only
        near the cap is the store asked (counting is linear in their queue, and a
        submission must not cost more the longer the queue is)."""
        cap = self.config.max_pending_jobs_per_user
        if tasks > cap:
            raise DaemonError(
                f"an array of {tasks:,} tasks is more than this daemon queues for one person "
                f"(max_pending_jobs_per_user: {cap}); split it, or ask an admin",
                429,
            )
        with self._rate_lock:
            known = self._pending.get(caller.user)
            since = self._since.get(caller.user, 0) + tasks
            self._since[caller.user] = since
        if known is not None and known + since < cap:
            return
        waiting = self.store.count_jobs(caller.user, (JobState.PENDING,)) + self.store.unstarted_tasks(caller.user)
        if waiting + tasks > cap:
            with self._rate_lock:
                self._since[caller.user] -= tasks
            raise DaemonError(
                f"{caller.user} already has {waiting} jobs waiting (an array's tasks count one each), the most "
                f"this daemon queues for one person is {cap} (max_pending_jobs_per_user); wait for some to "
                "start or cancel some",
                429,
            )

    @staticmethod
    def _check_kind(spec: JobSpec, nodes: list[NodeRecord]) -> None:
        """A GPU type or label no node has is refused (it would wait forever), once the
        nodes have said what they have (a type is known after its monitor's first report)."""
        view = [(n.id, n.gpu_type, n.labels) for n in nodes if n.trusted]
        gtype, labels = parse_wants(spec.wants)
        if gtype and not any(t for _, t, _ in view):
            # No GPU report yet: the type cannot be judged (the reason will say); labels can.
            if not labels:
                return
            gtype = ""
        ok, why = matching(f"{gtype}|{','.join(labels)}", view)
        if not ok:
            raise DaemonError(why)

    def _check_gang(self, spec: JobSpec, nodes: list[NodeRecord], largest: int) -> None:
        """A job over several nodes takes whole nodes of the cluster's largest size (the
        policy's placement), each with the job's CPUs and memory (per node): say plainly
        what else would wait forever. `nodes`: those of the kind it wants."""
        if not self.config.allow_multi_node:
            raise DaemonError(
                f"asks for {spec.gpus} GPUs but the largest node has {largest} (multi-node jobs are off: "
                "allow_multi_node in labq.yaml)"
            )
        per = spec.gpus // spec.nodes
        if spec.nodes == 1 and not spec.wants and sum(1 for n in nodes if n.gpus == largest) < 2:
            # One machine (or one of the largest size): no whole nodes to spread over.
            raise DaemonError(
                f"asks for {spec.gpus} GPUs but the largest node has {largest}, and no other node of that size "
                "to spread a job over"
            )
        if spec.nodes > 1 and per != largest:
            if per > largest:
                raise DaemonError(f"asks for {per} GPUs per node but the largest node has {largest}")
            one = f", or --gpus {spec.gpus} on one node" if spec.gpus <= largest else ""
            raise DaemonError(
                f"asks for {per} GPUs on each of {spec.nodes} nodes: a job over several nodes takes whole nodes "
                f"of the cluster's largest size (--gpus-per-node {largest} here){one}"
            )
        if spec.gpus % largest:
            raise DaemonError(
                f"asks for {spec.gpus} GPUs, more than a node has ({largest}): a job over several nodes takes "
                f"whole nodes, so ask for a multiple of {largest} (--nodes N --gpus-per-node {largest})"
            )
        want = spec.gpus // largest
        kind = f" {describe_wants(spec.wants)}" if spec.wants else ""
        whole = [n for n in nodes if n.gpus == largest]
        if want > len(whole):
            with_kind = f" with{kind}" if kind else ""
            raise DaemonError(f"asks for {want} whole {largest}-GPU nodes{with_kind} but the cluster has {len(whole)}")
        roomy = [n for n in whole if n.cpus >= spec.cpus and n.memory >= (spec.memory or 0)]
        if want > len(roomy):
            raise DaemonError(
                f"asks for {spec.cpus:g} CPUs and {memory(spec.memory)} of memory on each of {want} nodes (per node), "
                f"but only {len(roomy)} whole {largest}-GPU node{'s' if len(roomy) != 1 else ''} can hold that"
            )

    def _check_fits(self, spec: JobSpec) -> None:
        """Refuse what no node could ever hold (GPUs, CPUs or memory): such a job would
        wait forever (and, before, hold a backfill reservation that blocked others)."""
        nodes = self.nodes.all()
        if not nodes:
            return  # Ray unreachable right now: queue it and decide when it is back
        sizes = [n.gpus for n in nodes]
        largest = max(sizes)
        big_enough = [n for n in nodes if n.gpus >= min(spec.gpus, largest)]
        where = f"a node with {spec.gpus} GPU{'s' if spec.gpus != 1 else ''}" if spec.gpus <= largest else "a node"
        if spec.cpus and not any(n.cpus >= spec.cpus for n in big_enough):
            most = max(n.cpus for n in big_enough)
            raise DaemonError(f"asks for {spec.cpus:g} CPUs but the most {where} has is {most:g}")
        if spec.memory and not any(n.memory >= spec.memory for n in big_enough):
            most_mem = max(n.memory for n in big_enough)
            raise DaemonError(
                f"asks for {memory(spec.memory)} of memory but the most {where} has for jobs is {memory(most_mem)}"
            )
        if largest == 0 and spec.gpus > 0:
            raise DaemonError(
                f"asks for {spec.gpus} GPU{'s' if spec.gpus != 1 else ''} but no node has any "
                "(start with `labq up --gpus N` on a machine without NVIDIA GPUs)"
            )
        kind = nodes
        if spec.wants:
            # Only the nodes of the kind it wants count (once their types are known).
            self._check_kind(spec, nodes)
            ok, _ = matching(spec.wants, [(n.id, n.gpu_type, n.labels) for n in nodes])
            kind = [n for n in nodes if n.id in ok] or nodes
            sizes = [n.gpus for n in kind]
        if spec.nodes > 1 or spec.gpus > largest:
            self._check_gang(spec, kind, largest)
        elif spec.gpus > max(sizes):
            raise DaemonError(
                f"asks for {spec.gpus} GPUs on one node but the most a node of its kind has is {max(sizes)}"
            )
        if spec.gpus > sum(sizes):
            raise DaemonError(f"asks for {spec.gpus} GPUs but the whole cluster has {sum(sizes)}")
