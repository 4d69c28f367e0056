"""The audit trail in a SQLite file: one hash chain, any number of writers.

Records live in the table ``audit_log``, one column per field of
:data:`~aegis.core.record.RECORD_FIELDS`, the JSON fields as their canonical
text, exactly as hashed. Appends take SQLite's write lock (``BEGIN
IMMEDIATE``), read the head inside it and extend it, so threads and
processes sharing the file never fork the chain.

Durability (:data:`~aegis.stores.base.Durability`): in WAL mode a commit is
in the operating system's hands when it returns, so a record survives the
death of the process (even ``SIGKILL``) at every level. What survives a
power cut is what was synced: at ``"process"`` nothing is synced but at WAL
checkpoints; at ``"full"`` every commit syncs the WAL (``synchronous=FULL``);
at ``"result"``, the default, only the commits holding a final record do,
and since the WAL is one file written in order, that one sync also carries
the action's start record (and everything else committed before it). An
action thus waits for one flush, not two.

A logger that appended last knows the head, so appending one record is a
single ``INSERT`` with the next id: if another process appended meanwhile,
the id is taken, the insert fails on the primary key, nothing is written
and the append takes the locked path. That saves the BEGIN, the head read
and the COMMIT for an agent running actions one by one.

Threads appending at once (the synchronous API, several event loops) share
commits and flushes: an append that finds the connection busy queues, and
the next thread to hold the connection writes every queued append in one
transaction, flushed once if any of them must be; each thread gets its own
records, or its own copy of the error. A lone writer finds the connection
free and takes the single ``INSERT`` as before.

Size: one store class over one connection: the append's fast and locked
paths, the durability switches and the readers share its state, so they
stay together.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Final

from aegis.core.chain import EMPTY_HEAD, GENESIS_HASH, Head, VerifyReport, seal, verify_chain
from aegis.core.checkpoint import CHECKPOINT_COLUMNS, Checkpoint
from aegis.core.filters import NO_FILTERS, Filters
from aegis.core.record import (
    JSON_FIELDS,
    MAX_JSON_DEPTH,
    RECORD_FIELDS,
    UNFINISHED_MARK,
    AuditRecord,
    RecordDraft,
    RecordKind,
    export_line,
)
from aegis.errors import ConfigurationError, StoreError
from aegis.stores._waiting import Waiting
from aegis.stores.base import (
    STARTED,
    STATS_FIELDS,
    Durability,
    ReadMixin,
    SignatureCheck,
    resolve_durability,
)
from aegis.stores.sqlite.connection import (
    FLUSH_OFF,
    FLUSH_ON,
    Guard,
    SQLiteDatabase,
    store_error,
)
from aegis.stores.sqlite.schema import (
    AUDIT_MIGRATIONS,
    AUDIT_VERSION,
    check_ours,
    component_version,
    migrate,
)

__all__ = ["SQLiteAuditStore"]

_COLUMNS: Final = ", ".join(RECORD_FIELDS)


# Speed (benchmarks/calls.py --instructions; BENCHMARKS.md, "A fourth pass"):
# sqlite3 binds str and int directly but hands every None to its adapter
# lookup (about 1,200 instructions each, even with the None adapter of
# connection.py). So an INSERT leaves out the columns a record most often has
# NULL: a start record's five outcome columns, and the human decision, the
# error and the context of any record. The schema gives none of them a
# default, so a column left out is NULL, as a bound None was; every other
# column is bound as it is, None or not.
def _form(left_out: frozenset[str]) -> tuple[str, Callable[[AuditRecord], tuple[Any, ...]]]:
    """The INSERT naming every column but ``left_out``, and what picks its values from a record."""
    kept = [i for i, name in enumerate(RECORD_FIELDS) if name not in left_out]
    sql = (
        f"INSERT INTO audit_log ({', '.join(RECORD_FIELDS[i] for i in kept)}) "
        f"VALUES ({', '.join('?' * len(kept))})"
    )
    # one C call builds the plain tuple (bound faster than the named tuple)
    return sql, itemgetter(*kept)


def _forms(
    always: tuple[str, ...],
) -> dict[tuple[bool, bool, bool], tuple[str, Callable[[AuditRecord], tuple[Any, ...]]]]:
    """The forms by (human_decision, result_error, context is None), each leaving out ``always``."""
    return {
        nulls: _form(
            frozenset(always).union(
                name for name, null in zip(_OFTEN_NULL, nulls, strict=True) if null
            )
        )
        for nulls in [
            (human, error, context)
            for human in (False, True)
            for error in (False, True)
            for context in (False, True)
        ]
    }


_OFTEN_NULL: Final = ("human_decision", "result_error", "context")
_OUTCOME: Final = ("result_status", "result_error", "started_at", "completed_at", "start_id")
_START_FORMS: Final = _forms(_OUTCOME)
_FORMS: Final = _forms(())
# the positions _insert_args reads, checked against the field names once
if tuple(RECORD_FIELDS.index(name) for name in (*_OFTEN_NULL, *_OUTCOME)) != (
    12,
    15,
    18,
    13,
    15,
    16,
    17,
    21,
):  # pragma: no cover  # a field moved: _insert_args must follow
    raise ImportError("audit_log columns moved; update _insert_args")


_LAST: Final = "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1"
_PAGE: Final = 1000
_START: Final = RecordKind.START
#: the columns each older schema lacks (read as NULL from a read-only copy)
_ADDED_IN: Final = {
    1: ("context", "decided_at", "policy_digest", "kind", "start_id"),
    2: ("kind", "start_id"),
    3: (),
}
# a start record that a final record finishes (the actions view hides it)
_FINISHED: Final = "EXISTS (SELECT 1 FROM audit_log AS f WHERE f.start_id = audit_log.id)"


_RECORDS: Final = Filters(view="records")


def _escaped(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _insert_args(record: AuditRecord) -> tuple[str, tuple[Any, ...]]:
    """The INSERT of ``record`` and what it binds: every column but some that are NULL."""
    if (
        record[13] is None
        and record[15] is None
        and record[16] is None
        and record[17] is None
        and record[21] is None
    ):  # no outcome: a start record
        sql, pick = _START_FORMS[record[12] is None, True, record[18] is None]
    else:
        sql, pick = _FORMS[record[12] is None, record[15] is None, record[18] is None]
    return sql, pick(record)


def _insert_all(cur: sqlite3.Cursor, records: Sequence[AuditRecord]) -> None:
    """INSERT ``records`` in order, one ``executemany`` per run of records with one statement."""
    run = ""
    rows: list[tuple[Any, ...]] = []
    for record in records:
        sql, args = _insert_args(record)
        if sql is not run:
            if rows:
                cur.executemany(run, rows)
            run, rows = sql, []
        rows.append(args)
    if rows:
        cur.executemany(run, rows)


class SQLiteAuditStore(ReadMixin):
    """The audit chain in a SQLite file (or ``":memory:"``).

    Args:
        path: the database file, or ``":memory:"``.
        busy_timeout: seconds to wait for another writer before failing.
        durability: ``"process"``, ``"result"`` (the default) or ``"full"``
            (see :data:`~aegis.stores.base.Durability` and the module docstring).
        synchronous: the older spelling: ``"normal"`` is ``"process"``,
            ``"full"`` is ``"full"``.
        create: create a missing file and migrate an older one; ``False``
            requires an existing Aegis file (for tools that read).
        readonly: never write; implies ``create=False``.
        database: share an open :class:`SQLiteDatabase` with other table
            modules; its durability is the store's, and ``durability`` or
            ``synchronous``, if given, must agree with it.
    """

    remote = False

    def __init__(  # each is a documented option
        self,
        path: str,
        *,
        busy_timeout: float = 30.0,
        durability: str | None = None,
        synchronous: str | None = None,
        create: bool = True,
        readonly: bool = False,
        database: SQLiteDatabase | None = None,
    ) -> None:
        self.url = path
        self.readonly = readonly
        self._create = create and not readonly
        if database is None:
            database = SQLiteDatabase(
                path,
                busy_timeout=busy_timeout,
                durability=durability,
                synchronous=synchronous,
                readonly=readonly,
            )
        elif (durability, synchronous) != (None, None) and (
            resolve_durability(durability, synchronous) != database.durability
        ):
            raise ConfigurationError(
                f"durability={durability or synchronous!r} disagrees with the shared "
                f"database's {database.durability!r}; give it to the SQLiteDatabase"
            )
        self.db = database
        #: what a returned append promises (:data:`~aegis.stores.base.Durability`)
        self.durability: Durability = database.durability
        # at "result" the connection runs unsynced and a final record turns the sync on
        self._flush_finals = database.durability == "result"
        self._ready_pid = 0
        self._ready_conn: sqlite3.Connection | None = None  # the connection _ensure checked
        self._select = _COLUMNS
        self._has_starts = True
        self._has_checkpoints = True
        # (id, hash) of the record this store appended last, while it may
        # still be the newest; None makes the next append read the head
        self._head: tuple[int, str] | None = None
        # the cursor of guarded appends on the current connection: conn.execute
        # makes a cursor per statement, which costs as much as a short statement
        self._cursor: sqlite3.Cursor | None = None
        # appends of threads waiting for the connection: its next holder
        # writes them all in one transaction (group commit across threads)
        self._queue_lock = threading.Lock()
        self._queue: list[Waiting] = []
        self._queue_pid = os.getpid()

    def __repr__(self) -> str:
        return f"<SQLiteAuditStore {self.url!r}>"

    # ------------------------------------------------------------------ opening

    def _missing(self) -> StoreError | None:
        path = self.url
        if self._create or path == ":memory:":
            return None
        if not os.path.exists(path):
            return StoreError(
                f"no audit database at {path!r}; check the path "
                "(it is created when the first action is recorded)"
            )
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return StoreError(
                f"{path!r} is an empty file, not an Aegis audit database; "
                "use the audit database your runtime writes instead"
            )
        return None

    def _ensure(self, conn: sqlite3.Connection) -> None:
        """Create, migrate or check the schema once per connection."""
        if self._ready_pid == os.getpid() and self.db._conn is conn:  # our own db
            return
        if self._create:
            migrate(conn, self.url, "audit", AUDIT_VERSION, AUDIT_MIGRATIONS)
        else:
            if not check_ours(conn, self.url):
                raise StoreError(
                    f"{self.url!r} holds no Aegis audit trail; "
                    "use the audit database your runtime writes instead"
                )
            version = component_version(conn, "audit")
            if version > AUDIT_VERSION:
                raise StoreError(
                    f"{self.url!r} was written by a newer Aegis (audit schema {version}, this "
                    f"one reads up to {AUDIT_VERSION}); upgrade aegis-runtime"
                )
            if version == 0:
                raise StoreError(
                    f"{self.url!r} holds no Aegis audit trail; "
                    "use the audit database your runtime writes instead"
                )
            missing = _ADDED_IN.get(version, ())
            self._select = ", ".join(
                f"NULL AS {name}" if name in missing else name for name in RECORD_FIELDS
            )
            self._has_starts = "start_id" not in missing
            self._has_checkpoints = version >= 4  # the schema that added them
        self._ready_pid = os.getpid()
        self._ready_conn = conn

    def _conn(self, doing: str) -> Any:
        error = self._missing()
        if error is not None:
            raise error
        return self.db.connection(doing)

    def check(self) -> None:
        """Open the file, create or migrate the schema, and prove it writable (unless read-only)."""
        with self._conn("open") as conn:
            self._ensure(conn)
            conn.execute(_LAST).fetchall()
            if self.readonly:
                return
            # A read-only file, folder or mount opens and reads fine and only
            # fails on the first write: find out now, writing nothing.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "UPDATE aegis_schema_versions SET version = version WHERE component = 'audit'"
                )
            finally:
                conn.execute("ROLLBACK")

    # ------------------------------------------------------------------ writing

    def append(self, drafts: Sequence[RecordDraft]) -> list[AuditRecord]:
        """Seal ``drafts`` after the head in one transaction; return them once committed."""
        if self.readonly:
            raise StoreError(f"the audit store {self.url!r} was opened read-only")
        db = self.db
        head = self._head
        conn = db._conn
        lock = db.lock
        if (
            head is not None
            and len(drafts) == 1
            and conn is not None
            and conn is self._ready_conn
            and self._create
            and self._ready_pid == os.getpid()
            and lock.acquire(False)  # positional: a keyword costs a dict
        ):
            # The path of an agent running actions one by one: the connection
            # is open and checked in this process, and free; the same error
            # translation as db.connection(), without its generator. A busy
            # connection means other threads append: queue with them below.
            try:
                if db._conn is conn and self._head is head and not self._queue:
                    draft = drafts[0]
                    record = seal(draft, head[0] + 1, head[1])
                    # One statement commits by itself; a taken id means someone
                    # else appended, nothing was written, and the locked path
                    # below reads the head. One cursor for every statement:
                    # conn.execute makes one per call, which costs about as
                    # much as a short statement.
                    cur = self._cursor
                    if cur is None or cur.connection is not conn:  # first use, or a new one
                        cur = self._cursor = conn.cursor()
                    flush = self._flush_finals and draft[0] != _START
                    try:
                        if flush:
                            cur.execute(FLUSH_ON)
                        try:
                            cur.execute(*_insert_args(record))
                        finally:
                            if flush:
                                cur.execute(FLUSH_OFF)
                    except sqlite3.IntegrityError:
                        pass  # another process appended: the id is taken, nothing written
                    except sqlite3.Error as exc:
                        self._head = None
                        raise store_error(self.url, "write to", exc) from exc
                    except BaseException:
                        self._head = None
                        raise
                    else:
                        self._head = (record.id, record.hash)
                        return [record]
            finally:
                lock.release()
        return self._append_queued(drafts)

    def _append_queued(self, drafts: Sequence[RecordDraft]) -> list[AuditRecord]:
        """Append ``drafts`` with every other thread's queued meanwhile, in one transaction.

        Group commit across threads: while one thread holds the connection
        the others queue; the next holder writes every queued append in one
        transaction, flushed once if any of them must be, and each thread
        gets its own records, or its own copy of the error.
        """
        mine = Waiting(drafts)
        pid = os.getpid()
        if self._queue_pid != pid:  # a forked child: its parent's waiters are not its own
            self._queue_lock, self._queue, self._queue_pid = threading.Lock(), [], pid
        with self._queue_lock:
            self._queue.append(mine)
        with self.db.lock:
            if mine.done:  # another thread's transaction carried these records
                return mine.outcome()
            with self._queue_lock:
                batch, self._queue = self._queue, []
            if mine not in batch:  # queued on a list a forked child's first append replaced
                batch.append(mine)
            try:
                with self._conn("write to") as conn:
                    self._ensure(conn)
                    out = self._append(conn, [d for w in batch for d in w.drafts])
            except Exception as exc:
                self._head = None
                for waiting in batch:
                    waiting.failed(exc)
                raise
            except BaseException:
                self._head = None
                for waiting in batch:
                    waiting.failed(
                        StoreError(
                            f"an append to the audit trail in {self.url!r} was interrupted; "
                            "whether its records were written is not known: verify the trail"
                        )
                    )
                raise
            last = out[-1]
            self._head = (last.id, last.hash)
            start = 0
            for waiting in batch:
                end = start + len(waiting.drafts)
                waiting.wrote(out[start:end])
                start = end
            return mine.outcome()

    def append_guarded(  # noqa: PLR0915  # one frame per action: this runs for each
        self, draft: RecordDraft, guard: Guard
    ) -> AuditRecord | None:
        """Append ``draft`` in one transaction with ``guard``'s writes, if the guard lets it.

        ``guard.prepare`` readies its tables first (unless ``guard.ready``
        says they are ready on this connection); then, under SQLite's write
        lock, ``guard`` checks and writes what it must and says whether the
        record goes in. The guard's writes and the record commit together,
        or neither does: ``None`` when the guard said no. Once they
        committed, ``guard.committed`` is set, still under the lock.
        """
        if self.readonly:
            raise StoreError(f"the audit store {self.url!r} was opened read-only")
        if not self._create:
            error = self._missing()
            if error is not None:
                raise error
        # db.connection()'s lock and error translation, without its generator:
        # this runs for every action of an agent with limits.
        db = self.db
        with db.lock:
            try:
                conn = db._conn
                if conn is None or conn is not self._ready_conn or self._ready_pid != os.getpid():
                    # a first use, a new connection or a forked child: what _connect is for
                    conn = db._connect()
                    self._ensure(conn)
                try:
                    ready = guard.ready
                except AttributeError:  # a guard written before Guard.ready: always prepare
                    ready = None
                if ready is not conn:
                    guard.prepare(conn)
                cur = self._cursor
                if cur is None or cur.connection is not conn:  # first use, or a new connection
                    cur = self._cursor = conn.cursor()
                flush = self._flush_finals and draft.kind != _START
                if flush:
                    db.flush_on(cur)
                try:
                    cur.execute("BEGIN IMMEDIATE")
                    try:
                        if not guard(cur):
                            cur.execute("ROLLBACK")
                            return None
                        record = self._insert_locked(cur, draft)
                        cur.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            cur.execute("ROLLBACK")  # on the cursor: resets what it ran, too
                        raise
                finally:
                    if flush:
                        db.flush_off(cur)
            except BaseException as exc:
                self._head = None
                if isinstance(exc, sqlite3.Error):
                    raise store_error(self.url, "write to", exc) from exc
                raise
            self._head = (record.id, record.hash)
            try:  # noqa: SIM105  # contextlib.suppress would be two more calls per action
                guard.committed = True
            except AttributeError:  # a guard with no such field (slots): it needs no word
                pass
        return record

    def _insert_locked(self, cur: sqlite3.Cursor, draft: RecordDraft) -> AuditRecord:
        """Seal and insert ``draft`` after the head, inside a write transaction."""
        head = self._head
        if head is not None:
            # Likely still the head; if another process appended since, the
            # id is taken and only this statement fails.
            record = seal(draft, head[0] + 1, head[1])
            try:
                cur.execute(*_insert_args(record))
            except sqlite3.IntegrityError:
                pass
            else:
                return record
        last_id, last_hash = cur.execute(_LAST).fetchone() or (0, GENESIS_HASH)
        record = seal(draft, last_id + 1, last_hash)
        cur.execute(*_insert_args(record))
        return record

    def _append(self, conn: sqlite3.Connection, drafts: Sequence[RecordDraft]) -> list[AuditRecord]:
        out: list[AuditRecord] = []
        cur = conn.cursor()
        # One commit for the whole batch: one flush for every final record in it.
        flush = self._flush_finals and any(draft.kind != _START for draft in drafts)
        if flush:
            self.db.flush_on(cur)
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                # Read the head inside the write lock: another process may have
                # appended since our last commit.
                last_id, last_hash = cur.execute(_LAST).fetchone() or (0, GENESIS_HASH)
                for draft in drafts:
                    last_id += 1
                    record = seal(draft, last_id, last_hash)
                    last_hash = record.hash
                    out.append(record)
                _insert_all(cur, out)
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            if flush:
                self.db.flush_off(cur)
        return out

    # ------------------------------------------------------------------ reading

    def _read(self, doing: str, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._conn(doing) as conn:
            self._ensure(conn)
            return conn.execute(sql, args).fetchall()  # type: ignore[no-any-return]  # rows

    def _where(self, filters: Filters, after_id: int | None = None) -> tuple[str, list[Any]]:
        clauses = [f"{name} {op} ?" for name, op, _ in filters.items]
        args: list[Any] = [value for _, _, value in filters.items]
        if filters.view == "actions" and self._has_starts:
            clauses.append(f"(kind IS NOT 'start' OR NOT {_FINISHED})")
        if after_id is not None:
            clauses.append("id > ?")
            args.append(after_id)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def _pages(
        self,
        filters: Filters,
        after_id: int | None,
        limit: int | None,
        columns: str | None = None,
        *,
        escape: bool = False,
    ) -> Iterator[Any]:
        """Matching rows in id order, a page at a time; ``columns`` must start with ``id``.

        With ``escape`` (verify), a page holding text that is not UTF-8 (a
        hand edit) is read with it escaped, so its record fails to match its
        hash instead of failing the read.
        """
        if limit is not None and limit <= 0:
            return
        left = limit
        while True:
            # The schema check sets the select list of an older read-only file.
            if self._ready_pid != os.getpid():
                self._read("read", "SELECT 1")
            where, args = self._where(filters, after_id)
            size = _PAGE if left is None else min(_PAGE, left)
            try:
                rows = self._read(
                    "read",
                    f"SELECT {columns or self._select} FROM audit_log{where} ORDER BY id LIMIT ?",
                    (*args, size),
                )
            except StoreError:
                if not escape:
                    raise
                rows = self._read_escaped(
                    f"SELECT {self._select} FROM audit_log{where} ORDER BY id LIMIT ?",
                    (*args, _PAGE),
                )
                if not rows:
                    raise
            yield from rows
            if len(rows) < size:
                return
            after_id = rows[-1][0]
            if left is not None:
                left -= len(rows)
                if left <= 0:
                    return

    def records(
        self,
        filters: Filters = NO_FILTERS,
        *,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> Iterator[AuditRecord]:
        """Yield the matching records in id order, a page at a time (constant memory)."""
        return (AuditRecord(*row) for row in self._pages(filters, after_id, limit))

    def verify(
        self,
        expected_head: Head | str | None = None,
        *,
        check_signature: SignatureCheck | None = None,
    ) -> VerifyReport:
        """Check the whole chain with :func:`~aegis.core.chain.verify_chain`.

        Text that is not UTF-8 (a hand edit: Aegis writes none) fails its
        record like any other edit, rather than the whole read.
        """
        return verify_chain(
            (AuditRecord(*row) for row in self._pages(_RECORDS, None, None, escape=True)),
            expected_head,
            checkpoints=self.checkpoints() if check_signature else (),
            check_signature=check_signature,
        )

    def _read_escaped(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """The rows of ``sql`` with text that is not UTF-8 escaped."""
        # Bytes that are not UTF-8 become lone surrogates, which no record
        # Aegis wrote holds: the record's hash cannot match.
        with self._conn("read") as conn:
            self._ensure(conn)
            conn.text_factory = _escaped
            try:
                return conn.execute(sql, args).fetchall()  # type: ignore[no-any-return]  # rows
            finally:
                conn.text_factory = str

    def count(self, filters: Filters = NO_FILTERS) -> int:
        """How many records match ``filters``."""
        where, args = self._where(filters)
        return int(self._read("count", f"SELECT count(*) FROM audit_log{where}", args)[0][0])

    def stats(self, filters: Filters = NO_FILTERS) -> dict[str, dict[str, int]]:
        """Counts by status, risk, rule and type; unfinished actions count as ``started``."""
        where, args = self._where(filters)
        out: dict[str, dict[str, int]] = {}
        for name in STATS_FIELDS:
            column = name
            if name == "result_status" and self._has_starts:
                column = f"CASE WHEN kind = 'start' THEN '{STARTED}' ELSE result_status END"
            rows = self._read(
                "read",
                f"SELECT {column}, count(*) FROM audit_log{where} GROUP BY 1 ORDER BY 1",
                args,
            )
            out[name] = {("none" if key is None else str(key)): n for key, n in rows}
        return out

    def unfinished(self, filters: Filters = NO_FILTERS) -> list[AuditRecord]:
        """The start records without a final record, oldest first."""
        self._read("read", "SELECT 1")  # the schema check, before _has_starts is read
        if not self._has_starts:
            return []
        where, args = self._where(filters)
        where = f"{where} AND kind = 'start'" if where else " WHERE kind = 'start'"
        sql = f"SELECT {self._select} FROM audit_log{where} ORDER BY id"
        try:
            rows = self._read("read", sql, args)
        except StoreError:
            # Text that is not UTF-8 (a hand edit, which verify names) is
            # read escaped, as verify reads it, rather than failing the read.
            rows = self._read_escaped(sql, args)
            if not rows:
                raise
        return [AuditRecord(*row) for row in rows]

    def export_lines(self, filters: Filters = NO_FILTERS) -> Iterator[str]:
        """Each matching record as an exported JSON line, in id order, a page at a time.

        SQLite renders each line itself, several times faster than Python; a
        page holding a hand-edited row it cannot render is rendered in Python.
        In the ``"actions"`` view a start record's line is marked
        ``"unfinished": true`` (the action has no outcome).
        """
        self._read("read", "SELECT 1")  # the schema check, before the select list is read
        json_columns = self._json_columns()
        mark = filters.view == "actions" and self._has_starts
        after_id: int | None = None
        while True:
            where, args = self._where(filters, after_id)
            try:
                rows = self._read(
                    "read",
                    f"SELECT {json_columns} FROM audit_log{where} ORDER BY id LIMIT ?",
                    (*args, _PAGE),
                )
                lines = [
                    row[2][:-1] + UNFINISHED_MARK if mark and row[1] == _START else row[2]
                    for row in rows
                ]
                # SQLite renders deeper JSON than Aegis reads: let Python look
                # at a page holding some. Only a stored JSON field can nest, and
                # nesting past MAX_JSON_DEPTH takes more bytes than that, so
                # only the lines of rows with such a field are counted.
                # Speed (benchmarks/run.py export, callgrind): counting every
                # line cost a fifth of an exported record's instructions.
                if any(
                    row[3] > MAX_JSON_DEPTH and line.count("[") + line.count("{") > MAX_JSON_DEPTH
                    for row, line in zip(rows, lines, strict=True)
                ):
                    raise StoreError("a page holds deeply nested JSON")
            except StoreError:
                rows = self._read(
                    "read",
                    f"SELECT {self._select} FROM audit_log{where} ORDER BY id LIMIT ?",
                    (*args, _PAGE),
                )
                records = [AuditRecord(*row) for row in rows]
                lines = [
                    export_line(record, unfinished=mark and record.kind == _START)
                    for record in records
                ]
            yield from lines
            if len(rows) < _PAGE:
                return
            after_id = rows[-1][0]

    def _json_columns(self) -> str:
        parts = []
        for name, expr in zip(RECORD_FIELDS, self._select.split(", "), strict=True):
            value = expr.split(" AS ")[0]
            if name in JSON_FIELDS:
                value = f"json({value})"
            parts.append(f"'{name}', {value}")
        kind = self._select.split(", ")[RECORD_FIELDS.index("kind")].split(" AS ")[0]
        # the longest stored JSON field, in bytes (a cast to BLOB is not scanned)
        longest = ", ".join(
            f"coalesce(length(CAST({expr.split(' AS ')[0]} AS BLOB)), 0)"
            for name, expr in zip(RECORD_FIELDS, self._select.split(", "), strict=True)
            if name in JSON_FIELDS
        )
        return f"id, {kind}, json_object({', '.join(parts)}), max({longest})"

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep ``checkpoint``; one already kept for its count stays."""
        with self._conn("write a checkpoint to") as conn:
            self._ensure(conn)
            conn.execute(
                f"INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (count) DO NOTHING",
                checkpoint.row(),
            )

    def checkpoints(self) -> list[Checkpoint]:
        """Every kept checkpoint, by count (none in a read-only file of an older schema)."""
        self._read("read", "SELECT 1")  # the schema check, before _has_checkpoints is read
        if not self._has_checkpoints:
            return []
        rows = self._read(
            "read", f"SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY count"
        )
        return [Checkpoint.from_row(row) for row in rows]

    def head(self) -> Head:
        """The head of the chain, read from the file."""
        rows = self._read("read", _LAST)
        return Head(int(rows[0][0]), str(rows[0][1])) if rows else EMPTY_HEAD

    def close(self) -> None:
        """Close the file; calling it again does nothing."""
        self._cursor = None
        self.db.close()
