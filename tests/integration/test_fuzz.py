"""Fuzzing what users type: the API (through a real daemon, on the socket and the TCP
listener), the job-spec validation the API runs, and the job-file parser.

Every refusal must be one clear line with a 4xx status; the daemon must never crash
or answer 500, and must still be healthy afterwards. About 19,000 cases per run (the
write-route test sends each body to five routes); LABQ_FUZZ_SCALE=N multiplies them.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scheduler.cli import UsageError, load_job_file
from scheduler.client import Client, ClientError, Remote
from scheduler.job import JobSpec, first_error
from tests.conftest import Labq, cleanup, free_port, make_labq

SCALE = float(os.environ.get("LABQ_FUZZ_SCALE", "1"))


def n(examples: int) -> int:
    return max(1, int(examples * SCALE))


@pytest.fixture(scope="module")
def labq4() -> Iterator[Labq]:
    """4 logical GPUs and a (loopback, plain HTTP) TCP listener for remote clients."""
    lq = make_labq(f"grace_period_s: 3\nmin_runtime_s: 0\nlisten: 127.0.0.1:{free_port()}\n")
    lq.up("--gpus", "4")
    yield lq
    cleanup(lq)


SPEC_KEYS = ["command", "gpus", "cpus", "memory", "time", "workdir", "env", "name", "priority", "grace"]
weird_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300
) | st.sampled_from(["", " ", "\x00", "../../etc/passwd", "-1", "1e309", "NaN", "4h", "16G", "x" * 70000])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | weird_text
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(weird_text, inner, max_size=5),
    max_leaves=20,
)
specs = st.dictionaries(st.sampled_from(SPEC_KEYS) | weird_text, values, max_size=8)


def check_refusal(e: ClientError) -> None:
    msg = str(e)
    assert 400 <= e.status < 500, (e.status, msg)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg


@settings(max_examples=n(1500), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


@settings(max_examples=n(1000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


@settings(max_examples=n(5000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=2000))
def test_garbage_on_the_socket_never_kills_the_daemon(labq4: Labq, raw: bytes) -> None:
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


@settings(max_examples=n(3000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


@settings(max_examples=n(1500), deadline=None)
@given(spec=specs)
def test_job_spec_validation_fuzz(spec: dict[str, Any]) -> None:
    """The validation every submission goes through, alone and fast, many times over."""
    try:
        JobSpec.model_validate(spec)
    except ValidationError as e:
        field, msg = first_error(e)
        text = f"{field}: {msg}" if field else msg
        assert text and "\n" not in text and "Traceback" not in text, text


def test_the_daemon_is_healthy_after_the_fuzzing(labq4: Labq) -> None:
    h = Client(labq4.socket).health()
    assert h["ray"]["connected"]
    assert not [j for j in labq4.json("queue", "--all") if j["state"] == "LOST"]


yaml_docs = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(SPEC_KEYS) | weird_text, inner, max_size=6)
    ),
    max_leaves=15,
)


@settings(max_examples=n(3000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(weird_text, yaml_docs.map(lambda d: json.dumps(d, allow_nan=True))))
def test_job_file_parser_fuzz(tmp_path: Path, text: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        data, lines = load_job_file(path)
        assert isinstance(data, dict) and isinstance(lines, dict)
    except UsageError as e:
        assert str(e) and "\n" not in str(e).strip(), str(e)
