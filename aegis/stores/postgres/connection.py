"""The one boundary between Aegis and psycopg: connecting, timeouts, errors.

Everything the PostgreSQL store does goes through a :class:`Database`: it
holds the DSN (and shows it only with the password masked), adds the
timeouts that keep a runtime from hanging on a dead server, hands out
connections (a pool for readers, dedicated ones for the audit writer) and
turns every psycopg error into one :class:`~aegis.errors.StoreError` that
says which database, what failed and what to do.

Timeouts, each configurable:

- ``connect_timeout``: a server that does not answer the connection;
- ``statement_timeout``: a statement that runs or waits (for the chain's
  lock, say) too long; the server cancels it;
- ``response_timeout``: a server that keeps the connection open but stops
  answering (a stopped postmaster, a stalled pooler, a hung disk), which no
  server-side timeout can end: the client gives up on the round trip,
  closes the connection and fails;
- TCP keepalives and ``tcp_user_timeout``: a server that vanished without
  closing the connection (a dead machine, a cut network);
- ``pool_timeout``: every pooled connection busy;
- ``idle_in_transaction_session_timeout``: a client that vanished inside a
  transaction, holding the chain's lock, is cut off by the server.
"""

from __future__ import annotations

import inspect
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

from aegis.errors import ConfigurationError, StoreError
from aegis.stores._url import StoreURL, is_postgres_url, mask_dsn, parse_store_url

try:
    import psycopg
    from psycopg import conninfo as _conninfo
    from psycopg import waiting as _waiting
    from psycopg.abc import PQGen
    from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
except ImportError as exc:  # pragma: no cover - CI installs every extra
    raise ImportError(
        "the PostgreSQL store needs psycopg 3 and psycopg_pool; "
        'install them with: pip install "aegis-runtime[postgres]"'
    ) from exc

__all__ = [
    "AnsweringConnection",
    "Connection",
    "Database",
    "is_postgres_url",
    "mask_dsn",
    "server_identity",
]

#: a psycopg connection as the store uses it (tuples as rows, autocommit on)
Connection = psycopg.Connection[tuple[Any, ...]]

_RV = TypeVar("_RV")


def _bounded(gen: PQGen[_RV], seconds: float, conn: Connection) -> PQGen[_RV]:
    """``gen``, failing once it has waited ``seconds`` for the server.

    psycopg's wait loop resumes a generator at least every 0.1 s even when
    nothing arrived, so the deadline is checked whether or not the server
    answers. A connection past its deadline is mid-message: it is closed.
    """
    deadline = time.monotonic() + seconds
    try:
        waiting_for = next(gen)
        while True:
            ready = yield waiting_for
            if time.monotonic() > deadline:
                conn.pgconn.finish()
                raise psycopg.OperationalError(
                    f"the server did not answer within {seconds:g}s (response_timeout); "
                    "it may be stopped, stalled or overloaded"
                )
            waiting_for = gen.send(ready)
    except StopIteration as done:
        result: _RV = done.value
        return result


#: what psycopg's wait raises past a deadline of its own (3.3 onwards), if it takes one
_WAIT_TIMEOUT: Final[type[Exception] | None] = (
    getattr(psycopg.errors, "_WaitTimeout", None)
    if "timeout" in inspect.signature(psycopg.Connection.wait).parameters
    else None
)


#: psycopg's wait loop in C, when it is the one psycopg itself uses (not under
#: gevent's patched select, nor another one chosen by PSYCOPG_WAIT_FUNC)
_WAIT_C: Final[Any] = (
    _waiting.wait
    if _WAIT_TIMEOUT is not None and _waiting.wait is getattr(_waiting, "wait_c", None)
    else None
)


class AnsweringConnection(Connection):
    """A connection whose every round trip has a client-side deadline (``response_timeout``).

    A server that stops answering leaves libpq waiting forever on a socket
    the kernel keeps open (it answers keepalives itself): past the deadline
    the connection is closed and ``OperationalError`` raised, so the caller
    fails instead of hanging, and a pool discards the connection.
    """

    #: seconds one round trip may wait for the server; None waits forever
    response_timeout: float | None = None

    def wait(self, gen: PQGen[_RV], interval: float = 0.1, timeout: float | None = None) -> _RV:
        """psycopg's wait, bounded by :attr:`response_timeout`."""
        seconds = self.response_timeout
        if seconds is not None and timeout is None and _WAIT_TIMEOUT is not None:
            # psycopg's own deadline, in its C wait loop: wrapping the
            # generator in Python cost more client CPU per round trip
            try:
                return super().wait(gen, interval, seconds)
            except _WAIT_TIMEOUT:
                self.pgconn.finish()  # mid-message: the connection is done
                raise psycopg.OperationalError(
                    f"the server did not answer within {seconds:g}s (response_timeout); "
                    "it may be stopped, stalled or overloaded"
                ) from None
        if seconds is not None:
            gen = _bounded(gen, seconds, self)
        if timeout is None:  # psycopg before 3.3.? has no timeout argument
            return super().wait(gen, interval)
        return super().wait(gen, interval, timeout)

    def answer(self, gen: PQGen[_RV]) -> _RV:
        """One round trip of the store's hottest path: :meth:`wait`, with fewer layers.

        psycopg's C wait loop is called directly with :attr:`response_timeout`
        as its deadline (two Python frames less per round trip than
        :meth:`wait`). Interrupted (``KeyboardInterrupt``, a cancelled thread),
        the connection is mid-message and is closed, where :meth:`wait`
        would try to cancel the query first: the caller then knows only that
        the outcome of the round trip is unknown, as after a lost connection.
        """
        seconds = self.response_timeout
        if _WAIT_C is None or seconds is None:
            return self.wait(gen)
        try:
            result: _RV = _WAIT_C(gen, self.pgconn.socket, 0.1, seconds)
        except Exception as exc:
            if _WAIT_TIMEOUT is not None and isinstance(exc, _WAIT_TIMEOUT):
                self.pgconn.finish()  # mid-message: the connection is done
                raise psycopg.OperationalError(
                    f"the server did not answer within {seconds:g}s (response_timeout); "
                    "it may be stopped, stalled or overloaded"
                ) from None
            raise
        except BaseException:
            self.pgconn.finish()
            raise
        return result


# SQLSTATE (or its two-character class) -> what to do about it
_HINTS: Final = {
    "28P01": (
        "the server refused the login (wrong user name or password); check them in the "
        "DSN, or in PGPASSWORD or the passfile (~/.pgpass) when the DSN gives no password"
    ),
    "28": (
        "the server refused the login; check the user name and password (in the DSN, "
        "PGPASSWORD or ~/.pgpass), and pg_hba.conf on the server"
    ),
    "3D000": "create the database (createdb NAME) or fix the database name in the DSN",
    "42501": (
        "the role lacks a privilege Aegis needs here; use a role that may create "
        "and write the Aegis tables, or grant it (see the PostgreSQL section of the README)"
    ),
    "25006": (
        "the server or session is read-only (a standby, or default_transaction_read_only); "
        "point the DSN at the primary, or use a role that may write"
    ),
    "57014": (
        "the server cancelled a statement that ran past statement_timeout (an "
        "overloaded server, or a writer holding the chain's lock); retry, or raise "
        "statement_timeout"
    ),
    "55P03": (
        "another process held a lock this needs (a usage counter, the chain) past "
        "lock_timeout; retry, or raise it"
    ),
    "57P": "the server is shutting down or restarting; retry once it is back",
    "53300": (
        "the server has no free connection slots; lower the pools' max_connections "
        "or raise the server's max_connections"
    ),
    "53": "the server is out of resources (disk, memory or connections); check it",
    "3F000": "create the schema (CREATE SCHEMA name) or pass another schema",
    "42P01": (
        "there are no Aegis tables here; point the DSN (and schema) at the database "
        "your runtime writes"
    ),
    "08": "the connection to the server broke; check the server and the network, then retry",
}

_CONNECT_HINT: Final = (
    "check that the server is running and that the DSN's host, port and database are right"
)
_NO_PASSWORD_HINT: Final = (
    "the server asks for a password and none was given; put it in the DSN "
    "(percent-encoded in a postgresql:// URL), in PGPASSWORD, or in a passfile (~/.pgpass)"
)
_LOST_HINT: Final = "the connection was lost; check the server and the network, then retry"


def _location(dsn: object) -> StoreURL:
    """``dsn`` parsed; only a PostgreSQL location will do."""
    if isinstance(dsn, str | StoreURL):
        location = parse_store_url(dsn)
        if location.engine == "postgres":
            return location
    shown = dsn.where if isinstance(dsn, StoreURL) else repr(dsn)
    raise ConfigurationError(
        f"a PostgreSQL DSN is a postgresql:// URL or a libpq string, not {shown}; "
        "give e.g. 'postgresql://user@host:5432/dbname'"
    )


def _seconds(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{name}={value!r}; give a number of seconds above 0, or None")
    return float(value)


class Database:
    """A PostgreSQL database as the stores use it; the psycopg error boundary.

    Nothing connects until first use. Connections run in autocommit mode, so
    that nothing is ever committed by accident: writes use explicit
    transactions (``with conn.transaction():``).

    Args:
        dsn: a ``postgresql://`` URL or a libpq ``key=value`` string.
        schema: the PostgreSQL schema of the tables; ``None`` uses the
            connection's ``current_schema()`` (the first schema of its
            ``search_path`` that exists).
        connect_timeout: seconds to wait for the server to accept a connection.
        statement_timeout: seconds any one statement may run or wait for a
            lock before the server cancels it; ``None`` keeps the server's.
        response_timeout: seconds the client waits for the server's answer
            to any one round trip before it closes the connection and fails
            (a server that stopped answering); ``None`` waits forever. Keep
            it above ``statement_timeout``, so that the server's clearer
            error comes first.
        pool_timeout: seconds to wait for a free pooled connection.
        max_connections: the size of the pool of reading connections.
    """

    def __init__(
        self,
        dsn: str | StoreURL,
        *,
        schema: str | None = None,
        connect_timeout: float = 5.0,
        statement_timeout: float | None = 30.0,
        response_timeout: float | None = 40.0,
        pool_timeout: float = 10.0,
        max_connections: int = 4,
    ) -> None:
        location = _location(dsn)
        if schema is not None and (not isinstance(schema, str) or not schema):
            raise ConfigurationError(f"schema={schema!r}; give a schema name, or None")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ConfigurationError(f"max_connections={max_connections!r}; give an int >= 1")
        if max_connections < 1:
            raise ConfigurationError(f"max_connections={max_connections!r}; give an int >= 1")
        self.location = location
        self.where = location.where
        dsn = location.target
        try:
            params = _conninfo.conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"{self.where} is not a valid PostgreSQL DSN: {self._text(exc)}; "
                "give e.g. 'postgresql://user@host:5432/dbname'"
            ) from exc
        self._password = str(params.get("password") or "")
        self.connect_timeout = _seconds("connect_timeout", connect_timeout) or 5.0
        self.statement_timeout = _seconds("statement_timeout", statement_timeout)
        self.response_timeout = _seconds("response_timeout", response_timeout)
        self.pool_timeout = _seconds("pool_timeout", pool_timeout) or 10.0
        self._max_connections = max_connections
        self._conninfo = self._with_timeouts(dsn, params)
        self._schema_option = schema
        self._schema: str | None = schema
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Connection] | None = None
        self._pool_pid = 0
        self._abandoned: list[object] = []  # a forked parent's; never closed here
        self._closed = False
        #: the server and database the usage store's connection reaches (server_identity),
        #: set by PostgresUsageStore as it connects: where its flow events are read
        self.flow_server: tuple[Any, ...] | None = None
        #: connects that usage store if it has not (set by it): then flow_server is known,
        #: or known to be unreadable (still ``None``); an audit's guards() asks it
        self.flow_connect: Callable[[], object] | None = None

    def __repr__(self) -> str:
        return f"<Database {self.where}>"

    def _with_timeouts(self, dsn: str, params: dict[str, Any]) -> str:
        """The DSN with our timeouts added wherever the DSN sets none of its own."""
        extra: dict[str, Any] = {}
        if "connect_timeout" not in params:
            # libpq takes whole seconds and treats anything under 2 as 2
            extra["connect_timeout"] = max(2, math.ceil(self.connect_timeout))
        if "application_name" not in params:
            extra["application_name"] = "aegis"
        # A server that vanished without closing the socket (a dead machine, a
        # cut network) shows up within ~15 s instead of the kernel's hours.
        extra.setdefault("keepalives", params.get("keepalives", 1))
        for key, value in (
            ("keepalives_idle", 5),
            ("keepalives_interval", 2),
            ("keepalives_count", 3),
            ("tcp_user_timeout", 15_000),
        ):
            if key not in params:
                extra[key] = value
        settings = []
        if self.statement_timeout is not None:
            settings.append(f"-c statement_timeout={math.ceil(self.statement_timeout * 1000)}")
        # A client that vanished mid-transaction would hold the chain's lock
        # until the server noticed; this bounds it.
        settings.append("-c idle_in_transaction_session_timeout=60000")
        options = " ".join([str(params["options"]), *settings] if "options" in params else settings)
        extra["options"] = options
        return _conninfo.make_conninfo(dsn, **extra)

    # -- errors ----------------------------------------------------------------

    def _text(self, exc: BaseException) -> str:
        """The text of ``exc`` on one line, without the DSN's password in any spelling."""
        text = self.location.scrub(" ".join(str(exc).split()))  # libpq's span lines
        password = getattr(self, "_password", "")
        return text.replace(password, "***") if password else text

    def error(self, doing: str, exc: BaseException) -> StoreError:
        """Turn a psycopg error into a StoreError naming the DSN and what to do.

        ``doing`` completes "cannot ...", e.g. ``"append to the audit trail in"``.
        """
        if isinstance(exc, StoreError):
            return exc
        sqlstate = getattr(exc, "sqlstate", None) or ""
        text = self._text(exc)
        hint = _HINTS.get(sqlstate) or _HINTS.get(sqlstate[:3]) or _HINTS.get(sqlstate[:2])
        if hint is None:
            hint = self._connection_hint(exc, text.lower())
        code = f" [SQLSTATE {sqlstate}]" if sqlstate else ""
        return StoreError(f"cannot {doing} {self.where}: {text}{code}; {hint}")

    @staticmethod
    def _connection_hint(exc: BaseException, lowered: str) -> str:
        # Errors while connecting come without a SQLSTATE: read libpq's text.
        if "authentication failed" in lowered:
            return _HINTS["28P01"]
        if "no password supplied" in lowered:
            return _NO_PASSWORD_HINT
        if "does not exist" in lowered and "database" in lowered:
            return _HINTS["3D000"]
        if "does not exist" in lowered and "role" in lowered:
            return "check the user name in the DSN; the server has no such role"
        if "connection failed" in lowered or "could not translate host" in lowered:
            return _CONNECT_HINT
        if isinstance(exc, psycopg.OperationalError):
            return _LOST_HINT
        return "see the PostgreSQL server's log for details"

    # -- connections -----------------------------------------------------------

    def connect(self, doing: str = "connect to") -> AnsweringConnection:
        """Open a dedicated connection (autocommit); the caller closes it.

        Raises:
            StoreError: the server cannot be reached or refuses the DSN.
        """
        if self._closed:
            raise StoreError(f"the store at {self.where} is closed; open a new one")
        try:
            conn = AnsweringConnection.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self.error(doing, exc) from exc
        self._configure(conn)
        return conn

    def _configure(self, conn: Connection) -> None:
        if isinstance(conn, AnsweringConnection):
            conn.response_timeout = self.response_timeout

    def _open_pool(self, doing: str) -> ConnectionPool[Connection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"the store at {self.where} is closed; open a new one")
            if self._pool is not None and self._pool_pid == os.getpid():
                return self._pool
            if self._pool is not None:
                # A forked child must not close its parent's connections (that
                # would end the parent's sessions): keep them, open our own.
                self._abandoned.append(self._pool)
                self._pool = None
            # One direct connection first: a wrong DSN or a dead server is then
            # one clear error at once, not a pool timeout after seconds.
            self.connect(doing).close()
            pool: ConnectionPool[Connection] = ConnectionPool(
                self._conninfo,
                kwargs={"autocommit": True},
                connection_class=AnsweringConnection,
                configure=self._configure,
                min_size=1,
                max_size=self._max_connections,
                open=False,
                timeout=self.pool_timeout,
                # a pooled connection may have died with a restarted server
                check=ConnectionPool.check_connection,
                name="aegis",
                reconnect_timeout=max(self.pool_timeout, 30.0),
            )
            pool.open(wait=False)
            self._pool, self._pool_pid = pool, os.getpid()
            # A store dropped without close() (a script's last line) still
            # stops the pool's threads and closes its connections.
            weakref.finalize(self, _close_pool, pool, os.getpid())
            return pool

    @contextmanager
    def connection(self, doing: str) -> Iterator[Connection]:
        """Lend a pooled connection (autocommit) for a ``with`` block.

        psycopg errors raised in the block, and failures to get a
        connection, leave as :class:`~aegis.errors.StoreError` naming ``doing``.
        """
        pool = self._open_pool(doing)
        try:
            with pool.connection(timeout=self.pool_timeout) as conn:
                yield conn
        except (PoolTimeout, PoolClosed) as exc:
            raise self._diagnose(doing, exc) from exc
        except psycopg.Error as exc:
            raise self.error(doing, exc) from exc

    def _diagnose(self, doing: str, exc: BaseException) -> StoreError:
        """Say why no pooled connection came: the server, or a busy pool."""
        try:
            self.connect(doing).close()
        except StoreError as down:
            return down
        return StoreError(
            f"cannot {doing} {self.where}: all {self._max_connections} pooled connections "
            f"stayed busy for {self.pool_timeout:g}s ({self._text(exc)}); "
            "raise max_connections or pool_timeout"
        )

    # -- the schema ------------------------------------------------------------

    def schema(self, conn: Connection) -> str:
        """The schema of the tables: the ``schema`` option, else ``current_schema()``.

        Raises:
            StoreError: no schema was given and the search_path names none that exists.
        """
        if self._schema is not None:
            return self._schema
        row = conn.execute("SELECT current_schema(), current_setting('search_path')").fetchone()
        if row is None or row[0] is None:
            path = "" if row is None else row[1]
            raise StoreError(
                f"no schema to keep the Aegis tables in at {self.where}: its search_path "
                f"({path!r}) names no schema that exists; create one (CREATE SCHEMA ...) "
                "or pass schema=..."
            )
        self._schema = str(row[0])
        return self._schema

    @property
    def schema_option(self) -> str | None:
        """The schema the caller asked for, or ``None`` for ``current_schema()``."""
        return self._schema_option

    def close(self) -> None:
        """Close the pool; calling it again does nothing."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            _close_pool(pool, self._pool_pid)


#: what tells a server's database from every other's, as the server says: the cluster's
#: system identifier (from initdb, kept by its physical replicas), when its postmaster
#: started (a replica, or a copy of the cluster, started at another moment), whether it
#: is a standby, and the database's oid
_IDENTITY: Final = (
    "SELECT (SELECT system_identifier FROM pg_control_system()), pg_postmaster_start_time(),"
    " pg_is_in_recovery(), (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def server_identity(conn: Connection) -> tuple[Any, ...] | None:
    """The server and database ``conn`` is connected to, as that server says; ``None``: unsure.

    Two connections with the same identity reach the same database of the
    same running server, whatever their DSNs say: one DSN naming several
    hosts (``host=a,b``) may take them to different servers. ``None`` when
    the server does not say (a function it refuses, a value it has not).
    """
    try:
        row = conn.execute(_IDENTITY).fetchone()
    except psycopg.Error:
        return None
    if row is None or any(value is None for value in row):
        return None
    return tuple(row)


def _close_pool(pool: ConnectionPool[Connection], pid: int) -> None:
    # Only the process that opened a pool may close it: a forked child
    # closing its parent's connections would end the parent's sessions.
    if pid == os.getpid() and not pool.closed:
        pool.close()
