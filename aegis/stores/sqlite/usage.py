"""Usage counters in the audit trail's SQLite file, shared by every process that opens it.

The tables live beside the audit records, in the same file; this store
opens its own connection to it. A check and its reservation are one
``BEGIN IMMEDIATE`` transaction: SQLite lets one writer at a time in, so
two processes can never both see room for the last action under a limit.

Example::

    usage = SQLiteUsageStore("aegis_audit.db")
    runtime = Runtime(executor=..., policy=..., usage_store=usage)
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from aegis.core.action import thaw
from aegis.core.limits import Charge, FlowEvent
from aegis.errors import StoreError
from aegis.stores.usage import Acquired, Request, judge

__all__ = ["SCHEMA_VERSION", "SQLiteUsageStore"]

#: the version of this component's tables in ``aegis_schema_versions``
SCHEMA_VERSION: Final = 1
_COMPONENT: Final = "usage"
#: PRAGMA application_id of Aegis databases ("AEGS")
_APPLICATION_ID: Final = 0x41454753
#: sweep rows past their window once per this many reservations
_SWEEP_EVERY: Final = 512

_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS aegis_schema_versions (
        component TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS aegis_usage (
        id INTEGER PRIMARY KEY,
        bucket TEXT NOT NULL,
        at REAL NOT NULL,
        units INTEGER NOT NULL,
        expires REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS aegis_usage_bucket ON aegis_usage (bucket, at)",
    """CREATE TABLE IF NOT EXISTS aegis_usage_totals (
        bucket TEXT PRIMARY KEY,
        units INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS aegis_flow_events (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        action_type TEXT NOT NULL,
        action_target TEXT NOT NULL,
        params TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS aegis_flow_events_session ON aegis_flow_events (session_id, at)",
)
# A counter's total is kept in aegis_usage_totals, so that a check reads one
# row instead of summing its window: the rows that left the window since the
# last reservation are summed (usually none) and then deleted.
_COUNT: Final = (
    "SELECT (SELECT units FROM aegis_usage_totals WHERE bucket = ?1),"
    " COALESCE(SUM(units), 0), MAX(typeof(units) != 'integer')"
    " FROM aegis_usage WHERE bucket = ?1 AND at <= ?2"
)
_INSERT: Final = "INSERT INTO aegis_usage (bucket, at, units, expires) VALUES (?, ?, ?, ?)"
_SET_TOTAL: Final = (
    "INSERT INTO aegis_usage_totals (bucket, units) VALUES (?, ?)"
    " ON CONFLICT (bucket) DO UPDATE SET units = excluded.units"
)
_SUBTRACT: Final = "UPDATE aegis_usage_totals SET units = units - ? WHERE bucket = ?"
_MAX_TOTAL: Final = 2**63 - 1

_HINTS: Final = (
    ("not a database", "it is not an Aegis database; use the one your runtime writes"),
    ("locked", "another process held it longer than the busy timeout; retry or raise it"),
    ("busy", "another process held it longer than the busy timeout; retry or raise it"),
    ("readonly", "the file or its folder is read-only; check the permissions"),
    ("unable to open", "check that the folder exists and is writable"),
    ("disk i/o", "check free disk space and the file system"),
    ("full", "the disk is full; free some space"),
    ("no such", "the usage tables are missing or damaged; was the file edited by hand?"),
)


class SQLiteUsageStore:
    """A :class:`~aegis.stores.usage.UsageStore` in a SQLite file (the audit trail's).

    Args:
        db_path: the database file; usually the audit trail's, which must be
            an Aegis database or not exist yet (it is then created as one).
        busy_timeout: seconds to wait for another writer before failing.

    Calls run on the calling thread, like the audit writes: a process that
    holds the file longer than ``busy_timeout`` makes a check wait that long,
    then raise :class:`~aegis.errors.StoreError`.
    """

    def __init__(self, db_path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self._path = str(db_path)
        if self._path == ":memory:" or not self._path:
            raise StoreError(
                "a SQLite usage store needs a file that other processes can open, not"
                f" {self._path!r}; use aegis.stores.usage.MemoryUsageStore for one process"
            )
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._closed = False
        self._since_sweep = 0

    @property
    def db_path(self) -> str:
        """The path of the database file."""
        return self._path

    def __repr__(self) -> str:
        return f"<SQLiteUsageStore {self._path!r}{' closed' if self._closed else ''}>"

    # -- connection ------------------------------------------------------------

    def _error(self, doing: str, exc: BaseException) -> StoreError:
        text = str(exc)
        hint = next(
            (hint for key, hint in _HINTS if key in text.lower()),
            "the file may be damaged; run 'aegis audit verify' on it",
        )
        return StoreError(f"cannot {doing} usage counters in {self._path!r}: {text}; {hint}")

    def _connect(self) -> sqlite3.Connection:
        # Callers hold self._lock and translate sqlite3 errors.
        if self._closed:
            raise StoreError(f"the usage store for {self._path!r} is closed; create a new one")
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # A forked child opens its own connection and leaves the parent's alone.
        self._conn = None
        if not os.path.exists(self._path) or os.path.getsize(self._path) == 0:
            self._create_audit()
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,  # BEGIN IMMEDIATE / COMMIT are ours
            check_same_thread=False,  # self._lock guards it
        )
        try:
            # As the audit's connection does: NORMAL survives the death of the
            # process, and checkpoints (which fsync) come every ~8 MiB of WAL
            # rather than every 1,000 small pages, a stall every few hundred actions.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=8192")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _create_audit(self) -> None:
        # The file belongs to the audit trail: let it create the file as an
        # Aegis database before our tables join it, so that the audit never
        # finds strangers' tables in a file it believes new.
        from aegis.runtime.audit import AuditLogger  # noqa: PLC0415  # only for new files

        audit = AuditLogger(self._path, busy_timeout=self._busy_timeout)
        try:
            audit.head()
        finally:
            audit.close()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id != _APPLICATION_ID:
            raise StoreError(
                f"{self._path!r} is not an Aegis database (application_id {app_id}); use the"
                " audit database your runtime writes"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _TABLES:
                conn.execute(statement)
            row = conn.execute(
                "SELECT version FROM aegis_schema_versions WHERE component = ?", (_COMPONENT,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO aegis_schema_versions (component, version) VALUES (?, ?)",
                    (_COMPONENT, SCHEMA_VERSION),
                )
            elif not isinstance(row[0], int) or row[0] > SCHEMA_VERSION:
                raise StoreError(
                    f"{self._path!r} has usage tables of version {row[0]!r}, newer than this"
                    f" Aegis reads ({SCHEMA_VERSION}); upgrade aegis-runtime"
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _run(self, doing: str, work: Any) -> Any:
        with self._lock:
            try:
                return work(self._connect())
            except sqlite3.Error as exc:
                raise self._error(doing, exc) from exc

    # -- the protocol ----------------------------------------------------------

    def acquire(
        self, charges: Sequence[Charge], now: float, *, reserve: bool, over: bool
    ) -> Acquired:
        """See :meth:`aegis.stores.usage.UsageStore.acquire`: one ``BEGIN IMMEDIATE``."""
        if reserve:
            return self.acquire_many([Request(tuple(charges), now, over)])[0]

        def peek(conn: sqlite3.Connection) -> Acquired:
            used = [_count(conn, c, now, self._path)[0] for c in charges]
            return Acquired(tuple(used), judge(charges, used), None)

        result: Acquired = self._run("count", peek)
        return result

    def acquire_many(self, requests: Sequence[Request]) -> list[Acquired]:
        """See :meth:`aegis.stores.usage.UsageStore.acquire_many`: one ``BEGIN IMMEDIATE``."""

        def work(conn: sqlite3.Connection) -> list[Acquired]:
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

        result: list[Acquired] = self._run("count", work)
        return result

    def _acquire_one(self, conn: sqlite3.Connection, request: Request) -> Acquired:
        charges, now = request.charges, request.now
        counts = [_count(conn, c, now, self._path) for c in charges]
        used = [live for live, _ in counts]
        exceeded = judge(charges, used)
        reservation = None
        if exceeded is None or request.over:
            reservation = tuple(
                _reserve(conn, c, now, live=live, expired=expired, path=self._path)
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

        self._run("release", work)

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

        self._run("remember", work)

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
        rows = self._run("read", lambda conn: conn.execute(sql, args).fetchall())
        return [_event(row, self._path) for row in rows]

    def close(self) -> None:
        """Close the connection; later calls raise. Calling it again does nothing."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                conn.close()

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
    row = conn.execute(_INSERT, (charge.bucket, now, charge.amount, now + charge.window))
    conn.execute(_SET_TOTAL, (charge.bucket, total))
    return int(row.lastrowid or 0)


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
