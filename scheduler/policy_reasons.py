"""The words of a pass: why a job waits on resources or placement, who ranks ahead,
and short durations. Pure functions over a Pass (policy_pass.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from scheduler.policy_pass import Pass
from scheduler.policy_types import PendingJob
from scheduler.shapes import Reason


def format_ahead(ahead: Counter[str], total: int) -> Reason:
    top = sorted(ahead.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    who = ", ".join(f"{u} x{c}" if c > 1 else u for u, c in top)
    more = "" if len(ahead) <= 3 else ", ..."
    plural = "job ranks" if total == 1 else "jobs rank"
    return Reason("fairshare", f"fair share: {total} {plural} ahead ({who}{more})", (("ahead", total),))


def short(seconds: float) -> str:
    s = int(max(0, seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


NO_REASON = Reason("resources", "")


def resource_reason(p: Pass, j: PendingJob) -> Reason:
    if j.nodes is not None:
        return placement_reason(p, j)
    biggest = p.biggest_node
    if biggest is None:
        return Reason("drained", "resources: no schedulable node (all drained, unhealthy or gone)")
    data: tuple[tuple[str, Any], ...] = (("gpus", j.gpus), ("largest_node", biggest))
    if j.gpus > biggest:
        if j.gpus <= p.max_per_node:
            # A node that big exists but takes no job now (a job fits on one node or
            # spans whole nodes of the largest size, so this one waits for it).
            return Reason(
                "resources",
                f"resources: needs {j.gpus} GPUs on one node; the nodes that big are drained, unhealthy or"
                f" gone (the largest open one has {biggest})",
                data,
            )
        if p.cfg.multi_node:
            whole, rest = p.split(j.gpus)
            full = len(p.buckets[p.max_per_node])
            return Reason(
                "resources",
                f"resources: needs {whole} whole free {p.max_per_node}-GPU node{'s' if whole != 1 else ''}"
                f"{f' and {rest} GPUs on another' if rest else ''}, {full} {'is' if full == 1 else 'are'} free",
                (*data, ("whole_nodes", whole), ("free_nodes", full)),
            )
        return Reason(
            "resources", f"resources: needs {j.gpus} GPUs on one node, the largest node has {biggest}", data
        )
    if (j.cpus or j.memory) and not any(p.can_hold(n, j, min(j.gpus, n.info.gpus)) for n in p.nodes.values()):
        most_cpus = max((n.info.cpus for n in p.nodes.values() if n.info.schedulable), default=0.0)
        most_mem = max((n.info.memory for n in p.nodes.values() if n.info.schedulable), default=0.0)
        return Reason(
            "resources",
            f"resources: no node can hold {j.cpus:g} CPUs and {j.memory / 2**30:.1f} GiB of memory beside its "
            f"GPUs (the most a node has: {most_cpus:g} CPUs, {most_mem / 2**30:.1f} GiB)",
            (*data, ("cpus", j.cpus), ("memory", j.memory), ("never", True)),
        )
    largest = p.largest_free()
    data = (*data, ("largest_free", largest))
    if largest >= j.gpus:
        # GPUs are there but CPUs or memory are not.
        return Reason(
            "resources",
            f"resources: needs {j.cpus:g} CPUs and {j.memory / 2**30:.1f} GiB of memory"
            + (" beside its GPUs" if j.gpus else " (no GPU), no node has them free"),
            (*data, ("cpus", j.cpus), ("memory", j.memory)),
        )
    need = f"needs {j.gpus} GPU{'s' if j.gpus > 1 else ''} on one node"
    if largest == 0:
        return Reason(
            "resources",
            f"resources: {need}, none is free ({p.schedulable_gpus}/{p.schedulable_gpus} in use)",
            data,
        )
    return Reason("resources", f"resources: {need}, largest free block is {largest}", data)


def placement_reason(p: Pass, j: PendingJob) -> Reason:
    """Why a job that only some nodes may run waits: none of them could ever hold it
    (`where` says why those), or the ones that could are busy."""
    only = j.nodes or frozenset()
    allowed = [n for n in p.nodes.values() if n.info.id in only]
    names = tuple(sorted(n.info.label for n in allowed))
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    data: tuple[tuple[str, Any], ...] = (("gpus", j.gpus), ("nodes", names))
    holding = [n for n in allowed if p.can_hold(n, j, min(j.gpus, n.info.gpus))]
    if not holding:
        if not allowed:
            text = j.where or "no node it may run on is in the cluster"
        else:
            text = (
                f"only {shown} may run it ({j.where}); none can hold it now (drained, unhealthy or too small)"
            )
        return Reason("placement", f"placement: {text}", (*data, ("never", True)))
    largest = max(n.free for n in holding)
    need = f"needs {j.gpus} GPU{'s' if j.gpus > 1 else ''} on {shown}"
    if largest >= j.gpus:
        return Reason(
            "resources",
            f"resources: {need}, with {j.cpus:g} CPUs and {j.memory / 2**30:.1f} GiB of memory beside its GPUs",
            (*data, ("largest_free", largest), ("cpus", j.cpus), ("memory", j.memory)),
        )
    where = f" ({j.where})" if j.where else ""
    free = "none is free there" if largest <= 0 else f"largest free block there is {largest}"
    return Reason("resources", f"resources: {need}{where}, {free}", (*data, ("largest_free", largest)))
