"""Several "hosts" on one machine: network namespaces on a private bridge.

Each host has its own address (10.R.S.i/24, R and S random per run), its own
hostname (a UTS namespace per process started with `Host.cmd`) and only the bridge:
no route out, and the root namespace has no address on the bridge, so traffic goes
only between the hosts. Needs root (CI runs as root).
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Host:
    ns: str
    ip: str
    name: str
    # Directories this host does not have (no shared filesystem): each command runs in
    # a mount namespace of its own with an empty tmpfs over each.
    hide: tuple[str, ...] = ()

    def cmd(self, *argv: str) -> list[str]:
        """argv run on this host: in its network namespace, under its hostname."""
        mounts = "".join(f"mount -t tmpfs -o mode=755 lqhide {shlex.quote(d)} && " for d in self.hide)
        private = ["--mount", "--propagation", "private"] if self.hide else []
        return [
            "ip", "netns", "exec", self.ns,
            "unshare", "--uts", *private, "--", "sh", "-c", f'hostname {self.name} && {mounts}exec "$@"', "sh", *argv,
        ]  # fmt: skip

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill_all(self) -> None:
        """Every process on this host, at once (a machine losing power)."""
        for _ in range(5):
            pids = self.pids()
            if not pids:
                return
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    def link(self, up: bool) -> None:
        """Cut (or restore) this host's cable."""
        subprocess.run(["ip", "-n", self.ns, "link", "set", "eth0", "up" if up else "down"], check=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def hosts(*names: str) -> Iterator[list[Host]]:
    tag = f"lq{random.randrange(16**4):04x}"
    net = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
    bridge = f"{tag}br"
    made: list[Host] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("link", "set", bridge, "up")
        for i, name in enumerate(names, start=1):
            host = Host(f"{tag}h{i}", f"{net}.{i}", name)
            _ip("netns", "add", host.ns)
            made.append(host)
            _ip("link", "add", f"{tag}v{i}", "type", "veth", "peer", "name", "eth0", "netns", host.ns)
            _ip("link", "set", f"{tag}v{i}", "master", bridge, "up")
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")
        yield made
    finally:
        for host in made:
            host.kill_all()
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
