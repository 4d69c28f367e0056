"""The audit trail in PostgreSQL: one hash chain shared by every writer.

Records live in ``aegis_audit_log`` in the store's schema, one column per
record field (``id`` a ``BIGINT``, the rest ``TEXT`` exactly as hashed, so
the server never re-renders what the hash covers).

Appends to the chain are serialized by a transaction-scoped advisory lock
of the schema: a writer takes the lock, reads the head, links and inserts
its records and commits, which releases the lock. N processes on M machines
therefore append one after another and never fork the chain; a unique
``prev_hash`` makes a fork impossible even for a writer that skipped the lock.

Each process has one writer thread (see :mod:`._writer`): concurrent actions
share a transaction, and each caller returns only after its own record is
committed. A connection lost mid-append is retried once on a new connection;
the retry first checks, under the lock, whether the lost transaction
committed after all, so nothing is written twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from aegis.core.decision import PolicyDecision
from aegis.core.record import ContextValue
from aegis.core.result import Result
from aegis.errors import StoreError
from aegis.runtime.audit import AuditLogger, VerifyReport, _parse_head
from aegis.runtime.audit_backend import (
    GENESIS_HASH,
    RECORD_FIELDS,
    Filters,
    RecordValues,
    Subscriber,
    SubscriberList,
    hash_row,
    record_values,
    write_jsonl,
)
from aegis.stores.postgres._writer import GroupWriter
from aegis.stores.postgres.connection import Connection, Database
from aegis.stores.postgres.schema import migrate, schema_lock_key

__all__ = ["AUDIT_TABLE", "PostgresAuditLogger"]

#: the table of the audit trail, in the store's schema
AUDIT_TABLE: Final = "aegis_audit_log"

_JSON_FIELDS: Final = ("action_params", "result_data", "context")

# the fields a record may leave empty; all others are NOT NULL
_NULLABLE: Final = frozenset(
    {
        "human_decision",
        "result_status",
        "result_error",
        "started_at",
        "completed_at",
        "context",
        "decided_at",
        "policy_digest",
    }
)

_MIGRATIONS: Final = {
    # 0 -> 1: the chain as it is hashed, field by field
    0: (
        f"CREATE TABLE {{schema}}.{AUDIT_TABLE} (id BIGINT PRIMARY KEY, "
        + ", ".join(
            f"{name} TEXT" + ("" if name in _NULLABLE else " NOT NULL")
            for name in RECORD_FIELDS[1:]
        )
        # two records linking to one predecessor would be a fork
        + ", CONSTRAINT aegis_audit_log_one_successor UNIQUE (prev_hash))",
        f"CREATE INDEX aegis_audit_log_session ON {{schema}}.{AUDIT_TABLE} (session_id, id)",
    ),
}

#: rows per page when reading and per fetch when verifying
_PAGE: Final = 1000


def _to_record(row: Sequence[Any]) -> dict[str, Any]:
    record = dict(zip(RECORD_FIELDS, row, strict=True))
    for name in _JSON_FIELDS:
        record[name] = _load(record[name])
    return record


def _load(stored: object) -> Any:
    # A hand-edited column may hold anything: give back what is not JSON as
    # it is (verify() reports the edit) rather than fail to read the trail.
    if isinstance(stored, str):
        try:
            return json.loads(stored)
        except ValueError:
            return stored
    return stored


def _storable(values: RecordValues) -> RecordValues:
    # PostgreSQL text cannot hold NUL or a lone surrogate; the hash is taken
    # over exactly what is stored, so both are replaced before sealing.
    return tuple(  # type: ignore[return-value]  # same shape, element by element
        v.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\ufffd")
        if isinstance(v, str)
        else v
        for v in values
    )


class PostgresAuditLogger(AuditLogger):
    """A tamper-evident audit trail in a PostgreSQL database, for fleets.

    Every process and machine that opens the same database and schema
    appends to one chain. Nothing connects until first use.

    Args:
        dsn: ``postgresql://user:password@host:5432/dbname`` or a libpq string.
        schema: the PostgreSQL schema of the tables (created if missing);
            ``None`` uses the connection's ``current_schema()``.
        create: create the tables if missing; ``False`` raises
            :class:`~aegis.errors.StoreError` instead (for tools that read).
        connect_timeout, statement_timeout, pool_timeout, max_connections:
            see :class:`~aegis.stores.postgres.connection.Database`.

    Example::

        audit = AuditLogger("postgresql://aegis@db.internal/aegis")
        async with Runtime(executor=crm, policy=policy, audit_logger=audit) as rt:
            ...
        print(audit.verify())
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        create: bool = True,
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
        self._create = create
        self._ready = False
        self._checked = False
        self._commits = 0
        self._writer_conn: Connection | None = None
        self._writer = GroupWriter[RecordValues, tuple[Any, ...]](self._append_batch)
        self._subscribers = SubscriberList()
        self._closed = False
        self._table: sql.Composed | None = None
        # the rows of the append in flight, kept to settle a lost commit
        self._sealed: list[tuple[Any, ...]] | None = None
        self._lock_key: sql.Composed | None = None

    @property
    def dsn(self) -> str:
        """The DSN with its password masked."""
        return self.db.where

    @property
    def commits(self) -> int:
        """How many append transactions this logger committed (one per batch)."""
        return self._commits

    @property
    def db_path(self) -> str:
        """The DSN with its password masked (the SQLite trail's file path)."""
        return self.db.where

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<PostgresAuditLogger {self.db.where}{state}>"

    # -- schema ----------------------------------------------------------------

    def _prepare(self, conn: Connection) -> None:
        """Create or check the tables once per store; cheap after the first call."""
        if self._ready:
            return
        migrate(self.db, conn, "audit", _MIGRATIONS, create=self._create)
        schema = self.db.schema(conn)
        self._table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(AUDIT_TABLE))
        self._lock_key = schema_lock_key(schema, AUDIT_TABLE)
        self._ready = True

    @property
    def table(self) -> sql.Composed:
        """The qualified audit table; valid once the store was used."""
        if self._table is None:
            raise StoreError(f"the audit store at {self.db.where} is not open yet")
        return self._table

    def check(self) -> None:
        """Connect, create the tables if needed, and check that this role may append.

        A runtime calls this before its first action, so that a wrong DSN, a
        read-only role or a standby server is an error before anything runs,
        never after an action already happened.

        Raises:
            StoreError: the store cannot be used for writing; the message says why.
        """
        with self.db.connection("open the audit trail in") as conn:
            self._prepare(conn)
            row = conn.execute(
                "SELECT has_table_privilege(%s, 'INSERT'), pg_is_in_recovery(), "
                "current_setting('transaction_read_only'), current_user",
                (self.table.as_string(conn),),
            ).fetchone()
        if row is None:  # pragma: no cover - SELECT of constants returns a row
            return
        may_insert, standby, read_only, user = row
        if standby or read_only == "on":
            raise StoreError(
                f"cannot append to the audit trail in {self.db.where}: the server is "
                "read-only (a standby, or default_transaction_read_only); point the DSN at "
                "the primary"
            )
        if not may_insert:
            raise StoreError(
                f"cannot append to the audit trail in {self.db.where}: role {user!r} may not "
                f"INSERT into {self.table.as_string(conn)}; grant it (GRANT INSERT, SELECT ON "
                "aegis_audit_log TO ...) or use a role that may"
            )

    # -- writing ---------------------------------------------------------------

    def _append_batch(self, batch: Sequence[RecordValues]) -> list[tuple[Any, ...]]:
        """Append ``batch`` as one transaction; runs on the writer thread."""
        self._sealed = None
        try:
            return self._append_once(batch)
        except psycopg.OperationalError as first:
            if self._writer_conn is not None and not self._writer_conn.broken:
                raise self.db.error("append to the audit trail in", first) from first
            # The connection died (a restarted server, a terminated backend, a
            # network blip). Whether the lost transaction committed is unknown:
            # the retry settles it under the chain's lock before writing again.
            self._drop_writer_conn()
            try:
                return self._append_once(batch)
            except psycopg.Error as exc:
                self._drop_writer_conn()
                raise self.db.error("append to the audit trail in", exc) from exc
        except psycopg.Error as exc:
            raise self.db.error("append to the audit trail in", exc) from exc
        finally:
            self._sealed = None

    def _drop_writer_conn(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None:
            with suppress(psycopg.Error):  # closing a broken connection may complain
                conn.close()

    def _append_once(self, batch: Sequence[RecordValues]) -> list[tuple[Any, ...]]:
        conn = self._writer_conn
        if conn is None:
            conn = self._writer_conn = self.db.connect("append to the audit trail in")
        self._prepare(conn)
        table = self.table
        columns = sql.SQL(", ").join(map(sql.Identifier, RECORD_FIELDS))
        insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            table, columns, sql.SQL(", ").join(sql.Placeholder() * len(RECORD_FIELDS))
        )
        rows: list[tuple[Any, ...]] = []
        with conn.transaction():
            # The lock and the head read must be two statements: a statement's
            # snapshot is taken when it starts, before the lock is granted.
            conn.execute(sql.SQL("SELECT pg_advisory_xact_lock({})").format(self._lock_key))
            sealed = self._sealed
            if sealed is not None:
                # A retry: did the lost attempt commit after all? Its lock is
                # ours now, so its transaction has ended one way or the other.
                last = sealed[-1]
                found = conn.execute(
                    sql.SQL("SELECT 1 FROM {} WHERE id = %s AND hash = %s").format(table),
                    (last[0], last[-1]),
                ).fetchone()
                if found is not None:
                    return sealed
            head = conn.execute(
                sql.SQL("SELECT id, hash FROM {} ORDER BY id DESC LIMIT 1").format(table)
            ).fetchone()
            last_id, last_hash = head if head is not None else (0, GENESIS_HASH)
            for values in batch:
                unsealed = (last_id + 1, *_storable(values), last_hash)
                last_hash = hash_row(unsealed)
                last_id += 1
                rows.append((*unsealed, last_hash))
            # Remembered before the commit, so that a retry can tell whether
            # the commit landed although its answer was lost.
            self._sealed = rows
            conn.cursor().executemany(insert, rows)
        self._commits += 1
        return rows

    def _notify(self, row: tuple[Any, ...]) -> None:
        if self._subscribers:
            self._subscribers.notify(_to_record(row))

    def _enqueue(self, values: RecordValues) -> Future[tuple[Any, ...]]:
        if self._closed:
            raise StoreError(f"the audit store at {self.db.where} is closed; open a new one")
        return self._writer.submit(values)

    def log(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        result: Result | None = None,
        human_decision: str | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int:
        """Write one finished record, wait for its commit and return its id; any thread."""
        values = record_values(
            session_id,
            decision,
            result,
            human_decision,
            context=context,
            decided_at=decided_at,
            policy_digest=policy_digest,
        )
        row = self._enqueue(values).result()
        self._notify(row)
        return int(row[0])

    async def record_start(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        human_decision: str | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int | None:
        """Check the store before the action runs; start markers are not written yet.

        The first call connects and checks that this role may append, so a
        wrong DSN, a dead server or a read-only role stops the first action
        before its executor runs. Returns ``None``.
        """
        if not self._checked:
            await asyncio.to_thread(self.check)
            self._checked = True
        return None

    async def record(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        result: Result,
        human_decision: str | None = None,
        start_token: int | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int:
        """Append the final record of an action; return its id once committed."""
        values = record_values(
            session_id,
            decision,
            result,
            human_decision,
            context=context,
            decided_at=decided_at,
            policy_digest=policy_digest,
        )
        row = await asyncio.wrap_future(self._enqueue(values))
        self._notify(row)
        return int(row[0])

    # -- reading ---------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self.db.connection("read the audit trail in") as conn:
            self._prepare(conn)
            yield conn

    def _sql_where(
        self, filters: Filters, after_id: int | None
    ) -> tuple[sql.Composable, list[Any]]:
        clauses: list[sql.Composable] = [
            sql.SQL("{} {} %s").format(sql.Identifier(name), sql.SQL(op))
            for name, op, _ in filters.items
        ]
        args: list[Any] = [value for _, _, value in filters.items]
        if after_id is not None:
            clauses.append(sql.SQL("id > %s"))
            args.append(after_id)
        if not clauses:
            return sql.SQL(""), args
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), args

    def _rows(
        self, filters: Filters, after_id: int | None, limit: int | None
    ) -> Iterator[tuple[Any, ...]]:
        """Matching rows in id order, a page per query: constant memory, no long transaction."""
        if limit is not None and limit <= 0:
            return
        columns = sql.SQL(", ").join(map(sql.Identifier, RECORD_FIELDS))
        left = limit
        while True:
            size = _PAGE if left is None else min(_PAGE, left)
            with self._reading() as conn:
                where, args = self._sql_where(filters, after_id)
                query = sql.SQL("SELECT {} FROM {}{} ORDER BY id LIMIT %s").format(
                    columns, self.table, where
                )
                rows = conn.execute(query, (*args, size)).fetchall()
            yield from rows
            if len(rows) < size:
                return
            after_id = rows[-1][0]
            if left is not None:
                left -= len(rows)
                if left <= 0:
                    return

    def _select(
        self, filters: Filters, after_id: int | None, limit: int | None
    ) -> Iterator[dict[str, Any]]:
        return map(_to_record, self._rows(filters, after_id, limit))

    def _count(self, filters: Filters) -> int:
        with self._reading() as conn:
            where, args = self._sql_where(filters, None)
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}{}").format(self.table, where), args
            ).fetchone()
        return 0 if row is None else int(row[0])

    def stats(self, session_id: str | None = None) -> dict[str, dict[str, int]]:
        """Count records by status, risk level, matched rule and action type."""
        out: dict[str, dict[str, int]] = {}
        with self._reading() as conn:
            where, args = self._sql_where(Filters(session_id=session_id), None)
            for column in ("result_status", "risk_level", "matched_rule", "action_type"):
                query = sql.SQL("SELECT {}, count(*) FROM {}{} GROUP BY 1 ORDER BY 1").format(
                    sql.Identifier(column), self.table, where
                )
                rows = conn.execute(query, args).fetchall()
                out[column] = {("none" if key is None else str(key)): n for key, n in rows}
        return out

    def pending(self) -> list[dict[str, Any]]:
        """The actions that started but have no final record, oldest first."""
        return []

    def export_jsonl(self, path: str | Path, session_id: str | None = None) -> int:
        """Write the records, oldest first, as UTF-8 JSON lines; return how many."""
        return write_jsonl(path, self._select(Filters.of(session_id=session_id), None, None))

    # -- tamper evidence -------------------------------------------------------

    def head(self) -> str:
        """Return ``"<count>:<hash of the last record>"``; keep it to detect truncation."""
        with self._reading() as conn:
            row = conn.execute(
                sql.SQL("SELECT id, hash FROM {} ORDER BY id DESC LIMIT 1").format(self.table)
            ).fetchone()
        last_id, last_hash = row if row is not None else (0, GENESIS_HASH)
        return f"{last_id}:{last_hash}"

    def _stream(self) -> Iterator[tuple[Any, ...]]:
        """Every row in id order through a server-side cursor, in one snapshot."""
        columns = sql.SQL(", ").join(map(sql.Identifier, RECORD_FIELDS))
        with self._reading() as conn, conn.transaction():
            # One snapshot for the whole walk: appends made meanwhile are
            # not half-seen. The walk may idle while the caller works.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            with conn.cursor(name="aegis_verify") as cursor:
                cursor.itersize = _PAGE
                cursor.execute(sql.SQL("SELECT {} FROM {} ORDER BY id").format(columns, self.table))
                yield from cursor

    def verify(self, expected_head: str | None = None) -> VerifyReport:
        """Check the whole chain, streaming; report the first record that does not fit."""
        expected = None if expected_head is None else _parse_head(expected_head)
        checked = 0
        prev_hash = GENESIS_HASH
        hash_at_expected: str | None = None
        prev_at = RECORD_FIELDS.index("prev_hash")
        hash_at = RECORD_FIELDS.index("hash")

        def fail(bad_id: int, reason: str) -> VerifyReport:
            return VerifyReport(False, checked, bad_id, reason, f"{checked}:{prev_hash}")

        for row in self._stream():
            record_id = row[0]
            if record_id != checked + 1:
                missing = checked + 1
                return fail(
                    missing,
                    f"record {missing} is missing: ids jump from {checked} to {record_id} "
                    "(records were deleted or renumbered)",
                )
            if row[prev_at] != prev_hash:
                return fail(
                    record_id,
                    f"record {record_id} does not link to record {checked}: its prev_hash "
                    "differs (records were inserted, deleted or reordered)",
                )
            if hash_row(row) != row[hash_at]:
                return fail(
                    record_id,
                    f"record {record_id} was modified: its content does not match its hash",
                )
            checked = record_id
            prev_hash = row[hash_at]
            if expected is not None and record_id == expected[0]:
                hash_at_expected = prev_hash
        head = f"{checked}:{prev_hash}"
        if expected is not None:
            count, digest = expected
            if checked < count:
                return VerifyReport(
                    False,
                    checked,
                    checked + 1,
                    f"the log ends at record {checked} but the kept head names record "
                    f"{count}: records were removed from the end",
                    head,
                )
            if (count and hash_at_expected != digest) or (not count and digest != GENESIS_HASH):
                return VerifyReport(
                    False,
                    checked,
                    count or None,
                    f"record {count} differs from the kept head: the log was rewritten",
                    head,
                )
        return VerifyReport(True, checked, None, "", head)

    # -- subscribers and lifetime ----------------------------------------------

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback(record)`` after each record this store appends is committed."""
        self._subscribers.add(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        self._subscribers.remove(callback)

    def close(self) -> None:
        """Commit queued records, then close the connections; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._drop_writer_conn()
        self.db.close()

    def __enter__(self) -> PostgresAuditLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
