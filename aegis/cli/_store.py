"""The ``--db`` option of the service commands, and opening the approval tables."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import click

from aegis.errors import StoreError
from aegis.stores.approvals import ApprovalStore

__all__ = ["durability_option", "is_dsn", "open_tables", "store_option"]

F = TypeVar("F", bound=Callable[..., object])


def store_option(function: F) -> F:
    """Add ``--db PATH_OR_DSN`` (also ``$AEGIS_DB``): the store of the audit trail and approvals."""
    return click.option(
        "--db",
        "db",
        default="aegis_audit.db",
        show_default=True,
        envvar="AEGIS_DB",
        show_envvar=True,
        help="SQLite file, sqlite:///PATH or postgresql:// DSN of the audit trail and approvals.",
    )(function)


def durability_option(function: F) -> F:
    """Add ``--durability LEVEL`` (also ``$AEGIS_DURABILITY``): what a returned record survives."""
    return click.option(
        "--durability",
        type=click.Choice(["process", "result", "full"]),
        default=None,
        envvar="AEGIS_DURABILITY",
        show_envvar=True,
        help="What a recorded action survives: process (the process's death), result "
        "(a power cut, once its Result is returned; the default) or full (a power cut, "
        "from its start on).",
    )(function)


def is_dsn(db: str) -> bool:
    """Whether ``db`` names a PostgreSQL database rather than a SQLite file."""
    return db.startswith(("postgresql://", "postgres://"))


@contextmanager
def open_tables(db: str, *, create: bool) -> Iterator[ApprovalStore]:
    """Open the approval tables of ``db``; a missing SQLite file is created only if ``create``.

    The approval tables share the file or database with the audit trail.
    """
    # Imported here so that `aegis --help` never pays for the stores.
    from aegis.stores.approvals import open_approval_store  # noqa: PLC0415

    if not is_dsn(db):
        path = db.removeprefix("sqlite:///")
        if not create and not os.path.exists(path):
            raise StoreError(
                f"no database at {path}; create a token first (aegis token create ...) "
                "or point --db (or $AEGIS_DB) at the service's database"
            )
    store = open_approval_store(db)
    try:
        yield store
    finally:
        store.close()
