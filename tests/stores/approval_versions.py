"""The approval tables as an older release left them, to test that a store migrates them."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from aegis.stores._approvals_sql import (
    EVENTS_SCHEMA,
    GRANT_CLOCK_SCHEMA,
    IDENTITY_SCHEMA,
    REQUEST_CLOCK_SCHEMA,
    SCHEMA,
    SORT_SCHEMA,
    TERMS_SCHEMA,
    WHY_SCHEMA,
    statements,
)

#: the statements of each version, in order: version N has the first N
VERSIONS = (
    SCHEMA,
    EVENTS_SCHEMA,
    TERMS_SCHEMA,
    IDENTITY_SCHEMA,
    WHY_SCHEMA,
    SORT_SCHEMA,
    GRANT_CLOCK_SCHEMA,
    REQUEST_CLOCK_SCHEMA,
)


def create_version(db: str, version: int) -> None:
    """Create the approval tables of ``version`` at ``db`` (a SQLite path or a DSN)."""
    older = VERSIONS[:version]
    if db.startswith("postgresql://"):
        from aegis.stores.postgres.connection import Database
        from aegis.stores.postgres.schema import migrate as pg_migrate

        database = Database(db)
        try:
            with database.connection(f"create version {version} in") as conn:
                pg_migrate(
                    database,
                    conn,
                    "approvals",
                    {
                        n: tuple(statements("{schema}.", sql, ifnx="IF NOT EXISTS "))
                        for n, sql in enumerate(older)
                    },
                    create=True,
                )
        finally:
            database.close()
        return
    from aegis.stores.sqlite.schema import migrate

    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        migrate(
            conn,
            db,
            "approvals",
            version,
            {n: tuple(statements("", sql)) for n, sql in enumerate(older)},
        )


def version_of(db: str) -> int:
    """The version of the approval tables at ``db``."""
    sql = "SELECT version FROM aegis_schema_versions WHERE component = 'approvals'"
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()
    else:
        with closing(sqlite3.connect(db)) as conn:
            row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def by_hand(db: str, sql: str, args: tuple[object, ...] = ()) -> None:
    """Run one statement (``?`` placeholders) at ``db`` behind the store's back."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), args)
    else:
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute(sql, args)
