"""UI tests run in UTC so the clock texts in the snapshots are the same everywhere."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

os.environ["TZ"] = "UTC"
time.tzset()


def svg_rows(svg: str) -> list[str]:
    """The text of a Textual SVG screenshot, row by row (what a human would read off it)."""
    import html
    import re

    rows: dict[float, list[tuple[float, str]]] = {}
    for m in re.finditer(r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg):
        rows.setdefault(float(m.group(2)), []).append((float(m.group(1)), html.unescape(m.group(3))))
    return ["".join(t for _, t in sorted(r)).replace("\xa0", " ").rstrip() for _, r in sorted(rows.items())]


@pytest.fixture
def snap(snap_compare: Any, request: pytest.FixtureRequest) -> Any:
    """snap_compare that, on a mismatch, says in the test's own output which rows differ.

    CI keeps no HTML report, so a mismatch seen only there must explain itself in the log.
    """
    import difflib
    import pickle

    from pytest_textual_snapshot import node_to_report_path

    def compare(*args: Any, **kw: Any) -> bool:
        if snap_compare(*args, **kw):
            return True
        data = pickle.loads(node_to_report_path(request.node).read_bytes())
        expected, actual = svg_rows(str(data[1] or "")), svg_rows(str(data[2] or ""))
        diff = difflib.unified_diff(expected, actual, "snapshot", "now", lineterm="", n=1)
        print("\n".join(diff) or "(same text; colours or layout differ)")
        return False

    return compare
