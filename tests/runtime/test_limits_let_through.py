"""An approved action counts from when it is let through to run, not from when it was decided."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from aegis import Action, AuditLogger, MemoryUsageStore, Policy, ResultStatus, Runtime
from aegis.core.decision import PolicyDecision
from aegis.testing import InMemoryAuditLog

POLICY = """\
version: "1"
defaults: {approval: block}
rules:
  - name: sends
    match: {type: send}
    limit: {max: 1, per: 2s}
    on_exceed: {approval: block}
    risk_level: high
    approval: approve
"""


class Reviewer:
    """Approves at once, except the first request, which waits until released."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.release = asyncio.Event()
        self.count = 0

    async def request_approval(self, decision: PolicyDecision) -> bool:
        self.count += 1
        if self.count == 1:
            self.asked.set()
            await self.release.wait()
        return True


def _runtime(reviewer: Reviewer, ran: list[tuple[str, float]], **stores: Any) -> Runtime:
    def send(action: Action) -> str:
        ran.append((action.params["to"], time.monotonic()))
        return "sent"

    return Runtime(
        executor=send,
        policy=Policy.from_dict(yaml.safe_load(POLICY)),
        approval_handler=reviewer,
        **stores,
    )


@pytest.mark.parametrize("store", ["memory", "sqlite", "postgres"])
async def test_an_approval_slower_than_the_window_does_not_let_two_sends_through(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The slow approval's send is refused: another one ran within the window just before."""
    reviewer = Reviewer()
    ran: list[tuple[str, float]] = []
    if store == "memory":
        stores: dict[str, Any] = {
            "audit_logger": InMemoryAuditLog(),
            "usage_store": MemoryUsageStore(),
        }
    elif store == "sqlite":
        stores = {"audit_logger": AuditLogger(str(tmp_path / "audit.db"))}
    else:
        stores = {"audit_logger": AuditLogger(request.getfixturevalue("postgres_dsn"))}
    async with _runtime(reviewer, ran, **stores) as runtime:
        slow = asyncio.create_task(runtime.run_one(Action("send", "mail", {"to": "a"})))
        await asyncio.wait_for(reviewer.asked.wait(), 30)
        # Wait until the slow send's decision-time reservation has left the window.
        deadline = time.monotonic() + 30
        while True:
            [planned] = runtime.plan([Action("send", "mail", {"to": "b"})])
            if planned.approval.value != "block" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        quick = await runtime.run_one(Action("send", "mail", {"to": "b"}))
        assert quick.status is ResultStatus.SUCCESS
        reviewer.release.set()
        late = await asyncio.wait_for(slow, 30)
    assert late.status is ResultStatus.BLOCKED
    assert "limit of rule 'sends' exceeded" in (late.error or "")
    assert [to for to, _ in ran] == ["b"]


async def test_an_approved_send_alone_still_runs_and_counts_from_its_start() -> None:
    """Nothing else ran: the slow approval's send runs, and the next one waits a window."""
    reviewer = Reviewer()
    ran: list[tuple[str, float]] = []
    stores = {"audit_logger": InMemoryAuditLog(), "usage_store": MemoryUsageStore()}
    async with _runtime(reviewer, ran, **stores) as runtime:
        slow = asyncio.create_task(runtime.run_one(Action("send", "mail", {"to": "a"})))
        await asyncio.wait_for(reviewer.asked.wait(), 30)
        await asyncio.sleep(2.2)  # the decision-time reservation is out of the window by now
        reviewer.release.set()
        assert (await asyncio.wait_for(slow, 30)).status is ResultStatus.SUCCESS
        after = await runtime.run_one(Action("send", "mail", {"to": "b"}))
    assert after.status is ResultStatus.BLOCKED
    assert [to for to, _ in ran] == ["a"]
