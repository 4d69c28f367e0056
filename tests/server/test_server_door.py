"""Input no store can keep or no list can show is refused at the door, naming the field."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import Service, add_tokens

from aegis import Action, AuditLogger, Policy, Runtime
from aegis.runtime.approval_remote import RemoteApprovalHandler

AGENT = {"Authorization": "Bearer bot-secret", "Content-Type": "application/json"}
REVIEWER = {"Authorization": "Bearer alice-secret"}

ACTION = '"action": {"type": "refund", "target": "b"'


def raw(action_tail: str = "", **top: str) -> str:
    """A raw JSON body (so that 1e400 and lone surrogates travel as written)."""
    session = top.pop("session_id", '"s"')
    fields = "".join(f', "{k}": {v}' for k, v in top.items())
    return '{"session_id": ' + session + ", " + ACTION + action_tail + "}" + fields + "}"


#: raw JSON bodies -> the field the refusal must name
BAD_BODIES = [
    (raw(', "params": {"amount": 1e400}'), "action.params.amount"),
    (raw(', "params": {"n": [1, -1e999]}'), "action.params.n[1]"),
    (raw(', "description": "x\\ud800y"'), "action.description"),
    (raw(session_id='"s\\udfff"'), "session_id"),
    (raw(', "params": {"note": "a\\u0000b"}'), "action.params.note"),
    (raw(', "params": {"a\\u0000": 1}'), "action.params"),
    (raw(reason='"\\u0000"'), "reason"),
]


#: the test server (tests/conftest.py reads the same variable); not imported from
#: there: which "conftest" a fixture finds at run time depends on collection order
POSTGRES_DSN = os.environ.get(
    "AEGIS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """`aegis serve` over SQLite and over PostgreSQL."""
    root = tmp_path_factory.mktemp("door")
    if request.param == "sqlite":
        db = str(root / "aegis.db")
    else:
        import uuid

        import psycopg

        schema = f"aegis_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in POSTGRES_DSN else "?"
        db = f"{POSTGRES_DSN}{sep}options=-csearch_path%3D{schema}"
    try:
        add_tokens(db)
        service = Service(db, root).start()
        yield service
        service.stop()
    finally:
        if request.param == "postgres":
            _drop(POSTGRES_DSN, schema)


def _drop(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize(("raw", "field"), BAD_BODIES)
def test_unstorable_input_is_a_422_naming_the_field(served: Service, raw: str, field: str) -> None:
    """Infinity, lone surrogates and NUL are refused with a 422 that names the field."""
    answer = httpx.post(
        f"{served.url}/api/v1/approvals", content=raw.encode(), headers=AGENT, timeout=10
    )
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["error"]["message"]
    listed = httpx.get(
        f"{served.url}/api/v1/approvals", params={"status": "all"}, headers=REVIEWER, timeout=10
    )
    assert listed.status_code == 200


@pytest.mark.parametrize(
    ("path", "params", "name"),
    [
        ("/api/v1/approvals", {"session": "a\x00b"}, "session"),
        ("/api/v1/approvals", {"requester": "\x00"}, "requester"),
        ("/api/v1/audit", {"after_id": str(2**63)}, "after_id"),
        ("/api/v1/audit", {"after_id": str(2**70)}, "after_id"),
    ],
)
def test_unusable_query_parameters_are_a_422(
    served: Service, path: str, params: dict[str, str], name: str
) -> None:
    """NUL in a filter, or a record id above 2^63, is a 422 naming the parameter, never a 5xx."""
    answer = httpx.get(f"{served.url}{path}", params=params, headers=REVIEWER, timeout=10)
    assert answer.status_code == 422, answer.text
    assert name in answer.json()["error"]["message"]


async def test_the_agent_fails_fast_on_a_refused_request(served: Service, tmp_path: Path) -> None:
    """A request the service refuses (422) denies at once with the reason, no retrying."""
    handler = RemoteApprovalHandler(served.url, token="bot-secret", timeout=120, poll=5)
    policy = Policy.from_dict({"rules": [{"name": "refunds", "match": {"type": "refund"}}]})
    ran: list[Action] = []
    async with Runtime(
        executor=lambda action: ran.append(action) or "done",
        policy=policy,
        approval_handler=handler,
        audit_logger=AuditLogger(str(tmp_path / "agent.db")),
    ) as runtime:
        started = time.monotonic()
        result = await asyncio.wait_for(
            runtime.run_one(Action("refund", "billing", {"note": "a\x00b"})), 60
        )
        took = time.monotonic() - started
    await handler.aclose()
    assert not ran
    assert result.status.value == "denied"
    assert "action.params.note" in (result.error or "")
    print(f"refused request denied after {took:.2f}s")


async def test_a_refused_token_fails_fast_with_the_reason(served: Service, tmp_path: Path) -> None:
    """An unknown token is a denial at once that says the token was refused, not a long wait."""
    lines: list[str] = []
    handler = RemoteApprovalHandler(
        served.url, token="nobody-secret", timeout=900, poll=5, announce=lines.append
    )
    policy = Policy.from_dict({"rules": [{"name": "refunds", "match": {"type": "refund"}}]})
    async with Runtime(
        executor=lambda action: "done",
        policy=policy,
        approval_handler=handler,
        audit_logger=AuditLogger(str(tmp_path / "agent.db")),
    ) as runtime:
        result = await asyncio.wait_for(runtime.run_one(Action("refund", "billing", {})), 60)
    await handler.aclose()
    assert result.status.value == "denied"
    assert "401" in (result.error or "")
    assert "unknown" in (result.error or "")
    assert lines == []  # nothing was filed, so nothing is announced


def test_a_stored_infinity_does_not_blind_the_list(tmp_path: Path) -> None:
    """A row written before the door checked (edited by hand) is listed, not a 500 for all."""
    import sqlite3

    db = str(tmp_path / "aegis.db")
    add_tokens(db)
    service = Service(db, tmp_path).start()
    try:
        made = httpx.post(
            f"{service.url}/api/v1/approvals",
            json={
                "session_id": "s",
                "action": {"type": "refund", "target": "b", "params": {"n": 1}},
            },
            headers=AGENT,
            timeout=10,
        )
        assert made.status_code == 201
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE aegis_approval_requests SET action_json = ?",
                (
                    '{"type": "refund", "target": "b", "params": {"n": Infinity}, '
                    '"description": ""}',
                ),
            )
        listed = httpx.get(f"{service.url}/api/v1/approvals", headers=REVIEWER, timeout=10)
        assert listed.status_code == 200
        (shown,) = listed.json()["approvals"]
        assert shown["action"]["params"]["n"] == "Infinity"
    finally:
        service.stop()
