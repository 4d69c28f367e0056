"""Log lines a peer can provoke, bounded: the first few of each kind, then a count.

A client or a server that sends a flood of lines the proxy refuses (each
one answered, each one recorded where it is a call) must not flood the
proxy's stderr, or the log files and journals behind it, with one line per
refusal. Each kind of refusal is logged in full the first few times; after
that the refusals are counted, and one line says how many (with the latest
reason) at most once a minute while they go on, and once more when the
session ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["QuietLog"]


@dataclass(slots=True)
class _Kind:
    level: int
    seen: int = 0
    #: counted since the last line about this kind
    untold: int = 0
    told_at: float = 0.0
    #: the latest one counted, formatted only when told
    latest: tuple[str, tuple[object, ...]] = ("", ())


class QuietLog:
    """Repeated log lines of a few kinds: each in full ``first`` times, then counted.

    Example::

        refusals = QuietLog(logging.getLogger("aegis.mcp"))
        refusals.warning("client", "refused a message: %s", why)
        ...
        refusals.flush()  # at the end: how many went untold
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        first: int = 10,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._first = first
        self._every = every
        self._clock = clock
        self._kinds: dict[str, _Kind] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        """Log a warning of ``kind``, or count it once ``first`` of them were logged."""
        self._log(logging.WARNING, kind, message, args)

    def error(self, kind: str, message: str, *args: object) -> None:
        """Log an error of ``kind``, or count it once ``first`` of them were logged."""
        self._log(logging.ERROR, kind, message, args)

    def _log(self, level: int, kind: str, message: str, args: tuple[object, ...]) -> None:
        entry = self._kinds.get(kind)
        if entry is None:
            entry = self._kinds[kind] = _Kind(level)
        entry.seen += 1
        now = self._clock()
        if entry.seen <= self._first:
            self._logger.log(level, message, *args)
            if entry.seen == self._first:
                self._logger.log(
                    level,
                    "%d lines like the last: more of them are counted, with a line "
                    "at most every %gs, not logged one by one",
                    self._first,
                    self._every,
                )
            entry.told_at = now
            return
        if not self._logger.isEnabledFor(level):
            return
        entry.untold += 1
        entry.latest = (message, args)
        if now - entry.told_at >= self._every:
            self._tell(entry, now)

    def _tell(self, entry: _Kind, now: float) -> None:
        message, args = entry.latest
        self._logger.log(
            entry.level,
            "%d more like it in the last %.0fs, the latest: %s",
            entry.untold,
            now - entry.told_at,
            message % args if args else message,
        )
        entry.untold = 0
        entry.told_at = now

    def flush(self) -> None:
        """Say how many went untold since the last line about them (at the end of a session)."""
        now = self._clock()
        for entry in self._kinds.values():
            if entry.untold:
                self._tell(entry, now)
