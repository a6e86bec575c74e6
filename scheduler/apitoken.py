"""API tokens for remote clients: what one looks like and how it is checked.

A token is `labq_<id>_<secret>`. The id finds the row; only a SHA-256 of the secret
is stored. The secret is 256 random bits, so a plain hash is enough: a slow
password hash defends low-entropy secrets against guessing, and these have none
to guess. The comparison is constant-time so a timing probe learns nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "labq_"
_FORMAT = re.compile(r"^labq_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewToken:
    id: str
    secret: str

    @property
    def text(self) -> str:
        """The whole token, shown to the admin once and never stored."""
        return f"{PREFIX}{self.id}_{self.secret}"

    @property
    def hash(self) -> str:
        return digest(self.secret)


def generate() -> NewToken:
    return NewToken(secrets.token_hex(6), secrets.token_urlsafe(32))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    m = _FORMAT.match(text.strip())
    return (m.group(1), m.group(2)) if m else None


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_hash)
