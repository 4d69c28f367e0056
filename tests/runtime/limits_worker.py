"""A worker process for the limits tests: runs governed actions and prints their statuses.

Usage: python limits_worker.py POLICY DB DSN_OR_DASH SESSION START_FILE ACTION...

Each ACTION is ``type:target`` or ``type:target:{json params}``. The worker
waits for START_FILE to exist (so that several workers start together),
runs every action with ``run_one`` under a runtime whose audit is the SQLite
file DB and whose usage store is PostgreSQL when a DSN is given (else the
audit file's), approves nothing, and prints one JSON list of statuses. An
action of type ``hang`` prints ``hanging`` and never finishes. With the one
ACTION ``-``, the actions are read from stdin instead, a line each, run one
after another in the same runtime, and each status is printed as it ends.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from aegis import Action, AuditLogger, Policy, Runtime
from aegis.stores.usage import UsageStore


async def execute(action: Action) -> str:
    """Done at once; an action of type ``hang`` never finishes (for SIGKILL tests)."""
    if action.type == "hang":
        print("hanging", flush=True)
        await asyncio.sleep(3600)
    return "done"


def parse(text: str) -> Action:
    """``type:target[:{json}]`` as an Action."""
    kind, target, *rest = text.split(":", 2)
    return Action(kind, target, json.loads(rest[0]) if rest else {})


async def main(argv: list[str]) -> None:
    """Run the actions concurrently and print their statuses in order."""
    policy_path, db, dsn, session, start_file, *actions = argv
    usage: UsageStore | None = None
    if dsn != "-":
        from aegis.stores.postgres.usage import PostgresUsageStore

        usage = PostgresUsageStore(dsn)
    deadline = time.monotonic() + 30
    while not Path(start_file).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    async with Runtime(
        executor=execute,
        policy=Policy.from_yaml(policy_path),
        audit_logger=AuditLogger(db),
        approval_handler=lambda decision: False,
        session_id=session,
        agent="worker",
        usage_store=usage,
    ) as runtime:
        if actions == ["-"]:  # one at a time, as the test asks, in this one process
            while line := await asyncio.to_thread(sys.stdin.readline):
                result = await runtime.run_one(parse(line.strip()))
                print(json.dumps(result.status.value), flush=True)
            results = []
        else:
            results = await asyncio.gather(*(runtime.run_one(parse(a)) for a in actions))
    if usage is not None:
        usage.close()
    print(json.dumps([r.status.value for r in results]))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
