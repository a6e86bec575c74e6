"""RunningIndex (policy_running.py): kept between passes by the simulator, built per pass
by the daemon; both must give schedule() the same Decision."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from scheduler.policy import PendingJob, PolicyConfig, RunningJob, Snapshot, schedule
from scheduler.policy_pass import PassBase
from scheduler.policy_queue import PendingIndex, queues
from scheduler.policy_running import RunningIndex
from scheduler.quota import QuotaBook
from tests.unit.test_policy import NOW, H, nodes

USERS = ["alice", "bob", "carol", "dave"]


def _job(rng: random.Random, jid: int, free: dict[str, int], size: dict[str, int]) -> RunningJob | None:
    """A random job that fits what is free: on one node, or (sometimes) over whole nodes."""
    whole = [nid for nid, f in free.items() if f == size[nid] and f > 0]
    if len(whole) >= 2 and rng.random() < 0.15:
        more = rng.sample(whole, rng.randint(1, len(whole) - 1))
        main = rng.choice([nid for nid in free if nid not in more and free[nid] > 0] or [more.pop()])
        rest = rng.randint(0, free[main]) if main not in more else 0
        gpus = sum(size[n] for n in more) + rest
    else:
        more = []
        some = [nid for nid in free if free[nid] > 0]
        if not some:
            return None
        main = rng.choice(some)
        rest = gpus = rng.randint(0, free[main])  # 0: a CPU-only job
    for nid in more:
        free[nid] = 0
    free[main] -= rest
    return RunningJob(
        jid,
        rng.choice(USERS),
        gpus,
        main,
        start_time=NOW - rng.uniform(0, 30 * H),  # some past their limit or prediction
        time_limit=rng.choice([None, rng.uniform(60, 10 * H)]),
        stop_deadline=rng.choice([None, None, NOW + 30, NOW - 5]),
        cpus=rng.choice([0.0, 0.0, 2.0, 0.5]),
        memory=rng.choice([0, 0, 4 << 30]),
        more_nodes=tuple(more),
        expected=rng.choice([None, None, rng.uniform(10, 10 * H)]),
        preemptible=rng.random() < 0.2,
    )


def _step(rng: random.Random, idx: RunningIndex, jid: int, free: dict[str, int], size: dict[str, int]) -> int:
    """One random change to `idx`: a start, a stop or a stop request; the last job id used."""
    op = rng.random()
    if op < 0.55 or not idx.jobs:
        jid += 1
        r = _job(rng, jid, free, size)
        if r is not None:
            idx.add(r)
    elif op < 0.8:
        r = idx.jobs[rng.choice(list(idx.jobs))]
        idx.remove(r.id)
        for nid in r.more_nodes:
            free[nid] = size[nid]
        free[r.node] += r.gpus - sum(size[n] for n in r.more_nodes)
    else:
        r = idx.jobs[rng.choice(list(idx.jobs))]
        idx.replace(r._replace(stop_deadline=NOW + rng.uniform(-10, 30), expected=rng.choice([None, 100.0])))
    return jid


def _history(rng: random.Random) -> tuple[Snapshot, RunningIndex]:
    """An index after random starts, stops and stop requests, and the Snapshot it stands for."""
    ns = nodes(*rng.choices([8, 8, 4, 2], k=rng.randint(1, 6)))
    size = {n.id: n.gpus for n in ns}
    free = dict(size)
    cfg = PolicyConfig(multi_node=True, min_runtime=rng.choice([0.0, 600.0]))
    idx = RunningIndex(ns, cfg.default_time_limit)
    jid = 0
    for _ in range(rng.randint(0, 40)):
        jid = _step(rng, idx, jid, free, size)
    pending = tuple(
        PendingJob(
            1000 + i,
            rng.choice(USERS),
            rng.choice([1, 1, 2, 4, 8, 16]),
            submit_time=NOW - rng.uniform(0, 10 * H),
            time_limit=rng.choice([None, rng.uniform(60, 10 * H)]),
            expected=rng.choice([None, rng.uniform(10, H)]),
            cpus=rng.choice([0.0, 1.0]),
            preemptible=rng.random() < 0.1,
        )
        for i in range(rng.randint(0, 25))
    )
    quotas = QuotaBook(researchers={u: {"guaranteed_gpus": rng.randint(0, 6)} for u in USERS})
    usage = {u: rng.uniform(0, 100 * H) for u in USERS}
    s = Snapshot(NOW, pending, tuple(idx.jobs.values()), ns, usage, {}, quotas, cfg, running_index=idx)
    return s, idx


def _sums(idx: RunningIndex) -> tuple[object, ...]:
    return (
        idx.held, idx.jobs_held, idx.scav, idx.scav_jobs, idx.scav_free, idx.ends, idx.used,
        idx.stopping, {n: list(js) for n, js in idx.single.items()},
        {n: list(ps.items()) for n, ps in idx.parts.items()},
        {n.id: idx.node_parts(n) for n in idx.nodes},
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(300))
def test_an_index_kept_between_passes_decides_as_one_built_for_the_pass(seed: int) -> None:
    rng = random.Random(seed)
    s, idx = _history(rng)
    fresh = RunningIndex(s.nodes, s.config.default_time_limit, s.running)
    # The same sums, and the same orders where a pass depends on them.
    assert _sums(fresh) == _sums(idx)
    for explain in (True, False):
        s2 = replace(s, config=replace(s.config, explain=explain))
        assert schedule(s2) == schedule(replace(s2, running_index=None))


def test_an_index_for_other_nodes_or_limits_is_not_used() -> None:
    ns = nodes(4)
    idx = RunningIndex(ns, 24 * H, [RunningJob(1, "alice", 4, "n0", NOW - H)])
    # The snapshot says nothing runs: an index that does not match its nodes or its
    # default limit is rebuilt from `running`, so the job starts.
    for other in (
        RunningIndex(nodes(4, 4), 24 * H, idx.jobs.values()),
        RunningIndex(ns, H, idx.jobs.values()),
    ):
        s = Snapshot(NOW, (PendingJob(2, "bob", 4, NOW),), (), nodes(4), running_index=other)
        assert [st.job_id for st in schedule(s).starts] == [2]
    # One that matches is taken as it is (the caller keeps it equal to `running`).
    s = Snapshot(NOW, (PendingJob(2, "bob", 4, NOW),), (), nodes(4), running_index=idx)
    assert not schedule(s).starts


def test_replace_keeps_where_and_whose() -> None:
    idx = RunningIndex(nodes(4, 4), 24 * H, [RunningJob(1, "alice", 2, "n0", NOW - H)])
    with pytest.raises(ValueError, match="remove and add"):
        idx.replace(RunningJob(1, "alice", 2, "n1", NOW - H))
    with pytest.raises(ValueError, match="already running"):
        idx.add(RunningJob(1, "alice", 2, "n0", NOW - H))
    idx.remove(1)
    assert not idx.held and not idx.parts and not idx.used and idx.node_parts(idx.nodes[0]) is None


def test_cpus_are_taken_off_their_node_one_job_at_a_time() -> None:
    # Floats: 4.0 - 0.05 - 1.1 leaves 2.85, 4.0 - (0.05 + 1.1) leaves a hair less. The pass
    # always took each job's CPUs off in turn; summing them first refused this job.
    assert 4.0 - 0.05 - 1.1 >= 2.85 > 4.0 - (0.05 + 1.1)
    ns = (replace(nodes(4)[0], cpus=4.0),)
    running = (
        RunningJob(1, "alice", 1, "n0", NOW - 60, cpus=0.05),
        RunningJob(2, "bob", 1, "n0", NOW - 60, cpus=1.1),
    )
    idx = RunningIndex(ns, 24 * H, running)
    for index in (None, idx):
        s = Snapshot(NOW, (PendingJob(3, "carol", 1, NOW - 60, cpus=2.85),), running, ns, running_index=index)
        assert [st.job_id for st in schedule(s).starts] == [3]


def test_odd_multi_node_shapes_count_as_they_always_did() -> None:
    # A Snapshot is data from the store: a main node also in more_nodes, a node named
    # twice, more_nodes holding more GPUs than the job. Each is counted as the pass
    # always counted it (the ETAs below are what the code before RunningIndex gave),
    # and a kept index stays equal to a fresh one through replace() and remove().
    ns = nodes(4, 4, 4)
    dup = RunningJob(1, "alice", 4, "n0", NOW - 60, time_limit=H, more_nodes=("n0",))
    over = (
        RunningJob(1, "alice", 2, "n0", NOW - 2 * H, time_limit=H, more_nodes=("n1",)),  # -2 on n0, past due
        RunningJob(2, "bob", 4, "n0", NOW - 3 * H, time_limit=H),
        RunningJob(3, "carol", 2, "n0", NOW - 60, time_limit=H),
    )
    for running in ((dup,), over):
        want = PendingJob(4, "dave", 4, NOW - 60, nodes=frozenset({"n0"}))
        s = Snapshot(NOW, (want,), running, ns)
        w = schedule(s).waiting[4]
        assert w.eta is not None and w.eta - NOW == pytest.approx(H - 60)
        idx = RunningIndex(ns, s.config.default_time_limit)
        for r in running:
            idx.add(r)
        idx.add(RunningJob(7, "erin", 4, "n2", NOW - 60, more_nodes=("n2", "n2")))
        idx.replace(running[0]._replace(stop_deadline=NOW + 3 * H))
        idx.replace(running[0])
        idx.remove(7)
        assert _sums(idx) == _sums(RunningIndex(ns, s.config.default_time_limit, running))
        assert schedule(replace(s, running_index=idx)) == schedule(s)


@pytest.mark.parametrize("seed", range(60))
def test_what_a_pass_starts_from_on_each_node_follows_every_start_stop_and_stop_request(seed: int) -> None:
    # node_parts() is kept between passes (the simulator's): after each change, warm as a
    # pass leaves it, it must equal one worked out afresh.
    rng = random.Random(seed)
    ns = nodes(8, 8, 4, 2)
    size = {n.id: n.gpus for n in ns}
    free = dict(size)
    idx = RunningIndex(ns, 24 * H)
    jid = 0
    for _ in range(50):
        jid = _step(rng, idx, jid, free, size)
        fresh = RunningIndex(ns, 24 * H, idx.jobs.values())
        assert [idx.node_parts(n) for n in ns] == [fresh.node_parts(n) for n in ns]


def _base(b: PassBase) -> tuple[object, ...]:
    states = {nid: (n.free, n.cpus, n.memory, n.releases, n.first_predicted) for nid, n in b.nodes.items()}
    return states, b.running_by_node, b.multi_by_node, b.stop_nodes, [list(k) for k in b.buckets], b.max_per_node, b.gpus


@pytest.mark.parametrize("seed", range(100))
def test_what_passes_start_from_is_kept_between_them_and_no_pass_changes_it(seed: int) -> None:
    # PassBase lives on the index across passes, redone for the nodes that changed; each
    # pass copies a node's state before it takes GPUs there. After every change and a
    # pass on it: the same Decision as with a fresh index, and the same base as a fresh
    # one (a start in a pass, on a shared state, would show in both).
    rng = random.Random(seed)
    s, idx = _history(rng)
    ns, size = s.nodes, {n.id: n.gpus for n in s.nodes}
    free = {nid: g - idx.used.get(nid, 0) for nid, g in size.items()}
    jid = 500
    for step in range(12):
        s = replace(s, running=tuple(idx.jobs.values()), config=replace(s.config, explain=step % 2 == 0))
        d = schedule(s)
        assert d == schedule(replace(s, running_index=None))
        fresh = RunningIndex(ns, s.config.default_time_limit, idx.jobs.values())
        assert isinstance(idx.pass_base, PassBase)
        assert _base(idx.pass_base) == _base(PassBase(fresh))
        jid = _step(rng, idx, jid, free, size)


@pytest.mark.parametrize("seed", range(60))
def test_waiting_jobs_kept_by_researcher_give_the_queues_a_pass_would_sort(seed: int) -> None:
    # PendingIndex (the simulator's) through random arrivals and starts, requeued jobs,
    # priorities, scavengers: the same queues, in the same order, and the same Decision.
    rng = random.Random(seed)
    s, _ = _history(rng)
    kept = PendingIndex()
    waiting: dict[int, PendingJob] = {}
    for jid in range(2000, 2000 + rng.randint(0, 60)):
        if waiting and rng.random() < 0.3:
            kept.remove(waiting.pop(rng.choice(list(waiting))))
            continue
        j = PendingJob(
            jid,
            rng.choice(USERS),
            rng.choice([1, 2, 4, 8]),
            submit_time=NOW - rng.choice([0.0, 60.0, rng.uniform(0, 10 * H)]),  # some submitted together
            priority=rng.choice([0, 0, 0, 5, -1]),
            requeued=rng.random() < 0.2,
            preemptible=rng.random() < 0.1,
        )
        waiting[jid] = j
        kept.add(j)
    for explain in (True, False):
        plain = replace(s, pending=tuple(waiting.values()), config=replace(s.config, explain=explain))
        with_kept = replace(plain, pending_index=kept)
        assert queues(with_kept) == queues(plain)
        assert schedule(with_kept) == schedule(plain)
    with pytest.raises(KeyError):
        kept.remove(PendingJob(1, "alice", 1, NOW))
