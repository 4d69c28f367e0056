"""Usage counters in the audit trail's SQLite file, shared by every process that opens it.

The tables live beside the audit records, in the same file, versioned as
the ``usage`` component of ``aegis_schema_versions``. Beside an
:class:`~aegis.runtime.audit.AuditLogger` the store shares the audit's
connection (its :class:`~aegis.stores.sqlite.connection.SQLiteDatabase`):
two connections to one file would make each re-read what the other wrote.
A check and its reservation are one ``BEGIN IMMEDIATE`` transaction, or,
for a lone charge that fits, one statement: SQLite lets one writer at a
time in, so two processes can never both see room for the last action
under a limit.

Example::

    usage = SQLiteUsageStore("aegis_audit.db")     # its own connection
    runtime = Runtime(executor=..., policy=..., usage_store=usage)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from aegis.core.action import thaw
from aegis.core.limits import Charge, FlowEvent
from aegis.errors import StoreError
from aegis.stores.sqlite.connection import SQLiteDatabase
from aegis.stores.sqlite.schema import migrate
from aegis.stores.usage import Acquired, Request, judge

__all__ = ["SCHEMA_VERSION", "SQLiteUsageStore"]

#: the version of this component's tables in ``aegis_schema_versions``
SCHEMA_VERSION: Final = 2
_COMPONENT: Final = "usage"
_T = TypeVar("_T")
#: sweep rows past their window once per this many reservations
_SWEEP_EVERY: Final = 512

#: statements taking the usage tables from version N to N + 1
USAGE_MIGRATIONS: Final = {
    0: (
        """CREATE TABLE aegis_usage (
            id INTEGER PRIMARY KEY,
            bucket TEXT NOT NULL,
            at REAL NOT NULL,
            units INTEGER NOT NULL,
            expires REAL NOT NULL
        )""",
        "CREATE INDEX aegis_usage_bucket ON aegis_usage (bucket, at)",
        """CREATE TABLE aegis_usage_totals (
            bucket TEXT PRIMARY KEY,
            units INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE aegis_flow_events (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL,
            action_type TEXT NOT NULL,
            action_target TEXT NOT NULL,
            params TEXT NOT NULL,
            at REAL NOT NULL
        )""",
        "CREATE INDEX aegis_flow_events_session ON aegis_flow_events (session_id, at)",
    ),
    # A reservation keeps the count it saw, and adds itself to its counter's
    # total by a trigger: checking and reserving one charge is then a single
    # statement, atomic without BEGIN / COMMIT (see _FAST).
    1: (
        "ALTER TABLE aegis_usage ADD COLUMN seen INTEGER",
        """CREATE TRIGGER aegis_usage_count AFTER INSERT ON aegis_usage BEGIN
            INSERT INTO aegis_usage_totals (bucket, units) VALUES (NEW.bucket, NEW.units)
            ON CONFLICT (bucket) DO UPDATE SET units = units + excluded.units;
        END""",
    ),
}

# A counter's total is kept in aegis_usage_totals, so that a check reads one
# row instead of summing its window: the rows that left the window since the
# last reservation are summed (usually none) and then deleted.
_COUNT: Final = (
    "SELECT (SELECT units FROM aegis_usage_totals WHERE bucket = ?1),"
    " COALESCE(SUM(units), 0), MAX(typeof(units) != 'integer')"
    " FROM aegis_usage WHERE bucket = ?1 AND at <= ?2"
)
_INSERT: Final = "INSERT INTO aegis_usage (bucket, at, units, expires, seen) VALUES (?, ?, ?, ?, ?)"
# One charge that fits, checked and reserved in one statement (SQLite runs a
# statement under the write lock, so it is as atomic as a transaction): it
# inserts only when the counter's total is a whole number, no row has left
# the window (those need the slow path's delete) and the charge fits. No row
# back means "not this way": the slow path decides, in a transaction.
_FAST: Final = (
    "INSERT INTO aegis_usage (bucket, at, units, expires, seen)"
    " SELECT ?1, ?2, ?3, ?4, used FROM"
    " (SELECT COALESCE((SELECT units FROM aegis_usage_totals WHERE bucket = ?1), 0) AS used)"
    " WHERE typeof(used) = 'integer' AND used + ?3 <= ?5"
    " AND NOT EXISTS (SELECT 1 FROM aegis_usage WHERE bucket = ?1 AND at <= ?6)"
    " RETURNING id, seen"
)
_SUBTRACT: Final = "UPDATE aegis_usage_totals SET units = units - ? WHERE bucket = ?"
_MAX_TOTAL: Final = 2**63 - 1


class SQLiteUsageStore:
    """A :class:`~aegis.stores.usage.UsageStore` in a SQLite file (the audit trail's).

    Args:
        db_path: the database file; usually the audit trail's, which must be
            an Aegis database or not exist yet (it is then created as one).
        busy_timeout: seconds to wait for another writer before failing.
        database: share this open database (the audit store's) instead of
            opening ``db_path``; it is then not closed by :meth:`close`.

    Calls run on the calling thread, like the audit writes: a process that
    holds the file longer than ``busy_timeout`` makes a check wait that long,
    then raise :class:`~aegis.errors.StoreError`.
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        busy_timeout: float = 30.0,
        database: SQLiteDatabase | None = None,
    ) -> None:
        if database is None:
            path = "" if db_path is None else str(db_path)
            if path in ("", ":memory:"):
                raise StoreError(
                    "a SQLite usage store needs a file that other processes can open, not"
                    f" {path!r}; use aegis.stores.usage.MemoryUsageStore for one process, or"
                    " pass the audit store's database="
                )
            database = SQLiteDatabase(path, busy_timeout=busy_timeout)
            self._owns_db = True
        else:
            self._owns_db = False
        self.db = database
        self._ready: sqlite3.Connection | None = None
        self._closed = False
        self._since_sweep = 0

    @property
    def db_path(self) -> str:
        """The path of the database file."""
        return self.db.path

    def __repr__(self) -> str:
        return f"<SQLiteUsageStore {self.db.path!r}{' closed' if self._closed else ''}>"

    def _run(self, doing: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` on the store's connection, the tables ready; errors as StoreError."""
        if self._closed:
            raise StoreError(f"the usage store for {self.db.path!r} is closed; create a new one")
        with self.db.connection(doing) as conn:
            if self._ready is not conn:  # a new connection (first use, or after a fork)
                migrate(conn, self.db.path, _COMPONENT, SCHEMA_VERSION, USAGE_MIGRATIONS)
                self._ready = conn
            return work(conn)

    # -- the protocol ----------------------------------------------------------

    def acquire(
        self, charges: Sequence[Charge], now: float, *, reserve: bool, over: bool
    ) -> Acquired:
        """See :meth:`aegis.stores.usage.UsageStore.acquire`: one ``BEGIN IMMEDIATE``."""
        if reserve:
            return self.acquire_many([Request(tuple(charges), now, over)])[0]

        def peek(conn: sqlite3.Connection) -> Acquired:
            used = [_count(conn, c, now, self.db.path)[0] for c in charges]
            return Acquired(tuple(used), judge(charges, used), None)

        result: Acquired = self._run("count usage in", peek)
        return result

    def acquire_many(self, requests: Sequence[Request]) -> list[Acquired]:
        """See :meth:`aegis.stores.usage.UsageStore.acquire_many`: one ``BEGIN IMMEDIATE``.

        A lone request of one charge that fits (the common case) is one
        statement instead.
        """

        def work(conn: sqlite3.Connection) -> list[Acquired]:
            if len(requests) == 1 and self._since_sweep < _SWEEP_EVERY:
                fast = _fast(conn, requests[0])
                if fast is not None:
                    self._since_sweep += 1
                    return [fast]
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = [self._acquire_one(conn, request) for request in requests]
                if self._since_sweep >= _SWEEP_EVERY:
                    self._since_sweep = 0
                    _sweep(conn, max(r.now for r in requests))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return out

        result: list[Acquired] = self._run("count usage in", work)
        return result

    def _acquire_one(self, conn: sqlite3.Connection, request: Request) -> Acquired:
        charges, now = request.charges, request.now
        counts = [_count(conn, c, now, self.db.path) for c in charges]
        used = [live for live, _ in counts]
        exceeded = judge(charges, used)
        reservation = None
        if exceeded is None or request.over:
            reservation = tuple(
                _reserve(conn, c, now, live=live, expired=expired, path=self.db.path)
                for c, (live, expired) in zip(charges, counts, strict=True)
            )
            self._since_sweep += 1
        return Acquired(tuple(used), exceeded, reservation)

    def release(self, reservation: Sequence[int]) -> None:
        """See :meth:`aegis.stores.usage.UsageStore.release`."""
        ids = [int(i) for i in reservation]

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for row_id in ids:
                    row = conn.execute(
                        "SELECT bucket, units FROM aegis_usage WHERE id = ?", (row_id,)
                    ).fetchone()
                    if row is None:
                        continue  # swept already: it no longer counted
                    conn.execute("DELETE FROM aegis_usage WHERE id = ?", (row_id,))
                    conn.execute(_SUBTRACT, (row[1], row[0]))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        self._run("release usage in", work)

    def remember(self, event: FlowEvent) -> None:
        """See :meth:`aegis.stores.usage.UsageStore.remember`."""
        params = _params_json(event.params)

        def work(conn: sqlite3.Connection) -> None:
            # One statement: autocommit makes it its own transaction.
            conn.execute(
                "INSERT INTO aegis_flow_events (session_id, action_type, action_target, params,"
                " at) VALUES (?, ?, ?, ?, ?)",
                (event.session_id, event.type, event.target, params, event.at),
            )

        self._run("note a flow event in", work)

    def recall(
        self, session_id: str, since: float | None, action_type: str | None
    ) -> list[FlowEvent]:
        """See :meth:`aegis.stores.usage.UsageStore.recall`."""
        sql = (
            "SELECT session_id, action_type, action_target, params, at FROM aegis_flow_events"
            " WHERE session_id = ?"
        )
        args: list[Any] = [session_id]
        if since is not None:
            sql += " AND at > ?"
            args.append(since)
        if action_type is not None:
            sql += " AND action_type = ?"
            args.append(action_type)
        sql += " ORDER BY at, id"
        rows = self._run("read flow events in", lambda conn: conn.execute(sql, args).fetchall())
        return [_event(row, self.db.path) for row in rows]

    def close(self) -> None:
        """Close the connection (unless shared with the audit); later calls raise."""
        self._closed = True
        self._ready = None
        if self._owns_db:
            self.db.close()

    def __enter__(self) -> SQLiteUsageStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _count(conn: sqlite3.Connection, charge: Charge, now: float, path: str) -> tuple[int, int]:
    """(units in the window, units of rows that left it but are still stored)."""
    cutoff = now - charge.window
    total, expired, odd = conn.execute(_COUNT, (charge.bucket, cutoff)).fetchone()
    if odd or not isinstance(total or 0, int) or not isinstance(expired, int):
        raise StoreError(
            f"the usage counters in {path!r} hold something other than whole units; the"
            " tables aegis_usage and aegis_usage_totals were edited by hand: delete the"
            " odd rows to count again"
        )
    return (total or 0) - expired, expired


def _reserve(
    conn: sqlite3.Connection, charge: Charge, now: float, *, live: int, expired: int, path: str
) -> int:
    """Insert the charge's row and set its counter's total; forget rows past the window."""
    total = live + charge.amount
    if total > _MAX_TOTAL:
        raise StoreError(
            f"the counter {charge.bucket} in {path!r} would pass 2**63 units; it cannot count"
            " more until older reservations leave its window"
        )
    if expired:
        conn.execute(
            "DELETE FROM aegis_usage WHERE bucket = ? AND at <= ?",
            (charge.bucket, now - charge.window),
        )
        conn.execute(_SUBTRACT, (expired, charge.bucket))
    # the trigger aegis_usage_count adds the row's units to the total
    row = conn.execute(_INSERT, (charge.bucket, now, charge.amount, now + charge.window, live))
    return int(row.lastrowid or 0)


def _fast(conn: sqlite3.Connection, request: Request) -> Acquired | None:
    """Reserve a lone charge that fits in one statement; ``None``: take the slow path."""
    if len(request.charges) != 1:
        return None
    charge, now = request.charges[0], request.now
    if not 0 < charge.amount <= charge.maximum <= _MAX_TOTAL:
        return None  # nothing to add, never fits, or past what SQLite's integers hold
    row = conn.execute(
        _FAST,
        (
            charge.bucket,
            now,
            charge.amount,
            now + charge.window,
            charge.maximum,
            now - charge.window,
        ),
    ).fetchall()  # to the end: a RETURNING statement commits when it is done
    if not row:
        return None
    return Acquired((row[0][1],), None, (row[0][0],))


def _sweep(conn: sqlite3.Connection, now: float) -> None:
    """Forget rows past the window they were counted in, in counters nobody touched since."""
    for bucket, units in conn.execute(
        "SELECT bucket, SUM(units) FROM aegis_usage WHERE expires <= ? GROUP BY bucket", (now,)
    ).fetchall():
        conn.execute(_SUBTRACT, (units, bucket))
    conn.execute("DELETE FROM aegis_usage WHERE expires <= ?", (now,))
    conn.execute("DELETE FROM aegis_usage_totals WHERE units = 0")


def _params_json(params: Any) -> str:
    return json.dumps(thaw(params), sort_keys=True, separators=(",", ":"), default=repr)


def _event(row: tuple[Any, ...], path: str) -> FlowEvent:
    session_id, kind, target, params, at = row
    try:
        loaded = json.loads(params)
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"a flow event in {path!r} holds params that are not JSON ({params!r}); the table"
            " aegis_flow_events was edited by hand"
        ) from exc
    return FlowEvent(
        str(session_id), str(kind), str(target), loaded if isinstance(loaded, dict) else {}, at
    )
