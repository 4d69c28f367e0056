"""Opening the audit database for reading, without ever creating one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aegis.errors import AuditError
from aegis.runtime.audit import AuditLogger

__all__ = ["open_audit"]


@contextmanager
def open_audit(db_path: str) -> Iterator[AuditLogger]:
    """Open an existing audit database, read-only, and close it afterwards.

    :class:`AuditLogger` creates a missing file, which would turn a typo in
    ``--db`` into an empty, valid-looking log; refuse that instead. The
    command line only reads, so it opens the store read-only: a backup or a
    mounted evidence copy can be listed, exported and verified, and reading
    never migrates or otherwise changes the file.

    A ``postgresql://`` DSN opens the PostgreSQL trail, which must exist
    too: a reader never creates its tables.

    Raises:
        AuditError: the path does not exist or is not a file; the DSN's
            database cannot be reached or holds no audit trail.
    """
    if db_path.lower().startswith(("postgresql://", "postgres://")):
        with AuditLogger(db_path, create=False, readonly=True) as trail:
            yield trail
        return
    path = Path(db_path)
    if not path.exists():
        raise AuditError(
            f"no audit database at {path}; run `aegis demo` to create one,"
            " or point --db (or $AEGIS_DB) at your agent's database"
        )
    if not path.is_file():
        raise AuditError(f"{path} is not a file; point --db at the agent's SQLite audit database")
    with AuditLogger(path, create=False, readonly=True) as audit:
        yield audit
