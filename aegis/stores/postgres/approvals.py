"""Approval requests, decisions, tokens and grants in PostgreSQL (psycopg 3 and a pool).

The tables live in the schema given by ``schema=``, by default the
connection's ``current_schema()``. Several ``aegis serve`` processes on one
database serve one queue: every status change is a conditional ``UPDATE``
that only a pending row satisfies, and PostgreSQL's row locks make the
second of two racing transactions re-check it and change nothing.

Needs the ``postgres`` extra: ``pip install "aegis-runtime[postgres]"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from aegis.errors import StoreError
from aegis.stores._approvals_sql import (
    COMPONENT,
    EVENTS_SCHEMA,
    IDENTITY_SCHEMA,
    SCHEMA_VERSION,
    TERMS_SCHEMA,
    Conflict,
    SqlApprovalStore,
    statements,
)

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover  # CI installs every extra
    raise ImportError(
        'the PostgreSQL store needs the postgres extra: pip install "aegis-runtime[postgres]"'
    ) from exc

__all__ = ["PostgresApprovalStore", "mask_dsn"]

_PASSWORD_URL = re.compile(r"(://[^:/@]*:)[^@]*@")
_PASSWORD_KEY = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, fit for messages and logs."""
    return _PASSWORD_KEY.sub(r"\1***", _PASSWORD_URL.sub(r"\1***@", dsn))


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class _PgTx:
    __slots__ = ("_cur", "_prefix")

    def __init__(self, cur: psycopg.Cursor[Any], prefix: str) -> None:
        self._cur = cur
        self._prefix = prefix

    def _sql(self, sql: str) -> str:
        return sql.replace("{p}", self._prefix).replace("?", "%s")

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(self._sql(sql), tuple(args))
        return self._cur.fetchall() if self._cur.description is not None else []

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        try:
            self._cur.execute(self._sql(sql), tuple(args))
        except pg_errors.UniqueViolation as exc:
            raise Conflict(str(exc)) from exc
        return self._cur.rowcount


class PostgresApprovalStore(SqlApprovalStore):
    """The approval tables in PostgreSQL.

    Args:
        dsn: a ``postgresql://`` URL or a libpq connection string.
        schema: the schema of the tables; ``current_schema()`` when ``None``.
        pool_size: the most connections this store opens.
        timeout: seconds to wait for a connection before failing with
            :class:`~aegis.errors.StoreError`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        pool_size: int = 8,
        timeout: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self._where = mask_dsn(dsn)
        self._timeout = timeout
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max(1, pool_size),
            open=False,
            timeout=timeout,
            kwargs={"autocommit": True},
            # A connection the server dropped is replaced before use, so a
            # database restart costs a failed request at most, not the pool.
            check=ConnectionPool.check_connection,
            name="aegis-approvals",
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
        except (PoolTimeout, psycopg.Error) as exc:
            self._pool.close()
            raise StoreError(
                f"cannot connect to the approval store at {self._where}: {exc}; "
                "check that PostgreSQL runs and the DSN is right"
            ) from exc
        try:
            self.schema = schema if schema is not None else self._current_schema()
            self._prefix = _quote(self.schema) + "."
            with self._transaction(write=False) as tx:
                self._migrate(tx)
        except BaseException:
            self._pool.close()
            raise

    def __repr__(self) -> str:
        return f"<PostgresApprovalStore {self._where} schema={getattr(self, 'schema', None)!r}>"

    def _error(self, exc: BaseException) -> StoreError:
        state = getattr(exc, "sqlstate", None)
        where = f" (SQLSTATE {state})" if state else ""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreError(
            f"approval store at {self._where}: {text}{where}; "
            "check that PostgreSQL is reachable and writable, then retry"
        )

    def _current_schema(self) -> str:
        with self._transaction(write=False) as tx:
            rows = tx.all("SELECT current_schema()")
        if not rows or rows[0][0] is None:
            raise StoreError(
                f"the connection to {self._where} has no current schema (its search_path names "
                "no existing schema); create the schema or pass schema="
            )
        return str(rows[0][0])

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[_PgTx]:
        prefix = getattr(self, "_prefix", "")
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield _PgTx(cur, prefix)
        except (PoolTimeout, psycopg.Error) as exc:
            raise self._error(exc) from exc

    def _version(self, tx: _PgTx) -> int:
        found = tx.all("SELECT to_regclass(?)", (self._prefix + "aegis_schema_versions",))
        if not found or found[0][0] is None:
            return 0
        rows = tx.all(
            "SELECT version FROM {p}aegis_schema_versions WHERE component = ?", (COMPONENT,)
        )
        return int(rows[0][0]) if rows else 0

    def _migrate(self, tx: _PgTx) -> None:
        if self._version(tx) == SCHEMA_VERSION:
            return  # nothing to write: a read-only role may serve reads
        # One process creates the tables; the others wait for it here.
        tx.all("SELECT pg_advisory_xact_lock(hashtext('aegis_schema:' || current_database()))")
        tx.run(
            "CREATE TABLE IF NOT EXISTS {p}aegis_schema_versions "
            "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        rows = tx.all(
            "SELECT version FROM {p}aegis_schema_versions WHERE component = ?", (COMPONENT,)
        )
        version = int(rows[0][0]) if rows else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the approval tables at {self._where} were written by a newer Aegis "
                f"(version {version}, this one reads {SCHEMA_VERSION}); upgrade aegis-runtime"
            )
        if version < SCHEMA_VERSION:
            for statement in (
                *statements(self._prefix),
                *statements(self._prefix, EVENTS_SCHEMA),
                *statements(self._prefix, TERMS_SCHEMA, ifnx="IF NOT EXISTS "),
                *statements(self._prefix, IDENTITY_SCHEMA, ifnx="IF NOT EXISTS "),
            ):
                tx.run(statement)
            tx.run(
                "INSERT INTO {p}aegis_schema_versions (component, version) VALUES (?, ?) "
                "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                (COMPONENT, SCHEMA_VERSION),
            )

    def close(self) -> None:
        """Close the connection pool; calling it again does nothing."""
        self._pool.close()
