"""An agent process for the restart tests: one governed action through the remote service.

Usage: python remote_agent.py URL DB SESSION_ID AMOUNT
Prints ``posted <HTTP status> <request id>`` once its request is filed, and
``result <status> <human_decision>`` at the end.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from service_support import POLICY

from aegis import Action, AuditLogger, Policy, Runtime
from aegis.runtime.approval_remote import RemoteApprovalHandler


async def main(url: str, db: str, session_id: str, amount: int) -> None:
    handler = RemoteApprovalHandler(url, token="bot-secret", timeout=30, poll=5)
    send = handler._send

    async def reporting_send(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        # Tells the test when the request is filed and whether it was new (201) or re-attached.
        response = await send(method, path, *args, **kwargs)
        if method == "POST" and path == "/api/v1/approvals":
            print("posted", response.status_code, response.json()["id"], flush=True)
        return response

    handler._send = reporting_send  # type: ignore[method-assign]
    audit = AuditLogger(db)
    async with Runtime(
        executor=lambda action: "refunded",
        policy=Policy.from_dict(POLICY),
        approval_handler=handler,
        audit_logger=audit,
        session_id=session_id,
    ) as runtime:
        result = await runtime.run_one(Action("refund", "billing", {"amount": amount}))
    await handler.aclose()
    record = AuditLogger(db).get_log(session_id, action_type="refund")[-1]
    print("result", result.status.value, record["human_decision"], flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
