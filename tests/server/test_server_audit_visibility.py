"""Reviewers read the audit records of the requests they may see; auditors read the whole trail.

A real `aegis serve --auditor-group auditors` on a loopback port over a
SQLite trail that the agent's runtime writes to as well. Alice is in
finance, Carol in ops, Bob in no group, Ida in auditors. Finance's
request carries a secret in its params, ops' another; the agent's own
records (an action that asked nobody) name no request, and one record
names a request the store does not hold. Each reader goes through the
JSON API (records, filters, paging, verification, whoami) and the inbox's
Audit page in Chromium.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from service_support import Service

from aegis.core.action import Action
from aegis.core.approval_request import Role, TokenInfo
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.risk import RiskLevel
from aegis.runtime.audit import AuditLogger
from aegis.server.service import AUDIT_SCAN
from aegis.stores.approvals import hash_token, open_approval_store

TOKENS = {
    "bot": (Role.AGENT, ()),
    "alice": (Role.REVIEWER, ("finance",)),
    "carol": (Role.REVIEWER, ("ops",)),
    "bob": (Role.REVIEWER, ()),
    "ida": (Role.REVIEWER, ("auditors",)),
}

FINANCE_SECRET = "FIN-IBAN-DE89370400440532013000"
OPS_SECRET = "OPS-HOST-db-primary-7"
AGENT_SECRET = "AGENT-OWN-sk_live_51"
ORPHAN_SECRET = "ORPHAN-no-such-request"
#: agent records written between the first requests and the late one: more
#: than one read looks through for a reviewer
FILLER = AUDIT_SCAN + 500


@dataclass
class World:
    """The service and what was asked of it."""

    service: Service
    finance: str
    ops: str
    anyone: str
    late_ops: str
    browser: Browser

    def api(self, who: str) -> httpx.Client:
        """An API client holding ``who``'s token."""
        return httpx.Client(
            base_url=self.service.url,
            headers={"Authorization": f"Bearer {who}-secret"},
            timeout=60,
        )

    def read_all(self, who: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
        """Every record ``who`` may read, following ``next_after_id``, and how many reads."""
        records: list[dict[str, Any]] = []
        reads = 0
        after: int | None = None
        with self.api(who) as client:
            while True:
                query = {"limit": 1000, **params}
                if after is not None:
                    query["after_id"] = after
                answer = client.get("/api/v1/audit", params=query)
                assert answer.status_code == 200, answer.text
                body = answer.json()
                records += body["records"]
                reads += 1
                after = body["next_after_id"]
                if after is None:
                    return records, reads

    def signed_in(self, who: str) -> Page:
        """A fresh Chromium profile signed in to the inbox as ``who``."""
        page = self.browser.new_context().new_page()
        page.goto(f"{self.service.url}/signin")
        page.fill("#token", f"{who}-secret")
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_contain_text("Pending")
        return page


def _requests_of(records: list[dict[str, Any]]) -> set[str]:
    return {str((r.get("context") or {}).get("approval_request")) for r in records}


def _ask(client: httpx.Client, action_type: str, groups: list[str], params: dict[str, Any]) -> str:
    body = {
        "session_id": "s-" + secrets.token_hex(4),
        "action": {"type": action_type, "target": "crm", "params": params},
        "risk_level": "high",
        "matched_rule": action_type,
        "reviewers": groups,
    }
    answer = client.post("/api/v1/approvals", json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def _agent_record(audit: AuditLogger, kind: str, params: dict[str, Any], **context: Any) -> None:
    """A record the agent's runtime writes itself: an action that asked nobody."""
    action = Action(kind, "crm", params)
    decision = PolicyDecision(action, RiskLevel.LOW, Approval.AUTO, kind, "")
    audit.log("agent-session", decision, context=context or None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Three requests (finance, ops, anyone), agent records, an orphan, filler, a late ops one."""
    folder = tmp_path_factory.mktemp("audit-visibility")
    db = str(folder / "aegis.db")
    with AuditLogger(db, durability="process") as audit:
        audit.head()
        store = open_approval_store(db)
        try:
            now = datetime.now(UTC)
            for name, (role, groups) in TOKENS.items():
                store.create_token(TokenInfo(name, role, groups, now), hash_token(f"{name}-secret"))
        finally:
            store.close()
        service = Service(db, folder, args=("--auditor-group", "auditors")).start()
        try:
            with httpx.Client(
                base_url=service.url, headers={"Authorization": "Bearer bot-secret"}, timeout=60
            ) as bot:
                _agent_record(audit, "agent_own", {"key": AGENT_SECRET})
                _agent_record(
                    audit, "orphan", {"note": ORPHAN_SECRET}, approval_request="apr_" + "0" * 24
                )
                finance = _ask(bot, "pay_salary", ["finance"], {"iban": FINANCE_SECRET})
                ops = _ask(bot, "restart_db", ["ops"], {"host": OPS_SECRET})
                anyone = _ask(bot, "read_report", [], {"n": 1})
                with httpx.Client(
                    base_url=service.url,
                    headers={"Authorization": "Bearer alice-secret"},
                    timeout=60,
                ) as alice:
                    denied = alice.post(
                        f"/api/v1/approvals/{finance}/decision",
                        json={"verdict": "deny", "comment": "not this month"},
                    )
                    assert denied.status_code == 200, denied.text
                for index in range(FILLER):
                    _agent_record(audit, "bulk", {"i": index})
                late_ops = _ask(bot, "rotate_logs", ["ops"], {"host": OPS_SECRET})
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
                )
                built = World(service, finance, ops, anyone, late_ops, browser)
                _wait_for_the_outbox(built)
                try:
                    yield built
                finally:
                    browser.close()
        finally:
            service.stop()


def _wait_for_the_outbox(world: World) -> None:
    """Wait until the service has written the late request's record (the outbox is async)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with world.api("ida") as ida:
            found = ida.get("/api/v1/audit", params={"type": "rotate_logs"}).json()["records"]
        if found:
            return
        time.sleep(0.2)
    raise AssertionError("the service never wrote the late request's audit record")


# ------------------------------------------------------------------ the JSON API


def test_a_reviewer_reads_only_the_records_of_requests_they_may_see(world: World) -> None:
    """Carol (ops) reads ops' and open requests' records; not finance's, the agent's, orphans'."""
    records, _ = world.read_all("carol")
    seen = _requests_of(records)
    assert {world.ops, world.anyone, world.late_ops} <= seen
    assert world.finance not in seen
    assert {r["action_type"] for r in records} <= {"restart_db", "rotate_logs", "read_report"}
    text = repr(records)
    for secret in (FINANCE_SECRET, AGENT_SECRET, ORPHAN_SECRET):
        assert secret not in text


def test_another_reviewer_reads_their_own_groups_records(world: World) -> None:
    """Alice (finance) reads finance's request and decision, and not ops'."""
    records, _ = world.read_all("alice")
    events = {(r["context"]["approval_request"], r["context"]["approval_event"]) for r in records}
    assert (world.finance, "approval.requested") in events
    assert (world.finance, "approval.decided") in events
    assert world.ops not in _requests_of(records)
    assert OPS_SECRET not in repr(records)


def test_a_reviewer_in_no_group_reads_only_open_requests(world: World) -> None:
    """Bob (no group) reads the request naming no group, and nothing else."""
    records, _ = world.read_all("bob")
    assert _requests_of(records) == {world.anyone}


def test_an_auditor_reads_every_record(world: World) -> None:
    """Ida (auditors) reads every group's records, the agent's own and the orphan."""
    records, _ = world.read_all("ida")
    types = {r["action_type"] for r in records}
    assert {"pay_salary", "restart_db", "read_report", "agent_own", "orphan", "bulk"} <= types
    assert len([r for r in records if r["action_type"] == "bulk"]) == FILLER
    text = repr(records)
    for secret in (FINANCE_SECRET, OPS_SECRET, AGENT_SECRET, ORPHAN_SECRET):
        assert secret in text


@pytest.mark.parametrize(
    "params",
    [
        {"type": "pay_salary"},
        {"type": "agent_own"},
        {"type": "orphan"},
        {"session": "agent-session"},
        {"target": "crm", "risk": "low"},
    ],
    ids=["finance-type", "agent-type", "orphan-type", "agent-session", "target-risk"],
)
def test_filters_cannot_reach_another_groups_records(world: World, params: dict[str, str]) -> None:
    """Carol filtering for finance's type, the agent's records or the orphan finds none."""
    records, _ = world.read_all("carol", **params)
    assert records == []
    every, _ = world.read_all("ida", **params)
    assert every  # the records exist: the filter matched them for the auditor


@pytest.mark.parametrize(
    "params",
    [{"type": "restart_db"}, {"type": "rotate_logs", "risk": "high"}, {"target": "crm"}],
    ids=["type", "type-risk", "target"],
)
def test_a_reviewers_filters_find_what_an_auditors_find_among_her_records(
    world: World, params: dict[str, str]
) -> None:
    """Carol's filtered read finds exactly the auditor's matches that she may read."""
    mine = {r["id"] for r in world.read_all("carol")[0]}
    found = [r["id"] for r in world.read_all("carol", **params)[0]]
    every = [r["id"] for r in world.read_all("ida", **params)[0]]
    assert found
    assert found == [i for i in every if i in mine]


def _answers(world: World, who: str, **params: Any) -> list[tuple[list[Any], Any]]:
    """Each answer ``who`` gets following ``next_after_id`` from the start: ids and next."""
    answers: list[tuple[list[Any], Any]] = []
    after = 0
    with world.api(who) as client:
        for _ in range(20):
            query = {"limit": 1000, "after_id": after, **params}
            body = client.get("/api/v1/audit", params=query).json()
            answers.append(([r["id"] for r in body["records"]], body["next_after_id"]))
            if body["next_after_id"] is None:
                return answers
            after = body["next_after_id"]
    raise AssertionError("paging never ended")


@pytest.mark.parametrize(
    "params",
    [{"type": "bulk"}, {"session": "agent-session"}, {"risk": "low"}],
    ids=["agent-type", "agent-session", "agent-risk"],
)
def test_where_a_filtered_read_goes_on_tells_nothing_of_unreadable_records(
    world: World, params: dict[str, str]
) -> None:
    """Carol filtering for records she may not read is answered as for a filter matching none.

    Were next_after_id the last matching record looked at, the filter for
    the agent's 5,500 bulk records would name where its 5,000th lies (and by
    moving after_id, which ids are bulk records): what she may not read.
    """
    nothing = _answers(world, "carol", type="no_such_type")
    assert _answers(world, "carol", **params) == nothing
    assert len(nothing) >= 2  # the trail is longer than one read looks through


def test_paging_one_at_a_time_never_reaches_another_groups_records(world: World) -> None:
    """Carol's pages of one, followed by next_after_id, give exactly her unpaged records."""
    whole, _ = world.read_all("carol")
    paged: list[dict[str, Any]] = []
    after = 0
    with world.api("carol") as client:
        for _ in range(100):
            body = client.get("/api/v1/audit", params={"limit": 1, "after_id": after}).json()
            assert len(body["records"]) <= 1
            paged += body["records"]
            if body["next_after_id"] is None:
                break
            after = body["next_after_id"]
        else:
            raise AssertionError("paging never ended")
    assert [r["id"] for r in paged] == [r["id"] for r in whole]


def test_a_read_looks_through_a_bounded_stretch_and_says_where_to_go_on(world: World) -> None:
    """More agent records than one read looks through lie before Carol's late request.

    The first read stops short and names where to go on; following it finds
    the late request, so nothing is hidden by the bound.
    """
    with world.api("carol") as client:
        first = client.get("/api/v1/audit", params={"limit": 1000}).json()
    assert first["next_after_id"] is not None
    assert world.late_ops not in _requests_of(first["records"])
    records, reads = world.read_all("carol")
    assert world.late_ops in _requests_of(records)
    assert reads >= 2


def test_only_an_auditor_verifies_the_chain(world: World) -> None:
    """Verification counts every group's records: a 403 for Carol, the report for Ida."""
    with world.api("carol") as carol:
        refused = carol.get("/api/v1/audit/verify")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "not_auditor"
    assert "checked" not in refused.text
    # which groups audit is the operator's to know, not any reviewer's
    assert re.search(r"\bauditors\b", refused.text) is None, refused.text
    with world.api("ida") as ida:
        report = ida.get("/api/v1/audit/verify").json()
    assert report["ok"] is True
    assert report["checked"] > FILLER


def test_whoami_says_who_is_an_auditor(world: World) -> None:
    """whoami answers auditor true for Ida and false for Carol."""
    with world.api("ida") as ida:
        assert ida.get("/api/v1/whoami").json()["auditor"] is True
    with world.api("carol") as carol:
        assert carol.get("/api/v1/whoami").json()["auditor"] is False


# ------------------------------------------------------------------ the inbox


def test_audit_page_shows_a_reviewer_only_their_groups_records(world: World) -> None:
    """In Chromium, Carol's Audit page and its pages show ops' records, never finance's."""
    page = world.signed_in("carol")
    page.goto(f"{world.service.url}/audit")
    expect(page.locator("h1")).to_have_text("Audit trail")
    expect(page.locator("#scope")).to_contain_text("auditors")
    expect(page.locator("#verify")).to_have_count(0)
    table = page.locator("table.audit tbody")
    expect(table).to_contain_text("rotate_logs")  # the newest of hers
    assert "pay_salary" not in table.inner_text()
    assert "bulk" not in table.inner_text()
    # from the first record, page by page, as far as the pages go
    page.goto(f"{world.service.url}/audit?after=0")
    shown = ""
    for _ in range(20):
        shown += page.locator("table.audit tbody").inner_text()
        following = page.locator("#next-page")
        if following.count() == 0:
            break
        following.click()
        expect(page.locator("h1")).to_have_text("Audit trail")
    else:
        raise AssertionError("the audit pages never ended")
    assert "restart_db" in shown
    assert "rotate_logs" in shown
    for hidden in ("pay_salary", "agent_own", "orphan", "bulk"):
        assert hidden not in shown
    page.goto(f"{world.service.url}/audit?type=pay_salary")
    expect(page.locator(".empty")).to_have_text("No records match.")
    page.context.close()


def test_audit_page_shows_an_auditor_everything_and_the_verification(world: World) -> None:
    """In Chromium, Ida's Audit page verifies the chain, finds finance's and the agent's records."""
    page = world.signed_in("ida")
    page.goto(f"{world.service.url}/audit")
    expect(page.locator("#verify")).to_contain_text("Chain verified")
    page.goto(f"{world.service.url}/audit?type=pay_salary")
    expect(page.locator("table.audit tbody")).to_contain_text("pay_salary")
    page.goto(f"{world.service.url}/audit?type=agent_own")
    expect(page.locator("table.audit tbody")).to_contain_text("agent_own")
    page.context.close()
    # the same pages for Carol, who is no auditor: neither the verification nor those records
    other = world.signed_in("carol")
    other.goto(f"{world.service.url}/audit")
    expect(other.locator("#scope")).to_be_visible()
    expect(other.locator("#verify")).to_have_count(0)
    other.goto(f"{world.service.url}/audit?type=agent_own")
    expect(other.locator(".empty")).to_have_text("No records match.")
    other.context.close()
