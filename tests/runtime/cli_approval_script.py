"""Run one approve action through a Runtime whose approver is the terminal.

Used by test_approval_cli.py through a real subprocess with piped stdin.
Prints ``STATUS <status>`` and ``HUMAN <human decision>`` on the last lines.
Usage: python cli_approval_script.py [timeout-seconds]
"""

from __future__ import annotations

import asyncio
import sys

from engine_support import TablePolicy

from aegis.core.action import Action
from aegis.runtime.approval import CLIApprovalHandler
from aegis.runtime.engine import Runtime
from aegis.testing import InMemoryAuditLog, RecordingExecutor


async def main() -> None:
    timeout = float(sys.argv[1]) if len(sys.argv) > 1 else None
    audit = InMemoryAuditLog()
    runtime = Runtime(
        executor=RecordingExecutor(),
        policy=TablePolicy(),
        approval_handler=CLIApprovalHandler(timeout=timeout),
        audit_logger=audit,
    )
    async with runtime:
        result = await runtime.run_one(
            Action("update", "crm", {"id": 7, "tier": "gold"}, "Upgrade customer 7")
        )
    print(f"\nSTATUS {result.status.value}")
    print(f"HUMAN {audit.records[0]['human_decision']}")


if __name__ == "__main__":
    asyncio.run(main())
