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
    allowed = {
        "scheduler.client",
        "scheduler.config",
        "scheduler.paths",
        "scheduler.units",
        "scheduler.present",
        "scheduler.shapes",
        "scheduler.jobfile",
        "scheduler.safefs",
        "scheduler.userconfig",
        "scheduler.console",
        "scheduler.cli_code",
        "scheduler.gputypes",
        "scheduler",
    }
    for path in (REPO / "tui").rglob("*.py"):
        for m in imports(path):
            assert m not in ("ray", "pynvml") and not m.startswith("ray."), (path, m)
            if m.startswith("scheduler"):
                assert m in allowed, (path, m)


def test_policy_is_pure() -> None:
    for name in (
        "policy.py", "policy_types.py", "policy_pass.py", "policy_reclaim.py", "policy_state.py",
        "policy_reasons.py", "quota.py",
    ):
        mods = imports(REPO / "scheduler" / name)
        for banned in ("ray", "sqlite3", "time", "datetime", "random", "os", "subprocess"):
            assert not any(m == banned or m.startswith(banned + ".") for m in mods), (name, banned)


def test_client_modules_are_stdlib_only() -> None:
    heavy = ("ray", "textual", "pydantic", "psutil", "pynvml", "yaml")
    for name in (
        "cli.py", "cliparse.py", "client.py", "config.py", "paths.py", "units.py", "present.py", "console.py",
        "jobfile.py", "shapes.py", "cli_code.py", "snapshot.py", "userconfig.py", "cli_spec.py", "cli_session.py",
        "cli_logs.py", "gputypes.py",
    ):
        tree = ast.parse((REPO / "scheduler" / name).read_text())
        # Only module-level imports count: the daemon path imports heavy things lazily.
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for m in mods:
                    assert not m.startswith(heavy), (name, m)
                    if m.startswith("scheduler."):
                        assert m in CLIENT_SIDE, (name, m)


CLIENT_SIDE = (
    "scheduler.client",
    "scheduler.config",
    "scheduler.units",
    "scheduler.present",
    "scheduler.console",
    "scheduler.jobfile",
    "scheduler.shapes",
    "scheduler.paths",
    "scheduler.cliparse",
    "scheduler.cli_code",
    "scheduler.cli_spec",
    "scheduler.cli_session",
    "scheduler.cli_logs",
    "scheduler.gputypes",
    "scheduler.snapshot",
    "scheduler.userconfig",
)


def test_the_client_copy_other_users_run_is_complete() -> None:
    """tests/conftest.py runs the CLI as other users from a copy of the client modules:
    the copy must hold every module the CLI imports at the top."""
    from tests.conftest import CLIENT_MODULES

    for name in CLIENT_MODULES:
        if name == "__init__.py":
            continue
        tree = ast.parse((REPO / "scheduler" / name).read_text())
        for node in tree.body:  # module level: what `import` runs (the daemon's paths are lazy)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scheduler."):
                assert f"{(node.module or '').split('.')[1]}.py" in CLIENT_MODULES, (name, node.module)


def _scheduler_graph() -> dict[str, set[str]]:
    """scheduler module -> the scheduler modules it imports (anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for path in (REPO / "scheduler").glob("*.py"):
        name = f"scheduler.{path.stem}"
        deps = set()
        for m in imports(path):
            if m.startswith("scheduler.") and m != name:
                deps.add(m)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # `from scheduler import raycluster, safefs`
            if isinstance(node, ast.ImportFrom) and node.module == "scheduler":
                deps.update(f"scheduler.{a.name}" for a in node.names)
        graph[name] = deps
    return graph


def test_no_import_cycles_in_the_scheduler_package() -> None:
    graph = _scheduler_graph()
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycle = path[path.index(m) :] + [m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_api_and_metrics_never_import_the_daemon() -> None:
    graph = _scheduler_graph()
    for name in ("scheduler.api", "scheduler.metrics"):
        assert "scheduler.daemon" not in graph[name], name


def test_the_node_side_never_imports_the_daemon_or_the_store() -> None:
    graph = _scheduler_graph()

    def reach(n: str, seen: set[str]) -> set[str]:
        for m in graph.get(n, ()):
            if m not in seen:
                seen.add(m)
                reach(m, seen)
        return seen

    for name in ("scheduler.runner", "scheduler.executor", "scheduler.agent"):
        reached = reach(name, set())
        for banned in ("scheduler.daemon", "scheduler.store", "scheduler.api", "scheduler.control"):
            assert banned not in reached, (name, banned)


def test_the_shared_shapes_are_stdlib_only() -> None:
    for name in ("shapes.py", "present.py", "auth.py", "safefs.py", "console.py"):
        for m in imports(REPO / "scheduler" / name):
            assert m.split(".")[0] not in ("ray", "pydantic", "textual", "psutil", "yaml", "pynvml"), (name, m)
            assert not m.startswith("scheduler.") or m in ("scheduler.shapes", "scheduler.units", "scheduler.present"), (
                name,
                m,
            )


def test_benchmarks_and_scripts_do_not_import_the_tests() -> None:
    for folder in ("benchmarks", "scripts"):
        for path in (REPO / folder).rglob("*.py"):
            assert not any(m == "tests" or m.startswith("tests.") for m in imports(path)), path


def test_no_class_over_400_lines_and_no_module_over_800() -> None:
    for path in [*(REPO / "scheduler").glob("*.py"), *(REPO / "tui").glob("*.py")]:
        text = path.read_text()
        assert text.count("\n") <= 800, (path, text.count("\n"))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                assert size <= 400, (path, node.name, size)


def test_every_integration_file_is_marked() -> None:
    for path in (REPO / "tests" / "integration").glob("test_*.py"):
        text = path.read_text()
        assert "pytest.mark.integration" in text, path
