"""The daemon's link to Ray: connect or start the embedded head, attach the Executor,
keep the node list fresh, notice when Ray is gone, and come back.

A Ray driver cannot re-attach to a new head in the same process (and when a new head
appears at the old address, Ray aborts the old driver outright on the cluster-id
mismatch), so losing Ray means restarting the daemon: `restart_for_ray` asks the
composition to stop, and `run_daemon` re-executes itself. The new process starts a
new embedded head, or waits (`wait_for_ray`) until an external head answers, then
connects as a fresh driver and reconciles.

Owns: the Ray status (`status`), the embedded head's record, the NVML inventory of
this machine and the launcher handle. Written by the start-up, the wait thread and
whichever thread first sees Ray fail; read by everyone (plain attribute reads).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler import raycluster
from scheduler.config import DaemonConfig
from scheduler.gpu import GpuInventory, detect
from scheduler.gputypes import ray_labels
from scheduler.nodes import NodeBook

log = logging.getLogger("labq.ray")

NAMESPACE = "labq"


@dataclass
class RayStatus:
    address: str = ""
    embedded: bool = False
    connected: bool = False
    error: str = ""
    since: float = field(default_factory=time.time)


def executor_name(instance: str) -> str:
    """The Executor of one daemon (its state dir's instance id); "" = the name labq
    used before there was one, kept for a state dir that already had an Executor."""
    return f"labq-executor-{instance}" if instance else "labq-executor"


class RayLink:
    def __init__(
        self,
        state_dir: Path,
        nodes: NodeBook,
        stop: threading.Event,
        address: str | None = None,
        gpus: int | None = None,
        cpus: int | None = None,
        config: DaemonConfig | None = None,
    ) -> None:
        self.state_dir = state_dir
        # Its say on the cluster: advertise, ray_port, ray_auth, ray_token_file.
        self.config = config or DaemonConfig()
        self.nodes = nodes
        self.stop_event = stop
        self.requested_address = address
        self.requested_gpus = gpus
        self.requested_cpus = cpus
        self.status = RayStatus()
        self.head: raycluster.EmbeddedHead | None = None
        self.inventory: GpuInventory | None = None
        self.launcher: Any = None  # executor.RayLauncher once attached
        self.executor_id = ""
        self.head_id = ""  # the daemon's own Ray node: the head (no resource a node declares says so)
        # The detached Executor's name: one per daemon (state dir), so two daemons on
        # one Ray cluster, or a new state dir after an old one, never share jobs.
        self.executor_name = "labq-executor"
        self.restart_requested = False
        # Set by the composition (team.Team): which node addresses are trusted (None:
        # all), and who hears of nodes coming and going.
        self.trusted: Any = lambda: None
        self.on_membership: Any = lambda added, removed: None

    @property
    def connected(self) -> bool:
        return self.status.connected

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (or start the embedded head) and attach the Executor."""
        from scheduler.raycluster import RayError

        self.inventory = detect()
        c = self.config
        if self.requested_address:
            self.status = RayStatus(address=self.requested_address, embedded=False)
            if raycluster.reachable(self.requested_address, 3.0):
                have_token = bool(c.ray_token_file) or os.environ.get("RAY_AUTH_MODE") == "token"
                refusal = raycluster.check_external_auth(self.requested_address, c.ray_auth, have_token)
                if refusal:
                    raise RayError(refusal)
            raycluster.connect(self.requested_address, NAMESPACE)
        else:
            head = raycluster.find_embedded(self.state_dir)
            want_host = c.advertise or "127.0.0.1"
            if head is not None and head.address.rpartition(":")[0] != want_host:
                raise RayError(
                    f"the embedded Ray from an earlier daemon still runs at {head.address}; "
                    f"stop it with `labq down` before starting on {want_host}"
                )
            if head is None:
                gpus, simulated = self._embedded_gpus()
                head = raycluster.start_embedded(
                    self.state_dir,
                    gpus,
                    simulated,
                    cpus=self.requested_cpus,
                    advertise=c.advertise,
                    port=c.ray_port,
                    labels=ray_labels(c.labels, c.simulate_gpu),
                )
            elif self.requested_gpus is not None and self.requested_gpus != head.gpus:
                raise RayError(
                    f"the embedded Ray from an earlier daemon still runs with {head.gpus} GPUs; "
                    f"stop it with `labq down` before asking for --gpus {self.requested_gpus}"
                )
            self.head = head
            self.status = RayStatus(address=head.address, embedded=True)
            raycluster.connect(head.address, NAMESPACE)
        self.status.connected = True
        import ray

        self.head_id = str(ray.get_runtime_context().get_node_id())
        self.refresh_nodes()
        self._attach_executor()

    def _embedded_gpus(self) -> tuple[int, bool]:
        from scheduler.raycluster import RayError

        inv = self.inventory
        assert inv is not None
        if inv.count > 0:
            if self.requested_gpus is not None and self.requested_gpus > inv.count:
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
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from scheduler.executor import Executor, RayLauncher

        handle = Executor.options(  # type: ignore[attr-defined]
            name=self.executor_name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            # Hard: the Executor owns every job's task, so it lives on the daemon's own
            # node; on a worker, losing that worker would lose every job's owner.
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=self.head_id, soft=False),
        ).remote()
        launcher = RayLauncher(handle)
        info = ray.get(handle.ping.remote(), timeout=60)
        self.executor_id = str(info["id"])
        self.launcher = launcher

    # -- while running -------------------------------------------------------------------------
    def refresh_nodes(self) -> None:
        try:
            raw = raycluster.nodes()
        except Exception as e:  # noqa: BLE001 - Ray raises many kinds here
            self.down(f"cannot list Ray nodes: {e}")
            return
        simulated = bool(self.status.embedded and self.head is not None and self.head.simulated)
        added, removed = self.nodes.update_from_ray(
            raw, self.status.address.rpartition(":")[0], simulated, self.trusted(), self.head_id
        )
        if added or removed:
            try:
                self.on_membership(added, removed)
            except Exception:  # noqa: BLE001 - an audit write must not stop the refresh
                log.exception("could not record a node change")

    def down(self, why: str) -> None:
        if self.status.connected:
            log.error("Ray unreachable: %s", why)
            self.status.since = time.time()
        self.status.connected = False
        self.status.error = why

    def up_again(self) -> None:
        if not self.status.connected:
            self.status.connected = True
            self.status.error = ""

    def restart_for_ray(self) -> None:
        """The Ray head is gone: stop, so that `run_daemon` starts the daemon again
        (see the module's docstring). Meanwhile the API answers and takes submissions."""
        if self.restart_requested:
            return
        if self.status.embedded:
            log.error("the embedded Ray head is gone (%s): restarting the daemon to start it again", self.status.error)
        else:
            log.error(
                "the Ray head at %s is gone (%s): restarting the daemon to wait for it and reconnect",
                self.status.address,
                self.status.error,
            )
        self.restart_requested = True
        self.stop_event.set()

    def wait_for_ray(self, then: Any) -> None:
        """Started again after losing an external head: the API already serves; connect
        (a fresh driver) when the head answers again, then call `then()` (reconcile)."""
        address = self.requested_address or ""
        self.status = RayStatus(
            address=address, embedded=False, error=f"waiting for the Ray head at {address} to answer again"
        )
        while not self.stop_event.wait(1.0):
            if not raycluster.reachable(address):
                continue
            try:
                self.start()
            except Exception as e:  # noqa: BLE001 - say why and keep waiting
                self.status.error = f"cannot connect to {address} yet: {e}"
                log.error("%s", self.status.error)
                continue
            log.info("reconnected to the Ray head at %s", address)
            then()
            return

    def teardown(self) -> None:
        """`labq down`: the Executor (and with it every job's task), then the embedded head."""
        import ray

        try:
            if self.launcher is not None:
                self.launcher.kill()
        except Exception:  # noqa: BLE001
            log.exception("could not stop the executor")
        ray.shutdown()
        if self.status.embedded:
            raycluster.stop_embedded(self.state_dir)
