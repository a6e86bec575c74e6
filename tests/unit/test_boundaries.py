"""Architecture rules, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_scheduler_never_imports_the_ui() -> None:
    for path in (REPO / "scheduler").rglob("*.py"):
        assert not any(m == "tui" or m.startswith("tui.") for m in imports(path)), path


def test_ui_talks_only_to_the_client_api() -> None:
    allowed = {"scheduler.client", "scheduler.config", "scheduler.units", "scheduler.present"}
    for path in (REPO / "tui").rglob("*.py"):
        for m in imports(path):
            assert m not in ("ray", "pynvml") and not m.startswith("ray."), (path, m)
            if m.startswith("scheduler"):
                assert m in allowed, (path, m)


def test_policy_is_pure() -> None:
    for name in ("policy.py", "quota.py"):
        mods = imports(REPO / "scheduler" / name)
        for banned in ("ray", "sqlite3", "time", "datetime", "random", "os", "subprocess"):
            assert not any(m == banned or m.startswith(banned + ".") for m in mods), (name, banned)


def test_client_modules_are_stdlib_only() -> None:
    heavy = ("ray", "textual", "pydantic", "psutil", "pynvml", "yaml")
    for name in ("cli.py", "client.py", "config.py", "units.py", "present.py"):
        tree = ast.parse((REPO / "scheduler" / name).read_text())
        # Only module-level imports count: the daemon path imports heavy things lazily.
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for m in mods:
                    assert not m.startswith(heavy), (name, m)
                    if m.startswith("scheduler."):
                        assert m in CLIENT_SIDE, (name, m)


CLIENT_SIDE = ("scheduler.client", "scheduler.config", "scheduler.units", "scheduler.present")
