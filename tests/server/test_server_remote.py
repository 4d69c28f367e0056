"""A real Runtime with RemoteApprovalHandler against `aegis serve` running in a subprocess."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_support import POLICY, Reviewer, Service, add_tokens

from aegis import Action, AuditLogger, Policy, Result, ResultStatus, Runtime
from aegis.core.action import action_digest
from aegis.core.approval_request import Role, TokenInfo
from aegis.errors import ApprovalServiceError
from aegis.runtime.approval_remote import RemoteApprovalHandler
from aegis.stores.approvals import hash_token, open_approval_store

AGENT = Path(__file__).with_name("remote_agent.py")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for the module, on a SQLite file with the test tokens."""
    root = tmp_path_factory.mktemp("served")
    db = str(root / "aegis.db")
    add_tokens(db)
    service = Service(db, root).start()
    yield service
    service.stop()


@pytest.fixture
async def people(served: Service) -> AsyncIterator[dict[str, Reviewer]]:
    """Reviewers alice, bob (finance) and carol (ops) with HTTP clients."""
    found = {name: Reviewer(served.url, name) for name in ("alice", "bob", "carol")}
    yield found
    for reviewer in found.values():
        await reviewer.aclose()


class Agent:
    """A Runtime governed by the remote service, with an executor that counts its runs."""

    def __init__(self, url: str, db: str, *, timeout: float = 10.0) -> None:
        self.session_id = uuid.uuid4().hex
        self.ran: list[Action] = []
        self.handler = RemoteApprovalHandler(url, token="bot-secret", timeout=timeout, poll=5)
        self.audit = AuditLogger(db)
        self.runtime = Runtime(
            executor=self._execute,
            policy=Policy.from_dict(POLICY),
            approval_handler=self.handler,
            audit_logger=self.audit,
            session_id=self.session_id,
        )

    def _execute(self, action: Action) -> str:
        self.ran.append(action)
        return "done"

    def start(self, kind: str, amount: int = 100) -> asyncio.Task[Result]:
        """Run one action in the background."""
        return asyncio.create_task(
            self.runtime.run_one(Action(kind, "billing", {"amount": amount}))
        )

    def last_record(self) -> dict[str, Any]:
        """The runtime's own record of the last action (the service writes others)."""
        records = AuditLogger(self.audit.db_path).get_log(self.session_id)
        own = [r for r in records if not str(r["human_decision"]).startswith("approval:")]
        return own[-1]

    async def close(self) -> None:
        """Close the runtime and the handler's client."""
        await self.runtime.close()
        await self.handler.aclose()


@pytest.fixture
async def agent(served: Service) -> AsyncIterator[Agent]:
    """An agent with a fresh session on the module's service."""
    made = Agent(served.url, served.db)
    yield made
    await made.close()


async def test_approve(agent: Agent, people: dict[str, Reviewer]) -> None:
    """A reviewer's approval lets the action run; its record names the reviewer and request."""
    task = agent.start("refund", 900)
    request = await people["alice"].pending(agent.session_id)
    assert request["action"]["params"] == {"amount": 900}
    assert (await people["alice"].decide(request["id"], comment="ok")).status_code == 200
    result = await asyncio.wait_for(task, 10)
    assert result.status is ResultStatus.SUCCESS
    assert len(agent.ran) == 1
    record = agent.last_record()
    assert record["human_decision"] == f"approved by alice: ok [request {request['id']}]"
    assert record["result_status"] == "success"


async def test_an_int_too_long_to_print_and_its_look_alike_are_approved_apart(
    agent: Agent, people: dict[str, Reviewer]
) -> None:
    """An int past the digit limit travels to the service as canonical JSON's mark, a mapping
    shaped like that mark escaped: two requests with two digests, each approved, each action
    run as the agent asked it, the int as the int."""
    huge = 10**5000
    look_alike = {"__aegis_int__": hex(huge)}
    requests, results = [], []
    for amount in (huge, look_alike):
        action = Action("refund", "billing", {"amount": amount})
        task = asyncio.create_task(agent.runtime.run_one(action))
        request = await people["alice"].pending(agent.session_id)
        assert request["action_digest"] == action_digest(action)
        assert (await people["alice"].decide(request["id"])).status_code == 200
        requests.append(request)
        results.append(await asyncio.wait_for(task, 10))
    assert [result.status for result in results] == [ResultStatus.SUCCESS] * 2
    assert requests[0]["action_digest"] != requests[1]["action_digest"]
    assert requests[0]["action"]["params"] == {"amount": look_alike}
    assert requests[1]["action"]["params"] == {"amount": {"__aegis_map__": look_alike}}
    assert [action.params["amount"] for action in agent.ran] == [huge, look_alike]


async def test_deny(agent: Agent, people: dict[str, Reviewer]) -> None:
    """A reviewer's denial stops the action; the runtime's record says who and why."""
    task = agent.start("refund")
    request = await people["bob"].pending(agent.session_id)
    await people["bob"].decide(request["id"], "deny", comment="not today")
    result = await asyncio.wait_for(task, 10)
    assert result.status is ResultStatus.DENIED
    assert agent.ran == []
    assert agent.last_record()["human_decision"] == (
        f"denied by bob: not today [request {request['id']}]"
    )


async def test_expiry_denies_and_cannot_be_approved(
    agent: Agent, people: dict[str, Reviewer]
) -> None:
    """A request past its rule's approval_ttl expires: the agent is denied, a late approval 409."""
    task = agent.start("purge")
    request = await people["alice"].pending(agent.session_id)
    result = await asyncio.wait_for(task, 10)
    assert result.status is ResultStatus.DENIED
    assert "expired" in (result.error or "")
    late = await people["alice"].decide(request["id"])
    assert late.status_code == 409
    assert (await people["alice"].get(request["id"]))["status"] == "expired"
    assert agent.ran == []


async def test_handler_timeout_cancels_the_request(
    served: Service, people: dict[str, Reviewer]
) -> None:
    """When the handler gives up, the request is cancelled: a late click approves nothing."""
    agent = Agent(served.url, served.db, timeout=0.5)
    try:
        task = agent.start("refund")
        # Any status: on a loaded machine the 0.5 s timeout may cancel it first.
        request = await people["alice"].pending(agent.session_id, status="all")
        result = await asyncio.wait_for(task, 10)
        assert result.status is ResultStatus.DENIED
        assert "cancelled" in (result.error or "")
        shown = await people["alice"].get(request["id"])
        assert shown["status"] == "cancelled"
        assert (await people["alice"].decide(request["id"])).status_code == 409
        assert agent.ran == []
    finally:
        await agent.close()


async def test_two_person_rule(agent: Agent, people: dict[str, Reviewer]) -> None:
    """approvers: 2 waits for a second, distinct reviewer; the record names both."""
    task = agent.start("wire", 5000)
    request = await people["alice"].pending(agent.session_id)
    await people["alice"].decide(request["id"])
    await asyncio.sleep(0.2)
    assert not task.done()
    assert (await people["alice"].decide(request["id"])).status_code == 409
    await people["bob"].decide(request["id"])
    result = await asyncio.wait_for(task, 10)
    assert result.status is ResultStatus.SUCCESS
    assert agent.last_record()["human_decision"] == (
        f"approved by alice, bob [request {request['id']}]"
    )


async def test_reviewer_groups(agent: Agent, people: dict[str, Reviewer]) -> None:
    """reviewers: [finance] refuses carol (ops) and accepts alice (finance)."""
    task = agent.start("payroll")
    request = await people["alice"].pending(agent.session_id)  # carol's list omits it
    refused = await people["carol"].decide(request["id"])
    assert refused.status_code == 403
    assert not task.done()
    await people["alice"].decide(request["id"])
    assert (await asyncio.wait_for(task, 10)).status is ResultStatus.SUCCESS


async def test_self_approval_refused(served: Service, people: dict[str, Reviewer]) -> None:
    """The name that asked cannot decide its own request, even holding a reviewer token."""
    store = open_approval_store(served.db)
    try:
        store.create_token(
            TokenInfo("erin", Role.AGENT, (), _now()), hash_token("erin-agent-secret")
        )
        store.create_token(
            TokenInfo("frank", Role.REVIEWER, (), _now()), hash_token("frank-secret")
        )
    finally:
        store.close()
    body = {"session_id": "self", "action": {"type": "refund", "target": "billing"}}
    async with httpx.AsyncClient(base_url=served.url) as client:
        asked = await client.post(
            "/api/v1/approvals", json=body, headers={"Authorization": "Bearer erin-agent-secret"}
        )
        request_id = asked.json()["id"]
        store = open_approval_store(served.db)
        try:
            store.revoke_token("erin", _now())
            with pytest.raises(ApprovalServiceError):  # a revoked name is retired now
                store.create_token(
                    TokenInfo("erin", Role.REVIEWER, (), _now()), hash_token("erin-2")
                )
        finally:
            store.close()
        with sqlite3.connect(served.db) as conn:  # a store from before retired names
            conn.execute(
                "UPDATE aegis_tokens SET token_hash = ?, role = 'reviewer', revoked_at = NULL "
                "WHERE name = 'erin'",
                (hash_token("erin-secret"),),
            )
        conn.close()
        refused = await client.post(
            f"/api/v1/approvals/{request_id}/decision",
            json={"verdict": "approve"},
            headers={"Authorization": "Bearer erin-secret"},
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "self_approval"


def _now() -> datetime:
    return datetime.now(UTC)


async def test_grant_lets_the_same_kind_pass_then_revoke(
    served: Service, agent: Agent, people: dict[str, Reviewer]
) -> None:
    """An approval with grant_minutes lets the next refund of the session pass, naming the grant."""
    task = agent.start("refund", 10)
    request = await people["alice"].pending(agent.session_id)
    await people["alice"].decide(request["id"], grant_minutes=5)
    assert (await asyncio.wait_for(task, 10)).status is ResultStatus.SUCCESS
    second = await asyncio.wait_for(agent.start("refund", 20), 10)
    assert second.status is ResultStatus.SUCCESS
    record = agent.last_record()
    assert record["human_decision"].startswith("approved by grant grt_")
    assert "(from alice)" in record["human_decision"]
    grants = (await people["alice"].client.get("/api/v1/grants")).json()["grants"]
    mine = [g for g in grants if g["session_id"] == agent.session_id]
    assert len(mine) == 1
    revoked = await people["alice"].client.post(f"/api/v1/grants/{mine[0]['id']}/revoke")
    assert revoked.status_code == 200
    third = agent.start("refund", 30)
    again = await people["alice"].pending(agent.session_id)
    await people["alice"].decide(again["id"], "deny")
    assert (await asyncio.wait_for(third, 10)).status is ResultStatus.DENIED
    assert len(agent.ran) == 2


async def test_consumed_approval_is_refused_a_second_time(
    served: Service, agent: Agent, people: dict[str, Reviewer]
) -> None:
    """After the runtime collected an approval, collecting it again is a 409."""
    task = agent.start("refund", 77)
    request = await people["alice"].pending(agent.session_id)
    await people["alice"].decide(request["id"])
    assert (await asyncio.wait_for(task, 10)).status is ResultStatus.SUCCESS
    async with httpx.AsyncClient(
        base_url=served.url, headers={"Authorization": "Bearer bot-secret"}
    ) as client:
        again = await client.post(f"/api/v1/approvals/{request['id']}/collect")
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "already_collected"
    # The same action asked again is a new request, not the used approval.
    replay = agent.start("refund", 77)
    fresh = await people["alice"].pending(agent.session_id)
    assert fresh["id"] != request["id"]
    await people["alice"].decide(fresh["id"], "deny")
    assert (await asyncio.wait_for(replay, 10)).status is ResultStatus.DENIED
    assert len(agent.ran) == 1


async def test_concurrent_decisions_exactly_one_wins(
    agent: Agent, people: dict[str, Reviewer]
) -> None:
    """Three reviewers deciding at the same instant over HTTP: one 200, and the agent sees it."""
    task = agent.start("refund")
    request = await people["alice"].pending(agent.session_id)
    answers = await asyncio.gather(
        people["alice"].decide(request["id"]),
        people["bob"].decide(request["id"], "deny"),
        people["carol"].decide(request["id"]),
    )
    assert sorted(a.status_code for a in answers) == [200, 409, 409]
    winner = next(a for a in answers if a.status_code == 200).json()
    result = await asyncio.wait_for(task, 10)
    expected = ResultStatus.SUCCESS if winner["status"] == "approved" else ResultStatus.DENIED
    assert result.status is expected
    assert len((await people["alice"].get(request["id"]))["decisions"]) == 1


async def test_service_restart_while_the_agent_waits(tmp_path: Path) -> None:
    """The service is killed and restarted on the same database; the waiting agent then runs."""
    db = str(tmp_path / "aegis.db")
    add_tokens(db)
    service = Service(db, tmp_path).start()
    agent = Agent(service.url, db, timeout=30)
    alice = Reviewer(service.url, "alice")
    restarted = Service(db, tmp_path, port=service.port)
    try:
        task = agent.start("refund", 321)
        request = await alice.pending(agent.session_id)
        service.kill()
        await asyncio.sleep(0.5)
        assert not task.done()
        restarted.start()
        assert (await alice.get(request["id"]))["status"] == "pending"
        assert (await alice.decide(request["id"])).status_code == 200
        result = await asyncio.wait_for(task, 20)
        assert result.status is ResultStatus.SUCCESS
        assert agent.last_record()["human_decision"] == (
            f"approved by alice [request {request['id']}]"
        )
    finally:
        await alice.aclose()
        await agent.close()
        service.stop()
        restarted.stop()


async def test_agent_restart_reattaches(tmp_path: Path) -> None:
    """An agent killed while waiting, restarted with its session, re-attaches to its request."""
    db = str(tmp_path / "aegis.db")
    add_tokens(db)
    service = Service(db, tmp_path).start()
    alice = Reviewer(service.url, "alice")
    session = "agent-restart"
    command = [sys.executable, str(AGENT), service.url, db, session, "555"]
    try:
        first = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=AGENT.parent, text=True)
        assert first.stdout is not None
        posted = first.stdout.readline().split()
        first.kill()
        first.wait(10)
        first.stdout.close()
        assert posted[:2] == ["posted", "201"]
        request = await alice.get(posted[2])
        assert request["status"] == "pending"
        second = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=AGENT.parent, text=True)
        assert second.stdout is not None
        assert second.stdout.readline().split() == ["posted", "200", request["id"]]
        await alice.decide(request["id"])
        out, _ = second.communicate(timeout=20)
        assert f"result success approved by alice [request {request['id']}]" in out
    finally:
        await alice.aclose()
        service.stop()
