"""`/metrics` of a real `aegis serve`, read with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from serve_support import Server, create_token

from aegis import Action, Policy, Runtime
from aegis.runtime.approval_callback import CallbackApprovalHandler
from aegis.runtime.audit import AuditLogger

POLICY = {
    "version": "1",
    "rules": [
        {"name": "reads", "match": {"type": "read"}, "approval": "auto", "risk_level": "low"},
        {"name": "deletes", "match": {"type": "delete"}, "approval": "block"},
        {"name": "refunds", "match": {"type": "refund"}, "approval": "approve"},
    ],
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(server: Server, token: str | None) -> httpx.Response:
    """GET /metrics, with a bearer token when given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)


async def record_actions(db: Path) -> None:
    """Run three governed actions into the trail: two reads and a blocked delete."""

    async def executor(action: Action) -> dict[str, Any]:
        return {"ok": True}

    handler = CallbackApprovalHandler(callback=lambda decision: True)
    audit = AuditLogger(db)
    async with Runtime(
        executor=executor,
        policy=Policy.from_dict(POLICY),
        approval_handler=handler,
        audit_logger=audit,
    ) as runtime:
        await runtime.run_one(Action("read", "crm"))
        await runtime.run_one(Action("read", "crm"))
        await runtime.run_one(Action("delete", "crm"))
        await runtime.run_one(Action("refund", "billing", {"amount": 5}))


def test_metrics_count_actions_and_approvals_and_need_a_token(tmp_path: Path) -> None:
    """Actions by decision and status, requests asked/decided/pending and decision times."""
    db = tmp_path / "aegis.db"
    reviewer = create_token(db, "alice", "reviewer")
    agent = create_token(db, "bot", "agent")
    asyncio.run(record_actions(db))
    with Server(db, log=tmp_path / "serve.log") as server:
        assert scrape(server, None).status_code == 401
        assert scrape(server, "not-a-token").status_code == 401
        response = scrape(server, reviewer)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        seen = samples(response.text)
        assert seen[("aegis_actions_total", (("decision", "auto"), ("status", "success")))] == 2
        assert seen[("aegis_actions_total", (("decision", "block"), ("status", "blocked")))] == 1
        assert seen[("aegis_actions_total", (("decision", "approve"), ("status", "success")))] == 1
        assert seen[("aegis_approval_requests_pending", ())] == 0
        assert seen[("aegis_store_errors_total", ())] == 0

        body = {
            "session_id": "s1",
            "action": {"type": "refund", "target": "billing", "params": {"amount": 900}},
            "risk_level": "high",
        }
        asked = httpx.post(
            f"{server.url}/api/v1/approvals",
            json=body,
            headers={"Authorization": f"Bearer {agent}"},
            timeout=10,
        )
        assert asked.status_code == 201, asked.text
        seen = samples(scrape(server, reviewer).text)
        assert seen[("aegis_approval_requests_pending", ())] == 1
        assert seen[("aegis_approval_requests_total", (("event", "requested"),))] == 1

        decided = httpx.post(
            f"{server.url}/api/v1/approvals/{asked.json()['id']}/decision",
            json={"verdict": "approve"},
            headers={"Authorization": f"Bearer {reviewer}"},
            timeout=10,
        )
        assert decided.status_code == 200, decided.text
        seen = samples(scrape(server, reviewer).text)
        assert seen[("aegis_approval_requests_pending", ())] == 0
        assert seen[("aegis_approval_requests_total", (("event", "decided"),))] == 1
        assert seen[("aegis_approval_decision_seconds_count", ())] == 1
        # the service's own records of the request are not counted as actions
        assert sum(v for (name, _), v in seen.items() if name == "aegis_actions_total") == 4


def test_new_actions_reach_the_metrics_while_serving(tmp_path: Path) -> None:
    """Actions another process records after the service started show up at the next scrape."""
    db = tmp_path / "aegis.db"
    reviewer = create_token(db, "alice", "reviewer")
    with Server(db, log=tmp_path / "serve.log") as server:
        before = samples(scrape(server, reviewer).text)
        assert not any(name == "aegis_actions_total" for name, _ in before)
        asyncio.run(record_actions(db))
        deadline = time.monotonic() + 10
        while True:
            seen = samples(scrape(server, reviewer).text)
            key = ("aegis_actions_total", (("decision", "auto"), ("status", "success")))
            if seen.get(key) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert seen.get(key) == 2


def test_metrics_public_needs_no_token(tmp_path: Path) -> None:
    """With --metrics-public, a scraper without a token reads /metrics; the API still needs one.

    Public is anyone's: a token sent anyway, an agent's included, is not looked at.
    """
    db = tmp_path / "aegis.db"
    create_token(db, "alice", "reviewer")
    agent = create_token(db, "bot", "agent")
    with Server(db, "--metrics-public", log=tmp_path / "serve.log") as server:
        response = scrape(server, None)
        assert response.status_code == 200
        assert ("aegis_approval_requests_pending", ()) in samples(response.text)
        assert scrape(server, agent).status_code == 200
        assert httpx.get(f"{server.url}/api/v1/approvals", timeout=10).status_code == 401


def test_metrics_are_for_reviewers_and_scrapers_not_agents(tmp_path: Path) -> None:
    """A reviewer's or a metrics token reads /metrics; an agent's is refused (403), saying why.

    An agent's token is what a compromised agent holds: it asks for
    approval, and has no business reading the fleet's counts by decision.
    A metrics token (`aegis token create NAME --role metrics`) reads
    /metrics and nothing else of the service.
    """
    db = tmp_path / "aegis.db"
    reviewer = create_token(db, "alice", "reviewer", ["finance"])
    agent = create_token(db, "bot", "agent")
    with Server(db, log=tmp_path / "serve.log") as server:
        refused = scrape(server, agent)
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert error["code"] == "wrong_role"
        assert "bot has an agent token" in error["message"]
        assert "--role metrics" in error["message"]  # the way out is named
        assert "aegis_" not in refused.text
        scraper = create_token(db, "prometheus", "metrics")  # the service reads tokens per call
        for token in (reviewer, scraper):
            response = scrape(server, token)
            assert response.status_code == 200, response.text
            assert ("aegis_approval_requests_pending", ()) in samples(response.text)

        def call(method: str, path: str, body: object = None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {scraper}"}
            return httpx.request(
                method, f"{server.url}{path}", json=body, headers=headers, timeout=10
            )

        asked = {"session_id": "s1", "action": {"type": "refund", "target": "billing"}}
        for method, path, body in (
            ("POST", "/api/v1/approvals", asked),
            ("GET", "/api/v1/approvals", None),
            ("GET", "/api/v1/grants", None),
            ("GET", "/api/v1/audit", None),
            ("GET", "/api/v1/audit/verify", None),
        ):
            answer = call(method, path, body)
            assert answer.status_code == 403, (path, answer.text)
            assert answer.json()["error"]["code"] == "wrong_role"
        assert call("GET", "/api/v1/whoami").json()["role"] == "metrics"
