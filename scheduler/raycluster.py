"""Finding, starting and stopping the Ray cluster the daemon hands jobs to.

The embedded head runs `ray start --head --block` in its own process session, so a
crashed daemon leaves it (and the jobs on it) running; its address and pid are kept
in the state dir, where the next `labq up` finds them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


class RayError(Exception):
    """Ray cannot be started or reached; the message is user-facing."""


@dataclass(frozen=True)
class EmbeddedHead:
    address: str
    pid: int
    gpus: int
    simulated: bool
    temp_dir: str


def auth_token_path(state_dir: Path) -> Path:
    return state_dir / "ray-auth-token"


def _ensure_auth_token(state_dir: Path) -> Path:
    """The embedded cluster's Ray token: readable by the daemon's user alone."""
    path = auth_token_path(state_dir)
    if not path.exists():
        import secrets

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    os.chmod(path, 0o600)
    return path


def ray_env(embedded_state: Path | None, token_file: str = "") -> dict[str, str]:
    """The environment for Ray processes and the daemon's driver.

    Anyone who reaches a Ray cluster's servers (GCS, raylets, the Ray Client server)
    can run code as the user Ray runs as: root on a team box. So the embedded cluster
    always runs with Ray's token authentication, the token in a 0600 file in the
    state dir; jobs (run as their submitters) cannot read it. For an external cluster
    the token is the config's `ray_token_file`, else the operator's RAY_AUTH_MODE and
    token pass through; without either the driver connects without a token, and
    `check_external_auth` refuses a cluster that lets it.
    """
    env = dict(os.environ)
    # A stray CUDA_VISIBLE_DEVICES in the daemon's shell would hide GPUs from Ray.
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if embedded_state is not None:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(_ensure_auth_token(embedded_state))
        env.pop("RAY_AUTH_TOKEN", None)
    elif token_file:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = token_file
        env.pop("RAY_AUTH_TOKEN", None)
    else:
        env.setdefault("RAY_AUTH_MODE", "disabled")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # A Ray driver exits by itself when the head stays unreachable for a minute; the
    # daemon must instead live on, say so, and reconnect when the head is back.
    env["RAY_gcs_rpc_server_reconnect_timeout_s"] = str(365 * 86400)
    return env


# Asks a GCS for its node table the way an outsider would: no token. A cluster with
# token auth answers AuthenticationError in a fraction of a second.
_PROBE = """
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1]).get_all_node_info(timeout=10)
except Exception as e:
    print(type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
    sys.exit(3)
print("open")
"""


def auth_probe(address: str, timeout: float = 30.0) -> str:
    """"open" when the cluster at `address` answers a caller without a token,
    "token" when it refuses one, else why it could not tell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, address],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
        )
    except subprocess.TimeoutExpired:
        return f"no answer from {address} within {timeout:.0f}s"
    last = (out.stdout.strip().splitlines() or [""])[-1]
    if out.returncode == 0 and last == "open":
        return "open"
    if last.startswith("AuthenticationError"):
        return "token"
    return last or f"the probe failed (exit {out.returncode})"


OPEN_CLUSTER = (
    "the Ray cluster at {address} runs without token auth: anyone who reaches it can run commands "
    "as its user on every node. Start it with RAY_AUTH_MODE=token (see README, Team cluster) and give "
    "labq its token (ray_token_file), or set `ray_auth: disabled` in the config to accept that"
)


def check_external_auth(address: str, ray_auth: str, have_token: bool) -> str:
    """Before the daemon connects to an external cluster: "" if it may, else why not."""
    verdict = auth_probe(address)
    if verdict == "open":
        return "" if ray_auth == "disabled" else OPEN_CLUSTER.format(address=address)
    if verdict == "token" and not have_token:
        return (
            f"the Ray cluster at {address} needs its auth token: give its path as ray_token_file "
            "in the config (or RAY_AUTH_TOKEN_PATH)"
        )
    return ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Ray's longest path under its temp dir is a Unix socket,
# session_YYYY-MM-DD_HH-MM-SS_ffffff_PID/sockets/plasma_store, and a socket path has
# at most 107 bytes.
_MAX_TEMP_DIR = 44


def _temp_dir(state_dir: Path) -> str:
    """The embedded Ray's temp dir: inside the (0700) state dir, so its session, log
    and socket directories, which Ray makes 0777, are out of every other user's reach.
    (In /tmp, anyone could rename the raylet's socket and bind their own in its place.)
    A state dir too deep for Ray's socket paths gets a private dir in /tmp instead."""
    from scheduler import safefs

    inside = state_dir.resolve() / "ray"
    if len(str(inside)) <= _MAX_TEMP_DIR:
        return str(safefs.private_dir(inside, 0o700))
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:10]
    mine = safefs.private_dir(Path(f"/tmp/labq-{os.geteuid()}"), 0o700, parents=False)
    return str(safefs.private_dir(mine / f"ray-{digest}", 0o700))


def _head_file(state_dir: Path) -> Path:
    return state_dir / "ray-head.json"


def reachable(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_embedded(state_dir: Path) -> EmbeddedHead | None:
    """The embedded head a previous daemon started, if it still runs."""
    try:
        data = json.loads(_head_file(state_dir).read_text())
        head = EmbeddedHead(**data)
    except (OSError, ValueError, TypeError):
        return None
    if _alive(head.pid) and reachable(head.address):
        return head
    return None


def head_command(
    port: int, gpus: int, temp_dir: str, cpus: int | None = None, node_ip: str = "127.0.0.1", labels: str = ""
) -> list[str]:
    """`ray start` for the head in the foreground (its own session kills it): on
    loopback for one machine, on the advertised address for a team's cluster.
    `labels`: its Ray node labels (gputypes.ray_labels)."""
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--node-ip-address={node_ip}",
        f"--num-gpus={gpus}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    if cpus is not None:
        cmd.append(f"--num-cpus={cpus}")
    if labels:
        cmd.append(f"--labels={labels}")
    return cmd


def start_embedded(
    state_dir: Path,
    gpus: int,
    simulated: bool,
    cpus: int | None = None,
    timeout: float = 90.0,
    advertise: str = "",
    port: int = 0,
    labels: str = "",
) -> EmbeddedHead:
    # On one machine any free port; a team's head keeps one port, so that joined
    # workers find it again after a restart.
    port = port if advertise and port else _free_port()
    from scheduler.safefs import UnsafePath

    try:
        temp_dir = _temp_dir(state_dir)
    except (OSError, UnsafePath) as e:
        raise RayError(f"cannot make Ray's temp dir: {e}") from None
    ray_bin = Path(sys.executable).parent / "ray"
    cmd = head_command(port, gpus, temp_dir, cpus, node_ip=advertise or "127.0.0.1", labels=labels)
    if advertise:
        _wait_for_old_head(f"{advertise}:{port}", temp_dir, 20.0)
    log_path = state_dir / "ray-head.log"
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=ray_env(state_dir),
                start_new_session=True,
                cwd=state_dir,  # never the caller's directory (see daemon.safe_import_path)
            )
        except OSError as e:
            raise RayError(f"cannot start Ray ({ray_bin}): {e.strerror}") from None
    address = f"{advertise or '127.0.0.1'}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise RayError(f"Ray failed to start (exit {proc.returncode}): {' '.join(tail)} (see {log_path})")
        if b"Ray runtime started" in log_path.read_bytes() and reachable(address):
            head = EmbeddedHead(address, proc.pid, gpus, simulated, temp_dir)
            _head_file(state_dir).write_text(json.dumps(asdict(head)))
            return head
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RayError(f"Ray did not start within {timeout:.0f}s (see {log_path})")


def _wait_for_old_head(address: str, temp_dir: str, timeout: float) -> None:
    """A team head keeps its port. Its predecessor is known dead (find_embedded said
    so), but `ray start` refuses the address when the temp dir still names it as the
    current cluster and any local process (a worker's raylet on this machine, say)
    carries it on its command line: forget the old record, give the old servers a
    moment to release the port, then say what holds it."""
    Path(temp_dir, "ray_current_cluster").unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    while reachable(address, 0.5):
        if time.monotonic() > deadline:
            raise RayError(f"{address} is taken (an old Ray head still runs there?): stop it, or set another ray_port")
        time.sleep(0.5)


def stop_embedded(state_dir: Path, timeout: float = 3.0) -> None:
    """Stop the embedded head and every process of its session."""
    try:
        head = EmbeddedHead(**json.loads(_head_file(state_dir).read_text()))
    except (OSError, ValueError, TypeError):
        return
    if _alive(head.pid):
        try:
            os.killpg(head.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while _alive(head.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            # `ray start --block` can take a minute to stop its children; the session
            # is ours alone, so take it down at once.
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _head_file(state_dir).unlink(missing_ok=True)


def prepare_driver_env(embedded_state: Path | None, token_file: str = "") -> None:
    """Put Ray's settings in this process's environment. Ray reads some of them (the
    auth mode) when it is imported, so this runs before anything imports ray."""
    wanted = {k: v for k, v in ray_env(embedded_state, token_file).items() if k.startswith("RAY_")}
    if "ray" in sys.modules and os.environ.get("RAY_AUTH_MODE") != wanted.get("RAY_AUTH_MODE"):
        raise RuntimeError("ray was imported before the daemon set its environment")
    os.environ.update(wanted)
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)


def connect(address: str, namespace: str) -> None:
    # ray.init retries an unreachable GCS for a long time; answer at once instead.
    if ":" in address and not address.startswith(("ray://", "auto")) and not reachable(address, 3.0):
        raise RayError(f"cannot reach Ray at {address}: nothing answers there (is the head running?)")
    import ray

    try:
        ray.init(
            address=address,
            namespace=namespace,
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=True,
        )
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds here
        raise RayError(f"cannot reach Ray at {address}: {str(e).splitlines()[0]}") from None


def nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
