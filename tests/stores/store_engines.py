"""The engines the store contract suite runs against, and how a test edits each by hand.

Each engine is an :class:`Engine`: it opens stores on one fresh location
(several store objects on the same location, as several processes would
have) and edits the stored records behind the store's back, the way someone
with access to the database would. To run the suite on another engine, add
an Engine subclass and its factory to ``ENGINES`` in conftest.py.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from aegis.core.record import RECORD_FIELDS
from aegis.stores import open_store
from aegis.stores.base import AuditStore
from aegis.stores.memory import MemoryStore


class Engine:
    """One engine on one fresh location."""

    name = ""
    #: whether records outlive the process (crash tests need it)
    persistent = False
    #: whether two store objects on the location share one chain
    shared = True

    def open(self, **options: Any) -> AuditStore:
        """A new store object on this location."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """The location, as open_store takes it."""
        raise NotImplementedError

    def update(self, record_id: int, **fields: Any) -> None:
        """Overwrite fields of a stored record, hash untouched."""
        raise NotImplementedError

    def delete(self, record_id: int) -> None:
        """Remove a stored record."""
        raise NotImplementedError

    def renumber(self, old: int, new: int) -> None:
        """Give a stored record another id."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Release what the location holds."""


class MemoryEngine(Engine):
    """The in-memory store: one object is the location."""

    name = "memory"

    def __init__(self) -> None:
        self.store = MemoryStore()

    def open(self, **options: Any) -> AuditStore:
        return self.store

    @property
    def url(self) -> str:
        return "memory://"

    def update(self, record_id: int, **fields: Any) -> None:
        self.store.tamper(record_id, **fields)

    def delete(self, record_id: int) -> None:
        self.store.delete(record_id)

    def renumber(self, old: int, new: int) -> None:
        self.store.tamper(old, id=new)


class SQLiteEngine(Engine):
    """A SQLite file; edits go through sqlite3 like a hand edit."""

    name = "sqlite"
    persistent = True

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "store.db"

    def open(self, **options: Any) -> AuditStore:
        return open_store(str(self.path), **options)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def _sql(self, statement: str, args: tuple[Any, ...] = ()) -> None:
        with closing(sqlite3.connect(self.path)) as conn, conn:
            conn.execute(statement, args)

    def update(self, record_id: int, **fields: Any) -> None:
        for name in fields:
            assert name in RECORD_FIELDS, name
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._sql(f"UPDATE audit_log SET {assignments} WHERE id = ?", (*fields.values(), record_id))

    def delete(self, record_id: int) -> None:
        self._sql("DELETE FROM audit_log WHERE id = ?", (record_id,))

    def renumber(self, old: int, new: int) -> None:
        self._sql("UPDATE audit_log SET id = ? WHERE id = ?", (new, old))


class PostgresEngine(Engine):
    """A fresh schema of the test server; edits go through psycopg like a hand edit."""

    name = "postgres"
    persistent = True

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.opened: list[AuditStore] = []

    def open(self, **options: Any) -> AuditStore:
        store = open_store(self.dsn, **options)
        self.opened.append(store)  # closed by cleanup: tests may drop a store unclosed
        return store

    @property
    def url(self) -> str:
        return self.dsn

    def _sql(self, statement: str, args: tuple[Any, ...] = ()) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(statement, args)

    def update(self, record_id: int, **fields: Any) -> None:
        for name in fields:
            assert name in RECORD_FIELDS, name
        assignments = ", ".join(f"{name} = %s" for name in fields)
        self._sql(
            f"UPDATE aegis_audit_log SET {assignments} WHERE id = %s",
            (*fields.values(), record_id),
        )

    def delete(self, record_id: int) -> None:
        self._sql("DELETE FROM aegis_audit_log WHERE id = %s", (record_id,))

    def renumber(self, old: int, new: int) -> None:
        self._sql("UPDATE aegis_audit_log SET id = %s WHERE id = %s", (new, old))

    def cleanup(self) -> None:
        for store in self.opened:
            store.close()
