"""The inbox's live list: cheap while nothing changes, and still told of every change.

An open Pending page keeps a server-sent event stream; each poll used to
read the whole first page (up to 500 requests, each with its decisions)
and count again, whether or not anything had changed. Now a poll looks at
a small stamp of the pending requests shared by every open list, and
reads the page only when this process changed something, the stamp moved
(another process did), or a while passed.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from service_support import Service, add_tokens, free_port

from aegis.core.action import Action, action_digest
from aegis.core.approval_request import ApprovalRequest, Role, TokenInfo, request_digest
from aegis.core.risk import RiskLevel
from aegis.server import create_app, open_service
from aegis.server.inbox import Inbox
from aegis.stores.approvals import hash_token, new_request_id, open_approval_store


class Stream:
    """The ``pending`` events of one signed-in browser's live list, read on a thread."""

    def __init__(self, client: httpx.Client) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._client = client
        self._stop = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            self._client.stream(
                "GET", "/inbox/events", timeout=httpx.Timeout(20, read=None)
            ) as stream,
        ):
            self._response = stream
            kind = ""
            for line in stream.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: ") and kind == "pending":
                    self.events.put(json.loads(line.removeprefix("data: ")))

    def until(self, check: Any, timeout: float = 15.0) -> dict[str, Any]:
        """The first event for which ``check(event)`` holds, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the live list was not told in time")
            with contextlib.suppress(queue.Empty):
                event = self.events.get(timeout=left)
                if check(event):
                    return event

    def close(self) -> None:
        """Stop reading and hang up, as a closed tab does."""
        self._stop.set()
        if self._response is not None:
            # Shut the socket itself: that ends the blocked read on the thread,
            # and the server sees the hang-up.
            sock = self._response.extensions["network_stream"].get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        assert not self._thread.is_alive()


def _signed_in(url: str, who: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=20)
    form = client.get("/signin").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    done = client.post(
        "/signin", data={"token": f"{who}-secret", "csrf": csrf.group(1)}, headers={"Origin": url}
    )
    assert done.status_code == 303, done.text
    return client


def _ask(url: str, approvers: int = 1) -> str:
    body = {
        "session_id": "s-" + secrets.token_hex(4),
        "action": {"type": "refund", "target": "billing", "params": {"n": 1}},
        "risk_level": "high",
        "reviewers": ["finance"],
        "approvers": approvers,
    }
    answer = httpx.post(
        f"{url}/api/v1/approvals",
        json=body,
        headers={"Authorization": "Bearer bot-secret"},
        timeout=20,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def test_changes_made_by_another_process_reach_the_live_list(tmp_path: Path) -> None:
    """Two `aegis serve` on one file: a request asked and decided through B shows live on A."""
    db = str(tmp_path / "aegis.db")
    add_tokens(db)
    first = Service(db, tmp_path).start()
    second = Service(db, tmp_path).start()
    client = _signed_in(first.url, "alice")
    stream = Stream(client)
    try:
        stream.until(lambda e: e["ids"] == [])
        asked = _ask(second.url)
        stream.until(lambda e: e["ids"] == [asked] and e["total"] == 1)
        decided = httpx.post(
            f"{second.url}/api/v1/approvals/{asked}/decision",
            json={"verdict": "deny"},
            headers={"Authorization": "Bearer bob-secret"},
            timeout=20,
        )
        assert decided.status_code == 200, decided.text
        stream.until(lambda e: e["ids"] == [] and e["total"] == 0)
    finally:
        stream.close()
        client.close()
        second.stop()
        first.stop()


def test_approvals_given_and_withdrawn_through_another_process_reach_the_live_list(
    tmp_path: Path,
) -> None:
    """Two `aegis serve` on one file: bob's approval of a two-person request, given through
    B, and its withdrawal by revoking his token (a store of its own, as `aegis token revoke`
    does) change no id and no count; A's live list still hears of both within seconds, not
    at its next full read (30 s)."""
    db = str(tmp_path / "aegis.db")
    add_tokens(db)
    first = Service(db, tmp_path).start()
    second = Service(db, tmp_path).start()
    client = _signed_in(first.url, "alice")
    stream = Stream(client)
    try:
        stream.until(lambda e: e["ids"] == [])
        asked = _ask(second.url, approvers=2)
        stream.until(lambda e: e["ids"] == [asked] and e["approvals"] == [0])
        decided = httpx.post(
            f"{second.url}/api/v1/approvals/{asked}/decision",
            json={"verdict": "approve"},
            headers={"Authorization": "Bearer bob-secret"},
            timeout=20,
        )
        assert decided.status_code == 200, decided.text
        stream.until(lambda e: e["ids"] == [asked] and e["approvals"] == [1], timeout=10)
        store = open_approval_store(db)
        try:
            assert store.revoke_token("bob", datetime.now(UTC))
        finally:
            store.close()
        stream.until(lambda e: e["ids"] == [asked] and e["approvals"] == [0], timeout=10)
    finally:
        stream.close()
        client.close()
        second.stop()
        first.stop()


def _request() -> ApprovalRequest:
    """A pending finance request as another service process would store it."""
    action = Action("refund", "billing", {"n": 2})
    now = datetime.now(UTC)
    return ApprovalRequest(
        id=new_request_id(),
        session_id="s-other",
        requester="bot",
        action=action,
        risk_level=RiskLevel.HIGH,
        matched_rule="refunds",
        reason="",
        approvers=1,
        reviewers=("finance",),
        created_at=now,
        expires_at=now + timedelta(minutes=10),
        digest=request_digest(action, "bot"),
        action_digest=action_digest(action),
    )


@contextlib.contextmanager
def _served(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, on a thread; its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.mark.parametrize("lists", [1, 3])
def test_a_quiet_live_list_reads_no_pages(tmp_path: Path, lists: int) -> None:
    """With nothing changing, open lists poll a shared stamp and read no page; a change is read."""
    db = str(tmp_path / "aegis.db")
    service = open_service(db, approval_ttl=600)
    now = datetime.now(UTC)
    for name, role, groups in (("alice", Role.REVIEWER, ("finance",)), ("bot", Role.AGENT, ())):
        service.store.create_token(TokenInfo(name, role, groups, now), hash_token(f"{name}-secret"))
    reads: list[int] = []
    real = service.store.list_requests

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(int(kwargs.get("limit", 100)))  # the real store answers; this counts
        return real(*args, **kwargs)

    service.store.list_requests = counted  # type: ignore[method-assign]
    inbox = Inbox(service, session_key="k" * 32, poll_interval=0.1)
    app = create_app(service, routes=inbox.routes())
    with _served(app) as url:
        for _ in range(5):
            _ask(url)
        clients = [_signed_in(url, "alice") for _ in range(lists)]
        streams = [Stream(client) for client in clients]
        try:
            for stream in streams:
                stream.until(lambda e: e["total"] == 5)
            time.sleep(0.3)  # every stream past its first read
            before = list(reads)
            time.sleep(2.0)  # about 20 polls of each list, nothing changing
            quiet = reads[len(before) :]
            pages = [limit for limit in quiet if limit > 1]
            stamps = [limit for limit in quiet if limit == 1]
            assert pages == [], f"{len(pages)} page reads while nothing changed"
            # polled, at most once per half interval for all lists together (2 s / 0.05 s)
            assert 5 <= len(stamps) <= 42, len(stamps)
            # Another process (a store of its own on the file) stores a request:
            # nothing in this process wakes the lists, the stamp tells them.
            other = open_approval_store(db)
            try:
                other.create_request(_request(), datetime.now(UTC))
            finally:
                other.close()
            for stream in streams:
                stream.until(lambda e: e["total"] == 6)
        finally:
            for stream in streams:
                stream.close()
            for client in clients:
                client.close()
    inbox.close()
    service.close()
