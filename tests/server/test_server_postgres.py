"""Two approval services on one PostgreSQL database serve one queue."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_support import POLICY as SERVED_POLICY
from service_support import Reviewer, Service, add_tokens

from aegis import Action, AuditLogger, Policy, ResultStatus, Runtime
from aegis.core.approval_request import (
    RequestStatus,
    Role,
    TokenInfo,
    Verdict,
    iso,
    parse_new_request,
    parse_time,
)
from aegis.errors import ApprovalServiceError
from aegis.runtime.approval_remote import RemoteApprovalHandler
from aegis.server import ApprovalService, create_app
from aegis.stores.approvals import hash_token
from aegis.stores.postgres.approvals import PostgresApprovalStore, mask_dsn
from aegis.testing import InMemoryAuditLog

POLICY = Policy.from_dict({"rules": [{"name": "refunds", "match": {"type": "refund"}}]})


@pytest.fixture
async def pair(postgres_dsn: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Two services, each with its own connection pool, on one schema; a client for each."""
    services = [
        ApprovalService(PostgresApprovalStore(postgres_dsn), InMemoryAuditLog(), poll_interval=0.05)
        for _ in range(2)
    ]
    now = datetime.now(UTC)
    for name, role in (("bot", Role.AGENT), ("alice", Role.REVIEWER), ("bob", Role.REVIEWER)):
        services[0].store.create_token(TokenInfo(name, role, (), now), hash_token(f"{name}-secret"))
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(s)), base_url="http://t")
        for s in services
    ]
    yield clients
    for client in clients:
        await client.aclose()
    for service in services:
        service.close()


def auth(name: str) -> dict[str, str]:
    """The Authorization header of ``name``'s token."""
    return {"Authorization": f"Bearer {name}-secret"}


async def test_agent_on_one_service_reviewer_on_the_other(pair: list[httpx.AsyncClient]) -> None:
    """An agent waiting through one service runs once a reviewer approves through the other."""
    first, second = pair
    handler = RemoteApprovalHandler(
        "http://t", token="bot-secret", timeout=10, poll=5, transport=first._transport
    )
    async with Runtime(
        executor=lambda action: "ok",
        policy=POLICY,
        approval_handler=handler,
        audit_logger=InMemoryAuditLog(),
    ) as runtime:
        task = asyncio.create_task(runtime.run_one(Action("refund", "billing", {"amount": 3})))
        pending: list[dict[str, str]] = []
        while not pending:
            await asyncio.sleep(0.02)
            pending = (await second.get("/api/v1/approvals", headers=auth("alice"))).json()[
                "approvals"
            ]
        decided = await second.post(
            f"/api/v1/approvals/{pending[0]['id']}/decision",
            json={"verdict": "approve"},
            headers=auth("alice"),
        )
        assert decided.status_code == 200
        result = await asyncio.wait_for(task, 10)
    await handler.aclose()
    assert result.status is ResultStatus.SUCCESS


async def test_racing_reviewers_on_two_services(pair: list[httpx.AsyncClient]) -> None:
    """Reviewers deciding one request at once through two services: exactly one wins."""
    first, second = pair
    body = {"session_id": "s", "action": {"type": "refund", "target": "billing"}}
    created = await first.post("/api/v1/approvals", json=body, headers=auth("bot"))
    request_id = created.json()["id"]
    path = f"/api/v1/approvals/{request_id}/decision"
    answers = await asyncio.gather(
        first.post(path, json={"verdict": "approve"}, headers=auth("alice")),
        second.post(path, json={"verdict": "deny"}, headers=auth("bob")),
    )
    assert sorted(a.status_code for a in answers) == [200, 409]
    shown = (await second.get(f"/api/v1/approvals/{request_id}", headers=auth("bob"))).json()
    assert len(shown["decisions"]) == 1


async def test_reattach_across_services(pair: list[httpx.AsyncClient]) -> None:
    """The same session and action posted to the other service re-attaches (200, same id)."""
    first, second = pair
    body = {"session_id": "s", "action": {"type": "refund", "target": "billing"}}
    one = await first.post("/api/v1/approvals", json=body, headers=auth("bot"))
    two = await second.post("/api/v1/approvals", json=body, headers=auth("bot"))
    assert (one.status_code, two.status_code) == (201, 200)
    assert one.json()["id"] == two.json()["id"]


class FirstWriteHeld(InMemoryAuditLog):
    """One trail shared by two services (as one PostgreSQL trail would be); the first write
    once ``hold`` is set waits inside for ``release``, as a write on a slow disk would."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def log(self, *args: Any, **kwargs: Any) -> int:
        """Wait if this is the held write, then write."""
        if self.hold:
            self.hold = False
            self.entered.set()
            self.release.wait(10)
        return super().log(*args, **kwargs)


def _skewed_pair(dsn: str, trail: Any, skew: timedelta) -> tuple[ApprovalService, ApprovalService]:
    """Two services on one database, the second's host clock ``skew`` off the first's;
    an agent token ``bot`` and a reviewer token ``bob`` made through the first."""
    here = ApprovalService(PostgresApprovalStore(dsn), trail)
    skewed = ApprovalService(
        PostgresApprovalStore(dsn), trail, clock=lambda: datetime.now(UTC) + skew
    )
    now = datetime.now(UTC)
    for name, role in (("bot", Role.AGENT), ("bob", Role.REVIEWER)):
        here.store.create_token(TokenInfo(name, role, (), now), hash_token(f"{name}-secret"))
    return here, skewed


async def test_a_host_whose_clock_runs_ahead_does_not_take_over_a_fresh_claim(
    postgres_dsn: str,
) -> None:
    """Two services on one database, one host's clock two minutes ahead of the other's: while
    the first writes a decision's record, the second's flush must not take the fresh claim
    for a stale one and write the record again. Before, each host stamped and judged claims
    by its own clock, and the trail held the decision twice."""
    trail = FirstWriteHeld()
    here, ahead = _skewed_pair(postgres_dsn, trail, timedelta(minutes=2))
    bot = await here.authenticate("bot-secret")
    bob = await here.authenticate("bob-secret")
    body = {"session_id": "s", "action": {"type": "refund", "target": "billing"}}
    created, _ = await here.create(bot, parse_new_request(body))
    trail.hold = True
    deciding = asyncio.create_task(here.decide(bob, created.id, Verdict.DENY, "no"))
    assert await asyncio.to_thread(trail.entered.wait, 10)
    # the other host's flush (its sweeper runs one every second) while the record is written
    await ahead.flush_audit()
    trail.release.set()
    await deciding
    await ahead.flush_audit()
    await here.flush_audit()
    decided = [
        r
        for r in trail.get_log("s")
        if (r["context"] or {}).get("approval_event") == "approval.decided"
    ]
    assert len(decided) == 1
    here.close()
    ahead.close()


def age(dsn: str, table: str, by: timedelta) -> None:
    """Move every time of every row of ``table`` ``by`` into the past by hand, as if it
    were written that much earlier (whichever time columns the tables have)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = [
            str(row[0])
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = %s AND column_name LIKE '%%_at'",
                (table,),
            )
        ]
        for row_id, *times in conn.execute(f"SELECT id, {', '.join(columns)} FROM {table}"):
            for column, text in zip(columns, times, strict=True):
                if text is not None:
                    moved = iso(parse_time(text) - by)
                    conn.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", (moved, row_id))


async def test_a_host_whose_clock_runs_behind_does_not_use_a_grant_past_its_end(
    postgres_dsn: str,
) -> None:
    """A grant of one minute given through one service ended a minute ago; an agent asking
    through a service whose host's clock runs three minutes behind must be asked again, not
    let through by the grant. Before, each host judged a grant's end by its own clock."""
    here, behind = _skewed_pair(postgres_dsn, None, -timedelta(minutes=3))
    bot = await behind.authenticate("bot-secret")
    bob = await here.authenticate("bob-secret")
    body = {"session_id": "s", "action": {"type": "refund", "target": "billing"}}
    first, _ = await behind.create(bot, parse_new_request(body))
    approved = await here.decide(bob, first.id, Verdict.APPROVE, "ok", grant_minutes=1)
    assert approved.granted is not None
    age(postgres_dsn, "aegis_grants", timedelta(minutes=2))
    again, created = await behind.create(bot, parse_new_request(body))
    assert created
    assert again.status is RequestStatus.PENDING
    assert again.grant_id is None
    here.close()
    behind.close()


async def test_a_host_whose_clock_runs_behind_does_not_take_a_decision_past_expiry(
    postgres_dsn: str,
) -> None:
    """A request of one hour asked through one service expired a minute ago; a reviewer
    deciding through a service whose host's clock runs three minutes behind is refused, and
    that service's sweep expires it. Before, the decision went through: each host judged the
    expiry its own clock and the asking host's clock set by turns."""
    here, behind = _skewed_pair(postgres_dsn, None, -timedelta(minutes=3))
    bot = await here.authenticate("bot-secret")
    bob = await behind.authenticate("bob-secret")
    body = {"session_id": "s", "action": {"type": "refund", "target": "billing"}}
    asked, _ = await here.create(bot, parse_new_request(body))
    age(postgres_dsn, "aegis_approval_requests", timedelta(hours=1, minutes=1))
    with pytest.raises(ApprovalServiceError) as refused:
        await behind.decide(bob, asked.id, Verdict.APPROVE, "ok")
    assert refused.value.code == "expired"
    assert [r.id for r in await behind.expire_due()] == [asked.id]
    stored = await here.get(bot, asked.id)
    assert (stored.status, stored.decisions) == (RequestStatus.EXPIRED, ())
    here.close()
    behind.close()


def test_unreachable_database_is_a_store_error_with_the_password_masked() -> None:
    """A DSN nobody answers is a StoreError that names it without its password."""
    from aegis.errors import StoreError

    dsn = "postgresql://aegis:hunter2@127.0.0.1:1/nowhere?connect_timeout=1"
    with pytest.raises(StoreError) as caught:
        PostgresApprovalStore(dsn, timeout=1)
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)
    assert mask_dsn("host=x password=secret user=y") == "host=x password=*** user=y"


async def test_read_only_database_is_a_json_503(postgres_dsn: str) -> None:
    """A database that refuses writes gives clear JSON 503s; reads still work, nothing changes."""
    writable = ApprovalService(PostgresApprovalStore(postgres_dsn), InMemoryAuditLog())
    now = datetime.now(UTC)
    for name, role in (("bot", Role.AGENT), ("alice", Role.REVIEWER)):
        writable.store.create_token(TokenInfo(name, role, (), now), hash_token(f"{name}-secret"))
    app = create_app(writable)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        body = {"session_id": "s", "action": {"type": "refund", "target": "billing"}}
        created = (await client.post("/api/v1/approvals", json=body, headers=auth("bot"))).json()
    writable.close()
    read_only_dsn = postgres_dsn.replace(
        "options=-csearch_path", "options=-cdefault_transaction_read_only%3Don%20-csearch_path"
    )
    service = ApprovalService(PostgresApprovalStore(read_only_dsn), InMemoryAuditLog())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)), base_url="http://t"
    ) as client:
        path = f"/api/v1/approvals/{created['id']}"
        refused = await client.post(
            f"{path}/decision", json={"verdict": "approve"}, headers=auth("alice")
        )
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "store_unavailable"
        assert "read-only" in error["message"]
        shown = await client.get(path, headers=auth("alice"))
        assert shown.json()["status"] == "pending"
        assert shown.json()["decisions"] == []
    service.close()


async def test_two_serve_processes_on_one_database(postgres_dsn: str, tmp_path: Path) -> None:
    """Two `aegis serve` processes on one PostgreSQL: one queue, one expiry, one verified chain."""
    add_tokens(postgres_dsn)
    first = Service(postgres_dsn, tmp_path).start()
    second = Service(postgres_dsn, tmp_path).start()
    handler = RemoteApprovalHandler(first.url, token="bot-secret", timeout=10)
    alice = Reviewer(second.url, "alice")
    bob = Reviewer(first.url, "bob")
    audit = AuditLogger(postgres_dsn)
    try:
        async with Runtime(
            executor=lambda action: "ok",
            policy=Policy.from_dict(SERVED_POLICY),
            approval_handler=handler,
            audit_logger=audit,
            session_id="fleet",
        ) as runtime:
            task = asyncio.create_task(runtime.run_one(Action("refund", "billing")))
            request = await alice.pending("fleet")
            answers = await asyncio.gather(
                alice.decide(request["id"]), bob.decide(request["id"], "deny")
            )
            assert sorted(a.status_code for a in answers) == [200, 409]
            result = await asyncio.wait_for(task, 10)
            won = next(a for a in answers if a.status_code == 200).json()["status"]
            assert result.status is (
                ResultStatus.SUCCESS if won == "approved" else ResultStatus.DENIED
            )
            purge = await runtime.run_one(Action("purge", "billing"))
            assert purge.status is ResultStatus.DENIED
        # The agent may see the request expired (a read past its expiry says
        # so) before either service's sweep, once a second, writes the record.
        give_up = time.monotonic() + 15
        while True:
            records = AuditLogger(postgres_dsn).get_log("fleet")
            expiries = [
                r
                for r in records
                if str(r["human_decision"]).startswith("approval: request expired")
            ]
            if expiries or time.monotonic() > give_up:
                break
            await asyncio.sleep(0.2)
        assert len(expiries) == 1
        assert AuditLogger(postgres_dsn).verify().ok
    finally:
        await handler.aclose()
        await alice.aclose()
        await bob.aclose()
        first.stop()
        second.stop()
