"""`labq doctor`: every part the daemon depends on, each with a verdict in words.

Reads the other parts; changes nothing. Paths and ids are for admins; others get the
verdicts with paths replaced by an ellipsis.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler import safefs
from scheduler.auth import Caller
from scheduler.gpuwatch import GpuWatch
from scheduler.launcher import LauncherDown
from scheduler.nodes import NodeBook
from scheduler.raylink import RayLink
from scheduler.shapes import Check
from scheduler.store import Store
from scheduler.team import Team
from scheduler.tokens import Tokens

_PATHS = re.compile(r"(/[^\s:,;()]+)+")


@dataclass
class Doctor:
    store: Store
    state_dir: Path
    logs_dir: Path
    socket_path: Path
    ray: RayLink
    nodes: NodeBook
    gpus: GpuWatch
    tokens: Tokens
    listener: Callable[[], str | None]  # the TCP listener's address, if any
    user: str
    team: Team | None = None
    ray_auth: str = "token"

    def run(self, caller: Caller) -> list[Check]:
        checks: list[Check] = []
        now = time.time()

        def check(name: str, ok: bool, detail: str) -> None:
            checks.append({"check": name, "ok": ok, "detail": detail if caller.admin else _PATHS.sub("…", detail)})

        try:
            verdict = self.store.integrity()
            check("database", verdict == "ok", f"{self.store.path}: integrity {verdict}, schema v{self.store.schema_version()}")
        except Exception as e:  # noqa: BLE001 - the doctor reports, it does not fail
            check("database", False, f"{self.store.path}: {e}")
        free = shutil.disk_usage(self.state_dir).free
        check("disk", free > 1 << 30, f"{free / 2**30:.1f} GiB free in {self.state_dir}")
        check("logs", os.access(self.logs_dir, os.W_OK), f"{self.logs_dir} writable by {self.user}")
        mode = oct(self.socket_path.stat().st_mode & 0o777) if self.socket_path.exists() else "missing"
        check("socket", self.socket_path.exists(), f"{self.socket_path} ({mode})")
        address = self.listener()
        if address:
            check("listener", True, f"{address}: token required ({self.tokens.live(now)} valid tokens)")
        else:
            check("listener", True, "no network listener (Unix socket only)")
        st = self.ray.status
        ray_detail = f"{st.address} ({'embedded' if st.embedded else 'external'})"
        check("ray", st.connected, ray_detail if st.connected else f"{ray_detail}: {st.error}")
        if st.embedded:
            check("ray auth", True, "token auth (the token is the daemon's alone; nodes get it through `labq join`)")
        elif self.ray_auth == "disabled":
            check(
                "ray auth",
                False,
                "off (ray_auth: disabled): anyone who reaches the cluster runs code on every node; "
                "start Ray with RAY_AUTH_MODE=token and give labq its ray_token_file",
            )
        else:
            check("ray auth", True, "token auth (checked at start)")
        launcher = self.ray.launcher
        try:
            if launcher is None:
                raise LauncherDown("not attached (Ray is not connected)")
            launcher.ping()
            check("executor", True, f"answers (id {self.ray.executor_id[:8]})" if caller.admin else "answers")
        except LauncherDown as e:
            check("executor", False, str(e))
        exposed = self.exposed_files()
        check(
            "permissions",
            not exposed,
            "; ".join(f"{p}: {why}" for p, why in exposed[:5]) + (f"; and {len(exposed) - 5} more" if len(exposed) > 5 else "")
            if exposed
            else "no other user can read, lock or change labq's files",
        )
        nodes = self.nodes.all()
        drained = self.nodes.drained()
        check(
            "nodes",
            bool(nodes),
            f"{len(nodes)} alive, {sum(n.gpus for n in nodes)} GPUs"
            + (f", drained: {', '.join(sorted(drained))}" if drained else ""),
        )
        if self.team is not None and self.team.enforced:
            joined = self.team.registry()
            untrusted = [n for n in nodes if not n.trusted]
            missing = self.team.missing(nodes)
            detail = f"{len(joined)} joined with `labq join`"
            if untrusted:
                detail += "; untrusted (in Ray, never joined; they get no jobs): " + ", ".join(
                    f"{n.name} ({n.address})" for n in untrusted
                )
            if missing:
                detail += "; joined but not in Ray (down, cut off, or Ray stopped there): " + ", ".join(missing)
            check("cluster", not untrusted and not missing, detail)
        inv = self.ray.inventory
        if inv is not None:
            check(
                "nvml",
                True,
                f"{inv.count} NVIDIA GPUs, driver {inv.driver}" if inv.count else f"no real GPUs here: {inv.why_none}",
            )
        tel = self.gpus.telemetry
        fleet: Any = self.gpus.fleet
        for n in nodes:
            err = fleet.errors.get(n.id, "") if fleet else ""
            age = tel.age(n.id, now)
            detail = err or (f"last report {age:.0f}s ago" if age is not None else "no report yet")
            bad = sorted(tel.unhealthy(n.id).items())
            if bad:
                detail += "; " + "; ".join(f"GPU {i}: {why}" for i, why in bad)
            check(f"monitor {n.name}", not err and not tel.stale(n.id, now) and not bad, detail + (f"; {n.note}" if n.note else ""))
        return checks

    def exposed_files(self) -> list[tuple[str, str]]:
        """labq's own files another user could read, lock or write: the state dir and
        everything in it (logs, database, lock, Ray token, Ray's temp dir), the
        socket's directory, and this node's job dir."""
        found = safefs.audit_tree(self.state_dir)
        head = self.ray.head
        if head is not None and not head.temp_dir.startswith(str(self.state_dir) + "/"):
            found += safefs.audit_tree(Path(head.temp_dir))
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
        # Everyone may enter (and list) the socket's directory and the job dir, not write.
        for d in (self.socket_path.parent, safefs.node_job_dir()):
            problem = safefs.exposure(d)
            if problem and "others can list" not in problem:
                out.append((str(d), problem))
        return out
