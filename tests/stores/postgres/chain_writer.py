"""A writer of a fault test: governed actions into one PostgreSQL chain until told to stop.

Usage: ``python chain_writer.py DSN WORKER``

Runs ``Runtime.run_one`` one action after another, each with
``context={"w": WORKER, "n": n}``, at durability ``"result"``, and prints
``n`` (flushed) for each action whose Result came back successful: those
are the actions it was promised are recorded, to the disk. Failed Results
(the server restarting) are expected; the writer goes on after a short
pause. It stops, cleanly, when its stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
import threading

from aegis.core.action import Action
from aegis.core.policy import Policy
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime
from aegis.stores.postgres.audit import PostgresAuditStore

POLICY = {
    "version": "1",
    "defaults": {"risk_level": "medium", "approval": "block"},
    "rules": [
        {"name": "writes", "match": {"type": "write"}, "risk_level": "low", "approval": "auto"}
    ],
}


async def run(dsn: str, worker: int, stop: threading.Event) -> None:
    """Run actions until ``stop`` is set; print the n of each successful one."""
    store = PostgresAuditStore(
        dsn, durability="result", connect_timeout=2, statement_timeout=5, response_timeout=8
    )
    audit = AuditLogger(store=store)
    async with Runtime(
        executor=lambda action: {"ok": True}, policy=Policy.from_dict(POLICY), audit_logger=audit
    ) as runtime:
        n = 0
        while not stop.is_set():
            n += 1
            result = await runtime.run_one(
                Action("write", "crm", {"w": worker, "n": n}), context={"w": worker, "n": n}
            )
            if result.ok:
                print(n, flush=True)
            else:
                await asyncio.sleep(0.05)


def main() -> None:
    """Start the writer; stop it when stdin closes."""
    dsn, worker = sys.argv[1], int(sys.argv[2])
    stop = threading.Event()

    def watch() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    asyncio.run(run(dsn, worker, stop))


if __name__ == "__main__":
    main()
