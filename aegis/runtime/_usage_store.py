"""Where a runtime's usage counters live when it is given no ``usage_store``.

:func:`usage_store_for` finds the store beside the audit trail, so every
process writing that trail shares the counts: a SQLite audit gives a
:class:`~aegis.stores.sqlite.usage.SQLiteUsageStore` on its database, a
PostgreSQL audit one on its DSN, and an audit without a database (a logging
audit, ``":memory:"``) an in-memory store, counted in this process only.
The metering step (:mod:`aegis.runtime.metering`) calls it the first time a
policy with limits, budgets or flow rules needs its counters.
"""

from __future__ import annotations

from aegis.errors import ConfigurationError
from aegis.stores.usage import MemoryUsageStore, UsageStore

__all__ = ["usage_store_for"]


def usage_store_for(audit: object) -> tuple[UsageStore, bool]:
    """The usage store beside ``audit``'s records, and whether the caller owns it.

    A SQLite audit gives a :class:`~aegis.stores.sqlite.usage.SQLiteUsageStore`
    sharing its database (``":memory:"`` included), a PostgreSQL audit one on
    its DSN; anything else (a logging audit) an in-memory store, counted in
    this process only.
    """
    db = getattr(audit, "db", None)
    conninfo = getattr(db, "_conninfo", None)  # a PostgresAuditLogger's connection string
    if isinstance(conninfo, str) and conninfo:
        from aegis.stores.postgres.usage import PostgresUsageStore  # noqa: PLC0415

        schema = getattr(db, "schema_option", None)
        schema = schema if isinstance(schema, str) else None
        return PostgresUsageStore(conninfo, schema=schema), True
    for attribute in ("dsn", "url", "db_path"):
        location = getattr(audit, attribute, None)
        if isinstance(location, str) and location.startswith(("postgresql://", "postgres://")):
            if "***" in location:
                raise ConfigurationError(
                    f"cannot open usage counters beside the audit at {location}: its password is"
                    " masked; pass usage_store=PostgresUsageStore(dsn) to the Runtime"
                )
            from aegis.stores.postgres.usage import PostgresUsageStore  # noqa: PLC0415

            return PostgresUsageStore(location), True
    from aegis.stores.sqlite.connection import SQLiteDatabase  # noqa: PLC0415
    from aegis.stores.sqlite.usage import SQLiteUsageStore  # noqa: PLC0415

    database = getattr(getattr(audit, "store", None), "db", None)
    if isinstance(database, SQLiteDatabase) and not database.readonly:
        # The audit's own connection: one writer per process for the file.
        return SQLiteUsageStore(database=database), True
    path = getattr(audit, "db_path", None)
    if isinstance(path, str) and path.lower().startswith("sqlite:///"):
        path = path[len("sqlite:///") :]
    if not isinstance(path, str) or path in ("", ":memory:") or path.lower() == "memory://":
        return MemoryUsageStore(), True  # no database to share: this process counts
    if "://" in path or path.startswith("file:"):
        raise ConfigurationError(
            f"cannot tell where to keep usage counters beside the audit at {path!r}; pass"
            " usage_store= to the Runtime (e.g. MemoryUsageStore() or SQLiteUsageStore(path))"
        )
    return SQLiteUsageStore(path), True
