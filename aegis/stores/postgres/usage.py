"""Usage counters in PostgreSQL, shared by every process on every machine.

The tables live in the same database (and schema) as the audit trail; this
store keeps its own connection. A check and its reservation are one
transaction that first takes a transaction-scoped advisory lock per counter
(in a fixed order, so two actions never wait for each other in a circle):
whoever holds a counter's lock is the only one reading and adding to it
until it commits, so N processes can never pass a limit together.

Needs the ``postgres`` extra: ``pip install "aegis-runtime[postgres]"``.

Example::

    usage = PostgresUsageStore("postgresql://aegis@db.internal/aegis")
    runtime = Runtime(executor=..., policy=..., audit_logger=audit, usage_store=usage)
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Final, TypeVar

try:
    import psycopg
    from psycopg import sql
except ImportError as exc:  # pragma: no cover  # the extra is installed in CI
    raise ImportError(
        'the PostgreSQL usage store needs the postgres extra: pip install "aegis-runtime[postgres]"'
    ) from exc

from aegis.core.limits import Charge, FlowEvent
from aegis.errors import ConfigurationError, StoreError
from aegis.stores.usage import Acquired, Request, event_from_row, judge, params_json

__all__ = ["SCHEMA_VERSION", "PostgresUsageStore"]

#: the version of this component's tables in ``aegis_schema_versions``
SCHEMA_VERSION: Final = 1
_COMPONENT: Final = "usage"
#: the first key of Aegis's advisory locks ("AEGS"), shared with the other stores
_LOCK_CLASS: Final = 0x41454753
_VERSIONS: Final = "aegis_schema_versions"
_SWEEP_EVERY: Final = 512
_MAX_TOTAL: Final = 2**63 - 1

_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS {schema}.aegis_usage (
        id BIGSERIAL PRIMARY KEY,
        bucket TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        units BIGINT NOT NULL,
        expires DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS aegis_usage_bucket ON {schema}.aegis_usage (bucket, at)",
    """CREATE TABLE IF NOT EXISTS {schema}.aegis_usage_totals (
        bucket TEXT PRIMARY KEY,
        units BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS {schema}.aegis_flow_events (
        id BIGSERIAL PRIMARY KEY,
        session_id TEXT NOT NULL,
        action_type TEXT NOT NULL,
        action_target TEXT NOT NULL,
        params TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS aegis_flow_events_session"
    " ON {schema}.aegis_flow_events (session_id, at)",
)
_PASSWORD_URL = re.compile(r"(://[^:/@]*:)[^@]*@")
_PASSWORD_KEY = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_T = TypeVar("_T")


def _mask(dsn: str) -> str:
    return _PASSWORD_KEY.sub(r"\1***", _PASSWORD_URL.sub(r"\1***@", dsn))


class PostgresUsageStore:
    """A :class:`~aegis.stores.usage.UsageStore` in a PostgreSQL database.

    Args:
        dsn: ``postgresql://user:password@host:5432/dbname`` or a libpq string.
        schema: the schema of the tables; ``None`` uses the connection's
            ``current_schema()``, as the audit trail does.
        connect_timeout: seconds to wait for the server to accept a connection.
        lock_timeout: seconds a check may wait for another process holding
            the same counter (or any statement may run) before it fails.

    One connection, used by one thread at a time; calls block the caller
    for a network round trip or two. A lost connection fails the call with
    :class:`~aegis.errors.StoreError` and is opened again on the next one.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        connect_timeout: float = 5.0,
        lock_timeout: float = 30.0,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise ConfigurationError(
                f"a PostgreSQL DSN must be a non-empty string, not {dsn!r}; e.g."
                " 'postgresql://user@host:5432/dbname'"
            )
        if schema is not None and (not isinstance(schema, str) or not schema):
            raise ConfigurationError(f"schema={schema!r}; give a schema name, or None")
        self._dsn = dsn
        self.where = _mask(dsn)
        self._schema_option = schema
        self._connect_timeout = max(1, round(connect_timeout))
        self._lock_timeout_ms = int(lock_timeout * 1000)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = 0
        self._abandoned: list[object] = []  # a forked parent's connections, never closed here
        self._schema = ""
        self._tables: dict[str, sql.Composable] = {}
        self._closed = False
        self._since_sweep = 0

    def __repr__(self) -> str:
        return f"<PostgresUsageStore {self.where}{' closed' if self._closed else ''}>"

    # -- connection ------------------------------------------------------------

    def _error(self, doing: str, exc: BaseException) -> StoreError:
        text = str(exc).strip().replace(self._dsn, self.where)
        state = getattr(getattr(exc, "diag", None), "sqlstate", None) or ""
        if isinstance(exc, psycopg.OperationalError) and not state:
            hint = "check that the server is running and the DSN's host, port and database"
        elif state.startswith("55P03") or state.startswith("57014"):
            hint = "another process held the counter past lock_timeout; retry or raise it"
        elif state.startswith("42501"):
            hint = "the role may not create or write the usage tables; grant it or use another"
        elif state.startswith("25006"):
            hint = "the server or session is read-only; point the DSN at the primary"
        else:
            hint = "check the server's log"
        where = f" [SQLSTATE {state}]" if state else ""
        return StoreError(f"cannot {doing} usage counters at {self.where}: {text}{where}; {hint}")

    def _connect(self) -> psycopg.Connection[Any]:
        # Callers hold self._lock and translate psycopg errors.
        if self._closed:
            raise StoreError(f"the usage store for {self.where} is closed; create a new one")
        if self._conn is not None and self._pid != os.getpid():
            # A forked child must not talk on (or close) its parent's socket.
            self._abandoned.append(self._conn)
            self._conn = None
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._drop()
        conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout)
        try:
            conn.execute(f"SET lock_timeout = {self._lock_timeout_ms}")
            conn.execute(f"SET statement_timeout = {self._lock_timeout_ms}")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(psycopg.Error):  # broken already; a new one replaces it
                conn.close()

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        schema = self._schema_option
        if schema is None:
            row = conn.execute("SELECT current_schema()").fetchone()
            if row is None or row[0] is None:
                raise StoreError(
                    f"no schema of the search_path exists at {self.where}; create one or pass"
                    " schema="
                )
            schema = str(row[0])
        ident = sql.Identifier(schema)
        versions = sql.SQL("{}.{}").format(ident, sql.Identifier(_VERSIONS))
        with conn.transaction():
            # The same lock the other components take to create the versions table.
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (_LOCK_CLASS, f"{schema}.{_VERSIONS}"),
            )
            if self._schema_option is not None:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (component TEXT PRIMARY KEY,"
                    " version INTEGER NOT NULL)"
                ).format(versions)
            )
            row = conn.execute(
                sql.SQL("SELECT version FROM {} WHERE component = %s FOR UPDATE").format(versions),
                (_COMPONENT,),
            ).fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"the usage tables in schema {schema!r} at {self.where} are at version"
                    f" {row[0]}, newer than this Aegis knows ({SCHEMA_VERSION}); upgrade"
                    " aegis-runtime"
                )
            if row is None:
                for statement in _TABLES:
                    conn.execute(sql.SQL(statement).format(schema=ident))
                conn.execute(
                    sql.SQL("INSERT INTO {} (component, version) VALUES (%s, %s)").format(versions),
                    (_COMPONENT, SCHEMA_VERSION),
                )
        self._schema = schema
        self._tables = {
            name: sql.SQL("{}.{}").format(ident, sql.Identifier(name))
            for name in ("aegis_usage", "aegis_usage_totals", "aegis_flow_events")
        }

    def _run(self, doing: str, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        with self._lock:
            try:
                return work(self._connect())
            except psycopg.Error as exc:
                if self._conn is not None and (self._conn.broken or self._conn.closed):
                    self._drop()
                raise self._error(doing, exc) from exc

    # -- the protocol ----------------------------------------------------------

    def acquire(
        self, charges: Sequence[Charge], now: float, *, reserve: bool, over: bool
    ) -> Acquired:
        """See :meth:`aegis.stores.usage.UsageStore.acquire`: one transaction, advisory locks."""
        if reserve:
            return self.acquire_many([Request(tuple(charges), now, over)])[0]

        def peek(conn: psycopg.Connection[Any]) -> Acquired:
            used = [self._count(conn, c, now)[0] for c in charges]
            return Acquired(tuple(used), judge(charges, used), None)

        return self._run("count", peek)

    def acquire_many(self, requests: Sequence[Request]) -> list[Acquired]:
        """See :meth:`aegis.stores.usage.UsageStore.acquire_many`: one transaction."""

        def work(conn: psycopg.Connection[Any]) -> list[Acquired]:
            with conn.transaction():
                # Sorted, so two transactions locking the same counters never deadlock.
                buckets = sorted({c.bucket for r in requests for c in r.charges})
                for bucket in buckets:
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                        (_LOCK_CLASS, f"{self._schema}.aegis_usage:{bucket}"),
                    )
                out = [self._acquire_one(conn, request) for request in requests]
                if self._since_sweep >= _SWEEP_EVERY:
                    self._since_sweep = 0
                    self._sweep(conn, max(r.now for r in requests))
            return out

        return self._run("count", work)

    def _count(self, conn: psycopg.Connection[Any], charge: Charge, now: float) -> tuple[int, int]:
        """(units in the window, units of stored rows that left it)."""
        # A counter's total is kept in aegis_usage_totals, so that a check
        # reads one row instead of summing its window: the rows that left
        # the window since the last reservation are summed, then deleted.
        count = sql.SQL(
            "SELECT (SELECT units FROM {} WHERE bucket = %(b)s), COALESCE(SUM(units), 0)"
            " FROM {} WHERE bucket = %(b)s AND at <= %(cut)s"
        ).format(self._tables["aegis_usage_totals"], self._tables["aegis_usage"])
        row = conn.execute(count, {"b": charge.bucket, "cut": now - charge.window}).fetchone()
        total, expired = row if row is not None else (None, 0)
        return _units(total, self.where) - int(expired), int(expired)

    def _acquire_one(self, conn: psycopg.Connection[Any], request: Request) -> Acquired:
        charges, now = request.charges, request.now
        counts = [self._count(conn, c, now) for c in charges]
        used = [live for live, _ in counts]
        exceeded = judge(charges, used)
        if exceeded is not None and not request.over:
            return Acquired(tuple(used), exceeded, None)
        ids = [
            self._reserve(conn, charge, now, live, expired)
            for charge, (live, expired) in zip(charges, counts, strict=True)
        ]
        self._since_sweep += 1
        return Acquired(tuple(used), exceeded, tuple(ids))

    def _reserve(
        self, conn: psycopg.Connection[Any], charge: Charge, now: float, live: int, expired: int
    ) -> int:
        usage, totals = self._tables["aegis_usage"], self._tables["aegis_usage_totals"]
        total = live + expired  # what the stored rows add up to
        if expired:
            # Rows past this window, each forgotten only once past its own: a
            # row reserved under a longer window (an older policy, another
            # process's) still counts there until then.
            gone = conn.execute(
                sql.SQL(
                    "WITH gone AS (DELETE FROM {} WHERE bucket = %s AND at <= %s"
                    " AND expires <= %s RETURNING units) SELECT COALESCE(SUM(units), 0) FROM gone"
                ).format(usage),
                (charge.bucket, now - charge.window, now),
            ).fetchone()
            total -= int(gone[0]) if gone else 0
        total += charge.amount
        if total > _MAX_TOTAL:
            raise StoreError(
                f"the counter {charge.bucket} at {self.where} would pass 2**63 units; it cannot"
                " count more until older reservations leave its window"
            )
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {} (bucket, at, units, expires) VALUES (%s, %s, %s, %s) RETURNING id"
            ).format(usage),
            (charge.bucket, now, charge.amount, now + charge.window),
        ).fetchone()
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (bucket, units) VALUES (%s, %s)"
                " ON CONFLICT (bucket) DO UPDATE SET units = EXCLUDED.units"
            ).format(totals),
            (charge.bucket, total),
        )
        return int(row[0]) if row else 0

    def _sweep(self, conn: psycopg.Connection[Any], now: float) -> None:
        """Forget rows past their window in counters nobody touched since.

        Each counter is swept only under its own lock, taken without waiting
        (a counter someone holds is skipped): a total and its rows always
        change together.
        """
        usage, totals = self._tables["aegis_usage"], self._tables["aegis_usage_totals"]
        stale = conn.execute(
            sql.SQL("SELECT DISTINCT bucket FROM {} WHERE expires <= %s LIMIT 1000").format(usage),
            (now,),
        ).fetchall()
        for (bucket,) in stale:
            row = conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))",
                (_LOCK_CLASS, f"{self._schema}.aegis_usage:{bucket}"),
            ).fetchone()
            if not row or not row[0]:
                continue
            conn.execute(
                sql.SQL(
                    "WITH gone AS (DELETE FROM {} WHERE bucket = %(b)s AND expires <= %(now)s"
                    " RETURNING units) UPDATE {} SET units = units - (SELECT COALESCE(SUM(units),"
                    " 0) FROM gone) WHERE bucket = %(b)s"
                ).format(usage, totals),
                {"b": bucket, "now": now},
            )

    def release(self, reservation: Sequence[object]) -> None:
        """See :meth:`aegis.stores.usage.UsageStore.release`."""
        ids = [i for i in reservation if type(i) is int]
        if len(ids) != len(reservation):
            raise StoreError(
                f"{list(reservation)!r} is not a reservation of the usage store at {self.where};"
                " release what its acquire returned"
            )

        def work(conn: psycopg.Connection[Any]) -> None:
            usage, totals = self._tables["aegis_usage"], self._tables["aegis_usage_totals"]
            with conn.transaction():
                rows = conn.execute(
                    sql.SQL("SELECT DISTINCT bucket FROM {} WHERE id = ANY(%s)").format(usage),
                    (ids,),
                ).fetchall()
                for (bucket,) in sorted(rows):
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                        (_LOCK_CLASS, f"{self._schema}.aegis_usage:{bucket}"),
                    )
                conn.execute(
                    sql.SQL(
                        "WITH gone AS (DELETE FROM {} WHERE id = ANY(%s) RETURNING bucket, units)"
                        " UPDATE {} t SET units = t.units - g.units"
                        " FROM (SELECT bucket, SUM(units) AS units FROM gone GROUP BY bucket) g"
                        " WHERE t.bucket = g.bucket"
                    ).format(usage, totals),
                    (ids,),
                )

        self._run("release", work)

    def remember(self, event: FlowEvent) -> None:
        """See :meth:`aegis.stores.usage.UsageStore.remember`."""
        params = params_json(event.params)

        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (session_id, action_type, action_target, params, at)"
                    " VALUES (%s, %s, %s, %s, %s)"
                ).format(self._tables["aegis_flow_events"]),
                (event.session_id, event.type, event.target, params, event.at),
            )

        self._run("remember", work)

    def recall(
        self, session_id: str, since: float | None, action_type: str | None
    ) -> list[FlowEvent]:
        """See :meth:`aegis.stores.usage.UsageStore.recall`."""

        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            query = sql.SQL(
                "SELECT session_id, action_type, action_target, params, at FROM {}"
                " WHERE session_id = %s"
            ).format(self._tables["aegis_flow_events"])
            args: list[Any] = [session_id]
            if since is not None:
                query += sql.SQL(" AND at > %s")
                args.append(since)
            if action_type is not None:
                query += sql.SQL(" AND action_type = %s")
                args.append(action_type)
            query += sql.SQL(" ORDER BY at, id")
            return conn.execute(query, args).fetchall()

        rows = self._run("read", work)
        return [event_from_row(row, f"at {self.where}") for row in rows]

    def close(self) -> None:
        """Close the connection; later calls raise. Calling it again does nothing."""
        with self._lock:
            self._closed = True
            self._drop()

    def __enter__(self) -> PostgresUsageStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _units(value: object, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, int | Decimal):
        return int(value)
    raise StoreError(f"the usage counters at {where} hold {value!r}, not a number of units")
