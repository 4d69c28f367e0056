"""Approval requests, decisions, tokens and grants in the SQLite file of the audit trail.

One connection per thread (the service calls the store from a thread pool),
WAL mode, and ``BEGIN IMMEDIATE`` for every transaction that writes, so that
writers queue in SQLite (up to ``busy_timeout``) instead of failing half way.
Exclusivity comes from SQLite's write lock and the conditional updates of
:mod:`aegis.stores._approvals_sql`, never from a Python lock: several
processes may share the file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from aegis.errors import StoreError
from aegis.stores._approvals_sql import (
    COMPONENT,
    EVENTS_SCHEMA,
    IDENTITY_SCHEMA,
    SCHEMA_VERSION,
    TERMS_SCHEMA,
    Conflict,
    SqlApprovalStore,
    statements,
)
from aegis.stores.sqlite.connection import create_owner_only
from aegis.stores.sqlite.schema import migrate

__all__ = ["SqliteApprovalStore"]

#: the approval tables' migrations, from version N to N + 1
_MIGRATIONS: Final = {
    0: tuple(statements("")),
    1: tuple(statements("", EVENTS_SCHEMA)),
    2: tuple(statements("", TERMS_SCHEMA)),
    3: tuple(statements("", IDENTITY_SCHEMA)),
}

_HINTS: Final = (
    ("locked", "another process held the database longer than the busy timeout; retry"),
    ("busy", "another process held the database longer than the busy timeout; retry"),
    ("readonly", "the file or its folder is read-only; check the permissions"),
    ("unable to open", "check that the folder exists and is writable"),
    ("disk i/o", "check free disk space and the file system"),
    ("full", "the disk is full; free some space"),
    ("not a database", "the file is not an Aegis database"),
    ("no such", "the approval tables are missing or damaged"),
)


class _SqliteTx:
    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql.replace("{p}", ""), tuple(args)).fetchall()

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        try:
            return self._conn.execute(sql.replace("{p}", ""), tuple(args)).rowcount
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc


class SqliteApprovalStore(SqlApprovalStore):
    """The approval tables in a SQLite file (the audit trail's file, usually).

    Args:
        path: the database file; created when missing.
        busy_timeout: seconds to wait for another writer before failing
            with :class:`~aegis.errors.StoreError`.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        self.path = str(path)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()  # guards the list of connections, not the data
        self._closed = False
        try:
            # The store's schema helper marks a new file as Aegis's, so the
            # audit trail and the approvals may create their tables in any order.
            migrate(self._connection(), self.path, COMPONENT, SCHEMA_VERSION, _MIGRATIONS)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def __repr__(self) -> str:
        return f"<SqliteApprovalStore {self.path!r}>"

    def _error(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        hint = next((h for key, h in _HINTS if key in text.lower()), "check the database file")
        return StoreError(f"approval store {self.path!r}: {text}; {hint}")

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the approval store {self.path!r} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            create_owner_only(self.path)
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # transactions are explicit
                check_same_thread=False,  # closed from another thread at the end
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error:
                conn.close()
                raise
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[_SqliteTx]:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            yield _SqliteTx(conn)
        except sqlite3.Error as exc:
            _rollback(conn)
            raise self._error(exc) from exc
        except BaseException:
            _rollback(conn)
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise self._error(exc) from exc

    def close(self) -> None:
        """Close every connection; calling it again does nothing."""
        self._closed = True
        with self._all_lock:
            connections, self._all = self._all, []
        for conn in connections:
            conn.close()


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite may have rolled back by itself (a full disk, an I/O error).
    if conn.in_transaction:
        # The original error says more; a failed rollback would only hide it.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
