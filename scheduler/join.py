"""`labq join`: a machine becomes a worker of a team head, and stays one.

1. With an admin's invite (`labq node invite` prints the whole command) it talks to
   the head's listener over TLS, pinning the certificate's SHA-256 from the invite
   (no CA needed, and no one in between can pose as the head), shows the one-time
   secret, and gets back the Ray head's address and Ray's token.
2. It keeps the token (0600) and the head's address in its state dir
   (/var/lib/labq-node), and runs `ray start --address ... --block` as a supervised
   child: whenever Ray stops (the head restarted, the network was cut), it starts it
   again, so the node rejoins by itself. `labq join --rejoin` (the systemd unit)
   starts from the saved state without an invite.

Runs as root on the new machine: Ray's worker must be able to start jobs as their
submitters. Only the standard library at import; NVML only to count GPUs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scheduler.gputypes import ray_labels

DEFAULT_STATE = "/var/lib/labq-node"
RESTART_MIN_S = 2.0
RESTART_MAX_S = 10.0


class JoinError(Exception):
    """Joining failed; the message is user-facing."""


def _say(msg: str) -> None:
    print(f"labq join: {msg}", file=sys.stderr, flush=True)


def _pinned(url: str, fingerprint: str, method: str, path: str, body: bytes, timeout: float) -> tuple[int, Any]:
    """One request to the head's listener over TLS pinned to `fingerprint` (no CA)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise JoinError(f"the head's address must look like https://HEAD:PORT (as the invite prints it), got {url!r}")
    want = fingerprint.lower().replace(":", "").removeprefix("sha256")
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise JoinError("--cert-sha256 must be the 64 hex digits the invite prints")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # pinned below instead: the invite names the exact certificate
    try:
        raw = socket.create_connection((parts.hostname, parts.port or 7450), timeout=timeout)
    except OSError as e:
        raise JoinError(f"cannot reach the head at {url}: {e.strerror or e}") from None
    try:
        with ctx.wrap_socket(raw, server_hostname=parts.hostname) as sock:
            der = sock.getpeercert(binary_form=True) or b""
            if hashlib.sha256(der).hexdigest() != want:
                raise JoinError(
                    f"{url} shows a different certificate than the invite names: not the head you were invited to "
                    "(or its certificate changed: ask for a new invite)"
                )
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: labq\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
                if len(data) > 1 << 20:
                    break
    except (OSError, ssl.SSLError) as e:
        raise JoinError(f"cannot talk to the head at {url}: {e}") from None
    head, _, payload = data.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), json.loads(payload)
    except (IndexError, ValueError):
        raise JoinError(f"{url} gave an answer that is not labq's") from None


def ask_head(url: str, secret: str, fingerprint: str, hostname: str, timeout: float = 30.0) -> dict[str, Any]:
    """POST the invite to the head's /v1/nodes/join: Ray's address and token back."""
    body = json.dumps({"secret": secret, "hostname": hostname}).encode()
    status, answer = _pinned(url, fingerprint, "POST", "/v1/nodes/join", body, timeout)
    if status != 200:
        raise JoinError(str(answer.get("error", f"refused ({status})")))
    return dict(answer)


def head_epoch(url: str, fingerprint: str) -> dict[str, Any] | None:
    """Which Ray head runs there now, and its node_timeout_s (None: no answer)."""
    try:
        status, answer = _pinned(url, fingerprint, "GET", "/v1/nodes/head", b"", 3.0)
    except JoinError:
        return None
    return dict(answer) if status == 200 and answer.get("epoch") else None


def route_address(host: str, port: int) -> str:
    """The local address this machine uses toward the head (what Ray must advertise)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))  # UDP: picks the route, sends nothing
        return str(s.getsockname()[0])


def prepare_state(state: Path) -> None:
    """The state dir holds Ray's token (root on every node to whoever reads it) and
    Ray's sockets: it must be ours alone, all the way up (like the daemon's)."""
    from scheduler import safefs

    try:
        safefs.private_dir(state, 0o700)
        safefs.private_dir(state / "ray", 0o700)
    except (OSError, safefs.UnsafePath) as e:
        raise JoinError(f"state dir: {e}") from None
    problem = safefs.untrusted_ancestor(state)
    if problem:
        raise JoinError(f"state dir {state}: {problem}; use one only root can write (default {DEFAULT_STATE})")


def _write_private(path: Path, text: str) -> None:
    """A new 0600 file (never an existing one, nor a link's target)."""
    from scheduler import safefs

    fd = safefs.create_exclusive(path, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def save(state: Path, answer: dict[str, Any], url: str, fingerprint: str, labels: str = "") -> None:
    _write_private(state / "ray-token", str(answer["ray_token"]))
    meta = {"ray_address": answer["ray_address"], "name": answer["name"], "url": url, "cert_sha256": fingerprint,
            "ray_labels": labels}  # fmt: skip
    _write_private(state / "join.json", json.dumps(meta))


def _open_log(path: Path) -> int:
    """Ray's output, appended; a file that is not ours (or a link) is replaced."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        path.unlink(missing_ok=True)
        fd = os.open(path, flags, 0o600)
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        path.unlink()
        fd = os.open(path, flags | os.O_EXCL, 0o600)
    return fd


def ray_command(
    state: Path, ray_address: str, node_ip: str, gpus: int | None, cpus: int | None, labels: str = ""
) -> list[str]:
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--block",
        f"--address={ray_address}",
        f"--node-ip-address={node_ip}",
        "--disable-usage-stats",
        f"--temp-dir={state / 'ray'}",
    ]
    if gpus is not None:
        cmd.append(f"--num-gpus={gpus}")
    if cpus is not None:
        cmd.append(f"--num-cpus={cpus}")
    if labels:
        cmd.append(f"--labels={labels}")  # node labels, simulated GPU model (gputypes.ray_labels)
    return cmd


def ray_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "CUDA_VISIBLE_DEVICES"}
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(state / "ray-token")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # A worker whose head is gone gives up after this long and stops its jobs (they
    # would run unaccounted otherwise); the supervisor then starts Ray again.
    env["RAY_gcs_rpc_server_reconnect_timeout_s"] = "20"
    return env


def count_gpus() -> int | None:
    try:
        from scheduler.gpu import detect

        n = detect().count
        return n if n else None
    except Exception:  # noqa: BLE001 - no NVML here: Ray decides (0 GPUs)
        return None


# The head lists a new Ray node within seconds (its Ray link polls every ~2 s): a worker
# up this long that the head still takes for lost is the lost node (rejoin_reason()).
NEW_NODE_S = 20.0


def rejoin_reason(epoch: str, answer: Mapping[str, Any], up_s: float) -> str:
    """Why the Ray worker that has been up `up_s` seconds must start again now ("" if
    it need not), from the head's answer to GET /v1/nodes/head; `epoch`: the head's
    epoch when it started. A restarted head is a new Ray cluster, which the old worker
    would only leave after Ray's own timeouts. A node the head took for lost (cut off
    past node_timeout_s) while Ray still lists it comes back as a new node, not a ghost
    of the old; but a worker younger than node_timeout_s cannot be that node: it is the
    new one, which the head has not listed yet (it lists nodes every few seconds), and
    stopping it would only leave a draining node behind for jobs to be placed on. At
    most NEW_NODE_S, though: the head may also take a node for lost because Ray said it
    died, and a long node_timeout_s must not leave such a machine out for that long."""
    if answer.get("epoch") != epoch:
        return "the head restarted"
    try:
        young = min(float(answer.get("node_timeout_s") or 0.0), NEW_NODE_S)
    except (TypeError, ValueError):
        young = 0.0  # an answer we cannot read: as before the head said it
    if answer.get("lost") and up_s >= young:
        return "the head took this node for lost"
    return ""


def supervise(state: Path, cmd: list[str], once: bool, head: str = "", watch: tuple[str, str] | None = None) -> int:
    """Run Ray's worker in the foreground; start it again whenever it stops, and at
    once when the head restarted (`watch`: its listener, asked every 2 s which Ray
    head runs; a restarted head is a new cluster that the old worker would only
    leave after Ray's own timeouts)."""
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    from scheduler.raycluster import reachable  # stdlib-only, like this module

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    delay = RESTART_MIN_S
    while True:
        started = time.monotonic()
        log = _open_log(state / "ray-worker.log")
        try:
            child = subprocess.Popen(
                cmd, env=ray_env(state), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=str(state),
            )  # fmt: skip
        finally:
            os.close(log)
        _say(f"Ray worker started (pid {child.pid}); log in {state / 'ray-worker.log'}")
        # The head this worker joins: once known, a different one (a restarted head is
        # a new Ray cluster) means joining again now rather than after Ray's timeouts.
        first = head_epoch(*watch) if watch else None
        epoch = first["epoch"] if first else None
        why = ""
        ticks = 0
        while (code := child.poll()) is None:
            time.sleep(1.0)
            ticks += 1
            if not watch or stopping or ticks % 2:
                continue
            now = head_epoch(*watch)
            if now is None:
                continue  # the head is away: Ray's own timeouts, and the loop below
            epoch = epoch or now["epoch"]
            why = rejoin_reason(epoch, now, time.monotonic() - started)
            if why:
                os.killpg(child.pid, signal.SIGTERM)
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                break
        try:
            os.killpg(child.pid, signal.SIGKILL)  # whatever Ray left of its session
        except ProcessLookupError:
            pass
        if stopping:
            _say("stopped")
            return 0
        if once:
            return code or 1
        if why:
            _say(f"{why}: rejoining")
            continue
        # Again as soon as the head answers: a few seconds apart while it does (a
        # start that fails at once must not spin), every second until it does.
        delay = RESTART_MIN_S if time.monotonic() - started > 60 else min(delay * 2, RESTART_MAX_S)
        _say(f"Ray on this node stopped (exit {code}): the head restarted or is unreachable; rejoining")
        waited = 0.0
        while not stopping and (waited < delay or (head and not reachable(head))):
            time.sleep(1.0)
            waited += 1.0
        if stopping:
            _say("stopped")
            return 0


def cmd_join(args: Any) -> int:
    state = Path(args.state_dir or DEFAULT_STATE).absolute()
    prepare_state(state)
    given = args.labels is not None or args.simulate_gpu is not None
    try:
        labels = ray_labels([x for x in (args.labels or "").split(",") if x.strip()], args.simulate_gpu or "")
    except ValueError as e:
        raise JoinError(str(e)) from None
    if args.rejoin:
        try:
            meta = json.loads((state / "join.json").read_text())
        except (OSError, ValueError):
            raise JoinError(f"nothing to rejoin: {state}/join.json is missing (join with an invite first)") from None
    else:
        if not (args.url and args.secret and args.cert_sha256):
            raise JoinError("give the head's URL, --secret and --cert-sha256 as `labq node invite` prints them")
        answer = ask_head(args.url, args.secret, args.cert_sha256, socket.gethostname())
        save(state, answer, args.url, args.cert_sha256, labels)
        meta = json.loads((state / "join.json").read_text())
        _say(f"joined as {meta['name']}; Ray head at {meta['ray_address']}")
    host, _, port = str(meta["ray_address"]).rpartition(":")
    if not host or not port.isdigit() or any(c.isspace() for c in host):
        raise JoinError(f"the head gave a Ray address that is not HOST:PORT: {meta['ray_address']!r}")
    try:
        node_ip = args.node_ip or route_address(host, int(port))
    except OSError as e:
        raise JoinError(f"no route to the Ray head at {host}: {e.strerror or e}") from None
    gpus = args.gpus if args.gpus is not None else count_gpus()
    # Labels given now, else those of the first join (the systemd unit rejoins without).
    labels = labels if given else str(meta.get("ray_labels") or "")
    command = ray_command(state, meta["ray_address"], node_ip, gpus, args.cpus, labels)
    watch = (str(meta["url"]), str(meta["cert_sha256"]))
    return supervise(state, command, args.once, str(meta["ray_address"]), watch)
