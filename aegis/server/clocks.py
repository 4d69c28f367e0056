"""The host's clock against the database server's, read once when ``aegis serve`` starts.

Audit claims, grants and requests expire by the database server's clock,
which every service process on it shares; tokens and inbox sign-ins still
expire by each host's own. A host whose clock is off keeps a token or a
sign-in alive longer (or ends it sooner) than its holder was promised, so
``aegis serve`` warns when the two clocks disagree. It does not refuse to
start: the clocks may be set right while it runs, and NTP is the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Protocol, runtime_checkable

from aegis.core.approval_request import iso

__all__ = ["SKEW_WARNING", "ClockReading", "DatabaseClock", "read_clocks", "skew_warning"]

#: seconds the host's and the database server's clocks may disagree before a warning
SKEW_WARNING: Final = 5.0


@runtime_checkable
class DatabaseClock(Protocol):
    """A store on a database server, which may run on another host with its own clock."""

    def database_time(self) -> datetime:
        """The database server's clock now (an aware time)."""
        ...


@dataclass(frozen=True, slots=True)
class ClockReading:
    """The database server's time and the host's at the middle of the round trip that read it."""

    host: datetime
    database: datetime
    #: the round trip's length: the reading may be off by half of it
    round_trip: timedelta

    @property
    def skew(self) -> float:
        """Seconds the host's clock runs ahead of the database server's (negative: behind)."""
        return (self.host - self.database).total_seconds()


def read_clocks(store: object, clock: Callable[[], datetime]) -> ClockReading | None:
    """Read the database server's clock and ``clock`` around it; ``None`` for a local store.

    A SQLite file's clock is this host's: there is nothing to compare.

    Raises:
        StoreError: the database did not answer.
    """
    if not isinstance(store, DatabaseClock):
        return None
    before = clock()
    database = store.database_time()
    after = clock()
    return ClockReading(before + (after - before) / 2, database, after - before)


def skew_warning(reading: ClockReading) -> str | None:
    """What to tell the operator when the clocks disagree by more than :data:`SKEW_WARNING`."""
    # Half the round trip is how far off the reading may be: a slow answer
    # alone does not warn.
    certain = abs(reading.skew) - reading.round_trip.total_seconds() / 2
    if certain <= SKEW_WARNING:
        return None
    ahead = reading.skew > 0
    return (
        f"this host's clock ({iso(reading.host)}) is {abs(reading.skew):.1f} s "
        f"{'ahead of' if ahead else 'behind'} the database server's "
        f"({iso(reading.database)}): tokens and inbox sign-ins expire by each host's own "
        f"clock, so here they end {'early' if ahead else 'late'} by that much; keep every "
        "host of the deployment and the database server on NTP"
    )
