"""An agent process for the restart tests: one governed action through the remote service.

Usage: python remote_agent.py URL DB SESSION_ID AMOUNT
Prints ``posted <HTTP status> <request id>`` once its request is filed, and
``result <status> <human_decision>`` at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
from service_support import POLICY

from aegis import Action, AuditLogger, Policy, Runtime
from aegis.runtime.approval_remote import RemoteApprovalHandler


class ReportingTransport(httpx.AsyncHTTPTransport):
    """Tells the test when the request is filed and whether it was new (201) or re-attached."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "POST" and request.url.path == "/api/v1/approvals":
            await response.aread()
            print("posted", response.status_code, json.loads(response.content)["id"], flush=True)
        return response


async def main(url: str, db: str, session_id: str, amount: int) -> None:
    handler = RemoteApprovalHandler(
        url, token="bot-secret", timeout=30, poll=5, transport=ReportingTransport()
    )
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
