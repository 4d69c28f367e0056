"""Declare that some policy looks back, so that every runtime sharing a store notes events.

A runtime whose policy has no flow condition notes no flow event while no
policy sharing the store looks back at all (a gap in the history stands in
for them: see ``Metering.cover``). Tests of how events are written, taken
back and read start from a fleet where another process's flow rules look
back an hour, as they would be in use.
"""

from __future__ import annotations

import time
from pathlib import Path

from aegis.stores.postgres.usage import PostgresUsageStore
from aegis.stores.sqlite.usage import SQLiteUsageStore

#: how far back the other process's flow rules look (seconds)
HOUR = 3600.0


def looked_back(where: str | Path, seconds: float | None = HOUR) -> None:
    """Tell the usage store at ``where`` (a SQLite path or a PostgreSQL DSN) a horizon."""
    text = str(where)
    if text.startswith(("postgresql://", "postgres://", "host=", "dbname=")):
        store: SQLiteUsageStore | PostgresUsageStore = PostgresUsageStore(text)
    else:
        store = SQLiteUsageStore(text)
    try:
        store.forget_events(seconds, time.time())
    finally:
        store.close()
