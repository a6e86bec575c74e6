"""UI refresh cost with 10,000 jobs and 64 GPUs, and key latency while the daemon is slow.

    python benchmarks/bench_tui.py [--jobs 10000] [--rounds 10]

UI time = the time `LabqApp.apply()` takes on the UI loop for one poll's answers
(the table diff and the redraw of what changed), measured inside a headless app. The
baseline in the same run is what a naive table would do: clear and re-add every row.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tui.app import LabqApp  # noqa: E402
from tui.queue import QueueScreen  # noqa: E402
from tui.sample import NOW, FakeBackend  # noqa: E402
from tui.widgets import SyncTable  # noqa: E402


class SlowBackend(FakeBackend):
    delay = 0.0

    def jobs(self) -> list[dict[str, Any]]:
        time.sleep(self.delay)
        return super().jobs()


def got(b: FakeBackend) -> dict[str, Any]:
    return {
        "health": b.health(),
        "jobs": b.jobs(),
        "nodes": b.nodes()["nodes"],
        "quotas": b.quotas(),
        "usage": b.usage(),
    }


async def run(jobs: int, rounds: int) -> None:
    clock = [NOW]
    b = SlowBackend(nodes=8, per=8, jobs=jobs)
    app = LabqApp(b, clock=lambda: clock[0], auto_refresh=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        table = app.screen.query_one("#jobs", SyncTable)
        assert isinstance(app.screen, QueueScreen)

        def timed(data: dict[str, Any]) -> float:
            t0 = time.perf_counter()
            app.apply(data)
            return time.perf_counter() - t0

        results: dict[str, list[float]] = {
            "same data": [],
            "clock +1 s": [],
            "50 jobs change state": [],
            "a job arrives": [],
        }
        for _ in range(rounds):
            results["same data"].append(timed(got(b)))
            clock[0] += 1.0
            results["clock +1 s"].append(timed(got(b)))
            for j in b.job_list[:50]:
                j["state"] = "RUNNING" if j["state"] == "PENDING" else "PENDING"
            results["50 jobs change state"].append(timed(got(b)))
            b.job_list.append({**b.job_list[-1], "id": b.job_list[-1]["id"] + 1})
            results["a job arrives"].append(timed(got(b)))
            await pilot.pause()
        # Baseline: rebuild the whole table every refresh.
        base = []
        for _ in range(rounds):
            rows = list(table._rows.items())
            t0 = time.perf_counter()
            table.clear(columns=False)
            for key, cells in rows:
                table.add_row(*cells, key=key)
            base.append(time.perf_counter() - t0)
        print(f"queue screen, {len(b.job_list)} jobs ({len(table._order)} shown), 64 GPUs, {rounds} rounds:")
        for name, xs in results.items():
            print(f"  {name:<24} median {statistics.median(xs) * 1e3:8.1f} ms   max {max(xs) * 1e3:8.1f} ms")
        print(
            f"  {'baseline: full rebuild':<24} median {statistics.median(base) * 1e3:8.1f} ms   max {max(base) * 1e3:8.1f} ms"
        )

        await pilot.press("2")
        await pilot.pause()
        gpu = []
        for _ in range(rounds):
            clock[0] += 1.0
            gpu.append(timed(got(b)))
        print(
            f"  {'GPUs screen, 64 GPUs':<24} median {statistics.median(gpu) * 1e3:8.1f} ms   max {max(gpu) * 1e3:8.1f} ms"
        )

        # Key latency (press to the screen redrawn) with no poll in flight, then while a
        # poll waits 2 s on a slow daemon: the second should be no worse than the first.
        await pilot.press("1")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, QueueScreen)

        async def press_m() -> float:
            before = screen.filter.mine
            t0 = time.perf_counter()
            await pilot.press("m")
            assert screen.filter.mine != before
            return time.perf_counter() - t0

        idle = [await press_m() for _ in range(4)]
        b.delay = 2.0
        app.poll_now()
        await pilot.pause(0.1)
        busy = []
        for _ in range(4):
            busy.append(await press_m())
        in_flight = any(w.is_running for w in app.workers)
        b.delay = 0.0
        print(
            f"  key 'm' (filter mine/all, 500-row redraw): median {statistics.median(idle) * 1e3:.0f} ms idle, "
            f"{statistics.median(busy) * 1e3:.0f} ms while a poll waits on a 2 s daemon "
            f"(poll still in flight after: {in_flight})"
        )
        await app.workers.wait_for_complete()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    asyncio.run(run(args.jobs, args.rounds))


if __name__ == "__main__":
    main()
