"""Who is calling, and what they may do.

On the Unix socket the kernel names the caller (SO_PEERCRED); the client never sends
a name. A uid the machine's user database does not know is refused outright: labq
runs jobs as named users, and a job of a user it cannot name must never fall back to
the daemon's own (root) identity. Over TCP the caller is whoever an admin issued the
bearer token to (`Tokens.authenticate`).
"""

from __future__ import annotations

import pwd
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass


class AuthError(Exception):
    """The caller cannot be let in; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Caller:
    uid: int
    user: str
    admin: bool
    # "socket" (the kernel vouched for the uid) or "token <id>" (a remote client).
    via: str = "socket"

    def may_see(self, owner: str) -> bool:
        """The owner's private parts of a job (command, env values, log)?"""
        return self.admin or self.user == owner


class Admins:
    """Admins are root, the daemon's own user and the config's `admins:` list."""

    def __init__(self, names: Iterable[str], daemon_uid: int, daemon_user: str) -> None:
        self.names = frozenset(names) | {"root", daemon_user}
        self.daemon_uid = daemon_uid

    def __call__(self, uid: int, user: str) -> bool:
        return user in self.names or uid == 0 or uid == self.daemon_uid

    def __str__(self) -> str:
        return ", ".join(sorted(self.names))


def user_name(uid: int) -> str:
    """The account name of `uid`; str(uid) when there is none (for display only)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def socket_caller(uid: int, admins: Admins) -> Caller:
    """The caller on the Unix socket, from the uid the kernel gave us."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        raise AuthError(
            f"uid {uid} has no entry in this machine's user database: labq runs jobs as named "
            "users and will not take requests from an account it cannot name"
        ) from None
    return Caller(uid, name, admins(uid, name))
