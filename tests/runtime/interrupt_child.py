"""A child process interrupted by Ctrl-C (SIGINT) in the middle of one action.

Usage: ``python interrupt_child.py DB STEP [raw]``

STEP is where the action is when the parent sends SIGINT; the child prints
``ready`` (flushed) once it is there:

- ``approval``: an async approval handler waits for an answer;
- ``executor``: a sync executor works on its worker thread;
- ``async-executor``: an async executor awaits;
- ``commit``: the executor is done (it waits for the file ``DB.go``) and the
  final record's commit waits for the lock the parent holds on the trail
  (the child removes ``DB.go`` as its executor returns).

``exit``: the sync executor calls ``sys.exit(3)`` (no signal).

``raw`` runs the loop with ``run_until_complete`` instead of
``asyncio.run``, so SIGINT raises KeyboardInterrupt wherever the loop is.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.risk import RiskLevel
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime

DB, STEP = sys.argv[1], sys.argv[2]


class Policy:
    """Transfers need a person; the rest runs."""

    def evaluate(self, action: Action) -> PolicyDecision:
        ask = STEP == "approval" and action.type == "wire_transfer"
        approval = Approval.APPROVE if ask else Approval.AUTO
        return PolicyDecision(action, RiskLevel.HIGH, approval, f"{action.type}_rule")


def ready() -> None:
    print("ready", flush=True)


async def ask(decision: PolicyDecision) -> bool:
    ready()
    await asyncio.Event().wait()  # nobody answers
    return True


def work(action: Action) -> str:
    if action.type != "wire_transfer":
        return "read"
    if STEP == "exit":
        sys.exit(3)
    if STEP == "commit":
        ready()
        while not os.path.exists(DB + ".go"):
            time.sleep(0.01)
        os.remove(DB + ".go")  # the parent knows the executor is done
        return "sent"
    ready()
    while True:  # the money is moving
        time.sleep(0.1)


async def work_async(action: Action) -> str:
    if action.type != "wire_transfer":
        return "read"
    ready()
    await asyncio.Event().wait()
    return "sent"


async def main() -> None:
    runtime = Runtime(
        executor=work_async if STEP == "async-executor" else work,
        policy=Policy(),
        approval_handler=ask,
        audit_logger=AuditLogger(DB),
        session_id="child",
    )
    async with runtime:
        await runtime.run_one(Action("read", "crm"))  # one action done before
        result = await runtime.run_one(Action("wire_transfer", "bank", {"amount": 250_000}))
        print("result", result.status.value, flush=True)
        await asyncio.sleep(30)  # a Ctrl-C that came late lands here


if __name__ == "__main__":
    if sys.argv[3:] == ["raw"]:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
    else:
        asyncio.run(main())
