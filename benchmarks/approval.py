"""Benchmark the approval service: the round trip, and how fast requests are filed.

Starts ``python -m aegis serve`` on a free loopback port over a fresh SQLite
file (or ``--db postgresql://...``), then measures:

- **round trip**: a real ``Runtime`` with ``RemoteApprovalHandler`` runs an
  action that needs approval while a reviewer client approves it as soon as
  it is listed; the time from ``run_one`` to its result, and the part from
  the reviewer's decision (answered) to the runtime proceeding;
- **request creation**: ``POST /api/v1/approvals`` per second, one client at
  a time and eight at once (each request a new action, so each is stored
  and audited).

Usage::

    python benchmarks/approval.py            # about 20 seconds
    python benchmarks/approval.py --quick    # a smoke run
    python benchmarks/approval.py --db postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aegis import Action, AuditLogger, Policy, Runtime  # noqa: E402  # after the path fix
from aegis.core.approval_request import Role, TokenInfo  # noqa: E402
from aegis.runtime.approval_remote import RemoteApprovalHandler  # noqa: E402
from aegis.stores.approvals import hash_token, open_approval_store  # noqa: E402

POLICY = Policy.from_dict(
    {
        "rules": [
            {"name": "refunds", "match": {"type": "refund"}, "approval": "approve"},
            {"name": "reads", "match": {"type": "read"}, "approval": "auto"},
        ]
    }
)


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(db: str) -> None:
    """The audit trail and two tokens (bot: agent, alice: reviewer) in ``db``."""
    if not db.startswith("postgresql://"):
        with AuditLogger(db) as audit:
            audit.head()
    store = open_approval_store(db)
    try:
        now = datetime.now(UTC)
        store.create_token(TokenInfo("bot", Role.AGENT, (), now), hash_token("bot-secret"))
        store.create_token(TokenInfo("alice", Role.REVIEWER, (), now), hash_token("alice-secret"))
    finally:
        store.close()


def start(db: str, port: int, cwd: Path) -> subprocess.Popen[bytes]:
    """``aegis serve`` in a subprocess, once /healthz answers."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aegis",
            "serve",
            "--db",
            db,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=cwd,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("aegis serve did not start")


async def reviewer(url: str, stop: asyncio.Event, decided_at: list[float]) -> None:
    """Approve every pending request as soon as it is listed."""
    headers = {"Authorization": "Bearer alice-secret"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        while not stop.is_set():
            listed = (await client.get("/api/v1/approvals")).json()["approvals"]
            for request in listed:
                answer = await client.post(
                    f"/api/v1/approvals/{request['id']}/decision", json={"verdict": "approve"}
                )
                if answer.status_code == 200:
                    decided_at.append(time.perf_counter())
            if not listed:
                await asyncio.sleep(0.001)


async def round_trips(url: str, db: str, count: int) -> dict[str, float]:
    """Median and p95 of the approval round trip, and of decision -> runtime proceeding."""
    handler = RemoteApprovalHandler(url, token="bot-secret", timeout=30, announce=None)
    totals: list[float] = []
    after_decision: list[float] = []
    auto: list[float] = []
    stop = asyncio.Event()
    decided_at: list[float] = []
    watcher = asyncio.create_task(reviewer(url, stop, decided_at))
    async with Runtime(
        executor=lambda action: "ok",
        policy=POLICY,
        approval_handler=handler,
        audit_logger=AuditLogger(db),
    ) as runtime:
        for i in range(count):
            began = time.perf_counter()
            result = await runtime.run_one(Action("refund", "billing", {"n": i}))
            ended = time.perf_counter()
            if not result.ok:
                raise SystemExit(f"round trip {i} was {result.status}: {result.error}")
            totals.append(ended - began)
            after_decision.append(ended - decided_at[-1])
            began = time.perf_counter()
            await runtime.run_one(Action("read", "crm", {"n": i}))
            auto.append(time.perf_counter() - began)
    stop.set()
    await watcher
    await handler.aclose()
    return {
        "round_trip_ms": statistics.median(totals) * 1000,
        "round_trip_p95_ms": sorted(totals)[int(len(totals) * 0.95) - 1] * 1000,
        "decision_to_proceed_ms": statistics.median(after_decision) * 1000,
        "auto_action_ms": statistics.median(auto) * 1000,
    }


async def creation(url: str, count: int, concurrency: int) -> float:
    """Requests filed per second with ``concurrency`` clients."""
    headers = {"Authorization": "Bearer bot-secret"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:
        tag = time.perf_counter_ns()

        async def one(i: int) -> None:
            body = {
                "session_id": f"bench-{tag}",
                "action": {"type": "refund", "target": "billing", "params": {"n": i}},
            }
            response = await client.post("/api/v1/approvals", json=body)
            if response.status_code != 201:
                raise SystemExit(f"create answered {response.status_code}: {response.text}")

        queue = iter(range(count))

        async def worker() -> None:
            for i in queue:
                await one(i)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - began)


async def decisions_under_polls(url: str, polls: int, count: int) -> tuple[float, int]:
    """Median ms of a decision while one agent token holds ``polls`` long polls open.

    Returns the median and how many of the polls the service held (the rest
    it refused with 429 at once: one token holds a bounded number).
    """
    agent = {"Authorization": "Bearer bot-secret"}
    reviewer_headers = {"Authorization": "Bearer alice-secret"}
    limits = httpx.Limits(max_connections=polls + 10, max_keepalive_connections=polls + 10)
    tag = time.perf_counter_ns()
    async with (
        httpx.AsyncClient(base_url=url, headers=agent, limits=limits, timeout=90) as client,
        httpx.AsyncClient(base_url=url, headers=reviewer_headers, timeout=90) as alice,
    ):
        bait = await client.post(
            "/api/v1/approvals",
            json={"session_id": f"polls-{tag}", "action": {"type": "refund", "target": "x"}},
        )
        bait_id = bait.json()["id"]
        waits = [
            asyncio.create_task(client.get(f"/api/v1/approvals/{bait_id}/wait?timeout=60"))
            for _ in range(polls)
        ]
        await asyncio.sleep(1.0 if polls else 0)
        times = []
        for i in range(count):
            made = await client.post(
                "/api/v1/approvals",
                json={
                    "session_id": f"polls-{tag}",
                    "action": {"type": "refund", "target": "billing", "params": {"n": i}},
                },
            )
            began = time.perf_counter()
            answer = await alice.post(
                f"/api/v1/approvals/{made.json()['id']}/decision", json={"verdict": "approve"}
            )
            times.append((time.perf_counter() - began) * 1000)
            if answer.status_code != 200:
                raise SystemExit(f"decision answered {answer.status_code}: {answer.text}")
        held = sum(1 for w in waits if not w.done())
        await alice.post(f"/api/v1/approvals/{bait_id}/decision", json={"verdict": "deny"})
        await asyncio.gather(*waits, return_exceptions=True)
    return statistics.median(times), held


def main() -> None:
    """Run the benchmark and print its numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--db", help="a PostgreSQL DSN instead of a fresh SQLite file")
    args = parser.parse_args()
    trips, creates = (10, 50) if args.quick else (60, 400)
    schema = None
    if args.db:
        # A schema of its own, dropped afterwards, so runs never see each other.
        import psycopg  # noqa: PLC0415  # only PostgreSQL runs need it

        schema = f"aegis_bench_{os.getpid()}"
        with psycopg.connect(args.db, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        run(args, trips, creates, schema)
    finally:
        if schema is not None:
            with psycopg.connect(args.db, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def run(args: argparse.Namespace, trips: int, creates: int, schema: str | None) -> None:
    """Start the service, measure, print."""
    with tempfile.TemporaryDirectory() as tmp:
        if schema is not None:
            joiner = "&" if "?" in args.db else "?"
            db = f"{args.db}{joiner}options=-csearch_path%3D{schema}"
        else:
            db = str(Path(tmp) / "aegis.db")
        prepare(db)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start(db, port, Path(tmp))
        try:
            numbers: dict[str, Any] = asyncio.run(round_trips(url, db, trips))
            numbers["create_per_s_1"] = asyncio.run(creation(url, creates, 1))
            numbers["create_per_s_8"] = asyncio.run(creation(url, creates, 8))
            numbers["decide_0"], _ = asyncio.run(decisions_under_polls(url, 0, 20))
            numbers["decide_400"], numbers["held"] = asyncio.run(
                decisions_under_polls(url, 400, 20)
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    store = "PostgreSQL" if args.db else "SQLite"
    print(f"approval service on {store}, {trips} round trips, {creates} requests per rate")
    print(
        f"  round trip (request, decision, runtime proceeds): {numbers['round_trip_ms']:.1f} ms "
        f"median, {numbers['round_trip_p95_ms']:.1f} ms p95"
    )
    after = numbers["decision_to_proceed_ms"]
    print(f"  decision answered -> runtime proceeds: {after:.1f} ms median")
    print(
        f"  an auto action on the same runtime: {numbers['auto_action_ms']:.2f} ms median "
        f"(round trip = {numbers['round_trip_ms'] / numbers['auto_action_ms']:.0f}x)"
    )
    print(
        f"  request creation: {numbers['create_per_s_1']:.0f}/s one client, "
        f"{numbers['create_per_s_8']:.0f}/s eight clients "
        f"({numbers['create_per_s_8'] / numbers['create_per_s_1']:.2f}x)"
    )
    print(
        f"  a decision: {numbers['decide_0']:.1f} ms median with no long polls open, "
        f"{numbers['decide_400']:.1f} ms with 400 opened by one token "
        f"({numbers['decide_400'] / numbers['decide_0']:.2f}x; the service held "
        f"{numbers['held']} of them, refused the rest with 429)"
    )


if __name__ == "__main__":
    main()
