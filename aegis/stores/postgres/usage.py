"""Usage counters in PostgreSQL, shared by every process on every machine.

The tables live in the same database and schema as the audit trail: beside
an audit store (:func:`aegis.stores.open_stores`) this store shares its
:class:`~aegis.stores.postgres.connection.Database` (the DSN, the schema,
the timeouts, the masked password in every message) and migrates with the
same helper (:mod:`aegis.stores.postgres.schema`), on one dedicated
connection of its own. A check and its reservation are one transaction
that first takes a transaction-scoped advisory lock per counter (in a fixed
order, so two actions never wait for each other in a circle): whoever holds
a counter's lock is the only one reading and adding to it until it commits,
so N processes can never pass a limit together.

Needs the ``postgres`` extra: ``pip install "aegis-runtime[postgres]"``.

Example::

    stores = open_stores("postgresql://app:secret@db.internal/aegis", schema="agents")
    runtime = Runtime(executor=..., policy=..., audit_logger=AuditLogger(...))
    # or, on its own:
    usage = PostgresUsageStore("postgresql://aegis@db.internal/aegis", schema="agents")

Size: the counters, the flow events and their deletion (with the gaps it
leaves) share one connection, its migrations and its table names; split, each
part would reopen and re-migrate what the others already hold.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, ClassVar, Final, NamedTuple, TypeVar

try:
    import psycopg
    from psycopg import sql
except ImportError as exc:  # pragma: no cover  # the extra is installed in CI
    raise ImportError(
        'the PostgreSQL usage store needs the postgres extra: pip install "aegis-runtime[postgres]"'
    ) from exc

from aegis.core.limits import Charge, FlowEvent
from aegis.errors import ConfigurationError, StoreError
from aegis.stores._url import StoreURL
from aegis.stores.postgres.connection import Database, server_identity
from aegis.stores.postgres.schema import migrate
from aegis.stores.usage import (
    EVENT_MARGIN,
    FORGET_ROWS,
    FORGET_SESSIONS,
    Acquired,
    Request,
    SteadyClock,
    event_from_row,
    judge,
    needs_no_events,
    params_json,
    unencodable,
    widest,
)

__all__ = ["SCHEMA_VERSION", "FlowGuard", "PostgresUsageStore"]

#: the version of this component's tables in ``aegis_schema_versions``
SCHEMA_VERSION: Final = 4
_COMPONENT: Final = "usage"
#: the first key of Aegis's advisory locks ("AEGS"), shared with the other stores
_LOCK_CLASS: Final = 0x41454753
_SWEEP_EVERY: Final = 512
_MAX_TOTAL: Final = 2**63 - 1

#: statements taking the usage tables from version N to N + 1
_MIGRATIONS: Final = {
    0: (
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
    ),
    # The longest look-back of flow conditions any policy declared: flow
    # events older than it are deleted (see PostgresUsageStore.forget_events).
    # One row; NULL seconds: a condition looks over a whole session.
    1: (
        """CREATE TABLE IF NOT EXISTS {schema}.aegis_flow_horizon (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seconds DOUBLE PRECISION
        )""",
    ),
    # A flow condition naming an exact type and target finds the session's
    # newest such event with one index scan, however many the session holds
    # (see PostgresUsageStore.latest_event).
    2: (
        "CREATE INDEX IF NOT EXISTS aegis_flow_events_kind"
        " ON {schema}.aegis_flow_events (session_id, action_type, action_target, at)",
    ),
    # Where a session's flow history was deleted: its events up to ``until``
    # may be gone (see PostgresUsageStore.forgotten).
    3: (
        """CREATE TABLE IF NOT EXISTS {schema}.aegis_flow_gaps (
            session_id TEXT PRIMARY KEY,
            until DOUBLE PRECISION NOT NULL
        )""",
    ),
}


class FlowGuard(NamedTuple):  # a tuple: built for every action of an agent acting alone
    """An action's flow event, for the audit store to insert with its start record.

    What :meth:`PostgresUsageStore.guard` gives and
    :meth:`~aegis.stores.postgres.audit.PostgresAuditStore.append_guarded`
    writes: the schema this store resolved (the audit store refuses a guard
    of another), then the ``aegis_flow_events`` columns as text.
    """

    schema: str
    session_id: str
    action_type: str
    action_target: str
    params: str
    at: str

    @property
    def acquired(self) -> None:
        """Always ``None``: a flow guard reserves nothing, so no charge can not fit."""
        return None


#: builds a FlowGuard from C: its generated ``__new__`` is a Python call
_new = tuple.__new__

#: rows :meth:`PostgresUsageStore.latest_event` reads first, and at most at a time after
_FIRST_ROWS: Final = 16
_MOST_ROWS: Final = 1024
_T = TypeVar("_T")


class PostgresUsageStore:
    """A :class:`~aegis.stores.usage.UsageStore` in a PostgreSQL database.

    Args:
        dsn: the audit store's :class:`~aegis.stores.postgres.connection.Database`
            to share (what :func:`aegis.stores.open_stores` gives), or a
            ``postgresql://user:password@host:5432/dbname`` URL or libpq
            string to open one of its own.
        schema: with a DSN, the schema of the tables; ``None`` uses the
            connection's ``current_schema()``, as the audit trail does. A
            shared database brings its own.
        connect_timeout: with a DSN, seconds to wait for the server to accept a connection.
        lock_timeout: seconds a check may wait for another process holding
            the same counter before it fails.

    One connection, used by one thread at a time; calls block the caller
    for a network round trip or two. A lost connection fails the call with
    :class:`~aegis.errors.StoreError` and is opened again on the next one.
    """

    #: PostgreSQL text cannot hold a NUL: an event naming one is refused on its own
    #: (see :func:`~aegis.stores.usage.check_storable`), not with its batch
    holds_nul: ClassVar[bool] = False

    def __init__(
        self,
        dsn: str | StoreURL | Database,
        *,
        schema: str | None = None,
        connect_timeout: float = 5.0,
        lock_timeout: float = 30.0,
    ) -> None:
        if isinstance(dsn, Database):
            if schema is not None and schema != dsn.schema_option:
                raise ConfigurationError(
                    f"schema={schema!r} differs from the shared database's "
                    f"({dsn.schema_option!r}); the counters live in its schema"
                )
            self.db, self._owns_db = dsn, False
        else:
            self.db = Database(
                dsn,
                schema=schema,
                connect_timeout=connect_timeout,
                statement_timeout=lock_timeout,
            )
            self._owns_db = True
        # an audit store asks, before it lets its starts carry the events (see its guards)
        self.db.flow_connect = self._connected
        if isinstance(lock_timeout, bool) or not (
            isinstance(lock_timeout, int | float) and lock_timeout > 0
        ):
            raise ConfigurationError(f"lock_timeout={lock_timeout!r}; give seconds above 0")
        self.where = self.db.where
        self._lock_timeout_ms = math.ceil(lock_timeout * 1000)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = 0
        self._abandoned: list[object] = []  # a forked parent's connections, never closed here
        self._schema = ""
        self._tables: dict[str, sql.Composable] = {}
        self._closed = False
        self._since_sweep = 0
        # the session a walk of the flow events goes on from, and whether it is
        # itself still to do (see forget_events)
        self._events_from: tuple[str, bool] = ("", True)
        self._steady = SteadyClock()  # forget_events counts from it when the wall clock is ahead

    def __repr__(self) -> str:
        return f"<PostgresUsageStore {self.where}{' closed' if self._closed else ''}>"

    # -- connection ------------------------------------------------------------

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
        self.db.flow_server = None  # until the new connection's server says which it is
        conn = self.db.connect("connect the usage counters to")
        try:
            # Every BEGIN says READ COMMITTED, whatever the database's default:
            # a check reads the counters after the locks it waited for.
            conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
            row = conn.execute(
                "SELECT current_setting('synchronous_commit'),"
                f" set_config('lock_timeout', '{self._lock_timeout_ms}', false)"
            ).fetchone()
            if row is not None and row[0] == "off":
                # A server that does not wait for the disk by default would lose,
                # in a crash, an event, a reservation or a gap already relied on
                # (an action let through): this connection's commits wait.
                conn.execute("SET synchronous_commit = on")
            migrate(self.db, conn, _COMPONENT, _MIGRATIONS, create=True)
            schema = self.db.schema(conn)
        except BaseException:
            conn.close()
            raise
        # where the events are read: an audit store's append may carry them only there
        self.db.flow_server = server_identity(conn)
        ident = sql.Identifier(schema)
        self._schema = schema
        self._tables = {
            name: sql.SQL("{}.{}").format(ident, sql.Identifier(name))
            for name in (
                "aegis_usage",
                "aegis_usage_totals",
                "aegis_flow_events",
                "aegis_flow_horizon",
                "aegis_flow_gaps",
            )
        }
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _connected(self) -> None:
        """Connect, if not connected: the database's ``flow_server`` says where then."""
        self._run("connect the usage counters to", lambda conn: None)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(psycopg.Error):  # broken already; a new one replaces it
                conn.close()

    def _run(self, doing: str, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        with self._lock:
            try:
                return work(self._connect())
            except psycopg.Error as exc:
                if self._conn is not None and (self._conn.broken or self._conn.closed):
                    self._drop()
                raise self.db.error(doing, exc) from exc
            except UnicodeEncodeError as exc:  # encoded before sending (a transaction rolls back)
                raise unencodable(doing, str(self.where), exc) from exc

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

        return self._run("count the usage counters in", peek)

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

        return self._run("count the usage counters in", work)

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

        self._run("release a reservation of the usage counters in", work)

    #: :meth:`guard` carries flow events only: charges are reserved in this
    #: store's own transactions (see :class:`~aegis.runtime.metering.Metering`)
    guards_charges: Final = False

    def guard(self, request: Request | None, event: FlowEvent | None) -> FlowGuard:
        """``event`` as the audit store writes it in its start record's transaction.

        The runtime asks for it when the audit trail is in this store's
        database and schema (:meth:`~aegis.stores.postgres.audit.PostgresAuditStore.guards`):
        one round trip and one commit for the start and the event, atomic.
        The guard names the schema this store resolved, empty before it
        first connected (the audit store then refuses it, and the event is
        noted the ordinary way, which connects).

        Raises:
            ConfigurationError: a request to reserve (never deferred here) or no event.
        """
        if request is not None or event is None:
            raise ConfigurationError(
                "the PostgreSQL usage store's guard carries a flow event, not a reservation"
            )
        return _new(  # (tuple.__new__ builds the NamedTuple)
            FlowGuard,
            (
                self._schema,
                event.session_id,
                event.type,
                event.target,
                params_json(event.params),
                repr(event.at),
            ),
        )

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

        self._run("keep a flow event in", work)

    def remember_many(self, events: Sequence[FlowEvent]) -> list[int]:
        """Keep ``events`` in one transaction: concurrent actions of a process share a commit.

        Returns their row ids, for :meth:`drop_events`.
        """
        rows = [(e.session_id, e.type, e.target, params_json(e.params), e.at) for e in events]

        def work(conn: psycopg.Connection[Any]) -> list[int]:
            ids: list[int] = []
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    sql.SQL(
                        "INSERT INTO {} (session_id, action_type, action_target, params, at)"
                        " VALUES (%s, %s, %s, %s, %s) RETURNING id"
                    ).format(self._tables["aegis_flow_events"]),
                    rows,
                    returning=True,
                )
                while True:  # one result per row, in order
                    row = cur.fetchone()
                    if row is None:
                        raise StoreError("the database returned no id for a flow event")
                    ids.append(int(row[0]))
                    if not cur.nextset():
                        break
            return ids

        noted: list[int] = self._run("keep flow events in", work)
        return noted

    def drop_events(self, event_ids: Sequence[object]) -> None:
        """Delete the events :meth:`remember_many` gave these ids: their actions never ran.

        One statement; an id no longer there is passed over.
        """
        ids = [_event_id(item, str(self.where)) for item in event_ids]
        if not ids:
            return

        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(
                    self._tables["aegis_flow_events"]
                ),
                (ids,),
            )

        self._run("delete flow events of actions that did not run in", work)

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

        rows = self._run("read the flow events in", work)
        return [event_from_row(row, f"at {self.where}") for row in rows]

    def latest_event(
        self,
        session_id: str,
        since: float | None,
        where: Callable[[FlowEvent], bool] | None = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
        passing: object = None,
    ) -> FlowEvent | None:
        """See :meth:`aegis.stores.usage.UsageStore.latest_event`.

        Newest first, a page at a time (16 rows, then eight times more, up to
        1024), each page going on below the last row read (by ``at`` and
        ``id``, the order of the index on ``(session_id, at)``, or on
        ``(session_id, action_type, action_target, at)`` when both names
        are given): a first match ends the reading, and the rows past it are
        never sent.
        """
        where_in = f"at {self.where}"
        passed = None if passing is None else _event_id(passing, str(self.where))

        def work(conn: psycopg.Connection[Any]) -> FlowEvent | None:
            # (the table's name is known once connected: built here, not before)
            query = sql.SQL(
                "SELECT session_id, action_type, action_target, params, at, id FROM {}"
                " WHERE session_id = %s"
            ).format(self._tables["aegis_flow_events"])
            args: list[Any] = [session_id]
            for column, value in (("action_type", action_type), ("action_target", action_target)):
                if value is not None:
                    query += sql.SQL(" AND {} = %s").format(sql.Identifier(column))
                    args.append(value)
            if since is not None:
                query += sql.SQL(" AND at > %s")
                args.append(since)
            if passed is not None:
                query += sql.SQL(" AND id <> %s")
                args.append(passed)
            first = query + sql.SQL(" ORDER BY at DESC, id DESC LIMIT %s")
            after = query + sql.SQL(" AND (at, id) < (%s, %s) ORDER BY at DESC, id DESC LIMIT %s")
            size = 1 if where is None else _FIRST_ROWS
            rows = conn.execute(first, [*args, size]).fetchall()
            while True:
                for row in rows:
                    event = event_from_row(row[:5], where_in)
                    if where is None or where(event):
                        return event
                if len(rows) < size:
                    return None
                last = rows[-1]
                size = min(size * 8, _MOST_ROWS)
                rows = conn.execute(after, [*args, last[4], last[5], size]).fetchall()

        return self._run("read the flow events in", work)

    def forget_events(self, horizon: float | None, now: float) -> bool:
        """See :meth:`aegis.stores.usage.UsageStore.forget_events`: one transaction.

        The horizon is kept in ``aegis_flow_horizon`` (the longest declared);
        its row stays locked until the deleting commits, so a process
        declaring a longer horizon meanwhile waits, and is obeyed by every
        later call. One statement finds the next ``FORGET_SESSIONS`` sessions
        by name (a skip through the index on ``(session_id, at)``) with their
        oldest event, and one deletes up to ``FORGET_ROWS`` events of those
        past the cutoff; the walk goes on from there at the next call. The
        cutoff counts from ``now`` or the server's clock, whichever is earlier.
        """

        def work(conn: psycopg.Connection[Any]) -> bool:
            horizons, events = self._tables["aegis_flow_horizon"], self._tables["aegis_flow_events"]
            with conn.transaction():
                row = conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (id, seconds) VALUES (1, %s) ON CONFLICT (id) DO UPDATE"
                        " SET seconds = CASE WHEN {}.seconds IS NULL OR EXCLUDED.seconds IS NULL"
                        " OR NOT {}.seconds >= 0"  # below zero: edited by hand (see widest)
                        " THEN NULL ELSE GREATEST({}.seconds, EXCLUDED.seconds) END"
                        " RETURNING seconds, EXTRACT(EPOCH FROM clock_timestamp())::float8"
                    ).format(horizons, horizons, horizons, horizons),
                    (horizon,),
                ).fetchone()
                kept = widest(row[0] if row else None, horizon)
                # The earlier of this process's clock and the server's: one
                # client's clock run ahead (or stepped forward, to be set back
                # later) must not delete events still inside other processes'
                # windows; a server clock behind only keeps more.
                until = self._steady.cap(min(now, row[1]) if row is not None else now)
                if kept is None:
                    return False  # some policy looks over whole sessions: every event may count
                session, inclusive = self._events_from
                walked = conn.execute(
                    sql.SQL(
                        "WITH RECURSIVE walk (session_id, oldest, n) AS ("
                        " (SELECT session_id, at, 1 FROM {events} WHERE session_id "
                        + (">=" if inclusive else ">")
                        + " %(from)s ORDER BY session_id, at LIMIT 1)"
                        " UNION ALL SELECT next.session_id, next.at, walk.n + 1 FROM walk,"
                        " LATERAL (SELECT session_id, at FROM {events}"
                        " WHERE session_id > walk.session_id ORDER BY session_id, at LIMIT 1) next"
                        " WHERE walk.n < %(most)s)"
                        " SELECT session_id, oldest FROM walk ORDER BY n"
                    ).format(events=events),
                    {"from": session, "most": FORGET_SESSIONS},
                ).fetchall()
                if not walked:  # walked them all
                    self._events_from = ("", True)
                    return False
                cutoff = until - kept - EVENT_MARGIN
                old = [s for s, oldest in walked if oldest <= cutoff]
                gone = 0
                if old:
                    deleted = conn.execute(
                        sql.SQL(
                            "DELETE FROM {events} WHERE id IN (SELECT id FROM {events}"
                            " WHERE session_id = ANY(%s) AND at <= %s ORDER BY session_id, at"
                            " LIMIT %s) RETURNING session_id"
                        ).format(events=events),
                        (old, cutoff, FORGET_ROWS),
                    ).fetchall()
                    gone = len(deleted)
                    if deleted:  # what went: a condition looking back past it cannot say never
                        conn.execute(
                            sql.SQL(
                                "INSERT INTO {gaps} (session_id, until)"
                                " SELECT DISTINCT unnest(%s::text[]), %s::float8"
                                " ON CONFLICT (session_id)"
                                " DO UPDATE SET until = GREATEST({gaps}.until, EXCLUDED.until)"
                            ).format(gaps=self._tables["aegis_flow_gaps"]),
                            ([row[0] for row in deleted], cutoff),
                        )
                if gone >= FORGET_ROWS:  # the sessions may hold more: go on from the first
                    self._events_from = (old[0], True)
                elif len(walked) < FORGET_SESSIONS:
                    self._events_from = ("", True)
                    return False
                else:
                    self._events_from = (walked[-1][0], False)
                return True

        return self._run("forget old flow events in", work)

    def cover_events(self, session_id: str, until: float) -> bool:
        """See :meth:`aegis.stores.base.CoversEvents.cover_events`: one transaction.

        The horizon's row is read ``FOR SHARE``: a process declaring a
        horizon (:meth:`forget_events` updates that row) waits until the gap
        is committed, or this reads what it declared.
        """

        def work(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                row = conn.execute(
                    sql.SQL("SELECT seconds FROM {} WHERE id = 1 FOR SHARE").format(
                        self._tables["aegis_flow_horizon"]
                    )
                ).fetchone()
                if row is None or not needs_no_events(row[0]):
                    return False
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {gaps} (session_id, until) VALUES (%s, %s::float8)"
                        " ON CONFLICT (session_id)"
                        " DO UPDATE SET until = GREATEST({gaps}.until, EXCLUDED.until)"
                    ).format(gaps=self._tables["aegis_flow_gaps"]),
                    (session_id, until),
                )
                return True

        return self._run("note a gap in the flow history in", work)

    def forgotten(self, session_id: str) -> float | None:
        """See :meth:`aegis.stores.usage.UsageStore.forgotten`: one index look-up."""

        def work(conn: psycopg.Connection[Any]) -> float | None:
            row = conn.execute(
                sql.SQL("SELECT until FROM {} WHERE session_id = %s").format(
                    self._tables["aegis_flow_gaps"]
                ),
                (session_id,),
            ).fetchone()
            if row is None:
                return None
            until = row[0]
            if not isinstance(until, float) or math.isnan(until):
                raise StoreError(
                    f"the flow history gaps at {self.where} hold {until!r}, not a time; the"
                    " table aegis_flow_gaps was edited by hand"
                )
            return until

        return self._run("read flow history gaps in", work)

    def close(self) -> None:
        """Close the connection (and a database of its own); later calls raise. Idempotent."""
        with self._lock:
            self._closed = True
            self._drop()
        if self._owns_db:
            self.db.close()

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


def _event_id(item: object, where: str) -> int:
    """A flow event's row id, as :meth:`PostgresUsageStore.remember_many` gave it."""
    if type(item) is not int:
        raise StoreError(f"{item!r} is not the id of a flow event in {where}")
    return item
