"""Which nodes have the directory a waiting job needs (no shared filesystem, issue 14).

A job without a code snapshot runs in its workdir, and a git snapshot reads its
commit from the repository, so such a job can only run on a node that has that
directory. The node agents look (as the job's owner would: `agent.has_dirs`); this
book keeps their answers and says, per (owner, directory), which nodes have it.

Threads: the GPU thread owns the answers (`due`, `record`, `silent`); the scheduler
thread says what it needs (`want`) and reads (`where`). Each hands over whole objects
(a new set, a new entry), so the GIL's atomic assignment is all the locking there is.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

Key = tuple[int, str, str]  # (the owner's uid, their name, the directory)

RECHECK_S = 30.0  # a directory made on a node after a "no" is found within this
MAX_PER_ROUND = 256  # keys asked of one node per call: a huge queue is looked at in turns


@dataclass(frozen=True)
class Seen:
    have: frozenset[str] = frozenset()  # nodes where it is
    asked: dict[str, float] = field(default_factory=dict)  # node -> when it last answered


class DirBook:
    def __init__(self, recheck_s: float = RECHECK_S) -> None:
        self.recheck_s = recheck_s
        self._seen: dict[Key, Seen] = {}
        self._wanted: frozenset[Key] = frozenset()
        # False until there are agents to ask (no Ray yet, or a daemon without nodes of
        # its own in tests): then nothing is known and no job is held back for it.
        self.active = False
        # Alive nodes whose agent has not answered for long (a hung mount, a dead
        # monitor): taken as not having anything, so that no job waits on them forever.
        self.silent: frozenset[str] = frozenset()

    # -- the scheduler thread -------------------------------------------------------------
    def want(self, keys: Iterable[Key], alive: Collection[str]) -> bool:
        """What the waiting jobs need now; True when some of it was never asked of every
        alive node (the GPU thread should look at once rather than at its next round)."""
        self._wanted = wanted = frozenset(keys)
        silent = self.silent
        for k in wanted:
            s = self._seen.get(k)  # once: the GPU thread may drop it meanwhile
            if s is None or any(n not in s.asked and n not in silent for n in alive):
                return True
        return False

    def where(self, key: Key, alive: Collection[str]) -> frozenset[str] | None:
        """The alive nodes that have it; None while none is known to and some alive node
        has not answered yet (frozenset(): no alive node has it, or says so in time)."""
        s = self._seen.get(key)
        silent = self.silent
        if s is None:
            return frozenset() if alive and all(n in silent for n in alive) else None
        have = frozenset(n for n in s.have if n in alive)
        if have or all(n in s.asked or n in silent for n in alive):
            return have
        return None

    # -- the GPU thread -------------------------------------------------------------------
    def due(self, alive: Collection[str], now: float, busy: Collection[str] = ()) -> dict[str, list[Key]]:
        """Per node not `busy` with an earlier call, the wanted keys it has not answered
        lately: never-asked ones first, owners taken in turn (one researcher's thousand
        directories do not hold up everyone else's)."""
        wanted = self._wanted
        for k in [k for k in self._seen if k not in wanted]:
            del self._seen[k]  # nobody waits for it any more
        out: dict[str, list[Key]] = {}
        for node in alive:
            if node in busy:
                continue
            never: list[Key] = []
            stale: list[Key] = []
            for k in wanted:
                s = self._seen.get(k)
                at = None if s is None else s.asked.get(node)
                if at is None:
                    never.append(k)
                elif now - at >= self.recheck_s:
                    stale.append(k)
            keys = (_in_turn(never) + _in_turn(stale))[:MAX_PER_ROUND]
            if keys:
                out[node] = keys
        return out

    def record(self, node: str, keys: list[Key], answers: list[bool | None], now: float) -> bool:
        """A node's answers (None: it did not get to that one); True when one changed
        where a key is."""
        changed = False
        for k, has in zip(keys, answers, strict=False):
            if has is None:
                continue
            s = self._seen.get(k, Seen())
            have = s.have | {node} if has else s.have - {node}
            changed = changed or have != s.have or node not in s.asked
            self._seen[k] = Seen(have, {**s.asked, node: now})
        return changed


def _in_turn(keys: list[Key]) -> list[Key]:
    """Round robin over owners, each owner's keys in order."""
    by_uid: dict[int, list[Key]] = {}
    for k in sorted(keys):
        by_uid.setdefault(k[0], []).append(k)
    out: list[Key] = []
    queues = list(by_uid.values())
    i = 0
    while queues:
        q = queues[i % len(queues)]
        out.append(q.pop(0))
        if not q:
            queues.remove(q)
        else:
            i += 1
    return out
