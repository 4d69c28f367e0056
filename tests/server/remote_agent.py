"""An agent process for the restart tests: one governed action through the remote service.

Usage: python remote_agent.py URL DB SESSION_ID AMOUNT
Prints ``asking`` before it waits and ``result <status> <human_decision>`` at the end.
"""

from __future__ import annotations

import asyncio
import sys

from service_support import POLICY

from aegis import Action, AuditLogger, Policy, Runtime
from aegis.runtime.approval_remote import RemoteApprovalHandler


async def main(url: str, db: str, session_id: str, amount: int) -> None:
    handler = RemoteApprovalHandler(url, token="bot-secret", timeout=30, poll=5)
    audit = AuditLogger(db)
    async with Runtime(
        executor=lambda action: "refunded",
        policy=Policy.from_dict(POLICY),
        approval_handler=handler,
        audit_logger=audit,
        session_id=session_id,
    ) as runtime:
        print("asking", flush=True)
        result = await runtime.run_one(Action("refund", "billing", {"amount": amount}))
    await handler.aclose()
    record = AuditLogger(db).get_log(session_id, action_type="refund")[-1]
    print("result", result.status.value, record["human_decision"], flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
