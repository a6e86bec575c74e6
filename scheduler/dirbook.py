"""Which nodes have the directory a waiting job needs (no shared filesystem, issue 14).

A job without a code snapshot runs in its workdir, and a git snapshot reads its
commit from the repository, so such a job can only run on a node that has that
directory. The node agents look (as the job's owner would: `safefs.workdir_problem`);
this book keeps their answers and says, per (owner, directory), which nodes have it.

Threads: the GPU thread owns the answers (`due`, `record`); the scheduler thread says
what it needs (`want`) and reads (`where`). Each hands over whole objects (a new set,
a new entry), so the GIL's atomic assignment is all the locking there is.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

Key = tuple[int, str]  # (the owner's uid, the directory)

RECHECK_S = 30.0  # a directory made on a node after a "no" is found within this
MAX_PER_ROUND = 256  # keys asked of one node per round: a huge queue is looked at in turns


@dataclass(frozen=True)
class Seen:
    have: frozenset[str] = frozenset()  # nodes where it is
    asked: dict[str, float] = field(default_factory=dict)  # node -> when it last answered


class DirBook:
    def __init__(self, recheck_s: float = RECHECK_S) -> None:
        self.recheck_s = recheck_s
        # False until there are agents to ask (no Ray yet, or a daemon without nodes of
        # its own in tests): then nothing is known and no job is held back for it.
        self.active = False
        self._seen: dict[Key, Seen] = {}
        self._wanted: frozenset[Key] = frozenset()

    # -- the scheduler thread -------------------------------------------------------------
    def want(self, keys: Iterable[Key], alive: Collection[str]) -> bool:
        """What the waiting jobs need now; True when some of it was never asked of every
        alive node (the GPU thread should look at once rather than at its next round)."""
        self._wanted = wanted = frozenset(keys)
        for k in wanted:
            s = self._seen.get(k)  # once: the GPU thread may drop it meanwhile
            if s is None or any(n not in s.asked for n in alive):
                return True
        return False

    def where(self, key: Key, alive: Collection[str]) -> frozenset[str] | None:
        """The alive nodes that have it; None while none is known to and some alive node
        has not answered yet (frozenset(): no alive node has it)."""
        s = self._seen.get(key)
        if s is None:
            return None
        have = frozenset(n for n in s.have if n in alive)
        if have or all(n in s.asked for n in alive):
            return have
        return None

    # -- the GPU thread -------------------------------------------------------------------
    def due(self, alive: Collection[str], now: float) -> dict[str, list[Key]]:
        """Per node, the wanted keys it has not answered lately (never-asked first)."""
        wanted = self._wanted
        for k in [k for k in self._seen if k not in wanted]:
            del self._seen[k]  # nobody waits for it any more
        out: dict[str, list[Key]] = {}
        for node in alive:
            never: list[Key] = []
            stale: list[Key] = []
            for k in wanted:
                s = self._seen.get(k)
                at = None if s is None else s.asked.get(node)
                if at is None:
                    never.append(k)
                elif now - at >= self.recheck_s:
                    stale.append(k)
            keys = (sorted(never) + sorted(stale))[:MAX_PER_ROUND]
            if keys:
                out[node] = keys
        return out

    def record(self, node: str, keys: list[Key], answers: list[bool], now: float) -> bool:
        """A node's answers; True when one changed where a key is."""
        changed = False
        for k, has in zip(keys, answers, strict=False):
            s = self._seen.get(k, Seen())
            have = s.have | {node} if has else s.have - {node}
            changed = changed or have != s.have or node not in s.asked
            self._seen[k] = Seen(have, {**s.asked, node: now})
        return changed
