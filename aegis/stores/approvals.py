"""Where approval requests, reviewer decisions, tokens and grants are kept.

:class:`~aegis.stores.base.ApprovalStore` (in :mod:`aegis.stores.base`, beside
the audit and usage interfaces) is what the approval service needs from a database;
SQLite (:mod:`aegis.stores.sqlite.approvals`) and PostgreSQL
(:mod:`aegis.stores.postgres.approvals`) implement it with the same SQL
(:mod:`aegis.stores._approvals_sql`) and pass the same contract tests. The
tables live beside the audit trail, in the same file or database.

Every change of a request's status is one conditional ``UPDATE ... WHERE
status = 'pending'`` in the database, so two reviewers deciding at the same
instant, or several service processes on one PostgreSQL database, can never
both win: the second sees zero rows changed and gets a conflict.
"""

from __future__ import annotations

from aegis.errors import ConfigurationError
from aegis.stores._ids import TOKEN_PREFIX, hash_token, new_grant_id, new_request_id, new_token
from aegis.stores.base import OPERATOR_EVENTS, ApprovalStore, AuditEvent

__all__ = [
    "OPERATOR_EVENTS",
    "TOKEN_PREFIX",
    "ApprovalStore",
    "AuditEvent",
    "hash_token",
    "new_grant_id",
    "new_request_id",
    "new_token",
    "open_approval_store",
]


def open_approval_store(db: str, *, schema: str | None = None) -> ApprovalStore:
    """Open only the approval tables at ``db``: a SQLite path, ``sqlite:///path`` or a DSN.

    The store keeps a connection of its own; beside an audit trail in the
    same process, prefer ``open_stores(db, schema=...).approvals``, which
    shares the trail's. ``schema`` (PostgreSQL only) names the schema of the
    tables; the connection's ``current_schema()`` by default.

    Raises:
        ConfigurationError: ``db`` names no store with approval tables.
    """
    # Imported here: the engines load lazily, and psycopg is an extra.
    from aegis.stores._url import parse_store_url  # noqa: PLC0415

    location = parse_store_url(db)
    if location.engine == "postgres":
        from aegis.stores.postgres.approvals import PostgresApprovalStore  # noqa: PLC0415

        return PostgresApprovalStore(location, schema=schema)
    if location.engine == "sqlite" and schema is None:
        from aegis.stores.sqlite.approvals import SqliteApprovalStore  # noqa: PLC0415

        return SqliteApprovalStore(location.target)
    raise ConfigurationError(
        f"{location.where!r} keeps no approval tables"
        + (" in schemas (that is PostgreSQL's)" if schema is not None else "")
        + "; give a SQLite file or a postgresql:// DSN"
    )
