"""Long approvals with real hosts: progress while a call waits, and task-augmented calls."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp_support import HERE, Files, RawProxy

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


def _pending(service: Service, path: str) -> dict[str, Any]:
    """The pending request whose action writes ``path``, as reviewer alice sees it."""
    with httpx.Client(
        base_url=service.url, headers={"Authorization": "Bearer alice-secret"}, timeout=10
    ) as alice:
        for _ in range(600):
            for request in alice.get("/api/v1/approvals").json()["approvals"]:
                if request["action"]["params"].get("path") == path:
                    return dict(request)
            time.sleep(0.05)
    raise TimeoutError(f"no pending request for {path}")


def _decide(service: Service, path: str, verdict: str) -> None:
    request = _pending(service, path)
    with httpx.Client(
        base_url=service.url, headers={"Authorization": "Bearer alice-secret"}, timeout=10
    ) as alice:
        response = alice.post(
            f"/api/v1/approvals/{request['id']}/decision",
            json={"verdict": verdict, "comment": "checked"},
        )
        assert response.status_code == 200, response.text


class Proxy:
    """The proxy in front of the test server, with the approval service, spoken to raw."""

    def __init__(self, files: Files, service: Service, *more: str) -> None:
        token = service.cwd / "bot.token"  # a secret never goes on the command line
        token.write_text("bot-secret", encoding="utf-8")
        token.chmod(0o600)
        command = files.proxy(
            "--approval-url", service.url, "--approval-token-file", str(token), *more
        )
        self.raw = RawProxy(command, files.stderr)
        try:
            self.init = self.raw.initialize()
        except BaseException:
            self.raw.close()  # no proxy left running past a failed handshake
            raise

    def until_reply(self, request_id: Any, timeout: float = 30.0) -> tuple[Any, list[Any]]:
        """The reply to ``request_id`` and the messages that came before it."""
        before = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.raw.receive(max(0.1, deadline - time.monotonic()))
            if message.get("id") == request_id and "method" not in message:
                return message, before
            before.append(message)

    def ask(self, request_id: Any, method: str, params: dict[str, Any]) -> Any:
        """Send a request; its reply, past any notification (task status) before it."""
        self.raw.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return self.until_reply(request_id)[0]


@pytest.fixture
def proxy(tmp_path: Path, service: Service) -> Iterator[tuple[Proxy, Files]]:
    """A proxy with a fast progress ticker, closed after the test."""
    files = Files(tmp_path)
    proxy = Proxy(files, service, "--progress-interval", "0.2")
    yield proxy, files
    proxy.raw.close()


def _write(request_id: int, path: str, **params: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "write", "arguments": {"path": path, "content": "x"}, **params},
    }


def test_a_call_awaiting_a_reviewer_sends_progress_to_a_client_that_asked(
    proxy: tuple[Proxy, Files], service: Service
) -> None:
    """With a progressToken, the waiting call sends increasing progress until alice decides."""
    raw, files = proxy[0], proxy[1]
    path = f"/srv/{uuid.uuid4().hex}"
    raw.raw.send(_write(7, path, _meta={"progressToken": "tok-7"}))
    # this client never listed the tools: the proxy learnt the description itself
    request = _pending(service, path)
    assert request["action"]["description"] == "Write a file, replacing any content."
    seen = []
    while len(seen) < 3:  # several ticks while nobody has decided yet
        message = raw.raw.receive(10)
        assert message.get("method") == "notifications/progress", message
        seen.append(message["params"])
    assert {p["progressToken"] for p in seen} == {"tok-7"}
    assert [p["progress"] for p in seen] == sorted({p["progress"] for p in seen})
    _decide(service, path, "approve")
    reply, _ = raw.until_reply(7)
    assert reply["result"]["isError"] is False
    assert files.calls() == [{"tool": "write", "arguments": {"path": path, "content": "x"}}]


def test_no_progress_without_a_token(proxy: tuple[Proxy, Files], service: Service) -> None:
    """A client that asked for no progress gets none: only its reply."""
    raw = proxy[0]
    path = f"/srv/{uuid.uuid4().hex}"
    raw.raw.send(_write(8, path))
    _pending(service, path)
    time.sleep(0.8)
    _decide(service, path, "deny")
    reply, before = raw.until_reply(8)
    assert before == []
    assert reply["result"]["isError"] is True


def test_the_proxy_declares_tasks_for_tool_calls(proxy: tuple[Proxy, Files]) -> None:
    """initialize says tools/call takes tasks; tools/list marks every tool task-optional."""
    raw = proxy[0]
    tasks = raw.init["result"]["capabilities"]["tasks"]
    assert "call" in tasks["requests"]["tools"]
    listed = raw.ask(2, "tools/list", {})
    assert {t["execution"]["taskSupport"] for t in listed["result"]["tools"]} == {"optional"}


def test_a_task_call_returns_its_task_at_once_and_its_outcome_when_approved(
    proxy: tuple[Proxy, Files], service: Service
) -> None:
    """A task-augmented write answers with a working task; alice's yes completes it."""
    raw, files = proxy
    path = f"/srv/{uuid.uuid4().hex}"
    created = raw.ask(3, "tools/call", _write(3, path, task={"ttl": 60000})["params"])
    task = created["result"]["task"]
    assert task["status"] == "working"
    assert isinstance(task["taskId"], str)
    assert task["ttl"] == 60000
    _pending(service, path)
    got = raw.ask(4, "tasks/get", {"taskId": task["taskId"]})
    assert got["result"]["status"] == "working"
    assert files.calls() == []
    # Nothing is recorded as done while the task still works.
    assert [r for r in files.records() if r["action_type"] == "write"] == []
    raw.raw.send(
        {"jsonrpc": "2.0", "id": 5, "method": "tasks/result", "params": {"taskId": task["taskId"]}}
    )
    _decide(service, path, "approve")
    result, _ = raw.until_reply(5)
    assert result["result"]["isError"] is False
    meta = result["result"]["_meta"]["io.modelcontextprotocol/related-task"]
    assert meta == {"taskId": task["taskId"]}
    assert files.calls() == [{"tool": "write", "arguments": {"path": path, "content": "x"}}]
    done = raw.ask(6, "tasks/get", {"taskId": task["taskId"]})
    assert done["result"]["status"] == "completed"
    [record] = [r for r in files.records() if r["action_type"] == "write"]
    assert record["result_status"] == "success"
    listed = raw.ask(9, "tasks/list", {})
    assert task["taskId"] in [t["taskId"] for t in listed["result"]["tasks"]]


def test_a_blocked_task_call_is_answered_as_a_task_that_failed(
    proxy: tuple[Proxy, Files],
) -> None:
    """A blocked delete sent as a task gets a task; its result is the refusal, never run."""
    raw, files = proxy
    created = raw.ask(
        3, "tools/call", {"name": "delete", "arguments": {"path": "/srv/a"}, "task": {}}
    )
    task = created["result"]["task"]
    assert set(created["result"]) == {"task"}
    result = raw.ask(4, "tasks/result", {"taskId": task["taskId"]})
    assert result["result"]["isError"] is True
    assert "no-deletes" in result["result"]["content"][0]["text"]
    got = raw.ask(5, "tasks/get", {"taskId": task["taskId"]})
    assert got["result"]["status"] == "failed"
    assert files.calls() == []
    [record] = files.records()
    assert record["result_status"] == "blocked"


def test_a_denied_task_call_fails_and_is_recorded_denied(
    proxy: tuple[Proxy, Files], service: Service
) -> None:
    """Alice's no ends the task failed, recorded denied; cancelling it then is refused."""
    raw, files = proxy
    path = f"/srv/{uuid.uuid4().hex}"
    created = raw.ask(3, "tools/call", _write(3, path, task={})["params"])
    task_id = created["result"]["task"]["taskId"]
    _decide(service, path, "deny")
    result = raw.ask(4, "tasks/result", {"taskId": task_id})
    assert result["result"]["isError"] is True
    assert [r["result_status"] for r in files.records()] == ["denied"]
    refused = raw.ask(5, "tasks/cancel", {"taskId": task_id})
    assert refused["error"]["code"] == -32602


def test_a_task_cancelled_while_awaiting_approval_never_runs(
    proxy: tuple[Proxy, Files], service: Service
) -> None:
    """tasks/cancel ends a waiting task cancelled; the server never sees the call."""
    raw, files = proxy
    path = f"/srv/{uuid.uuid4().hex}"
    created = raw.ask(3, "tools/call", _write(3, path, task={})["params"])
    task_id = created["result"]["task"]["taskId"]
    _pending(service, path)
    cancelled = raw.ask(4, "tasks/cancel", {"taskId": task_id})
    assert cancelled["result"]["status"] == "cancelled"
    unknown = raw.ask(5, "tasks/get", {"taskId": "aegis-nope"})
    assert unknown["error"]["code"] == -32602
    assert files.calls() == []
