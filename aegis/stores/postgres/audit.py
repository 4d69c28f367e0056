"""The audit store in PostgreSQL: one hash chain shared by every writer.

Records live in ``aegis_audit_log`` in the store's schema, one column per
record field: ``id`` and ``start_id`` as ``BIGINT``, the rest as ``TEXT``
exactly as hashed, so the server never re-renders what the hash covers.

Appends are serialized per chain by a transaction-scoped advisory lock: a
writer takes the lock, reads the head, seals its records after it
(:func:`aegis.core.chain.seal`), inserts them and commits, which releases
the lock. N processes on M machines thus append one after another and
never fork the chain; a unique ``prev_hash`` makes a fork impossible even
for a writer that skipped the lock. The facade
(:class:`~aegis.runtime.audit.AuditLogger`) calls :meth:`append` from a
writer thread with every record that queued up meanwhile: concurrent
actions share one transaction, one round trip and one fsync.

A connection lost mid-append (a restarted server, a terminated backend) is
retried once on a new connection; the retry first checks, under the lock,
whether the lost transaction committed after all, so nothing is written
twice and nothing is lost. Verification streams the chain through a
server-side cursor in one snapshot and hands it to
:func:`aegis.core.chain.verify_chain`, the one verifier of every store.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any, Final

import psycopg
from psycopg import sql

from aegis.core.chain import EMPTY_HEAD, Head, VerifyReport, seal, verify_chain
from aegis.core.checkpoint import Checkpoint
from aegis.core.filters import NO_FILTERS, Filters
from aegis.core.record import RECORD_FIELDS, AuditRecord, RecordDraft
from aegis.errors import StoreError
from aegis.stores.base import (
    STARTED,
    STATS_FIELDS,
    Durability,
    ReadMixin,
    SignatureCheck,
    must_flush,
    resolve_durability,
)
from aegis.stores.postgres.connection import Connection, Database
from aegis.stores.postgres.schema import migrate, schema_lock_key

__all__ = ["AUDIT_TABLE", "CHECKPOINT_TABLE", "PostgresAuditStore"]

#: the table of the audit trail, in the store's schema
AUDIT_TABLE: Final = "aegis_audit_log"
#: the table of its signed checkpoints
CHECKPOINT_TABLE: Final = "aegis_audit_checkpoints"

#: the fields a record may leave empty; all others are NOT NULL
_NULLABLE: Final = frozenset(
    {
        "kind",
        "human_decision",
        "result_status",
        "result_error",
        "started_at",
        "completed_at",
        "context",
        "decided_at",
        "policy_digest",
        "start_id",
    }
)
_INTEGERS: Final = frozenset({"id", "start_id"})


def _column(name: str) -> str:
    kind = "BIGINT" if name in _INTEGERS else "TEXT"
    return f"{name} {kind}" + ("" if name in _NULLABLE else " NOT NULL")


_MIGRATIONS: Final = {
    # 0 -> 1: the chain as it is hashed, field by field
    0: (
        f"CREATE TABLE {{schema}}.{AUDIT_TABLE} ("
        + ", ".join(_column(name) for name in RECORD_FIELDS)
        + ", PRIMARY KEY (id)"
        # two records linking to one predecessor would be a fork
        + ", CONSTRAINT aegis_audit_log_one_successor UNIQUE (prev_hash))",
        f"CREATE INDEX aegis_audit_log_session ON {{schema}}.{AUDIT_TABLE} (session_id, id)",
        # finds the final record of a start: the "actions" view asks per start
        f"CREATE INDEX aegis_audit_log_start ON {{schema}}.{AUDIT_TABLE} (start_id)"
        " WHERE start_id IS NOT NULL",
    ),
    # 1 -> 2: signed checkpoints of the chain's head, beside it
    1: (
        f"CREATE TABLE {{schema}}.{CHECKPOINT_TABLE} (count BIGINT PRIMARY KEY, "
        "hash TEXT NOT NULL, created_at TEXT NOT NULL, key_id TEXT NOT NULL, "
        "signature TEXT NOT NULL)",
    ),
}
#: the schema version that added CHECKPOINT_TABLE
_CHECKPOINTS_SINCE: Final = 2

#: rows per page when reading, and per round trip of the verifying cursor
_PAGE: Final = 1000

_COLUMNS: Final = sql.SQL(", ").join(map(sql.Identifier, RECORD_FIELDS))

# a start record that has a final record is not an "action" of its own
_FINISHED: Final = sql.SQL(
    "kind = 'start' AND EXISTS (SELECT 1 FROM {} AS f WHERE f.start_id = {}.id)"
)


def _storable(draft: RecordDraft) -> RecordDraft:
    # PostgreSQL text cannot hold NUL (JSON text escapes it, scalars may
    # not); the hash covers exactly what is stored, so mark it before sealing.
    if not any(isinstance(v, str) and "\x00" in v for v in draft):
        return draft
    return RecordDraft._make(
        f"<unstorable str: {v!a}>" if isinstance(v, str) and "\x00" in v else v for v in draft
    )


class PostgresAuditStore(ReadMixin):
    """An :class:`~aegis.stores.base.AuditStore` in a PostgreSQL database, for fleets.

    Every process on every machine that opens the same database and schema
    appends to one chain. Nothing connects until first use; :meth:`check`
    connects and proves the store usable.

    Args:
        dsn: ``postgresql://user:password@host:5432/dbname`` or a libpq string.
        schema: the PostgreSQL schema of the tables (created when missing);
            ``None`` uses the connection's ``current_schema()``.
        create: create the tables when missing; ``False`` requires an existing trail.
        readonly: never create, migrate or write (auditors, the command line).
        durability: when :meth:`append` returns, its records are committed
            (visible to every reader, safe from the death of the writing
            process). With ``"full"`` every append also waits until they are
            on the server's disk. With ``"result"`` (the default) an append
            of start records only does not wait: the final record of the
            action, which does wait, makes its start durable with it, and
            the server's WAL writer flushes within a fraction of a second
            anyway; only a server crash in that moment could lose a start.
            With ``"process"`` no append waits for the disk. See
            :data:`~aegis.stores.base.Durability`.
        synchronous: the older spelling: ``"normal"`` is ``"result"``,
            ``"full"`` is ``"full"``.
        connect_timeout, statement_timeout, pool_timeout, max_connections:
            see :class:`~aegis.stores.postgres.connection.Database`.

    Example::

        store = PostgresAuditStore("postgresql://aegis@db.internal/aegis", readonly=True)
        print(store.verify())
    """

    remote = True

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        create: bool = True,
        readonly: bool = False,
        durability: str | None = None,
        synchronous: str | None = None,
        connect_timeout: float = 5.0,
        statement_timeout: float | None = 30.0,
        pool_timeout: float = 10.0,
        max_connections: int = 4,
    ) -> None:
        self.db = Database(
            dsn,
            schema=schema,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            pool_timeout=pool_timeout,
            max_connections=max_connections,
        )
        #: what a returned append promises (:data:`~aegis.stores.base.Durability`)
        self.durability: Durability = resolve_durability(durability, synchronous, normal="result")
        self.url = self.db.where
        self.readonly = readonly
        self._create = create and not readonly
        self._ready = False
        self._table: sql.Composed | None = None
        self._checkpoints: sql.Composed | None = None
        self._sql_lock = self._sql_head = self._sql_landed = self._sql_insert = ""
        self._writer_conn: Connection | None = None
        self._write_lock = threading.Lock()
        self._writer_pid = 0
        self._abandoned: list[Connection] = []
        self._closed = False
        #: append transactions committed by this store (one per batch)
        self.commits = 0

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<PostgresAuditStore {self.url}{state}>"

    # -- schema ----------------------------------------------------------------

    def _prepare(self, conn: Connection) -> None:
        """Create or check the tables once per store; free after the first call."""
        if self._ready:
            return
        version = migrate(self.db, conn, "audit", _MIGRATIONS, create=self._create)
        schema = self.db.schema(conn)
        table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(AUDIT_TABLE))
        self._table = table
        # a reader of an older trail finds no checkpoints table: it has none
        self._checkpoints = (
            sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(CHECKPOINT_TABLE))
            if version >= _CHECKPOINTS_SINCE
            else None
        )
        # The statements of every append, rendered once: composing SQL costs
        # more than a loopback round trip.
        # The append commits without waiting for the disk (set_config is
        # local to the transaction), so the chain's lock is not held through
        # an fsync; append() then waits for durability outside the lock.
        self._sql_lock = (
            sql.SQL(
                "SELECT set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock({})"
            )
            .format(schema_lock_key(schema, AUDIT_TABLE))
            .as_string(conn)
        )
        self._sql_head = (
            sql.SQL("SELECT id, hash FROM {} ORDER BY id DESC LIMIT 1")
            .format(table)
            .as_string(conn)
        )
        self._sql_landed = (
            sql.SQL("SELECT 1 FROM {} WHERE id = %s AND hash = %s").format(table).as_string(conn)
        )
        self._sql_insert = (
            sql.SQL("INSERT INTO {} ({}) VALUES ({})")
            .format(table, _COLUMNS, sql.SQL(", ").join(sql.Placeholder() * len(RECORD_FIELDS)))
            .as_string(conn)
        )
        self._ready = True

    @property
    def _t(self) -> sql.Composed:
        if self._table is None:  # pragma: no cover - every caller prepared first
            raise StoreError(f"the audit store at {self.url} is not open yet")
        return self._table

    def check(self) -> None:
        """Connect, create the tables unless read-only, and prove this role may append.

        Raises:
            StoreError: a wrong DSN, a server that does not answer, a schema
                without the trail (read-only), a role that may not write, a
                standby; the message says which and what to do.
        """
        with self._reading("open the audit trail in") as conn:
            if self.readonly:
                return
            table = self._t.as_string(conn)
            row = conn.execute(
                "SELECT has_table_privilege(%s, 'INSERT'), pg_is_in_recovery(), "
                "current_setting('transaction_read_only'), current_user, "
                "has_function_privilege('pg_logical_emit_message(boolean, text, text)', "
                "'EXECUTE')",
                (table,),
            ).fetchone()
        may_insert, standby, read_only, user, may_flush = row or (True, False, "off", "", True)
        if standby or read_only == "on":
            raise StoreError(
                f"cannot append to the audit trail in {self.url}: the server is read-only "
                "(a standby, or default_transaction_read_only); point the DSN at the primary"
            )
        if not may_insert:
            raise StoreError(
                f"cannot append to the audit trail in {self.url}: role {user!r} may not INSERT "
                f"into {table}; grant it (GRANT SELECT, INSERT ON {table} TO {user}) or use a "
                "role that may"
            )
        if not may_flush:
            raise StoreError(
                f"cannot append to the audit trail in {self.url}: role {user!r} may not execute "
                "pg_logical_emit_message, which Aegis uses to wait until records are on disk; "
                "GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO "
                f"{user}"
            )

    # -- writing ---------------------------------------------------------------

    def append(self, drafts: Sequence[RecordDraft]) -> list[AuditRecord]:
        """Seal ``drafts`` after the head in one transaction; return them once durable.

        Raises:
            StoreError: nothing was written (a failed transaction writes no
                record); the message names the DSN and what to do.
        """
        if self.readonly:
            raise StoreError(f"the audit store at {self.url} was opened read-only")
        if self._closed:
            raise StoreError(f"the audit store at {self.url} is closed; open a new one")
        if not drafts:
            return []
        with self._write_lock:
            records = self._link(drafts)
        if must_flush(self.durability, records):
            self._make_durable(records)
        return records

    def _link(self, drafts: Sequence[RecordDraft]) -> list[AuditRecord]:
        """Append ``drafts`` to the chain and commit, not yet waiting for the disk."""
        attempt: list[AuditRecord] = []
        try:
            return self._append_once(drafts, attempt)
        except psycopg.OperationalError as first:
            conn = self._writer_conn
            if conn is not None and not conn.broken:
                raise self.db.error("append to the audit trail in", first) from first
            # The connection died (a restarted server, a terminated backend, a
            # network cut). Whether its commit landed is unknown: the retry
            # settles that under the chain's lock before writing again.
            self._drop_writer_conn()
            try:
                return self._append_once(drafts, attempt)
            except psycopg.Error as exc:
                self._drop_writer_conn()
                raise self.db.error("append to the audit trail in", exc) from exc
        except psycopg.Error as exc:
            raise self.db.error("append to the audit trail in", exc) from exc

    def _make_durable(self, records: list[AuditRecord]) -> None:
        """Return once ``records`` are on the server's disk (and synchronous standbys).

        A transaction that writes WAL and commits synchronously flushes the
        WAL up to its own commit, which lies after the append's: a one-line
        logical message is the cheapest such write any role may make.
        Flushes of many writers overlap: the server syncs them together.
        """
        last = records[-1]
        doing = "confirm that the audit records are durable in"
        for attempt in (1, 2):
            try:
                with self.db.connection(doing) as conn:
                    if attempt == 2:
                        # The first try lost its connection: is the append still
                        # there? After a server crash it may not be, and then it
                        # was never acknowledged to anyone.
                        landed = conn.execute(self._sql_landed, (last.id, last.hash)).fetchone()
                        if landed is None:
                            raise StoreError(
                                f"cannot {doing} {self.url}: the server lost records "
                                f"{records[0].id}-{last.id} before they reached its disk "
                                "(it crashed or restarted); nothing of them was recorded, retry"
                            )
                    conn.execute("SELECT pg_logical_emit_message(true, 'aegis', '')")
                return
            except StoreError as exc:
                if attempt == 2 or not isinstance(exc.__cause__, psycopg.OperationalError):
                    raise

    def _append_once(
        self, drafts: Sequence[RecordDraft], attempt: list[AuditRecord]
    ) -> list[AuditRecord]:
        conn = self._writer_conn
        if conn is not None and self._writer_pid != os.getpid():
            # A forked child must not talk on its parent's socket (nor close
            # it, which would end the parent's session): keep it, open ours.
            self._abandoned.append(conn)
            conn = None
        if conn is None:
            conn = self._writer_conn = self.db.connect("append to the audit trail in")
            self._writer_pid = os.getpid()
        self._prepare(conn)
        with conn.transaction():
            # The lock and the head read must be two statements: a statement's
            # snapshot is taken when it starts, before the lock is granted.
            conn.execute(self._sql_lock)
            if attempt:
                # A retry: did the lost attempt commit after all? Holding the
                # lock, its transaction has ended one way or the other.
                last = attempt[-1]
                found = conn.execute(self._sql_landed, (last.id, last.hash)).fetchone()
                if found is not None:
                    return list(attempt)
                attempt.clear()
            head = conn.execute(self._sql_head).fetchone()
            record_id, prev = head if head is not None else (0, EMPTY_HEAD.hash)
            for draft in drafts:
                record_id += 1
                record = seal(_storable(draft), record_id, prev)
                prev = record.hash
                attempt.append(record)
            if len(attempt) == 1:
                conn.execute(self._sql_insert, attempt[0])
            else:
                conn.cursor().executemany(self._sql_insert, attempt)
        self.commits += 1
        return list(attempt)

    def _drop_writer_conn(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None and self._writer_pid == os.getpid():
            with suppress(psycopg.Error):  # closing a broken connection may complain
                conn.close()

    # -- reading ---------------------------------------------------------------

    @contextmanager
    def _reading(self, doing: str = "read the audit trail in") -> Iterator[Connection]:
        if self._closed:
            raise StoreError(f"the audit store at {self.url} is closed; open a new one")
        with self.db.connection(doing) as conn:
            self._prepare(conn)
            yield conn

    def _where(self, filters: Filters, after_id: int | None) -> tuple[sql.Composable, list[Any]]:
        clauses: list[sql.Composable] = [
            sql.SQL("{} {} %s").format(sql.Identifier(name), sql.SQL(op))
            for name, op, _ in filters.items
        ]
        args: list[Any] = [value for _, _, value in filters.items]
        if after_id is not None:
            clauses.append(sql.SQL("id > %s"))
            args.append(after_id)
        if filters.view == "actions":
            clauses.append(sql.SQL("NOT ({})").format(_FINISHED.format(self._t, self._t)))
        if not clauses:
            return sql.SQL(""), args
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), args

    def records(
        self,
        filters: Filters = NO_FILTERS,
        *,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> Iterator[AuditRecord]:
        """Yield the matching records in id order, a page per query, in constant memory.

        Each page is its own short query, so a slow reader (a pager) holds
        no transaction open on the server.
        """
        if limit is not None and limit <= 0:
            return
        left = limit
        while True:
            size = _PAGE if left is None else min(_PAGE, left)
            with self._reading() as conn:
                where, args = self._where(filters, after_id)
                query = sql.SQL("SELECT {} FROM {}{} ORDER BY id LIMIT %s").format(
                    _COLUMNS, self._t, where
                )
                rows = conn.execute(query, (*args, size)).fetchall()
            for row in rows:
                yield AuditRecord(*row)
            if len(rows) < size:
                return
            after_id = rows[-1][0]
            if left is not None:
                left -= len(rows)
                if left <= 0:
                    return

    def count(self, filters: Filters = NO_FILTERS) -> int:
        """How many records match ``filters``, counted by the server."""
        with self._reading() as conn:
            where, args = self._where(filters, None)
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}{}").format(self._t, where), args
            ).fetchone()
        return 0 if row is None else int(row[0])

    def stats(self, filters: Filters = NO_FILTERS) -> dict[str, dict[str, int]]:
        """Counts by status, risk, rule and action type; unfinished actions as ``"started"``."""
        out: dict[str, dict[str, int]] = {}
        with self._reading() as conn:
            where, args = self._where(filters, None)
            for name in STATS_FIELDS:
                column: sql.Composable = sql.Identifier(name)
                if name == "result_status":
                    column = sql.SQL(
                        "CASE WHEN kind = 'start' THEN {} ELSE result_status END"
                    ).format(sql.Literal(STARTED))
                query = sql.SQL("SELECT {}, count(*) FROM {}{} GROUP BY 1").format(
                    column, self._t, where
                )
                rows = conn.execute(query, args).fetchall()
                counts = {("none" if key is None else str(key)): int(n) for key, n in rows}
                out[name] = dict(sorted(counts.items()))
        return out

    def unfinished(self, filters: Filters = NO_FILTERS) -> list[AuditRecord]:
        """The start records that have no final record, oldest first."""
        with self._reading() as conn:
            where, args = self._where(replace(filters, view="actions"), None)
            query = sql.SQL("SELECT {} FROM {}{} AND kind = 'start' ORDER BY id").format(
                _COLUMNS, self._t, where
            )
            return [AuditRecord(*row) for row in conn.execute(query, args).fetchall()]

    def head(self) -> Head:
        """The head of the chain, read from its last record."""
        with self._reading() as conn:
            row = conn.execute(
                sql.SQL("SELECT id, hash FROM {} ORDER BY id DESC LIMIT 1").format(self._t)
            ).fetchone()
        return EMPTY_HEAD if row is None else Head(int(row[0]), str(row[1]))

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep ``checkpoint``; one already kept for its count stays (two writers may sign)."""
        if self.readonly:
            raise StoreError(f"the audit store at {self.url} was opened read-only")
        with self._reading("write a checkpoint to") as conn:
            if self._checkpoints is None:  # pragma: no cover - a writer migrated to the newest
                raise StoreError(f"the audit trail in {self.url} keeps no checkpoints")
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (count, hash, created_at, key_id, signature) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (count) DO NOTHING"
                ).format(self._checkpoints),
                (
                    checkpoint.count,
                    checkpoint.hash,
                    checkpoint.created_at,
                    checkpoint.key_id,
                    checkpoint.signature,
                ),
            )

    def checkpoints(self) -> list[Checkpoint]:
        """Every kept checkpoint, by count (none in a trail older than checkpoints)."""
        with self._reading() as conn:
            if self._checkpoints is None:
                return []
            rows = conn.execute(
                sql.SQL(
                    "SELECT count, hash, created_at, key_id, signature FROM {} ORDER BY count"
                ).format(self._checkpoints)
            ).fetchall()
        return [
            Checkpoint(int(n), str(h), str(at), str(key), str(sig)) for n, h, at, key, sig in rows
        ]

    def _stream(self) -> Iterator[AuditRecord]:
        """Every record in id order through a server-side cursor, in one snapshot."""
        with self._reading() as conn, conn.transaction():
            # One snapshot for the whole walk: appends made meanwhile are not
            # half-seen. The walk may pause while its consumer works.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            with conn.cursor(name="aegis_verify") as cursor:
                cursor.itersize = _PAGE
                cursor.execute(sql.SQL("SELECT {} FROM {} ORDER BY id").format(_COLUMNS, self._t))
                for row in cursor:
                    yield AuditRecord(*row)

    def verify(
        self,
        expected_head: Head | str | None = None,
        *,
        check_signature: SignatureCheck | None = None,
    ) -> VerifyReport:
        """Check the whole chain with :func:`~aegis.core.chain.verify_chain`, streaming."""
        if expected_head is not None:
            Head.parse(expected_head)  # a bad head is the caller's ValueError, before any I/O
        # Signed checkpoints are checked once this store keeps them (CheckpointStore).
        kept = getattr(self, "checkpoints", None)
        try:
            return verify_chain(
                self._stream(),
                expected_head,
                checkpoints=kept() if check_signature is not None and kept else (),
                check_signature=check_signature,
            )
        except psycopg.Error as exc:
            raise self.db.error("verify the audit trail in", exc) from exc

    # -- lifetime --------------------------------------------------------------

    def close(self) -> None:
        """Close the connections; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            self._drop_writer_conn()
        self.db.close()
