"""The default audit trail: a hash-chained log in a SQLite file.

Each record carries the hash of the one before it, so editing, deleting,
inserting or reordering records breaks the chain, and :meth:`AuditLogger.verify`
names the first record that does not fit. Keep :meth:`AuditLogger.head`
somewhere else to detect records cut off the end as well::

    audit = AuditLogger("audit.db")
    head = audit.head()            # e.g. "1042:9f86d0..."; store it elsewhere
    ...
    report = audit.verify(expected_head=head)
    assert report.ok, report.reason
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from aegis.core.decision import PolicyDecision
from aegis.core.record import ContextValue
from aegis.core.result import Result
from aegis.errors import AuditError
from aegis.runtime._journal import StartJournal, read_journals
from aegis.runtime.audit_backend import (
    GENESIS_HASH,
    RECORD_FIELDS,
    Filters,
    RecordReader,
    RecordValues,
    Subscriber,
    SubscriberList,
    dump_json,
    encode_compact,
    hash_row,
    record_values,
    write_jsonl,
)

__all__ = ["AuditLogger", "VerifyReport"]

#: bump with a new entry in _MIGRATIONS whenever the schema changes
SCHEMA_VERSION: Final = 2
#: PRAGMA application_id of Aegis audit databases ("AEGS")
APPLICATION_ID: Final = 0x41454753

_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    # from version 0 (an empty file) to version 1
    0: (
        """CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL,
            timestamp TEXT NOT NULL,
            action_type TEXT NOT NULL,
            action_target TEXT NOT NULL,
            action_params TEXT NOT NULL,
            action_desc TEXT NOT NULL,
            risk_level TEXT NOT NULL,
            approval TEXT NOT NULL,
            matched_rule TEXT NOT NULL,
            reason TEXT NOT NULL,
            human_decision TEXT,
            result_status TEXT,
            result_data TEXT NOT NULL,
            result_error TEXT,
            started_at TEXT,
            completed_at TEXT,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            start_ref TEXT  -- the start marker this record finishes; not chained
        )""",
        "CREATE INDEX audit_log_session ON audit_log (session_id, id)",
    ),
    # from version 1: the decide step's time, the policy's digest and the
    # caller's context (records written before have NULL there)
    1: (
        "ALTER TABLE audit_log ADD COLUMN context TEXT",
        "ALTER TABLE audit_log ADD COLUMN decided_at TEXT",
        "ALTER TABLE audit_log ADD COLUMN policy_digest TEXT",
    ),
}

_COLUMNS: Final = ", ".join(RECORD_FIELDS)
_INSERT: Final = f"INSERT INTO audit_log ({_COLUMNS}, start_ref) VALUES ({', '.join('?' * 23)})"
_LAST: Final = "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1"
_PAGE: Final = 1000

# queued writes: (record values, start token or None, future or None)
_Op = tuple[RecordValues, int | None, "asyncio.Future[int] | None"]

_HINTS: Final = (
    ("not a database", "it is not an Aegis audit database; use the one your runtime writes"),
    ("encrypted", "it is not an Aegis audit database; use the one your runtime writes"),
    ("locked", "another process held it longer than the busy timeout; retry or raise it"),
    ("busy", "another process held it longer than the busy timeout; retry or raise it"),
    ("readonly", "the file or its folder is read-only; check the permissions"),
    ("unable to open", "check that the folder exists and is writable"),
    ("disk i/o", "check free disk space and the file system"),
    ("full", "the disk is full; free some space"),
    ("no such", "it is not an Aegis audit database, or it is damaged"),
)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :meth:`AuditLogger.verify`.

    ``checked`` counts the records read; ``first_bad_id`` is the id of the
    first record that is missing or does not fit (``None`` when ``ok``);
    ``head`` is the head of the log as read, to keep for the next check.
    """

    ok: bool
    checked: int
    first_bad_id: int | None
    reason: str
    head: str

    def __bool__(self) -> bool:
        return self.ok


def _to_record(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(RECORD_FIELDS, row, strict=True))
    record["action_params"] = _load(row[5])
    record["result_data"] = _load(row[13])
    record["context"] = _load(row[17])
    return record


def _load(stored: object) -> Any:
    # A hand-edited column may hold anything: give back what is not JSON as
    # it is (verify() reports the edit) rather than fail to read the log.
    if isinstance(stored, str):
        try:
            return json.loads(stored)
        except ValueError:
            return stored
    return stored if stored is None or isinstance(stored, int | float) else repr(stored)


# the scalar columns of a row, which an exported line encodes first
_SCALARS: Final = tuple(
    (i, name)
    for i, name in enumerate(RECORD_FIELDS)
    if name not in ("action_params", "result_data", "context")
)


# the id for paging, then the row as a finished JSON line, built by SQLite
_LINE_COLUMNS: Final = (
    "id, json_object("
    + ", ".join(
        f"'{name}', json({name})"
        if name in ("action_params", "result_data", "context")
        else f"'{name}', {name}"
        for name in RECORD_FIELDS
    )
    + ")"
)


def _to_line(row: tuple[Any, ...]) -> str:
    # An exported line, built without decoding the stored JSON columns: they
    # are canonical JSON text already and nest verbatim.
    head = encode_compact({name: row[i] for i, name in _SCALARS})
    context = "null" if row[17] is None else _json_text(row[17])
    return (
        f'{head[:-1]},"action_params":{_json_text(row[5])},'
        f'"result_data":{_json_text(row[13])},"context":{context}}}'
    )


def _json_text(stored: object) -> str:
    # A hand-edited column may hold anything: export what is not JSON as a
    # string, so that every line stays valid (verify() reports the edit).
    if isinstance(stored, str):
        try:
            json.loads(stored, parse_constant=_refuse)
        except ValueError:
            pass
        else:
            return stored
    return encode_compact(stored if isinstance(stored, str) else repr(stored))


def _refuse(constant: str) -> Any:
    # NaN and Infinity are Python's JSON extensions, not JSON.
    raise ValueError(f"{constant} is not JSON")


def _storable(values: RecordValues) -> RecordValues:
    fixed = [
        v.encode("utf-16", "surrogatepass").decode("utf-16", "replace") if isinstance(v, str) else v
        for v in values
    ]
    return tuple(fixed)  # type: ignore[return-value]  # same shape, element by element


def _parse_head(head: str) -> tuple[int, str]:
    count, sep, digest = head.strip().partition(":")
    if not sep or not count.isdigit() or len(digest) != 64:
        raise ValueError(
            f"expected_head={head!r} is not a head of an audit log; "
            "pass the string AuditLogger.head() returned, like '42:<64 hex digits>'"
        )
    return int(count), digest


class AuditLogger(RecordReader):
    """A tamper-evident audit trail in a SQLite file.

    The file opens on first use, in WAL mode. With the default
    ``synchronous="normal"`` a record is safe from the death of the process
    (even ``SIGKILL``) as soon as the call that wrote it returns; only a
    power loss or an operating system crash can lose the last few commits.
    ``synchronous="full"`` flushes every commit and start marker to the disk
    as well, at the price of one fsync each. Several processes may append to
    the same file; the chain stays valid.

    Start markers (:meth:`record_start`) go to a small journal file per
    process beside the database (``<db>.pending-<pid>-<random>``), removed
    when the logger closes with every action finished.

    Concurrent :meth:`record` calls from one event loop are committed
    together, once per loop iteration; each caller gets its id only after
    the commit. Writes run on the calling thread (no thread hop), so a
    writer that holds the file longer than ``busy_timeout`` seconds blocks
    the loop that long, then raises :class:`~aegis.errors.AuditError`.

    Args:
        db_path: the database file, or ``":memory:"``.
        busy_timeout: seconds to wait for another writer before failing.
        create: create the file if missing; ``False`` raises
            :class:`~aegis.errors.AuditError` instead (for tools that read).
        synchronous: ``"normal"`` (survives process death) or ``"full"``
            (survives power loss too).

    Example::

        audit = AuditLogger("audit.db")
        for record in audit.get_log(result_status="denied"):
            print(record["id"], record["action_type"], record["human_decision"])
    """

    def __init__(
        self,
        db_path: str | Path = "aegis_audit.db",
        *,
        busy_timeout: float = 30.0,
        create: bool = True,
        synchronous: str = "normal",
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous={synchronous!r}; use 'normal' or 'full'")
        self._path = str(db_path)
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._create = create
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = 0
        self._abandoned: sqlite3.Connection | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._subscribers = SubscriberList()
        self._queue: list[_Op] = []
        self._queue_loop: asyncio.AbstractEventLoop | None = None
        self._last_writer: asyncio.Task[Any] | None = None
        self._journal = StartJournal(self._path, fsync=synchronous == "full")
        self._last_id = 0  # the newest record id this logger has seen
        # (id, hash) of the record this logger appended last, while it may
        # still be the newest; None makes the next write read the head
        self._head: tuple[int, str] | None = None

    @property
    def db_path(self) -> str:
        """The path of the database file."""
        return self._path

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<AuditLogger {self._path!r}{state}>"

    # -- connection and errors -------------------------------------------------

    def _error(self, doing: str, exc: BaseException) -> AuditError:
        """Turn a sqlite3 error into an AuditError that says what to do."""
        text = str(exc)
        lowered = text.lower()
        hint = next(
            (hint for key, hint in _HINTS if key in lowered),
            "the file may be damaged; run 'aegis audit verify' on it",
        )
        return AuditError(f"cannot {doing} audit database {self._path!r}: {text}; {hint}")

    def _closed_error(self) -> AuditError:
        return AuditError(
            f"the audit logger for {self._path!r} is closed; create a new AuditLogger"
        )

    def _connect(self) -> sqlite3.Connection:
        # Callers hold self._lock and translate sqlite3 errors.
        if self._conn is not None:
            if self._conn_pid == os.getpid():
                return self._conn
            # A forked child must not use its parent's SQLite connection (nor
            # close it, which could checkpoint the parent's WAL): open its own.
            self._abandoned, self._conn = self._conn, None  # kept so it is never closed
            self._head = None
        if self._closed:
            raise self._closed_error()
        if not self._create and self._path != ":memory:":
            # A reader must not turn a missing or empty file into a database.
            if not os.path.exists(self._path):
                raise AuditError(
                    f"no audit database at {self._path!r}; check the path "
                    "(it is created when the first action is recorded)"
                )
            if os.path.getsize(self._path) == 0:
                raise AuditError(
                    f"{self._path!r} is an empty file, not an Aegis audit database; "
                    "use the audit database your runtime writes instead"
                )
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # log() may come from any thread; self._lock guards
        )
        try:
            # Takes effect only on a new file: small pages make each commit
            # write less to the WAL (records are a few hundred bytes).
            conn.execute("PRAGMA page_size=1024")
            self._enable_wal(conn)
            conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            # Checkpoints (which fsync) every ~8 MiB of WAL rather than every
            # 1,000 pages: with our small pages that would be every ~1 MiB,
            # a stall every few hundred actions.
            conn.execute("PRAGMA wal_autocheckpoint=8192")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._conn_pid = os.getpid()
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # While another process is switching a new file to WAL, SQLite refuses
        # the change and answers with the old mode instead of waiting. Staying
        # in rollback mode would let writers deadlock (SQLite then fails them at
        # once, busy timeout or not), so try again until the switch holds.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                mode = "locked"
            if str(mode).lower() in ("wal", "memory"):
                return
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError(f"could not switch to WAL mode (still {mode})")
            time.sleep(0.01)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and not self._create:
            raise AuditError(
                f"{self._path!r} is a SQLite database but not an Aegis audit database; "
                "use the audit database your runtime writes instead"
            )
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have created the schema while we waited.
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if (
                    version == 0
                    and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                ):
                    raise AuditError(
                        f"{self._path!r} is a SQLite database but not an Aegis audit "
                        "database; use the audit database your runtime writes instead"
                    )
                if version == 0:
                    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                while version < SCHEMA_VERSION:
                    for statement in _MIGRATIONS[version]:
                        conn.execute(statement)
                    version += 1
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id != APPLICATION_ID:
            raise AuditError(
                f"{self._path!r} is a SQLite database but not an Aegis audit database; "
                "use the audit database your runtime writes instead"
            )
        if version > SCHEMA_VERSION:
            raise AuditError(
                f"{self._path!r} was written by a newer Aegis (schema {version}, this "
                f"one reads up to {SCHEMA_VERSION}); upgrade aegis-runtime"
            )

    def _read(self, doing: str, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Run one query under the lock and return all its rows."""
        with self._lock:
            try:
                return self._connect().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._error(doing, exc) from exc

    # -- writing ---------------------------------------------------------------

    def _write(self, ops: list[_Op]) -> list[tuple[Any, ...]]:
        """Commit ``ops`` in one transaction and return the stored rows."""
        with self._lock:
            try:
                conn = self._connect()
                out = None
                if len(ops) == 1 and self._head is not None:
                    out = self._append_one(conn, ops[0], self._head)
                if out is None:
                    out = self._append(conn, ops)
            except UnicodeEncodeError:
                # A lone surrogate (text decoded with errors="surrogateescape",
                # say) cannot be stored as UTF-8: store it as U+FFFD instead
                # of losing the record. Rare, so only on this path.
                self._head = None
                ops = [(_storable(values), token, fut) for values, token, fut in ops]
                try:
                    out = self._append(self._connect(), ops)
                except sqlite3.Error as exc:
                    raise self._error("write to", exc) from exc
            except sqlite3.Error as exc:
                self._head = None
                raise self._error("write to", exc) from exc
            last = out[-1]
            self._head = (last[0], last[-1])
            self._last_id = last[0]
            for _, token, _ in ops:
                if token is not None:
                    self._journal.finished(token)
        return out

    def _append_one(
        self, conn: sqlite3.Connection, op: _Op, head: tuple[int, str]
    ) -> list[tuple[Any, ...]] | None:
        """Append one record after ``head`` in a single statement, or return None.

        Ids are consecutive, so if another process appended since ``head``
        was ours, the id we claim is taken and the insert fails on the
        primary key: nothing is written and the caller takes the slow path.
        One statement commits by itself, which saves the BEGIN, the head
        read and the COMMIT of :meth:`_append` for an agent running
        actions one by one.
        """
        values, token, _ = op
        unsealed = (head[0] + 1, *values, head[1])
        row = (*unsealed, hash_row(unsealed))
        ref = None if token is None else self._journal.ref(token)
        try:
            conn.execute(_INSERT, (*row, ref))
        except sqlite3.IntegrityError:
            return None
        return [row]

    def _append(self, conn: sqlite3.Connection, ops: list[_Op]) -> list[tuple[Any, ...]]:
        """Append ``ops`` in one transaction, after the head read inside it."""
        out: list[tuple[Any, ...]] = []
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            # Read the head inside the write lock: another process may have
            # appended since our last commit.
            last_id, last_hash = cur.execute(_LAST).fetchone() or (0, GENESIS_HASH)
            for values, token, _ in ops:
                unsealed = (last_id + 1, *values, last_hash)
                last_hash = hash_row(unsealed)
                row = (*unsealed, last_hash)
                ref = None if token is None else self._journal.ref(token)
                cur.execute(_INSERT, (*row, ref))
                last_id += 1
                out.append(row)
            cur.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return out

    def _publish(self, rows: list[tuple[Any, ...]]) -> None:
        if self._subscribers:
            for row in rows:
                self._subscribers.notify(_to_record(row))

    def _flush(self) -> None:
        ops, self._queue, self._queue_loop = self._queue, [], None
        if not ops:
            return
        try:
            rows = self._write(ops)
        except Exception as exc:
            # Every waiter must wake up, or the runtime would hang on a write.
            for _, _, future in ops:
                if future is not None and not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), row in zip(ops, rows, strict=True):
            if future is not None and not future.done():
                future.set_result(row[0])
        self._publish(rows)

    async def _submit(self, values: RecordValues, token: int | None) -> int:
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if (not self._queue and task is self._last_writer) or (
            self._queue and self._queue_loop is not loop
        ):
            # Write now, without a trip round the event loop, when there is
            # nothing to group with: the task that wrote last writes again and
            # no batch is waiting (an agent calling run_one in a loop). Also when
            # a batch of another event loop waits: never mix two loops' futures.
            # Tasks that interleave (asyncio.gather) take the batched path below.
            rows = self._write([(values, token, None)])
            self._publish(rows)
            return int(rows[0][0])
        self._last_writer = task
        future: asyncio.Future[int] = loop.create_future()
        if not self._queue:
            self._queue_loop = loop
            loop.call_soon(self._flush)
        self._queue.append((values, token, future))
        return await future

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
        """Write one finished record now and return its id; safe from any thread.

        Without a ``result`` the status is ``"blocked"`` for a blocked
        decision, ``"denied"`` when ``human_decision`` starts with
        ``"denied"``, and ``None`` otherwise.
        """
        values = record_values(
            session_id,
            decision,
            result,
            human_decision,
            context=context,
            decided_at=decided_at,
            policy_digest=policy_digest,
        )
        rows = self._write([(values, None, None)])
        self._publish(rows)
        return int(rows[0][0])

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
        """Mark an action as started; return the token to pass to :meth:`record`.

        The marker is written to this process's start journal beside the
        database (see :mod:`aegis.runtime._journal`) and survives the death
        of the process once this returns. If the process dies before
        :meth:`record`, the action shows in :meth:`pending`.
        """
        action = decision.action
        params_json = dump_json(action.params) if action.params else "{}"
        fields = {
            "session_id": session_id,
            "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
            "action_type": action.type,
            "action_target": action.target,
            "action_desc": action.description,
            "risk_level": decision.risk_level.name,
            "approval": decision.approval.value,
            "matched_rule": decision.matched_rule,
            "reason": decision.reason,
            "human_decision": human_decision,
            "context": dict(context) if context else None,
            "decided_at": decided_at,
            "policy_digest": policy_digest,
            "after": self._last_id,
        }
        with self._lock:
            if self._closed:
                raise self._closed_error()
            try:
                return self._journal.start(fields, params_json, action.params)
            except OSError as exc:
                raise AuditError(
                    f"cannot write the start of an action beside audit database "
                    f"{self._path!r}: {exc}; check free disk space and permissions"
                ) from exc

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
        """Append the final record of an action and return its id once committed.

        The record stores the reference of the start marker ``start_token``,
        so the marker counts as finished once the record is committed.
        """
        params_json = (
            None
            if start_token is None
            else self._journal.params_json(start_token, decision.action.params)
        )
        values = record_values(
            session_id,
            decision,
            result,
            human_decision,
            params_json=params_json,
            context=context,
            decided_at=decided_at,
            policy_digest=policy_digest,
        )
        return await self._submit(values, start_token)

    # -- reading ---------------------------------------------------------------

    def _where(self, filters: Filters, after_id: int | None) -> tuple[str, list[Any]]:
        clauses = [f"{name} {op} ?" for name, op, _ in filters.items]
        args: list[Any] = [value for _, _, value in filters.items]
        if after_id is not None:
            clauses.append("id > ?")
            args.append(after_id)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def _pages(
        self,
        filters: Filters,
        after_id: int | None,
        limit: int | None,
        columns: str = _COLUMNS,
    ) -> Iterator[Any]:
        """Yield matching rows in id order, a page at a time, in constant memory.

        ``columns`` must start with ``id``, the key of the next page.
        """
        if limit is not None and limit <= 0:
            return
        left = limit
        while True:
            where, args = self._where(filters, after_id)
            size = _PAGE if left is None else min(_PAGE, left)
            rows = self._read(
                "read",
                f"SELECT {columns} FROM audit_log{where} ORDER BY id LIMIT ?",
                (*args, size),
            )
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
        # Reads a page at a time, so iter_log() runs in constant memory.
        return map(_to_record, self._pages(filters, after_id, limit))

    def _count(self, filters: Filters) -> int:
        where, args = self._where(filters, None)
        return int(self._read("count", f"SELECT count(*) FROM audit_log{where}", tuple(args))[0][0])

    def stats(self, session_id: str | None = None) -> dict[str, dict[str, int]]:
        """Count records by ``result_status``, ``risk_level``, ``matched_rule`` and ``action_type``.

        A record logged without a result counts under the status ``"none"``.
        """
        where, args = self._where(Filters(session_id=session_id), None)
        out: dict[str, dict[str, int]] = {}
        for column in ("result_status", "risk_level", "matched_rule", "action_type"):
            sql = f"SELECT {column}, count(*) FROM audit_log{where} GROUP BY 1 ORDER BY 1"
            rows = self._read("read", sql, tuple(args))
            out[column] = {("none" if key is None else str(key)): n for key, n in rows}
        return out

    def pending(self) -> list[dict[str, Any]]:
        """Return the actions that started but have no final record, oldest first.

        An entry here means the process died (or is still running) between
        :meth:`record_start` and :meth:`record`. ``pid`` names the process,
        ``id`` is the token :meth:`record_start` returned, and ``ref`` names
        the journal and token.
        """
        if self._path == ":memory:":
            entries = self._journal.unfinished()
        else:
            entries = list(read_journals(self._path))
            if entries:
                low = min(int(e.get("after") or 0) for e in entries)
                done = {
                    ref
                    for (ref,) in self._read(
                        "read",
                        "SELECT start_ref FROM audit_log WHERE id > ? AND start_ref IS NOT NULL",
                        (low,),
                    )
                }
                entries = [e for e in entries if e["ref"] not in done]
        entries.sort(key=lambda e: (str(e.get("timestamp")), e["ref"]))
        return entries

    def export_jsonl(self, path: str | Path, session_id: str | None = None) -> int:
        """Write the records, oldest first, as UTF-8 JSON lines; return how many.

        ``action_params`` and ``result_data`` are nested JSON values; each line
        still verifies with :func:`~aegis.runtime.audit_backend.record_hash`.
        """
        filters = Filters.of(session_id=session_id)
        try:
            # SQLite writes each line itself, several times faster than Python.
            lines = (row[1] for row in self._pages(filters, None, None, _LINE_COLUMNS))
            return write_jsonl(path, lines)
        except AuditError:
            # A hand-edited row that SQLite cannot render as JSON (a BLOB, a
            # column that is not JSON): write the slower way, which can.
            return write_jsonl(path, map(_to_line, self._pages(filters, None, None)))

    # -- tamper evidence -------------------------------------------------------

    def head(self) -> str:
        """Return ``"<count>:<hash of the last record>"``; keep it to detect truncation."""
        rows = self._read("read", _LAST)
        last_id, last_hash = rows[0] if rows else (0, GENESIS_HASH)
        return f"{last_id}:{last_hash}"

    def verify(self, expected_head: str | None = None) -> VerifyReport:
        """Check the whole chain, streaming; report the first record that does not fit.

        Catches edited, deleted, inserted and reordered records. With
        ``expected_head`` (an earlier :meth:`head`) it also catches records
        removed from the end, and a log rewritten since that head.
        """
        expected = None if expected_head is None else _parse_head(expected_head)
        checked = 0
        prev_hash = GENESIS_HASH
        hash_at_expected: str | None = None

        def fail(bad_id: int, reason: str) -> VerifyReport:
            return VerifyReport(False, checked, bad_id, reason, f"{checked}:{prev_hash}")

        for row in self._pages(Filters(), None, None):
            record_id = row[0]
            if record_id != checked + 1:
                missing = checked + 1
                return fail(
                    missing,
                    f"record {missing} is missing: ids jump from {checked} to {record_id} "
                    "(records were deleted or renumbered)",
                )
            if row[20] != prev_hash:
                return fail(
                    record_id,
                    f"record {record_id} does not link to record {checked}: its prev_hash "
                    "differs (records were inserted, deleted or reordered)",
                )
            if hash_row(row) != row[21]:
                return fail(
                    record_id,
                    f"record {record_id} was modified: its content does not match its hash",
                )
            checked = record_id
            prev_hash = row[21]
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
        """Call ``callback(record)`` after each new record is committed.

        A callback that raises is logged on ``aegis.audit`` and otherwise ignored.
        """
        self._subscribers.add(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        self._subscribers.remove(callback)

    def close(self) -> None:
        """Commit queued records and close the file; calling it again does nothing."""
        if self._closed:
            return
        try:
            self._flush()
        finally:
            with self._lock:
                self._closed = True
                self._journal.close()
                conn, self._conn = self._conn, None
                if conn is not None:
                    try:
                        conn.close()
                    except sqlite3.Error as exc:
                        raise self._error("close", exc) from exc

    def __enter__(self) -> AuditLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
