"""A sample daemon for the UI: fixed data, a fixed clock, and the daemon's refusals.

Behind the README's screenshots (scripts/screenshots.py), the UI benchmark and the UI
snapshot and pilot tests, none of which may depend on a live cluster; the flows that
matter are also tested against a real daemon (tests/ui/test_tui_daemon.py).
"""

from __future__ import annotations

from typing import Any

from tui.api import BackendError

NOW = 1_795_000_000.0  # 2026-11-19 09:46:40 UTC; the tests run with TZ=UTC
USERS = ("ana", "bo", "cy", "dee")
GIB = 2**30


def make_nodes(count: int, per: int, jobs: list[dict[str, Any]], history: int = 60) -> list[dict[str, Any]]:
    holders = {}
    for j in jobs:
        if j["state"] == "RUNNING":
            for g in j["gpu_ids"].split(","):
                holders[(j["node"], int(g))] = j
    nodes = []
    for n in range(count):
        nid = f"node{n:02d}" + "0" * 50
        gpus = []
        for i in range(per):
            held = holders.get((nid, i))
            util = ((i * 37 + n * 11) % 97) if held else 0
            mem = (20 + (i * 7 + n) % 60) * GIB if held else int(0.6 * GIB)
            hist = [(NOW - (history - k), ((util + k * 13) % 100) if held else 0, mem) for k in range(history)]
            procs = (
                [
                    {
                        "pid": 4000 + i,
                        "used_memory": mem,
                        "sm_util": util,
                        "mem_util": 10,
                        "job_id": held["id"],
                        "user": held["user"],
                        "outside_labq": False,
                    }
                ]
                if held
                else []
            )
            if n == 1 and i == per - 1:
                procs.append(
                    {
                        "pid": 999,
                        "used_memory": 2 * GIB,
                        "sm_util": 5,
                        "mem_util": 1,
                        "job_id": None,
                        "user": None,
                        "outside_labq": True,
                    }
                )
            gpus.append(
                {
                    "index": i,
                    "uuid": f"GPU-fake-{n:02d}-{i}",
                    "name": "NVIDIA H200",
                    "memory_total": 141 * GIB,
                    "memory_used": mem,
                    "util_gpu": util,
                    "util_memory": util // 4,
                    "temperature_c": 40 + util // 4,
                    "power_mw": 80_000 + util * 6000,
                    "power_limit_mw": 700_000,
                    "ecc_uncorrected": 0,
                    "mig_mode": [0, 0],
                    "fan_speed": None,
                    "healthy": not (n == 2 and i == 3),
                    "problem": "GPU 3 is lost" if (n == 2 and i == 3) else "",
                    "job_id": held["id"] if held else None,
                    "user": held["user"] if held else None,
                    "processes": procs,
                    "history": hist,
                }
            )
        nodes.append(
            {
                "id": nid,
                "name": f"gpu-node-{n}",
                "address": f"10.0.0.{n + 1}",
                "gpus": per,
                "gpus_used": sum(1 for g in gpus if g["job_id"]),
                "cpus": 64.0,
                "memory": 512 * GIB,
                "simulated": False,
                "alive": True,
                "schedulable": True,
                "nvml_gpus": per,
                "note": "",
                "gpu_type": "h200",
                "labels": ["ib"] if n % 2 == 0 else [],
                "host": {
                    "cpu_percent": 12.0,
                    "cpus": 64,
                    "memory_total": 512 * GIB,
                    "memory_used": 100 * GIB,
                },
                "age_s": 0.4,
                "stale": False,
                "monitor_error": "",
                "gpu_list": gpus,
            }
        )
    return nodes


def make_jobs(count: int, nodes: int, per: int) -> list[dict[str, Any]]:
    jobs = []
    free = [(f"node{n:02d}" + "0" * 50, f"gpu-node-{n}", i) for n in range(nodes) for i in range(per)]
    for k in range(count):
        jid = k + 1
        user = USERS[k % len(USERS)]
        gpus = (1, 1, 2, 4, 1, 8)[k % 6]
        if k % 5 == 4:
            state = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT")[k % 4]
        elif len(free) >= gpus and k % 3 != 2 and gpus <= per:
            state = "RUNNING"
        else:
            state = "PENDING"
        j: dict[str, Any] = {
            "id": jid,
            "user": user,
            "uid": 1000 + k % 4,
            "name": f"{('bert', 'resnet', 'llama-ft', 'sweep')[k % 4]}-{jid}",
            "gpus": gpus,
            "priority": 0,
            "time_limit": 4 * 3600.0,
            "state": state,
            "submit_time": NOW - 3600 - 60 * (count - k),
            "start_time": None,
            "end_time": None,
            "attempt": 0,
            "node": None,
            "node_name": None,
            "gpu_ids": None,
            "pid": None,
            "exit_code": None,
            "signal": None,
            "reasons": [],
            "flags": [],
            "rank": None,
            "spec": {
                "command": ["python", "train.py", f"--run={jid}"],
                "gpus": gpus,
                "cpus": 4.0,
                "memory": 0,
                "workdir": "/home/ana/project",
                "env": {"WANDB_MODE": "offline"},
                "name": "",
                "code": {
                    "id": f"{jid:064x}",
                    "summary": f"3f2a91c (main, dirty: {jid % 3 + 1} files, 4.1 KiB diff)",
                    "kind": "git",
                    "commit": "3f2a91c" + "0" * 33,
                    "branch": "main",
                },
            },
            "kind": "batch",
        }
        if state == "RUNNING":
            # Place on one node: take `gpus` free GPUs from the same node.
            by_node: dict[str, list[tuple[str, str, int]]] = {}
            for f in free:
                by_node.setdefault(f[0], []).append(f)
            node = next((v for v in by_node.values() if len(v) >= gpus), None)
            if node is None:
                state = j["state"] = "PENDING"
            else:
                taken = node[:gpus]
                for t in taken:
                    free.remove(t)
                j.update(
                    node=taken[0][0],
                    node_name=taken[0][1],
                    gpu_ids=",".join(str(t[2]) for t in taken),
                    start_time=NOW - 900 - 30 * k,
                    pid=20000 + jid,
                    attempt=1,
                )
                j["gpu"] = {
                    "util_now": float((k * 29) % 100),
                    "mem_now": 30 * GIB,
                    "util_mean": 55.0,
                    "mem_peak": 31 * GIB,
                    "busy_gpu_s": 1800.0,
                    "idle_gpu_s": 60.0,
                    "sampled_s": 900.0,
                }
                if k % 7 == 0:
                    j["flags"] = ["idle 35m"]
                    j["gpu"]["util_now"] = 0.0
        if state == "PENDING":
            j["reasons"] = [
                f"resources: needs {gpus} GPU{'s' if gpus > 1 else ''} on one node, none is free",
                f"fair share: {k % 5 + 1} jobs rank ahead (bo x2, cy)",
            ]
            j["eta"] = NOW + 600 * (k % 9 + 1)
        if state in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"):
            j.update(
                start_time=NOW - 7200,
                end_time=NOW - 1800,
                runtime_s=5400.0,
                attempt=1,
                reasons=[
                    {
                        "SUCCEEDED": "",
                        "FAILED": "exit code 1",
                        "CANCELLED": "cancelled by ana",
                        "TIMEOUT": "time limit 4h reached",
                    }[state]
                ],
                exit_code=0 if state == "SUCCEEDED" else 1,
            )
        jobs.append(j)
    pending = [j for j in jobs if j["state"] == "PENDING"]
    for rank, j in enumerate(pending):
        j["rank"] = rank
    return jobs


class FakeBackend:
    def __init__(
        self,
        nodes: int = 2,
        per: int = 4,
        jobs: int = 14,
        me: str = "ana",
        admin: bool = True,
        down: bool = False,
    ) -> None:
        self.me, self.admin, self.down = me, admin, down
        self.job_list = make_jobs(jobs, nodes, per)
        self.node_list = make_nodes(nodes, per, self.job_list)
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[int] = []
        self.quota_changes: list[tuple[str, dict[str, Any]]] = []
        self.quota_overrides: dict[str, dict[str, Any]] = {}
        self.log_lines = [f"epoch {i // 20} step {i} loss {1 / (i + 1):.4f}" for i in range(200)]
        self.log_lines[57] = "WARNING: NaN in gradients, skipping step"
        self.log_blob: bytes | None = None  # a log given as bytes (the big-log benchmark and tests)
        self.log_reads: list[int] = []  # bytes returned by each log call

    def _check(self) -> None:
        if self.down:
            raise BackendError("no labq daemon at /run/labq/labq.sock (start one with `labq up`)", down=True)

    def health(self) -> dict[str, Any]:
        self._check()
        counts: dict[str, int] = {}
        for j in self.job_list:
            counts[j["state"]] = counts.get(j["state"], 0) + 1
        return {
            "caller": self.me,
            "caller_is_admin": self.admin,
            "counts": counts,
            "ray": {"connected": True},
        }

    def jobs(self, tasks: bool = False) -> list[dict[str, Any]]:
        self._check()
        return [dict(j) for j in self.job_list if tasks or j.get("array_id") is None]

    def job(self, job_id: int) -> dict[str, Any]:
        self._check()
        j = next((j for j in self.job_list if j["id"] == job_id), None)
        if j is None:
            raise BackendError(f"no job {job_id}", 404)
        events = [
            {
                "time": j["submit_time"],
                "old_state": None,
                "new_state": "PENDING",
                "reason": f"submitted by {j['user']}",
            }
        ]
        if j.get("start_time"):
            events.append(
                {
                    "time": j["start_time"],
                    "old_state": "PENDING",
                    "new_state": "STARTING",
                    "reason": f"placed on {j['node_name']}",
                }
            )
        if j["user"] != self.me and not self.admin:
            # As the daemon answers a non-owner: no command, environment or log path.
            return {**j, "spec": {}, "events": events, "private": True}
        return {**j, "events": events, "log_path": f"/var/lib/labq/logs/{job_id}.log", "private": False}

    def log(
        self,
        job_id: int,
        offset: int = 0,
        tail: int | None = None,
        before: int | None = None,
        stderr: bool = False,
        rank: int = 0,
    ) -> dict[str, Any]:
        self._check()
        j = next(j for j in self.job_list if j["id"] == job_id)
        if j["user"] != self.me and not self.admin:
            raise BackendError(f"job {job_id}'s log belongs to {j['user']}", 403)
        data = self.log_bytes()
        if rank:  # another rank of a job over several nodes: its own output
            data = b"".join(f"rank {rank} step {i}\n".encode() for i in range(50))
        if stderr:  # the sample's stderr: its warnings
            data = b"".join(line for line in data.splitlines(keepends=True) if line.startswith(b"WARNING"))
        if tail:
            end = len(data) if before is None else min(before, len(data))
            offset = max(0, end - tail)
            if offset:
                offset = data.index(b"\n", offset) + 1
            chunk = data[offset:end]
        else:
            chunk = data[offset : offset + 4096]
        self.log_reads.append(len(chunk))
        done = j["state"] not in ("RUNNING", "PENDING", "STARTING")
        return {
            "data": chunk.decode(),
            "start": offset,
            "offset": offset + len(chunk),
            "size": len(data),
            "state": j["state"],
            "done": done,
        }

    def log_bytes(self) -> bytes:
        if self.log_blob is not None:
            return self.log_blob
        return ("\n".join(self.log_lines) + "\n").encode()

    def nodes(self, history: bool = False) -> dict[str, Any]:
        self._check()
        nodes = []
        for n in self.node_list:
            gl = [{k: v for k, v in g.items() if history or k != "history"} for g in n["gpu_list"]]
            nodes.append({**n, "gpu_list": gl})
        return {"nodes": nodes, "ray": {"connected": True}}

    def quotas(self) -> dict[str, Any]:
        self._check()
        out = []
        for k, u in enumerate(USERS):
            q = {
                "user": u,
                "shares": float(1 + k % 2),
                "guaranteed_gpus": k % 3,
                "max_gpus": None if k % 2 else 8,
                "max_jobs": None,
                "gpu_hours_per_week": 200.0 if u == "cy" else None,
                "idle_action": "notify",
            }
            q.update(self.quota_overrides.get(u, {}))
            held = sum(j["gpus"] for j in self.job_list if j["user"] == u and j["state"] == "RUNNING")
            q.update(
                usage_gpu_s=3600.0 * (5 + 7 * k),
                factor=round(0.9 - 0.15 * k, 3),
                held_gpus=held,
                running_jobs=sum(1 for j in self.job_list if j["user"] == u and j["state"] == "RUNNING"),
                pending_jobs=sum(1 for j in self.job_list if j["user"] == u and j["state"] == "PENDING"),
            )
            out.append(q)
        return {"quotas": out, "defaults": {}}

    def set_quota(self, user: str, fields: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if not self.admin:
            raise BackendError("only admins may change quotas (root)", 403)
        self.quota_changes.append((user, fields))
        self.quota_overrides.setdefault(user, {}).update(fields)
        return {"user": user, "old": {}, "new": fields}

    def audit(self) -> list[dict[str, Any]]:
        self._check()
        return [
            {
                "time": NOW - 600 * k,
                "actor": "root",
                "action": "quota.set",
                "target": u,
                "detail": '{"new": {"max_gpus": 8}}',
            }
            for k, u in enumerate(USERS[:3])
        ]

    def usage(self, since: str = "7d") -> dict[str, Any]:
        self._check()
        return {
            "rows": [
                {
                    "user": u,
                    "allocated_gpu_h": 10.0 * (k + 1),
                    "busy_gpu_h": 6.0 * (k + 1),
                    "idle_gpu_h": 1.5 * k,
                    "util_mean": 60.0,
                    "jobs": 3 + k,
                }
                for k, u in enumerate(USERS)
            ]
        }

    def submit(self, spec: dict[str, Any], freeze: bool = False) -> int:
        self._check()
        if spec.get("gpus", 1) > 8:
            raise BackendError(
                f"asks for {spec['gpus']} GPUs but the largest node has 8 (multi-node jobs are off)", 400
            )
        self.submitted.append(spec)
        return 1000 + len(self.submitted)

    def preview(self, spec: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if spec.get("gpus", 1) > 8:
            raise BackendError(
                f"asks for {spec['gpus']} GPUs but the largest node has 8 (multi-node jobs are off)", 400
            )
        if spec.get("gpus", 1) <= 1:
            return {"starts_now": True, "node": "gpu-node-1", "reasons": [], "eta": NOW}
        return {
            "starts_now": False,
            "node": None,
            "eta": NOW + 1800,
            "reasons": [
                "resources: needs 4 GPUs on one node, largest free block is 1",
                "fair share: 2 jobs rank ahead (bo)",
            ],
        }

    def cancel(self, job_id: int) -> dict[str, Any]:
        self._check()
        j = next((j for j in self.job_list if j["id"] == job_id), None)
        if j is None:
            raise BackendError(f"no job {job_id}", 404)
        if j["user"] != self.me and not self.admin:
            raise BackendError(
                f"job {job_id} belongs to {j['user']}; only they or an admin may cancel it", 403
            )
        self.cancelled.append(job_id)
        return {"id": job_id, "result": "stopping" if j["state"] == "RUNNING" else "cancelled"}
