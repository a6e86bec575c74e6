"""The UI against a real daemon (real Ray, 2 logical GPUs): submit, follow a log, cancel."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from scheduler.client import Client
from tests.conftest import REPO, SYSTEM_PYTHON, Labq, as_user, daemon, free_port, unix_user
from tests.ui import browser
from tui.api import ClientBackend
from tui.app import LabqApp
from tui.job import WINDOW, JobScreen
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
                pilot, "the preview", lambda: "start now on" in str(app.screen.query_one("#preview").render())
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
        assert f'"ws/{token}"' in page  # the page drives the app through the token's path
        # Relative URLs only (an `ssh -L` to another port must work) and nothing from the internet.
        assert not re.search(r"(src|href)=\"(https?:)?//", page) and "googleapis" not in page
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


def test_a_big_log_through_the_real_api_and_the_job_screen(lq: Labq) -> None:
    """The job screen reads the tail's window and earlier windows by byte offset from a
    real daemon (`tail=`, `before=`), never the whole log; another user gets nothing."""
    code = "import sys\nfor i in range(300000): sys.stdout.write('line %07d ' % i + 'x' * 20 + '\\n')"
    job = lq.submit("--name", "biglog", "--", sys.executable, "-c", code)
    lq.wait(job, ("SUCCEEDED",), timeout=120)
    whole = (lq.state_dir / "logs" / f"{job}.log").read_bytes()
    assert len(whole) > 8 * WINDOW
    c = lq.client()
    last = c.log(job, tail=WINDOW)
    assert last["offset"] == last["size"] == len(whole) and 0 < len(last["data"]) <= WINDOW
    assert whole[last["start"] - 1 : last["start"]] == b"\n"  # from a line's start
    assert whole[last["start"] :] == last["data"].encode()
    prev = c.log(job, tail=WINDOW, before=last["start"])
    assert prev["offset"] == last["start"] and whole[prev["start"] : prev["offset"]] == prev["data"].encode()

    bob = unix_user("labqtest-bob")
    peek = subprocess.run(
        [SYSTEM_PYTHON, "-c", "from scheduler.client import Client, ClientError\ntry:\n"
         f"    print(Client({str(lq.socket)!r}).log({job}, tail=100))\n"
         "except ClientError as e:\n    print('refused', e.status)"],
        env={"PYTHONPATH": str(lq.client_copy()), "PATH": "/usr/bin:/bin"}, preexec_fn=as_user(bob),
        capture_output=True, text=True, cwd="/tmp",
    )
    assert peek.stdout.strip() == "refused 403", peek

    app = LabqApp(ClientBackend(lq.socket), refresh_s=0.5)

    async def go() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await wait_until(pilot, "the first poll", lambda: app.data.fetched_at is not None)
            t0 = time.monotonic()
            app.open_job(job)
            screen = app.screen
            assert isinstance(screen, JobScreen)
            await wait_until(pilot, "the log's tail", lambda: bool(screen.lines), timeout=10)
            assert time.monotonic() - t0 < 5
            assert screen.lines[-1].startswith("line 0299999") and len(screen.lines) < 300000
            shown, start = len(screen.lines), screen.start
            await pilot.press("left_square_bracket")
            await wait_until(pilot, "earlier lines", lambda: len(screen.lines) > shown, timeout=10)
            assert screen.start < start

    asyncio.run(go())


def start_web(lq: Labq) -> tuple[subprocess.Popen[str], int, str]:
    """`labq tui --web` against the daemon: the process, its port and its token."""
    import re

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui", "--web", "--port", str(port), "--socket", str(lq.socket)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"token=([\w-]+)", line)
        if m:
            return proc, port, m.group(1)
    proc.kill()
    raise AssertionError("labq tui --web printed no URL")


@pytest.mark.skipif(browser.chromium() is None, reason="chromium is not installed (apt install chromium)")
def test_web_mode_in_a_real_browser_through_a_forwarded_port(lq: Labq, tmp_path: Path) -> None:
    """The issue: behind an SSH port forward to another port the page broke (absolute
    http://localhost:PORT asset URLs), it loaded fonts from the internet, and the
    sparklines and bars drew as solid blocks."""
    import asyncio

    job = lq.submit("--gpus", "1", "--name", "web-job", "--", "sleep", "300")
    lq.wait(job, ("RUNNING",))
    proc, port, token = start_web(lq)
    try:
        with browser.forward(port) as fwd:
            origin = f"127.0.0.1:{fwd}"

            async def go() -> dict[str, Any]:
                async with browser.browser() as page:
                    await page.call("Page.navigate", url=f"http://{origin}/?token={token}")
                    # textual.js adds -first-byte once the app's first screen came through the websocket
                    await page.until("document.body.classList.contains('-first-byte')", 60)
                    await page.until("document.querySelector('.textual-terminal.-connected') !== null", 10)
                    fonts = await page.eval(
                        "[...document.fonts].filter(f => f.family.includes('Roboto Mono')).map(f => f.status)"
                    )
                    await asyncio.sleep(2)
                    (tmp_path / "queue.png").write_bytes(await page.screenshot())
                    await page.key("2")  # the GPUs screen: sparklines and memory bars
                    await asyncio.sleep(3)
                    shot = await page.screenshot()
                    (tmp_path / "gpus.png").write_bytes(shot)
                    glyphs = await page.eval(
                        "(() => { const c = document.querySelector('.xterm-screen canvas'); return c ? c.width : 0; })()"
                    )
                    return {"requests": page.requests, "failed": page.failed, "fonts": fonts, "canvas": glyphs}

            out = asyncio.run(go())
        assert out["requests"], out
        strangers = [u for u in out["requests"] if not re.match(rf"(https?|wss?)://{re.escape(origin)}/", u)]
        assert not strangers, strangers  # every asset and the websocket through the forwarded port
        assert f"ws://{origin}/ws/{token}" in " ".join(out["requests"])
        assert not out["failed"], out["failed"]
        assert "loaded" in out["fonts"], out["fonts"]  # the shipped font, not a fallback
        assert out["canvas"] > 0  # xterm draws on a canvas (block glyphs drawn as cells)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        lq.run("cancel", "--now", str(job), check=False)


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
