"""The simulator's plot (matplotlib, imported only when a plot is asked for)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def plot(results: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> None:
    """Mean JCT and queueing delay per policy, and each tenant's rho per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    jct = [results[n]["mean_jct_s"] / 3600 for n in names]
    wait = [results[n]["mean_wait_s"] / 3600 for n in names]
    xs = range(len(names))
    ax1.bar([x - 0.2 for x in xs], jct, 0.4, label="mean JCT")
    ax1.bar([x + 0.2 for x in xs], wait, 0.4, label="mean queueing delay")
    ax1.set_xticks(list(xs), names, rotation=30, ha="right")
    ax1.set_ylabel("hours")
    ax1.set_title("Job completion time")
    ax1.legend()
    tenants = sorted({t for n in names for t in results[n].get("per_tenant", {})})
    for i, n in enumerate(names):
        rhos = [results[n]["per_tenant"].get(t, {}).get("rho") for t in tenants]
        pts = [(i, r) for r in rhos if r is not None]
        if pts:
            ax2.scatter([p[0] for p in pts], [p[1] for p in pts], alpha=0.7)
    ax2.axhline(2.0, color="red", linestyle="--", linewidth=1, label="rho = 2")
    ax2.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax2.set_yscale("log")
    ax2.set_xticks(list(xs), names, rotation=30, ha="right")
    ax2.set_ylabel("rho = JCT shared / JCT alone on its share")
    ax2.set_title("Finish-time fairness per tenant")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
