"""The labq daemon: the one owner of the state.

Threads, each with one job:
- the API server (api.py) answers clients and turns commands into store writes;
- the scheduler loop builds a Snapshot, calls policy.schedule() and applies the
  Decision (launch on Ray, ask jobs to stop);
- the event pump long-polls the Executor actor and stores what it reports
  (started, log bytes, finished), then acknowledges it;
- the GPU loop keeps one monitor per node (fleet.py), feeds their reports to
  Telemetry, marks unhealthy GPUs unusable and acts on idle jobs.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pwd
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler import apitoken, raycluster, safefs, views
from scheduler.auth import Admins, Caller, user_name
from scheduler.config import DaemonConfig
from scheduler.gpu import GpuInventory, detect
from scheduler.job import JobSpec, JobState
from scheduler.policy import (
    Decision,
    NodeInfo,
    PendingJob,
    PolicyConfig,
    RunningJob,
    Snapshot,
    Waiting,
    schedule,
)
from scheduler.quota import (
    WEEK_S,
    Interval,
    QuotaBook,
    QuotaError,
    quota_book_from_dict,
    usage_by_user,
    validate_quota_fields,
)
from scheduler.store import JobRow, Store, StoreError, UnknownJob
from scheduler.telemetry import Holder, Telemetry, idle_verdicts, usage_report
from scheduler.units import format_duration, format_size

log = logging.getLogger("labq.daemon")

NAMESPACE = "labq"
ACTIVE = (JobState.STARTING, JobState.RUNNING)


class DaemonError(Exception):
    """Refusal of a request; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class AlreadyRunning(DaemonError):
    pass


@dataclass
class NodeView:
    id: str
    name: str
    address: str
    gpus: int
    cpus: float
    memory: float
    simulated: bool
    alive: bool = True
    schedulable: bool = True
    nvml_gpus: int | None = None
    note: str = ""

    def public(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RayStatus:
    address: str = ""
    embedded: bool = False
    connected: bool = False
    error: str = ""
    since: float = field(default_factory=time.time)


class Daemon:
    def __init__(
        self,
        state_dir: Path,
        socket_path: Path,
        config: DaemonConfig,
        ray_address: str | None = None,
        gpus: int | None = None,
        cpus: int | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.config = config
        self.requested_address = ray_address
        self.requested_gpus = gpus
        self.requested_cpus = cpus
        self.uid = os.geteuid()
        self.user = user_name(self.uid)
        self.admins = Admins(config.admins, self.uid, self.user)
        self.logs_dir = state_dir / "logs"
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.lock = threading.RLock()  # guards the in-memory views below
        self.restart_requested = False
        self.nodes: dict[str, NodeView] = {}
        # Nodes whose death a task reported before Ray's node table caught up: never
        # place anything there again (a node that comes back has a new id).
        self.dead_nodes: set[str] = set()
        # Node names an admin drained (names, not ids: they survive a node's restart).
        self.drained: set[str] = set()
        self.decision: Decision | None = None
        self.last_pass: float = 0.0
        self.ray = RayStatus()
        self.inventory: GpuInventory | None = None
        self.executor: Any = None
        self.executor_id = ""
        self.draining = False
        self.shutdown_mode: str | None = None
        self._finished_runs: list[Interval] = []
        self.head: raycluster.EmbeddedHead | None = None
        self._runs_loaded = False
        self._lock_fd: int | None = None
        self.quota_base = QuotaBook()
        self.quotas = QuotaBook()
        self.started_at = time.time()
        self.telemetry = Telemetry(
            interval=config.monitor_interval_s,
            history_s=config.gpu_history_s,
            idle_threshold_pct=config.idle_threshold_pct,
            stale_after_s=max(5.0, 3 * config.monitor_interval_s),
        )
        self.fleet: Any = None  # fleet.Fleet once Ray is up
        self._token_seen: dict[str, float] = {}
        self.api_busy_until = 0.0  # monotonic; the API handlers push it forward
        self.tcp: Any = None  # api.TcpApiServer when the config says `listen`

    # -- start-up ----------------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """One daemon per state dir: a second one would corrupt the bookkeeping."""
        safefs.private_dir(self.state_dir, 0o700)
        path = self.state_dir / "daemon.lock"
        # 0600: a lock file others can open is a lock others can hold (and so stop
        # the daemon from ever starting again).
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(
                f"another labq daemon (pid {other}) already runs on {self.state_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def open_store(self) -> None:
        self.store = Store(self.state_dir / "labq.db")
        self.drained = set(json.loads(self.store.get_meta("drained_nodes") or "[]"))
        safefs.private_dir(self.logs_dir, 0o700)
        safefs.tighten(self.state_dir, into=("logs",))
        self.load_quotas()

    def open_listener(self) -> None:
        """The TCP listener for remote clients, if configured. Before Ray starts, so a
        config mistake (no TLS beyond loopback, port taken) stops `labq up` at once."""
        if not self.config.listen:
            return
        from scheduler.api import TcpApiServer

        self.tcp = TcpApiServer(self.config.listen, self, self.config.tls_cert, self.config.tls_key)

    def load_quotas(self) -> None:
        data: Any = None
        if self.config.quotas_file:
            import yaml

            try:
                data = yaml.safe_load(Path(self.config.quotas_file).read_text())
            except (OSError, yaml.YAMLError) as e:
                raise DaemonError(f"cannot read quotas file {self.config.quotas_file}: {e}") from None
        try:
            self.quota_base = quota_book_from_dict(data)
        except QuotaError as e:
            raise DaemonError(f"{self.config.quotas_file}: {e}") from None
        book = self.quota_base
        for user, fields in self.store.quota_overrides().items():
            book = book.with_override(user, fields)
        self.quotas = book

    def start_ray(self) -> None:
        from scheduler.raycluster import RayError

        self.inventory = detect()
        if self.requested_address:
            self.ray = RayStatus(address=self.requested_address, embedded=False)
            raycluster.connect(self.requested_address, NAMESPACE)
        else:
            head = raycluster.find_embedded(self.state_dir)
            if head is None:
                gpus, simulated = self._embedded_gpus()
                head = raycluster.start_embedded(self.state_dir, gpus, simulated, cpus=self.requested_cpus)
            elif self.requested_gpus is not None and self.requested_gpus != head.gpus:
                raise RayError(
                    f"the embedded Ray from an earlier daemon still runs with {head.gpus} GPUs; "
                    f"stop it with `labq down` before asking for --gpus {self.requested_gpus}"
                )
            self.head = head
            self.ray = RayStatus(address=head.address, embedded=True)
            raycluster.connect(head.address, NAMESPACE)
        self.ray.connected = True
        self.refresh_nodes()
        self._attach_executor()
        from scheduler.fleet import Fleet

        self.fleet = Fleet(NAMESPACE, self.telemetry, self.config.monitor_interval_s)

    def _embedded_gpus(self) -> tuple[int, bool]:
        inv = self.inventory
        assert inv is not None
        if inv.count > 0:
            if self.requested_gpus is not None and self.requested_gpus > inv.count:
                from scheduler.raycluster import RayError

                raise RayError(
                    f"this machine has {inv.count} NVIDIA GPUs (NVML); --gpus {self.requested_gpus} "
                    f"would advertise GPUs that do not exist"
                )
            return (self.requested_gpus if self.requested_gpus is not None else inv.count), False
        if self.requested_gpus:
            log.warning("no real GPUs (%s): serving %d simulated GPUs", inv.why_none, self.requested_gpus)
            return self.requested_gpus, True
        log.warning("no real GPUs (%s) and no --gpus N: starting with 0 GPUs", inv.why_none)
        return 0, False

    def _attach_executor(self) -> None:
        import ray

        from scheduler.executor import EXECUTOR_NAME, Executor

        node_id = ray.get_runtime_context().get_node_id()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.executor = Executor.options(  # type: ignore[attr-defined]
            name=EXECUTOR_NAME,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=True),
        ).remote()
        info = ray.get(self.executor.ping.remote(), timeout=60)
        self.executor_id = str(info["id"])
        if self.store.get_meta("executor_id") != self.executor_id:
            # A new Executor: its event numbering starts again.
            self.store.set_meta("executor_id", self.executor_id)
            self.store.set_meta("executor_ack", "0")
        self.reconcile()

    def reconcile(self) -> None:
        """After a (re)start: adopt jobs the Executor still runs; explain the rest."""
        import ray

        known = ray.get(self.executor.known.remote(), timeout=60)
        for job in self.store.jobs(states=ACTIVE):
            key = f"{job.id}.{job.attempt}"
            if key in known:
                continue
            if job.state is JobState.STARTING:
                # The launch may not have reached Ray before we stopped: a launch is
                # idempotent per attempt, so sending it again cannot start it twice.
                self._launch(job)
            elif job.node and job.node not in self.nodes:
                # Its node is gone (e.g. the Ray head died with it): requeue per the retry setting.
                self._node_lost(job, "not running after Ray came back", None, {"end_time": time.time()})
            else:
                self.store.transition(
                    job.id,
                    JobState.LOST,
                    "Ray no longer runs this job: the executor that owned it is gone "
                    "(was the Ray head restarted?)",
                    end_time=time.time(),
                )

    def refresh_nodes(self) -> None:
        try:
            raw = raycluster.nodes()
        except Exception as e:  # noqa: BLE001
            self._ray_down(f"cannot list Ray nodes: {e}")
            return
        names = Counter(n.get("NodeManagerHostname", "") for n in raw)
        head_addr = self.ray.address.rpartition(":")[0]
        views: dict[str, NodeView] = {}
        for n in raw:
            if n["NodeID"] in self.dead_nodes:
                continue
            res = n.get("Resources", {})
            host = n.get("NodeManagerHostname", "") or n["NodeID"][:8]
            name = host if names.get(host, 0) <= 1 else f"{host}-{n['NodeID'][:6]}"
            old = self.nodes.get(n["NodeID"])
            is_head = "node:__internal_head__" in res
            simulated = bool(self.ray.embedded and is_head and self.head is not None and self.head.simulated)
            views[n["NodeID"]] = NodeView(
                id=n["NodeID"],
                name=name,
                address=n.get("NodeManagerAddress", head_addr),
                gpus=int(res.get("GPU", 0)),
                cpus=float(res.get("CPU", 0)),
                memory=float(res.get("memory", 0)),
                simulated=old.simulated if old and old.nvml_gpus is not None else simulated,
                schedulable=name not in self.drained,
                nvml_gpus=old.nvml_gpus if old else None,
                note=old.note if old else "",
            )
        with self.lock:
            self.nodes = views

    def _ray_down(self, why: str) -> None:
        if self.ray.connected:
            log.error("Ray unreachable: %s", why)
            self.ray.since = time.time()
        self.ray.connected = False
        self.ray.error = why

    # -- commands (called by api.py, one per request kind) ---------------------------------------
    def submit(self, caller: Caller, spec_data: dict[str, Any], token: str | None = None) -> int:
        if token is not None and (not isinstance(token, str) or not 0 < len(token) <= 128):
            raise DaemonError("token must be a string of 1 to 128 characters")
        spec = self._accept(caller, spec_data)
        cap = self.config.max_pending_jobs_per_user
        waiting = self.store.count_jobs(caller.user, (JobState.PENDING,))
        if waiting >= cap:
            raise DaemonError(
                f"{caller.user} already has {waiting} jobs waiting, the most this daemon queues for "
                f"one person (max_pending_jobs_per_user: {cap}); wait for some to start or cancel some",
                429,
            )
        job_id = self.store.add_job(caller.user, caller.uid, spec, token=token)
        self.wake.set()
        return job_id

    def preview(self, caller: Caller, spec_data: dict[str, Any]) -> dict[str, Any]:
        """What would happen if this job were submitted now: the policy's own answer."""
        from dataclasses import replace

        spec = self._accept(caller, spec_data)
        now = time.time()
        snap = self.snapshot(now)
        probe = PendingJob(
            id=-1,
            user=caller.user,
            gpus=spec.gpus,
            submit_time=now,
            priority=spec.priority,
            time_limit=spec.time,
            cpus=float(spec.cpus),
            memory=int(spec.memory or 0),
        )
        decision = schedule(replace(snap, pending=(*snap.pending, probe)))
        start = next((s for s in decision.starts if s.job_id == -1), None)
        if start is not None:
            node = self.nodes.get(start.node)
            return {"starts_now": True, "node": node.name if node else start.node, "reasons": [], "eta": now}
        w = decision.waiting.get(-1)
        return {
            "starts_now": False,
            "node": None,
            "reasons": list(w.reasons) if w else [],
            "eta": w.eta if w else None,
        }

    def _accept(self, caller: Caller, spec_data: dict[str, Any]) -> JobSpec:
        """Validate a submission: the same checks for a real one and a preview."""
        from pydantic import ValidationError

        from scheduler.job import first_error

        if self.draining:
            raise DaemonError("the daemon is shutting down and accepts no new jobs", 503)
        if self.uid != 0 and caller.uid != self.uid and not self.config.shared_account:
            raise DaemonError(
                f"this labq daemon runs as {self.user} and only takes {self.user}'s jobs "
                "(set shared_account: true in its config if the team shares that account)",
                403,
            )
        size = len(json.dumps(spec_data, default=str))
        if size > self.config.max_spec_bytes:
            raise DaemonError(
                f"the job's spec is {size // 1024} KiB, over this daemon's max_spec_bytes of "
                f"{self.config.max_spec_bytes // 1024} KiB (put large inputs in a file the job reads)",
                413,
            )
        try:
            spec = JobSpec.model_validate(spec_data)
        except ValidationError as e:
            field_name, msg = first_error(e)
            raise DaemonError(f"{field_name}: {msg}" if field_name else msg) from None
        cap = self.config.max_grace_s
        if spec.grace is not None and spec.grace > cap:
            raise DaemonError(f"grace: at most {format_duration(cap)} on this cluster (max_grace_s)")
        self._check_fits(spec)
        if spec.workdir:
            problem = safefs.workdir_problem(spec.workdir, caller.uid)
            if problem:
                raise DaemonError(f"workdir {spec.workdir} {problem}")
        return spec

    def _check_fits(self, spec: JobSpec) -> None:
        with self.lock:
            sizes = [n.gpus for n in self.nodes.values()]
        if not sizes:
            return  # Ray unreachable right now: queue it and decide when it is back
        largest = max(sizes)
        if spec.gpus > largest and not self.config.allow_multi_node:
            if largest == 0:
                raise DaemonError(
                    f"asks for {spec.gpus} GPU{'s' if spec.gpus != 1 else ''} but no node has any "
                    "(start with `labq up --gpus N` on a machine without NVIDIA GPUs)"
                )
            raise DaemonError(
                f"asks for {spec.gpus} GPUs but the largest node has {largest} (multi-node jobs are off)"
            )
        if spec.gpus > sum(sizes):
            raise DaemonError(f"asks for {spec.gpus} GPUs but the whole cluster has {sum(sizes)}")

    def cancel(self, caller: Caller, job_id: int, now: bool = False) -> str:
        """`now`: no grace period, SIGKILL at once (also for a job already stopping)."""
        job = self.store.get(job_id)
        if not caller.admin and caller.user != job.user:
            raise DaemonError(f"job {job_id} belongs to {job.user}; only they or an admin may cancel it", 403)
        reason = f"cancelled by {caller.user}" + (" (--now)" if now else "")
        if job.state.terminal:
            raise DaemonError(f"job {job_id} already ended ({job.state.value})", 409)
        if job.state in (JobState.PENDING, JobState.PREEMPTED):
            self.store.transition(
                job_id, JobState.CANCELLED, reason, expect=(job.state,), end_time=time.time()
            )
            now_state = self.store.get(job_id).state
            if now_state is JobState.CANCELLED:
                self._audit(caller, "job.cancel", str(job_id), reason)
                self.wake.set()
                return "cancelled"
            job = self.store.get(job_id)  # it started meanwhile: stop it like a running one
        self._request_stop(job, "cancelled", reason, 0.0 if now else self._grace(job))
        self._audit(caller, "job.cancel", str(job_id), reason)
        return "killed" if now else "stopping"

    def _grace(self, job: JobRow) -> float:
        """The job's grace period, never above max_grace_s (a job submitted before the
        cap existed, or under a larger one, gets the cap)."""
        g = job.spec.get("grace")
        grace = float(g) if g is not None else self.config.grace_period_s
        return min(grace, self.config.max_grace_s)

    def _request_stop(self, job: JobRow, outcome: str, reason: str, grace: float) -> None:
        deadline = time.time() + grace
        if job.stop_outcome is None:
            self.store.set_fields(job.id, stop_deadline=deadline, stop_outcome=outcome, stop_reason=reason)
        elif job.stop_deadline is not None and deadline < job.stop_deadline:
            self.store.set_fields(job.id, stop_deadline=deadline)
        if self.executor is not None:
            self.executor.stop.remote(job.id, job.attempt, outcome, reason, grace)

    def _audit(self, caller: Caller, action: str, target: str, detail: str) -> None:
        self.store.audit(caller.user, action, target, detail, time.time())

    def set_quota(self, caller: Caller, user: str, values: dict[str, Any]) -> dict[str, Any]:
        if not caller.admin:
            raise DaemonError(f"only admins may change quotas ({self.admins})", 403)
        if not user or len(user) > 64 or any(c in user for c in "\x00/\n"):
            raise DaemonError("bad user name")
        try:
            clean = validate_quota_fields(values)
        except QuotaError as e:
            raise DaemonError(str(e)) from None
        if not clean:
            raise DaemonError("nothing to change: give at least one field")
        with self.lock:
            current = self.quotas.for_user(user)
            old = {k: getattr(current, k) for k in clean}
            self.store.set_quota_override(caller.user, user, old, clean, time.time())
            self.quotas = self.quotas.with_override(user, clean)
        self.wake.set()
        return {"user": user, "old": old, "new": clean}

    # -- tokens for remote clients ------------------------------------------------------------------
    def is_admin(self, uid: int, user: str) -> bool:
        return self.admins(uid, user)

    def create_token(self, caller: Caller, user: str, expires_s: float | None, note: str) -> dict[str, Any]:
        """`labq token create USER`: admins only; the secret is returned once, kept hashed."""
        if not caller.admin:
            raise DaemonError("only admins may issue tokens", 403)
        if caller.via != "socket":
            # A stolen token must not mint more tokens: issuing needs a local login.
            raise DaemonError("tokens are issued on the head node itself (over the Unix socket)", 403)
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise DaemonError(f"no Unix user {user!r} on this machine: jobs run as that user") from None
        if pw.pw_uid == 0:
            raise DaemonError("no tokens for root: a network client never acts as root")
        if expires_s is not None and expires_s <= 0:
            raise DaemonError("expires must be a positive duration")
        if len(note) > 200 or any(ord(ch) < 32 for ch in note):
            raise DaemonError("note must be one line of at most 200 characters")
        new = apitoken.generate()
        now = time.time()
        expires = now + expires_s if expires_s else None
        self.store.add_token(new.id, user, new.hash, caller.user, expires, note, now)
        return {"id": new.id, "user": user, "token": new.text, "expires": expires}

    def list_tokens(self, caller: Caller) -> list[dict[str, Any]]:
        return self.store.tokens(None if caller.admin else caller.user)

    def revoke_token(self, caller: Caller, token_id: str) -> dict[str, Any]:
        row = self.store.token(token_id)
        if row is None or (not caller.admin and row["user"] != caller.user):
            raise DaemonError(f"no token {token_id!r}", 404)
        if not self.store.revoke_token(token_id, caller.user, time.time()):
            raise DaemonError(f"token {token_id} was already revoked", 409)
        with self.lock:
            self._token_seen.pop(token_id, None)
        return {"id": token_id, "user": row["user"], "revoked": True}

    def authenticate(self, raw: str | None) -> Caller:
        """The caller a network request's bearer token stands for, or a 401."""
        if not raw:
            raise DaemonError(
                "unauthenticated: this listener needs a token (an admin issues one with "
                "`labq token create USER`; the client reads LABQ_TOKEN)",
                401,
            )
        parsed = apitoken.parse(raw)
        row = self.store.token(parsed[0]) if parsed else None
        now = time.time()
        if parsed is None or row is None or not apitoken.matches(parsed[1], row["hash"]):
            raise DaemonError("unauthenticated: the token is not valid", 401)
        if row["revoked"] is not None:
            raise DaemonError(f"unauthenticated: token {row['id']} was revoked", 401)
        if row["expires"] is not None and now >= row["expires"]:
            raise DaemonError(f"unauthenticated: token {row['id']} has expired", 401)
        try:
            uid = pwd.getpwnam(row["user"]).pw_uid
        except KeyError:
            raise DaemonError(f"unauthenticated: user {row['user']} no longer exists here", 401) from None
        # last_used is for `labq token list`, not an audit trail: one write a minute is plenty.
        with self.lock:
            seen = self._token_seen.get(row["id"], 0.0)
            if now - seen > 60:
                self._token_seen[row["id"]] = now
            else:
                seen = -1.0
        if seen >= 0:
            self.store.token_used(row["id"], now)
        return Caller(uid, row["user"], self.is_admin(uid, row["user"]), via=f"token {row['id']}")

    def doctor(self, caller: Caller) -> list[dict[str, Any]]:
        """`labq doctor`: every part the daemon depends on, each with a verdict in words.
        Paths and ids are for admins; others get the verdicts."""
        import re
        import shutil

        checks: list[dict[str, Any]] = []
        now = time.time()
        paths = re.compile(r"(/[^\s:,;()]+)+")

        def check(name: str, ok: bool, detail: str) -> None:
            if not caller.admin:
                detail = paths.sub("…", detail)
            checks.append({"check": name, "ok": ok, "detail": detail})

        try:
            verdict = self.store.integrity()
            check(
                "database",
                verdict == "ok",
                f"{self.store.path}: integrity {verdict}, schema v{self.store.schema_version()}",
            )
        except Exception as e:  # noqa: BLE001 - the doctor reports, it does not fail
            check("database", False, f"{self.store.path}: {e}")
        free = shutil.disk_usage(self.state_dir).free
        check("disk", free > 1 << 30, f"{free / 2**30:.1f} GiB free in {self.state_dir}")
        check("logs", os.access(self.logs_dir, os.W_OK), f"{self.logs_dir} writable by {self.user}")
        mode = oct(self.socket_path.stat().st_mode & 0o777) if self.socket_path.exists() else "missing"
        check("socket", self.socket_path.exists(), f"{self.socket_path} ({mode})")
        if self.tcp is not None:
            live = sum(1 for t in self.store.tokens() if not t["revoked"] and (t["expires"] or now) >= now)
            check("listener", True, f"{self.tcp.address}: token required ({live} valid tokens)")
        else:
            check("listener", True, "no network listener (Unix socket only)")
        ray_detail = f"{self.ray.address} ({'embedded' if self.ray.embedded else 'external'})"
        check(
            "ray", self.ray.connected, ray_detail if self.ray.connected else f"{ray_detail}: {self.ray.error}"
        )
        try:
            import ray

            ray.get(self.executor.ping.remote(), timeout=5)
            check("executor", True, f"answers (id {self.executor_id[:8]})" if caller.admin else "answers")
        except Exception as e:  # noqa: BLE001
            check("executor", False, f"does not answer: {type(e).__name__}")
        exposed = self.exposed_files()
        check(
            "permissions",
            not exposed,
            "; ".join(f"{p}: {why}" for p, why in exposed[:5])
            + (f"; and {len(exposed) - 5} more" if len(exposed) > 5 else "")
            if exposed
            else "no other user can read, lock or change labq's files",
        )
        with self.lock:
            nodes = list(self.nodes.values())
        check(
            "nodes",
            bool(nodes),
            f"{len(nodes)} alive, {sum(n.gpus for n in nodes)} GPUs"
            + (f", drained: {', '.join(sorted(self.drained))}" if self.drained else ""),
        )
        inv = self.inventory
        if inv is not None:
            check(
                "nvml",
                True,
                f"{inv.count} NVIDIA GPUs, driver {inv.driver}"
                if inv.count
                else f"no real GPUs here: {inv.why_none}",
            )
        for n in nodes:
            err = self.fleet.errors.get(n.id, "") if self.fleet else ""
            stale = self.telemetry.stale(n.id, now)
            age = self.telemetry.age(n.id, now)
            detail = err or (f"last report {age:.0f}s ago" if age is not None else "no report yet")
            bad = sorted(self.telemetry.unhealthy(n.id).items())
            if bad:
                detail += "; " + "; ".join(f"GPU {i}: {why}" for i, why in bad)
            check(
                f"monitor {n.name}",
                not err and not stale and not bad,
                detail + (f"; {n.note}" if n.note else ""),
            )
        return checks

    def set_drained(self, caller: Caller, ref: str, drain: bool) -> dict[str, Any]:
        """`labq node drain|resume NODE`: no new jobs there; running ones finish."""
        if not caller.admin:
            raise DaemonError(f"only admins may {'drain' if drain else 'resume'} nodes", 403)
        with self.lock:
            matches = [
                n
                for n in self.nodes.values()
                if ref in (n.name, n.id) or (len(ref) >= 6 and n.id.startswith(ref))
            ]
            known = ", ".join(sorted(n.name for n in self.nodes.values())) or "none"
        if not matches and not (not drain and ref in self.drained):
            raise DaemonError(f"no node {ref!r} (nodes: {known})", 404)
        if len(matches) > 1:
            raise DaemonError(f"{ref!r} matches {len(matches)} nodes; give its full name or id")
        name = matches[0].name if matches else ref
        with self.lock:
            if drain:
                self.drained.add(name)
            else:
                self.drained.discard(name)
            for n in self.nodes.values():
                n.schedulable = n.name not in self.drained
            self.store.set_meta("drained_nodes", json.dumps(sorted(self.drained)))
        running = [j.id for j in self.store.jobs(states=ACTIVE) if matches and j.node == matches[0].id]
        self._audit(
            caller, "node.drain" if drain else "node.resume", name, f"{len(running)} jobs running there"
        )
        self.wake.set()
        return {"node": name, "drained": drain, "running_jobs": running}

    def request_shutdown(self, caller: Caller, mode: str) -> dict[str, Any]:
        if not caller.admin:
            raise DaemonError("only admins may stop the daemon", 403)
        active = self.store.jobs(states=ACTIVE)
        if mode == "refuse" and active:
            raise DaemonError(
                f"{len(active)} job{'s' if len(active) != 1 else ''} still running: "
                "`labq down --drain` waits for them, `labq down --kill` stops them",
                409,
            )
        self.draining = True
        self.shutdown_mode = mode
        if mode == "kill":
            for job in active:
                self._request_stop(job, "cancelled", f"labq down --kill by {caller.user}", self._grace(job))
        try:
            self._audit(caller, "daemon.down", mode, f"{len(active)} jobs active")
        except StoreError as e:
            # A full disk must not keep the admin from stopping the daemon.
            log.error("labq down by %s not in the audit log: %s", caller.user, e)
        self.wake.set()
        return {"stopping": True, "active": len(active)}

    # -- views for the API --------------------------------------------------------------------------
    def waiting_for(self, job_id: int) -> Waiting | None:
        d = self.decision
        return None if d is None else d.waiting.get(job_id)

    def job_view(self, job: JobRow, caller: Caller, full: bool = False) -> dict[str, Any]:
        """A job as `caller` may see it (views.py decides what is private)."""
        d = views.summary(job, caller)
        now = time.time()
        if job.state is JobState.PENDING:
            w = self.waiting_for(job.id)
            d["reasons"] = list(w.reasons) if w else (["scheduling: not yet considered"])
            d["eta"] = w.eta if w else None
            d["wait_s"] = now - job.submit_time
        elif job.state in ACTIVE:
            d["reasons"] = [job.stop_reason] if job.stop_reason else []
            d["runtime_s"] = now - (job.start_time or now)
            d["flags"] = self.gpu_flags(job, now)
            ju = self.telemetry.jobs.get(job.id)
            if ju is not None:
                idle_for = self.telemetry.idle_for(job.id, now)
                d["gpu"] = {
                    **ju.totals(),
                    "util_now": ju.util_now,
                    "mem_now": ju.mem_now,
                    "idle_for_s": idle_for,
                }
        else:
            d["reasons"] = [job.reason] if job.reason else []
            if job.start_time and job.end_time:
                d["runtime_s"] = job.end_time - job.start_time
            if full:
                d["gpu"] = self.store.job_gpu_totals(job.id)
        if full:
            return views.detail(job, caller, d, self.store.events(job.id), str(self.log_path(job.id)))
        return d

    def exposed_files(self) -> list[tuple[str, str]]:
        """labq's own files another user could read, lock or write: the state dir and
        everything in it (logs, database, lock, Ray token, Ray's temp dir), the
        socket's directory, and this node's job dir."""
        found = safefs.audit_tree(self.state_dir)
        if self.head is not None and not self.head.temp_dir.startswith(str(self.state_dir) + "/"):
            found += safefs.audit_tree(Path(self.head.temp_dir))
        out = [(e.path, e.problem) for e in found]
        # labq's own files are 0600 even where a closed directory already hides them:
        # one chmod of that directory would otherwise open them all. (Ray's own tree
        # inside ray/ is not ours to judge: its 0700 top is.)
        reported = {p for p, _ in out}
        for d in (self.state_dir, self.logs_dir):
            try:
                entries = sorted(d.iterdir())
            except OSError:
                continue
            for p in entries:
                if str(p) in reported or p.name == "ray":
                    continue
                problem = safefs.exposure(p)
                if problem and "others can list" not in problem:
                    out.append((str(p), problem))
        sock_dir = self.socket_path.parent
        # Everyone may enter (and list) the socket's directory and the job dir, not write.
        for d in (sock_dir, safefs.node_job_dir()):
            problem = safefs.exposure(d)
            if problem and "others can list" not in problem:
                out.append((str(d), problem))
        return out

    def log_path(self, job_id: int) -> Path:
        return self.logs_dir / f"{int(job_id)}.log"

    def health(self, caller: Caller) -> dict[str, Any]:
        inv = self.inventory
        private = (
            {"pid": os.getpid(), "state_dir": str(self.state_dir), "socket": str(self.socket_path)}
            if caller.admin
            else {}
        )
        return {
            **private,
            "user": self.user,
            "started_at": self.started_at,
            "draining": self.draining,
            "ray": dict(self.ray.__dict__),
            "nvml": None
            if inv is None
            else {
                "gpus": inv.count,
                "names": list(inv.names),
                "driver": inv.driver,
                "why_none": inv.why_none,
            },
            "last_pass": self.last_pass,
            "listen": self.tcp.address if self.tcp is not None else None,
            "metrics": f"http://{self.config.metrics_host}:{self.config.metrics_port}/metrics"
            if self.config.metrics_port
            else None,
            "counts": self.store.count_by_state(),
            "schema_version": self.store.schema_version(),
        }

    # -- the scheduler loop -------------------------------------------------------------------------
    def policy_config(self) -> PolicyConfig:
        c = self.config
        return PolicyConfig(
            default_time_limit=c.default_time_limit_s,
            min_runtime=c.min_runtime_s,
            grace_period=c.grace_period_s,
            preemption=c.preemption,
            backfill=c.backfill,
        )

    def usage(self, now: float, active: list[JobRow]) -> tuple[dict[str, float], dict[str, float]]:
        horizon = max(WEEK_S, 8 * self.config.half_life_s)
        if not self._runs_loaded:
            self._finished_runs = sorted(
                (
                    Interval(r["user"], r["gpus"], r["start_time"], r["end_time"])
                    for r in self.store.runs_since(now - horizon)
                    if r["end_time"] is not None
                ),
                key=lambda iv: iv.end,
            )
            self._runs_loaded = True
        # Runs that ended before the horizon no longer weigh anything: drop them so the
        # per-pass usage sum does not grow with the daemon's age.
        if self._finished_runs and self._finished_runs[0].end < now - horizon:
            self._finished_runs = [r for r in self._finished_runs if r.end >= now - horizon]
        running = [Interval(j.user, j.gpus, j.start_time or now, now) for j in active if j.start_time]
        return usage_by_user([*self._finished_runs, *running], now, self.config.half_life_s)

    def snapshot(self, now: float) -> Snapshot:
        pending_rows = self.store.jobs(states=(JobState.PENDING,))
        active = self.store.jobs(states=ACTIVE)
        decayed, week = self.usage(now, active)
        held = self.held_gpus(active)
        with self.lock:
            nodes = tuple(
                NodeInfo(
                    id=n.id,
                    name=n.name,
                    # An unhealthy GPU, or one a stray process holds, is not offered to
                    # new jobs unless a labq job already has it.
                    gpus=n.gpus - len(self.unusable(n.id) - held.get(n.id, set())),
                    cpus=n.cpus,
                    memory=n.memory,
                    schedulable=n.schedulable and n.alive and not self.draining,
                )
                for n in self.nodes.values()
            )
            quotas = self.quotas
        return Snapshot(
            now=now,
            pending=tuple(
                PendingJob(
                    id=j.id,
                    user=j.user,
                    gpus=j.gpus,
                    submit_time=j.submit_time,
                    priority=j.priority,
                    time_limit=j.time_limit,
                    requeued=j.requeued,
                    cpus=float(j.spec.get("cpus", 0)),
                    memory=int(j.spec.get("memory", 0)),
                )
                for j in pending_rows
            ),
            running=tuple(
                RunningJob(
                    id=j.id,
                    user=j.user,
                    gpus=j.gpus,
                    node=j.node or "",
                    start_time=j.start_time or now,
                    time_limit=j.time_limit,
                    stop_deadline=j.stop_deadline,
                    cpus=float(j.spec.get("cpus", 0)),
                    memory=int(j.spec.get("memory", 0)),
                )
                for j in active
            ),
            nodes=nodes,
            usage=decayed,
            week_usage=week,
            quotas=quotas,
            config=self.policy_config(),
        )

    def held_gpus(self, active: list[JobRow]) -> dict[str, set[int]]:
        """GPU indices each node's active jobs hold (as labq assigned them)."""
        held: dict[str, set[int]] = {}
        for j in active:
            if j.node and j.gpu_ids:
                held.setdefault(j.node, set()).update(int(g) for g in j.gpu_ids.split(",") if g.isdigit())
        return held

    def unusable(self, node_id: str) -> set[int]:
        """GPU indices no new job gets on this node: unhealthy, or held by a process
        that is not a running labq job (e.g. one an ended job left behind)."""
        return set(self.telemetry.unhealthy(node_id)) | set(self.telemetry.occupied(node_id))

    def pick_gpus(self, node_id: str, count: int, held: dict[str, set[int]]) -> tuple[int, ...] | None:
        """Healthy free GPU indices for a job on this node; None = let Ray choose.

        labq picks the indices itself so that a GPU NVML calls unhealthy is never
        handed out; Ray still counts them. Where Ray and NVML disagree on the count
        (e.g. the raylet was started with CUDA_VISIBLE_DEVICES), the indices would not
        mean the same thing, so Ray chooses.
        """
        node = self.nodes.get(node_id)
        if node is None or node.nvml_gpus is None:
            return None
        if not node.simulated and node.nvml_gpus != node.gpus:
            return None
        bad = self.unusable(node_id)
        free = [i for i in range(node.gpus) if i not in held.get(node_id, set()) and i not in bad]
        if len(free) < count:
            return None
        return tuple(free[:count])

    def one_pass(self) -> Decision:
        now = time.time()
        snap = self.snapshot(now)
        decision = schedule(snap)
        held = self.held_gpus(self.store.jobs(states=ACTIVE)) if decision.starts else {}
        for start in decision.starts:
            row = self.store.get(start.job_id)
            if row.state is not JobState.PENDING:
                continue  # cancelled while we were deciding
            node = self.nodes.get(start.node)
            picked = self.pick_gpus(start.node, row.gpus, held)
            if picked is not None:
                held.setdefault(start.node, set()).update(picked)
            row = self.store.transition(
                row.id,
                JobState.STARTING,
                f"placed on {node.name if node else start.node}",
                now=now,
                expect=(JobState.PENDING,),
                node=start.node,
                node_name=node.name if node else start.node,
                attempt=row.attempt + 1,
                gpu_ids=None if picked is None else ",".join(map(str, picked)),
                start_time=now,
                stop_deadline=None,
                stop_outcome=None,
                stop_reason=None,
                exit_code=None,
                signal=None,
            )
            if row.state is JobState.STARTING:
                self._launch(row)
        for pre in decision.preemptions:
            row = self.store.get(pre.job_id)
            if row.state in ACTIVE and row.stop_outcome is None:
                self.store.note(row.id, f"preemption requested: {pre.reason}", now)
                self._request_stop(row, "preempted", pre.reason, self._grace(row))
        with self.lock:
            self.decision = decision
            self.last_pass = now
        return decision

    def _launch(self, job: JobRow) -> None:
        from scheduler.runner import Launch

        spec = job.spec
        grace = self._grace(job)
        umask = spec.get("umask")
        launch = Launch(
            job_id=job.id,
            attempt=job.attempt,
            argv=list(spec["command"]),
            workdir=spec.get("workdir", ""),
            env=dict(spec.get("env", {})),
            uid=job.uid,
            user=job.user,
            # The default limit is a limit too: backfill and ETAs count on it.
            time_limit=job.time_limit or self.config.default_time_limit_s,
            grace=grace,
            log_limit=self._log_room(job),
            namespace=self.executor_id[:8],
            gpu_indices=tuple(int(g) for g in job.gpu_ids.split(",")) if job.gpu_ids else None,
            umask=0o022 if umask is None else int(umask),
            cgroup=self.config.job_cgroups,
        )
        resources: dict[str, float] = {"GPU": job.gpus, "CPU": float(spec.get("cpus", 0))}
        if spec.get("memory"):
            resources["memory"] = float(spec["memory"])
        self.executor.launch.remote(job.id, job.attempt, launch, job.node, resources)

    def _log_room(self, job: JobRow) -> int:
        """Bytes this attempt may still add to the job's log (earlier attempts used some)."""
        try:
            used = self.log_path(job.id).stat().st_size
        except OSError:
            used = 0
        header = 200  # the "--- labq: attempt N on NODE ---" line
        return max(0, self.config.log_max_bytes - used - (header if used else 0))

    def _restart_for_ray(self) -> None:
        """The Ray head is gone. A Ray driver cannot re-attach to a new head in the
        same process (worse: when a new head appears at the old address, Ray aborts
        the old driver's process on the cluster-id mismatch), so the daemon starts
        itself again at once: the new process starts a new embedded head, or waits
        for the external one to answer before it connects, and reconciles (jobs whose
        node died are requeued). Meanwhile the API answers and takes submissions."""
        if self.restart_requested:
            return
        if self.ray.embedded:
            log.error(
                "the embedded Ray head is gone (%s): restarting the daemon to start it again", self.ray.error
            )
        else:
            log.error(
                "the Ray head at %s is gone (%s): restarting the daemon to wait for it and reconnect",
                self.ray.address,
                self.ray.error,
            )
        self.restart_requested = True
        self.stop_event.set()

    def scheduler_loop(self) -> None:
        last_nodes = 0.0
        pass_s = 0.0
        while not self.stop_event.is_set():
            self.wake.wait(timeout=self.config.pass_interval_s)
            # Under a burst of requests, passes over a long queue would run back to back
            # and starve the API threads of the GIL: while the API is busy, rest twice as
            # long as the last pass took (a third of the time for scheduling), gathering
            # the submissions meanwhile. An idle cluster's pass takes ~1 ms, and with a
            # quiet API a backlog drains at full speed.
            if pass_s > 0.005 and time.monotonic() < self.api_busy_until:
                self.stop_event.wait(min(1.0, 2 * pass_s))
            self.wake.clear()
            try:
                # No Ray call while it is unreachable: the event pump notices its return.
                if self.ray.connected and time.monotonic() - last_nodes > 2.0:
                    self.refresh_nodes()
                    last_nodes = time.monotonic()
                if self.ray.connected:
                    t0 = time.monotonic()
                    self.one_pass()
                    pass_s = time.monotonic() - t0
                if self.draining and not self.store.jobs(states=ACTIVE):
                    self.stop_event.set()
            except Exception:  # noqa: BLE001 - the loop must survive any one bad pass
                log.exception("scheduling pass failed")
                time.sleep(0.5)

    # -- the event pump ------------------------------------------------------------------------------
    def event_pump(self) -> None:
        import ray

        while self.executor is None:  # waiting for an external head to come back
            if self.stop_event.wait(0.5):
                return
        ack = int(self.store.get_meta("executor_ack") or 0)
        failing_since: float | None = None
        while not self.stop_event.is_set():
            executor = self.executor
            try:
                reply = ray.get(executor.poll.remote(ack, 0.5), timeout=30)
            except Exception as e:  # noqa: BLE001
                if executor is self.executor:
                    self._ray_down(f"the executor does not answer: {str(e).splitlines()[0]}")
                failing_since = failing_since or time.monotonic()
                down_for = time.monotonic() - failing_since
                # The scheduler thread may be stuck in a Ray call by now; this one is not.
                if not self.draining and down_for > 5.0:
                    self._restart_for_ray()
                time.sleep(1.0)
                continue
            failing_since = None
            if not self.ray.connected:
                self.ray.connected = True
                self.ray.error = ""
            if not reply:
                continue
            applied = ack
            for seq, event in reply:
                try:
                    self.apply_event(event)
                except UnknownJob:
                    log.warning("event for unknown job %s", event.get("job_id"))
                except Exception as e:  # noqa: BLE001 - e.g. the disk is full
                    # Not acknowledged, so the Executor keeps it: applied again once the
                    # store can take it (events are idempotent), never lost.
                    log.error("cannot record an event of job %s yet: %s", event.get("job_id"), e)
                    break
                applied = seq
            if applied != ack:
                try:
                    self.store.set_meta("executor_ack", str(applied))
                    ack = applied
                except StoreError as e:
                    log.error("cannot record event progress yet: %s", e)
            if ack != reply[-1][0]:
                time.sleep(1.0)  # the store refused one: give it a moment
            self.wake.set()

    def apply_event(self, ev: dict[str, Any]) -> None:
        job = self.store.get(int(ev["job_id"]))
        if job.attempt != ev["attempt"]:
            return  # a late report from an older attempt
        kind = ev["type"]
        if kind == "started":
            base = self._open_attempt_log(job, ev)
            self.store.transition(
                job.id,
                JobState.RUNNING,
                f"running on {job.node_name} with GPUs {','.join(ev['gpu_ids']) or '-'}",
                expect=(JobState.STARTING,),
                start_time=ev["start_time"],
                pid=ev["pid"],
                gpu_ids=",".join(ev["gpu_ids"]),
                log_base=base,
            )
        elif kind == "log":
            self._write_log(job, int(ev["offset"]), ev["data"])
        elif kind == "finished":
            self._finish(job, ev)

    def _open_attempt_log(self, job: JobRow, ev: dict[str, Any]) -> int:
        path = self.log_path(job.id)
        if job.log_removed is not None:
            self.store.set_fields(job.id, log_removed=None)
        # 0600 (the daemon's umask is 077 too): the API, not the file system, decides
        # who reads a log.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        if job.attempt <= 1:
            os.close(fd)
            return 0
        with open(fd, "ab") as f:
            f.write(f"\n--- labq: attempt {job.attempt} on {job.node_name} ---\n".encode())
            return f.tell()

    def _write_log(self, job: JobRow, offset: int, data: bytes) -> None:
        pos = job.log_base + offset
        if pos >= self.config.log_max_bytes:
            return
        data = data[: self.config.log_max_bytes - pos]
        try:
            fd = os.open(self.log_path(job.id), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                # Written at its offset: a report delivered twice lands on itself.
                os.pwrite(fd, data, pos)
            finally:
                os.close(fd)
        except OSError as e:
            # A full disk costs log bytes, not the job's state events behind them.
            log.error("job %d: %d log bytes lost: %s", job.id, len(data), e.strerror or e)

    def _finish(self, job: JobRow, ev: dict[str, Any]) -> None:
        outcome = str(ev["outcome"])
        # When the process ended, not when we heard of it (we may have been down meanwhile).
        now = float(ev.get("end_time") or time.time())
        fields = {"exit_code": ev.get("exit_code"), "signal": ev.get("signal"), "end_time": now}
        reason = str(ev.get("reason") or "")
        expect = ACTIVE
        stats = self.telemetry.finish_job(job.id)
        if outcome == "lost" and self._node_gone(job, reason):
            self._node_lost(job, reason, stats, fields)
        elif outcome == "preempted":
            self.store.transition(
                job.id, JobState.PREEMPTED, reason, expect=expect, run_stats=stats, **fields
            )
            self._requeue(job, JobState.PREEMPTED, "requeued after preemption")
        else:
            state = {
                "succeeded": JobState.SUCCEEDED,
                "failed": JobState.FAILED,
                "cancelled": JobState.CANCELLED,
                "timeout": JobState.TIMEOUT,
            }.get(outcome, JobState.LOST)
            if state is JobState.LOST and not reason:
                reason = "lost"
            self.store.transition(job.id, state, reason, expect=expect, run_stats=stats, **fields)
        if job.state in ACTIVE and ev.get("log_dropped"):
            # After the transition: an event applied again finds the job ended, no second note.
            self.store.note(job.id, f"log limit reached: {ev['log_dropped']} bytes of output discarded", now)
        if job.start_time is not None and job.state in ACTIVE:
            self._finished_runs.append(Interval(job.user, job.gpus, job.start_time, now))
            self._keep_logs_within_cap(job, time.time())

    def _keep_logs_within_cap(self, job: JobRow, now: float) -> None:
        """Record the ended attempt's log size; past the owner's user_log_max_bytes,
        remove their oldest ended jobs' logs (each job's history says so)."""
        try:
            size = self.log_path(job.id).stat().st_size
        except OSError:
            size = 0
        self.store.set_fields(job.id, log_bytes=size)
        cap = self.config.user_log_max_bytes
        total = self.store.user_log_bytes(job.user)
        while total > cap:
            victims = self.store.oldest_kept_logs(job.user)
            if not victims:
                break
            for victim, n in victims:
                if total <= cap:
                    break
                self.log_path(victim).unlink(missing_ok=True)
                self.store.log_removed(
                    victim,
                    now,
                    f"log removed: {job.user}'s logs passed the per-user cap of "
                    f"{format_size(cap)} (user_log_max_bytes), oldest first",
                )
                total -= n

    # -- the GPU loop ---------------------------------------------------------------------------------
    def gpu_loop(self) -> None:
        interval = self.config.monitor_interval_s
        while not self.stop_event.wait(interval):
            if self.fleet is None or not self.ray.connected:
                continue
            try:
                self.gpu_tick(time.time())
            except Exception:  # noqa: BLE001 - monitoring must never stop scheduling
                log.exception("GPU monitoring pass failed")

    def holders(self, active: list[JobRow]) -> list[Holder]:
        return [
            Holder(j.id, j.user, j.node, tuple(int(g) for g in j.gpu_ids.split(",") if g.isdigit()), j.pid)
            for j in active
            if j.state is JobState.RUNNING and j.node and j.gpu_ids and j.pid
        ]

    def gpu_tick(self, now: float) -> None:
        with self.lock:
            alive = {n.id: n.gpus for n in self.nodes.values() if n.alive}
        self.fleet.sync(alive)
        active = self.store.jobs(states=ACTIVE)
        before = {n: set(self.telemetry.unhealthy(n)) for n in alive}
        self.fleet.poll(self.holders(active), now, timeout=max(0.5, self.config.monitor_interval_s))
        changed = False
        with self.lock:
            for node in self.nodes.values():
                st = self.telemetry.nodes.get(node.id)
                if st is None:
                    continue
                r = st.report
                node.simulated = bool(r.get("simulated"))
                node.nvml_gpus = int(r.get("nvml_gpus") or 0)
                node.note = self._cross_check(node, r)
                if set(self.telemetry.unhealthy(node.id)) != before.get(node.id, set()):
                    changed = True
        if changed:
            self._flag_unhealthy(active, now)
            self.wake.set()
        self.apply_idle(now)

    @staticmethod
    def _cross_check(node: NodeView, report: dict[str, Any]) -> str:
        if report.get("simulated"):
            return f"simulated GPUs (no NVIDIA GPU here: {report.get('why_none') or 'NVML sees none'})"
        nvml = int(report.get("nvml_gpus") or 0)
        if nvml != node.gpus:
            return f"Ray advertises {node.gpus} GPUs but NVML counts {nvml}"
        if node.gpus == 0 and report.get("why_none"):
            return f"no GPUs: {report['why_none']}"
        return ""

    def _flag_unhealthy(self, active: list[JobRow], now: float) -> None:
        for h in self.holders(active):
            bad = self.telemetry.unhealthy(h.node)
            hit = sorted(set(h.gpus) & set(bad))
            if hit:
                self.store.note(h.job_id, "; ".join(f"GPU {i} unhealthy: {bad[i]}" for i in hit), now)

    def apply_idle(self, now: float) -> None:
        c = self.config
        verdicts = idle_verdicts(
            self.telemetry,
            lambda user: self.quotas.for_user(user).idle_action,
            c.idle_window_s,
            c.idle_action_after_s,
            now,
        )
        for v in verdicts:
            row = self.store.get(v.job_id)
            if row.state not in ACTIVE:
                continue
            idle = f"its GPUs have been under {c.idle_threshold_pct:g}% utilization for {format_duration(v.idle_for)}"
            if v.action == "flag":
                self.store.note(row.id, f"idle: {idle}", now)
            elif v.action == "cancel":
                self._request_stop(
                    row, "cancelled", f"cancelled because {idle} (idle_action: cancel)", self._grace(row)
                )
            elif v.action == "requeue":
                self._request_stop(
                    row, "preempted", f"requeued because {idle} (idle_action: requeue)", self._grace(row)
                )

    def node_views(self, history: bool = False) -> list[dict[str, Any]]:
        """Every node with its GPUs as the agents last saw them, and who holds each."""
        now = time.time()
        active = self.store.jobs(states=ACTIVE)
        holder: dict[tuple[str, int], JobRow] = {}
        used: dict[str, int] = {}
        for j in active:
            used[j.node or ""] = used.get(j.node or "", 0) + j.gpus
            for idx in (j.gpu_ids or "").split(","):
                if j.node and idx.isdigit():
                    holder[(j.node, int(idx))] = j
        by_id = {j.id: j for j in active}
        with self.lock:
            nodes = [n.public() for n in self.nodes.values()]
        for n in nodes:
            n["gpus_used"] = used.get(n["id"], 0)
            st = self.telemetry.nodes.get(n["id"])
            age = self.telemetry.age(n["id"], now)
            n["age_s"] = age
            n["stale"] = self.telemetry.stale(n["id"], now)
            n["monitor_error"] = self.fleet.errors.get(n["id"], "") if self.fleet else ""
            report = st.report if st else {}
            n["host"] = report.get("host")
            n["monitor_pid"] = report.get("pid")
            n["sampled_at"] = report.get("time")
            n["driver"] = report.get("driver")
            gpus = []
            for raw in report.get("gpus", []):
                g: dict[str, Any] = dict(raw)
                held_by = holder.get((n["id"], int(g["index"])))
                g["job_id"] = held_by.id if held_by else None
                stray = self.telemetry.occupied(n["id"]).get(int(g["index"]))
                g["blocked"] = f"no new jobs: {stray}" if stray and not held_by else None
                g["user"] = held_by.user if held_by else None
                procs = []
                for proc in raw.get("processes", []):
                    owner = by_id.get(proc.get("job_id") or -1)
                    procs.append(
                        {
                            **proc,
                            "user": owner.user if owner else None,
                            "outside_labq": proc.get("job_id") is None,
                        }
                    )
                g["processes"] = procs
                if history:
                    g["history"] = self.telemetry.gpu_history(n["id"], int(g["index"]))
                gpus.append(g)
            n["gpu_list"] = gpus
        return nodes

    def usage_report(self, since_s: float, by: str) -> dict[str, Any]:
        now = time.time()
        live = {j: ju.totals() for j, ju in list(self.telemetry.jobs.items())}
        rows = usage_report(self.store.usage_rows(now - since_s), live, now - since_s, now, by)
        return {"since": now - since_s, "until": now, "by": by, "rows": rows}

    def gpu_flags(self, job: JobRow, now: float) -> list[str]:
        flags: list[str] = []
        idle_for = self.telemetry.idle_for(job.id, now)
        if idle_for is not None and idle_for >= self.config.idle_window_s:
            flags.append(f"idle {format_duration(idle_for)}")
        if job.node and job.gpu_ids:
            bad = self.telemetry.unhealthy(job.node)
            for g in job.gpu_ids.split(","):
                if g.isdigit() and int(g) in bad:
                    flags.append(f"GPU {g} unhealthy")
        return flags

    def _requeue(self, job: JobRow, ended: JobState, reason: str) -> None:
        """Back to the queue after an attempt that ended through no fault of the job;
        `requeued` puts it first among its owner's jobs."""
        self.store.transition(
            job.id,
            JobState.PENDING,
            reason,
            expect=(ended,),
            requeued=1,
            node=None,
            pid=None,
            stop_deadline=None,
            stop_outcome=None,
            stop_reason=None,
        )

    def _node_gone(self, job: JobRow, reason: str) -> bool:
        """Did this job end because its node died (rather than Ray losing track of it)?"""
        if job.node and ("NodeDied" in reason or "doesn't exist any more" in reason):
            self.dead_nodes.add(job.node)
            with self.lock:
                self.nodes.pop(job.node, None)
            return True
        self.refresh_nodes()
        with self.lock:
            return bool(job.node) and self.ray.connected and job.node not in self.nodes

    def _node_lost(
        self, job: JobRow, detail: str, stats: dict[str, Any] | None, fields: dict[str, Any]
    ) -> None:
        now = float(fields["end_time"])
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        reason = f"node {job.node_name or job.node} was lost at {when}"
        self.store.transition(job.id, JobState.NODE_LOST, reason, expect=ACTIVE, run_stats=stats, **fields)
        lost_before = sum(1 for e in self.store.events(job.id) if e["new_state"] == JobState.NODE_LOST.value)
        retries = self.config.node_lost_retries
        # A job someone asked to cancel stays ended; anything else may run again.
        if lost_before <= retries and job.stop_outcome != "cancelled":
            self._requeue(
                job,
                JobState.NODE_LOST,
                f"requeued after its node was lost (retry {lost_before} of {retries})",
            )
        log.warning("job %d: %s (%s)", job.id, reason, detail)

    # -- run and stop -----------------------------------------------------------------------------
    def wait_for_ray(self) -> None:
        """Started again after losing an external head: serve the API at once, connect
        (a fresh driver) when the head answers again."""
        address = self.requested_address or ""
        self.ray = RayStatus(
            address=address, embedded=False, error=f"waiting for the Ray head at {address} to answer again"
        )
        while not self.stop_event.wait(1.0):
            if not raycluster.reachable(address):
                continue
            try:
                self.start_ray()
            except Exception as e:  # noqa: BLE001 - say why and keep waiting
                self.ray.error = f"cannot connect to {address} yet: {e}"
                log.error("%s", self.ray.error)
                continue
            log.info("reconnected to the Ray head at %s", address)
            self.wake.set()
            return

    def serve(self, wait_for_ray: bool = False) -> None:
        from scheduler.api import ApiServer

        self.server = ApiServer(self.socket_path, self)
        self.metrics: Any = None
        if self.tcp is not None:
            threading.Thread(target=self.tcp.serve_forever, name="labq-tcp", daemon=True).start()
            log.info("remote clients (token required) at %s", self.tcp.address)
        if self.config.metrics_port:
            from scheduler.metrics import serve_metrics

            try:
                self.metrics = serve_metrics(self, self.config.metrics_host, self.config.metrics_port)
            except OSError as e:
                # Metrics are a convenience: say so loudly, keep scheduling.
                log.error(
                    "cannot serve /metrics on %s:%d: %s",
                    self.config.metrics_host,
                    self.config.metrics_port,
                    e,
                )
        threads = [
            threading.Thread(target=self.server.serve_forever, name="labq-api", daemon=True),
            threading.Thread(target=self.scheduler_loop, name="labq-sched", daemon=True),
            threading.Thread(target=self.event_pump, name="labq-events", daemon=True),
            threading.Thread(target=self.gpu_loop, name="labq-gpus", daemon=True),
        ]
        if wait_for_ray:
            threads.append(threading.Thread(target=self.wait_for_ray, name="labq-ray-wait", daemon=True))
        for t in threads:
            t.start()
        self.wake.set()
        while not self.stop_event.wait(0.5):
            pass
        self.server.shutdown()
        self.server.server_close()
        if self.tcp is not None:
            self.tcp.shutdown()
            self.tcp.server_close()
        if self.metrics is not None:
            self.metrics[0].shutdown()
        self.socket_path.unlink(missing_ok=True)
        self.teardown()

    def teardown(self) -> None:
        import ray

        if self.shutdown_mode is None:
            return  # a signal, not `labq down`: leave Ray and the jobs running
        try:
            if self.fleet is not None:
                self.fleet.stop_all()
            if self.executor is not None:
                ray.kill(self.executor)
        except Exception:  # noqa: BLE001
            log.exception("could not stop the executor")
        ray.shutdown()
        if self.ray.embedded:
            raycluster.stop_embedded(self.state_dir)

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            log.info("signal %d: stopping the daemon; jobs keep running", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


def raise_fd_limit() -> None:
    """Every API connection costs a descriptor: take the hard limit, not the 1,024 a
    shell or systemd gives by default (the connection caps keep well under it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 65536:
        hard = 65536
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def run_daemon(
    state_dir: Path,
    socket_path: Path,
    config: DaemonConfig,
    ray_address: str | None,
    gpus: int | None,
    cpus: int | None,
) -> None:
    """Start everything and serve until `labq down` or a signal."""
    # Nothing the daemon (or the Ray it starts) writes is for other users' eyes: the
    # database, logs, lock and Ray's sockets are 0600/0700. Jobs get the submitter's
    # umask back in the runner.
    os.umask(0o077)
    raise_fd_limit()
    daemon = Daemon(state_dir, socket_path, config, ray_address, gpus, cpus)
    daemon.acquire_lock()
    raycluster.prepare_driver_env(None if ray_address else state_dir)
    daemon.open_store()
    daemon.open_listener()
    # Set by a daemon that restarted itself because its external Ray head went away.
    waiting = os.environ.pop("LABQ_WAIT_FOR_RAY", "") == "1" and bool(ray_address)
    if waiting and ray_address and raycluster.reachable(ray_address):
        waiting = False
    if not waiting:
        daemon.start_ray()
    daemon.install_signal_handlers()
    (state_dir / "daemon.json").write_text(
        json.dumps({"pid": os.getpid(), "socket": str(socket_path), "ray": daemon.ray.address})
    )
    daemon.serve(wait_for_ray=waiting)
    if daemon.restart_requested:
        # Same arguments, fresh process (and fresh Ray driver). Our files close on exec
        # (Python opens them non-inheritable), which releases the state-dir lock.
        daemon.store.close()
        sys.stdout.flush()
        sys.stderr.flush()
        if not daemon.ray.embedded:
            os.environ["LABQ_WAIT_FOR_RAY"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "scheduler.cli", *sys.argv[1:]])
