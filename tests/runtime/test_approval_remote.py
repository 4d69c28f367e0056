"""RemoteApprovalHandler against services that lie, refuse, vanish or answer late."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import aegis
from aegis import Action, ConfigurationError, Policy, ResultStatus, Runtime
from aegis.core.action import action_digest
from aegis.core.approval_request import action_to_json, request_digest
from aegis.runtime.approval_remote import RemoteApprovalHandler
from aegis.testing import InMemoryAuditLog

POLICY = Policy.from_dict({"rules": [{"name": "refunds", "match": {"type": "refund"}}]})
ACTION = Action("refund", "billing", {"amount": 900})


def answer(action: Action, status: str, **extra: Any) -> dict[str, Any]:
    """A service's JSON for a request about ``action`` by ``bot``."""
    return {
        "id": "apr_1",
        "status": status,
        "requester": "bot",
        "action": action_to_json(action),
        "digest": request_digest(action, "bot"),
        "action_digest": action_digest(action),
        "decisions": [],
        **extra,
    }


class FakeService:
    """An httpx MockTransport handler that scripts the service's answers by path."""

    def __init__(self, routes: dict[str, Callable[[httpx.Request], httpx.Response]]) -> None:
        self.routes = routes
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = f"{request.method} {request.url.path}"
        self.calls.append(key)
        for pattern, respond in self.routes.items():
            if key.endswith(pattern):
                return respond(request)
        return httpx.Response(404, json={"error": {"message": "no route", "code": "x"}})


async def run(service: FakeService, **handler_args: Any) -> tuple[Any, list[Action], Any]:
    """Run ACTION through a Runtime whose handler talks to ``service``."""
    ran: list[Action] = []
    audit = InMemoryAuditLog()
    handler = RemoteApprovalHandler(
        "http://service",
        token="t",
        transport=httpx.MockTransport(service),
        **{"timeout": 5.0, **handler_args},
    )
    runtime_args = {k: handler_args.pop(k) for k in ("approval_timeout",) if k in handler_args}
    async with Runtime(
        executor=ran.append,
        policy=POLICY,
        approval_handler=handler,
        audit_logger=audit,
        **runtime_args,
    ) as runtime:
        result = await runtime.run_one(ACTION)
    await handler.aclose()
    return result, ran, audit.records[-1]


def respond(body: dict[str, Any], status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    """A route answering ``body``."""
    return lambda request: httpx.Response(status, json=body)


async def test_an_approval_for_another_action_is_refused() -> None:
    """A service filing the request for other params is caught by the digest and cancelled."""
    other = Action("refund", "billing", {"amount": 9})
    service = FakeService(
        {
            "POST /api/v1/approvals": respond(answer(other, "approved"), 201),
            "/cancel": respond(answer(other, "cancelled")),
        }
    )
    result, ran, _ = await run(service)
    assert result.status is ResultStatus.DENIED
    assert "digest mismatch" in result.error
    assert ran == []
    assert "POST /api/v1/approvals/apr_1/cancel" in service.calls
    assert "collect" not in " ".join(service.calls)


async def test_a_collected_answer_for_another_action_is_refused() -> None:
    """An approval whose collect answer names other params does not run the action."""
    other = Action("refund", "billing", {"amount": 9})
    service = FakeService(
        {
            "POST /api/v1/approvals": respond(answer(ACTION, "approved"), 201),
            "/collect": respond(answer(other, "approved")),
        }
    )
    result, ran, _ = await run(service)
    assert result.status is ResultStatus.DENIED
    assert ran == []


async def test_a_second_collect_refused_denies() -> None:
    """An approval the service says was used already (409) denies."""
    service = FakeService(
        {
            "POST /api/v1/approvals": respond(answer(ACTION, "approved"), 201),
            "/collect": respond(
                {"error": {"status": 409, "code": "already_collected", "message": "used"}}, 409
            ),
        }
    )
    result, ran, _ = await run(service)
    assert result.status is ResultStatus.DENIED
    assert "could not be used" in result.error
    assert ran == []


async def test_approved_outcome_is_recorded_with_reviewers() -> None:
    """An approval is recorded with its reviewers, comment and request id."""
    decisions = [{"reviewer": "alice", "verdict": "approve", "comment": "ok", "at": "x"}]
    service = FakeService(
        {
            "POST /api/v1/approvals": respond(answer(ACTION, "approved", decisions=decisions), 201),
            "/collect": respond(answer(ACTION, "approved", decisions=decisions)),
        }
    )
    result, ran, record = await run(service)
    assert result.status is ResultStatus.SUCCESS
    assert ran == [ACTION]
    assert record["human_decision"] == "approved by alice: ok [request apr_1]"


async def test_a_refused_token_denies_with_the_reason() -> None:
    """A 401 from the service is a denial whose error carries the service's message."""
    refusal = {"error": {"status": 401, "code": "unauthorized", "message": "the token is revoked"}}
    service = FakeService({"POST /api/v1/approvals": respond(refusal, 401)})
    result, _, record = await run(service)
    assert result.status is ResultStatus.DENIED
    assert "the token is revoked" in result.error
    assert record["human_decision"].startswith("denied: the approval service refused (401")


async def test_garbage_answers_deny() -> None:
    """A service answering something that is not JSON denies, it does not crash the runtime."""
    service = FakeService({"POST /api/v1/approvals": lambda r: httpx.Response(200, text="<html>")})
    result, _, _ = await run(service)
    assert result.status is ResultStatus.DENIED
    assert "not a JSON object" in result.error


async def test_unreachable_service_denies_within_the_timeout() -> None:
    """With nobody listening, the handler retries until its timeout, then denies."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    handler = RemoteApprovalHandler(f"http://127.0.0.1:{port}", token="t", timeout=0.5)
    async with Runtime(
        executor=lambda a: None,
        policy=POLICY,
        approval_handler=handler,
        audit_logger=InMemoryAuditLog(),
    ) as runtime:
        started = asyncio.get_running_loop().time()
        result = await runtime.run_one(ACTION)
        elapsed = asyncio.get_running_loop().time() - started
    await handler.aclose()
    assert result.status is ResultStatus.DENIED
    assert "did not answer" in result.error
    assert elapsed < 3


async def test_runtime_timeout_cancels_the_request_on_the_service() -> None:
    """When the runtime's approval_timeout cancels the handler, the service is told to cancel."""
    cancelled = asyncio.Event()

    def cancel(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["reason"] == "the agent stopped waiting"
        cancelled.set()
        return httpx.Response(200, json=answer(ACTION, "cancelled"))

    service = FakeService(
        {
            "POST /api/v1/approvals": respond(answer(ACTION, "pending"), 201),
            "/wait": respond(answer(ACTION, "pending")),
            "/cancel": cancel,
        }
    )
    handler = RemoteApprovalHandler(
        "http://service", token="t", timeout=30, poll=0.05, transport=httpx.MockTransport(service)
    )
    async with Runtime(
        executor=lambda a: None,
        policy=POLICY,
        approval_handler=handler,
        audit_logger=InMemoryAuditLog(),
        approval_timeout=0.2,
    ) as runtime:
        result = await runtime.run_one(ACTION)
    assert result.status is ResultStatus.DENIED
    await asyncio.wait_for(cancelled.wait(), 2)
    await handler.aclose()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"url": "127.0.0.1:8700", "token": "t"}, "http:// or https://"),
        ({"url": "http://x", "token": ""}, "needs an agent token"),
        ({"url": "http://x", "token": "t", "timeout": 0}, "timeout"),
        ({"url": "http://x", "token": "t", "poll": 61}, "poll"),
    ],
)
def test_bad_configuration(
    args: dict[str, Any], words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad arguments are ConfigurationErrors naming what to fix."""
    monkeypatch.delenv("AEGIS_TOKEN", raising=False)
    url = args.pop("url")
    with pytest.raises(ConfigurationError, match=words):
        RemoteApprovalHandler(url, **args)


def test_token_from_environment_and_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token defaults to $AEGIS_TOKEN, and the class is exported from aegis."""
    monkeypatch.setenv("AEGIS_TOKEN", "from-env")
    assert aegis.RemoteApprovalHandler is RemoteApprovalHandler
    assert RemoteApprovalHandler("http://x").client._token == "from-env"


def test_runtime_gives_the_handler_its_session() -> None:
    """A Runtime adopting the handler files requests under the runtime's session id."""
    handler = RemoteApprovalHandler("http://x", token="t")
    Runtime(
        executor=lambda a: None,
        policy=POLICY,
        approval_handler=handler,
        audit_logger=InMemoryAuditLog(),
        session_id="s-42",
    )
    assert handler.session_id == "s-42"
    own = RemoteApprovalHandler("http://x", token="t", session_id="mine")
    Runtime(
        executor=lambda a: None,
        policy=POLICY,
        approval_handler=own,
        audit_logger=InMemoryAuditLog(),
        session_id="s-43",
    )
    assert own.session_id == "mine"


async def test_a_service_that_lowers_the_terms_is_not_trusted() -> None:
    """A request stored with fewer approvers or wider groups than the policy's is refused."""
    policy = Policy.from_dict(
        {
            "rules": [
                {"name": "r", "match": {"type": "refund"}, "approvers": 2, "reviewers": ["sec"]}
            ]
        }
    )
    lowered = answer(ACTION, "pending", approvers=1, reviewers=[])
    service = FakeService(
        {
            "POST /api/v1/approvals": respond(lowered, 201),
            "/cancel": respond(answer(ACTION, "cancelled")),
        }
    )
    ran: list[Action] = []
    handler = RemoteApprovalHandler(
        "http://service", token="t", transport=httpx.MockTransport(service), announce=None
    )
    async with Runtime(
        executor=ran.append,
        policy=policy,
        approval_handler=handler,
        audit_logger=InMemoryAuditLog(),
    ) as runtime:
        result = await runtime.run_one(ACTION)
    await handler.aclose()
    assert result.status is ResultStatus.DENIED
    assert "asks less than the policy" in (result.error or "")
    assert "POST /api/v1/approvals/apr_1/cancel" in service.calls
    assert not ran


async def test_the_request_is_announced_once_with_its_inbox_link() -> None:
    """A filed request is announced once: its id and the inbox page to decide it."""
    lines: list[str] = []
    service = FakeService(
        {
            "POST /api/v1/approvals": respond(answer(ACTION, "pending"), 201),
            "/wait": respond(answer(ACTION, "denied")),
        }
    )
    result, _, _ = await run(service, announce=lines.append)
    assert result.status is ResultStatus.DENIED
    assert lines == ["aegis: approval needed for refund -> billing: request apr_1, "
                     "decide at http://service/requests/apr_1"]  # fmt: skip


async def test_long_waits_announce_the_request_only_once() -> None:
    """Long polls that end still pending do not announce the request again."""
    lines: list[str] = []
    decisions = [{"reviewer": "alice", "verdict": "approve", "comment": "ok", "at": "x"}]
    answers = iter(["pending", "pending", "pending", "approved"])
    service = FakeService(
        {
            "POST /api/v1/approvals": respond(answer(ACTION, "pending"), 201),
            "/wait": lambda request: httpx.Response(
                200, json=answer(ACTION, next(answers), decisions=decisions)
            ),
            "/collect": respond(answer(ACTION, "approved", decisions=decisions)),
        }
    )
    result, ran, _ = await run(service, announce=lines.append, poll=0.01)
    assert result.status is ResultStatus.SUCCESS
    assert ran == [ACTION]
    assert sum(call.endswith("/wait") for call in service.calls) == 4
    assert len(lines) == 1


async def test_an_unreachable_service_fails_fast_not_at_the_timeout() -> None:
    """Nobody listening: denied after unreachable_after, with the reason, not after 900 s."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    handler = RemoteApprovalHandler(
        f"http://127.0.0.1:{port}", token="t", timeout=900, unreachable_after=0.5, announce=None
    )
    async with Runtime(
        executor=lambda a: None,
        policy=POLICY,
        approval_handler=handler,
        audit_logger=InMemoryAuditLog(),
    ) as runtime:
        result = await asyncio.wait_for(runtime.run_one(ACTION), 60)
    await handler.aclose()
    assert result.status is ResultStatus.DENIED
    assert f"127.0.0.1:{port}" in (result.error or "")
    assert "did not answer" in (result.error or "")
