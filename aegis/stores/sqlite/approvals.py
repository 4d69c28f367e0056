"""Approval requests, decisions, tokens and grants in the SQLite file of the audit trail.

Beside an audit store (:func:`aegis.stores.open_stores`) this store shares
its :class:`~aegis.stores.sqlite.connection.SQLiteDatabase`: one connection
per process for the file, so the audit trail, the usage counters and the
approvals never wait on each other's locks inside one process. Every
transaction that writes is ``BEGIN IMMEDIATE``, so that writers of other
processes queue in SQLite (up to ``busy_timeout``) instead of failing half
way. Exclusivity comes from SQLite's write lock and the conditional updates
of :mod:`aegis.stores._approvals_sql`: several processes may share the file.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from aegis.stores._approvals_sql import (
    COMPONENT,
    EVENTS_SCHEMA,
    GRANT_CLOCK_SCHEMA,
    IDENTITY_SCHEMA,
    PEOPLE_SCHEMA,
    REQUEST_CLOCK_SCHEMA,
    SCHEMA_VERSION,
    SORT_SCHEMA,
    TERMS_SCHEMA,
    WHY_SCHEMA,
    Conflict,
    SqlApprovalStore,
    statements,
)
from aegis.stores.sqlite.connection import SQLiteDatabase
from aegis.stores.sqlite.schema import migrate

__all__ = ["SqliteApprovalStore"]

#: the approval tables' migrations, from version N to N + 1
_MIGRATIONS: Final = {
    0: tuple(statements("")),
    1: tuple(statements("", EVENTS_SCHEMA)),
    2: tuple(statements("", TERMS_SCHEMA)),
    3: tuple(statements("", IDENTITY_SCHEMA)),
    4: tuple(statements("", WHY_SCHEMA)),
    5: tuple(statements("", SORT_SCHEMA)),
    6: tuple(statements("", GRANT_CLOCK_SCHEMA)),
    7: tuple(statements("", REQUEST_CLOCK_SCHEMA)),
    8: tuple(statements("", PEOPLE_SCHEMA)),
}


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
        path: the audit store's :class:`~aegis.stores.sqlite.connection.SQLiteDatabase`
            to share (what :func:`aegis.stores.open_stores` gives), or a
            database file to open on its own; created when missing.
        busy_timeout: with a path, seconds to wait for another writer
            before failing with :class:`~aegis.errors.StoreError`.

    The tables are ready when the constructor returns.
    """

    def __init__(self, path: str | Path | SQLiteDatabase, *, busy_timeout: float = 10.0) -> None:
        if isinstance(path, SQLiteDatabase):
            self.db, self._owns_db = path, False
        else:
            self.db, self._owns_db = SQLiteDatabase(str(path), busy_timeout=busy_timeout), True
        self.path = self.db.path
        try:
            with self.db.connection("create the approval tables in") as conn:
                # The store's schema helper marks a new file as Aegis's, so the
                # audit trail and the approvals may create their tables in any order.
                migrate(conn, self.path, COMPONENT, SCHEMA_VERSION, _MIGRATIONS)
        except BaseException:
            if self._owns_db:
                self.db.close()
            raise

    def __repr__(self) -> str:
        return f"<SqliteApprovalStore {self.path!r}>"

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[_SqliteTx]:
        doing = "change the approval tables in" if write else "read the approval tables in"
        # The database's lock is held from BEGIN to COMMIT: the connection is
        # the process's one, and no other thread may slip a statement in.
        with self.db.connection(doing) as conn:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SqliteTx(conn)
            except BaseException:
                _rollback(conn)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                _rollback(conn)
                raise

    def close(self) -> None:
        """Close a database of its own; a shared one is the audit store's to close. Idempotent."""
        if self._owns_db:
            self.db.close()


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite may have rolled back by itself (a full disk, an I/O error).
    if conn.in_transaction:
        # The original error says more; a failed rollback would only hide it.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
