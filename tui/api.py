"""What the UI needs from the daemon, and its one real implementation.

The UI never touches Ray, NVML or SQLite: everything goes through `Backend`, which
`ClientBackend` implements with the stdlib client (the same one `labq` uses).
Tests swap in a fake backend with fixed data for the snapshot tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from scheduler import cli_code
from scheduler.client import Client, ClientError, NoDaemon
from scheduler.console import UsageError

__all__ = ["Backend", "BackendError", "ClientBackend"]


class BackendError(Exception):
    """Anything the daemon refused or could not answer; the text is for the user."""

    def __init__(self, message: str, status: int = 0, down: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.down = down  # no daemon at all (as opposed to a refusal)


class Backend(Protocol):
    def health(self) -> dict[str, Any]: ...
    def jobs(self, tasks: bool = False) -> list[dict[str, Any]]: ...
    def job(self, job_id: int) -> dict[str, Any]: ...
    def log(
        self,
        job_id: int,
        offset: int = 0,
        tail: int | None = None,
        before: int | None = None,
        stderr: bool = False,
        rank: int = 0,
    ) -> dict[str, Any]: ...
    def nodes(self, history: bool = False) -> dict[str, Any]: ...
    def quotas(self) -> dict[str, Any]: ...
    def set_quota(self, user: str, fields: dict[str, Any]) -> dict[str, Any]: ...
    def audit(self) -> list[dict[str, Any]]: ...
    def usage(self, since: str = "7d") -> dict[str, Any]: ...
    def submit(self, spec: dict[str, Any], freeze: bool = False) -> int: ...
    def preview(self, spec: dict[str, Any]) -> dict[str, Any]: ...
    def cancel(self, job_id: int) -> dict[str, Any]: ...


# How many finished jobs the queue screen shows beside every active one.
RECENT_FINISHED = 300


class ClientBackend:
    def __init__(self, socket: Path | None = None, timeout: float = 10.0) -> None:
        self.socket = socket
        self.timeout = timeout

    def _call(self, name: str, *args: Any, **kw: Any) -> Any:
        # A client per call: the UI calls from worker threads, and a socket is cheap.
        c = Client(self.socket, timeout=self.timeout)
        try:
            return getattr(c, name)(*args, **kw)
        except NoDaemon as e:
            raise BackendError(str(e), down=True) from None
        except ClientError as e:
            raise BackendError(str(e), e.status) from None
        except OSError as e:
            raise BackendError(f"the daemon did not answer: {e}", down=True) from None
        finally:
            c.close()

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = self._call("health")
        return out

    def jobs(self, tasks: bool = False) -> list[dict[str, Any]]:
        """Active jobs and the recent finished ones; an array is one row unless `tasks`."""
        active: list[dict[str, Any]] = self._call("jobs", tasks=tasks)
        recent: list[dict[str, Any]] = self._call("jobs", include_finished=True, limit=RECENT_FINISHED, tasks=tasks)
        seen = {j["id"] for j in active}
        return sorted([*active, *(j for j in recent if j["id"] not in seen)], key=lambda j: j["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._call("job", job_id)
        return out

    def log(
        self,
        job_id: int,
        offset: int = 0,
        tail: int | None = None,
        before: int | None = None,
        stderr: bool = False,
        rank: int = 0,
    ) -> dict[str, Any]:
        out: dict[str, Any] = self._call("log", job_id, offset, tail=tail, before=before, stderr=stderr, rank=rank)
        return out

    def nodes(self, history: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = self._call("nodes", history)
        return out

    def quotas(self) -> dict[str, Any]:
        out: dict[str, Any] = self._call("quotas")
        return out

    def set_quota(self, user: str, fields: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._call("set_quota", user, fields)
        return out

    def audit(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._call("audit", 200)
        return out

    def usage(self, since: str = "7d") -> dict[str, Any]:
        out: dict[str, Any] = self._call("usage", since, "user")
        return out

    def submit(self, spec: dict[str, Any], freeze: bool = False) -> int:
        """Queue a job; `freeze`: first freeze its workdir's code, as `labq submit` does."""
        if not freeze:
            return int(self._call("submit", spec))
        c = Client(self.socket, timeout=self.timeout)
        try:
            cli_code.freeze(c, spec)
            return c.submit(spec)
        except UsageError as e:
            raise BackendError(str(e), 400) from None
        except NoDaemon as e:
            raise BackendError(str(e), down=True) from None
        except ClientError as e:
            raise BackendError(str(e), e.status) from None
        finally:
            c.close()

    def preview(self, spec: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._call("preview", spec)
        return out

    def cancel(self, job_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._call("cancel", job_id)
        return out
