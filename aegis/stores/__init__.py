"""Where things are kept: one set of interfaces, several engines.

An in-memory store for tests (:mod:`aegis.stores.memory`), embedded SQLite
by default (:mod:`aegis.stores.sqlite`), and PostgreSQL for fleets of
processes on many machines (:mod:`aegis.stores.postgres`, the ``postgres``
extra). The interfaces are in :mod:`aegis.stores.base`; :func:`open_store`
picks the engine from a URL::

    store = open_store("audit.db")                       # SQLite file
    store = open_store("sqlite:///var/lib/aegis/audit.db")
    store = open_store("postgresql://aegis@db.internal/aegis", schema="agents")
    store = open_store("memory://")

Each engine's audit module provides the store class this dispatches to:
``aegis.stores.sqlite.audit.SQLiteAuditStore`` and
``aegis.stores.postgres.audit.PostgresAuditStore``, both taking
``(url, *, create=True, readonly=False, **options)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from aegis.errors import ConfigurationError
from aegis.stores.base import AuditReader, AuditStore, AuditWriter

__all__ = ["AuditReader", "AuditStore", "AuditWriter", "is_postgres_url", "open_store"]

_POSTGRES = ("postgresql://", "postgres://")


def is_postgres_url(url: object) -> bool:
    """Whether ``url`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(url, str) and url.lower().startswith(_POSTGRES)


def sqlite_path(url: str | Path) -> str:
    """The file path of a SQLite URL or plain path (``sqlite:///a.db`` is ``a.db``)."""
    text = str(url)
    if text.lower().startswith("sqlite://"):
        rest = text[len("sqlite://") :]
        if not rest.startswith("/"):
            raise ConfigurationError(
                f"{text!r} is not a SQLite URL; write sqlite:///relative.db or "
                "sqlite:////absolute/path.db (or just the path)"
            )
        rest = rest[1:]
        return rest or ":memory:"
    return text


def open_store(
    url: str | Path, *, create: bool = True, readonly: bool = False, **options: Any
) -> AuditStore:
    """Open the audit store at ``url``: a path, ``sqlite:///...``, ``postgresql://...`` or ``memory://``.

    Nothing connects until the store is first used (or :meth:`check`\\ ed).
    ``create=False`` requires an existing store; ``readonly=True`` never
    writes. ``options`` go to the engine: ``durability`` (and its older
    spelling ``synchronous``) for every engine, ``busy_timeout`` for SQLite,
    ``schema`` and pool options for PostgreSQL.

    Raises:
        ConfigurationError: ``url`` names no engine this Aegis has, or the
            engine's extra is not installed.
    """
    if isinstance(url, str) and url.lower() == "memory://":
        from aegis.stores.memory import MemoryStore  # noqa: PLC0415  # only when asked for

        return MemoryStore(
            durability=options.get("durability"), synchronous=options.get("synchronous")
        )
    if is_postgres_url(url):
        try:
            module = importlib.import_module("aegis.stores.postgres.audit")
        except ImportError as exc:
            raise ConfigurationError(
                "a postgresql:// audit store needs the postgres extra: "
                f'pip install "aegis-runtime[postgres]" ({exc})'
            ) from exc
        store: AuditStore = module.PostgresAuditStore(
            url, create=create, readonly=readonly, **options
        )
        return store
    if not isinstance(url, str | Path):
        raise ConfigurationError(
            f"an audit store is a path or a URL, not {type(url).__name__}; "
            "e.g. 'aegis_audit.db' or 'postgresql://user@host/db'"
        )
    text = str(url)
    lowered = text.lower()
    if ("://" in text or lowered.startswith("sqlite:")) and not lowered.startswith("sqlite://"):
        raise ConfigurationError(
            f"{text!r} names no audit store; use a file path, sqlite:///path, "
            "postgresql://... or memory://"
        )
    from aegis.stores.sqlite.audit import SQLiteAuditStore  # noqa: PLC0415  # engines load lazily

    return SQLiteAuditStore(sqlite_path(text), create=create, readonly=readonly, **options)
