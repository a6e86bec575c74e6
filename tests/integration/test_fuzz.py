"""Fuzzing what users type: the API (through a real daemon, on the socket and the TCP
listener), the job-spec validation the API runs, and the job-file parser.

Every refusal must be one clear line with a 4xx status; the daemon must never crash
or answer 500, and must still be healthy afterwards. About 6,000 requests per run here
(the write-route test sends each body to five routes): half of what it once sent, to
keep the whole suite near its time budget; hypothesis draws new cases each run, and
LABQ_FUZZ_SCALE=N multiplies them (N=2 is the old depth) for a longer session.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.client import Client, ClientError, Remote
from tests.conftest import Labq
from tests.strategies import n, specs, values, weird_text

pytestmark = pytest.mark.integration



def check_refusal(e: ClientError) -> None:
    msg = str(e)
    assert 400 <= e.status < 500, (e.status, msg)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg


@settings(max_examples=n(400), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs)
def test_api_preview_fuzz(labq4: Labq, spec: dict[str, Any]) -> None:
    c = Client(labq4.socket, timeout=30)
    try:
        out = c.preview(spec)
        assert isinstance(out["starts_now"], bool)
    except ClientError as e:
        check_refusal(e)
    finally:
        c.close()


@settings(max_examples=n(500), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=values)
def test_api_any_body_on_every_write_route(labq4: Labq, body: Any) -> None:
    c = Client(labq4.socket, timeout=30)
    try:
        for method, path in [
            ("POST", "/v1/jobs"),
            ("POST", "/v1/jobs/preview"),
            ("PUT", "/v1/quotas/fuzz-user"),
            ("POST", "/v1/jobs/999999/cancel"),
            ("POST", "/v1/nodes/no-such-node/drain"),
        ]:
            try:
                c.request(method, path, body)
            except ClientError as e:
                check_refusal(e)
    finally:
        c.close()
    # A body that happened to be a valid job or quota is fine; the daemon must be up.
    assert Client(labq4.socket).health()["pid"]


def test_garbage_on_the_socket_never_kills_the_daemon(labq4: Labq) -> None:
    @settings(max_examples=n(2500), deadline=None)
    @given(raw=st.binary(max_size=2000))
    def send(raw: bytes) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        try:
            s.connect(str(labq4.socket))
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            reply = s.recv(200)
            if reply:
                assert reply.startswith(b"HTTP/1.") and b" 500 " not in reply[:20]
        except OSError:
            pass
        finally:
            s.close()

    send()
    # ...and after all of it, the daemon answers, and its scheduler still runs.
    h = Client(labq4.socket).health()
    assert h["ray"]["connected"] and h["last_pass"] > 0


@settings(max_examples=n(750), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    auth=st.none() | weird_text.filter(lambda t: "\r" not in t and "\n" not in t and "\x00" not in t),
    path=st.sampled_from(["/v1/health", "/v1/jobs", "/v1/tokens", "/v1/quotas/x", "/v1/jobs/1/cancel"]),
    body=values,
)
def test_the_network_listener_refuses_every_bad_token(
    labq4: Labq, auth: str | None, path: str, body: Any
) -> None:
    url = Client(labq4.socket).health()["listen"]
    token = None if auth is None else auth.encode("latin-1", "replace").decode("latin-1")
    c = Client(remote=Remote(url, token=token or "", ca=None), timeout=30)
    try:
        c.request("POST" if body is not None else "GET", path, body)
        raise AssertionError("a bad token got in")
    except ClientError as e:
        check_refusal(e)
        assert e.status in (400, 401, 413, 431), (e.status, str(e)[:200])
    finally:
        c.close()


def test_the_daemon_is_healthy_after_the_fuzzing(labq4: Labq) -> None:
    h = Client(labq4.socket).health()
    assert h["ray"]["connected"]
    assert not [j for j in labq4.json("queue", "--all") if j["state"] == "LOST"]
