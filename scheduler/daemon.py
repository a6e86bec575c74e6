"""The labq daemon: the composition of the parts that own the state.

Start-up, the threads, and shutdown; the parts themselves live in their own modules,
each owning what it says it owns:

| part (module)            | owns                                                  | written by      |
| ------------------------ | ----------------------------------------------------- | --------------- |
| Store (store.py)         | jobs, events, runs, quotas, audit, tokens (SQLite)    | all, in transactions |
| JobControl (control.py)  | every job state change and its side effects           | API, scheduler, pump, GPU threads |
| Scheduler (scheduling.py)| the last Decision; starts jobs                        | scheduler thread |
| EventPump (pump.py)      | the acknowledgement cursor                            | pump thread     |
| GpuWatch (gpuwatch.py)   | fleet and telemetry                                   | GPU thread      |
| RayLink (raylink.py)     | Ray status, embedded head, launcher handle            | start-up, pump, wait thread |
| NodeBook (nodes.py)      | alive/dead/drained nodes (locked)                     | scheduler, GPU, API threads |
| UsageLedger (ledger.py)  | finished runs for fair share (locked)                 | pump; read by scheduler |
| LogBook (logbook.py)     | job log files                                         | pump thread     |
| Admin (admin.py)         | the quota book, the shutdown request                  | API threads     |
| Tokens (tokens.py)       | API tokens' last-use marks (locked)                   | API threads     |
| Notifier (notify.py)     | sending --notify webhooks and commands                | notify thread   |
| CodeStore (codestore.py) | code snapshots, per user, content-addressed            | API threads; swept by the scheduler |

Threads: the API servers (api.py; one thread per connection), the scheduler loop, the
event pump, the GPU loop, the notify thread, and, after losing an external Ray head, the
Ray wait thread.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from scheduler import raycluster, safefs
from scheduler.admin import Admin
from scheduler.admission import Admission
from scheduler.auth import Admins, Caller, user_name
from scheduler.codestore import KEEP_ENDED_S, CodeStore
from scheduler.config import DaemonConfig
from scheduler.control import JobControl
from scheduler.doctor import Doctor
from scheduler.errors import AlreadyRunning, DaemonError
from scheduler.gpuwatch import GpuWatch
from scheduler.launcher import Launcher, LauncherDown
from scheduler.ledger import UsageLedger
from scheduler.logbook import LogBook
from scheduler.nodes import NodeBook
from scheduler.notify import Notifier
from scheduler.pump import EventPump
from scheduler.raylink import NAMESPACE, RayLink, executor_name
from scheduler.scheduling import Scheduler
from scheduler.shapes import ACTIVE
from scheduler.store import Store
from scheduler.team import HeadInfo, Team
from scheduler.tokens import Tokens
from scheduler.views import JobViews

__all__ = ["AlreadyRunning", "Daemon", "DaemonError", "run_daemon"]

log = logging.getLogger("labq.daemon")


class Daemon:
    def __init__(
        self,
        state_dir: Path,
        socket_path: Path,
        config: DaemonConfig,
        ray_address: str | None = None,
        gpus: int | None = None,
        cpus: int | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        """`launcher`: run jobs through this instead of Ray (tests: launcher.MemoryLauncher)."""
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.config = config
        self.ray_args = (ray_address, gpus, cpus)
        self.own_launcher = launcher
        self.uid = os.geteuid()
        self.user = user_name(self.uid)
        self.admins = Admins(config.admins, self.uid, self.user)
        self.logs_dir = state_dir / "logs"
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.ready = threading.Event()  # a launcher is attached and reconciled
        self.started_at = time.time()
        self.tcp: Any = None  # api.TcpApiServer when the config says `listen` (or `advertise`)
        self.cert_sha256 = ""  # the TCP listener's certificate, when it has one
        self._lock_fd: int | None = None
        self._code_swept = time.time()

    # -- start-up ----------------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """One daemon per state dir: a second one would corrupt the bookkeeping."""
        if not self.state_dir.parent.exists():
            self.state_dir.parent.mkdir(parents=True, mode=0o755)
        problem = safefs.untrusted_ancestor(self.state_dir.parent, final_private=False)
        if problem:
            raise DaemonError(f"state dir {self.state_dir}: {problem}; put it where only you (or root) can write")
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
            raise AlreadyRunning(f"another labq daemon (pid {other}) already runs on {self.state_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def open_store(self) -> None:
        """The store, and every part built on it."""
        c = self.config
        self.store = Store(self.state_dir / "labq.db")
        safefs.private_dir(self.logs_dir, 0o700)
        safefs.tighten(self.state_dir, into=("logs",))
        self.nodes = NodeBook(self.store)
        address, gpus, cpus = self.ray_args
        self.ray = RayLink(self.state_dir, self.nodes, self.stop_event, address, gpus, cpus, c)
        self.ray.executor_name = executor_name(self.instance_id())
        self.team = Team(self.store, enforced=bool(c.advertise) and not address, head=self.head_info)
        self.ray.trusted = self.team.trusted_addresses
        self.ray.on_membership = self.team.membership
        self.logs = LogBook(self.logs_dir, self.store, c.log_max_bytes, c.user_log_max_bytes)
        self.ledger = UsageLedger(self.store, c.half_life_s)
        self.notifier = Notifier(self.store, c.notify_allow_hosts, c.notify_webhooks, c.notify_commands)
        self.codes = CodeStore(self.state_dir / "code", c.code_max_bytes, c.code_user_max_bytes)
        self.admission = Admission(c, self.nodes, self.store, self.codes)
        self.control = JobControl(
            self.store,
            c,
            self.admission,
            self.nodes,
            self.logs,
            self.ledger,
            launcher=self.launcher,
            namespace=lambda: (self.ray.executor_id or "labq")[:8],
            refresh_nodes=self.refresh_nodes,
            connected=self.connected,
            finish_stats=lambda job_id: self.gpus.telemetry.finish_job(job_id),
            wake=self.wake.set,
        )
        self.admin = Admin(self.store, c, self.admins, self.nodes, self.control, wake=self.wake.set)
        self.admin.load_quotas()
        self.gpus = GpuWatch(self.store, c, self.nodes, self.control, lambda: self.admin.quotas, wake=self.wake.set)
        self.scheduler = Scheduler(
            self.store,
            c,
            self.nodes,
            self.control,
            self.ledger,
            quotas=lambda: self.admin.quotas,
            unusable=self.gpus.unusable,
            closed=lambda: self.admission.closed,
            wake=self.wake,
            dirs=self.gpus.dirs,
            look=self.gpus.poke.set,
            joined=lambda: bool(self.team.registry()),
        )
        # A workdir the head lacks is refused at submit only where there is no other
        # machine that could have it.
        self.admission.clustered = self.scheduler.clustered
        self.pump = EventPump(self.store, self.control)
        self.tokens = Tokens(self.store, self.admins)
        self.views = JobViews(self.store, self.scheduler, self.gpus, self.logs)
        self.doctor = Doctor(
            self.store,
            self.state_dir,
            self.logs_dir,
            self.socket_path,
            self.ray,
            self.nodes,
            self.gpus,
            self.tokens,
            listener=lambda: self.tcp.address if self.tcp is not None else None,
            user=self.user,
            team=self.team,
            ray_auth=c.ray_auth,
        )

    def instance_id(self) -> str:
        """This daemon's identity on a Ray cluster, kept in its database. A state dir
        from before it existed, that already ran an Executor, keeps the old shared name
        (its running jobs are adopted, not lost, on upgrade)."""
        found = self.store.get_meta("instance_id")
        if found is None:
            import secrets

            found = "" if self.store.get_meta("executor_id") else secrets.token_hex(4)
            self.store.set_meta("instance_id", found)
        return found

    def open_listener(self) -> None:
        """The TCP listener for remote clients (and, on a team head, for `labq join`),
        if configured. Before Ray starts, so a config mistake (no TLS beyond loopback,
        port taken) stops `labq up` at once."""
        c = self.config
        listen, cert, key = c.listen, c.tls_cert, c.tls_key
        if not listen and c.advertise:
            listen = f"{c.advertise}:{c.join_port}"
        if not listen:
            return
        from scheduler import selfcert
        from scheduler.api import TcpApiServer
        from scheduler.config import is_loopback, parse_listen

        host = parse_listen(listen)[0]
        if c.advertise and is_loopback(host):
            raise DaemonError(
                f"advertise {c.advertise}: other machines join through the listener, but listen {listen} "
                "is loopback; drop `listen` (it then defaults to ADVERTISE:join_port) or give a routable one"
            )
        if c.advertise and not cert and not is_loopback(host):
            try:
                cert, key = selfcert.ensure(self.state_dir, host)
            except selfcert.CertError as e:
                raise DaemonError(str(e)) from None
        self.tcp = TcpApiServer(listen, self, cert, key)
        # Once: every joined worker asks GET /v1/nodes/head every 2 s.
        self.cert_sha256 = selfcert.fingerprint(cert) if cert else ""

    def head_info(self) -> HeadInfo | None:
        """For `labq node invite` and `labq join`: a team head's addresses and secrets."""
        head = self.ray.head
        if head is None or self.tcp is None or not self.cert_sha256:
            return None
        return HeadInfo(
            ray_address=head.address,
            token_path=str(raycluster.auth_token_path(self.state_dir)),
            listener=self.tcp.address,
            cert_sha256=self.cert_sha256,
            epoch=hashlib.sha256(f"{head.pid}:{head.address}:{head.temp_dir}".encode()).hexdigest()[:16],
        )

    # -- Ray, or whatever runs the jobs --------------------------------------------------------------
    def launcher(self) -> Launcher | None:
        if self.own_launcher is not None:
            return self.own_launcher
        out: Launcher | None = self.ray.launcher
        return out

    def connected(self) -> bool:
        return self.own_launcher is not None or self.ray.connected

    def refresh_nodes(self) -> None:
        if self.own_launcher is None:
            self.ray.refresh_nodes()

    def watch_nodes(self) -> None:
        """The scheduler loop's node refresh, every couple of seconds: Ray's node list,
        then the jobs of nodes that are gone or silent (JobControl.check_silent)."""
        self.refresh_nodes()
        launcher = self.launcher()
        if launcher is None:
            return
        try:
            known = launcher.known()
        except LauncherDown:
            return
        self.control.check_silent(known, self.config.node_timeout_s)

    def start_ray(self) -> None:
        self.ray.start()
        self.attached()

    def attached(self) -> None:
        """A launcher is there (at start, or after waiting for Ray): adopt what it runs."""
        launcher = self.launcher()
        assert launcher is not None
        self.pump.reset_if_new(str(launcher.ping()["id"]))
        self.control.reconcile(launcher.known())
        if self.own_launcher is None:
            self.gpus.start_fleet(NAMESPACE)
        self.ready.set()
        self.wake.set()

    # -- what the API asks of the daemon as a whole -------------------------------------------------
    def health(self, caller: Caller) -> dict[str, Any]:
        inv = self.ray.inventory
        private = (
            {"pid": os.getpid(), "state_dir": str(self.state_dir), "socket": str(self.socket_path)}
            if caller.admin
            else {}
        )
        return {
            **private,
            "user": self.user,
            "started_at": self.started_at,
            "draining": self.admission.closed,
            "ray": dict(self.ray.status.__dict__),
            "nvml": None
            if inv is None
            else {"gpus": inv.count, "names": list(inv.names), "driver": inv.driver, "why_none": inv.why_none},
            "last_pass": self.scheduler.last_pass,
            "pass_s": self.scheduler.pass_s,
            "listen": self.tcp.address if self.tcp is not None else None,
            "metrics": f"http://{self.config.metrics_host}:{self.config.metrics_port}/metrics"
            if self.config.metrics_port
            else None,
            "counts": self.store.count_by_state(),
            "schema_version": self.store.schema_version(),
        }

    def authenticate(self, raw: str | None) -> Caller:
        return self.tokens.authenticate(raw)

    # -- the threads ----------------------------------------------------------------------------------
    def _after_pass(self) -> None:
        # Uploads no job uses (a refused submit, a client killed mid-way), hourly.
        now = time.time()
        if now - self._code_swept > 3600:
            self._code_swept = now
            self.codes.sweep(self.store.code_refs(now - KEEP_ENDED_S), now)
        # `labq down --drain`: stop once nothing runs any more.
        if self.admission.closed and not self.store.jobs(states=ACTIVE, with_spec=False):
            self.stop_event.set()

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
                c = self.config
                self.metrics = serve_metrics(
                    self, c.metrics_host, c.metrics_port, c.max_connections_per_user, 256, c.request_timeout_s
                )
            except OSError as e:
                # Metrics are a convenience: say so loudly, keep scheduling.
                log.error("cannot serve /metrics on %s:%d: %s", self.config.metrics_host, self.config.metrics_port, e)
        stop = self.stop_event
        threads = [
            threading.Thread(target=self.server.serve_forever, name="labq-api", daemon=True),
            threading.Thread(
                target=self.scheduler.loop,
                args=(stop, self.connected, self.watch_nodes, self._after_pass),
                name="labq-sched",
                daemon=True,
            ),
            threading.Thread(
                target=self.pump.loop,
                args=(
                    stop,
                    self.ready,
                    self.launcher,
                    self.ray.down,
                    self.ray.up_again,
                    self.ray.restart_for_ray,
                    lambda: self.admission.closed,
                    self.wake.set,
                    self.config.ray_lost_after_s,
                ),
                name="labq-events",
                daemon=True,
            ),
            threading.Thread(target=self.gpus.loop, args=(stop, self.connected), name="labq-gpus", daemon=True),
            threading.Thread(target=self.notifier.loop, args=(stop,), name="labq-notify", daemon=True),
        ]
        if wait_for_ray:
            threads.append(
                threading.Thread(target=self.ray.wait_for_ray, args=(self.attached,), name="labq-ray-wait", daemon=True)
            )
        for t in threads:
            t.start()
        self.wake.set()
        while not stop.wait(0.5):
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
        if self.admin.shutdown_mode is None or self.own_launcher is not None:
            return  # a signal, not `labq down`: leave Ray and the jobs running
        if self.gpus.fleet is not None:
            try:
                self.gpus.fleet.stop_all()
            except Exception:  # noqa: BLE001
                log.exception("could not stop the GPU monitors")
        self.ray.teardown()

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


def safe_import_path(state_dir: Path) -> None:
    """Run in the (private) state dir, with no relative or current-directory entries on
    the import path: Ray hands the driver's path to its (root) workers, and a directory
    another user can write must never be where root imports code from."""
    os.chdir(state_dir)
    # (`labq up` starts the daemon with -P from the state dir, so the start directory is
    # not there in the first place; a relative entry would now mean the state dir.)
    sys.path[:] = [p for p in sys.path if p and not p.startswith(".")]


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
    safe_import_path(state_dir)
    raycluster.prepare_driver_env(None if ray_address else state_dir, config.ray_token_file)
    daemon.open_store()
    from scheduler.api import prepare_socket_dir

    prepare_socket_dir(socket_path)
    daemon.open_listener()
    # Set by a daemon that restarted itself because its external Ray head went away.
    waiting = os.environ.pop("LABQ_WAIT_FOR_RAY", "") == "1" and bool(ray_address)
    if waiting and ray_address and raycluster.reachable(ray_address):
        waiting = False
    if not waiting:
        daemon.start_ray()
    daemon.install_signal_handlers()
    (state_dir / "daemon.json").write_text(
        json.dumps({"pid": os.getpid(), "socket": str(socket_path), "ray": daemon.ray.status.address})
    )
    daemon.serve(wait_for_ray=waiting)
    if daemon.ray.restart_requested:
        # Same arguments, fresh process (and fresh Ray driver). Our files close on exec
        # (Python opens them non-inheritable), which releases the state-dir lock.
        daemon.store.close()
        sys.stdout.flush()
        sys.stderr.flush()
        if not daemon.ray.status.embedded:
            os.environ["LABQ_WAIT_FOR_RAY"] = "1"
        os.execv(sys.executable, [sys.executable, "-P", "-m", "scheduler.cli", *sys.argv[1:]])
