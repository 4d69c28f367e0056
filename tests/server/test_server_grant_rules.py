"""The length of a grant is the service's rule: every way in gets the same refusal.

A real ``aegis serve`` on a loopback port: the JSON API and ``aegis approvals
approve`` (a real subprocess) are refused alike, and a refused decision
changes nothing; the service object itself refuses a caller that skips the API.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_support import Reviewer, Service, add_tokens

from aegis.core.action import Action
from aegis.core.approval_request import NewRequest, Role, Verdict
from aegis.core.identity import Identity
from aegis.core.risk import RiskLevel
from aegis.errors import ApprovalServiceError
from aegis.server import open_service
from aegis.server.service import MAX_GRANT_MINUTES, Principal


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for the module, on a SQLite file with the test tokens."""
    root = tmp_path_factory.mktemp("grants")
    db = str(root / "aegis.db")
    add_tokens(db)
    service = Service(db, root).start()
    yield service
    service.stop()


@pytest.fixture
async def alice(served: Service) -> AsyncIterator[Reviewer]:
    """A reviewer of the finance group, over HTTP."""
    reviewer = Reviewer(served.url, "alice")
    yield reviewer
    await reviewer.aclose()


async def ask(served: Service, session: str) -> dict[str, Any]:
    """File a refund request as the agent ``bot`` and return it."""
    async with httpx.AsyncClient(
        base_url=served.url, headers={"Authorization": "Bearer bot-secret"}, timeout=10
    ) as client:
        response = await client.post(
            "/api/v1/approvals",
            json={"session_id": session, "action": {"type": "refund", "target": "billing"}},
        )
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


@pytest.mark.parametrize(
    ("verdict", "minutes"),
    [
        ("approve", 0),
        ("approve", -5),
        ("approve", MAX_GRANT_MINUTES + 1),
        ("approve", 10**30),
        ("approve", "30"),
        ("approve", 1.5),
        ("approve", True),
        ("deny", 30),
    ],
    ids=["zero", "negative", "over-a-day", "huge", "text", "fraction", "bool", "with-deny"],
)
async def test_api_refuses_a_grant_of_the_wrong_length(
    served: Service, alice: Reviewer, verdict: str, minutes: object
) -> None:
    """422 ``invalid`` and the request stays pending, undecided."""
    request = await ask(served, f"bad-grant-{verdict}-{minutes!r}")
    refused = await alice.decide(request["id"], verdict, grant_minutes=minutes)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "invalid"
    after = await alice.get(request["id"])
    assert after["status"] == "pending"
    assert after["decisions"] == []


async def test_api_takes_the_longest_grant(served: Service, alice: Reviewer) -> None:
    """A grant of exactly a day is taken, and lasts a day."""
    request = await ask(served, "day-grant")
    decided = await alice.decide(request["id"], grant_minutes=MAX_GRANT_MINUTES)
    assert decided.status_code == 200, decided.text
    assert decided.json()["granted"]
    grants = (await alice.client.get("/api/v1/grants")).json()["grants"]
    [grant] = [g for g in grants if g["request_id"] == request["id"]]
    lasts = datetime.fromisoformat(grant["expires_at"]) - datetime.fromisoformat(
        grant["created_at"]
    )
    assert lasts.total_seconds() == MAX_GRANT_MINUTES * 60


async def test_cli_gets_the_same_refusal(served: Service, alice: Reviewer, tmp_path: Path) -> None:
    """`aegis approvals approve --grant-minutes` over a day: exit 2, one line, nothing decided."""
    request = await ask(served, "cli-grant")
    env = {**os.environ, "AEGIS_TOKEN": "alice-secret", "AEGIS_URL": served.url}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aegis",
            "approvals",
            "approve",
            request["id"],
            "--grant-minutes",
            str(MAX_GRANT_MINUTES + 1),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert str(MAX_GRANT_MINUTES) in done.stderr
    assert (await alice.get(request["id"]))["status"] == "pending"


async def test_the_service_refuses_callers_that_skip_the_api(tmp_path: Path) -> None:
    """ApprovalService.decide itself refuses: a 422 ApprovalServiceError, nothing stored."""
    db = str(tmp_path / "aegis.db")
    add_tokens(db)
    service = open_service(db)
    try:
        agent = Principal("bot", Role.AGENT)
        reviewer = Principal("alice", Role.REVIEWER, ("finance",))
        created, _ = await service.create(
            agent,
            NewRequest(
                session_id="s", action=Action("refund", "billing"), risk_level=RiskLevel.HIGH
            ),
        )
        for verdict, minutes in ((Verdict.APPROVE, 0), (Verdict.DENY, 5)):
            with pytest.raises(ApprovalServiceError) as caught:
                await service.decide(reviewer, created.id, verdict, "", minutes)
            assert (caught.value.status, caught.value.code) == (422, "invalid")
        assert (await service.get(reviewer, created.id)).decisions == ()
    finally:
        service.close()


async def test_a_grant_bound_is_asked_only_of_a_reviewer_who_may_decide(tmp_path: Path) -> None:
    """Carol of ops, signed in with OpenID and under a minute from her max age, approves
    finance's request with a grant: she is refused as outside its groups (403), not told
    the grant is too late, whose words say whether hers would be the last approval needed;
    an expired request is refused as expired (409). Nothing is recorded either way."""
    db = str(tmp_path / "aegis.db")
    add_tokens(db)
    service = open_service(db)
    try:
        agent = Principal("bot", Role.AGENT)
        carol = Principal(
            "Carol", Role.REVIEWER, ("ops",), Identity("http://127.0.0.1:9", "carol", "Carol")
        )
        alice = Principal(
            "Alice", Role.REVIEWER, ("finance",), Identity("http://127.0.0.1:9", "al", "Alice")
        )
        finance, _ = await service.create(
            agent,
            NewRequest(
                session_id="s",
                action=Action("refund", "billing"),
                risk_level=RiskLevel.HIGH,
                approvers=2,
                reviewers=("finance",),
            ),
        )
        soon = datetime.now(UTC) + timedelta(seconds=30)
        with pytest.raises(ApprovalServiceError) as caught:
            await service.decide(carol, finance.id, Verdict.APPROVE, "", 60, grant_until=soon)
        assert (caught.value.status, caught.value.code) == (403, "wrong_group")
        real_clock = service.clock
        service.clock = lambda: real_clock() + timedelta(hours=2)
        later = service.clock() + timedelta(seconds=30)
        with pytest.raises(ApprovalServiceError) as caught:
            await service.decide(alice, finance.id, Verdict.APPROVE, "", 60, grant_until=later)
        assert (caught.value.status, caught.value.code) == (409, "expired")
        assert (await service.get(alice, finance.id)).decisions == ()
    finally:
        service.close()
