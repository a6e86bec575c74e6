"""The daemon's refusals: one line for the user and the HTTP status the API answers with."""

from __future__ import annotations


class DaemonError(Exception):
    """Refusal of a request; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class AlreadyRunning(DaemonError):
    pass
