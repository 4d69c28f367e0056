"""Opening the audit database for reading, without ever creating one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aegis.cli._output import note
from aegis.cli._params import command_schema
from aegis.errors import AuditError
from aegis.runtime.audit import AuditLogger
from aegis.stores import parse_store_url

__all__ = ["note_trail", "open_audit", "trail_name", "trail_schema"]


@contextmanager
def open_audit(db_path: str, *, schema: str | None = None) -> Iterator[AuditLogger]:
    """Open an existing audit database, read-only, and close it afterwards.

    :class:`AuditLogger` creates a missing file, which would turn a typo in
    ``--db`` into an empty, valid-looking log; refuse that instead. The
    command line only reads, so it opens the store read-only: a backup or a
    mounted evidence copy can be listed, exported and verified, and reading
    never migrates or otherwise changes the file.

    A PostgreSQL DSN opens the PostgreSQL trail (in ``schema``, by default
    the command's ``--schema``), which must exist too: a reader never
    creates its tables. Which engine a location names is decided by
    :func:`aegis.stores.parse_store_url`, so ``mysql://`` is refused, never
    taken for a file name.

    Raises:
        AuditError: the path does not exist or is not a file; the DSN's
            database cannot be reached or holds no audit trail.
    """
    location = parse_store_url(db_path)
    if location.engine == "memory" or location.target == ":memory:":
        raise AuditError(
            f"{db_path} keeps nothing between processes; point --db at your agent's database"
        )
    if location.engine == "sqlite":
        path = Path(location.target)
        if not path.exists():
            raise AuditError(
                f"no audit database at {path}; run `aegis demo` to create one,"
                " or point --db (or $AEGIS_DB) at your agent's database"
            )
        if not path.is_file():
            raise AuditError(
                f"{path} is not a file; point --db at the agent's SQLite audit database"
            )
    schema = command_schema() if schema is None else schema
    with AuditLogger(db_path, create=False, readonly=True, schema=schema) as trail:
        yield trail


def trail_schema(log: AuditLogger) -> str | None:
    """The PostgreSQL schema ``log`` read (once it has read), or ``None`` for SQLite."""
    found = getattr(log.store, "schema", None)
    return found if isinstance(found, str) else None


def trail_name(log: AuditLogger) -> str:
    """Where ``log`` is: the file, or the schema and the (masked) DSN.

    Without ``--schema`` a PostgreSQL trail is the connection's current
    schema, which a role can change (a schema named after it comes first
    in the default search path): the schema read is always said.
    """
    schema = trail_schema(log)
    return log.db_path if schema is None else f"schema {schema} of {log.db_path}"


def note_trail(log: AuditLogger, what: str) -> None:
    """Say on stderr that ``what`` came from the PostgreSQL schema ``log`` read.

    Every command reading a trail says it the same way, after it has read
    (the schema is known only then). A SQLite file is the ``--db`` given:
    nothing to add. Stdout, which scripts parse, never gets the note.
    """
    if trail_schema(log) is not None:
        note(f"{what} of {trail_name(log)}")
