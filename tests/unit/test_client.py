"""The stdlib client on its own: reading answers, and what it prints for others' text."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from scheduler.client import _Connection
from scheduler.present import clean, clean_log


def serve_slowly(path: Path, body: bytes, chunk: int) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        data = head + body
        view = memoryview(data)
        for i in range(0, len(data), chunk):
            conn.sendall(view[i : i + chunk])
        conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_large_answer_in_small_pieces_is_read_in_linear_time(tmp_path: Path) -> None:
    # Before: `buf += data` on bytes copied the whole buffer for every piece, so 25 jobs
    # with 4 MB specs made one `labq queue` take 83 s.
    body = b'{"x": "' + b"a" * (64 << 20) + b'"}'
    t = serve_slowly(tmp_path / "s.sock", body, 1024)
    conn = _Connection(str(tmp_path / "s.sock"), timeout=30)
    t0 = time.monotonic()
    status, payload = conn.roundtrip("GET", "/v1/jobs", None)
    took = time.monotonic() - t0
    conn.close()
    t.join()
    assert status == 200 and payload == body
    assert took < 5, took


def test_clean_shows_controls_instead_of_sending_them() -> None:
    assert clean("train.py") == "train.py"
    assert clean("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert clean("x\x9b2J") == "x\\x9b2J"
    assert clean("evil\u202etxt") == "evil\\u202etxt"
    assert clean("ünïcødé 日本") == "ünïcødé 日本"
    assert clean("two\nlines", keep="\n") == "two\nlines"
    assert clean_log("ok\t1\n\x1b]0;title\x07") == "ok\t1\n\\x1b]0;title\\x07"
