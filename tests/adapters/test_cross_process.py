"""A suspended run is saved, a fresh process loads it, a reviewer decides through the service."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aegis.runtime.audit import AuditLogger

AGENT = Path(__file__).with_name("resume_agent.py")
#: the frameworks that suspend a run, in this environment (see conftest.ISOLATED)
FRAMEWORKS = {"": ["langchain", "openai", "pydantic-ai"], "google-adk": ["google-adk"]}[
    os.environ.get("AEGIS_TEST_FRAMEWORK", "")
]


def _phase(framework: str, phase: str, folder: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(AGENT), framework, phase, str(folder), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _ran(folder: Path) -> list[dict[str, Any]]:
    path = folder / "ran.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _records(folder: Path) -> list[dict[str, Any]]:
    with AuditLogger(str(folder / "audit.db")) as audit:
        return audit.get_log()


# ---------------------------------------------------------------- through the approval service


class _Service:
    """``python -m aegis serve`` on a free loopback port, with an agent and a reviewer token."""

    def __init__(self, folder: Path) -> None:
        from datetime import UTC, datetime

        from aegis.core.approval_request import Role, TokenInfo
        from aegis.stores.approvals import hash_token, open_approval_store

        self.db = str(folder / "service.db")
        with AuditLogger(self.db) as audit:
            audit.head()
        store = open_approval_store(self.db)
        try:
            now = datetime.now(UTC)
            store.create_token(TokenInfo("bot", Role.AGENT, (), now), hash_token("bot-secret"))
            store.create_token(
                TokenInfo("alice", Role.REVIEWER, (), now), hash_token("alice-secret")
            )
        finally:
            store.close()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "serve.log"
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
                    "--log-level",
                    "warning",
                ],
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"aegis serve exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"aegis serve did not start: {self.log.read_text()}")

    def reviewer(self) -> httpx.Client:
        """alice's client of the API."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": "Bearer alice-secret"}, timeout=10
        )

    def stop(self) -> None:
        """Stop the service."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _pending(reviewer: httpx.Client, session: str) -> list[dict[str, Any]]:
    answer = reviewer.get("/api/v1/approvals", params={"status": "pending"})
    assert answer.status_code == 200, answer.text
    return [r for r in answer.json()["approvals"] if r["session_id"] == session]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Service]:
    """One approval service for the module's tests."""
    running = _Service(tmp_path_factory.mktemp("service"))
    yield running
    running.stop()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_reviewer_approves_through_the_service_and_another_process_resumes(
    framework: str, tmp_path: Path, service: _Service
) -> None:
    """The request exists as soon as the run suspends; alice approves it; a new process finishes."""
    session = f"approve-{framework}"
    _phase(framework, "start", tmp_path, service.url, session)
    assert _ran(tmp_path) == []
    with service.reviewer() as alice:
        [request] = _pending(alice, session)
        assert request["action"]["params"] == {"order_id": "o-17", "amount": 20.0}
        answer = alice.post(
            f"/api/v1/approvals/{request['id']}/decision",
            json={"verdict": "approve", "comment": "ok"},
        )
        assert answer.status_code == 200, answer.text
    finished = _phase(framework, "resume", tmp_path, service.url, session)
    assert finished == {"final": "done", "interrupted": False}
    assert _ran(tmp_path) == [{"order_id": "o-17", "amount": 20.0}]
    [record] = _records(tmp_path)
    assert record["result_status"] == "success"
    assert record["human_decision"] == f"approved by alice: ok [request {request['id']}]"
    assert record["context"]["tool_call_id"] == "call_refund"
    with service.reviewer() as alice:
        # The request opened at suspension was the one used: none other was opened.
        assert _pending(alice, session) == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_reviewers_no_through_the_service_never_runs_the_tool(
    framework: str, tmp_path: Path, service: _Service
) -> None:
    """alice denies the suspended run's request; the resumed run records that and never runs it."""
    session = f"deny-{framework}"
    _phase(framework, "start", tmp_path, service.url, session)
    with service.reviewer() as alice:
        [request] = _pending(alice, session)
        answer = alice.post(
            f"/api/v1/approvals/{request['id']}/decision",
            json={"verdict": "deny", "comment": "not this one"},
        )
        assert answer.status_code == 200, answer.text
    finished = _phase(framework, "resume", tmp_path, service.url, session)
    assert finished["final"] == "done"
    assert _ran(tmp_path) == []
    [record] = _records(tmp_path)
    assert record["result_status"] == "denied"
    assert record["human_decision"] == f"denied by alice: not this one [request {request['id']}]"
