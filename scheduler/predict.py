"""Learned runtimes (issue 19): how long a job will run, from the runs like it that
have finished before now.

Pure: plain data in, no clock, no store. The daemon feeds it its finished runs, the
simulator the trace's jobs as they finish in simulated time (never one that has not
finished yet: that would be the oracle).

What is "like it": the same owner and the same kind of job (`signature`: the job's
name, or its program and script without numbers; in the simulator, the GPU count, the
only thing a trace says). The prediction is a quantile of that kind's last `KEEP`
runtimes, the way Helios' QSSF estimates a job from its user's and name's history
(Hu et al., SC'21), with the owner's runs of every kind as the fallback prior, as
Tiresias falls back on what it has seen (Gu et al., NSDI'19):
- `seconds`: the median, the point estimate (ordering, ETAs);
- `high`: the 90th percentile, what a backfill hole must hold;
- `confident`: at least `MIN_RUNS` runs of the kind and a spread high/median of at
  most `MAX_SPREAD`; only then may a job without a time limit be backfilled by it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

KEEP = 20  # runs per kind: recent behaviour, not the whole history
MIN_RUNS = 3
MAX_SPREAD = 3.0


@dataclass(frozen=True)
class Prediction:
    seconds: float  # the median of similar runs
    high: float  # their 90th percentile
    runs: int  # how many runs it rests on
    confident: bool  # of this very kind, enough of them, and consistent


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


_NUMBER = re.compile(r"\d+(\.\d+)?")
_SCRIPT = re.compile(r"\.(py|sh|ipynb|jl|lua|R)$")


def signature(name: str, command: Sequence[str]) -> str:
    """What makes two jobs "the same kind": the name if there is one; otherwise the
    program and the first script it runs, numbers left out (`train.py --seed 3` and
    `--seed 4` are one kind; `train.py` and `eval.py` are two)."""
    if name:
        return "name:" + _NUMBER.sub("#", name)
    if not command:
        return ""
    parts = [os.path.basename(command[0])]
    script = next((a for a in command[1:] if _SCRIPT.search(a)), None)
    if script is None and len(command) > 1 and command[1] in ("-m", "-c"):
        script = command[2] if command[1] == "-m" and len(command) > 2 else None
    if script is not None:
        parts.append(os.path.basename(script))
    return "cmd:" + _NUMBER.sub("#", " ".join(parts))


class RuntimeHistory:
    """The last runtimes per (owner, kind) and per owner; predictions are cached until
    one of the owner's runs is added. One writer (`add`); readers may be other threads
    (the cache is replaced whole, never emptied under them)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._kind: dict[tuple[str, str], list[float]] = {}
        self._user: dict[str, list[float]] = {}
        self._cache: dict[tuple[str, str], Prediction | None] = {}

    def add(self, user: str, kind: str, runtime: float) -> None:
        if not runtime >= 0 or math.isinf(runtime):
            return
        for runs in (self._kind.setdefault((user, kind), []), self._user.setdefault(user, [])):
            runs.append(runtime)
            if len(runs) > self.keep:
                del runs[0]
        # The owner's other kinds fall back on their runs of every kind: those change too.
        self._cache = {k: v for k, v in self._cache.items() if k[0] != user}

    def predict(self, user: str, kind: str) -> Prediction | None:
        key = (user, kind)
        cache = self._cache  # once: `add` (another thread) replaces it whole
        if key in cache:
            return cache[key]
        runs = self._kind.get(key)
        own = True
        if not runs:
            runs, own = self._user.get(user), False
        p = None
        if runs:
            xs = sorted(runs)
            mid, high = _quantile(xs, 0.5), _quantile(xs, 0.9)
            confident = own and len(xs) >= MIN_RUNS and high <= MAX_SPREAD * max(mid, 1.0)
            p = Prediction(mid, high, len(xs), confident)
        cache[key] = p
        return p


@dataclass(frozen=True)
class Accuracy:
    jobs: int  # finished jobs replayed
    predicted: int  # of those, how many had a prediction when they were submitted
    mae_s: float  # mean |median prediction - actual| over the predicted ones
    median_ae_s: float
    coverage: float  # share of predicted jobs that ran no longer than `high`
    confident: int  # predictions that were confident
    confident_coverage: float


def accuracy(runs: Iterable[tuple[str, str, float]], keep: int = KEEP) -> Accuracy:
    """Replay finished runs in the order they ended: each is predicted from the ones
    before it, then added. (user, kind, runtime) in end order."""
    h = RuntimeHistory(keep)
    errors: list[float] = []
    covered = confident = confident_covered = n = 0
    for user, kind, runtime in runs:
        n += 1
        p = h.predict(user, kind)
        if p is not None:
            errors.append(abs(p.seconds - runtime))
            covered += runtime <= p.high
            if p.confident:
                confident += 1
                confident_covered += runtime <= p.high
        h.add(user, kind, runtime)
    errors.sort()
    return Accuracy(
        jobs=n,
        predicted=len(errors),
        mae_s=sum(errors) / len(errors) if errors else 0.0,
        median_ae_s=_quantile(errors, 0.5) if errors else 0.0,
        coverage=covered / len(errors) if errors else 0.0,
        confident=confident,
        confident_coverage=confident_covered / confident if confident else 0.0,
    )
