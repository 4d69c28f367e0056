"""A worker of a fleet: governed actions through a Runtime into one shared audit trail.

Usage: ``python fleet_worker.py DB COUNT WORKER [CONCURRENCY]``

DB is a ``postgresql://`` DSN or a SQLite path. The worker waits for a line on
stdin (so that a test can start a fleet at one moment), then runs COUNT
actions, CONCURRENCY at a time (default 1: one after another), each with
``context={"worker": WORKER, "n": n}``. It prints one JSON line: the worker,
how many results succeeded, and each action's latency in microseconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aegis.core.action import Action
from aegis.core.policy import Policy
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime

POLICY = {
    "version": "1",
    "defaults": {"risk_level": "medium", "approval": "block"},
    "rules": [
        {"name": "writes", "match": {"type": "write"}, "risk_level": "low", "approval": "auto"}
    ],
}


def executor(action: Action) -> dict[str, object]:
    """Do nothing, quickly: the cost measured is the gate's and the store's."""
    return {"ok": action.params["n"]}


async def run(db: str, count: int, worker: int, concurrency: int) -> dict[str, object]:
    """Run the actions and return the summary line's fields."""
    latencies: list[int] = []
    ok = 0
    audit = AuditLogger(db)
    async with Runtime(
        executor=executor, policy=Policy.from_dict(POLICY), audit_logger=audit
    ) as runtime:

        async def one(n: int) -> None:
            nonlocal ok
            start = time.perf_counter_ns()
            result = await runtime.run_one(
                Action("write", "crm", {"n": n, "worker": worker}),
                context={"worker": worker, "n": n},
            )
            latencies.append((time.perf_counter_ns() - start) // 1000)
            ok += result.ok

        for first in range(0, count, concurrency):
            await asyncio.gather(*(one(n) for n in range(first, min(first + concurrency, count))))
    return {"worker": worker, "ok": ok, "latencies_us": latencies}


def main() -> None:
    """Run as the command line says and print the summary."""
    db, count, worker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    sys.stdin.readline()
    print(json.dumps(asyncio.run(run(db, count, worker, concurrency))), flush=True)


if __name__ == "__main__":
    main()
