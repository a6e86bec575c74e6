"""Turning the daemon's answers into text: shared by the CLI and the terminal UI.

Standard library only (the CLI imports it). Every string another user chose (a job
name, a command, an environment name, a log line, a token note) passes through
`clean()` before it reaches a terminal: a name like "\\x1b]0;...\\x07" or "\\x9b2J"
would otherwise drive the terminal of whoever lists the queue, an admin included.
"""

from __future__ import annotations

import unicodedata

_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def _bad(ch: str) -> bool:
    if ch.isprintable() or ch == " ":
        return False
    cat = unicodedata.category(ch)
    # Control characters and invisible format characters (bidi overrides, zero-width);
    # ordinary non-printables of other scripts (e.g. unassigned) are escaped as well.
    return cat in ("Cc", "Cf", "Zl", "Zp", "Cn", "Cs", "Co") or not ch.isprintable()


def clean(text: object, keep: str = "") -> str:
    """`text` with every control or invisible character shown as an escape (\\x1b)."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():
        return s
    return "".join(_escape(ch) if ch not in keep and _bad(ch) else ch for ch in s)


def clean_log(text: str) -> str:
    """A log for a terminal that is not its owner's: lines and tabs stay, escape
    sequences and other controls are shown, not obeyed."""
    return clean(text, keep="\n\t")
