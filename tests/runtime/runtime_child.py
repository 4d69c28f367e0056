"""A child process running a real Runtime, for the SIGKILL tests of the audit trail.

Usage: ``python runtime_child.py DB DONE``

Runs DONE quick ``read`` actions to the end, then a ``wire_transfer`` whose
executor prints ``executing`` (flushed) and hangs, to be killed mid-action.
"""

from __future__ import annotations

import asyncio
import sys
import time

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.risk import RiskLevel
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime


class Policy:
    """Everything auto, transfers high risk."""

    def evaluate(self, action: Action) -> PolicyDecision:
        risk = RiskLevel.HIGH if action.type == "wire_transfer" else RiskLevel.LOW
        return PolicyDecision(action, risk, Approval.AUTO, f"{action.type}_rule")


def execute(action: Action) -> dict[str, int]:
    if action.type == "wire_transfer":
        print("executing", flush=True)
        while True:  # the money is moving: kill us now
            time.sleep(1)
    return {"ok": 1}


async def main() -> None:
    db, done = sys.argv[1], int(sys.argv[2])
    runtime = Runtime(
        executor=execute, policy=Policy(), audit_logger=AuditLogger(db), session_id="child"
    )
    async with runtime:
        for n in range(done):
            await runtime.run_one(Action("read", "crm", {"n": n}))
        await runtime.run_one(
            Action("wire_transfer", "bank", {"amount": 250_000, "to": "ACME"}),
            context={"tool_call_id": "call_42"},
        )


if __name__ == "__main__":
    asyncio.run(main())
