"""The UI against a real daemon (real Ray, 2 logical GPUs): submit, follow a log, cancel."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from scheduler.client import Client
from tests.conftest import REPO, Labq, daemon, free_port, unix_user
from tui.api import ClientBackend
from tui.app import LabqApp
from tui.job import JobScreen
from tui.queue import QueueScreen
from tui.submit import SubmitScreen


@pytest.fixture(scope="module")
def lq() -> Iterator[Labq]:
    config = f"grace_period_s: 2\nmin_runtime_s: 0\nmonitor_interval_s: 0.5\nlisten: 127.0.0.1:{free_port()}\n"
    with daemon(config, "--gpus", "2") as lq:
        yield lq


async def wait_until(pilot: Pilot[None], what: str, cond: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.2)


def test_the_ui_as_a_remote_client_with_a_token(lq: Labq, monkeypatch: pytest.MonkeyPatch) -> None:
    """A researcher's desktop: no socket, LABQ_URL and a token; the daemon says who they are."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create the Unix user the token is for")
    unix_user("labqtest-alice")
    token = lq.json("token", "create", "labqtest-alice")["token"]
    job = lq.submit("--", "sleep", "30", cwd="/tmp")
    monkeypatch.setenv("LABQ_URL", Client(lq.socket).health()["listen"])
    monkeypatch.setenv("LABQ_TOKEN", token)
    app = LabqApp(ClientBackend(None), refresh_s=0.5)

    async def go() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await wait_until(pilot, "the first poll", lambda: app.data.fetched_at is not None)
            assert app.data.health["caller"] == "labqtest-alice" and not app.data.health["caller_is_admin"]
            assert any(j["id"] == job for j in app.data.jobs)

    try:
        asyncio.run(go())
    finally:
        lq.run("cancel", str(job), check=False)


def test_submit_follow_and_cancel_through_the_ui(lq: Labq) -> None:
    app = LabqApp(ClientBackend(lq.socket), refresh_s=0.5)
    script = "for i in $(seq 1 400); do echo tick $i; sleep 0.1; done"

    async def go() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await wait_until(pilot, "the first poll", lambda: app.data.fetched_at is not None)
            await pilot.press("n")
            assert isinstance(app.screen, SubmitScreen)
            app.screen.query_one("#f-command", Input).value = f"sh -c '{script}'"
            app.screen.query_one("#f-name", Input).value = "ui-job"
            await wait_until(
                pilot, "the preview", lambda: "starts now" in str(app.screen.query_one("#preview").render())
            )
            await pilot.press("ctrl+s")
            await wait_until(pilot, "the form to close", lambda: isinstance(app.screen, QueueScreen))
            await wait_until(
                pilot,
                "the job to run",
                lambda: any(j["name"] == "ui-job" and j["state"] == "RUNNING" for j in app.data.jobs),
            )
            job = next(j for j in app.data.jobs if j["name"] == "ui-job")
            app.open_job(int(job["id"]))
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, JobScreen)
            await wait_until(pilot, "log lines", lambda: len(screen.lines) >= 5)
            seen = len(screen.lines)
            await wait_until(pilot, "the log to grow while following", lambda: len(screen.lines) > seen + 5)
            assert screen.lines[0] == "tick 1"
            await pilot.press("c")
            await pilot.press("y")
            await wait_until(pilot, "the job to end", lambda: (screen.job or {}).get("state") == "CANCELLED")

    asyncio.run(go())
    j = lq.job(int(next(j for j in lq.json("queue", "--all") if j["name"] == "ui-job")["id"]))
    assert j["state"] == "CANCELLED" and j["reasons"][0].startswith("cancelled by")


def test_web_mode_serves_the_app_only_to_whoever_has_its_token(lq: Labq) -> None:
    """Before: textual-serve answered anyone on the machine, who then acted as the user
    who started it (an admin's web UI let anyone cancel jobs and change quotas)."""
    import asyncio
    import re
    import urllib.error

    import aiohttp

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui", "--web", "--port", str(port), "--socket", str(lq.socket)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            m = re.search(r"(http://127\.0\.0\.1:\d+/\?token=[\w-]+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "the URL with its token was not printed"
        token = url.split("token=")[1]
        assert len(token) >= 24
        deadline = time.monotonic() + 30
        while True:
            try:
                page = urllib.request.urlopen(url, timeout=5).read().decode()
                break
            except urllib.error.HTTPError:
                raise
            except OSError:
                assert time.monotonic() < deadline, "textual-serve did not answer"
                time.sleep(0.3)
        assert "labq" in page and "<html" in page.lower()
        assert f"/ws/{token}" in page  # the page drives the app through the token's path
        for bad in (f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/?token=wrong"):
            try:
                urllib.request.urlopen(bad, timeout=5)
                raise AssertionError(f"{bad} answered without the token")
            except urllib.error.HTTPError as e:
                assert e.code == 403

        async def ws(path: str) -> int:
            async with aiohttp.ClientSession() as session:
                try:
                    async with session.ws_connect(f"ws://127.0.0.1:{port}{path}") as sock:
                        await sock.close()
                        return 101
                except aiohttp.WSServerHandshakeError as e:
                    return e.status

        assert asyncio.run(ws("/ws/wrong")) == 403
        assert asyncio.run(ws("/ws")) in (403, 404)
        assert asyncio.run(ws(f"/ws/{token}")) == 101
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_desktop_install_writes_an_entry_and_an_icon(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_DATA_HOME=str(tmp_path))
    for extra in ([], ["--remote", "gpu-head"]):
        r = subprocess.run(
            [sys.executable, "-m", "scheduler.cli", "desktop-install", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
    entry = (tmp_path / "applications" / "labq.desktop").read_text()
    assert "Terminal=true" in entry and "Icon=labq" in entry and entry.splitlines()[0] == "[Desktop Entry]"
    assert " tui" in next(line for line in entry.splitlines() if line.startswith("Exec="))
    remote = (tmp_path / "applications" / "labq-gpu-head.desktop").read_text()
    assert "--remote gpu-head" in remote
    assert (tmp_path / "icons" / "hicolor" / "scalable" / "apps" / "labq.svg").read_text().startswith("<svg")
