"""GPU types and node labels (issue 15): what kind of GPU a node has, in a short name
researchers type (`--gpu-type h100`), and what else it offers (`--constraint ib`).

The type comes from NVML's product name (nvmlDeviceGetName), normalized: the vendor and
family words go, the model stays, and a model sold with several memory sizes keeps its
size (`NVIDIA A100-SXM4-80GB` is `a100-80g`). Stdlib only: the client checks names too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Models NVIDIA sold in more than one memory size: their type keeps the size.
_SIZED = ("a100", "v100", "a800")
_DROP = {"nvidia", "tesla", "geforce", "quadro", "sxm", "sxm2", "sxm4", "sxm5", "pcie", "nvl", "hbm2", "hbm2e",
         "hbm3", "hbm3e", "nvlink"}  # fmt: skip
# A type or label as typed. Also part of a Ray node label (`labq.io/label-NAME`, whose
# name part Ray allows 63 characters, alphanumeric at both ends): at most 57 here.
NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,55}[a-z0-9])?")


def gpu_type(product: str) -> str:
    """`NVIDIA H100 80GB HBM3` -> `h100`, `NVIDIA H200` -> `h200`, `NVIDIA A100-SXM4-80GB`
    -> `a100-80g`, `Tesla V100-SXM2-16GB` -> `v100-16g`, `NVIDIA GeForce RTX 4090` ->
    `rtx-4090`; '' for no name."""
    words = [w for w in re.split(r"[\s_-]+", product.lower()) if w]
    size = next((m.group(1) for w in words if (m := re.fullmatch(r"(\d+)gb?", w))), "")
    model = [w for w in words if w not in _DROP and not re.fullmatch(r"\d+gb?", w)]
    if not model:
        return ""
    name = "-".join(model)
    if model[0] in _SIZED and size:
        name = f"{model[0]}-{size}g"
    return re.sub(r"[^a-z0-9.-]+", "-", name).strip("-")[:63]


def node_type(names: list[str]) -> str:
    """A node's type: its GPUs' (the most common one, should a node mix models)."""
    types = [t for t in (gpu_type(n) for n in names) if t]
    return max(sorted(set(types)), key=types.count) if types else ""


def check_name(kind: str, value: str) -> str:
    """A GPU type or label as given, lower-cased; ValueError (one line) if it cannot be one."""
    v = value.strip().lower()
    if not NAME.fullmatch(v):
        raise ValueError(
            f"{kind} {value[:40]!r}: letters and digits, with '.', '-' or '_' inside, at most 57, e.g. h100 or ib"
        )
    return v


# Ray node labels labq sets when it starts a node's Ray (raycluster.head_command,
# join.ray_command): one per node label, and the simulated GPU model.
LABEL_PREFIX = "labq.io/label-"
SIMULATE_LABEL = "labq.io/simulated-gpu"


def ray_labels(labels: list[str] | tuple[str, ...], simulate: str = "") -> str:
    """`ray start --labels` for a node's labq labels and simulated GPU model ('' for none)."""
    pairs = [f"{LABEL_PREFIX}{check_name('label', x)}=true" for x in labels]
    if simulate:
        pairs.append(f"{SIMULATE_LABEL}={check_name('GPU model', simulate)}")
    return ",".join(pairs)


def parse_wants(wants: str) -> tuple[str, tuple[str, ...]]:
    """(GPU type or '', labels) of JobSpec.wants."""
    gtype, _, labels = wants.partition("|")
    return gtype, tuple(x for x in labels.split(",") if x)


def describe_wants(wants: str) -> str:
    gtype, labels = parse_wants(wants)
    parts = ([f"{gtype} GPUs"] if gtype else []) + ([f"label{'s' if len(labels) > 1 else ''} {', '.join(labels)}"] if labels else [])
    return " and ".join(parts)


def matching(wants: str, nodes: Sequence[tuple[str, str, tuple[str, ...]]]) -> tuple[frozenset[str], str]:
    """The nodes (id, GPU type, labels) a job that wants this kind may run on, and the
    words for its waiting reason: what it wants, or that no node here has it."""
    gtype, labels = parse_wants(wants)
    ok = frozenset(i for i, t, ls in nodes if (not gtype or t == gtype) and set(labels) <= set(ls))
    what = describe_wants(wants)
    if ok:
        return ok, f"{what} only"
    types = sorted({t for _, t, _ in nodes if t})
    have = sorted({x for _, _, ls in nodes for x in ls})
    return ok, (
        f"no node has {what} (GPU types here: {', '.join(types) or 'not reported yet'}; "
        f"labels: {', '.join(have) or 'none'})"
    )
