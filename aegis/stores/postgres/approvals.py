"""Approval requests, decisions, tokens and grants in PostgreSQL.

The tables live beside the audit trail, in the schema of the store's
:class:`~aegis.stores.postgres.connection.Database` (``schema=``, by default
the connection's ``current_schema()``): :func:`aegis.stores.open_stores`
hands this store the audit store's database, so one DSN, one pool, one
password masker and one migration helper (:mod:`aegis.stores.postgres.schema`)
serve all three. Several ``aegis serve`` processes on one database serve
one queue: every status change is a conditional ``UPDATE`` that only a
pending row satisfies, and PostgreSQL's row locks make the second of two
racing transactions re-check it and change nothing. Every transaction is
``READ COMMITTED``, whatever the database's ``default_transaction_isolation``
says: the revocations rely on each statement after a lock wait seeing what
the transaction they waited for committed.

Needs the ``postgres`` extra: ``pip install "aegis-runtime[postgres]"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any, ClassVar, Final, cast

from aegis.stores._approvals_sql import (
    COMPONENT,
    EVENTS_SCHEMA,
    GRANT_CLOCK_SCHEMA,
    IDENTITY_SCHEMA,
    PEOPLE_SCHEMA,
    REQUEST_CLOCK_SCHEMA,
    SORT_SCHEMA,
    TERMS_SCHEMA,
    WHY_SCHEMA,
    Conflict,
    SqlApprovalStore,
    statements,
)
from aegis.stores._url import StoreURL, mask_dsn
from aegis.stores.postgres.connection import Database
from aegis.stores.postgres.schema import component_version, migrate

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError as exc:  # pragma: no cover  # CI installs every extra
    raise ImportError(
        'the PostgreSQL store needs the postgres extra: pip install "aegis-runtime[postgres]"'
    ) from exc

__all__ = ["PostgresApprovalStore", "mask_dsn"]

#: the approval tables' migrations, from version N to N + 1 (``{schema}`` is the schema)
_MIGRATIONS: Final = {
    0: tuple(statements("{schema}.")),
    1: tuple(statements("{schema}.", EVENTS_SCHEMA)),
    2: tuple(statements("{schema}.", TERMS_SCHEMA, ifnx="IF NOT EXISTS ")),
    3: tuple(statements("{schema}.", IDENTITY_SCHEMA, ifnx="IF NOT EXISTS ")),
    4: tuple(statements("{schema}.", WHY_SCHEMA, ifnx="IF NOT EXISTS ")),
    5: tuple(statements("{schema}.", SORT_SCHEMA)),
    6: tuple(statements("{schema}.", GRANT_CLOCK_SCHEMA, ifnx="IF NOT EXISTS ")),
    7: tuple(statements("{schema}.", REQUEST_CLOCK_SCHEMA, ifnx="IF NOT EXISTS ")),
    8: tuple(statements("{schema}.", PEOPLE_SCHEMA)),
}


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
        dsn: the audit store's :class:`~aegis.stores.postgres.connection.Database`
            to share (what :func:`aegis.stores.open_stores` gives), or a
            ``postgresql://`` URL or libpq string to open one of its own.
        schema: with a DSN, the schema of the tables; ``current_schema()``
            when ``None``. A shared database brings its own.
        pool_size: with a DSN, the most connections this store opens.
        timeout: with a DSN, seconds to wait for the server or a free
            connection before failing with :class:`~aegis.errors.StoreError`.
        create: create or migrate the tables when missing or older;
            ``False`` requires them (a read-only role may then serve reads).

    The tables are ready when the constructor returns: a wrong DSN or a
    dead server fails here, not at the first request.
    """

    _HOLDS: ClassVar[str] = (
        "EXISTS (SELECT 1 FROM json_array_elements_text(({column})::json) AS g(name) "
        "WHERE g.name = ?)"
    )
    _LOCK_SHARED: ClassVar[str] = " FOR SHARE"
    _PENDING_DIGEST: ClassVar[str] = (
        "SELECT md5(string_agg(r.id || ' ' || COALESCE(d.reviewer, ''), E'\\n' "
        "ORDER BY r.id, d.reviewer)) FROM {p}aegis_approval_requests r "
        "LEFT JOIN {p}aegis_approval_decisions d ON d.request_id = r.id "
        "WHERE r.status = 'pending'"
    )
    _CLOCK: ClassVar[str] = (
        "to_char((clock_timestamp() - ? * interval '1 second') AT TIME ZONE 'UTC', "
        '\'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\')'
    )

    def __init__(
        self,
        dsn: str | StoreURL | Database,
        *,
        schema: str | None = None,
        pool_size: int = 8,
        timeout: float = 10.0,
        create: bool = True,
    ) -> None:
        if isinstance(dsn, Database):
            self.db, self._owns_db = dsn, False
        else:
            self.db = Database(
                dsn,
                schema=schema,
                connect_timeout=timeout,
                pool_timeout=timeout,
                max_connections=max(1, pool_size),
            )
            self._owns_db = True
        self._where = self.db.where
        try:
            with self.db.connection("open the approval tables in") as conn:
                self.schema = self.db.schema(conn)
                found = component_version(conn, self.schema, COMPONENT)
                # tables there already are brought up to date even when not creating
                migrate(self.db, conn, COMPONENT, _MIGRATIONS, create=create or bool(found))
                #: whether this store created the tables (none were there)
                self.created = not found
        except BaseException:
            if self._owns_db:
                self.db.close()
            raise
        self._prefix = _quote(self.schema) + "."

    def __repr__(self) -> str:
        return f"<PostgresApprovalStore {self._where} schema={getattr(self, 'schema', None)!r}>"

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[_PgTx]:
        doing = "change the approval tables in" if write else "read the approval tables in"
        with self.db.connection(doing) as conn:
            # READ COMMITTED whatever the database's default: every statement
            # after a lock wait must see what the holder committed (a
            # revocation the decision it waited for, a sign-in the revocation
            # it waited for). Said in the BEGIN itself: no round trip more.
            conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield _PgTx(cur, self._prefix)
            finally:
                # The connection goes back to a pool the other stores share;
                # a broken one is dropped by the pool whatever this says.
                with suppress(psycopg.Error):
                    conn.isolation_level = None

    def database_time(self) -> datetime:
        """The database server's clock now, which may run on another host than this one."""
        with self._transaction(write=False) as tx:
            ((now,),) = tx.all("SELECT clock_timestamp()")
        return cast("datetime", now)

    def close(self) -> None:
        """Close a database of its own; a shared one is the audit store's to close. Idempotent."""
        if self._owns_db:
            self.db.close()
