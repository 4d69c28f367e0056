"""What one client can hold of a real `aegis serve`: slow requests, foreign Hosts, long polls."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from service_support import Reviewer, Service, add_tokens

AGENT = {"Authorization": "Bearer bot-secret"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`aegis serve --read-timeout 1` on loopback."""
    root = tmp_path_factory.mktemp("bounds")
    db = str(root / "aegis.db")
    add_tokens(db)
    service = Service(db, root, args=("--read-timeout", "1")).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`aegis serve --read-timeout 60` on loopback: opening 400 connections at once
    on a loaded machine can leave a request head unsent past the 1 s of `served`."""
    root = tmp_path_factory.mktemp("patient")
    db = str(root / "aegis.db")
    add_tokens(db)
    service = Service(db, root, args=("--read-timeout", "60")).start()
    yield service
    service.stop()


def closed_within(sock: socket.socket, seconds: float, dribble: bytes) -> float | None:
    """Send ``dribble`` a byte at a time until the server closes; return when, or None."""
    started = time.monotonic()
    sock.settimeout(0.2)
    for byte in dribble * 1000:
        if time.monotonic() - started > seconds:
            return None
        try:
            sock.sendall(bytes([byte]))
            data = sock.recv(4096)
            if data == b"" or b"408" in data:
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


@pytest.mark.parametrize("keep_alive", [False, True])
def test_slow_headers_are_cut_off(served: Service, keep_alive: bool) -> None:
    """Headers sent a byte at a time lose the connection after the read timeout, token or not."""
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        if keep_alive:  # a first request completes; the second's head dribbles
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert b"200" in sock.recv(4096)
        sock.sendall(b"GET /api/v1/approvals HTTP/1.1\r\n")
        took = closed_within(sock, 30, b"X-Slow: aaaaaaaa")
    assert took is not None, "the server kept a dribbling client for 30 s"
    print(f"slow headers cut off after {took:.1f}s (read timeout 1s)")


def test_a_slow_body_is_cut_off(served: Service) -> None:
    """A body sent a byte at a time is answered 408 (or the connection closed) in bounded time."""
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(
            b"POST /api/v1/approvals HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer bot-secret\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\n\r\n"
        )
        took = closed_within(sock, 30, b'{"a": "')
    assert took is not None, "the server waited 30 s for a dribbling body"


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:8700", "10.0.0.1"])
def test_foreign_host_names_are_refused_on_loopback(served: Service, host: str) -> None:
    """A loopback service answers 421 to a foreign Host (DNS rebinding), and serves its own."""
    foreign = httpx.get(f"{served.url}/healthz", headers={"Host": host}, timeout=5)
    assert foreign.status_code == 421
    for own in ("127.0.0.1", f"127.0.0.1:{served.port}", f"localhost:{served.port}"):
        assert httpx.get(f"{served.url}/healthz", headers={"Host": own}, timeout=5).is_success


async def test_long_polls_are_bounded_per_token_and_decisions_stay_fast(
    patient: Service,
) -> None:
    """400 open polls from one token: most are refused (429) at once; a decision stays quick."""
    async with httpx.AsyncClient(
        base_url=patient.url,
        headers=AGENT,
        timeout=30,
        limits=httpx.Limits(max_connections=500, max_keepalive_connections=500),
    ) as agent:
        made = await agent.post(
            "/api/v1/approvals",
            json={"session_id": uuid.uuid4().hex, "action": {"type": "refund", "target": "b"}},
        )
        request_id = made.json()["id"]
        polls = [
            asyncio.create_task(agent.get(f"/api/v1/approvals/{request_id}/wait?timeout=20"))
            for _ in range(400)
        ]
        deadline = time.monotonic() + 120
        while sum(p.done() for p in polls) < 400 - 16 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the refused ones answer at once, however loaded
        refused = [p for p in polls if p.done() and p.result().status_code == 429]
        assert len(refused) >= 400 - 16
        assert refused[0].result().json()["error"]["code"] == "too_many_waits"
        alice = Reviewer(patient.url, "alice")
        started = time.monotonic()
        decided = await alice.decide(request_id, "approve")
        took = time.monotonic() - started
        await alice.aclose()
        assert decided.status_code == 200
        answered = await asyncio.gather(*polls)
        held = [r for r in answered if r.status_code == 200]
        assert held
        assert all(r.json()["status"] == "approved" for r in held)
    print(f"decision with 400 polls open: {took:.2f}s; {len(held)} polls held, rest refused")
