"""Writing to the user's terminal: the CLI's one way out. Standard library only.

Exit codes: 0 ok, 1 refused or failed (one line on stderr, never a traceback), 2 bad
usage, 3 no daemon running.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from scheduler.present import clean


class UsageError(Exception):
    """The command line asks for something that cannot be done; said in one line."""


def say(*parts: object, file: Any = None, end: str = "\n", flush: bool = False) -> None:
    """print() of one line, except that what other users chose (job names, commands,
    reasons, notes) is shown with its control characters escaped, never obeyed by the
    terminal; a newline inside a part is shown as \\n too, so nobody can forge a line
    of someone else's output (a fake row in an admin's `labq queue`)."""
    print(*(clean(p) for p in parts), file=file or sys.stdout, end=end, flush=flush)


def die(msg: str, code: int = 1) -> NoReturn:
    say(f"labq: {msg}", file=sys.stderr)
    raise SystemExit(code)


def emit_json(obj: Any) -> None:
    # ensure_ascii (the default) writes every control character as an escape.
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
