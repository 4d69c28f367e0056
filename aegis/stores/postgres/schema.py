"""Creating and migrating Aegis tables in a PostgreSQL schema, per component.

Each component of a store (the audit trail, approvals, usage counters)
keeps its tables' version in one row of ``aegis_schema_versions``
(``component`` text primary key, ``version`` integer), and migrates only
its own tables. A component describes its migrations as a mapping from a
version to the statements that lead from it to the next; ``{schema}`` in a
statement becomes the quoted schema name::

    AUDIT_MIGRATIONS = {
        0: ("CREATE TABLE {schema}.aegis_audit_log (...)",),   # 0 -> 1
        1: ("ALTER TABLE {schema}.aegis_audit_log ADD ...",),    # 1 -> 2
    }
    version = migrate(db, conn, "audit", AUDIT_MIGRATIONS, create=True)

Processes that start together do not race: a migration holds a
transaction-scoped advisory lock of the schema, reads the version again
under it, and commits its statements and the new version at once, so a
failed migration leaves the schema as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from psycopg import sql

from aegis.errors import StoreError
from aegis.stores.postgres.connection import Connection, Database

__all__ = ["VERSIONS_TABLE", "component_version", "migrate", "schema_lock_key"]

#: the table of every component's schema version (CONTRACTS.md #5)
VERSIONS_TABLE: Final = "aegis_schema_versions"

#: first key of Aegis's advisory locks ("AEGS"); the second names the object
_LOCK_CLASS: Final = 0x41454753

Migrations = Mapping[int, Sequence[str]]


def schema_lock_key(schema: str, name: str) -> sql.Composed:
    """The two-int advisory lock key of ``name`` in ``schema``, as SQL arguments.

    Advisory locks are per database, so the key includes the schema: two
    schemas of one database never share a lock (a hash collision only makes
    them wait for each other).
    """
    return sql.SQL("{}, hashtext({})").format(
        sql.Literal(_LOCK_CLASS), sql.Literal(f"{schema}.{name}")
    )


def component_version(conn: Connection, schema: str, component: str) -> int | None:
    """The schema version of ``component``: ``None`` without a versions table, else 0+."""
    row = conn.execute(
        "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
        (schema, VERSIONS_TABLE),
    ).fetchone()
    if row is None or not row[0]:
        return None
    found = conn.execute(
        sql.SQL("SELECT version FROM {}.{} WHERE component = %s").format(
            sql.Identifier(schema), sql.Identifier(VERSIONS_TABLE)
        ),
        (component,),
    ).fetchone()
    return 0 if found is None else int(found[0])


def migrate(
    db: Database,
    conn: Connection,
    component: str,
    migrations: Migrations,
    *,
    create: bool,
) -> int:
    """Bring ``component``'s tables to the newest version; return the version now in place.

    With ``create=False`` (a reader: the command line, a verifier) nothing
    is created or migrated: a schema without the component's tables is an
    error, so that a typo in a DSN never looks like an empty, valid trail,
    and tables of an older version are read as they are (the version
    returned says which). A schema newer than this Aegis is an error either way.

    Raises:
        StoreError: the tables are missing (``create=False``), newer than
            this Aegis, or cannot be created (privileges, a read-only server).
    """
    target = len(migrations)
    schema = db.schema(conn)
    version = component_version(conn, schema, component)
    if version == target:
        return target  # the common case: one look, no lock
    _refuse_newer(db, schema, component, version, target)
    if not create and version:
        return version
    if not create:
        raise StoreError(
            f"no Aegis {component} tables in schema {schema!r} at {db.where}; point the "
            "DSN and the schema (--schema, schema=) at the database and schema your "
            "runtime writes (the runtime creates them on first use)"
        )
    ident = sql.Identifier(schema)
    versions = sql.SQL("{}.{}").format(ident, sql.Identifier(VERSIONS_TABLE))
    with conn.transaction():
        conn.execute(
            sql.SQL("SELECT pg_advisory_xact_lock({})").format(
                schema_lock_key(schema, VERSIONS_TABLE)
            )
        )
        if db.schema_option is not None:
            exists = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()
            if exists is None or not exists[0]:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} "
                "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            ).format(versions)
        )
        # Another process may have migrated while we waited for the lock.
        row = conn.execute(
            sql.SQL("SELECT version FROM {} WHERE component = %s FOR UPDATE").format(versions),
            (component,),
        ).fetchone()
        version = 0 if row is None else int(row[0])
        _refuse_newer(db, schema, component, version, target)
        for step in range(version, target):
            for statement in migrations[step]:
                conn.execute(sql.SQL(statement).format(schema=ident))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (component, version) VALUES (%s, %s) "
                "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version"
            ).format(versions),
            (component, target),
        )
    return target


def _refuse_newer(
    db: Database, schema: str, component: str, version: int | None, target: int
) -> None:
    if version is not None and version > target:
        raise StoreError(
            f"the Aegis {component} tables in schema {schema!r} at {db.where} are at "
            f"version {version}, newer than this Aegis knows ({target}); upgrade "
            "aegis-runtime on this machine"
        )
