"""Start markers: the actions a process began, kept in a file beside the database.

The runtime marks an action as started right before its executor runs, so
that a process killed mid-action leaves evidence instead of silence. The mark
only has to survive the death of the process, not of the machine, and a
write(2) to a file does: once the call returns, the data is the kernel's.
Appending one line costs under a microsecond, where a SQLite commit of its
own costs more than ten, on every action.

Each process appends to a journal of its own (``<db>.pending-<pid>-<random>``),
so no two writers share a file and it can be emptied without racing anyone:
once every action it started has its final record, the journal is cut back
to nothing when it has grown, and removed when the logger closes. The final
record of an action stores the marker's reference (``<journal>:<token>``), so
a reader finds the unfinished actions of every journal, including those of
killed processes, by asking the database which references it has.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import weakref
from collections.abc import Iterator
from typing import Any

from aegis.runtime.audit_backend import encode_compact

__all__ = ["StartJournal", "read_journals"]

#: a journal with no unfinished action is emptied once it grows past this
_COMPACT_AT = 1 << 20

_SUFFIX = ".pending-"


def journal_paths(db_path: str) -> list[str]:
    """Return the journals of every process that wrote starts for ``db_path``."""
    return sorted(glob.glob(glob.escape(db_path) + _SUFFIX + "*"))


def read_journals(db_path: str) -> Iterator[dict[str, Any]]:
    """Yield every start marker in the journals of ``db_path``, oldest first per file.

    A line cut short by a crash in the middle of a write is skipped: its
    action never reached the executor, which only runs after the write.
    """
    for path in journal_paths(db_path):
        name = os.path.basename(path)[len(os.path.basename(db_path)) + len(_SUFFIX) :]
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                lines = file.readlines()
        except FileNotFoundError:  # its process closed it while we looked
            continue
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("id"), int):
                entry["ref"] = f"{name}:{entry['id']}"
                yield entry


class StartJournal:
    """The start markers of one AuditLogger in this process.

    Not thread-safe on its own: the AuditLogger calls it under its lock.
    An in-memory database keeps its markers in memory.
    """

    def __init__(self, db_path: str, *, fsync: bool = False) -> None:
        self._fsync = fsync
        self._db_path = db_path
        self._begin()

    def _begin(self) -> None:
        # A fresh journal of this process: a forked child must not share its
        # parent's file (the first to close would delete the other's evidence)
        # nor its token numbers.
        self._pid = os.getpid()
        self.name = f"{self._pid}-{secrets.token_hex(4)}"
        db_path = self._db_path
        self._path = None if db_path == ":memory:" else f"{db_path}{_SUFFIX}{self.name}"
        self._fd: int | None = None
        # closes the file when this journal is collected or the interpreter
        # exits without AuditLogger.close() (the seed's examples never close)
        self._release: weakref.finalize[Any, StartJournal] | None = None
        self._size = 0
        self._next = 0
        # token -> (line, params JSON, params) of the markers without a final record
        self._open: dict[int, tuple[str, str, object]] = {}

    def ref(self, token: int) -> str:
        """The reference a final record stores for the marker ``token``."""
        return f"{self.name}:{token}"

    def start(self, fields: dict[str, Any], params_json: str, params: object) -> int:
        """Append a marker for an action about to run; return its token.

        ``fields`` are plain strings and numbers; ``params_json`` is the
        action's ``params`` as JSON text already. The line is in the kernel's
        hands when this returns.
        """
        if os.getpid() != self._pid:
            if self._release is not None:
                self._release.detach()  # the file is the parent's: never remove it
            if self._fd is not None:
                os.close(self._fd)  # our copy only; the parent's stays open
            self._begin()
        self._next += 1
        token = self._next
        head = encode_compact({"id": token, "pid": self._pid, **fields})
        line = f'{head[:-1]},"action_params":{params_json}}}\n'
        if self._path is not None:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._release = weakref.finalize(
                    self, _release, self._fd, self._path, self._open, self._pid
                )
            data = line.encode("utf-8", "surrogatepass")
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
                if self._fsync:
                    os.fsync(self._fd)
            except OSError:
                # Cut a half-written line off, or the next marker would be
                # glued to it and unreadable.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise
            self._size += len(data)
        self._open[token] = (line, params_json, params)
        return token

    def params_json(self, token: int, params: object) -> str | None:
        """The text of ``params`` if the marker ``token`` encoded these very params.

        The final record then need not encode them again.
        """
        marker = self._open.get(token)
        return marker[1] if marker is not None and marker[2] is params else None

    def finished(self, token: int) -> None:
        """Forget the marker ``token``: its final record is committed."""
        self._open.pop(token, None)
        if not self._open and self._fd is not None and self._size > _COMPACT_AT:
            # Every action this journal holds is finished: start it afresh.
            os.ftruncate(self._fd, 0)
            self._size = 0

    def unfinished(self) -> list[dict[str, Any]]:
        """The markers of an in-memory database that have no final record."""
        out = []
        for token, (line, _, _) in self._open.items():
            entry = json.loads(line)
            entry["ref"] = self.ref(token)
            out.append(entry)
        return out

    def close(self) -> None:
        """Close the file; remove it when every action it marked is finished."""
        release, self._release, self._fd = self._release, None, None
        if release is not None:
            release()


def _release(fd: int, path: str, unfinished: dict[int, Any], pid: int) -> None:
    """Close a journal's file, and remove it if none of its actions is unfinished.

    Runs once: on close(), when the journal is collected, or at exit. A
    killed process never gets here, and its journal stays as evidence.
    """
    with contextlib.suppress(OSError):
        os.close(fd)
    if os.getpid() == pid and not unfinished:  # a forked child's exit keeps the parent's
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
