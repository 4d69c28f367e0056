"""Aegis in one page: a policy, a governed runtime, and the audit trail.

Run it from anywhere:  python examples/quickstart.py
It writes its audit trail to aegis_audit.db in the working directory.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aegis import Action, Policy, Runtime
from aegis.runtime.approval_callback import CallbackApprovalHandler

POLICY = Path(__file__).with_name("policy.yaml")


async def crm(action: Action) -> dict[str, Any]:
    """A stand-in executor; a real one would call your CRM here."""
    return {"did": action.type, "on": action.target, **action.params}


async def main() -> None:
    policy = Policy.from_yaml(POLICY)
    # No human at hand in a quickstart: approve LOW/MEDIUM risk, deny the rest.
    approver = CallbackApprovalHandler(callback=lambda d: d.risk_level.value <= 2)

    async with Runtime(executor=crm, policy=policy, approval_handler=approver) as runtime:
        # One action: decided, executed and audited in a single call.
        result = await runtime.run_one(Action("read", "crm", {"id": 1}))
        print(result, result.data)

        # A plan: see what the policy says first, then run it.
        plan = runtime.plan(
            [
                Action("update", "crm", {"id": 2, "fields": {"tier": "gold"}}),
                Action("delete", "crm", {"scope": "all"}),
                Action("refund", "billing", {"customer_id": 2, "amount": 25}),
                Action("refund", "billing", {"customer_id": 2, "amount": 900}),
            ]
        )
        print(plan.summary())
        for r in await runtime.execute(plan):
            print(r)

        count = runtime.audit.count(runtime.session_id)
        print(f"{count} audit records for session {runtime.session_id}")


if __name__ == "__main__":
    asyncio.run(main())
