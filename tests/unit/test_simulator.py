"""The trace simulator: the daemon's own policy, baselines, and the invariants of a replay."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from scheduler import policy, simulator
from scheduler.simulator import (
    POLICIES,
    Simulation,
    TraceError,
    TraceJob,
    load_trace,
    make_nodes,
    quotas_from_shares,
    replay,
    shares_from_sizes,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "traces"
WEEK = DATA / "philly_pollux_week_2017-10-02_normalized.csv"
SIZES = DATA / "helios_philly_vc_sizes.csv"
REPO = Path(__file__).resolve().parents[2]


def job(i: int, tenant: str, submit: float, gpus: int, duration: float) -> TraceJob:
    return TraceJob(i, f"j{i}", tenant, submit, gpus, duration)


def run(jobs: list[TraceJob], pol: str, nodes: int = 1, per: int = 4, **shares: float) -> Simulation:
    sh = shares or dict.fromkeys({j.tenant for j in jobs}, 1.0)
    cfg = simulator.policy_config(pol)
    sim = Simulation(jobs, make_nodes(nodes, per), pol, quotas_from_shares(sh, nodes * per), cfg, sh, 30.0)
    sim.run()
    return sim


def test_labq_policies_run_the_daemons_schedule_function() -> None:
    # No copy, no simplified twin: the very function object the daemon imports.
    assert simulator.schedule is policy.schedule
    assert simulator.POLICY_FUNCS["fairshare"] is simulator.fairshare


def test_fifo_is_strict_and_sjf_takes_the_shortest() -> None:
    jobs = [
        job(1, "a", 0, 4, 100),  # holds the node until t=100
        job(2, "a", 1, 4, 50),
        job(3, "b", 2, 1, 10),
        job(4, "b", 3, 1, 5),
    ]
    fifo = run(jobs, "fifo")
    assert [fifo.sim_jobs[i].first_start for i in (1, 2, 3, 4)] == [0, 100, 150, 150]
    sjf = run(jobs, "sjf")
    # At t=100 the shortest waiting jobs go first, and share the node.
    assert [sjf.sim_jobs[i].first_start for i in (4, 3, 2)] == [100, 100, 110]


def test_srtf_preempts_the_longer_job_and_pays_the_checkpoint() -> None:
    jobs = [job(1, "a", 0, 4, 1000), job(2, "b", 10, 4, 20)]
    sim = run(jobs, "srtf")
    long, short = sim.sim_jobs[1], sim.sim_jobs[2]
    assert short.first_start == 10 and short.end == 30
    assert long.preemptions == 1 and long.end == pytest.approx(1000 + 20 + simulator.checkpoint_cost(4))


def test_multi_node_jobs_take_whole_nodes_and_wait_for_them() -> None:
    jobs = [job(1, "a", 0, 1, 100), job(2, "b", 1, 12, 50), job(3, "c", 2, 1, 10)]
    for pol in ("fifo", "fairshare"):
        sim = run(jobs, pol, nodes=3, per=8)
        big = sim.sim_jobs[2]
        assert big.first_start == 1, pol  # 8 on a free node + 4 beside job 1
        assert sorted(g for _, g in big.placement) == [4, 8]


def test_fairshare_reclaims_borrowed_gpus_for_a_guarantee() -> None:
    # "b" borrows the whole node; "a" (half the shares: 2 guaranteed GPUs) arrives later.
    jobs = [*(job(i, "b", 0, 1, 10_000) for i in range(1, 5)), job(5, "a", 1000, 2, 100)]
    sim = run(jobs, "fairshare", a=1, b=1)
    a = sim.sim_jobs[5]
    assert a.first_start == pytest.approx(1000 + 30)  # one grace period
    assert sum(sim.sim_jobs[i].preemptions for i in range(1, 5)) == 2
    res = sim.result()
    assert res.preempted_gpu_s > 0
    nopre = run(jobs, "fairshare-nopreempt", a=1, b=1)
    assert nopre.sim_jobs[5].first_start == 10_000


def test_a_claim_is_made_the_moment_borrowed_gpus_may_be_reclaimed() -> None:
    # "a" arrives while b's borrowed jobs are younger than min_runtime (600 s): nothing
    # else happens until they end at 10,000 s, but the daemon's pass (once a second)
    # would reclaim when they turn 600 s old; so does the replay (its MATURE event).
    jobs = [*(job(i, "b", 0, 1, 10_000) for i in range(1, 5)), job(5, "a", 100, 2, 100)]
    sim = run(jobs, "fairshare", a=1, b=1)
    assert sim.sim_jobs[5].first_start == pytest.approx(600 + 30)  # min_runtime, then the grace
    assert sum(sim.sim_jobs[i].preemptions for i in range(1, 5)) == 2


def test_a_pass_runs_only_when_something_happened() -> None:
    # A preempted job's finish event stays in the heap; at its time nothing has changed,
    # so no pass runs there (it used to: a fifth of the passes of the x1.5 replay).
    # Here b's jobs 1 and 2 are preempted at 1000 (for job 5) and again at 4990 (job 6);
    # at 5000, job 1's first finish time, job 6 waits for its claim and could reclaim,
    # but nothing happened: no pass (8 with one there, same decisions).
    jobs = [
        *(job(i, "b", 0, 1, 4900 + 100 * i) for i in range(1, 5)),
        job(5, "a", 1000, 2, 100),
        job(6, "a", 4990, 2, 100),
    ]
    sim = run(jobs, "fairshare", a=1, b=1)
    got = {i: (j.preemptions, j.first_start, j.end) for i, j in sim.sim_jobs.items()}
    assert got == {
        1: (2, 0, 5274.0),
        2: (2, 0, 5374.0),
        3: (0, 0, 5200.0),
        4: (0, 0, 5300.0),
        5: (0, 1030.0, 1130.0),
        6: (0, 5020.0, 5120.0),
    }
    assert sim.passes == 7


def test_partition_caps_each_tenant_at_its_share() -> None:
    jobs = [*(job(i, "b", 0, 1, 100) for i in range(1, 5)), job(5, "a", 0, 1, 100)]
    sim = run(jobs, "partition", a=1, b=1)
    starts = sorted(sim.sim_jobs[i].first_start or 0 for i in range(1, 5))
    assert starts == [0, 0, 100, 100]  # b may hold only its 2 GPUs, though 2 sit idle


@pytest.mark.parametrize("pol", POLICIES)
def test_week_trace_invariants(pol: str) -> None:
    jobs = load_trace(WEEK, limit=None if pol in ("fifo", "fairshare") else 2500)
    shares = shares_from_sizes(SIZES, {j.tenant for j in jobs})
    sim = Simulation(
        jobs,
        make_nodes(64, 8),
        pol,
        quotas_from_shares(shares, 512),
        simulator.policy_config(pol),
        shares,
        30.0,
    )
    res = sim.run()
    assert res.finished == res.jobs == len(jobs)  # all jobs finish
    for j in sim.sim_jobs.values():
        assert j.first_start is not None and j.first_start >= j.trace.submit  # none before it arrives
        assert j.end is not None and j.end - j.first_start >= j.trace.duration - 1e-6
    # Conservation: every job got exactly its GPU-time of work; overhead is accounted apart.
    work = sum(j.run_gpu_s for j in sim.sim_jobs.values())
    assert work == pytest.approx(res.demand_gpu_s, rel=1e-9)
    assert res.busy_gpu_s == pytest.approx(work + res.preempted_gpu_s, rel=1e-9)
    assert sim.cluster.free == dict.fromkeys(sim.cluster.free, 8)  # every GPU given back


def test_the_same_numbers_on_every_run() -> None:
    jobs = load_trace(WEEK, limit=1500)
    shares = shares_from_sizes(SIZES, {j.tenant for j in jobs})
    a = replay(jobs, 16, 8, "fairshare", shares)
    b = replay(jobs, 16, 8, "fairshare", shares)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    for key in (
        "mean_jct_s",
        "median_jct_s",
        "p99_jct_s",
        "mean_wait_s",
        "makespan_s",
        "utilization",
        "max_rho",
        "jain_index",
        "preempted_gpu_hours",
        "per_tenant",
    ):
        assert key in a
    assert 0 < a["utilization"] <= 1 and 0 < a["jain_index"] <= 1 and a["max_rho"] >= 1 / 3


def test_bad_traces_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("job_id,vc,submit_s,num_gpus,duration_s\nx,a,0,zero,10\n")
    with pytest.raises(TraceError, match="bad.csv:2: num_gpus"):
        load_trace(bad)
    bad.write_text("id,tenant\n1,a\n")
    with pytest.raises(TraceError, match="missing column"):
        load_trace(bad)
    with pytest.raises(TraceError, match="asks for 32 GPUs but the simulated cluster has 8"):
        Simulation([job(1, "a", 0, 32, 1)], make_nodes(1, 8), "fifo")

    cli = [sys.executable, "-m", "scheduler.cli", "simulate"]
    for args, msg in [
        ([str(bad)], "missing column"),
        ([str(WEEK), "--policy", "lottery"], "unknown policy 'lottery'"),
        ([str(WEEK), "--nodes", "0"], "--nodes and --gpus-per-node must be >= 1"),
        ([], "give a trace CSV, or --from-history"),
    ]:
        r = subprocess.run([*cli, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and msg in r.stderr, r.stderr


def test_cli_writes_json_and_a_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "scheduler.cli",
            "simulate",
            str(WEEK),
            "--limit",
            "800",
            "--nodes",
            "8",
            "--shares",
            str(SIZES),
            "--policy",
            "fifo,fairshare",
            "--json",
            str(out),
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())["policies"]
    assert set(data) == {"fifo", "fairshare"} and data["fifo"]["jobs"] == 800
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fairshare" in r.stdout and "mean JCT" in r.stdout


def test_what_if_a_guarantee_from_a_quota_file(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    rows = ["job_id,vc,submit_s,num_gpus,duration_s"]
    rows += [f"a{i},alice,0,1,36000" for i in range(4)]  # alice borrows the whole 4-GPU node
    rows += ["c1,carol,600,2,600"]
    trace.write_text("\n".join(rows) + "\n")

    def carol_jct(quotas: str) -> float:
        q = tmp_path / "q.yaml"
        q.write_text(quotas)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "scheduler.cli",
                "simulate",
                str(trace),
                "--nodes",
                "1",
                "--gpus-per-node",
                "4",
                "--quotas",
                str(q),
                "--policy",
                "fairshare",
                "--no-rho",
                "--json",
                "-",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        return float(json.loads(r.stdout)["per_tenant"]["carol"]["mean_jct_s"])

    without = carol_jct("researchers:\n  carol: {shares: 1}\n  alice: {shares: 1}\n")
    with_guarantee = carol_jct(
        "researchers:\n  carol: {shares: 1, guaranteed_gpus: 2}\n  alice: {shares: 1}\n"
    )
    assert without == pytest.approx(36000 - 600 + 600)  # waits for alice's jobs to end
    assert with_guarantee == pytest.approx(30 + 600)  # one grace period, then runs


def test_a_scavenger_tenant_fills_idle_gpus_and_never_delays_the_others() -> None:
    # "s" submits long 4-GPU jobs preemptibly; "a" arrives later with short ones.
    jobs = [TraceJob(i + 1, f"s{i}", "s", 0.0, 4, 4 * 3600.0) for i in range(4)]
    jobs += [TraceJob(10 + i, f"a{i}", "a", 600.0 + 60 * i, 4, 1800.0) for i in range(4)]
    jobs.sort(key=lambda j: (j.submit, j.id))
    shares = {"s": 1.0, "a": 1.0}
    alone_a = replay([j for j in jobs if j.tenant == "a"], 2, 8, "fairshare", shares, alone=False)
    r = replay(jobs, 2, 8, "fairshare", shares, alone=False, scavengers=frozenset({"s"}))
    assert r["finished"] == len(jobs) and abs(r["conservation_error_gpu_s"]) < 1e-6
    assert r["preemptions"] > 0  # the scavengers yielded
    # a's jobs ran as if s were not there, give or take the grace period of each yield.
    assert r["per_tenant"]["a"]["mean_jct_s"] <= alone_a["per_tenant"]["a"]["mean_jct_s"] + 60


def test_the_replay_decides_as_the_daemon_would_with_every_reason_explained() -> None:
    # The simulator runs passes without reasons (explain=False), which lets a pass stop
    # early or skip researchers who can change nothing. A busy pool, a deep queue:
    # the same replay with every reason explained must come out exactly the same.
    jobs = load_trace(WEEK, limit=800)
    shares = shares_from_sizes(SIZES, {j.tenant for j in jobs})
    out = []
    for explain in (False, True):
        cfg = replace(simulator.policy_config("fairshare"), explain=explain)
        quotas = quotas_from_shares(shares, 64)
        sim = Simulation(jobs, make_nodes(8, 8), "fairshare", quotas, cfg, shares, 30.0)
        r = sim.run()
        out.append(([(j.id, j.first_start, j.end, j.preemptions) for j in sim.sim_jobs.values()], r.passes))
    assert out[0] == out[1]
    assert sum(p for _, _, _, p in out[0][0]) > 0  # reclaims happened: the hard case
