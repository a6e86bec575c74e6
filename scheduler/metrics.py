"""Prometheus `/metrics`, read from the daemon's state at scrape time.

GPU series use the DCGM exporter's names and units (DCGM_FI_DEV_GPU_UTIL in %,
DCGM_FI_DEV_FB_USED in MiB, DCGM_FI_DEV_POWER_USAGE in W, ...) and its labels
(`gpu`, `UUID`, `modelName`, `Hostname`), plus `hpc_job` (dcgm-exporter's own label for
the HPC job holding a GPU: a label named `job` is renamed `exported_job` by Prometheus,
which keeps `job` for the scrape job), `user` and `node`, so Grafana dashboards built for
DCGM work unchanged. Queue, wait, idle and fair-share series are `labq_*`;
configs/grafana/labq.json is a dashboard over all of them.
"""

from __future__ import annotations

import socket
import socketserver
import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from scheduler.conns import DeadlineHandler, LimitedServer
from scheduler.gpuwatch import GpuWatch
from scheduler.scheduling import Scheduler
from scheduler.shapes import JobState
from scheduler.store import Store


class Source(Protocol):
    """The parts of the daemon the metrics read (never the daemon module itself)."""

    store: Store
    gpus: GpuWatch
    scheduler: Scheduler

GPU_LABELS = ["gpu", "UUID", "modelName", "Hostname", "node", "hpc_job", "user", "simulated"]
USAGE_WINDOW_S = 7 * 86_400  # the idle/allocated GPU-hour gauges: the last week, as `labq usage`

# (metric, help, field in the GPU report, scale)
GPU_SERIES: list[tuple[str, str, str, float]] = [
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "util_gpu", 1.0),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", "util_memory", 1.0),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "memory_used", 1 / 2**20),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "temperature_c", 1.0),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "power_mw", 1e-3),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Volatile uncorrected ECC errors.", "ecc_uncorrected", 1.0),
]


class DaemonCollector(Collector):
    def __init__(self, daemon: Source) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[GaugeMetricFamily]:
        d = self.daemon
        families = {
            name: GaugeMetricFamily(name, help_, labels=GPU_LABELS) for name, help_, _, _ in GPU_SERIES
        }
        free = GaugeMetricFamily(
            "DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels=GPU_LABELS
        )
        healthy = GaugeMetricFamily(
            "labq_gpu_healthy", "1 if NVML reports the GPU healthy.", labels=GPU_LABELS
        )
        stale = GaugeMetricFamily(
            "labq_node_report_age_seconds",
            "Seconds since the node's GPU monitor last answered.",
            labels=["node"],
        )
        for n in d.gpus.node_views():
            if n.get("age_s") is not None:
                stale.add_metric([n["name"]], float(n["age_s"]))
            for g in n.get("gpu_list", []):
                labels = [
                    str(g["index"]),
                    g.get("uuid") or "",
                    g.get("name") or "",
                    n["name"],
                    n["name"],
                    "" if g.get("job_id") is None else str(g["job_id"]),
                    g.get("user") or "",
                    "true" if n.get("simulated") else "false",
                ]
                for name, _, key, scale in GPU_SERIES:
                    v = g.get(key)
                    if v is not None:  # "n/a" on this GPU: no series rather than a fake 0
                        families[name].add_metric(labels, float(v) * scale)
                if g.get("memory_total") is not None and g.get("memory_used") is not None:
                    free.add_metric(labels, (g["memory_total"] - g["memory_used"]) / 2**20)
                healthy.add_metric(labels, 1.0 if g.get("healthy") else 0.0)
        yield from families.values()
        yield free
        yield healthy
        yield stale
        yield from self._queue()

    def _queue(self) -> Iterator[GaugeMetricFamily]:
        d = self.daemon
        pending = GaugeMetricFamily("labq_jobs_pending", "Jobs waiting, per user.", labels=["user"])
        running = GaugeMetricFamily("labq_jobs_running", "Jobs running, per user.", labels=["user"])
        gpus = GaugeMetricFamily("labq_gpus_running", "GPUs held by running jobs, per user.", labels=["user"])
        factor = GaugeMetricFamily(
            "labq_fair_share_factor", "Fair-share factor F = 2^(-U/S), 1 = no recent usage.", labels=["user"]
        )
        usage = GaugeMetricFamily(
            "labq_usage_gpu_seconds", "Decayed GPU-seconds used, per user.", labels=["user"]
        )
        wait = GaugeMetricFamily(
            "labq_queue_wait_seconds", "How long the longest-waiting pending job has waited, per user.", labels=["user"]
        )
        allocated = GaugeMetricFamily(
            "labq_allocated_gpu_hours_7d", "GPU-hours held by jobs over the last 7 days, per user.", labels=["user"]
        )
        idle = GaugeMetricFamily(
            "labq_idle_gpu_hours_7d",
            "GPU-hours held but idle (under the idle threshold) over the last 7 days, per user.",
            labels=["user"],
        )
        now = time.time()
        counts: dict[str, list[int]] = {}
        oldest: dict[str, float] = {}
        for j in d.store.jobs(states=(JobState.PENDING, JobState.STARTING, JobState.RUNNING), with_spec=False):
            c = counts.setdefault(j.user, [0, 0, 0])
            if j.state.active:
                c[1] += 1
                c[2] += j.gpus
            else:
                c[0] += 1
                oldest[j.user] = min(oldest.get(j.user, now), j.submit_time)
        for user, (p, r, g) in sorted(counts.items()):
            pending.add_metric([user], p)
            running.add_metric([user], r)
            gpus.add_metric([user], g)
            wait.add_metric([user], max(0.0, now - oldest[user]) if user in oldest else 0.0)
        for row in d.gpus.usage_report(USAGE_WINDOW_S, "user")["rows"]:
            allocated.add_metric([row["user"]], row["allocated_gpu_h"])
            idle.add_metric([row["user"]], row["idle_gpu_h"])
        decision = d.scheduler.decision
        if decision is not None:
            for user, share in sorted(decision.shares.items()):
                factor.add_metric([user], share.factor)
                usage.add_metric([user], share.usage)
        yield pending
        yield running
        yield gpus
        yield factor
        yield usage
        yield wait
        yield allocated
        yield idle


class _MetricsHandler(DeadlineHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        data = generate_latest(self.server.registry)
        self.server.watchdog.arm(self.request, self.server.timeout_s)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class MetricsServer(LimitedServer, socketserver.TCPServer):
    """/metrics with the API's connection caps and deadlines (prometheus_client's own
    server keeps an idle connection, and its thread, forever)."""

    allow_reuse_address = True

    def __init__(self, host: str, port: int, registry: CollectorRegistry, per_address: int, total: int, timeout_s: float) -> None:
        self.registry = registry
        self.setup_limits(per_address, total, timeout_s)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _MetricsHandler)

    def _key(self, request: Any, client_address: Any) -> tuple[str, bool]:
        return f"address {client_address[0]}", True


def serve_metrics(daemon: Source, host: str, port: int, per_address: int = 64, total: int = 256, timeout_s: float = 30.0) -> Any:
    """Start the /metrics HTTP server in a thread; returns (server, thread) for shutdown."""
    import threading

    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    server = MetricsServer(host, port, registry, per_address, total, timeout_s)
    thread = threading.Thread(target=server.serve_forever, name="labq-metrics", daemon=True)
    thread.start()
    return server, thread
