"""The engines the store contract suite runs against, and how a test edits each by hand.

Each engine is an :class:`Engine`: it opens stores on one fresh location
(several store objects on the same location, as several processes would
have) and edits the stored records behind the store's back, the way someone
with access to the database would. To run the suite on another engine, add
an Engine subclass and its factory to ``ENGINES`` in conftest.py.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from aegis.core.record import RECORD_FIELDS, AuditRecord, RecordDraft
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
    #: whether :meth:`watch_flushes` can tell which commits waited for the disk (memory
    #: has no disk)
    observes_flushes = False

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

    @contextmanager
    def watch_flushes(self, store: AuditStore) -> Iterator[list[bool]]:
        """Yield a list of, per commit ``store`` makes meanwhile, whether it waited for the disk."""
        raise NotImplementedError
        yield []


class MemoryEngine(Engine):
    """The in-memory store: one object is the location."""

    name = "memory"

    def __init__(self) -> None:
        self.store = MemoryStore()

    def open(self, **options: Any) -> AuditStore:
        # memory has no location but the object: options make a store of their own
        return MemoryStore(**options) if options else self.store

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

    observes_flushes = True

    @contextmanager
    def watch_flushes(self, store: AuditStore) -> Iterator[list[bool]]:
        """Per commit on the store's connection, whether ``synchronous`` was FULL then.

        In WAL mode a commit syncs the WAL to disk exactly when the
        connection's ``synchronous`` is FULL at that moment; SQLite's trace
        of the statements it runs shows every change of the setting and
        every commit (a COMMIT, or a write outside a transaction).
        """
        commits: list[bool] = []
        with store.db.connection("watch") as conn:  # type: ignore[attr-defined]  # SQLite's
            state = {"full": conn.execute("PRAGMA synchronous").fetchone()[0] == 2, "tx": False}

            def trace(statement: str) -> None:
                text = " ".join(statement.split()).upper()
                if text.startswith("PRAGMA SYNCHRONOUS="):
                    state["full"] = text.endswith(("FULL", "2", "EXTRA", "3"))
                elif text.startswith("BEGIN"):
                    state["tx"] = True
                elif text.startswith(("COMMIT", "END")):
                    state["tx"] = False
                    commits.append(state["full"])
                elif text.startswith("ROLLBACK"):
                    state["tx"] = False
                elif text.startswith(("INSERT", "UPDATE", "DELETE")) and not state["tx"]:
                    commits.append(state["full"])

            conn.set_trace_callback(trace)
        try:
            yield commits
        finally:
            with store.db.connection("watch") as conn:  # type: ignore[attr-defined]
                conn.set_trace_callback(None)


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

    observes_flushes = True

    @contextmanager
    def watch_flushes(self, store: AuditStore) -> Iterator[list[bool]]:
        """Per append of ``store`` meanwhile, whether its commit was on disk when it returned.

        When an append returns, the server's flushed end of the WAL is read
        on another connection; afterwards the WAL itself (pg_walinspect)
        says where the commit record of the append's transaction (the
        ``xmin`` of its records) ends. The commit waited for the disk, or
        rode on a flush that did, exactly when it ends at or before that
        point. Only meaningful on a server nobody else writes to (the
        ``quiet_postgres`` cluster), whose WAL writer flushes seldom.
        """
        import psycopg

        watch = psycopg.connect(self.dsn, autocommit=True)
        since = watch.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert since is not None
        returned: list[tuple[int, object]] = []
        lock = threading.Lock()
        append = store.append

        def watched(drafts: Sequence[RecordDraft]) -> list[AuditRecord]:
            records = append(drafts)
            with lock:
                row = watch.execute("SELECT pg_current_wal_flush_lsn()").fetchone()
            assert row is not None
            if records:
                returned.append((records[-1].id, row[0]))
            return records

        store.append = watched  # type: ignore[method-assign]  # the store's own, watched
        # a start record carrying its flow event is appended by append_guarded
        append_guarded = store.append_guarded  # type: ignore[attr-defined]  # PostgreSQL's

        def watched_guarded(draft: RecordDraft, guard: Any) -> AuditRecord:
            record: AuditRecord = append_guarded(draft, guard)
            with lock:
                row = watch.execute("SELECT pg_current_wal_flush_lsn()").fetchone()
            assert row is not None
            returned.append((record.id, row[0]))
            return record

        store.append_guarded = watched_guarded  # type: ignore[attr-defined]
        commits: list[bool] = []
        try:
            yield commits
        finally:
            del store.append  # type: ignore[method-assign]
            del store.append_guarded  # type: ignore[attr-defined]
            # a durable commit of our own: the WAL up to here can be read
            watch.execute("SELECT pg_logical_emit_message(true, 'aegis-watch', '')")
            for record_id, flushed in returned:
                row = watch.execute(
                    "SELECT c.end_lsn <= %s FROM aegis_audit_log AS l, "
                    "public.pg_get_wal_records_info(%s, pg_current_wal_flush_lsn()) AS c "
                    "WHERE l.id = %s AND c.resource_manager = 'Transaction' "
                    "AND c.record_type = 'COMMIT' AND c.xid = l.xmin::text::xid",
                    (flushed, since[0], record_id),
                ).fetchone()
                assert row is not None, f"no commit record found for record {record_id}"
                commits.append(bool(row[0]))
            watch.close()


#: engine name -> its class, for fixtures that need to know an engine's abilities up front
ENGINE_CLASSES: dict[str, type[Engine]] = {
    "memory": MemoryEngine,
    "sqlite": SQLiteEngine,
    "postgres": PostgresEngine,
}
