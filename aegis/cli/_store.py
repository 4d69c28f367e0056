"""The ``--db`` and ``--schema`` options of the service commands; opening the approval tables."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import click

from aegis.cli._output import warn
from aegis.cli._params import command_schema, db_password_check, schema_option
from aegis.errors import StoreError
from aegis.stores._url import parse_store_url
from aegis.stores.approvals import ApprovalStore

__all__ = [
    "audit_trail",
    "durability_option",
    "open_tables",
    "service_store_option",
    "store_option",
]

if TYPE_CHECKING:
    from aegis.runtime.audit import AuditLogger

F = TypeVar("F", bound=Callable[..., object])


def store_option(function: F) -> F:
    """Add ``--db PATH_OR_DSN`` (also ``$AEGIS_DB``) and ``--schema``: the service's store."""
    return _store_option(function, long_running=False)


def service_store_option(function: F) -> F:
    """:func:`store_option` for a command that runs for hours: no password in ``--db`` on argv."""
    return _store_option(function, long_running=True)


def _store_option(function: F, *, long_running: bool) -> F:
    return schema_option(
        click.option(
            "--db",
            "db",
            default="aegis_audit.db",
            show_default=True,
            envvar="AEGIS_DB",
            show_envvar=True,
            callback=db_password_check(long_running=long_running),
            help="SQLite file, sqlite:///PATH or postgresql:// DSN of the audit trail and "
            "approvals.",
        )(function)
    )


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


@contextmanager
def open_tables(db: str, *, create: bool) -> Iterator[ApprovalStore]:
    """Open the approval tables of ``db`` (and ``--schema``), beside the audit trail.

    A store is never created unnoticed: without ``create`` a missing SQLite
    file (or PostgreSQL tables) is an error; with it, new ones are said out
    loud, with the full path (or the DSN and schema), because a token created
    in a database the service does not read is a token the service calls
    unknown.
    """
    # Imported here so that `aegis --help` never pays for the stores.
    from aegis.stores import open_stores  # noqa: PLC0415

    location = parse_store_url(db)
    created = None
    if location.engine == "sqlite" and location.target != ":memory:":
        path = location.target
        if not os.path.exists(path):
            if not create:
                raise StoreError(
                    f"no database at {os.path.abspath(path)}; point --db (or $AEGIS_DB) at "
                    "the database `aegis serve` uses"
                )
            created = os.path.abspath(path)
    schema = command_schema()
    with open_stores(location, schema=schema, create=create) as stores:
        store = stores.approvals
        if location.engine == "postgres":
            # Imported here: psycopg is an extra, loaded only for a DSN.
            from aegis.stores.postgres.approvals import PostgresApprovalStore  # noqa: PLC0415

            if isinstance(store, PostgresApprovalStore) and store.created:
                created = f"new approval tables in schema {store.schema!r} of {location.where}"
                serve = f"--db {location.where}" + (f" --schema {schema}" if schema else "")
        elif created is not None:
            serve = f"--db {created}"
            created = f"a new database at {created}"
        if created is not None:
            warn(
                f"created {created}, as none was there: `aegis serve` must use it "
                f"(aegis serve {serve}), or its reviewers and agents will not know this token"
            )
        yield store


def audit_trail(db: str) -> AuditLogger:
    """The audit trail of ``db`` in the command's ``--schema``, where ``aegis serve`` keeps it.

    A command that changes a request or a grant records it there: opened
    without the schema, a PostgreSQL trail is another one (the search
    path's), and the service's own trail never gets the record.
    """
    # Imported here: the runtime's audit is only needed by the commands that write.
    from aegis.runtime.audit import AuditLogger  # noqa: PLC0415

    return AuditLogger(db.removeprefix("sqlite:///"), schema=command_schema())
