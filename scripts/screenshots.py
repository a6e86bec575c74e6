"""Export the README's screenshots from the app itself (fake API, fixed clock, UTC).

    .venv/bin/python scripts/screenshots.py     # writes docs/screenshots/*.svg
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

os.environ["TZ"] = "UTC"
time.tzset()
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tui.app import LabqApp  # noqa: E402
from tui.sample import NOW, FakeBackend  # noqa: E402

SHOTS = [
    ("queue", {}, ()),
    ("job", {}, ("enter",)),
    ("gpus", {"nodes": 8, "per": 8, "jobs": 40}, ("2",)),
    ("team", {}, ("3",)),
    ("submit", {}, ("n", *"python train.py --epochs 3")),
]


async def shoot(name: str, kw: dict[str, int], keys: tuple[str, ...]) -> None:
    app = LabqApp(FakeBackend(**kw), clock=lambda: NOW, auto_refresh=False)
    async with app.run_test(size=(150, 42)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        if keys:
            await pilot.press(*keys)
        await pilot.pause(1.0)
        await app.workers.wait_for_complete()
        await pilot.pause()
        out = REPO / "docs" / "screenshots"
        app.save_screenshot(f"{name}.svg", path=str(out))
        print(out / f"{name}.svg")


def main() -> None:
    os.chdir("/tmp")
    for name, kw, keys in SHOTS:
        asyncio.run(shoot(name, kw, keys))


if __name__ == "__main__":
    main()
