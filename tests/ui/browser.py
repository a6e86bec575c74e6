"""A real headless Chromium driven over the DevTools protocol, and a TCP port forward.

For the web mode's test: the page must work when the browser reaches it through a
forwarded port (as through `ssh -L`), load nothing from anywhere else, and draw.
Chromium comes from the distribution's packages (`apt install chromium`); the test
skips where it is absent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@contextlib.contextmanager
def forward(target_port: int) -> Iterator[int]:
    """A local port whose connections are relayed to target_port (an `ssh -L` stand-in)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(2)
        listener.close()


class Page:
    """One tab: navigate, evaluate, screenshot; every request's URL is kept."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.requests: list[str] = []
        self.failed: list[str] = []
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif data.get("method") == "Network.requestWillBeSent":
                self.requests.append(data["params"]["request"]["url"])
            elif data.get("method") == "Network.webSocketCreated":
                self.requests.append(data["params"]["url"])
            elif data.get("method") == "Network.loadingFailed":
                self.failed.append(data["params"].get("errorText", "?"))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        out = await asyncio.wait_for(fut, 30)
        if "error" in out:
            raise RuntimeError(f"{method}: {out['error']}")
        return dict(out.get("result", {}))

    async def eval(self, expr: str) -> Any:
        out = await self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        return out.get("result", {}).get("value")

    async def until(self, expr: str, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            value = await self.eval(expr)
            if value:
                return value
            if loop.time() > end:
                raise AssertionError(f"timed out waiting in the browser for: {expr}")
            await asyncio.sleep(0.2)

    async def key(self, char: str) -> None:
        """Type one printable character into the focused terminal."""
        await self.eval("document.querySelector('.xterm-helper-textarea').focus()")
        code = ord(char.upper())
        await self.call(
            "Input.dispatchKeyEvent",
            type="keyDown",
            key=char,
            text=char,
            windowsVirtualKeyCode=code,
            code=f"Digit{char}" if char.isdigit() else f"Key{char.upper()}",
        )
        await self.call("Input.dispatchKeyEvent", type="keyUp", key=char, windowsVirtualKeyCode=code)

    async def screenshot(self) -> bytes:
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])


@contextlib.asynccontextmanager
async def browser(width: int = 1400, height: int = 900) -> Any:
    """Headless Chromium that can reach nothing but 127.0.0.1, and one tab in it."""
    exe = chromium()
    assert exe is not None
    profile = tempfile.mkdtemp(prefix="lqchrome")
    proc = subprocess.Popen(
        [
            exe,
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            # Any name but 127.0.0.1 fails to resolve: a page that calls out shows up as a failed request.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "chromium did not start its DevTools endpoint"
        req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
        target = json.loads(urllib.request.urlopen(req, timeout=10).read())
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws,
        ):
            page = Page(ws)
            await page.call("Network.enable")
            await page.call("Page.enable")
            yield page
            page.reader.cancel()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
