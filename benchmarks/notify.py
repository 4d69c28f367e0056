"""Benchmark notifications: what they cost the service, and how fast they arrive.

Measures, on this machine:

- **publish**: the cost of ``Notifications.publish`` on the caller's thread
  (the service's event loop), with a receiver that answers and with one that
  hangs (events queue, then the oldest are dropped);
- **request filing**: ``POST /api/v1/approvals`` per second against
  ``aegis serve`` without notifications, and with a webhook plus a webhook
  that never answers: the ratio shows whether a dead receiver slows the
  service;
- **delivery latency**: from the service's answer to the receiver holding
  the signed event, p50 and p99.

Usage::

    python benchmarks/notify.py            # about 20 seconds
    python benchmarks/notify.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aegis import AuditLogger  # noqa: E402  # after the path fix
from aegis.core.approval_request import Role, TokenInfo  # noqa: E402
from aegis.server.notify import Notifications, verify_signature  # noqa: E402
from aegis.stores.approvals import hash_token, open_approval_store  # noqa: E402

SECRET = "bench-secret"


class Receiver:
    """A loopback HTTP receiver that notes when each event arrived (or hangs)."""

    def __init__(self, *, hang: bool = False) -> None:
        self.arrivals: dict[str, float] = {}
        self.count = 0
        self.bad = 0
        stop = self.stop = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if hang:
                    stop.wait(60)
                    return
                at = time.perf_counter()
                if not verify_signature(
                    SECRET,
                    body,
                    self.headers.get("X-Aegis-Signature"),
                    self.headers.get("X-Aegis-Delivery"),
                ):
                    receiver.bad += 1
                receiver.count += 1
                marker = b'"id":"apr_'
                start = body.find(marker)
                if start >= 0:
                    request_id = body[start + 6 : body.index(b'"', start + 6)].decode()
                    receiver.arrivals.setdefault(request_id, at)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_publish(events: int) -> dict[str, float]:
    """Microseconds per publish() call, to a receiver that answers and to one that hangs."""
    request = {
        "id": "apr_1",
        "status": "pending",
        "action": {"type": "refund", "target": "billing", "params": {"amount": 1}},
        "risk_level": "high",
    }
    results = {}
    for name, hang in (("answering", False), ("hanging", True)):
        receiver = Receiver(hang=hang)
        notifications = Notifications([receiver.url], secret=SECRET, timeout=2, attempts=1)
        notifications.start()
        started = time.perf_counter()
        for _ in range(events):
            notifications.publish("approval.requested", request)
        elapsed = time.perf_counter() - started
        results[name] = elapsed / events * 1e6
        notifications.close(timeout=0.5)
        receiver.close()
    return results


def prepare(db: str) -> None:
    """The audit trail and two tokens (bot: agent, alice: reviewer) in ``db``."""
    with AuditLogger(db) as audit:
        audit.head()
    store = open_approval_store(db)
    try:
        now = datetime.now(UTC)
        store.create_token(TokenInfo("bot", Role.AGENT, (), now), hash_token("bot-secret"))
        store.create_token(TokenInfo("alice", Role.REVIEWER, (), now), hash_token("alice-secret"))
    finally:
        store.close()


def serve(db: str, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """``aegis serve`` in a subprocess, once /healthz answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if "--webhook" in extra:  # the key from the environment: serve refuses it as an argument
        env["AEGIS_WEBHOOK_SECRET"] = SECRET
    process = subprocess.Popen(
        [sys.executable, "-m", "aegis", "serve", "--db", db, "--port", str(port),
         "--log-level", "warning", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("aegis serve did not start")


def file_requests(url: str, count: int, tag: str) -> tuple[float, dict[str, float]]:
    """File ``count`` requests one by one; return requests per second and when each was answered."""
    answered: dict[str, float] = {}
    headers = {"Authorization": "Bearer bot-secret"}
    with httpx.Client(base_url=url, timeout=10) as client:
        started = time.perf_counter()
        for index in range(count):
            body = {
                "session_id": f"bench-{tag}",
                "action": {"type": "refund", "target": "billing", "params": {"n": index}},
                "risk_level": "high",
            }
            response = client.post("/api/v1/approvals", json=body, headers=headers)
            response.raise_for_status()
            answered[response.json()["id"]] = time.perf_counter()
        elapsed = time.perf_counter() - started
    return count / elapsed, answered


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    events = 2_000 if args.quick else 20_000
    count = 60 if args.quick else 300

    publish = bench_publish(events)
    print(f"publish(), receiver answering : {publish['answering']:7.1f} us per event")
    print(f"publish(), receiver hanging   : {publish['hanging']:7.1f} us per event")

    rates: dict[str, float] = {}
    latencies: list[float] = []
    bad = 0
    setups = ("none", "dead webhook", "live webhook", "live + dead webhooks")
    # two rounds, interleaved, best of each: the machine is shared and noisy
    plan = [*setups, *reversed(setups)] if not args.quick else list(setups)
    with tempfile.TemporaryDirectory() as folder:
        for number, setup in enumerate(plan):
            db = str(Path(folder) / f"bench-{number}.db")
            prepare(db)
            live, dead = Receiver(), Receiver(hang=True)
            extra: list[str] = []
            if "live" in setup:
                extra += ["--webhook", live.url]
            if "dead" in setup:
                extra += ["--webhook", dead.url]
            process, url = serve(db, *extra)
            try:
                file_requests(url, 10, "warmup")
                rate, answered = file_requests(url, count, setup)
                rates[setup] = max(rate, rates.get(setup, 0.0))
                if "live" in setup:
                    deadline = time.monotonic() + 30
                    while len(live.arrivals) < count + 10 and time.monotonic() < deadline:
                        time.sleep(0.05)
                    latencies = sorted(
                        (live.arrivals[i] - at) * 1000
                        for i, at in answered.items()
                        if i in live.arrivals
                    )
                    bad = live.bad
            finally:
                stop(process)
                live.close()
                dead.close()

    for setup in setups:
        ratio = rates[setup] / rates["none"]
        print(f"requests filed, {setup:<22}: {rates[setup]:7.1f} per second ({ratio:.2f}x)")
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            "delivery, from the service's answer (negative: before it): "
            f"p50 {statistics.median(latencies):.1f} ms, "
            f"p99 {p99:.1f} ms ({len(latencies)} of {count} delivered, {bad} bad signatures)"
        )


if __name__ == "__main__":
    main()
