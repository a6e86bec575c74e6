"""The pure scheduling policy: examples first, then properties over random snapshots."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.policy import (
    Decision,
    NodeInfo,
    PendingJob,
    PolicyConfig,
    RunningJob,
    Snapshot,
    schedule,
)
from scheduler.quota import Quota, QuotaBook, fair_share_factor
from tests.strategies import n as examples

NOW = 1_000_000.0
H = 3600.0



def texts(d: Any, job_id: int) -> tuple[str, ...]:
    return tuple(r.text for r in d.waiting[job_id].reasons)

def nodes(*sizes: int) -> tuple[NodeInfo, ...]:
    return tuple(NodeInfo(id=f"n{i}", gpus=g, name=f"node-{i}") for i, g in enumerate(sizes))


def pend(jid: int, user: str, gpus: int = 1, age: float = 60, **kw: object) -> PendingJob:
    return PendingJob(id=jid, user=user, gpus=gpus, submit_time=NOW - age, **kw)  # type: ignore[arg-type]


def run(jid: int, user: str, node: str, gpus: int = 1, age: float = 3 * H, **kw: object) -> RunningJob:
    return RunningJob(id=jid, user=user, gpus=gpus, node=node, start_time=NOW - age, **kw)  # type: ignore[arg-type]


def snap(pending=(), running=(), node_sizes=(4,), quotas=None, usage=None, week=None, **cfg) -> Snapshot:  # type: ignore[no-untyped-def]
    return Snapshot(
        now=NOW,
        pending=tuple(pending),
        running=tuple(running),
        nodes=nodes(*node_sizes),
        usage=usage or {},
        week_usage=week or {},
        quotas=quotas or QuotaBook(),
        config=PolicyConfig(**cfg),
    )


def book(defaults: Quota | None = None, **people: dict[str, object]) -> QuotaBook:
    return QuotaBook(defaults=defaults or Quota(), researchers=people)


def started(d: Decision) -> list[int]:
    return [s.job_id for s in d.starts]


# -- examples -------------------------------------------------------------------------------------
def test_fair_share_factor_is_slurm_classic() -> None:
    assert fair_share_factor(0, 0, 1, 2) == 1.0
    assert fair_share_factor(50, 100, 1, 2) == 0.5  # used exactly the share
    assert fair_share_factor(100, 100, 1, 2) == 0.25


def test_interleaves_equal_researchers_on_one_node() -> None:
    pending = [pend(i, "alice", age=100 - i) for i in range(10)] + [
        pend(100 + i, "bob", age=90 - i) for i in range(10)
    ]
    d = schedule(snap(pending))
    owners = sorted(j.user for j in pending if j.id in started(d))
    assert owners == ["alice", "alice", "bob", "bob"]


def test_lower_usage_goes_first() -> None:
    d = schedule(
        snap(
            [pend(1, "alice", age=1000), pend(2, "bob")],
            node_sizes=(1,),
            usage={"alice": 100 * H, "bob": 1 * H},
        )
    )
    assert started(d) == [2]
    assert texts(d, 1) == ("resources: needs 1 GPU on one node, none is free (1/1 in use)",)
    assert d.waiting[1].reasons[0].kind == "resources"
    assert dict(d.waiting[1].reasons[0].data) == {"gpus": 1, "largest_node": 1, "largest_free": 0}


def test_requeued_and_priority_order_within_a_researcher() -> None:
    pending = [pend(1, "a", age=300), pend(2, "a", age=200, priority=5), pend(3, "a", age=100, requeued=True)]
    d = schedule(snap(pending, node_sizes=(1,)))
    assert started(d) == [3]
    assert list(d.order) == [3, 2, 1]


def test_a_researchers_own_order_is_requeued_then_priority_then_age_at_any_length() -> None:
    # The pass sorts a queue in stable passes on C-level keys; the order must be the one key's.
    rng = random.Random(5)
    pending = [
        pend(i, "a", age=rng.choice([60.0, 120.0, rng.uniform(0, 9000)]), priority=rng.choice([0, 0, 1, -2]),
             requeued=rng.random() < 0.2)
        for i in range(1, 400)
    ]  # fmt: skip
    d = schedule(snap(pending, running=[run(1000, "b", "n0", gpus=4)]))
    want = sorted(pending, key=lambda j: (not j.requeued, -j.priority, j.submit_time, j.id))
    assert list(d.order) == [j.id for j in want]
    plain = [j._replace(priority=0, requeued=False) for j in pending]
    d = schedule(snap(plain, running=[run(1000, "b", "n0", gpus=4)]))
    assert list(d.order) == [j.id for j in sorted(plain, key=lambda j: (j.submit_time, j.id))]


def test_a_researchers_own_queue_is_shortest_expected_run_first_then_age() -> None:
    # duration_hint (config shortest_first): after requeued and priority, the shortest expected run
    # (a confident learned runtime, else --time, else the default limit), then age; a job
    # that has waited hint_age_max goes before its owner's shorter ones.
    rng = random.Random(7)
    week = 7 * 86400.0
    pending = [
        pend(i, "a", age=rng.choice([60.0, rng.uniform(0, 3 * H), week + rng.uniform(0, H)]),
             priority=rng.choice([0, 0, 0, 1]), requeued=rng.random() < 0.1,
             expected=rng.choice([None, None, rng.uniform(60, 5 * H)]),
             time_limit=rng.choice([None, rng.choice([H, 2 * H, 48 * H])]))
        for i in range(1, 300)
    ]  # fmt: skip

    def length(j: PendingJob) -> float:
        if NOW - j.submit_time >= week:
            return 0.0
        limit = j.time_limit or 24 * H
        return min(j.expected, limit) if j.expected is not None else limit

    busy = [run(1000, "b", "n0", gpus=4)]
    d = schedule(snap(pending, running=busy, duration_hint=True))
    want = sorted(pending, key=lambda j: (not j.requeued, -j.priority, length(j), j.submit_time, j.id))
    assert list(d.order) == [j.id for j in want]
    # The plain case, and what each part does: a 1-hour prediction before an older
    # 10-hour limit, an older job without either last, a week-old job first of all.
    plain = [
        pend(1, "a", age=3 * H, time_limit=10 * H),
        pend(2, "a", age=H, expected=H),
        pend(3, "a", age=4 * H),
        pend(4, "a", age=week, time_limit=48 * H),
        pend(5, "a", age=60, expected=5 * H, time_limit=0.5 * H),  # its limit is what counts
    ]
    on = schedule(snap(plain, node_sizes=(1,), running=[run(9, "b", "n0")], duration_hint=True))
    assert list(on.order) == [4, 5, 2, 1, 3]
    old = [pend(1, "a", age=week + 1, expected=H), pend(2, "a", age=week + 2, time_limit=48 * H)]
    assert list(schedule(snap(old, node_sizes=(1,), running=[run(9, "b", "n0")], duration_hint=True)).order) == [2, 1]
    # Off (the default): oldest first.
    off = schedule(snap(plain, node_sizes=(1,), running=[run(9, "b", "n0")]))
    assert list(off.order) == [4, 3, 1, 2, 5]


def test_gang_best_fit_placement() -> None:
    d = schedule(snap([pend(1, "a", gpus=2)], running=[run(9, "b", "n0", gpus=2)], node_sizes=(4, 8)))
    # Node 0 has exactly 2 free: the tightest fit, leaving node 1's 8 GPUs whole.
    assert [(s.job_id, s.node) for s in d.starts] == [(1, "n0")]


def test_resources_reason_with_numbers() -> None:
    d = schedule(snap([pend(1, "a", gpus=2)], running=[run(9, "b", "n0", gpus=3)]))
    assert d.waiting[1].reasons[0].text == "resources: needs 2 GPUs on one node, largest free block is 1"
    d = schedule(snap([pend(1, "a", gpus=8)]))
    assert d.waiting[1].reasons[0].text == "resources: needs 8 GPUs on one node, the largest node has 4"


def test_hard_caps_and_budget_reasons() -> None:
    q = book(alice={"max_gpus": 4}, bob={"max_jobs": 1}, carol={"gpu_hours_per_week": 40})
    running = [run(1, "alice", "n0", gpus=4), run(2, "bob", "n1", gpus=1)]
    pending = [pend(10, "alice"), pend(11, "bob"), pend(12, "carol")]
    d = schedule(snap(pending, running, node_sizes=(4, 8), quotas=q, week={"carol": 40 * H}))
    assert started(d) == []
    assert d.waiting[10].reasons[0].text == "quota: alice holds 4/4 GPUs, this job needs 1 more"
    assert d.waiting[11].reasons[0].text == "quota: bob runs 1/1 jobs"
    assert d.waiting[12].reasons[0].text == "budget: 40.0/40 GPU-hours used this week"


def test_fair_share_reason_names_who_ranks_ahead() -> None:
    running = [run(1, "x", "n0", gpus=4)]
    pending = [pend(2, "bob"), pend(3, "bob", age=50), pend(4, "carol", age=40), pend(5, "dave", age=30)]
    d = schedule(snap(pending, running, usage={"dave": 1000 * H}))
    assert d.waiting[5].reasons[-1].text == "fair share: 3 jobs rank ahead (bob x2, carol)"


def test_eta_from_running_limits() -> None:
    running = [run(1, "x", "n0", gpus=4, age=600, time_limit=3600)]
    d = schedule(snap([pend(2, "a")], running))
    assert d.waiting[2].eta == NOW + 3000


def test_easy_backfill_only_when_it_cannot_delay_the_reservation() -> None:
    # 4 GPUs: 2 busy for another hour. Job 10 (4 GPUs) is blocked and reserved at +1h.
    running = [run(1, "x", "n0", gpus=2, age=0, time_limit=3600)]
    pending = [
        pend(10, "a", gpus=4, age=500),
        pend(11, "b", gpus=1, age=400, time_limit=1800),  # ends before the reservation: backfills
        pend(12, "c", gpus=1, age=300, time_limit=7200),  # would delay it: waits
    ]
    d = schedule(snap(pending, running, usage={"b": 1, "c": 2, "a": 0}))
    assert started(d) == [11]
    assert d.waiting[10].eta == NOW + 3600
    assert d.waiting[12].reasons[0].text.startswith("backfill: would delay job 10")
    # With GPUs free now, its estimate is not "now": the reserved job's end (+1h, its 24 h default).
    assert d.waiting[12].eta == NOW + 3600 + PolicyConfig().default_time_limit


def test_reclaim_preempts_borrowers_least_work_first() -> None:
    q = book(carol={"guaranteed_gpus": 2})
    running = [
        run(1, "alice", "n0", age=5 * H),
        run(2, "alice", "n0", age=1 * H),
        run(3, "bob", "n0", age=2 * H),
        run(4, "bob", "n0", age=0.5 * H),
    ]
    d = schedule(snap([pend(10, "carol", gpus=2)], running, quotas=q))
    assert sorted(p.job_id for p in d.preemptions) == [2, 4]  # the youngest: least work lost
    assert all(p.for_job == 10 for p in d.preemptions)
    assert d.waiting[10].reasons[0].text.startswith("reclaim: carol is below 2 guaranteed GPUs")
    assert d.waiting[10].eta == NOW + PolicyConfig().grace_period


def test_reclaim_for_a_job_over_a_node_clears_the_cheapest_whole_nodes() -> None:
    # carol's 6-GPU job on 4-GPU nodes needs one whole node and 2 GPUs on another; she is
    # guaranteed 8, so she may take back what alice and bob borrow, least work first.
    q = book(carol={"guaranteed_gpus": 8}, dave={"guaranteed_gpus": 4})
    running = [
        run(1, "alice", "n0", gpus=2, age=5 * H),
        run(2, "alice", "n0", gpus=2, age=4 * H),
        run(3, "bob", "n1", gpus=2, age=1 * H),
        run(4, "bob", "n1", gpus=2, age=0.5 * H),
        run(5, "alice", "n2", gpus=1, age=0.2 * H),
        run(6, "dave", "n3", gpus=4, age=0.1 * H),  # within his own guarantee: never taken
    ]
    s = snap([pend(10, "carol", gpus=6)], running, node_sizes=(4, 4, 4, 4), quotas=q, multi_node=True)
    d = schedule(s)
    # The cheapest whole node is n2 (alice's 1-GPU job, 0.2 GPU-hours); the 2 more come
    # from bob's youngest job on n1 (1 GPU-hour), not from n0's 18 GPU-hours.
    assert sorted(p.job_id for p in d.preemptions) == [4, 5]
    why = d.waiting[10].reasons[0]
    assert why.kind == "reclaim" and "on node-2, node-1" in why.text, why.text
    # The claim holds: a 1-GPU job of alice's may not take node-2's free GPUs meanwhile.
    d2 = schedule(replace(s, pending=(*s.pending, pend(11, "alice", gpus=1, age=30))))
    assert 11 not in started(d2) and d2.waiting[11].reasons[0].kind in ("backfill", "resources")
    # No claim at all for a job beyond the owner's guarantee.
    over = snap([pend(10, "carol", gpus=12)], running, node_sizes=(4, 4, 4, 4), quotas=q, multi_node=True)
    assert not schedule(over).preemptions


def test_a_borrowers_job_over_several_nodes_is_reclaimed_like_any_other() -> None:
    # bob borrows both 4-GPU nodes for one 8-GPU job of a 72-h limit; carol, guaranteed
    # 4, waited for all of it: only jobs on one node were ever victims (a review).
    q = book(carol={"guaranteed_gpus": 4})
    big = run(1, "bob", "n1", gpus=8, more_nodes=("n0",), time_limit=72 * H)
    s = snap([pend(10, "carol", gpus=4)], [big], node_sizes=(4, 4), quotas=q, multi_node=True)
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert [(p.job_id, p.for_job) for p in d.preemptions] == [(1, 10)], explain
    w = schedule(s).waiting[10]
    assert "waiting for job 1 (bob) to stop on node-0" in w.reasons[0].text, w.reasons[0].text
    assert w.eta == NOW + PolicyConfig().grace_period
    # The next pass, while it stops: its GPUs are on their way, on either node; no more
    # preemptions, and the claim waits for it.
    stopping = big._replace(stop_deadline=NOW + 20)
    d = schedule(replace(s, running=(stopping,)))
    assert not d.preemptions and "waiting for job 1 (bob)" in d.waiting[10].reasons[0].text
    assert d.waiting[10].eta == NOW + 20
    # Never below the borrower's own guarantee: the whole job stops, not its borrowed part.
    kept = book(carol={"guaranteed_gpus": 4}, bob={"guaranteed_gpus": 4})
    assert not schedule(replace(s, quotas=kept)).preemptions


def test_a_job_over_several_nodes_frees_its_part_of_each_node() -> None:
    # bob's 6-GPU job holds all of n0 and 2 of n1, beside dave's 2 there. A 4-GPU claim
    # that may use n1 only needs both jobs (bob's frees 2 there, not 6); on n0, bob's alone.
    q = book(carol={"guaranteed_gpus": 4})
    big = run(1, "bob", "n1", gpus=6, more_nodes=("n0",), age=H)
    small = run(2, "dave", "n1", gpus=2, age=5 * H)
    for only, victims in (("n1", [1, 2]), ("n0", [1])):
        want = pend(10, "carol", gpus=4, nodes=frozenset({only}), where="needs /data")
        s = snap([want], [big, small], node_sizes=(4, 4), quotas=q, multi_node=True)
        assert sorted(p.job_id for p in schedule(s).preemptions) == victims, only


def test_a_reclaim_over_several_nodes_takes_the_next_nodes_when_the_cheapest_break_a_guarantee() -> None:
    # carol (guaranteed 8) needs two whole 4-GPU nodes. The cheapest two are bob's, but
    # bob is guaranteed 2 of his 8: taking both leaves him none. It used to give up (a
    # review); now it takes one of bob's and dave's older one.
    q = book(carol={"guaranteed_gpus": 8}, bob={"guaranteed_gpus": 2})
    running = [run(1, "bob", "n0", gpus=4, age=H), run(2, "bob", "n1", gpus=4, age=H), run(3, "dave", "n2", gpus=4, age=5 * H)]
    s = snap([pend(10, "carol", gpus=8)], running, node_sizes=(4, 4, 4), quotas=q, multi_node=True)
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert sorted(p.job_id for p in d.preemptions) == [1, 3], explain
    # A remainder (on a third node) obeys the same: 10 GPUs = two whole nodes and 2 more.
    running.append(run(4, "bob", "n3", gpus=2, age=60 * 60))
    s = snap([pend(10, "carol", gpus=10)], running, node_sizes=(4, 4, 4, 4), quotas=book(
        carol={"guaranteed_gpus": 10}, bob={"guaranteed_gpus": 6}), multi_node=True)  # fmt: skip
    assert not schedule(s).preemptions  # bob keeps 6: only 4 of his 10 may go


def test_a_backfilled_job_leaves_the_reserved_job_its_cpus_and_memory() -> None:
    # alice's job (4 GPUs, 14 CPUs) is reserved for when x's job ends in an hour. bob's
    # 2-GPU job fits the GPUs meanwhile, but its 4 CPUs for 24 h would leave her 12 then:
    # it used to start, and she waited its whole day (a review). 2 CPUs leave her 14.
    x = run(1, "x", "n0", gpus=6, cpus=12, age=0, time_limit=H)
    for cpus, memory, goes in ((4.0, 0.0, False), (2.0, 0.0, True), (2.0, 40.0, False)):
        s = snap(
            [pend(10, "alice", gpus=4, cpus=14, memory=100, age=600, time_limit=H),
             pend(11, "bob", gpus=2, cpus=cpus, memory=memory, time_limit=24 * H)],
            [x._replace(memory=50.0)], usage={"bob": 100 * H},
        )  # fmt: skip
        s = replace(s, nodes=(NodeInfo("n0", 8, "node-0", cpus=16, memory=128),))
        for explain in (True, False):
            d = schedule(replace(s, config=replace(s.config, explain=explain)))
            assert (11 in started(d)) is goes, (cpus, memory, explain)
        if not goes:
            assert schedule(s).waiting[11].reasons[0].kind == "backfill"


def test_a_reservation_keeps_its_cpus_from_a_cpu_only_job_in_the_quiet_pass_too() -> None:
    # No GPU is free, so the simulator's pass (explain=False) skipped bob's blocked job,
    # reservation and all; carol's CPU-only job then took the 4 CPUs that reservation
    # keeps for him, where the daemon's pass holds it back (a fuzz of both, after
    # reservations began to count CPUs).
    x = run(1, "x", "n0", gpus=4, cpus=2, age=0, time_limit=H)
    s = snap(
        [pend(10, "bob", gpus=1, cpus=4, age=600, time_limit=H), pend(11, "carol", gpus=0, cpus=13)],
        [x], usage={"carol": 100 * H},
    )  # fmt: skip
    s = replace(s, nodes=(NodeInfo("n0", 4, "node-0", cpus=16),))
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert not d.starts, explain
    assert schedule(s).waiting[11].reasons[0].kind == "backfill"


def test_a_job_whose_cpus_are_taken_is_reserved_when_they_come_back_not_now() -> None:
    # alice's 4 GPUs are free but y's CPU-only job holds every CPU for a day. Her
    # reservation was "now" (GPUs only), so a 1-h job of x's could not use the idle GPUs
    # for that whole day (a review); her ETA read "now" too.
    y = run(1, "y", "n0", gpus=0, cpus=16, age=0, time_limit=24 * H)
    s = snap(
        [pend(10, "alice", gpus=4, cpus=8, age=600), pend(11, "x", gpus=2, time_limit=H)],
        [y], usage={"x": 10 * H},
    )  # fmt: skip
    s = replace(s, nodes=(NodeInfo("n0", 4, "node-0", cpus=16),))
    d = schedule(s)
    assert started(d) == [11]
    assert d.waiting[10].eta == NOW + 24 * H


def test_reclaim_respects_min_runtime_and_victims_guarantee() -> None:
    q = book(carol={"guaranteed_gpus": 2}, alice={"guaranteed_gpus": 2})
    running = [
        run(1, "alice", "n0", age=H),
        run(2, "alice", "n0", age=H),
        run(3, "bob", "n0", age=60),
        run(4, "bob", "n0", age=60),
    ]
    d = schedule(snap([pend(10, "carol", gpus=1)], running, quotas=q))
    # alice is within her guarantee, bob's jobs are younger than the 10-minute minimum.
    assert d.preemptions == ()
    assert d.waiting[10].reasons[0].text.startswith("resources:")


def test_no_second_preemption_while_victims_stop() -> None:
    q = book(carol={"guaranteed_gpus": 1})
    running = [run(1, "alice", "n0", age=H, stop_deadline=NOW + 10), run(2, "alice", "n0", age=H)]
    d = schedule(snap([pend(10, "carol")], running, node_sizes=(2,), quotas=q))
    assert d.preemptions == ()
    assert "waiting for job 1 (alice)" in d.waiting[10].reasons[0].text


def test_claims_in_one_pass_do_not_exceed_the_guarantee() -> None:
    q = book(carol={"guaranteed_gpus": 2})
    running = [run(i, "alice", "n0", age=H * i) for i in range(1, 5)]
    pending = [pend(10 + i, "carol", age=100 - i) for i in range(4)]
    d = schedule(snap(pending, running, quotas=q))
    assert len(d.preemptions) == 2


def test_a_job_holding_no_gpu_is_never_preempted_to_make_room_for_gpus() -> None:
    # A CPU-only job of someone with no guarantee gives back nothing a claim counts
    # (found by a review: it once sorted first among the victims, losing "no work").
    s = snap(
        pending=[pend(3, "a", gpus=8)],
        running=[run(1, "b", "n0", gpus=0), run(2, "c", "n0", gpus=8)],
        node_sizes=(8,),
        quotas=book(a={"guaranteed_gpus": 8}),
        min_runtime=0.0,
    )
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert [(x.job_id, x.for_job) for x in d.preemptions] == [(2, 3)], explain


def test_a_borrowers_cpu_only_job_stays_when_their_gpu_job_is_reclaimed() -> None:
    # b borrows (no guarantee) and runs a CPU-only job beside a GPU job: taking back
    # the GPUs needs the GPU job alone. The CPU-only one once sorted first among the
    # victims (no work lost) and was stopped for nothing.
    s = snap(
        pending=[pend(3, "a", gpus=4)],
        running=[run(1, "b", "n0", gpus=0), run(2, "b", "n0", gpus=4), run(4, "c", "n1", gpus=8)],
        node_sizes=(4, 8),
        quotas=book(a={"guaranteed_gpus": 8}),
        min_runtime=0.0,
    )
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert [(x.job_id, x.for_job) for x in d.preemptions] == [(2, 3)], explain


def _cpu_nodes(s: Snapshot, *sizes: int) -> Snapshot:
    return replace(s, nodes=tuple(replace(n, cpus=16.0) for n in nodes(*sizes)))


def test_a_job_holding_no_gpu_starts_where_every_gpu_is_taken() -> None:
    # Only nodes with a free GPU were looked at, so a CPU-only job waited for a GPU it
    # does not need ("needs 2 CPUs ... beside its GPUs"), and with a guarantee made an
    # empty claim. Found by a review.
    for quotas in (None, book(a={"guaranteed_gpus": 2})):
        s = snap([pend(10, "a", gpus=0, cpus=2)], [run(1, "b", "n0", gpus=4)], quotas=quotas)
        for explain in (True, False):
            d = schedule(replace(s, config=replace(s.config, explain=explain)))
            assert started(d) == [10] and d.preemptions == (), (quotas, explain)


def test_a_job_holding_no_gpu_does_not_rank_in_the_guarantee_tier() -> None:
    # 0 GPUs is always "within the guarantee": a heavy user's CPU-only job went ahead of
    # everyone and took the CPUs a GPU job needed. It waits now, saying for what, with
    # no ETA (no end of anyone's CPUs is counted) and no EASY reservation of no GPU.
    s = _cpu_nodes(
        snap([pend(10, "a", gpus=4, cpus=16, age=600), pend(11, "b", gpus=0, cpus=8, time_limit=24 * H)],
             usage={"b": 1000 * H}),
        4,
    )  # fmt: skip
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert started(d) == [10] and d.order == (10, 11), explain
    d = schedule(s)
    assert d.waiting[11].eta is None and "(no GPU), no node has them free" in texts(d, 11)[0]


def test_a_claims_eta_is_never_in_the_past() -> None:
    # Its victim is past its stop deadline (the daemon is about to kill it): now, not then.
    s = snap([pend(10, "a", gpus=4)], [run(1, "b", "n0", gpus=4, stop_deadline=NOW - 120)],
             quotas=book(a={"guaranteed_gpus": 4}))  # fmt: skip
    d = schedule(s)
    assert d.waiting[10].eta == NOW and texts(d, 10)[0].startswith("reclaim:")


def test_a_victims_job_already_stopping_counts_against_what_it_may_lose() -> None:
    # b (guarantee 4) holds 8 GPUs, 4 of them already stopping (an earlier pass's claim):
    # only 4 stay, its guarantee. Taking job 2 as well left b with none (and b would
    # reclaim back). c waits for d's job to pass min_runtime instead. Found by a review.
    s = snap(
        [pend(10, "a", gpus=4, age=600), pend(11, "c", gpus=4)],
        [run(1, "b", "n0", gpus=4, stop_deadline=NOW + 10), run(2, "b", "n1", gpus=4),
         run(3, "d", "n2", gpus=4, age=60)],
        node_sizes=(4, 4, 4),
        quotas=book(a={"guaranteed_gpus": 4}, b={"guaranteed_gpus": 4}, c={"guaranteed_gpus": 4}),
    )  # fmt: skip
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert d.preemptions == () and started(d) == [], explain
    # Once d's job is old enough, it is the one taken back.
    later = replace(s, running=(*s.running[:2], run(3, "d", "n2", gpus=4)))
    assert [(x.job_id, x.for_job) for x in schedule(later).preemptions] == [(3, 11)]


def test_a_claim_waits_for_gpu_jobs_not_for_a_cpu_only_one_stopping_beside_them() -> None:
    # A CPU-only job being cancelled on the node (its deadline +25 s) was named in the
    # reason and set the ETA, though it frees no GPU. Found by a review.
    s = snap(
        [pend(10, "a", gpus=4, age=600)],
        [run(1, "b", "n0", gpus=4, age=H), run(2, "b", "n0", gpus=4, age=2 * H),
         run(3, "z", "n0", gpus=0, stop_deadline=NOW + 25)],
        node_sizes=(8,), quotas=book(a={"guaranteed_gpus": 4}), grace_period=10,
    )  # fmt: skip
    d = schedule(s)
    assert [(x.job_id, x.for_job) for x in d.preemptions] == [(1, 10)]
    assert "waiting for job 1 (b) to stop" in texts(d, 10)[0] and d.waiting[10].eta == NOW + 10


def test_a_reclaim_takes_a_scavenger_and_less_regular_work_over_a_cheaper_regular_job() -> None:
    # n0: an old scavenger and a 1-hour borrowed job; n1: a 2-hour borrowed job. Counting
    # all work alike, n1 was cheaper (8 GPU-hours against 22), and a regular job was
    # stopped while a scavenger ran on: scavengers go first across nodes too.
    s = snap(
        [pend(10, "a", gpus=4)],
        [run(1, "s", "n0", gpus=2, age=10 * H, preemptible=True, time_limit=48 * H),
         run(2, "b", "n0", gpus=2, age=H), run(3, "b", "n1", gpus=4, age=2 * H)],
        node_sizes=(4, 4), quotas=book(a={"guaranteed_gpus": 4}),
    )  # fmt: skip
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert sorted(x.job_id for x in d.preemptions) == [1, 2], explain


def test_a_claim_goes_where_the_jobs_cpus_will_be_and_preempts_nobody_for_nothing() -> None:
    # Found by a review: a guarantee claim counted GPUs alone. (a) It waited for ever on
    # n0's free GPUs, whose CPUs c holds, and left b's borrowed job on n1 alone; (b) it
    # preempted b's job on a node where c's CPUs still kept it from starting.
    a_and_c = book(a={"guaranteed_gpus": 4}, c={"guaranteed_gpus": 4})
    s = _cpu_nodes(
        snap([pend(10, "a", gpus=2, cpus=8)], [run(1, "c", "n0", gpus=2, cpus=16), run(2, "b", "n1", gpus=4, cpus=1)],
             quotas=a_and_c),
        4, 4,
    )  # fmt: skip
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert [(x.job_id, x.for_job) for x in d.preemptions] == [(2, 10)], explain
    s = _cpu_nodes(
        snap([pend(10, "a", gpus=4, cpus=4)], [run(1, "c", "n0", gpus=4, cpus=15), run(2, "b", "n0", gpus=4, cpus=1)],
             quotas=a_and_c),
        8,
    )  # fmt: skip
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert d.preemptions == () and started(d) == [], explain


def test_a_per_type_cap_does_not_count_the_owners_scavengers_and_sheds_them() -> None:
    # As max_gpus: u's regular job starts, and u's own scavenger gives back what puts u
    # over the h100 cap. It waited on "u holds 4/4 h100 GPUs" instead. Found by a review.
    s = snap([pend(10, "u", gpus=4)], [run(1, "u", "n0", gpus=4, preemptible=True)],
             quotas=book(u={"max_gpus_per_type": (("h100", 4),)}))  # fmt: skip
    s = replace(s, nodes=(NodeInfo("n0", 8, "node-0", gpu_type="h100"),))
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert started(d) == [10] and [(x.job_id, x.for_job) for x in d.preemptions] == [(1, 10)], explain
    assert "h100 cap" in schedule(s).preemptions[0].reason
    # A scavenger of u's own still counts its scavengers: it waits on the cap.
    s2 = replace(s, pending=(pend(11, "u", gpus=4, preemptible=True),))
    d = schedule(s2)
    assert started(d) == [] and "quota: u holds 4/4 h100 GPUs" in texts(d, 11)[0]


def test_a_job_that_needs_the_drained_big_node_says_so() -> None:
    # It read "needs 0 whole free 8-GPU nodes and 6 GPUs on another, 0 are free" (a review).
    s = snap([pend(10, "a", gpus=6)], node_sizes=(4, 4, 8), multi_node=True)
    s = replace(s, nodes=(*s.nodes[:2], replace(s.nodes[2], schedulable=False)))
    d = schedule(s)
    assert texts(d, 10)[0] == (
        "resources: needs 6 GPUs on one node; the nodes that big are drained, unhealthy or gone"
        " (the largest open one has 4)"
    )


def test_a_scavenger_holding_the_nodes_cpus_yields_them_to_a_regular_job() -> None:
    # Its GPU was the only one taken: the regular job had GPUs but not the CPUs, and no
    # eviction was ever made for CPUs (it waited with "ETA now" every pass; a review).
    s = _cpu_nodes(snap([pend(10, "a", gpus=2, cpus=4)], [run(1, "s", "n0", gpus=1, cpus=16, preemptible=True)]), 4)
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert [(x.job_id, x.for_job) for x in d.preemptions] == [(1, 10)], explain
    # A job that asks for no CPU or memory is not blocked by them: nothing to evict for.
    s = _cpu_nodes(snap([pend(10, "a", gpus=2)], [run(1, "s", "n0", gpus=1, cpus=16, preemptible=True)]), 4)
    assert started(schedule(s)) == [10] and schedule(s).preemptions == ()


def test_preemption_can_be_turned_off() -> None:
    q = book(carol={"guaranteed_gpus": 2})
    running = [run(i, "alice", "n0") for i in range(1, 5)]
    d = schedule(snap([pend(10, "carol")], running, quotas=q, preemption=False))
    assert d.preemptions == ()


def test_entry_penalty_stops_a_burst_from_winning_everything() -> None:
    # alice's 100 jobs arrive first; bob's one job must not wait behind all of them.
    pending = [pend(i, "alice", age=1000) for i in range(100)] + [pend(500, "bob", age=10)]
    d = schedule(snap(pending, node_sizes=(2,)))
    assert 500 in started(d)


def test_drained_node_gets_nothing() -> None:
    s = snap([pend(1, "a")], node_sizes=(4,))
    s = replace(s, nodes=(replace(s.nodes[0], schedulable=False),))
    d = schedule(s)
    assert started(d) == []
    assert d.waiting[1].reasons[0].text == "resources: no schedulable node (all drained, unhealthy or gone)"


def test_no_ping_pong_between_two_guaranteed_researchers() -> None:
    """Replay passes with both wanting more than their guarantee: nobody preempts back."""
    q = book(alice={"guaranteed_gpus": 2}, bob={"guaranteed_gpus": 2})
    cfg = PolicyConfig(min_runtime=0, grace_period=10, default_time_limit=400)
    rng = random.Random(7)
    pending = [PendingJob(i, "alice" if i % 2 else "bob", 1, 0.0) for i in range(40)]
    running: list[RunningJob] = []
    pairs: set[tuple[str, str]] = set()
    now = 0.0
    owners = {j.id: j.user for j in pending}
    next_id = 1000
    for _ in range(200):
        s = Snapshot(now, tuple(pending), tuple(running), nodes(4), quotas=q, config=cfg)
        d = schedule(s)
        for p in d.preemptions:
            claimant = owners[p.for_job]
            victim = next(r.user for r in running if r.id == p.job_id)
            pairs.add((claimant, victim))
            running = [r._replace(stop_deadline=now + 5) if r.id == p.job_id else r for r in running]
        by_id = {j.id: j for j in pending}
        for st_ in d.starts:
            j = by_id[st_.job_id]
            running.append(RunningJob(j.id, j.user, j.gpus, st_.node, now, time_limit=rng.choice([60, 300])))
        pending = [j for j in pending if j.id not in {s_.job_id for s_ in d.starts}]
        now += 20
        still = []
        for r in running:
            if (r.stop_deadline is not None and r.stop_deadline <= now) or now >= r.start_time + (
                r.time_limit or 0
            ):
                if r.stop_deadline is not None:
                    pending.append(PendingJob(next_id, r.user, r.gpus, now, requeued=True))
                    owners[next_id] = r.user
                    next_id += 1
            else:
                still.append(r)
        running = still
    assert not any((b, a) in pairs for a, b in pairs), pairs


# -- properties -------------------------------------------------------------------------------------
USERS = ["alice", "bob", "carol", "dave", "erin"]


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    sizes = draw(st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=5))
    ns = nodes(*sizes)
    running: list[RunningJob] = []
    jid = 0
    for n in ns:
        free = n.gpus
        for _ in range(draw(st.integers(0, 4))):
            if free == 0:
                break
            g = draw(st.integers(1, free))
            free -= g
            jid += 1
            running.append(
                RunningJob(
                    jid,
                    draw(st.sampled_from(USERS)),
                    g,
                    n.id,
                    start_time=NOW - draw(st.floats(0, 5 * H)),
                    time_limit=draw(st.one_of(st.none(), st.floats(60, 10 * H))),
                    stop_deadline=draw(st.one_of(st.none(), st.just(NOW + 30))),
                    expected=draw(st.one_of(st.none(), st.none(), st.floats(10, 10 * H))),  # learned
                    preemptible=draw(st.sampled_from([False, False, False, True])),  # a scavenger
                )
            )
    pending = []
    for _ in range(draw(st.integers(0, 30))):
        jid += 1
        pending.append(
            PendingJob(
                jid,
                draw(st.sampled_from(USERS)),
                draw(st.sampled_from([1, 1, 1, 2, 4, 8])),
                submit_time=NOW - draw(st.floats(0, 10 * H)),
                priority=draw(st.integers(-2, 2)),
                time_limit=draw(st.one_of(st.none(), st.floats(60, 10 * H))),
                requeued=draw(st.booleans()),
                count=draw(st.sampled_from([1, 1, 1, 1, 2, 5])),  # an array's waiting tasks
                # Only the nodes that have its directory (no shared filesystem), sometimes.
                nodes=draw(st.one_of(st.none(), st.none(), st.frozensets(st.sampled_from([n.id for n in ns])))),
                where="its directory is there only",
                expected=draw(st.one_of(st.none(), st.none(), st.floats(10, 10 * H))),
                preemptible=draw(st.sampled_from([False, False, False, True])),
            )
        )
    total = sum(sizes)
    people: dict[str, dict[str, object]] = {}
    guar_left = total
    for u in USERS:
        fields: dict[str, object] = {"shares": draw(st.sampled_from([1, 1, 2, 4]))}
        g = draw(st.integers(0, min(4, guar_left)))
        guar_left -= g
        fields["guaranteed_gpus"] = g
        if draw(st.booleans()):
            fields["max_gpus"] = draw(st.integers(1, 16))
        if draw(st.booleans()):
            fields["max_jobs"] = draw(st.integers(1, 6))
        if draw(st.booleans()):
            fields["gpu_hours_per_week"] = draw(st.floats(0, 100))
            fields["scavenge"] = draw(st.booleans())
        people[u] = fields
    usage = {u: draw(st.floats(0, 1000 * H)) for u in USERS}
    week = {u: draw(st.floats(0, 200 * H)) for u in USERS}
    cfg = PolicyConfig(min_runtime=draw(st.sampled_from([0.0, 600.0])))
    return Snapshot(NOW, tuple(pending), tuple(running), ns, usage, week, QuotaBook(researchers=people), cfg)


PROPS = settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(snapshots())
def test_no_gpu_given_twice(s: Snapshot) -> None:
    d = schedule(s)
    used = {n.id: 0 for n in s.nodes}
    for r in s.running:
        used[r.node] += r.gpus
    gpus = {j.id: j.gpus for j in s.pending}
    for st_ in d.starts:
        used[st_.node] += gpus[st_.job_id]
    for n in s.nodes:
        assert used[n.id] <= n.gpus
    # A job starts once; an array at most as many tasks as it has waiting.
    count = {j.id: j.count for j in s.pending}
    for jid, k in Counter(st_.job_id for st_ in d.starts).items():
        assert k <= count[jid]


@PROPS
@given(snapshots())
def test_no_cap_exceeded(s: Snapshot) -> None:
    d = schedule(s)
    gpus = {j.id: j for j in s.pending}
    for u in USERS:
        q = s.quotas.for_user(u)
        mine = [gpus[x.job_id] for x in d.starts if gpus[x.job_id].user == u]
        if not mine:
            continue
        # What u holds once this decision is carried out: own scavengers asked back by it
        # (to make room under a cap for a regular job) and jobs already stopping are gone.
        asked = {x.job_id for x in d.preemptions}
        held = sum(r.gpus for r in s.running if r.user == u and r.stop_deadline is None)
        jobs = sum(1 for r in s.running if r.user == u and r.stop_deadline is None)
        kept = [r for r in s.running if r.user == u and r.stop_deadline is None and r.id not in asked]
        if q.max_gpus is not None:
            assert sum(r.gpus for r in kept) + sum(j.gpus for j in mine) <= max(q.max_gpus, held)
        if q.max_jobs is not None:
            assert len(kept) + len(mine) <= max(q.max_jobs, jobs)
        if q.gpu_hours_per_week is not None and s.week_usage.get(u, 0) / 3600 >= q.gpu_hours_per_week:
            # Over budget: only scavengers start: submitted --preemptible, or any job when
            # the quota says `scavenge`.
            for x in d.starts:
                if gpus[x.job_id].user == u:
                    assert x.preemptible and (q.scavenge or gpus[x.job_id].preemptible)


@PROPS
@given(snapshots())
def test_startable_job_never_waits_while_gpus_idle(s: Snapshot) -> None:
    d = schedule(s)
    free = {n.id: n.gpus for n in s.nodes}
    for r in s.running:
        free[r.node] -= r.gpus
    by_id = {j.id: j for j in s.pending}
    for st_ in d.starts:
        free[st_.node] -= by_id[st_.job_id].gpus
    for jid, w in d.waiting.items():
        if any(r.kind in ("quota", "budget", "backfill", "reclaim") for r in w.reasons):
            continue
        only = by_id[jid].nodes
        largest = max((f for n, f in free.items() if only is None or n in only), default=0)
        assert by_id[jid].gpus > largest, (jid, w.reasons, free)


@PROPS
@given(snapshots())
def test_a_job_runs_only_where_it_may_and_says_why_it_cannot(s: Snapshot) -> None:
    d = schedule(s)
    by_id = {j.id: j for j in s.pending}
    for x in d.starts:
        only = by_id[x.job_id].nodes
        assert only is None or (x.node in only and set(x.more_nodes) <= only), (x, only)
    for jid, w in d.waiting.items():
        if by_id[jid].nodes == frozenset() and not any(r.kind in ("quota", "budget") for r in w.reasons):
            assert w.reasons[0].kind == "placement" and "its directory" in w.reasons[0].text, w.reasons


@PROPS
@given(snapshots(), st.randoms())
def test_same_input_same_output_in_any_order(s: Snapshot, rnd: random.Random) -> None:
    d1 = schedule(s)
    shuffled = replace(
        s,
        pending=tuple(rnd.sample(s.pending, len(s.pending))),
        running=tuple(rnd.sample(s.running, len(s.running))),
        nodes=tuple(rnd.sample(s.nodes, len(s.nodes))),
    )
    d2 = schedule(shuffled)
    assert d1.starts == d2.starts
    assert d1.preemptions == d2.preemptions
    assert d1.waiting == d2.waiting
    assert d1.order == d2.order


@PROPS
@given(snapshots())
def test_every_pending_job_is_started_or_explained(s: Snapshot) -> None:
    d = schedule(s)
    started = Counter(x.job_id for x in d.starts)
    for j in s.pending:
        # All of it started, or what is left waits with a reason (an array may be both).
        assert (started[j.id] == j.count) != (j.id in d.waiting)
        if j.id in d.waiting:
            assert d.waiting[j.id].reasons


@st.composite
def guarantee_cases(draw: st.DrawFn) -> Snapshot:
    """A researcher under guarantee with 1-GPU jobs; every other GPU is borrowed."""
    sizes = draw(st.lists(st.sampled_from([2, 4, 8]), min_size=1, max_size=4))
    ns = nodes(*sizes)
    total = sum(sizes)
    guar = draw(st.integers(1, min(4, total)))
    running = []
    jid = 0
    for n in ns:
        left = n.gpus
        while left:
            g = draw(st.integers(1, left))
            left -= g
            jid += 1
            running.append(
                RunningJob(
                    jid,
                    draw(st.sampled_from(["alice", "bob"])),
                    g,
                    n.id,
                    start_time=NOW - draw(st.floats(700, 5 * H)),
                )
            )
    pending = [PendingJob(100 + i, "carol", 1, NOW - 10 * i) for i in range(draw(st.integers(1, 6)))]
    pending += [PendingJob(200 + i, draw(st.sampled_from(["alice", "bob"])), 1, NOW - 1000) for i in range(5)]
    q = QuotaBook(researchers={"carol": {"guaranteed_gpus": guar}})
    return Snapshot(NOW, tuple(pending), tuple(running), ns, quotas=q)


@PROPS
@given(guarantee_cases())
def test_guarantee_met_within_one_pass_plus_grace(s: Snapshot) -> None:
    d = schedule(s)
    victims = {p.job_id for p in d.preemptions}
    by_id = {j.id: j for j in s.pending}
    running = [r for r in s.running if r.id not in victims]  # they stopped within the grace
    running += [
        RunningJob(x.job_id, by_id[x.job_id].user, by_id[x.job_id].gpus, x.node, s.now) for x in d.starts
    ]
    started_ids = {x.job_id for x in d.starts}
    pending = tuple(j for j in s.pending if j.id not in started_ids)
    later = replace(s, now=s.now + s.config.grace_period, running=tuple(running), pending=pending)
    d2 = schedule(later)
    carol = sum(r.gpus for r in running if r.user == "carol") + sum(
        by_id[x.job_id].gpus for x in d2.starts if by_id[x.job_id].user == "carol"
    )
    want = min(s.quotas.for_user("carol").guaranteed_gpus, sum(1 for j in s.pending if j.user == "carol"))
    assert carol >= want


def test_no_nodes_at_all_is_a_reason_not_a_crash() -> None:
    from dataclasses import replace as _replace

    for multi in (False, True):
        snap = Snapshot(
            now=0.0,
            pending=(PendingJob(1, "ana", 2, 0.0),),
            running=(),
            nodes=(),
            config=_replace(PolicyConfig(), multi_node=multi),
        )
        d = schedule(snap)
        assert d.starts == () and d.waiting[1].reasons[0].kind == "drained"


def test_a_job_no_node_can_ever_hold_reserves_nothing_and_blocks_no_one() -> None:
    """Red-team finding: `--gpus 4 --cpus 100` on 8-CPU nodes was accepted, and the EASY
    reservation held all 4 GPUs 'now' for a start that could never come; every other
    job waited behind it on an idle cluster."""
    s = Snapshot(
        now=NOW,
        pending=(pend(1, "bob", gpus=4, age=600, cpus=100.0), pend(2, "alice", gpus=1, age=60)),
        running=(),
        nodes=(NodeInfo(id="n0", gpus=4, name="node-0", cpus=8, memory=64 * 2**30),),
        config=PolicyConfig(),
    )
    d = schedule(s)
    assert started(d) == [2]
    why = d.waiting[1].reasons[0]
    assert why.kind == "resources" and dict(why.data)["never"] is True
    assert "no node can hold 100 CPUs" in why.text and d.waiting[1].eta is None


# -- only some nodes may run it (no shared filesystem, issue 14) ----------------------------------
def test_a_job_goes_to_a_node_that_has_its_directory_even_when_another_fits_better() -> None:
    s = snap(
        pending=(pend(10, "alice", 1, nodes=frozenset({"n1"}), where="its directory is there only"),),
        running=(run(1, "bob", "n0", 3),),
        node_sizes=(4, 4),
    )
    d = schedule(s)
    assert [(x.job_id, x.node) for x in d.starts] == [(10, "n1")]  # best fit alone would take n0


def test_a_job_whose_nodes_are_busy_waits_for_them_and_its_eta_is_theirs() -> None:
    s = snap(
        pending=(pend(10, "alice", 2, nodes=frozenset({"n1"}), where="its directory is there only"),),
        running=(run(1, "bob", "n1", 4, time_limit=4 * H),),
        node_sizes=(4, 4),
    )
    d = schedule(s)
    assert not d.starts
    assert texts(d, 10) == ("resources: needs 2 GPUs on node-1 (its directory is there only), none is free there",)
    assert d.waiting[10].eta == NOW - 3 * H + 4 * H  # when bob's job on node-1 ends, not now on node-0


def test_a_job_no_node_may_run_says_why_in_the_daemons_words() -> None:
    s = snap(pending=(pend(10, "alice", 1, nodes=frozenset(), where="no node has its directory"),), node_sizes=(4, 4))
    d = schedule(s)
    assert not d.starts
    (r,) = d.waiting[10].reasons
    assert (r.kind, r.text) == ("placement", "placement: no node has its directory")
    assert d.waiting[10].eta is None
    # ... and it holds no reservation: the next job starts.
    s = snap(
        pending=(pend(10, "alice", 4, nodes=frozenset(), where="x"), pend(11, "alice", 4, age=30)),
        node_sizes=(4,),
    )
    assert [x.job_id for x in schedule(s).starts] == [11]


def test_reclaim_for_a_guaranteed_job_happens_only_on_a_node_it_may_use() -> None:
    quotas = QuotaBook(researchers={"alice": {"guaranteed_gpus": 2}})
    s = snap(
        pending=(pend(10, "alice", 2, nodes=frozenset({"n1"}), where="its directory is there only"),),
        # Job 1 has less work to lose, but it is on a node the job may not use.
        running=(run(1, "bob", "n0", 4, age=H), run(2, "bob", "n1", 4, age=3 * H)),
        node_sizes=(4, 4),
        quotas=quotas,
    )
    d = schedule(s)
    assert {p.job_id for p in d.preemptions} == {2}
    assert {p.job_id for p in schedule(replace(s, pending=(s.pending[0]._replace(nodes=None),))).preemptions} == {1}


# -- learned runtimes (issue 19) ---------------------------------------------------------------------
def test_a_job_without_a_limit_backfills_a_hole_its_prediction_fits() -> None:
    running = (run(1, "bob", "n0", 2, age=0, time_limit=H),)  # 2 of 4 GPUs for another hour
    big = pend(10, "alice", 4, age=600)  # reserved to start when bob's job ends
    short = pend(11, "carol", 2, age=60)  # no --time: the 24 h default
    d = schedule(snap(pending=(big, short), running=running))
    assert not d.starts and d.waiting[11].reasons[0].kind == "backfill"
    # Ten similar runs of carol's took 10 minutes: it fits before alice's start.
    d = schedule(snap(pending=(big, short._replace(expected=600.0)), running=running))
    assert [x.job_id for x in d.starts] == [11]
    # A prediction longer than the hole does not.
    d = schedule(snap(pending=(big, short._replace(expected=2 * H)), running=running))
    assert not d.starts


def test_a_running_jobs_prediction_brings_the_etas_of_those_behind_it_forward() -> None:
    running = (run(1, "bob", "n0", 4, age=600),)  # no --time: taken to hold its GPUs 24 h
    waiting = (pend(10, "alice", 4),)
    assert schedule(snap(pending=waiting, running=running)).waiting[10].eta == NOW - 600 + 24 * H
    running = (run(1, "bob", "n0", 4, age=600, expected=1800.0),)
    assert schedule(snap(pending=waiting, running=running)).waiting[10].eta == NOW + 1200
    # Past its prediction it is still running: its GPUs are expected any moment, not gone.
    running = (run(1, "bob", "n0", 4, age=3600, expected=1800.0),)
    assert schedule(snap(pending=waiting, running=running)).waiting[10].eta == NOW


def test_an_eta_that_counts_on_a_prediction_says_so() -> None:
    waiting = (pend(10, "alice", 4), pend(11, "carol", 2))
    limits = schedule(snap(pending=waiting, running=(run(1, "bob", "n0", 4, age=600, time_limit=H),)))
    assert limits.waiting[10].eta == NOW + 3000 and not limits.waiting[10].predicted
    learned = schedule(snap(pending=waiting, running=(run(1, "bob", "n0", 4, age=600, expected=1800.0),)))
    assert learned.waiting[10].eta == NOW + 1200 and learned.waiting[10].predicted
    assert learned.waiting[11].predicted  # behind the reservation: the same release
    # Asked to stop: its GPUs come back at the deadline, whatever was predicted.
    stopping = run(1, "bob", "n0", 4, age=600, expected=1800.0, stop_deadline=NOW + 30)
    assert not schedule(snap(pending=waiting, running=(stopping,))).waiting[10].predicted


# -- the pass's fast paths decide exactly what the plain heap loop decides ------------------------


def _deep_queue(seed: int) -> Snapshot:
    """A busy pool with a queue deep enough for quiet stretches, saturation and the
    depths of reasons and ETAs to all come into play."""
    rng = random.Random(seed)
    per = rng.choice([2, 4, 8])
    ns = tuple(NodeInfo(id=f"n{i}", gpus=per, schedulable=rng.random() > 0.1) for i in range(rng.randint(1, 10)))
    users = USERS[: rng.randint(1, len(USERS))]
    running: list[RunningJob] = []
    jid = 0
    # Sometimes a job over two nodes runs on the first two (its own generator: the rest
    # of the draws stay what they were).
    other = random.Random(-1 - seed)
    held: dict[str, int] = {}
    if len(ns) >= 3 and other.random() < 0.5:
        part = other.randint(1, per)
        running.append(RunningJob(
            100_000 + seed, other.choice(users), per + part, ns[1].id, NOW - other.uniform(0, 5 * H),
            time_limit=other.choice([H, None]), more_nodes=(ns[0].id,),
            stop_deadline=other.choice([None, None, NOW + 10]), preemptible=other.random() < 0.15,
        ))  # fmt: skip
        held = {ns[0].id: per, ns[1].id: part}
    for n in ns:
        free = per - held.get(n.id, 0)
        while free > 0 and rng.random() < 0.8:
            g = rng.randint(1, free)
            jid += 1
            running.append(
                RunningJob(
                    jid,
                    rng.choice(users),
                    g,
                    n.id,
                    NOW - rng.uniform(0, 5 * H),
                    time_limit=rng.choice([600.0, H, None]),
                    expected=rng.choice([None, 300.0]),
                    stop_deadline=rng.choice([None] * 5 + [NOW + 10]),
                    preemptible=rng.random() < 0.15,
                )
            )
            free -= g
    pending = []
    for _ in range(rng.randint(0, 300)):
        jid += 1
        only = None if rng.random() < 0.85 else frozenset(rng.sample([n.id for n in ns], rng.randint(0, len(ns))))
        pending.append(
            PendingJob(
                jid,
                rng.choice(users),
                rng.choice([1, 1, 2, per, 2 * per]),
                NOW - rng.uniform(0, 250 * H),
                priority=rng.randint(-1, 1),
                time_limit=rng.choice([600.0, H, None]),
                requeued=rng.random() < 0.05,
                expected=rng.choice([None, 100.0]),
                nodes=only,
                where=rng.choice(["its directory is there only", "looking for its directory"]) if only is not None else "",
                count=rng.choice([1] * 9 + [5]),
                preemptible=rng.random() < 0.1,
            )
        )
    people: dict[str, dict[str, object]] = {
        u: {
            "shares": rng.choice([1, 2]),
            "guaranteed_gpus": rng.choice([0, 0, 2, 4, 8]),
            **({"max_gpus": rng.choice([4, 8])} if rng.random() < 0.2 else {}),
            **({"max_jobs": 2} if rng.random() < 0.1 else {}),
            **({"gpu_hours_per_week": 1.0, "scavenge": rng.random() < 0.5} if rng.random() < 0.1 else {}),
        }
        for u in users
    }
    cfg = PolicyConfig(
        multi_node=rng.random() < 0.5,
        preemption=rng.random() < 0.7,
        backfill=rng.random() < 0.9,
        reason_depth=rng.choice([0, 3, 200]),
        eta_depth=rng.choice([0, 5, 100]),
        min_runtime=rng.choice([0.0, 600.0]),
    )
    usage = {u: rng.uniform(0, 30 * H) for u in users}
    week = {u: rng.uniform(0, 2 * H) for u in users}
    return Snapshot(NOW, tuple(pending), tuple(running), ns, usage, week, QuotaBook(researchers=people), cfg)


def test_sorted_merge_of_quiet_stretches_decides_as_the_heap_does(monkeypatch: Any) -> None:
    from scheduler import policy

    merged_some = 0
    for seed in range(300):
        s = _deep_queue(seed)
        monkeypatch.setattr(policy, "_MERGE", False)
        plain = schedule(s)
        monkeypatch.setattr(policy, "_MERGE", True)
        fast = schedule(s)
        assert fast == plain, seed
        merged_some += len(s.pending) > 40 and len(fast.waiting) > 20
    assert merged_some > 50  # the fast path was really taken, many times


def test_deep_jobs_explained_from_caches_get_what_consider_gives_them(monkeypatch: Any) -> None:
    # deep_run() and the cache of failed fits: past both depths, a job whose shape and length already
    # failed to fit since the last start is explained from caches. Same decision, to the
    # last reason and ETA, with either order of a researcher's queue.
    from scheduler import policy

    before = policy._deep_explained
    for seed in range(300):
        s = _deep_queue(seed)
        for hint in (True, False):
            s = replace(s, config=replace(s.config, duration_hint=hint))
            monkeypatch.setattr(policy, "_DEEP", False)
            plain = schedule(s)
            monkeypatch.setattr(policy, "_DEEP", True)
            assert schedule(s) == plain, (seed, hint)
    assert policy._deep_explained - before > 1000  # the fast path was really taken


def test_deep_jobs_alike_but_for_where_they_may_run_keep_their_own_words(monkeypatch: Any) -> None:
    # Found by review: the deep cache once keyed a placement reason without `where`.
    from scheduler import policy

    none: frozenset[str] = frozenset()
    pending = [
        pend(i, "a", age=1000 - i, nodes=none,
             where="no node has its directory" if i < 30 else "looking for its directory on the nodes")
        for i in range(1, 41)
    ] + [pend(99, "c", gpus=4, age=5000)]  # fmt: skip
    s = snap(pending, running=[run(100, "b", "n0", gpus=2)], reason_depth=2, eta_depth=0)
    monkeypatch.setattr(policy, "_DEEP", False)
    plain = schedule(s)
    monkeypatch.setattr(policy, "_DEEP", True)
    assert schedule(s) == plain
    assert "looking for its directory" in texts(plain, 35)[0]


def test_a_job_backfills_on_a_node_where_it_delays_no_reservation() -> None:
    # The tightest fit (n0, 1 GPU free) is where an 8-hour job is reserved; n1 has room
    # and no reservation: the 2-hour job starts there instead of waiting.
    running = [run(1, "b", "n0", gpus=3, time_limit=4 * H, age=3 * H), run(2, "b", "n1", gpus=2, time_limit=8 * H)]
    pending = [pend(3, "a", gpus=4, age=600, time_limit=8 * H), pend(4, "c", gpus=1, age=60, time_limit=2 * H)]
    d = schedule(snap(pending, running, node_sizes=(4, 4)))
    assert d.starts and d.starts[0].job_id == 4 and d.starts[0].node == "n1"
    assert d.waiting[3].reasons[0].kind == "resources"


def test_a_job_over_several_nodes_backfills_on_nodes_where_it_delays_no_reservation() -> None:
    # alice's job may use n0 only (its data is there) and is reserved there for the hour
    # y's job has left. bob's 6-GPU job (a whole node and 2 more) put its remainder on
    # n0, the tightest fit, and waited a day (a review); n2 and n3 are free and reserved
    # for nobody. Where every free node would delay her, it still waits.
    running = [run(1, "y", "n0", gpus=2, age=0, time_limit=H), run(2, "y", "n1", gpus=4, age=0, time_limit=H)]
    pending = [
        pend(10, "alice", gpus=4, age=600, nodes=frozenset({"n0"}), where="needs /data"),
        pend(11, "bob", gpus=6, time_limit=24 * H),
    ]
    s = snap(pending, running, node_sizes=(4, 4, 4, 4), multi_node=True, usage={"bob": 10 * H})
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert [(x.job_id, x.node, x.more_nodes) for x in d.starts] == [(11, "n3", ("n2",))], explain
    few = snap(pending, running, node_sizes=(4, 4, 4), multi_node=True, usage={"bob": 10 * H})
    d = schedule(few)
    assert not d.starts and d.waiting[11].reasons[0].kind == "backfill"


def test_reclaim_looking_first_where_gpus_are_on_hand_picks_what_the_whole_scan_picks(monkeypatch: Any) -> None:
    from scheduler import policy_reclaim

    claimed = 0
    for seed in range(300):
        s = _deep_queue(seed)
        s = replace(s, running=tuple(
            r._replace(stop_deadline=NOW + 20) if r.id % 5 == 0 else r for r in s.running
        ))  # fmt: skip
        monkeypatch.setattr(policy_reclaim, "_READY_FIRST", False)
        plain = schedule(s)
        monkeypatch.setattr(policy_reclaim, "_READY_FIRST", True)
        fast = schedule(s)
        assert fast == plain, seed
        claimed += any(r.kind == "reclaim" for w in fast.waiting.values() for r in w.reasons)
    assert claimed > 30  # claims were really made, many times


def test_the_simulators_quiet_pass_starts_and_preempts_what_the_daemons_does() -> None:
    # The simulator runs with explain=False, which stops a pass early once nothing can
    # start or reclaim; it must never stop before a researcher under their guarantee
    # whose smaller job could still reclaim (it once did).
    for seed in range(300):
        s = _deep_queue(seed)
        daemon = schedule(s)
        quiet = schedule(replace(s, config=replace(s.config, explain=False)))
        assert (quiet.starts, quiet.preemptions) == (daemon.starts, daemon.preemptions), seed


def test_a_guaranteed_researchers_small_job_behind_a_big_one_reclaims_in_the_quiet_pass() -> None:
    # bob's guarantee is 2 GPUs: his 4-GPU head cannot be under it, his 1-GPU job can.
    s = snap(
        pending=[pend(10, "bob", gpus=4, age=600), pend(11, "bob", gpus=1, age=60)],
        running=[run(1, "alice", "n0", gpus=4)],
        quotas=book(alice={"guaranteed_gpus": 0}, bob={"guaranteed_gpus": 2}),
        min_runtime=0.0,
    )
    for explain in (True, False):
        d = schedule(replace(s, config=replace(s.config, explain=explain)))
        assert [p.job_id for p in d.preemptions] == [1], explain


# -- scavengers (preemptible jobs) -------------------------------------------------------------------


def test_a_preemptible_job_takes_only_what_nobody_else_can_use_now() -> None:
    s = snap(
        pending=[pend(10, "alice", gpus=2, age=600, preemptible=True), pend(11, "bob", gpus=3, age=60)],
        node_sizes=(4,),
    )
    d = schedule(s)
    # bob's regular job goes first although alice's is older; alice's does not fit beside it.
    assert started(d) == [11]
    assert "only idle GPUs" in d.waiting[10].reasons[0].text
    d = schedule(replace(s, pending=(pend(10, "alice", gpus=1, age=600, preemptible=True), s.pending[1])))
    assert [(x.job_id, x.preemptible) for x in d.starts] == [(11, False), (10, True)]


def test_any_job_that_needs_a_scavengers_gpus_takes_them_at_once() -> None:
    # alice's scavenger is 1 minute old (under min_runtime); bob has no guarantee at all.
    running = [run(1, "alice", "n0", gpus=3, age=60, preemptible=True), run(2, "carol", "n0", gpus=1)]
    d = schedule(snap([pend(10, "bob", gpus=2)], running, quotas=book(carol={"guaranteed_gpus": 4})))
    assert [(x.job_id, x.for_job) for x in d.preemptions] == [(1, 10)]
    assert "yields its GPUs to bob's job 10" in d.preemptions[0].reason
    assert d.waiting[10].reasons[0].text.startswith("reclaim: preemptible jobs yield their GPUs")
    # carol's regular job, though borrowed and old, is never taken for bob.
    assert all(x.job_id != 2 for x in d.preemptions)


def test_scavenger_gpus_count_toward_nobodys_guarantee_and_are_reclaimed_first() -> None:
    # alice holds 4 GPUs, all as scavengers: her guarantee of 2 is untouched, so her
    # regular job may reclaim; the victim is her own scavenger before dave's borrowed job.
    running = [
        run(1, "alice", "n0", gpus=2, preemptible=True),
        run(2, "alice", "n0", gpus=2, preemptible=True),
        run(3, "dave", "n1", gpus=4, age=5 * H),
    ]
    q = book(alice={"guaranteed_gpus": 2})
    d = schedule(snap([pend(10, "alice", gpus=2)], running, node_sizes=(4, 4), quotas=q))
    assert [x.job_id for x in d.preemptions] in ([1], [2])


def test_over_budget_jobs_scavenge_only_when_the_quota_says_so() -> None:
    week = {"alice": 11 * H}
    q = book(alice={"gpu_hours_per_week": 10})
    d = schedule(snap([pend(10, "alice", gpus=1)], quotas=q, week=week))
    assert not d.starts and d.waiting[10].reasons[0].kind == "budget"
    q = book(alice={"gpu_hours_per_week": 10, "scavenge": True, "max_gpus": 2})
    d = schedule(snap([pend(10, "alice", gpus=1, count=3)], quotas=q, week=week))
    # As a scavenger, and still within her other caps: 2 of the array's 3 tasks.
    assert [(x.job_id, x.preemptible) for x in d.starts] == [(10, True), (10, True)]
    kinds = [r.kind for r in d.waiting[10].reasons]
    assert kinds[:2] == ["quota", "budget"], kinds


def test_a_scavenger_never_lands_on_gpus_being_claimed() -> None:
    running = [run(1, "alice", "n0", gpus=2, age=5 * H), run(2, "alice", "n0", gpus=1, age=5 * H)]
    q = book(carol={"guaranteed_gpus": 4})
    d = schedule(
        snap([pend(10, "carol", gpus=4), pend(11, "bob", gpus=1, preemptible=True)], running, node_sizes=(4,), quotas=q)
    )
    assert sorted(x.job_id for x in d.preemptions) == [1, 2]
    assert 11 not in started(d)


def _passes(s: Snapshot, n: int = 20, step: float = 15.0) -> tuple[int, Decision]:
    """Apply each decision for `n` passes: starts run, preempted jobs stop after the grace
    period and are requeued. Returns how many preemptions there were, and the last decision."""
    evictions = 0
    d = schedule(s)
    for _ in range(n):
        d = schedule(s)
        now = s.now + step
        pending = {j.id: j for j in s.pending}
        running = {r.id: r for r in s.running}
        for x in d.starts:
            j = pending.pop(x.job_id)
            running[j.id] = RunningJob(
                j.id, j.user, j.gpus, x.node, s.now, time_limit=j.time_limit, cpus=j.cpus, preemptible=x.preemptible
            )
        for x in d.preemptions:
            evictions += 1
            running[x.job_id] = running[x.job_id]._replace(stop_deadline=s.now + s.config.grace_period)
        for r in list(running.values()):
            if r.stop_deadline is not None and r.stop_deadline <= now:
                del running[r.id]
                pending[r.id] = PendingJob(
                    r.id, r.user, r.gpus, r.start_time - 60, time_limit=r.time_limit, cpus=r.cpus,
                    preemptible=r.preemptible, requeued=True,
                )  # fmt: skip
        s = replace(s, now=now, pending=tuple(pending.values()), running=tuple(running.values()))
    return evictions, d


def test_a_job_that_could_not_start_anyway_does_not_evict_a_scavenger() -> None:
    # c's 24 h job would delay b's reservation even on free GPUs; the scavenger must not
    # be evicted for it (it came straight back, and was evicted again, pass after pass).
    s = snap(
        [
            pend(10, "b", 4, time_limit=H),
            pend(11, "c", 2, time_limit=24 * H),
            pend(12, "d", 2, time_limit=24 * H, preemptible=True),
        ],
        [run(1, "a", "n0", 2, age=H, time_limit=10 * H)],
        usage={"c": 10 * H},
    )
    evictions, d = _passes(s)
    assert evictions <= 1, (evictions, d.waiting[11].reasons[0].text)
    # Nor for one whose CPUs are not there.
    s = snap(
        [pend(11, "c", 2, time_limit=H, cpus=4), pend(12, "d", 2, preemptible=True, cpus=1)],
        [run(1, "a", "n0", 2, age=H, time_limit=10 * H, cpus=15)],
    )
    s = replace(s, nodes=(NodeInfo("n0", 4, "node-0", cpus=16),))
    assert _passes(s)[0] <= 1


def test_a_job_over_a_node_takes_scavengers_gpus_too() -> None:
    s = snap(
        [pend(10, "r", 6)],
        [run(1, "s", "n0", 3, preemptible=True, time_limit=72 * H)],
        node_sizes=(4, 4),
        multi_node=True,
    )
    assert [x.job_id for x in schedule(s).preemptions] == [1]


def test_an_evicted_scavenger_does_not_shield_its_owners_borrowed_jobs() -> None:
    q = book(v={"guaranteed_gpus": 2}, u={"guaranteed_gpus": 4}, a={"guaranteed_gpus": 4})
    running = [
        run(1, "v", "n0", 4, age=H, preemptible=True),
        run(2, "v", "n1", 4, age=5 * H),
        run(3, "v", "n1", 4, age=5 * H),
    ]
    d = schedule(
        snap([pend(10, "a", 4, age=600), pend(11, "u", 4)], running, node_sizes=(4, 8), quotas=q, usage={"u": 100 * H})
    )
    assert {x.for_job for x in d.preemptions} == {10, 11}


def test_own_scavengers_give_way_to_their_owners_job_under_a_cap() -> None:
    d = schedule(
        snap(
            [pend(10, "u", 2)],
            [run(1, "u", "n0", 4, preemptible=True), run(2, "x", "n0", 4)],
            node_sizes=(8,),
            quotas=book(u={"max_gpus": 4}),
        )
    )
    assert [x.job_id for x in d.preemptions] == [1], d.waiting[10].reasons[0].text


def test_a_job_of_exactly_two_nodes_starts_on_two_free_nodes() -> None:
    d = schedule(snap([pend(10, "r", 8)], node_sizes=(4, 4), multi_node=True))
    assert d.starts and set((d.starts[0].node, *d.starts[0].more_nodes)) == {"n0", "n1"}
