"""Where the client finds the daemon and what a job inherits: stdlib `os` and
`pathlib` only, because every `labq` command imports it (config.py, with the daemon's
dataclasses, is for the daemon)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT_SOCKET = Path("/run/labq/labq.sock")

# What a job inherits from whoever submits it (as Slurm does), unless told otherwise.
INHERITED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "SHELL",
    "TERM",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "LD_LIBRARY_PATH",
    "TZ",
)


def personal_socket() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "labq" / "labq.sock"
    # Another user could make this directory first: the daemon refuses one that is not
    # its own, and the client checks who answers on the socket (client.py).
    return Path(f"/tmp/labq-{os.getuid()}") / "labq.sock"


def client_socket() -> Path:
    """The daemon a client talks to: $LABQ_SOCKET, else the team's, else a personal one."""
    env = os.environ.get("LABQ_SOCKET")
    if env:
        return Path(env)
    if ROOT_SOCKET.exists():
        return ROOT_SOCKET
    return personal_socket()


def daemon_socket() -> Path:
    env = os.environ.get("LABQ_SOCKET")
    if env:
        return Path(env)
    return ROOT_SOCKET if os.geteuid() == 0 else personal_socket()


def default_state_dir() -> Path:
    env = os.environ.get("LABQ_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/labq")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "labq"
