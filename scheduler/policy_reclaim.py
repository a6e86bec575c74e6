"""Reclaim: which running jobs to preempt so that a waiting job can start. A base of
policy_pass.Pass, which owns the state named below; split out only to keep each
piece small. Scavengers go first, for anyone; borrowed GPUs of others next, for a
researcher below their guarantee, least work lost first."""

from __future__ import annotations

from collections import Counter

from scheduler.policy_state import NodeState, PassCore, can_hold
from scheduler.policy_types import PendingJob, RunningJob

# Look first where a claim may need no victims (_reclaim); off only in the test that
# checks it picks what the whole scan picks.
_READY_FIRST = True

# What a claim on a node costs: (GPU-seconds lost of regular jobs, of scavengers). Compared
# as a tuple, so the cheapest node is the one that stops the least regular work, and a
# scavenger's work only decides between nodes that lose the same: "guarantee reclaims
# take scavengers before anyone's borrowed job" across nodes as within one.
Cost = tuple[float, float]
NO_COST: Cost = (0.0, 0.0)


class Reclaimer(PassCore):
    # Owned by Pass (policy_pass.py), which sets all of them up.
    held: Counter[str]
    scav: dict[str, int]
    going: dict[str, int]
    scav_free: int
    claimed: Counter[str]
    node_claimed: Counter[str]
    reclaimed: Counter[str]
    # Add to these only through stop(): _reclaim's first look (where GPUs are on hand)
    # finds stopping jobs by stop_nodes, and would miss one added to stopping_for alone.
    stopping_for: set[int]
    stop_nodes: set[str]
    buckets: list[dict[str, None]]
    no_reclaim: dict[tuple[str, str], int]

    def claim_for(
        self, j: PendingJob, multi: bool, scavengers_only: bool = False
    ) -> tuple[list[RunningJob], NodeState, tuple[str, ...]] | None:
        """reclaim() or reclaim_multi(), as (victims, node, more nodes)."""
        if multi:
            return self.reclaim_multi(j, scavengers_only)
        one = self.reclaim(j, scavengers_only)
        return None if one is None else (*one, ())

    def reclaim(
        self, j: PendingJob, scavengers_only: bool = False
    ) -> tuple[list[RunningJob], NodeState] | None:
        """Borrowed jobs to preempt so that `j` (within its owner's guarantee) can start.

        GPUs already on their way out (jobs told to stop) count first, minus what
        earlier claims in this pass took of them; only the rest is preempted.
        """
        # Within a pass what can be reclaimed only shrinks. Borrowed GPUs: per researcher
        # (their own jobs are never their victims), a bigger ask fails too. Scavengers:
        # anyone's, but whether the job then fits depends on all of its shape.
        if scavengers_only:
            key = ("scavengers", f"{j.gpus}/{j.cpus}/{j.memory}/{self._dur(j):.0f}")
            known = key in self.no_reclaim
        else:
            key = self._borrowed_key(j, False)
            known = j.gpus >= self.no_reclaim.get(key, 1 << 30)
        if j.nodes is None and known:
            return None
        found = self._reclaim(j, scavengers_only)
        if found is None and j.nodes is None:
            self.no_reclaim[key] = min(j.gpus, self.no_reclaim.get(key, 1 << 30))
        return found

    @staticmethod
    def _borrowed_key(j: PendingJob, multi: bool) -> tuple[str, str]:
        return ("multi", f"{j.user}/{j.gpus}") if multi else ("borrowed", f"{j.user}/{j.cpus}/{j.memory}")

    def known_to_fail(self, j: PendingJob, multi: bool) -> bool:
        """A claim on borrowed GPUs for `j` would fail: one no bigger (same owner and
        shape) already did in this pass (see reclaim())."""
        return j.nodes is None and j.gpus >= self.no_reclaim.get(self._borrowed_key(j, multi), 1 << 30)

    def _reclaim(self, j: PendingJob, scavengers_only: bool) -> tuple[list[RunningJob], NodeState] | None:
        best: tuple[Cost, str, list[RunningJob]] | None = None
        slack = {} if scavengers_only else self.slack(j.user)
        if _READY_FIRST and j.gpus > 0:
            # A job whose GPUs are already on their way out (claimed in an earlier pass,
            # within its grace period) asks again every pass: look first where enough
            # may be on hand, free or stopping. The first such node in id order is what
            # the whole scan below would pick; only when there is none is it needed.
            ready = set(self.stop_nodes)
            for k in range(1, self.max_per_node + 1):
                ready.update(self.buckets[k])
            for nid in sorted(ready):
                node = self.nodes[nid]
                if not can_hold(node, j):
                    continue
                found = self._clear(node, j, j.gpus, scavengers_only, slack)
                if found is not None and not found[1] and self._usable(node, j, [], scavengers_only):
                    self._claim(j, [(nid, j.gpus)], [])
                    return [], node
        for nid, node in self.nodes.items():
            if not can_hold(node, j):
                continue
            found = self._clear(node, j, j.gpus, scavengers_only, slack)
            if found is None:
                continue
            lost, victims = found
            if not self._usable(node, j, victims, scavengers_only):
                more = self._scavengers_for_room(node, j, victims) if scavengers_only else None
                if more is None:
                    continue
                # The GPUs were there; the node's CPUs or memory were a scavenger's.
                lost = (0.0, sum(r.gpus * (self.now - r.start_time) for r in more))
                victims = more
            if not victims:
                # Enough is already on its way out; wait for it rather than preempt more.
                best = (NO_COST, nid, [])
                break
            if best is None or (lost, nid) < (best[0], best[1]):
                best = (lost, nid, victims)
        if best is None:
            return None
        _, nid, victims = best
        self._claim(j, [(nid, j.gpus)], victims)
        return victims, self.nodes[nid]

    def _usable(self, node: NodeState, j: PendingJob, victims: list[RunningJob], scavengers_only: bool) -> bool:
        """Is a claim on `node` worth making? Its CPUs and memory must be there once the
        victims are gone: preempting a borrower (or waiting on free GPUs) where `j` could
        still not start took work for nothing and waited for ever (a review). An eviction of
        scavengers must also delay no reservation: else the scavenger would come straight
        back next pass, and be evicted again. (A guarantee claim makes its own reservation.)"""
        if scavengers_only:
            return self._fits_after(node, j, victims)
        if not j.cpus and not j.memory:
            return True
        return self._room_after(node, j, self._going(node, victims))

    def _scavengers_for_room(self, node: NodeState, j: PendingJob, victims: list[RunningJob]) -> list[RunningJob] | None:
        """`victims` and more scavengers on `node`, least work lost first, until `j` fits
        there (its CPUs and memory, no reservation delayed); None if even all do not do.
        A scavenger holding a node's CPUs kept a regular job off its free GPUs for ever
        (a review): scavengers yield whatever another job needs, not only GPUs."""
        if not j.cpus and not j.memory:
            return None  # what stands in the way is a reservation, which more evictions do not move
        now, out = self.now, list(victims)
        rest = sorted(
            (
                r
                for r in self.running_by_node.get(node.info.id, ())
                if r.preemptible and r.stop_deadline is None and r.id not in self.stopping_for and r not in victims
            ),
            key=lambda r: (r.gpus * (now - r.start_time), r.id),
        )
        for r in rest:
            out.append(r)
            if self._fits_after(node, j, out):
                return out
        return None

    def _going(self, node: NodeState, victims: list[RunningJob]) -> list[RunningJob]:
        """The jobs on `node` on their way out once `victims` are told to stop."""
        return [
            r
            for r in self.on_node(node.info.id)
            if r.stop_deadline is not None or r.id in self.stopping_for or r in victims
        ]

    @staticmethod
    def _room_after(node: NodeState, j: PendingJob, going: list[RunningJob]) -> bool:
        # A job over several nodes holds CPUs and memory on its main node only, as
        # RunningIndex counts them.
        nid = node.info.id
        return (
            node.cpus + sum(r.cpus for r in going if r.node == nid) >= j.cpus
            and node.memory + sum(r.memory for r in going if r.node == nid) >= j.memory
        )

    def _fits_after(self, node: NodeState, j: PendingJob, victims: list[RunningJob]) -> bool:
        """Could `j` start on `node` once `victims` and the jobs already stopping there are
        gone: its CPUs and memory, and no reservation it would delay?"""
        going = self._going(node, victims)
        return self._room_after(node, j, going) and self.conflicts(node, j, j.gpus, tuple(going)) is None

    def reclaim_multi(
        self, j: PendingJob, scavengers_only: bool = False
    ) -> tuple[list[RunningJob], NodeState, tuple[str, ...]] | None:
        """reclaim() for a job over a node: whole nodes cleared plus room for the
        remainder on one more, each node the cheapest to clear (least work lost)."""
        # Not monotone in size (16 GPUs may clear two whole nodes where 12 fail to pair
        # one with a remainder): a failure holds for the same size only.
        key = ("multi-scavengers", f"{j.user}/{j.gpus}") if scavengers_only else self._borrowed_key(j, True)
        if j.nodes is None and j.gpus >= self.no_reclaim.get(key, 1 << 30):
            return None
        found = self._reclaim_multi(j, scavengers_only)
        if found is None and j.nodes is None:
            self.no_reclaim[key] = min(j.gpus, self.no_reclaim.get(key, 1 << 30))
        return found

    def _reclaim_multi(
        self, j: PendingJob, scavengers_only: bool
    ) -> tuple[list[RunningJob], NodeState, tuple[str, ...]] | None:
        whole, rest = self.split(j.gpus)
        costs: list[tuple[Cost, str, list[RunningJob]]] = []
        slack = {} if scavengers_only else self.slack(j.user)
        for nid, node in self.nodes.items():
            if node.info.gpus == self.max_per_node and can_hold(node, j, 0):
                found = self._clear(node, j, node.info.gpus, scavengers_only, slack)
                # Each rank asks its node for the job's CPUs and memory (the reservation
                # check of an eviction is below, for all the nodes at once).
                if found is not None and self._usable(node, j, found[1], False):
                    costs.append((found[0], nid, found[1]))
        costs.sort(key=lambda c: (c[0], c[1]))
        if len(costs) < whole:
            return None
        # Each node was costed alone: taken together the victims must still leave every
        # owner their own guarantee. The cheapest nodes that do, not the cheapest nodes
        # or nothing: a claim used to give up when those broke a guarantee while the
        # next ones would not (a review).
        keeps: dict[str, int] = {}
        taken_from: dict[int, RunningJob] = {}

        def agree(victims: list[RunningJob]) -> bool:
            """Take `victims` too, if every owner keeps their guarantee; else take none."""
            more: Counter[str] = Counter()
            for r in victims:
                if not r.preemptible and r.id not in taken_from:
                    more[r.user] += r.gpus
            for u, g in more.items():
                if u not in keeps:
                    keeps[u] = self.keeps(u)
                if keeps[u] - g < self.quota(u).guaranteed_gpus:
                    return False
            for u, g in more.items():
                keeps[u] -= g
            taken_from.update((r.id, r) for r in victims)
            return True

        chosen = []
        for c in costs:
            if agree(c[2]):
                chosen.append(c)
                if len(chosen) == whole:
                    break
        if len(chosen) < whole:
            return None
        taken = {nid for _, nid, _ in chosen}
        parts = [(nid, self.nodes[nid].info.gpus) for _, nid, _ in chosen]
        if rest:
            others: list[tuple[Cost, str, list[RunningJob]]] = []
            for nid, node in self.nodes.items():
                if nid in taken or not can_hold(node, j, rest):
                    continue
                found = self._clear(node, j, rest, scavengers_only, slack)
                if found is not None and self._usable(node, j, found[1], False):
                    others.append((found[0], nid, found[1]))
            others.sort(key=lambda c: (c[0], c[1]))
            main = next((nid for _, nid, vs in others if agree(vs)), None)
            if main is None:
                return None
            parts.append((main, rest))
        else:
            main = parts[-1][0]
        # By id: a job over several of the chosen nodes is a victim on each, stopped once.
        victims = list(taken_from.values())
        if scavengers_only:
            end = self.now + self._dur(j)
            chosen_ids = {nid for nid, _ in parts}
            if any(
                res.at < end and (res.node in chosen_ids or chosen_ids & set(res.more_nodes))
                for res in self.reservations
            ):
                return None  # it could not start there anyway: no eviction (no ping-pong)
        self._claim(j, parts, victims)
        return victims, self.nodes[main], tuple(nid for nid, _ in parts if nid != main)

    def own(self, u: str) -> int:
        """GPUs `u` holds that count toward their guarantee (scavengers do not)."""
        return self.held[u] - self.scav.get(u, 0)

    def keeps(self, u: str) -> int:
        """GPUs `u` keeps toward their guarantee once what is already on its way out
        is gone: stopping since an earlier pass (going), or taken back in this one."""
        return self.own(u) - self.going.get(u, 0) - self.reclaimed[u]

    def slack(self, claimant: str) -> dict[str, int]:
        """GPUs each other researcher holds over their guarantee, net of what this pass
        already takes back from them: the most a claim by `claimant` may take from
        each (their own jobs are never the claimant's victims). Only researchers with
        some to give are in it (_clear never takes a job that holds no GPU)."""
        out: dict[str, int] = {}
        for u in self.held:
            if u != claimant:
                s = self.keeps(u) - self.quota(u).guaranteed_gpus
                if s > 0:
                    out[u] = s
        return out

    def _clear(
        self,
        node: NodeState,
        j: PendingJob,
        need: int,
        scavengers_only: bool,
        slack: dict[str, int],
    ) -> tuple[Cost, list[RunningJob]] | None:
        """(the work lost (Cost), victims) that give `need` GPUs on `node`; None if it cannot.
        Scavengers go first, whoever owns them and however young; then (unless
        `scavengers_only`) borrowed GPUs of other researchers, least work lost first.
        `slack`: self.slack(j.user) ({} for scavengers only), once per reclaim."""
        nid = node.info.id
        available = node.free - self.node_claimed[nid]
        # One loop over the node's jobs, the hottest of a reclaim: what is already on its
        # way out counts as available; the rest that may go are the candidates.
        now, min_runtime, stopping = self.now, self.cfg.min_runtime, self.stopping_for
        # (job, the GPUs it frees here): a job over several nodes frees its part here,
        # though its owner loses, and the pass counts as reclaimed, all of its GPUs. Such a
        # job was never a victim once (a review): a borrower's job over two nodes kept a
        # researcher under their guarantee waiting for its whole 72-h limit.
        candidates: list[tuple[RunningJob, int]] = []
        offered = 0
        for r in self.on_node(nid):
            g = self.here(r, nid) if r.more_nodes else r.gpus
            if r.stop_deadline is not None or r.id in stopping:
                available += g
            elif g > 0 and (
                r.preemptible or (r.gpus <= slack.get(r.user, -1) and now - r.start_time >= min_runtime)
            ):
                # A job holding no GPU frees nothing a claim counts, whoever owns it:
                # a borrower's CPU-only job beside their GPU jobs stays (it once sorted
                # first among the victims, losing "no work").
                candidates.append((r, g))
                offered += g
        if available >= need:
            return NO_COST, []
        if available + offered < need:
            return None  # most nodes, on a busy pool: no sort
        candidates.sort(key=lambda c: (not c[0].preemptible, c[0].gpus * (now - c[0].start_time), c[0].id))
        victims: list[RunningJob] = []
        taken: dict[str, int] = {}
        lost = scav_lost = 0.0
        for r, g in candidates:
            if available >= need:
                break
            if not r.preemptible:
                # Only borrowed GPUs are taken back: the owner keeps their own guarantee.
                t = taken.get(r.user, 0) + r.gpus
                if t > slack[r.user]:
                    continue
                taken[r.user] = t
            victims.append(r)
            available += g
            if r.preemptible:
                scav_lost += r.gpus * (now - r.start_time)
            else:
                lost += r.gpus * (now - r.start_time)
        return ((lost, scav_lost), victims) if available >= need else None

    def stop(self, r: RunningJob) -> None:
        """`r` is asked to stop in this pass: its GPUs are on their way out."""
        self.stopping_for.add(r.id)
        self.stop_nodes.add(r.node)
        self.stop_nodes.update(r.more_nodes)

    def _claim(self, j: PendingJob, parts: list[tuple[str, int]], victims: list[RunningJob]) -> None:
        for nid, g in parts:
            self.node_claimed[nid] += g
        self.claimed[j.user] += j.gpus
        for r in victims:
            self.stop(r)
            if r.preemptible:
                self.scav_free -= r.gpus
            else:
                # A scavenger's GPUs never counted toward its owner's holdings.
                self.reclaimed[r.user] += r.gpus
