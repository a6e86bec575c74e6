"""Traces labq was not tuned on (issue 19): the Philly trace bent three ways, and a
synthetic one with Zipf-active users.

- `compressed(jobs, k)`: the same jobs arriving k times faster (load x k).
- `renamed(jobs, seed)`: the same jobs under other tenant names, with shares drawn at
  random (1, 2, 4 or 8 each), so no share is where the Helios sizes put it.
- `zipf(...)`: Gavel-style jobs (durations log-uniform from 10^1.5 to 10^3.5 minutes,
  about 30 min to 2 days; GPU counts 1/2/4/8 with 70/10/15/5 %), Poisson arrivals sized
  for a target load, users active with Zipf(s) weights, shares equal or random.
"""

from __future__ import annotations

import random
from dataclasses import replace

from scheduler.traces import TraceJob


def compressed(jobs: list[TraceJob], k: float) -> list[TraceJob]:
    t0 = jobs[0].submit if jobs else 0.0
    return [replace(j, submit=t0 + (j.submit - t0) / k) for j in jobs]


def renamed(jobs: list[TraceJob], seed: int) -> tuple[list[TraceJob], dict[str, float]]:
    rng = random.Random(seed)
    tenants = sorted({j.tenant for j in jobs})
    names = {t: f"t{i:02d}" for i, t in enumerate(rng.sample(tenants, len(tenants)))}
    shares = {names[t]: float(rng.choice([1, 2, 4, 8])) for t in tenants}
    return [replace(j, tenant=names[j.tenant]) for j in jobs], shares


def zipf(
    n: int = 6000,
    users: int = 12,
    gpus: int = 256,
    load: float = 0.9,
    s: float = 1.1,
    seed: int = 0,
    random_shares: bool = False,
) -> tuple[list[TraceJob], dict[str, float]]:
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** s for k in range(users)]
    names = [f"z{k:02d}" for k in range(users)]
    sizes = rng.choices([1, 2, 4, 8], weights=[70, 10, 15, 5], k=n)
    durations = [60.0 * 10 ** rng.uniform(1.5, 3.5) for _ in range(n)]  # ~30 min to ~2 days
    demand = sum(g * d for g, d in zip(sizes, durations, strict=True))
    span = demand / (gpus * load)
    rate = n / span
    t = 0.0
    jobs: list[TraceJob] = []
    for i in range(n):
        t += rng.expovariate(rate)
        user = rng.choices(names, weights=weights)[0]
        jobs.append(TraceJob(i + 1, f"z{i}", user, t, sizes[i], durations[i]))
    shares = {u: float(rng.choice([1, 2, 4])) if random_shares else 1.0 for u in names}
    return jobs, shares
