"""Where things live and what the daemon's config file may say.

Imported by the CLI, so it stays stdlib-only (YAML is loaded lazily by the daemon).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Keys whose value is a list of strings, and what each string is.
_LIST_KEYS = {
    "admins": "user names",
    "notify_allow_hosts": "host names, addresses or networks (10.0.0.0/8)",
    "labels": "node labels (e.g. [ib, nvlink])",
}


class ConfigError(ValueError):
    """A config file that cannot be used; the message is user-facing."""


@dataclass(frozen=True)
class DaemonConfig:
    admins: tuple[str, ...] = ()
    grace_period_s: float = 30.0
    default_time_limit_s: float = 24 * 3600.0
    min_runtime_s: float = 600.0
    half_life_s: float = 7 * 86400.0
    preemption: bool = True
    backfill: bool = True
    # Each researcher's own waiting jobs: shortest expected run first (a learned
    # runtime, else --time), a job waiting a week before all; false: oldest first.
    shortest_first: bool = False
    # When the daemon runs as an ordinary user, accept jobs from other users only if
    # the team really shares that one account.
    shared_account: bool = False
    quotas_file: str = ""
    # Per-job log; output beyond this is read and dropped (the log says so).
    log_max_bytes: int = 256 * 1024 * 1024
    pass_interval_s: float = 1.0
    # Jobs over several nodes (gangs on whole nodes, issue 15); off: refused at submit.
    allow_multi_node: bool = True
    # This machine's node labels (`--constraint ib` asks for them; joined machines give
    # theirs to `labq join --labels`), and the GPU model its simulated GPUs are served
    # as (no NVIDIA GPU here; one of fakenvml.MODELS, e.g. h100 for a mixed test cluster).
    labels: tuple[str, ...] = ()
    simulate_gpu: str = ""
    # The team cluster (issue 14). `advertise`: the embedded Ray head listens on this
    # routable address (on ray_port) instead of loopback, and `labq join` reaches the
    # daemon there (on join_port, TLS). Ray always runs with token auth; an external
    # cluster without it is refused unless ray_auth says "disabled" (everyone on its
    # network can then run code on every node). ray_token_file: the token of an
    # external cluster (RAY_AUTH_TOKEN_PATH otherwise).
    advertise: str = ""
    ray_port: int = 6379
    join_port: int = 7450
    ray_auth: str = "token"
    ray_token_file: str = ""
    # A node that stops answering (Ray's heartbeats or the node agent's) this long is
    # taken for lost with its jobs, even before Ray says so.
    node_timeout_s: float = 60.0
    # A job whose node dies ends NODE_LOST and is requeued this many times.
    node_lost_retries: int = 1
    # How long the Executor may stay silent before the daemon takes Ray for gone and
    # restarts itself to reconnect (a Ray driver cannot re-attach in-process).
    ray_lost_after_s: float = 5.0
    # GPU monitoring (issue 4): how often each node agent polls NVML, how much history
    # the daemon keeps per GPU, and when a running job counts as idle.
    monitor_interval_s: float = 1.0
    gpu_history_s: float = 600.0
    idle_threshold_pct: float = 2.0
    idle_window_s: float = 1800.0
    # For quotas whose idle_action is cancel/requeue: how long after being flagged idle.
    idle_action_after_s: float = 1800.0
    # Prometheus /metrics; 0 = off. Loopback unless metrics_host says otherwise.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # Remote clients over TCP, off by default. Every request there needs a token; a
    # listener beyond loopback also needs TLS, so no token crosses a network in clear.
    listen: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # What one user can do to everyone else (issue 12). A job's --grace is capped, so
    # no job can make itself unkillable; an admin can always `labq cancel --now`.
    max_grace_s: float = 300.0
    # `--notify` (issue 16). A webhook goes only to public addresses unless its host
    # (a name, an address or a network) is listed here; either kind can be turned off.
    notify_allow_hosts: tuple[str, ...] = ()
    notify_webhooks: bool = True
    notify_commands: bool = True
    # A cgroup (v2) per job where the node allows it: cancel kills every process the
    # job started, wherever it moved. Off: the runner tracks descendants instead.
    job_cgroups: bool = True
    # Code snapshots (issue 17): a job runs the code as it was at submit. Off: the live
    # tree, as before. Per snapshot and per user (all of theirs) at most this much.
    code_snapshots: bool = True
    code_max_bytes: int = 20 * 1024**2
    code_user_max_bytes: int = 2 * 1024**3
    # Interactive sessions (issue 17) whose GPUs sit idle this long end, whatever the
    # quota's idle_action (an idle notebook is the classic GPU thief); the session's
    # terminal is warned session_idle_warn_s before. 0 = never.
    session_idle_s: float = 3600.0
    session_idle_warn_s: float = 300.0
    # Queue and request limits a real team never reaches, but a runaway script does.
    max_pending_jobs_per_user: int = 10000
    max_submissions_per_minute: int = 6000
    max_spec_bytes: int = 64 * 1024
    # An array's or sweep's tasks all together, each as expanded ({lr} replaced by its
    # longest value): what one submission may add to the state file.
    max_array_bytes: int = 128 * 1024**2
    # API connections: per Unix user (or per token user / address over TCP) and in all;
    # a request (or an idle kept-alive connection) gets this long, however it trickles.
    max_connections_per_user: int = 64
    max_connections: int = 1024
    request_timeout_s: float = 30.0
    # Logs one user may keep in all; past it their oldest ended jobs' logs are removed.
    user_log_max_bytes: int = 20 * 1024**3
    extra: dict[str, Any] = field(default_factory=dict)


_DURATION_KEYS = {
    "grace_period_s",
    "default_time_limit_s",
    "min_runtime_s",
    "half_life_s",
    "monitor_interval_s",
    "gpu_history_s",
    "idle_window_s",
    "idle_action_after_s",
    "max_grace_s",
    "request_timeout_s",
    "ray_lost_after_s",
    "node_timeout_s",
    "session_idle_s",
    "session_idle_warn_s",
}


_SIZE_KEYS = {"log_max_bytes", "user_log_max_bytes", "max_spec_bytes", "max_array_bytes", "code_max_bytes", "code_user_max_bytes"}


def _typed(path: Path, key: str, v: Any) -> Any:
    """Check a plain config value against the type of its default."""
    default = getattr(DaemonConfig(), key)
    ok = {
        bool: isinstance(v, bool),
        int: isinstance(v, int) and not isinstance(v, bool),
        float: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: isinstance(v, str),
    }.get(type(default), True)
    if not ok:
        raise ConfigError(f"config {path}: {key} must be a {type(default).__name__}, got {v!r}")
    return float(v) if isinstance(default, float) else v


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT') for the TCP listener; ConfigError in words otherwise."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen must be HOST:PORT (e.g. 127.0.0.1:7450), got {value!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_daemon_config(path: Path | None) -> DaemonConfig:
    if path is None:
        return DaemonConfig()
    import yaml  # only the daemon pays for it

    from scheduler.units import UnitError, parse_duration, parse_size

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping")
    known = {f.name for f in fields(DaemonConfig)} - {"extra"}
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k not in known:
            raise ConfigError(f"config {path}: unknown key {k!r} (known: {', '.join(sorted(known))})")
        if k in _DURATION_KEYS:
            try:
                # Zero is meaningful here (no grace, no minimum runtime), unlike a job's limit.
                v = 0.0 if v in (0, "0", "0s") else parse_duration(v)
            except UnitError as e:
                raise ConfigError(f"config {path}: {k}: {e}") from None
        elif k in _SIZE_KEYS:
            try:
                v = parse_size(v)
            except UnitError as e:
                raise ConfigError(f"config {path}: {k}: {e}") from None
        elif k not in _LIST_KEYS:
            v = _typed(path, k, v)
        if k in _LIST_KEYS:
            if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
                raise ConfigError(f"config {path}: {k} must be a list of {_LIST_KEYS[k]}")
            v = tuple(v)
        out[k] = v
    from scheduler.gputypes import ray_labels

    try:
        ray_labels(out.get("labels", ()), out.get("simulate_gpu", ""))
    except ValueError as e:
        raise ConfigError(f"config {path}: {e}") from None
    if out.get("ray_auth", "token") not in ("token", "disabled"):
        raise ConfigError(f"config {path}: ray_auth must be token or disabled, got {out['ray_auth']!r}")
    for k in ("quotas_file", "tls_cert", "tls_key", "ray_token_file"):
        if out.get(k) and not os.path.isabs(out[k]):
            out[k] = str(path.parent / out[k])
    return DaemonConfig(**out)
