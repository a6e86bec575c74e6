"""The user's own labq settings (`~/.config/labq/config.yaml`): today, where `--notify`
goes. Client side, stdlib-only (PyYAML when it is there)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from scheduler.console import UsageError, say


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "labq" / "config.yaml"


def _scalar(text: str) -> str:
    """A YAML scalar as the fallback reads it: quoted (up to its closing quote), or bare
    up to a ` #` comment."""
    text = text.strip()
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        return text[1:end] if end > 0 else text[1:]
    hash_at = text.find(" #")
    return (text[:hash_at] if hash_at >= 0 else text).strip()


def _load_user_config(text: str) -> Any:
    """YAML where PyYAML is installed; else (the stdlib-only client under a system
    python) the two forms the help shows: `notify: {webhook: URL}` on one line, or
    `notify:` then an indented `webhook: URL` / `command: CMD`."""
    try:
        import yaml
    except ImportError:
        out: dict[str, Any] = {}
        section: dict[str, Any] | None = None
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, _, value = line.strip().partition(":")
            value = value.strip()
            if not line[0].isspace():
                section = None
                if value.startswith("{") and "}" in value:
                    inner_key, _, inner = value[1 : value.rfind("}")].partition(":")
                    out[key] = {inner_key.strip(): _scalar(inner)}
                elif value:
                    out[key] = _scalar(value)
                else:
                    section = out.setdefault(key, {})
            elif section is not None:
                section[key.strip()] = _scalar(value)
        return out
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(str(e).splitlines()[0]) from None


def user_notify() -> dict[str, Any]:
    """`--notify`: where to, from the user's own config (a webhook URL is a secret: it
    lives in a file of theirs, not in their shell history)."""
    path = user_config_path()
    example = f"write it in {path}: `notify: {{webhook: https://hooks.slack.com/...}}` or `notify: {{command: ...}}`"
    try:
        data = _load_user_config(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--notify: where to? {example}") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"--notify: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    notify = data.get("notify") if isinstance(data, dict) else None
    if not isinstance(notify, dict) or len(notify) != 1 or next(iter(notify)) not in ("webhook", "command"):
        raise UsageError(f"--notify: {path} has no notify: {{webhook: ...}} or {{command: ...}}; {example}")
    if "webhook" in notify and path.stat().st_mode & 0o077:
        say(f"labq: warning: {path} holds a webhook URL and others may read it (chmod 600 it)", file=sys.stderr)
    return dict(notify)


def user_setting(key: str) -> Any:
    """One plain setting of the user's config (e.g. `snapshot: off`); None if unset or unreadable."""
    try:
        data = _load_user_config(user_config_path().read_text())
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None
