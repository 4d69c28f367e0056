"""Where things are kept: one set of interfaces, several engines, one opener.

An in-memory store for tests (:mod:`aegis.stores.memory`), embedded SQLite
by default (:mod:`aegis.stores.sqlite`), and PostgreSQL for fleets of
processes on many machines (:mod:`aegis.stores.postgres`, the ``postgres``
extra). The interfaces (audit, usage counters, approvals) are in
:mod:`aegis.stores.base`. :func:`open_stores` reads a location once
(:func:`~aegis.stores._url.parse_store_url`, the only place that decides
which engine a location names), opens the engine's connection once and
hands it to the audit, usage and approval stores of that location::

    stores = open_stores("audit.db")                           # SQLite file
    stores = open_stores("postgresql://app:secret@db/aegis", schema="agents")
    stores.audit.check()
    stores.usage        # the counters of limits and budgets, beside the trail
    stores.approvals    # the approval service's tables, beside the trail
    stores.close()

The usage and approval stores open on first use and share the audit
store's connection: on SQLite its one connection per process, on
PostgreSQL its :class:`~aegis.stores.postgres.connection.Database` (the DSN,
its password, its pool and its timeouts), so all three land in the same
file, or the same database and schema.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis.errors import ConfigurationError, StoreError
from aegis.stores._url import StoreURL, is_postgres_url, mask_dsn, parse_store_url, sqlite_path
from aegis.stores.base import AuditReader, AuditStore, AuditWriter

if TYPE_CHECKING:
    from aegis.stores.base import ApprovalStore, UsageStore

__all__ = [
    "AuditReader",
    "AuditStore",
    "AuditWriter",
    "StoreURL",
    "Stores",
    "is_postgres_url",
    "mask_dsn",
    "open_store",
    "open_stores",
    "parse_store_url",
    "sqlite_path",
    "stores_for",
]


class Stores:
    """The audit, usage and approval stores of one location, over one connection.

    Made by :func:`open_stores` (or :func:`stores_for` around an audit store
    opened by hand). :attr:`usage` and :attr:`approvals` open on first use,
    once; :meth:`close` closes all three.
    """

    def __init__(
        self,
        location: StoreURL,
        audit: AuditStore,
        usage: Callable[[], UsageStore],
        approvals: Callable[[], ApprovalStore],
    ) -> None:
        self.location = location
        self.audit = audit
        self._open_usage = usage
        self._open_approvals = approvals
        self._usage: UsageStore | None = None
        self._approvals: ApprovalStore | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Stores {self.location.engine} {self.location.where}>"

    @property
    def where(self) -> str:
        """The location for messages (a DSN's password masked)."""
        return self.location.where

    @property
    def usage(self) -> UsageStore:
        """The usage counters beside the trail, opened on first use."""
        with self._lock:
            self._check_open()
            if self._usage is None:
                self._usage = self._open_usage()
            return self._usage

    @property
    def approvals(self) -> ApprovalStore:
        """The approval tables beside the trail, opened (and created or migrated) on first use."""
        with self._lock:
            self._check_open()
            if self._approvals is None:
                self._approvals = self._open_approvals()
            return self._approvals

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the stores at {self.where} are closed; open them again")

    def close(self) -> None:
        """Close the approval, usage and audit stores; calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            opened = [s for s in (self._approvals, self._usage) if s is not None]
        try:
            for store in opened:
                store.close()
        finally:
            self.audit.close()

    def __enter__(self) -> Stores:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_stores(
    url: str | Path | StoreURL,
    *,
    schema: str | None = None,
    create: bool = True,
    readonly: bool = False,
    **options: Any,
) -> Stores:
    """Open the stores at ``url``: a path, ``sqlite:///...``, a PostgreSQL DSN or ``memory://``.

    Nothing connects until a store is first used (or :meth:`check`\\ ed).
    ``schema`` names the PostgreSQL schema of every table (created when
    missing); ``None`` uses the connection's ``current_schema()``.
    ``create=False`` requires an existing store; ``readonly=True`` never
    writes. ``options`` go to the engine's audit store as they are:
    ``durability`` (and its older spelling ``synchronous``) for every
    engine, ``busy_timeout`` for SQLite, timeouts and pool options for
    PostgreSQL; the other two stores share its connection.

    Raises:
        ConfigurationError: ``url`` names no engine this Aegis has, the
            engine's extra is not installed, or ``schema`` is given for an
            engine without schemas.
    """
    location = parse_store_url(url)
    if schema is not None and location.engine != "postgres":
        raise ConfigurationError(
            f"schema={schema!r} names a PostgreSQL schema, but {location.where!r} is a "
            f"{location.engine} store; drop the schema, or give a postgresql:// DSN"
        )
    if location.engine == "memory":
        from aegis.stores.memory import MemoryStore  # noqa: PLC0415  # only when asked for

        memory = MemoryStore(
            durability=options.get("durability"), synchronous=options.get("synchronous")
        )
        return stores_for(memory, location)
    if location.engine == "postgres":
        try:
            from aegis.stores.postgres.audit import PostgresAuditStore  # noqa: PLC0415
        except ImportError as exc:
            raise ConfigurationError(
                "a PostgreSQL store needs the postgres extra: "
                f'pip install "aegis-runtime[postgres]" ({exc})'
            ) from exc
        pg = PostgresAuditStore(
            location, schema=schema, create=create, readonly=readonly, **options
        )
        return stores_for(pg, location, create=create)
    from aegis.stores.sqlite.audit import SQLiteAuditStore  # noqa: PLC0415  # engines load lazily

    lite = SQLiteAuditStore(location.target, create=create, readonly=readonly, **options)
    return stores_for(lite, location, create=create)


def stores_for(
    audit: AuditStore, location: StoreURL | None = None, *, create: bool = True
) -> Stores:
    """The :class:`Stores` around an open audit store: usage and approvals beside it.

    A SQLite or PostgreSQL audit store lends its connection; any other
    store (memory, a store of your own) gets usage counters in this
    process's memory and no approval tables.
    """
    from aegis.stores.sqlite.audit import SQLiteAuditStore  # noqa: PLC0415  # stdlib only
    from aegis.stores.usage import MemoryUsageStore  # noqa: PLC0415

    postgres = sys.modules.get("aegis.stores.postgres.audit")  # never imports psycopg
    if isinstance(audit, SQLiteAuditStore):
        lite = audit
        where = location or parse_store_url(lite.url)

        def sqlite_usage() -> UsageStore:
            from aegis.stores.sqlite.usage import SQLiteUsageStore  # noqa: PLC0415

            return SQLiteUsageStore(database=lite.db)

        def sqlite_approvals() -> ApprovalStore:
            from aegis.stores.sqlite.approvals import SqliteApprovalStore  # noqa: PLC0415

            path = lite.db.path
            if not create and path != ":memory:" and not os.path.exists(path):
                raise StoreError(
                    f"no database at {path!r}; point the location at the service's database "
                    "(aegis serve creates it)"
                )
            return SqliteApprovalStore(lite.db)

        return Stores(where, audit, sqlite_usage, sqlite_approvals)
    if postgres is not None and isinstance(audit, postgres.PostgresAuditStore):
        pg = audit
        where = location or StoreURL("postgres", pg.url, pg.url)

        def postgres_usage() -> UsageStore:
            from aegis.stores.postgres.usage import PostgresUsageStore  # noqa: PLC0415

            return PostgresUsageStore(pg.db)

        def postgres_approvals() -> ApprovalStore:
            from aegis.stores.postgres.approvals import PostgresApprovalStore  # noqa: PLC0415

            return PostgresApprovalStore(pg.db, create=create and not pg.readonly)

        return Stores(where, audit, postgres_usage, postgres_approvals)

    where = location or StoreURL("memory", audit.url, audit.url)

    def no_approvals() -> ApprovalStore:
        raise ConfigurationError(
            f"the store at {where.where} keeps no approval tables; give the approval "
            "service a SQLite file or a PostgreSQL database"
        )

    return Stores(where, audit, MemoryUsageStore, no_approvals)


def open_store(
    url: str | Path, *, create: bool = True, readonly: bool = False, **options: Any
) -> AuditStore:
    """Open only the audit store at ``url`` (see :func:`open_stores`).

    Raises:
        ConfigurationError: as for :func:`open_stores`.
    """
    return open_stores(url, create=create, readonly=readonly, **options).audit
