"""Usage counters in the audit trail's SQLite file, shared by every process that opens it.

The tables live beside the audit records, in the same file, versioned as
the ``usage`` component of ``aegis_schema_versions``. Beside an
:class:`~aegis.runtime.audit.AuditLogger` the store shares the audit's
connection (its :class:`~aegis.stores.sqlite.connection.SQLiteDatabase`):
two connections to one file would make each re-read what the other wrote.
A check and its reservation are one ``BEGIN IMMEDIATE`` transaction (for an
action run on its own, the transaction that appends its start record: see
:meth:`SQLiteUsageStore.guard`): SQLite lets one writer at a time in, so two
processes can never both see room for the last action under a limit.

A reservation is one row of ``aegis_usage``, keyed by counter, time and
sequence, carrying the counter's running total: the units in a window are
the newest row's total minus the total before the window's first row, two
seeks in one B-tree, and a reservation writes one row. Rows past their
window are forgotten as a counter goes on, and now and then in counters
nobody charges any more. A connection that reserves with start records
keeps what it read of each counter and, while ``PRAGMA data_version`` says
no other connection committed, counts from that instead of reading it
again (see ``_Seen``).

Example::

    usage = open_stores("aegis_audit.db").usage    # on the audit's connection
    usage = SQLiteUsageStore("aegis_audit.db")     # or on its own connection
    runtime = Runtime(executor=..., policy=..., usage_store=usage)

Size: the SQLite usage counters and the guard that writes them in the audit's
transaction share the known-counter cache and the statements; split, the one-
commit start could drift from the ordinary path.
"""

from __future__ import annotations

import math
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import aegis.core.action as _action
from aegis.core.limits import Charge, FlowEvent
from aegis.errors import StoreError
from aegis.stores.sqlite.connection import SQLiteDatabase
from aegis.stores.sqlite.schema import migrate
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

__all__ = ["SCHEMA_VERSION", "SQLiteUsageStore", "StartGuard"]

#: the version of this component's tables in ``aegis_schema_versions``
SCHEMA_VERSION: Final = 6
_COMPONENT: Final = "usage"
_T = TypeVar("_T")
#: forget rows past their window, in counters nobody charges any more, this often (seconds)
_SWEEP_EVERY: Final = 600.0
#: counters a sweep looks at, at most
_SWEEP_COUNTERS: Final = 500
# the counter after ``?`` by name, and when its oldest row leaves its window
_NEXT_COUNTER: Final = (
    "SELECT bucket, expires FROM aegis_usage WHERE bucket > ? ORDER BY bucket, at, seq LIMIT 1"
)
#: a session's flow events, to narrow and order (see SQLiteUsageStore.latest_event)
_LATEST: Final = (
    "SELECT session_id, action_type, action_target, params, at FROM aegis_flow_events"
    " WHERE session_id = ?"
)
#: notes a flow event (see _remember)
_NOTE: Final = (
    "INSERT INTO aegis_flow_events (session_id, action_type, action_target, params, at)"
    " VALUES (?, ?, ?, ?, ?)"
)
#: a counter forgets its own rows past the window every this many reservations
_TRIM_EVERY: Final = 64

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
    1: (
        "ALTER TABLE aegis_usage ADD COLUMN seen INTEGER",
        """CREATE TRIGGER aegis_usage_count AFTER INSERT ON aegis_usage BEGIN
            INSERT INTO aegis_usage_totals (bucket, units) VALUES (NEW.bucket, NEW.units)
            ON CONFLICT (bucket) DO UPDATE SET units = units + excluded.units;
        END""",
    ),
    # One table, clustered by counter and time, whose rows carry their
    # counter's running total: a reservation writes one row (one B-tree
    # page, where version 2 wrote three), and a window's sum is the newest
    # total minus the total before the window's first row.
    2: (
        """CREATE TABLE aegis_usage_v3 (
            bucket TEXT NOT NULL,
            at REAL NOT NULL,
            seq INTEGER NOT NULL,
            units INTEGER NOT NULL,
            total INTEGER NOT NULL,
            expires REAL NOT NULL,
            PRIMARY KEY (bucket, at, seq)
        ) WITHOUT ROWID""",
        """INSERT INTO aegis_usage_v3 (bucket, at, seq, units, total, expires)
            SELECT bucket, at, ROW_NUMBER() OVER counter, units, SUM(units) OVER counter, expires
            FROM aegis_usage
            WINDOW counter AS (PARTITION BY bucket ORDER BY at, id ROWS UNBOUNDED PRECEDING)""",
        "DROP TRIGGER aegis_usage_count",
        "DROP TABLE aegis_usage",
        "DROP TABLE aegis_usage_totals",
        "ALTER TABLE aegis_usage_v3 RENAME TO aegis_usage",
    ),
    # The longest look-back of flow conditions any policy declared: flow
    # events older than it are deleted (see SQLiteUsageStore.forget_events).
    # One row; NULL seconds: a condition looks over a whole session.
    3: (
        """CREATE TABLE aegis_flow_horizon (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seconds REAL
        )""",
    ),
    # A flow condition naming an exact type and target finds the session's
    # newest such event with one seek, however many the session holds (see
    # SQLiteUsageStore.latest_event).
    4: (
        "CREATE INDEX aegis_flow_events_kind"
        " ON aegis_flow_events (session_id, action_type, action_target, at)",
    ),
    # Where a session's flow history was deleted: its events up to ``until``
    # may be gone, so a condition looking back that far cannot say "never"
    # (see SQLiteUsageStore.forgotten).
    5: (
        """CREATE TABLE aegis_flow_gaps (
            session_id TEXT PRIMARY KEY,
            until REAL NOT NULL
        ) WITHOUT ROWID""",
    ),
}
#: notes that a session's events up to a time were deleted (the latest such time is kept)
_GAP: Final = (
    "INSERT INTO aegis_flow_gaps (session_id, until) VALUES (?, ?) ON CONFLICT (session_id)"
    " DO UPDATE SET until = max(until, excluded.until)"
)

# A counter's newest row, and the total before the first row inside the
# window (None when the window is empty; text when that row holds nonsense):
# units in the window = newest total - that. Both are seeks in the primary key.
_COUNT: Final = (
    "SELECT at, seq, total, (SELECT CASE WHEN typeof(total) = 'integer'"
    " AND typeof(units) = 'integer' AND units >= 0 THEN total - units ELSE 'edited' END"
    " FROM aegis_usage WHERE bucket = ?1 AND at > ?2 ORDER BY at, seq LIMIT 1)"
    " FROM aegis_usage WHERE bucket = ?1 ORDER BY at DESC, seq DESC LIMIT 1"
)
_INSERT: Final = (
    "INSERT INTO aegis_usage (bucket, at, seq, units, total, expires) VALUES (?, ?, ?, ?, ?, ?)"
)
_MAX_TOTAL: Final = 2**63 - 1
#: changes when another connection (a process, a hand edit) commits to the file; not for our own
_DATA_VERSION: Final = "PRAGMA data_version"
# A counter's rows inside the window, oldest first, for the known counters
# (see _Seen); ?3 caps them at _FRONT rows.
_FRONT_ROWS: Final = (
    "SELECT at, total, units FROM aegis_usage WHERE bucket = ?1 AND at > ?2"
    " ORDER BY at, seq LIMIT ?3"
)
#: rows of a counter's window kept in memory, at most, per counter
_FRONT: Final = 64
#: counters kept in memory, at most (past that, they are forgotten and read again)
_KNOWN: Final = 1024
#: after this many transactions in a row that found another connection's commits...
_BUSY_AFTER: Final = 4
#: ...this many reservations count from the file without asking whether anyone wrote
_BUSY_FOR: Final = 64

#: where a counter stands: its newest row's (at, seq, total), and the units in the window
_Head = tuple[float, int, int, int]
_EMPTY: Final[_Head] = (0.0, 0, 0, 0)
#: a reservation, to release it: (bucket, at, seq) of its row
Token = tuple[str, float, int]


class _Known:
    """Where one counter stands: its newest row, and what is known of its window.

    Kept by a connection between transactions (see :class:`_Seen`), or read
    for one transaction only (then ``front`` is empty and not ``complete``).

    ``front`` holds ``(at, total before the row)`` of the counter's rows
    after ``boundary``, oldest first: all of them up to the newest when
    ``complete``, else the oldest few. ``boundary`` is the latest window
    start asked about (of any window): it only moves forward, and a start
    before it needs the file again.
    """

    __slots__ = ("at", "boundary", "complete", "front", "seq", "total")

    def __init__(
        self, head: _Head, front: deque[tuple[float, int]], complete: bool, boundary: float
    ) -> None:
        self.at, self.seq, self.total, _ = head
        self.front = front
        self.complete = complete
        self.boundary = boundary

    def used(self, boundary: float) -> int | None:
        """The units in the window after ``boundary``; ``None`` when only the file can tell."""
        if boundary < self.boundary:
            return None  # a clock went back: rows let go of may count again
        self.boundary = boundary
        front = self.front
        while front and front[0][0] <= boundary:
            front.popleft()
        if front:
            return self.total - front[0][1]
        return 0 if self.complete else None

    def reserve(
        self, cur: sqlite3.Cursor, charge: Charge, now: float, path: str, seen: _Seen
    ) -> Token:
        """Add ``charge``'s row after the counter's newest (inside a write); return its key."""
        last_at, total, amount = self.at, self.total, charge.amount
        # A clock behind the newest row (another machine's) counts the charge at
        # that row's time: it then stays in the window a little longer, never less.
        at = float(last_at if last_at > now else now)  # max(), without its call
        if total + amount > _MAX_TOTAL:
            total = _rebase(cur, charge, now, total, path, seen=seen)
        seq = self.seq + 1
        bucket = charge.bucket
        cur.execute(_INSERT, (bucket, at, seq, amount, total + amount, at + charge.window))
        self.at, self.seq, self.total = at, seq, total + amount
        if self.complete:
            if len(self.front) < _FRONT:
                self.front.append((at, total))
            else:
                self.complete = False  # the oldest rows are enough; the rest is read later
        if seq % _TRIM_EVERY == 0:
            _forget(cur, bucket, now, seen)  # now and then a counter forgets its old rows
        return (bucket, at, seq)


class _Seen:
    """What one connection knows of the counters, true while no other connection commits.

    SQLite's ``PRAGMA data_version`` changes when another connection
    commits to the file (another process, a hand edit), never for the
    connection's own commits. Read inside the write transaction, an
    unchanged version means every counter is as this connection left it,
    so a counter it knows is counted without reading it: one small
    statement instead of a query and its checks. Every write of this module
    keeps that true: a start's reservation updates its counter at once and
    is kept as ``pending`` until its start is seen to commit (else the next
    guard forgets it all); any other write (a group of reservations, a
    release, forgetting rows) drops the counter. While other connections
    keep committing, the version is not even asked for a while.
    """

    __slots__ = ("busy", "counters", "pending", "stirred", "version")

    def __init__(self) -> None:
        self.version: int | None = None
        self.counters: dict[str, _Known] = {}
        #: the guard that reserved last: until its ``committed`` is set, what is known is unsure
        self.pending: StartGuard | None = None
        self.stirred = 0  # transactions in a row that found another connection's commits
        self.busy = 0  # reservations still to count from the file without asking

    def drop(self, bucket: str) -> None:
        """Forget ``bucket``: it was written some other way."""
        self.counters.pop(bucket, None)

    def forget_all(self) -> None:
        """Forget every counter (the version is not known to hold)."""
        self.counters.clear()
        self.version = None


def _seen(db: SQLiteDatabase) -> _Seen:
    """The counters known on ``db``'s current connection."""
    seen = db.kept.get(_COMPONENT)
    if type(seen) is not _Seen:
        seen = db.kept[_COMPONENT] = _Seen()
    return seen


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
        self._seen = _Seen()  # replaced by the connection's own with each new connection
        self._closed = False
        self._swept = 0.0  # when this store last forgot rows past their window
        self._sweep_from = ""  # the counter an unfinished sweep goes on after
        # the session a walk of the flow events goes on from, and whether it is
        # itself still to do (see forget_events)
        self._events_from: tuple[str, bool] = ("", True)
        self._steady = SteadyClock()  # forget_events counts from it when the wall clock is ahead

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
                self._ready_on(conn)
            try:
                return work(conn)
            except UnicodeEncodeError as exc:
                raise unencodable(doing, repr(self.db.path), exc) from exc

    # -- the protocol ----------------------------------------------------------

    def acquire(
        self, charges: Sequence[Charge], now: float, *, reserve: bool, over: bool
    ) -> Acquired:
        """See :meth:`aegis.stores.usage.UsageStore.acquire`: one ``BEGIN IMMEDIATE``."""
        if reserve:
            return self.acquire_many([Request(tuple(charges), now, over)])[0]

        def peek(conn: sqlite3.Connection) -> Acquired:
            cur = conn.cursor()
            used = [_head(cur, c, now, self.db.path)[3] for c in charges]
            return Acquired(tuple(used), judge(charges, used), None)

        result: Acquired = self._run("count usage in", peek)
        return result

    def acquire_many(self, requests: Sequence[Request]) -> list[Acquired]:
        """See :meth:`aegis.stores.usage.UsageStore.acquire_many`: one ``BEGIN IMMEDIATE``."""

        def work(conn: sqlite3.Connection) -> list[Acquired]:
            seen = self._seen
            cur = conn.cursor()  # one for the transaction's statements
            cur.execute("BEGIN IMMEDIATE")
            try:
                out = [self._acquire_one(cur, request, seen) for request in requests]
                if requests:
                    self._sweep(cur, max(r.now for r in requests), seen)
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            return out

        result: list[Acquired] = self._run("count usage in", work)
        return result

    def _acquire_one(self, cur: sqlite3.Cursor, request: Request, seen: _Seen) -> Acquired:
        """Count and reserve one request's charges, inside a write transaction."""
        charges, now, path = request.charges, request.now, self.db.path
        for charge in charges:
            seen.drop(charge.bucket)  # written here, not kept
        counted = [_read(cur, charge, now, path) for charge in charges]
        used = tuple(units for units, _ in counted)
        exceeded = judge(charges, used)
        if exceeded is not None and not request.over:
            return Acquired(used, exceeded, None)
        tokens = tuple(
            counter.reserve(cur, charge, now, path, seen)
            for charge, (_, counter) in zip(charges, counted, strict=True)
        )
        return Acquired(used, exceeded, tokens)

    def _sweep(self, cur: sqlite3.Cursor, now: float, seen: _Seen) -> None:
        """Now and then, forget rows past their window in every counter (inside a transaction).

        A counter that is charged forgets its own old rows (see ``_Known.reserve``);
        this catches the ones nobody charges any more (per-session keys). It
        walks the counters by name, a seek each, looking at each one's oldest
        row: at most ``_SWEEP_COUNTERS`` of them per sweep, so that no action
        waits long for it; an unfinished walk goes on 10 seconds later.
        """
        if abs(now - self._swept) < _SWEEP_EVERY:
            return
        bucket = self._sweep_from
        for _ in range(_SWEEP_COUNTERS):
            row = cur.execute(_NEXT_COUNTER, (bucket,)).fetchone()
            if row is None:  # walked them all
                self._swept, self._sweep_from = now, ""
                return
            bucket, oldest_expires = row
            if type(oldest_expires) in (float, int) and oldest_expires <= now:
                _forget(cur, bucket, now, seen)
        self._swept, self._sweep_from = now - _SWEEP_EVERY + 10.0, bucket

    def release(self, reservation: Sequence[object]) -> None:
        """See :meth:`aegis.stores.usage.UsageStore.release`."""
        tokens = [_token(item, self.db.path) for item in reservation]

        def work(conn: sqlite3.Connection) -> None:
            seen = self._seen
            for bucket, _, _ in tokens:
                seen.drop(bucket)  # rewritten here, not kept
            conn.execute("BEGIN IMMEDIATE")
            try:
                for bucket, at, seq in tokens:
                    row = conn.execute(
                        "SELECT units FROM aegis_usage WHERE bucket = ? AND at = ? AND seq = ?",
                        (bucket, at, seq),
                    ).fetchone()
                    if row is None or not row[0]:
                        continue  # forgotten, or released already: it no longer counts
                    # The row stays, counting nothing (its sequence number is
                    # never given again), and the running totals from it on
                    # no longer include it.
                    conn.execute(
                        "UPDATE aegis_usage SET units = 0 WHERE bucket = ? AND at = ? AND seq = ?",
                        (bucket, at, seq),
                    )
                    conn.execute(
                        "UPDATE aegis_usage SET total = total - ?"
                        " WHERE bucket = ? AND (at, seq) >= (?, ?)",  # a range of the key
                        (row[0], bucket, at, seq),
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        self._run("release usage in", work)

    def remember(self, event: FlowEvent) -> None:
        """See :meth:`aegis.stores.usage.UsageStore.remember`."""
        # One statement: autocommit makes it its own transaction.
        self._run("note a flow event in", lambda conn: _remember(conn.cursor(), event))

    def remember_many(self, events: Sequence[FlowEvent]) -> list[int]:
        """Keep ``events`` in one transaction: concurrent actions of a process share a commit.

        Returns their row ids, for :meth:`drop_events`.
        """
        if len(events) == 1:
            event = events[0]
            # One statement: autocommit makes it its own transaction.
            return [self._run("note a flow event in", lambda conn: _remember(conn.cursor(), event))]

        def work(conn: sqlite3.Connection) -> list[int]:
            cur = conn.cursor()
            cur.execute("BEGIN")
            try:
                ids = [_remember(cur, event) for event in events]
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            return ids

        noted: list[int] = self._run("note flow events in", work)
        return noted

    def drop_events(self, event_ids: Sequence[object]) -> None:
        """Delete the events :meth:`remember_many` gave these ids: their actions never ran.

        One statement (its own transaction); an id no longer there is passed over.
        """
        ids = [_event_id(item, self.db.path) for item in event_ids]
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        self._run(
            "delete flow events of actions that did not run in",
            lambda conn: conn.execute(f"DELETE FROM aegis_flow_events WHERE id IN ({marks})", ids),
        )

    def guard(self, request: Request | None, event: FlowEvent | None) -> StartGuard:
        """A :class:`~aegis.stores.sqlite.connection.Guard` for an action about to run.

        Given to the audit store sharing this store's database
        (:meth:`~aegis.stores.sqlite.audit.SQLiteAuditStore.append_guarded`),
        it reserves ``request`` if all its charges fit, and keeps ``event``,
        in the transaction that appends the action's start record: one
        commit for both. If a charge does not fit nothing is written, and
        the guard's :attr:`StartGuard.acquired` tells what was found.
        """
        return StartGuard(self, request, event)

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
        return [event_from_row(row, f"in {self.db.path!r}") for row in rows]

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

        With type and target, the rows come in time order from the index on
        ``(session_id, action_type, action_target, at)``; else from the one
        on ``(session_id, at)``, read backwards, the exact names a filter on
        each row (``+``: the planner must not take the first index, whose
        rows of one type are not in time order, and sort them all). SQLite
        steps to the next row only when asked: the first accepted row ends
        the reading.
        """
        sql = _LATEST
        args: list[Any] = [session_id]
        if action_type is not None and action_target is not None:
            sql += " AND action_type = ? AND action_target = ?"
            args += (action_type, action_target)
        elif action_type is not None:
            sql += " AND +action_type = ?"
            args.append(action_type)
        elif action_target is not None:
            sql += " AND +action_target = ?"
            args.append(action_target)
        if since is not None:
            sql += " AND at > ?"
            args.append(since)
        if passing is not None:
            sql += " AND id <> ?"
            args.append(_event_id(passing, self.db.path))
        sql += " ORDER BY at DESC, id DESC" + (" LIMIT 1" if where is None else "")
        where_in = f"in {self.db.path!r}"

        def work(conn: sqlite3.Connection) -> FlowEvent | None:
            cur = conn.execute(sql, args)
            try:
                for row in cur:
                    event = event_from_row(row, where_in)
                    if where is None or where(event):
                        return event
                return None
            finally:
                cur.close()

        return self._run("read flow events in", work)

    def forgotten(self, session_id: str) -> float | None:
        """See :meth:`aegis.stores.usage.UsageStore.forgotten`: one seek in ``aegis_flow_gaps``."""

        def work(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT until FROM aegis_flow_gaps WHERE session_id = ?", (session_id,)
            ).fetchone()
            return _gap(row, self.db.path)

        result: float | None = self._run("read flow history gaps in", work)
        return result

    def cover_events(self, session_id: str, until: float) -> bool:
        """See :meth:`aegis.stores.base.CoversEvents.cover_events`: one ``BEGIN IMMEDIATE``.

        SQLite's write lock orders it with every :meth:`forget_events`: a
        horizon declared by another process is either seen here or declared
        after the gap is written.
        """

        def work(conn: sqlite3.Connection) -> bool:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute("SELECT seconds FROM aegis_flow_horizon WHERE id = 1").fetchone()
                covered = row is not None and needs_no_events(row[0])
                if covered:
                    cur.execute(_GAP, (session_id, until))
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            return covered

        result: bool = self._run("note a gap in the flow history in", work)
        return result

    def forget_events(self, horizon: float | None, now: float) -> bool:
        """See :meth:`aegis.stores.usage.UsageStore.forget_events`: one ``BEGIN IMMEDIATE``.

        The horizon is kept in ``aegis_flow_horizon`` (the longest declared).
        Deleting walks the sessions by name, a seek each in the index on
        ``(session_id, at)``, as the counters' sweep walks the counters:
        at most ``FORGET_SESSIONS`` sessions and ``FORGET_ROWS`` events per
        call, then the walk goes on from there at the next call.
        """

        def work(conn: sqlite3.Connection) -> bool:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                more = self._forget_events(cur, horizon, now)
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            return more

        result: bool = self._run("forget old flow events in", work)
        return result

    def _forget_events(self, cur: sqlite3.Cursor, horizon: float | None, now: float) -> bool:
        row = cur.execute("SELECT seconds FROM aegis_flow_horizon WHERE id = 1").fetchone()
        kept = widest(row[0], horizon) if row is not None else horizon
        if row is None or kept != row[0]:
            cur.execute(
                "INSERT INTO aegis_flow_horizon (id, seconds) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET seconds = excluded.seconds",
                (kept,),
            )
        if kept is None:
            return False  # some policy looks over whole sessions: every event may be needed
        # the time that really passed, when the wall clock was stepped ahead (see SteadyClock)
        cutoff = self._steady.cap(now) - kept - EVENT_MARGIN
        rows, (session, inclusive) = FORGET_ROWS, self._events_from
        for _ in range(FORGET_SESSIONS):
            found = cur.execute(
                "SELECT session_id, at FROM aegis_flow_events"
                f" WHERE session_id {'>=' if inclusive else '>'} ?"
                " ORDER BY session_id, at LIMIT 1",
                (session,),
            ).fetchone()
            if found is None:  # walked them all
                self._events_from = ("", True)
                return False
            (session, oldest), inclusive = found, False
            if type(oldest) in (float, int) and oldest <= cutoff:
                cur.execute(
                    "DELETE FROM aegis_flow_events WHERE id IN (SELECT id FROM aegis_flow_events"
                    " WHERE session_id = ? AND at <= ? ORDER BY at LIMIT ?)",
                    (session, cutoff, rows),
                )
                gone = cur.rowcount
                if gone:  # what went: a condition looking back past it cannot say never
                    cur.execute(_GAP, (session, cutoff))
                rows -= gone
                if rows <= 0:  # this session may have more: start the next call with it
                    self._events_from = (session, True)
                    return True
        self._events_from = (session, False)
        return True

    def _ready_on(self, conn: sqlite3.Connection) -> None:
        if self._closed:
            raise StoreError(f"the usage store for {self.db.path!r} is closed; create a new one")
        if self._ready is not conn:
            migrate(conn, self.db.path, _COMPONENT, SCHEMA_VERSION, USAGE_MIGRATIONS)
            self._ready = conn
            self._seen = _seen(self.db)  # the new connection's, known to nothing yet

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


class StartGuard:
    """An action's charges and flow event, written with its start record (see ``guard``)."""

    __slots__ = ("acquired", "committed", "event", "ready", "request", "store")

    store: SQLiteUsageStore
    request: Request | None
    event: FlowEvent | None
    #: what the counters held, when a charge did not fit
    acquired: Acquired | None
    #: the connection the usage tables are ready on (see Guard.ready)
    ready: sqlite3.Connection | None
    #: set by the audit store once its transaction committed: what the
    #: connection knows, with this start's row, then holds (see _Seen)
    committed: bool

    def __init__(
        self, store: SQLiteUsageStore, request: Request | None, event: FlowEvent | None
    ) -> None:
        self.store = store
        self.request = request
        self.event = event
        self.acquired = None
        self.ready = store._ready
        self.committed = False

    def prepare(self, conn: sqlite3.Connection) -> None:
        """The usage tables, created or migrated on ``conn`` (outside the transaction)."""
        store = self.store
        if store._ready is not conn:
            store._ready_on(conn)
        self.ready = conn

    def __call__(self, cur: sqlite3.Cursor) -> bool:
        """Reserve the charges if they all fit, and keep the event; ``False`` if one does not."""
        store = self.store
        if store._closed:
            raise StoreError(f"the usage store for {store.db.path!r} is closed; create a new one")
        seen = store._seen
        pending = seen.pending
        if pending is not None and not pending.committed:
            # the last reservation's commit was not seen: it may or may not count
            seen.pending = None
            seen.forget_all()
        request = self.request
        if request is not None:
            now, path = request.now, store.db.path
            # What _acquire_one does (never over the limit), for a lone charge first.
            if len(request.charges) == 1:
                charge = request.charges[0]
                used, counter = _count(cur, seen, charge, now, path)
                if used + charge.amount > charge.maximum:
                    self.acquired = Acquired((used,), 0, None)
                    return False
                # What is known changes now; until the audit store sets this guard's
                # ``committed``, the next count forgets it all (a start that did not commit).
                seen.pending = self
                counter.reserve(cur, charge, now, path, seen)
            else:
                acquired = store._acquire_one(cur, Request(request.charges, now, over=False), seen)
                if acquired.exceeded is not None:
                    self.acquired = acquired
                    return False
            if abs(now - store._swept) >= _SWEEP_EVERY:  # _sweep's own test, without its call
                store._sweep(cur, now, seen)
        event = self.event
        if event is not None:
            # _remember, inline (every action let through comes here), with the
            # params text canonical_json kept when it decided them (PARAMS_TEXT)
            params = event.params
            cached = _action.PARAMS_TEXT
            text = cached[1] if cached[0] is params else params_json(params)
            try:
                cur.execute(_NOTE, (event.session_id, event.type, event.target, text, event.at))
            except UnicodeEncodeError as exc:  # the audit's transaction rolls back
                raise unencodable("keep a flow event in", repr(store.db.path), exc) from exc
        return True


def _gap(row: Sequence[Any] | None, path: str) -> float | None:
    """A row of ``aegis_flow_gaps`` read back: the time up to which events may be gone.

    Raises:
        StoreError: not a time (edited by hand): what is gone cannot be told.
    """
    if row is None:
        return None
    until = row[0]
    if type(until) not in (float, int) or math.isnan(until):
        raise StoreError(
            f"the flow history gaps in {path!r} hold {until!r}, not a time; the table"
            " aegis_flow_gaps was edited by hand: set until to the time events were deleted up to"
        )
    return float(until)


def _remember(cur: sqlite3.Cursor, event: FlowEvent) -> int:
    """Insert ``event``; its row id."""
    cur.execute(
        _NOTE, (event.session_id, event.type, event.target, params_json(event.params), event.at)
    )
    return cur.lastrowid  # type: ignore[return-value]  # set by the INSERT just made


def _event_id(item: object, path: str) -> int:
    """A flow event's row id, as :meth:`SQLiteUsageStore.remember_many` gave it."""
    if type(item) is not int:
        raise StoreError(f"{item!r} is not the id of a flow event in {path!r}")
    return item


def _edited(path: str, what: str) -> StoreError:
    return StoreError(
        f"the usage counters in {path!r} hold {what}; the table aegis_usage was edited by"
        " hand: delete the odd rows (or the counter's rows) to count again"
    )


def _head(cur: sqlite3.Cursor, charge: Charge, now: float, path: str) -> _Head:
    """Where ``charge``'s counter stands: its newest row and the units in the window."""
    row = cur.execute(_COUNT, (charge.bucket, now - charge.window)).fetchone()
    if row is None:
        return _EMPTY
    at, seq, total, before = row
    if type(at) not in (float, int) or type(seq) is not int or type(total) is not int:
        raise _edited(path, "something other than times and whole units")
    if before is None:
        return (float(at), seq, total, 0)  # nothing in the window
    if type(before) is not int:
        raise _edited(path, "something other than whole units")
    used = total - before
    if used < 0:
        raise _edited(path, "running totals that do not add up")
    return (float(at), seq, total, used)


def _read(cur: sqlite3.Cursor, charge: Charge, now: float, path: str) -> tuple[int, _Known]:
    """The units in ``charge``'s window, and where its counter stands, read from the file."""
    head = _head(cur, charge, now, path)
    return head[3], _Known(head, deque(), False, now - charge.window)


def _count(
    cur: sqlite3.Cursor, seen: _Seen, charge: Charge, now: float, path: str
) -> tuple[int, _Known]:
    """The units in ``charge``'s window and where its counter stands (inside a write).

    From memory while ``seen`` holds; else read, and kept when the file is quiet.
    """
    if seen.busy:
        seen.busy -= 1
        return _read(cur, charge, now, path)
    version = cur.execute(_DATA_VERSION).fetchone()[0]
    if version != seen.version:  # another connection committed: know nothing until it stops
        seen.counters.clear()
        seen.version = version
        seen.stirred += 1
        if seen.stirred >= _BUSY_AFTER:
            seen.stirred, seen.busy, seen.version = 0, _BUSY_FOR, None
        return _read(cur, charge, now, path)
    if seen.stirred:
        seen.stirred = 0
    boundary = now - charge.window
    known = seen.counters.get(charge.bucket)
    if known is not None:
        used = known.used(boundary)
        if used is not None:
            return used, known
    head = _head(cur, charge, now, path)
    try:
        known = _load(cur, charge, head, boundary, path)
    except StoreError:  # odd rows that the count itself does not read: read it every time
        seen.drop(charge.bucket)
        return head[3], _Known(head, deque(), False, boundary)
    if len(seen.counters) >= _KNOWN:
        seen.counters.clear()
    seen.counters[charge.bucket] = known
    return head[3], known


def _load(cur: sqlite3.Cursor, charge: Charge, head: _Head, boundary: float, path: str) -> _Known:
    """What to know of ``charge``'s counter: ``head`` and its oldest rows in the window."""
    front: deque[tuple[float, int]] = deque()
    complete = True
    if head is not _EMPTY and head[0] > boundary:  # else the window is empty
        rows = cur.execute(_FRONT_ROWS, (charge.bucket, boundary, _FRONT)).fetchall()
        for at, total, units in rows:
            if (
                type(at) not in (float, int)
                or type(total) is not int
                or type(units) is not int
                or units < 0
            ):
                raise _edited(path, "something other than times and whole units")
            front.append((float(at), total - units))
        complete = len(rows) < _FRONT
        if not rows or (complete and rows[-1][1] != head[2]) or head[2] - front[0][1] != head[3]:
            raise _edited(path, "running totals that do not add up")
    return _Known(head, front, complete, boundary)


def _rebase(
    cur: sqlite3.Cursor, charge: Charge, now: float, total: int, path: str, *, seen: _Seen
) -> int:
    """Shift a counter's running totals down as they near SQLite's integers; the new newest.

    Forgets the rows past their window, then shifts every total of the
    counter so that its first row starts from 0: the differences, which are
    the counts, stay the same, and no total goes below 0.
    """
    _forget(cur, charge.bucket, now, seen)
    seen.drop(charge.bucket)
    first = cur.execute(
        "SELECT total - units FROM aegis_usage WHERE bucket = ? ORDER BY at, seq LIMIT 1",
        (charge.bucket,),
    ).fetchone()
    shift = int(first[0]) if first else total
    cur.execute("UPDATE aegis_usage SET total = total - ? WHERE bucket = ?", (shift, charge.bucket))
    total -= shift
    if total + charge.amount > _MAX_TOTAL:
        raise StoreError(
            f"the counter {charge.bucket} in {path!r} would pass 2**63 units; it cannot"
            " count more until older reservations leave its window"
        )
    return total


def _forget(cur: sqlite3.Cursor, bucket: str, now: float, seen: _Seen) -> None:
    """Delete a counter's oldest rows, up to the first one still inside its own window.

    Only a counter's first rows go, so the running totals of the rest still
    add up; a row reserved under a longer window (an older policy, another
    process's) keeps the rows after it until it is past its own.
    """
    live = cur.execute(
        "SELECT at, seq FROM aegis_usage WHERE bucket = ? AND expires > ? ORDER BY at, seq LIMIT 1",
        (bucket, now),
    ).fetchone()
    if live is None:
        cur.execute("DELETE FROM aegis_usage WHERE bucket = ?", (bucket,))
    else:
        cur.execute(
            # A row value, so the delete is a range of the key: with
            # ``at < ? OR (at = ? AND seq < ?)`` SQLite walked every row of
            # the counter, each 64th reservation.
            "DELETE FROM aegis_usage WHERE bucket = ? AND (at, seq) < (?, ?)",
            (bucket, live[0], live[1]),
        )
    if cur.rowcount:  # rows went: what is known of the counter may hold some of them
        seen.drop(bucket)


def _token(item: object, path: str) -> Token:
    if (
        type(item) is tuple
        and len(item) == 3
        and type(item[0]) is str
        and type(item[1]) is float
        and type(item[2]) is int
    ):
        return item
    raise StoreError(
        f"{item!r} is not a reservation of the usage store in {path!r}; release what its"
        " acquire returned"
    )
