"""What the store's mixins (store_accounts, store_deps, store_arrays) use of `Store`:
its transaction and its reader connection. Declared once here; `Store` provides both."""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager


class Tables:
    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # Store._tx

    def _reader(self) -> sqlite3.Connection:
        raise NotImplementedError  # Store._reader
