"""The inbox's live list: cheap while nothing changes, and still told of every change.

An open Pending page keeps a server-sent event stream; each poll used to
read the whole first page (up to 500 requests, each with its decisions)
and count again, whether or not anything had changed. Now a poll looks at
a small stamp of the pending requests shared by every open list, and
reads the page only when this process changed something, the stamp moved
(another process did), or a while passed.
"""

from __future__ import annotations

import asyncio
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
from aegis.core.approval_request import (
    ApprovalRequest,
    Role,
    TokenInfo,
    Verdict,
    request_digest,
)
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


def _request(
    *, age: timedelta = timedelta(0), reviewers: tuple[str, ...] = ("finance",), approvers: int = 1
) -> ApprovalRequest:
    """A pending request as another service process would store it, asked ``age`` ago
    (by its clock)."""
    action = Action("refund", "billing", {"n": 2})
    now = datetime.now(UTC) - age
    return ApprovalRequest(
        id=new_request_id(),
        session_id="s-other-" + secrets.token_hex(4),
        requester="bot",
        action=action,
        risk_level=RiskLevel.HIGH,
        matched_rule="refunds",
        reason="",
        approvers=approvers,
        reviewers=reviewers,
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
    stamps: list[str] = []
    real, digest = service.store.list_requests, service.store.pending_digest

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(int(kwargs.get("limit", 100)))  # the real store answers; this counts
        return real(*args, **kwargs)

    def stamped() -> str:
        stamps.append(digest())
        return stamps[-1]

    service.store.list_requests = counted  # type: ignore[method-assign]
    service.store.pending_digest = stamped  # type: ignore[method-assign]
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
            before, stamped_before = len(reads), len(stamps)
            time.sleep(2.0)  # about 20 polls of each list, nothing changing
            pages = reads[before:]
            polled = len(stamps) - stamped_before
            assert pages == [], f"{len(pages)} page reads while nothing changed"
            # polled, at most once per half interval for all lists together (2 s / 0.05 s)
            assert 5 <= polled <= 42, polled
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


def test_one_leaving_as_an_older_one_arrives_reaches_the_live_list(tmp_path: Path) -> None:
    """`aegis serve` and another process (a store of its own) on one file: alice's finance
    request is cancelled as an ops one arrives, asked by a host whose clock runs behind, both
    within one poll. The pending count, the newest id and the approvals held stay the same,
    but alice's list and count do not: they are right at the next poll, not at the next full
    read (30 s)."""
    db = str(tmp_path / "aegis.db")
    add_tokens(db)
    service = Service(db, tmp_path).start()
    client = _signed_in(service.url, "alice")
    stream = Stream(client)
    other = open_approval_store(db)
    try:
        stream.until(lambda e: e["ids"] == [])
        newest, _ = other.create_request(_request(), datetime.now(UTC))
        leaving, _ = other.create_request(_request(age=timedelta(minutes=2)), datetime.now(UTC))
        stream.until(lambda e: e["ids"] == [newest.id, leaving.id] and e["total"] == 2)
        now = datetime.now(UTC)
        other.cancel(leaving.id, "not needed", now)
        other.create_request(_request(age=timedelta(minutes=1), reviewers=("ops",)), now)
        stream.until(lambda e: e["ids"] == [newest.id] and e["total"] == 1, timeout=10)
    finally:
        other.close()
        stream.close()
        client.close()
        service.stop()


def test_the_stamp_moves_when_an_approval_is_withdrawn_as_another_is_given(
    tmp_path: Path,
) -> None:
    """Another process withdraws bob's approval of one two-person request (his token revoked)
    and gives dan's of another: no count, no id and no sum of approvals moves, the stamp that
    tells the live lists to read again does."""
    db = str(tmp_path / "aegis.db")
    add_tokens(db)
    service = open_service(db)
    other = open_approval_store(db)
    try:
        now = datetime.now(UTC)
        his, _ = other.create_request(_request(approvers=2), now)
        next_one, _ = other.create_request(_request(approvers=2), now)
        other.decide(his.id, "bob", Verdict.APPROVE, comment="", grant_minutes=None, now=now)
        before = asyncio.run(service.pending_stamp(0))
        assert other.revoke_token("bob", now)
        other.decide(next_one.id, "dan", Verdict.APPROVE, comment="", grant_minutes=None, now=now)
        assert asyncio.run(service.pending_stamp(0)) != before
    finally:
        other.close()
        service.close()
