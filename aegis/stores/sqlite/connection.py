"""Connections to a SQLite store, and the one place sqlite3 errors become StoreError.

One :class:`SQLiteDatabase` per store object holds one connection per
process (a forked child opens its own and never touches its parent's), in
WAL mode, guarded by a lock so any thread may use it. Every table module of
the store (the audit trail here, approvals and usage counters beside it)
borrows it through :meth:`SQLiteDatabase.connection`, which translates
every ``sqlite3.Error`` raised inside into :class:`~aegis.errors.StoreError`
with a hint of what to do.

A store opened ``readonly`` never writes: it opens the file with SQLite's
``mode=ro``, so a backup or an evidence copy can always be listed, exported
and verified. When even the WAL index cannot be created beside the file (a
read-only folder, a mount, a folder of another user), nobody can be writing
it either: a file without a write-ahead log beside it is read as it is
(``immutable``); one with a log is copied, log and all, into a private
temporary folder and read there, because SQLite never reads the log of an
immutable file and the records in it would silently be missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Final, Protocol

from aegis.errors import StoreError
from aegis.stores.base import Durability, resolve_durability

__all__ = [
    "APPLICATION_ID",
    "FLUSH_OFF",
    "FLUSH_ON",
    "WAL_BYTES",
    "Guard",
    "SQLiteDatabase",
    "create_owner_only",
    "store_error",
]

#: PRAGMA application_id of Aegis databases ("AEGS")
APPLICATION_ID: Final = 0x41454753

#: SQLite's answers when a read-only file's WAL index cannot be opened or created
_NO_WAL_INDEX: Final = frozenset(
    {"SQLITE_CANTOPEN", "SQLITE_READONLY_DIRECTORY", "SQLITE_READONLY_CANTINIT"}
)

# In WAL mode FULL syncs the WAL at every commit, which makes every frame
# written before (by any connection) durable too; NORMAL syncs it only at
# checkpoints. The setting is the connection's and read at each commit, so
# switching it between two commits costs a statement, not a reopen.
FLUSH_ON: Final = "PRAGMA synchronous=FULL"
FLUSH_OFF: Final = "PRAGMA synchronous=NORMAL"

#: about how many bytes of WAL a connection writes before it checkpoints, by durability.
#:
#: After a complete checkpoint the next commit writes the WAL again from its
#: start, so once the log has reached this size it stays there, and a commit
#: rewrites blocks the file already has. Until then each commit makes the file
#: longer, and on ext4 the flush of a longer file also waits for its inode (the
#: new size) and, when it took new blocks, the block bitmap to be written, one
#: after the other, before the disk's cache flush (BENCHMARKS.md,
#: "Durability"). At ``"result"`` and ``"full"`` every action waits for a
#: flush, so the log is kept small (as SQLite's default, 1,000 pages of 1 KiB:
#: the first ~120 sequential actions of a connection grow it, not ~1,150): the
#: checkpoints this costs add about 2% to the flushes. At ``"process"`` no
#: action waits for a flush, only the checkpoints do, so the log is larger and
#: they are rarer.
WAL_BYTES: Final[dict[Durability, int]] = {
    "process": 8 << 20,
    "result": 1 << 20,
    "full": 1 << 20,
}
# What each page costs in the WAL beyond itself (SQLite's frame header).
_FRAME_HEADER: Final = 24
# A log grown past WAL_BYTES (a long read kept the checkpoints from finishing,
# a very large batch committed at once) is cut back to this many
# times WAL_BYTES at the next restart, not kept at its largest for good.
_WAL_LIMIT: Final = 4

# Speed (benchmarks/calls.py, every kind: about 7% of a sequential action's
# instructions): sqlite3 binds str, int and float directly, but hands every
# None to its adapter lookup, which misses the registry, then looks for
# ``__adapt__`` and ``__conform__`` (about 1.5 us per None, and a record binds
# five to ten). An adapter registered for None finds it at the first step and
# gives None back, so NULL is stored as before, for every user of sqlite3 in
# the process. One registered already (the application's) is left alone.
sqlite3.adapters.setdefault((type(None), sqlite3.PrepareProtocol), {}.get)

_HINTS: Final = (
    ("not a database", "it is not an Aegis audit database; use the one your runtime writes"),
    ("encrypted", "it is not an Aegis audit database; use the one your runtime writes"),
    ("locked", "another process held it longer than the busy timeout; retry or raise it"),
    ("busy", "another process held it longer than the busy timeout; retry or raise it"),
    ("readonly", "the file or its folder is read-only; check the permissions"),
    ("read-only", "the file or its folder is read-only; check the permissions"),
    ("unable to open", "check that the folder exists and is writable"),
    ("disk i/o", "check free disk space and the file system"),
    ("full", "the disk is full; free some space"),
    ("malformed", "the file is damaged; run 'aegis audit verify' on a copy"),
    ("no such", "it is not an Aegis audit database, or it is damaged"),
)


def store_error(path: str, doing: str, exc: BaseException) -> StoreError:
    """A StoreError for ``exc``, raised while ``doing`` something to the database ``path``."""
    text = str(exc)
    lowered = text.lower()
    hint = next(
        (hint for key, hint in _HINTS if key in lowered),
        "the file may be damaged; run 'aegis audit verify' on it",
    )
    if "unable to open" in lowered and "@" in path and "://" not in path:
        # user@host/db is a PostgreSQL DSN without its scheme, taken for a file name
        hint += "; for PostgreSQL, write postgresql://USER@HOST:PORT/DATABASE"
    return StoreError(f"cannot {doing} audit database {path!r}: {text}; {hint}")


def create_owner_only(path: str) -> None:
    """Create the database file ``path`` readable and writable by its owner only.

    The store holds token hashes, sessions, params and the trail: nobody
    else on the machine may read it. SQLite gives its WAL and shared-memory
    files the database file's permissions, so they are owner-only too. An
    existing file is left as its owner set it.
    """
    if path == ":memory:" or path.startswith("file:") or os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process created it a moment ago
    except OSError:
        return  # sqlite3.connect reports the folder's problem in its own words
    os.close(fd)


class Guard(Protocol):
    """Writes of another table module that share one write transaction with an audit append.

    See :meth:`aegis.stores.sqlite.audit.SQLiteAuditStore.append_guarded`:
    the usage counters reserve an action's charges in the transaction that
    appends its start record, so that both are one commit.
    """

    #: the connection the module's tables are known to be ready on: ``prepare`` is
    #: called (outside the transaction) only when that is not the one at hand
    ready: sqlite3.Connection | None

    def prepare(self, conn: sqlite3.Connection) -> None:
        """Ready the module's tables on ``conn``, outside any transaction."""
        ...

    def __call__(self, cur: sqlite3.Cursor) -> bool:
        """Inside the write transaction: check and write on ``cur``; whether the record goes in.

        ``False`` rolls back what it wrote and the record is not appended.
        """
        ...

    #: set to ``True`` by the audit store once the transaction it wrote in has
    #: committed, still under the lock
    committed: bool


class SQLiteDatabase:
    """One SQLite file (or ``":memory:"``) shared by the store's table modules.

    Args:
        path: the database file, or ``":memory:"``.
        busy_timeout: seconds to wait for another writer before failing.
        durability: the :data:`~aegis.stores.base.Durability` of the
            file's commits: the connection runs with ``synchronous=FULL``
            (an fsync of the WAL per commit) at ``"full"`` and with
            ``synchronous=NORMAL`` (the WAL synced at checkpoints only)
            otherwise; at ``"result"`` the audit turns ``FULL`` on for the
            commits that must reach the disk (:meth:`flush_on`).
        synchronous: the older spelling: ``"normal"`` is ``durability="process"``,
            ``"full"`` is ``"full"``.
        readonly: never write (see the module docstring).
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 30.0,
        durability: str | None = None,
        synchronous: str | None = None,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.durability: Durability = resolve_durability(durability, synchronous)
        self.readonly = readonly
        self.lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._abandoned: list[sqlite3.Connection] = []  # a parent's, never closed by a child
        # the private copy of a read-only file, if made: (by which process, its folder)
        self._snapshot: tuple[int, str] | None = None
        self._closed = False
        #: called with each new connection, under the lock (schema checks)
        self.on_connect: list[object] = []
        #: what table modules know of the current connection's data (emptied with each new one)
        self.kept: dict[str, object] = {}

    @contextlib.contextmanager
    def connection(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; sqlite3 errors inside become StoreError."""
        with self.lock:
            try:
                yield self._connect()
            except sqlite3.Error as exc:
                raise store_error(self.path, doing, exc) from exc

    def _connect(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is not None:
            if self._pid == os.getpid():
                return conn
            # A forked child must not use its parent's connection (nor close
            # it, which could checkpoint the parent's WAL): open its own.
            self._abandoned.append(conn)
            self._conn = None
        if self._closed:
            raise StoreError(f"the store of {self.path!r} is closed; open a new one")
        conn = self._open()
        self._conn = conn
        self._pid = os.getpid()
        self.kept = {}
        for hook in self.on_connect:
            hook(conn)  # type: ignore[operator]  # callables of the table modules
        return conn

    def _open(self) -> sqlite3.Connection:
        if self.readonly and self.path != ":memory:":
            return self._open_readonly()
        create_owner_only(self.path)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # the store issues BEGIN IMMEDIATE / COMMIT itself
            check_same_thread=False,  # any thread may use it; self.lock guards
        )
        try:
            # Before changing anything (WAL mode rewrites the header), make
            # sure the file is ours or empty: another application's database
            # must be left exactly as it was.
            # The tables first: another process creating the file commits its
            # tables and its mark together, so tables seen mean the mark is.
            if (
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                and conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID
            ):
                raise StoreError(
                    f"{self.path!r} is a SQLite database but not an Aegis audit database; "
                    "use the audit database your runtime writes instead"
                )
            # Takes effect only on a new file: small pages make each commit
            # write less to the WAL (records are a few hundred bytes).
            conn.execute("PRAGMA page_size=1024")
            self._enable_wal(conn)
            conn.execute(FLUSH_ON if self.durability == "full" else FLUSH_OFF)
            self._size_wal(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _size_wal(self, conn: sqlite3.Connection) -> None:
        # See WAL_BYTES: the checkpoint threshold is counted in pages, and a
        # file made before page_size=1024 (or by another tool) has bigger ones.
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        wal = WAL_BYTES[self.durability]
        conn.execute(f"PRAGMA wal_autocheckpoint={max(wal // (page + _FRAME_HEADER), 1)}")
        conn.execute(f"PRAGMA journal_size_limit={wal * _WAL_LIMIT}")

    def _open_readonly(self) -> sqlite3.Connection:
        conn = self._connect_ro(os.path.abspath(self.path))
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            conn.close()
            if getattr(exc, "sqlite_errorname", "") not in _NO_WAL_INDEX:
                raise
            # No WAL index can be made beside the file (a read-only folder or
            # mount, another user's folder): nobody can be writing it. Never
            # for other errors: an immutable reader of a live file would miss
            # every later write.
            return self._open_unindexed(exc)
        return conn

    def _connect_ro(self, path: str, *, immutable: bool = False) -> sqlite3.Connection:
        uri = f"file:{urllib.parse.quote(path)}?mode=ro" + ("&immutable=1" if immutable else "")
        return sqlite3.connect(
            uri, uri=True, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )

    def _open_unindexed(self, cause: sqlite3.OperationalError) -> sqlite3.Connection:
        """Open a file whose WAL index cannot be made beside it, seeing every committed record."""
        path = os.path.abspath(self.path)
        try:
            log_size = os.path.getsize(path + "-wal")
        except FileNotFoundError:
            log_size = 0
        except OSError as exc:  # a log we may not even look at
            raise cause from exc
        if log_size == 0:
            # Everything is in the file itself: read it as it is.
            return self._connect_ro(path, immutable=True)
        # SQLite ignores the log of an immutable file: copy both where the
        # index can be made, and read the copy (taken in one go, log last
        # written, so the copy holds whole transactions: recovery drops any
        # torn tail as SQLite would).
        folder = tempfile.mkdtemp(prefix="aegis-readonly-")
        try:
            copy = os.path.join(folder, os.path.basename(path))
            shutil.copyfile(path, copy)
            shutil.copyfile(path + "-wal", copy + "-wal")
            conn = self._connect_ro(copy)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._drop_snapshot()
        self._snapshot = (os.getpid(), folder)
        return conn

    def _drop_snapshot(self) -> None:
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is not None and snapshot[0] == os.getpid():  # never a parent's copy
            shutil.rmtree(snapshot[1], ignore_errors=True)

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # While another process is switching a new file to WAL, SQLite refuses
        # the change and answers with the old mode instead of waiting. Staying
        # in rollback mode would let writers deadlock (SQLite then fails them at
        # once, busy timeout or not), so try again until the switch holds.
        deadline = time.monotonic() + self.busy_timeout
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

    def flush_on(self, conn: sqlite3.Connection | sqlite3.Cursor) -> None:
        """Make the next commits on ``conn`` wait for the disk (until :meth:`flush_off`).

        Call both outside a transaction, under :attr:`lock`. At ``"full"``
        every commit waits already and these do nothing.
        """
        if self.durability != "full":
            conn.execute(FLUSH_ON)

    def flush_off(self, conn: sqlite3.Connection | sqlite3.Cursor) -> None:
        """Back to the connection's own setting after :meth:`flush_on`."""
        if self.durability != "full":
            conn.execute(FLUSH_OFF)

    def close(self) -> None:
        """Close the connection; calling it again does nothing."""
        with self.lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise store_error(self.path, "close", exc) from exc
                finally:
                    self._drop_snapshot()
