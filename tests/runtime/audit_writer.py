"""A child process for the audit crash and multi-process tests.

Usage: ``python audit_writer.py DB MODE COUNT``

MODE ``record`` writes with ``record_start`` + ``record``, ``log`` with the
synchronous ``log``; COUNT 0 means forever. MODE ``start`` calls
``record_start`` once, prints its token and then hangs, to be killed.
Each id is printed (and flushed) only after the call that wrote it returned.
The child waits for a line on stdin before writing, so that a test can
start several writers at the same moment.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.runtime.audit import AuditLogger


def _decision(n: int) -> PolicyDecision:
    action = Action("write", "crm", {"n": n, "note": "ünïcode"}, f"write #{n}")
    return PolicyDecision(action, RiskLevel.MEDIUM, Approval.AUTO, "writes")


async def _record(audit: AuditLogger, session: str, count: int) -> None:
    for n in itertools.count(1) if count == 0 else range(1, count + 1):
        decision = _decision(n)
        token = await audit.record_start(session, decision)
        result = Result(decision.action, ResultStatus.SUCCESS, {"n": n})
        record_id = await audit.record(session, decision, result=result, start_token=token)
        print(record_id, flush=True)


def _log(audit: AuditLogger, session: str, count: int) -> None:
    for n in itertools.count(1) if count == 0 else range(1, count + 1):
        decision = _decision(n)
        result = Result(decision.action, ResultStatus.SUCCESS, {"n": n})
        print(audit.log(session, decision, result=result), flush=True)


async def _start(audit: AuditLogger, session: str) -> None:
    token = await audit.record_start(session, _decision(0))
    print(token, flush=True)
    while True:  # wait to be killed mid-action
        time.sleep(1)


def main() -> None:
    """Write records as the command line says."""
    db, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    audit = AuditLogger(db)
    session = f"{mode}-writer"
    sys.stdin.readline()
    if mode == "record":
        asyncio.run(_record(audit, session, count))
    elif mode == "log":
        _log(audit, session, count)
    elif mode == "start":
        asyncio.run(_start(audit, session))
    else:
        raise SystemExit(f"unknown mode {mode!r}; use record, log or start")
    audit.close()


if __name__ == "__main__":
    main()
