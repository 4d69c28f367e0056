"""Approvals through the proxy: the real approval service (aegis serve) decides, the proxy waits."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import types
from mcp_support import HERE, Files, proxied_client

sys.path.insert(0, str(HERE.parent / "server"))
from service_support import Service, add_tokens  # tests/server's helpers


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The approval service on a free loopback port, with agent and reviewer tokens."""
    root = tmp_path_factory.mktemp("service")
    db = str(root / "approvals.db")
    add_tokens(db)
    served = Service(db, root).start()
    yield served
    served.stop()


async def _pending(service: Service, path: str) -> dict[str, Any]:
    """Wait for the pending request whose action writes ``path``, as reviewer alice sees it."""
    async with httpx.AsyncClient(
        base_url=service.url, headers={"Authorization": "Bearer alice-secret"}, timeout=10
    ) as alice:
        for _ in range(400):
            listed = (await alice.get("/api/v1/approvals")).json()["approvals"]
            for request in listed:
                if request["action"]["params"].get("path") == path:
                    return dict(request)
            await asyncio.sleep(0.05)
    raise TimeoutError(f"no pending request for {path}")


async def _decide(service: Service, request_id: str, verdict: str, comment: str) -> None:
    async with httpx.AsyncClient(
        base_url=service.url, headers={"Authorization": "Bearer alice-secret"}, timeout=10
    ) as alice:
        response = await alice.post(
            f"/api/v1/approvals/{request_id}/decision",
            json={"verdict": verdict, "comment": comment},
        )
        assert response.status_code == 200, response.text


def _approval_args(service: Service, *more: str) -> tuple[str, ...]:
    token = service.cwd / "bot.token"  # a secret never goes on the command line
    token.write_text("bot-secret", encoding="utf-8")
    token.chmod(0o600)
    return ("--approval-url", service.url, "--approval-token-file", str(token), *more)


async def test_a_reviewer_yes_runs_the_call_and_the_link_is_offered(
    service: Service, tmp_path: Path
) -> None:
    """A write waits for alice; her yes runs it; the client was offered the inbox link."""
    files = Files(tmp_path)
    path = f"/srv/{uuid.uuid4().hex}"
    links: list[types.ElicitRequestParams] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        links.append(params)
        return types.ElicitResult(action="accept")

    async with proxied_client(
        files, *_approval_args(service), elicitation_callback=elicit
    ) as client:
        call = asyncio.create_task(client.call_tool("write", {"path": path, "content": "x"}))
        request = await _pending(service, path)
        assert files.calls() == []
        # the reviewer reads what the tool does, in the server's own words
        assert request["action"]["description"] == "Write a file, replacing any content."
        await _decide(service, request["id"], "approve", "fine")
        result = await asyncio.wait_for(call, 30)
    assert result.is_error is False
    assert files.calls() == [{"tool": "write", "arguments": {"path": path, "content": "x"}}]
    [link] = links
    assert link.mode == "url"  # type: ignore[union-attr]
    assert link.url == f"{service.url}/requests/{request['id']}"  # type: ignore[union-attr]
    [record] = [r for r in files.records() if r["action_type"] == "write"]
    assert record["result_status"] == "success"
    assert record["human_decision"] == f"approved by alice: fine [request {request['id']}]"
    assert isinstance(record["context"]["mcp_request_id"], int)


async def test_a_reviewer_no_never_reaches_the_server(service: Service, tmp_path: Path) -> None:
    """Alice's no is a tool error naming her and her reason; the server never sees the call."""
    files = Files(tmp_path)
    path = f"/srv/{uuid.uuid4().hex}"
    async with proxied_client(files, *_approval_args(service)) as client:
        call = asyncio.create_task(client.call_tool("write", {"path": path, "content": "x"}))
        request = await _pending(service, path)
        await _decide(service, request["id"], "deny", "not that file")
        result = await asyncio.wait_for(call, 30)
    assert result.is_error is True
    assert "denied by alice: not that file" in result.content[0].text  # type: ignore[union-attr]
    assert files.calls() == []
    [record] = files.records()
    assert record["result_status"] == "denied"


async def test_an_approval_nobody_gives_times_out_and_is_cancelled(
    service: Service, tmp_path: Path
) -> None:
    """Unanswered, the call is denied after --approval-timeout and its request cancelled."""
    files = Files(tmp_path)
    path = f"/srv/{uuid.uuid4().hex}"
    async with proxied_client(files, *_approval_args(service, "--approval-timeout", "2")) as client:
        result = await client.call_tool("write", {"path": path, "content": "x"})
    assert result.is_error is True
    assert "no decision within 2s" in result.content[0].text  # type: ignore[union-attr]
    assert files.calls() == []
    [record] = files.records()
    assert record["result_status"] == "denied"
    request_id = record["human_decision"].rsplit("[request ", 1)[1].rstrip("]")
    async with httpx.AsyncClient(
        base_url=service.url, headers={"Authorization": "Bearer alice-secret"}, timeout=10
    ) as alice:
        status = (await alice.get(f"/api/v1/approvals/{request_id}")).json()["status"]
    assert status == "cancelled"
