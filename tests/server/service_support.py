"""Helpers for tests of the real approval service: a uvicorn subprocess, tokens, a reviewer."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from aegis.core.approval_request import Role, TokenInfo
from aegis.runtime.audit import AuditLogger
from aegis.stores.approvals import hash_token, open_approval_store

#: name -> (role, groups); each token's secret is ``<name>-secret``
TOKENS: dict[str, tuple[Role, tuple[str, ...]]] = {
    "bot": (Role.AGENT, ()),
    "alice": (Role.REVIEWER, ("finance",)),
    "bob": (Role.REVIEWER, ("finance",)),
    "carol": (Role.REVIEWER, ("ops",)),
    "dave": (Role.AGENT, ()),
    "sam": (Role.REVIEWER, ("security",)),
}

POLICY = {
    "defaults": {"approval": "block"},
    "rules": [
        {"name": "reads", "match": {"type": "read"}, "approval": "auto", "risk_level": "low"},
        {"name": "refunds", "match": {"type": "refund"}, "approval": "approve"},
        {"name": "wires", "match": {"type": "wire"}, "approval": "approve", "approvers": 2},
        {
            "name": "payroll",
            "match": {"type": "payroll"},
            "approval": "approve",
            "reviewers": ["finance"],
        },
        {"name": "purges", "match": {"type": "purge"}, "approval": "approve", "approval_ttl": 1},
    ],
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_tokens(db: str) -> None:
    """Create the audit trail and the tokens of :data:`TOKENS` in ``db``."""
    if not db.startswith("postgresql://"):
        with AuditLogger(db) as audit:
            audit.head()
    store = open_approval_store(db)
    try:
        now = datetime.now(UTC)
        for name, (role, groups) in TOKENS.items():
            store.create_token(TokenInfo(name, role, groups, now), hash_token(f"{name}-secret"))
    finally:
        store.close()


class Service:
    """``python -m aegis serve`` in a subprocess on a free loopback port."""

    def __init__(
        self,
        db: str,
        cwd: Path,
        *,
        ttl: str = "1h",
        port: int | None = None,
        args: tuple[str, ...] = (),
        scheme: str = "http",
        verify: bool | str = True,
    ) -> None:
        self.db = db
        self.args = args
        self.verify = verify
        self.cwd = cwd
        self.ttl = ttl
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = cwd / f"serve-{self.port}.log"

    def start(self) -> Service:
        """Start the service and wait until /healthz answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aegis",
                    "serve",
                    "--db",
                    self.db,
                    "--port",
                    str(self.port),
                    "--approval-ttl",
                    self.ttl,
                    "--log-level",
                    "warning",
                    *self.args,
                ],
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # generous: aegis serve starting on a loaded machine can take tens of seconds;
        # one that exited fails at once
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"aegis serve exited: {self.log.read_text()}")
            try:
                verify = (
                    ssl.create_default_context(cafile=self.verify)
                    if isinstance(self.verify, str)
                    else self.verify
                )
                if httpx.get(f"{self.url}/healthz", timeout=1, verify=verify).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"aegis serve did not start: {self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL the service: no shutdown, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Stop the service politely (SIGTERM), or kill it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Reviewer:
    """A person with a token, using the API directly."""

    def __init__(self, url: str, name: str, *, verify: bool | str = True) -> None:
        self.name = name
        self.client = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {name}-secret"},
            timeout=10,
            verify=ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify,
        )

    async def pending(
        self, session_id: str, *, timeout: float = 10.0, status: str = "pending"
    ) -> dict[str, Any]:
        """Wait for a request of ``session_id`` in ``status`` (``all``: any) and return it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            response = await self.client.get(
                "/api/v1/approvals", params={"session": session_id, "status": status}
            )
            if response.status_code == 200:
                for request in response.json()["approvals"]:
                    if request["session_id"] == session_id:
                        return dict(request)
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no pending request for session {session_id}")
            await asyncio.sleep(0.05)

    async def decide(
        self, request_id: str, verdict: str = "approve", **body: Any
    ) -> httpx.Response:
        """Post this reviewer's verdict."""
        return await self.client.post(
            f"/api/v1/approvals/{request_id}/decision", json={"verdict": verdict, **body}
        )

    async def get(self, request_id: str) -> dict[str, Any]:
        """The request as the service shows it now."""
        return dict((await self.client.get(f"/api/v1/approvals/{request_id}")).json())

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()
