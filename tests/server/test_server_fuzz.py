"""Whatever a client sends, the API answers a JSON status it documents, never a 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis.core.approval_request import Role, TokenInfo
from aegis.server import ApprovalService, create_app
from aegis.stores.approvals import hash_token
from aegis.stores.sqlite.approvals import SqliteApprovalStore

DOCUMENTED = {200, 201, 401, 403, 404, 405, 408, 409, 413, 422, 429}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)
# bodies shaped like the real ones, with any field replaced by anything
near_requests = st.fixed_dictionaries(
    {},
    optional={
        "session_id": json_values,
        "action": st.fixed_dictionaries(
            {},
            optional={"type": json_values, "target": json_values, "params": json_values},
        )
        | json_values,
        "risk_level": json_values,
        "approvers": json_values,
        "reviewers": json_values,
        "approval_ttl": json_values,
        "verdict": st.sampled_from(["approve", "deny"]) | json_values,
        "comment": json_values,
        "grant_minutes": json_values,
    },
)
bodies = st.one_of(
    near_requests.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)
paths = st.sampled_from(
    [
        "/api/v1/approvals",
        "/api/v1/approvals/{id}/decision",
        "/api/v1/approvals/{id}/cancel",
        "/api/v1/approvals/{id}/collect",
        "/api/v1/approvals/apr_unknown/decision",
        "/api/v1/approvals/{id}/wait?timeout=0",
        "/api/v1/approvals?status=%00",
        "/api/v1/audit?since=%ff&risk=0",
        "/api/v1/grants/x/revoke",
    ]
)


@pytest.fixture(scope="module")
def app_and_id(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """One app over a SQLite store with a pending request to aim at."""
    folder: Path = tmp_path_factory.mktemp("fuzz")
    store = SqliteApprovalStore(folder / "fuzz.db")
    now = datetime.now(UTC)
    store.create_token(TokenInfo("bot", Role.AGENT, (), now), hash_token("bot-secret"))
    store.create_token(TokenInfo("alice", Role.REVIEWER, (), now), hash_token("alice-secret"))
    service = ApprovalService(store, None)
    app = create_app(service)

    async def first() -> str:
        async with _client(app) as client:
            body = {"session_id": "s", "action": {"type": "x", "target": "y"}}
            created = await client.post("/api/v1/approvals", json=body, headers=_auth("bot"))
            return str(created.json()["id"])

    yield app, asyncio.run(first())
    service.close()


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}-secret"}


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=paths,
    body=bodies,
    who=st.sampled_from(["bot", "alice", "nobody"]),
    method=st.sampled_from(["POST", "GET"]),
)
def test_any_input_gets_a_documented_json_answer(
    app_and_id: tuple[Any, str], path: str, body: bytes, who: str, method: str
) -> None:
    """Random bodies, paths, roles and methods: always a documented status with a JSON body."""
    app, request_id = app_and_id

    async def send() -> httpx.Response:
        async with _client(app) as client:
            return await client.request(
                method,
                path.replace("{id}", request_id),
                content=body if method == "POST" else None,
                headers=_auth(who),
            )

    response = asyncio.run(send())
    assert response.status_code in DOCUMENTED, response.text
    assert isinstance(response.json(), dict)
