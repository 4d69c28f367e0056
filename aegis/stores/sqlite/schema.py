"""Schema versions of a SQLite store, per component, and the audit trail's migrations.

A store file is marked as Aegis's by ``PRAGMA application_id`` and holds a
table ``aegis_schema_versions(component, version)``: each component (the
audit trail, approvals, usage counters) creates and migrates its own tables
with :func:`migrate`, in its own transaction, and refuses a file written by
a newer Aegis. A file that is neither empty nor marked as ours is refused
before anything is written to it.

Audit databases of the first schemas (before per-component versions) kept
their version in ``PRAGMA user_version``; :func:`migrate` reads it once as
the audit component's version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Final

from aegis.errors import StoreError
from aegis.stores.sqlite.connection import APPLICATION_ID

__all__ = ["AUDIT_MIGRATIONS", "AUDIT_VERSION", "check_ours", "component_version", "migrate"]

_VERSIONS: Final = (
    "CREATE TABLE IF NOT EXISTS aegis_schema_versions "
    "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)

#: the audit trail's schema version this Aegis writes
AUDIT_VERSION: Final = 4

#: statements taking the audit tables from version N to N + 1
AUDIT_MIGRATIONS: Final[Mapping[int, Sequence[str]]] = {
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
            start_ref TEXT  -- no longer used: starts are records of the chain since schema 3
        )""",
        "CREATE INDEX audit_log_session ON audit_log (session_id, id)",
    ),
    # the decide step's time, the policy's digest and the caller's context
    1: (
        "ALTER TABLE audit_log ADD COLUMN context TEXT",
        "ALTER TABLE audit_log ADD COLUMN decided_at TEXT",
        "ALTER TABLE audit_log ADD COLUMN policy_digest TEXT",
    ),
    # start records in the chain: a record's kind, and the start a final record finishes
    2: (
        "ALTER TABLE audit_log ADD COLUMN kind TEXT",
        "ALTER TABLE audit_log ADD COLUMN start_id INTEGER",
        "CREATE INDEX audit_log_start ON audit_log (start_id) WHERE start_id IS NOT NULL",
    ),
    # signed checkpoints of the chain's head
    3: (
        """CREATE TABLE audit_checkpoints (
            count INTEGER PRIMARY KEY,
            hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            key_id TEXT NOT NULL,
            signature TEXT NOT NULL
        )""",
    ),
}


def _not_ours(path: str) -> StoreError:
    return StoreError(
        f"{path!r} is a SQLite database but not an Aegis audit database; "
        "use the audit database your runtime writes instead"
    )


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def check_ours(conn: sqlite3.Connection, path: str) -> bool:
    """Whether the file is an Aegis store; ``False`` for an empty file; raise if another's."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id == APPLICATION_ID:
        return True
    if app_id == 0 and not _tables(conn):
        return False
    # Another process may have created the file between the two reads; its
    # mark and its tables commit together, so the tables seen mean the mark is.
    if app_id == 0 and conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
        return True
    raise _not_ours(path)


def component_version(conn: sqlite3.Connection, component: str) -> int:
    """The schema version of ``component`` in this file (0 when absent)."""
    tables = _tables(conn)
    version = 0
    if "aegis_schema_versions" in tables:
        row = conn.execute(
            "SELECT version FROM aegis_schema_versions WHERE component = ?", (component,)
        ).fetchone()
        if row is not None:
            version = int(row[0])
    if component == "audit" and "audit_log" in tables:
        # Schemas 1 and 2 kept it here; a newer Aegis may have raised it too.
        version = max(version, int(conn.execute("PRAGMA user_version").fetchone()[0]))
    return version


def migrate(
    conn: sqlite3.Connection,
    path: str,
    component: str,
    target: int,
    migrations: Mapping[int, Sequence[str]],
) -> None:
    """Bring ``component``'s tables to version ``target`` in one write transaction.

    Creates the file's marks when it is empty. Raises StoreError for a file
    that is not ours or that a newer Aegis wrote; sqlite3 errors propagate
    (the caller's connection boundary translates them).
    """
    if check_ours(conn, path) and component_version(conn, component) == target:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have created or migrated it while we waited.
        if not check_ours(conn, path):
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        version = component_version(conn, component)
        if version > target:
            raise StoreError(
                f"{path!r} was written by a newer Aegis ({component} schema {version}, this "
                f"one knows up to {target}); upgrade aegis-runtime"
            )
        while version < target:
            for statement in migrations[version]:
                conn.execute(statement)
            version += 1
        conn.execute(_VERSIONS)
        conn.execute(
            "INSERT INTO aegis_schema_versions (component, version) VALUES (?, ?) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (component, version),
        )
        if component == "audit":
            # What schemas 1 and 2 read: an older Aegis then refuses this file.
            conn.execute(f"PRAGMA user_version={version}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
