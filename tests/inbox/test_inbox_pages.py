"""The inbox's pages in-process: sessions, CSRF, escaping, refusals, history and audit."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aegis.core.approval_request import Role, TokenInfo
from aegis.errors import ApprovalServiceError
from aegis.server import ApprovalService, create_app, open_service
from aegis.server.inbox import CONTENT_SECURITY_POLICY, Inbox, human_duration
from aegis.stores.approvals import ApprovalStore, hash_token

TOKENS = {
    "alice": (Role.REVIEWER, ()),
    "bob": (Role.REVIEWER, ("finance",)),
    "bot": (Role.AGENT, ()),
    "ida": (Role.REVIEWER, ("audit",)),  # an auditor
}

HOSTILE = "<script>window.pwned=1</script><img src=x onerror=alert(1)>"


class Site:
    """A browser-like client of the in-process app, and the store behind it."""

    def __init__(self, app: Any, service: ApprovalService, store: ApprovalStore, db: str):
        self.app = app
        self.service = service
        self.store = store
        self.db = db

    def client(self) -> httpx.AsyncClient:
        """A fresh client with its own cookie jar (one browser)."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://inbox.test"
        )

    async def sign_in(self, client: httpx.AsyncClient, name: str) -> str:
        """Sign ``name`` in through the form; return the session's CSRF token."""
        form = await client.get("/signin")
        nonce = csrf_of(form.text)
        done = await client.post("/signin", data={"token": f"{name}-secret", "csrf": nonce})
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/"
        return csrf_of((await client.get("/")).text)

    def give_name_again(self, name: str, role: Role, secret: str) -> None:
        """Hand a revoked token's name to a new token, as stores before retired names allowed."""
        values = (hash_token(secret), role.value, name)
        if self.db.startswith("postgresql://"):
            import psycopg

            with psycopg.connect(self.db, autocommit=True) as conn:
                conn.execute(
                    "UPDATE aegis_tokens SET token_hash = %s, role = %s, revoked_at = NULL "
                    "WHERE name = %s",
                    values,
                )
        else:
            with sqlite3.connect(self.db) as conn:
                conn.execute(
                    "UPDATE aegis_tokens SET token_hash = ?, role = ?, revoked_at = NULL "
                    "WHERE name = ?",
                    values,
                )

    def edit_audit_record(self, record_id: int) -> None:
        """Change a record's reason behind the store's back, as an attacker with the file would."""
        if self.db.startswith("postgresql://"):
            import psycopg

            with psycopg.connect(self.db, autocommit=True) as conn:
                conn.execute(
                    "UPDATE aegis_audit_log SET reason = 'edited' WHERE id = %s", (record_id,)
                )
        else:
            with sqlite3.connect(self.db) as conn:
                conn.execute("UPDATE audit_log SET reason = 'edited' WHERE id = ?", (record_id,))

    async def store_request(self, request_id: str) -> dict[str, Any]:
        """The request as the store holds it now."""
        found = self.store.get_request(request_id)
        assert found is not None
        return found.to_json()

    async def ask(self, who: str = "bot", **fields: Any) -> dict[str, Any]:
        """Open a request through the JSON API as the agent."""
        body = {
            "session_id": "s1",
            "action": {"type": "refund", "target": "billing", "params": {"amount": 9}},
            "risk_level": "high",
            **fields,
        }
        async with self.client() as client:
            response = await client.post(
                "/api/v1/approvals", json=body, headers={"Authorization": f"Bearer {who}-secret"}
            )
        assert response.status_code == 201, response.text
        return dict(response.json())


def csrf_of(html: str) -> str:
    """The value of the first hidden csrf input of a page."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no csrf field on the page"
    return found.group(1)


def build_site(db: str, **options: Any) -> tuple[Site, Inbox]:
    """The app (API and inbox) over a fresh store (a SQLite path or a DSN) with three tokens."""
    service = open_service(db, approval_ttl=600, auditor_groups=("audit",))
    now = datetime.now(UTC)
    for name, (role, groups) in TOKENS.items():
        service.store.create_token(TokenInfo(name, role, groups, now), hash_token(f"{name}-secret"))
    inbox = Inbox(service, session_key="k" * 32, poll_interval=0.1, **options)
    app = create_app(service, routes=inbox.routes())
    return Site(app, service, service.store, db), inbox


@pytest.fixture(params=["sqlite", "postgresql"])
async def site(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Site]:
    """The app over SQLite, then over PostgreSQL: the inbox is the same on both."""
    if request.param == "sqlite":
        db = str(tmp_path / "aegis.db")
    else:
        db = request.getfixturevalue("postgres_dsn")
    built, inbox = build_site(db)
    yield built
    inbox.close()
    built.service.close()


async def test_pages_need_a_session_and_carry_a_strict_csp(site: Site) -> None:
    """Without a session every page redirects to sign-in; pages carry the strict CSP."""
    async with site.client() as client:
        for path in ("/", "/history", "/audit", "/requests/apr_x"):
            response = await client.get(path)
            assert response.status_code == 303
            assert response.headers["location"].startswith("/signin")
        page = await client.get("/signin")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text  # the only script is a file: <script src=...>


async def test_an_unknown_address_is_a_page_in_a_browser(site: Site) -> None:
    """A browser opening an address the inbox lacks gets a 404 page back to Pending.

    It was the API's JSON. The API's paths, other clients and a method a page
    does not take keep their JSON 404 and 405.
    """
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    async with site.client() as client:
        await site.sign_in(client, "alice")
        page = await client.get("/request/apr_x", headers=html)  # a link typed wrong
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "<h1>Not here</h1>" in page.text
        assert 'id="signout"' in page.text  # signed in: the whole header, the way on
        assert 'href="/">Back to the pending requests' in page.text
        for path, status in (("/api/v1/nothing", 404), ("/api", 404), ("/signout", 405)):
            answer = await client.get(path, headers=html)
            assert answer.status_code == status, path
            assert answer.json()["error"]["status"] == status, path
        assert (await client.get("/request/apr_x")).json()["error"]["status"] == 404
        assert (await client.get("/static/nothing.css", headers=html)).status_code == 404
    async with site.client() as stranger:
        signed_out = await stranger.get("/nothing/here", headers=html)
    assert signed_out.status_code == 404
    assert "<h1>Not here</h1>" in signed_out.text
    assert 'id="signout"' not in signed_out.text


async def test_session_cookie_is_httponly_strict_and_expiring(site: Site) -> None:
    """Sign-in sets a signed HttpOnly SameSite=Strict cookie with a lifetime, not the token."""
    async with site.client() as client:
        form = await client.get("/signin")
        done = await client.post(
            "/signin", data={"token": "alice-secret", "csrf": csrf_of(form.text)}
        )
    cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith("aegis_session="))
    attributes = cookie.lower()
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "max-age=28800" in attributes
    assert "alice-secret" not in cookie


async def test_sign_in_refuses_agents_bad_tokens_and_forged_forms(site: Site) -> None:
    """Agent and metrics tokens, unknown tokens and a form without the nonce start no session."""
    site.store.create_token(
        TokenInfo("prometheus", Role.METRICS, (), datetime.now(UTC)),
        hash_token("prometheus-secret"),
    )
    expected = {
        "bot-secret": "bot has an agent token; sign in with a reviewer token.",
        "prometheus-secret": "prometheus has a metrics token; sign in with a reviewer token.",
        "nobody-secret": "Not signed in: the token is unknown",
    }
    async with site.client() as client:
        for token, message in expected.items():
            nonce = csrf_of((await client.get("/signin")).text)
            response = await client.post("/signin", data={"token": token, "csrf": nonce})
            assert response.headers["location"] == "/signin"
            assert "aegis_session" not in response.cookies
            assert message in (await client.get("/signin")).text
        forged = await client.post("/signin", data={"token": "alice-secret", "csrf": "guess"})
        assert forged.headers["location"] == "/signin"
        assert "aegis_session" not in forged.cookies
        assert (await client.get("/")).status_code == 303


async def test_decision_needs_the_csrf_token_and_same_origin(site: Site) -> None:
    """A decision without the session's CSRF token, or from another origin, decides nothing."""
    request = await site.ask()
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")
        url = f"/requests/{request['id']}/decision"
        missing = await client.post(url, data={"verdict": "approve"})
        wrong = await client.post(url, data={"verdict": "approve", "csrf": "x" + csrf})
        foreign = await client.post(
            url,
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
        for response in (missing, wrong, foreign):
            assert response.status_code == 403
        assert (await site.store_request(request["id"]))["status"] == "pending"
        done = await client.post(
            url,
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf, "comment": "ok"},
            headers={"Origin": "http://inbox.test"},
        )
        assert done.status_code == 303
        page = await client.get(done.headers["location"])
    assert f"Decided: approved {request['id']} (refund on billing)" in page.text
    assert "The agent may go ahead." in page.text
    assert (await site.store_request(request["id"]))["status"] == "approved"


async def test_agent_text_is_escaped_everywhere(site: Site) -> None:
    """Type, target, params, description and reason written by an agent appear as text only."""
    request = await site.ask(
        action={
            "type": "x<b>",
            "target": "<i>t</i>",
            "params": {"note": HOSTILE},
            "description": HOSTILE,
        },
        reason=HOSTILE,
        matched_rule="<u>r</u>",
    )
    async with site.client() as client:
        await site.sign_in(client, "alice")
        pages = [
            (await client.get("/")).text,
            (await client.get(f"/requests/{request['id']}")).text,
            (await client.get("/inbox/pending-rows")).text,
        ]
    for html in pages:
        for raw in ("<script>window", "<img src=x", "<b>", "<i>t</i>", "<u>r</u>"):
            assert raw not in html
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in pages[1]


async def test_buttons_disabled_with_the_reason(site: Site) -> None:
    """Outside the rule's groups the page is refused; after deciding, the buttons say why."""
    finance = await site.ask(reviewers=["finance"])
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")
        refused = await client.get(f"/requests/{finance['id']}")
        assert refused.status_code == 403
        assert "is for reviewers in finance" in refused.text
        assert "refund" not in refused.text
        two = await site.ask(approvers=2, action={"type": "wire", "target": "bank"})
        await client.post(
            f"/requests/{two['id']}/decision",
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf},
        )
        page = (await client.get(f"/requests/{two['id']}")).text
    assert "alice has already decided this request" in page
    assert "1 of 2" in page or "2 distinct reviewers" in page
    assert re.search(r'id="deny" disabled', page)


def _outcome(page: str) -> str:
    """The request page's sentence on how the request ended, as text (no tags)."""
    found = re.search(r'<p class="outcome-says" id="outcome-says">(.*?)</p>', page, re.S)
    assert found, "the page says nothing of how the request ended"
    return re.sub(r"<[^>]+>", "", found.group(1))


async def test_a_decided_request_says_who_decided_when_instead_of_a_form(site: Site) -> None:
    """Approved (by both reviewers it needed) or denied: who and when, plainly; no form at all."""
    two = await site.ask(approvers=2, action={"type": "wire", "target": "bank"})
    denied = await site.ask(action={"type": "refund", "target": "shop"})
    async with site.client() as alice, site.client() as bob:
        alice_csrf = await site.sign_in(alice, "alice")
        bob_csrf = await site.sign_in(bob, "bob")
        for client, csrf in ((alice, alice_csrf), (bob, bob_csrf)):
            await client.post(
                f"/requests/{two['id']}/decision",
                data={"verdict": "approve", "confirm": "yes", "csrf": csrf},
            )
        await alice.post(
            f"/requests/{denied['id']}/decision",
            data={"verdict": "deny", "comment": "not this shop", "csrf": alice_csrf},
        )
        approved_page = (await alice.get(f"/requests/{two['id']}")).text
        denied_page = (await bob.get(f"/requests/{denied['id']}")).text
    stored = await site.store_request(two["id"])
    assert _outcome(approved_page) == (
        f"Approved by alice, bob at {stored['decisions'][1]['at'][:19].replace('T', ' ')} UTC."
    )
    stored = await site.store_request(denied["id"])
    assert _outcome(denied_page) == (
        f"Denied by alice at {stored['decisions'][0]['at'][:19].replace('T', ' ')} UTC."
    )
    assert "not this shop" in denied_page  # what was said stays listed with the decision
    for page in (approved_page, denied_page):
        assert 'id="decide"' not in page
        assert 'id="approve"' not in page
        assert "You cannot decide this" not in page


async def test_an_expired_or_cancelled_request_says_so_instead_of_a_form(site: Site) -> None:
    """Past its expiry (not swept yet), half approved, or cancelled by the agent: said, no form."""
    lapsed = await site.ask(action={"type": "refund", "target": "a"})
    half = await site.ask(approvers=2, action={"type": "refund", "target": "b"})
    cancelled = await site.ask(action={"type": "refund", "target": "c"})
    async with site.client() as agent:
        done = await agent.post(
            f"/api/v1/approvals/{cancelled['id']}/cancel",
            json={"reason": "the customer withdrew"},
            headers={"Authorization": "Bearer bot-secret"},
        )
        assert done.status_code == 200, done.text
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")
        await client.post(
            f"/requests/{half['id']}/decision",
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf},
        )
        later = datetime.now(UTC) + timedelta(hours=1)
        site.service.clock = lambda: later  # past the 600 s expiry; nothing swept it yet
        pages = {
            name: (await client.get(f"/requests/{request['id']}")).text
            for name, request in (("lapsed", lapsed), ("half", half), ("cancelled", cancelled))
        }
    when = lapsed["expires_at"][:19].replace("T", " ")
    assert _outcome(pages["lapsed"]) == (
        f"Expired at {when} UTC without a decision; the agent was refused."
    )
    when = half["expires_at"][:19].replace("T", " ")
    assert _outcome(pages["half"]) == (
        f"Expired at {when} UTC with 1 of the 2 approvals it needed; the agent was refused."
    )
    assert _outcome(pages["cancelled"]) == "Cancelled: the customer withdrew."
    for page in pages.values():
        assert 'id="decide"' not in page
        assert "data-events=" not in page  # nothing left to watch for


async def test_counts_on_the_pages_read_right_for_one_and_many(site: Site) -> None:
    """Params' shapes, "N more" cues and the list's summary: "1 key", "2 keys", not "1 keys"."""
    filler = {f"p{n:02d}": n for n in range(26)}
    one = {
        "a": {"k": 1},
        "b": [1],
        "c": {"k": 1, "l": 2},
        "d": list(range(26)),
        "e": "x" * 601,
        **dict(list(filler.items())[:21]),
    }
    many = {"d": list(range(27)), "e": "x" * 602, **filler}
    first = await site.ask(action={"type": "refund", "target": "one", "params": one})
    second = await site.ask(action={"type": "refund", "target": "many", "params": many})
    async with site.client() as client:
        await site.sign_in(client, "alice")
        listed = (await client.get("/")).text
        one_page = (await client.get(f"/requests/{first['id']}")).text
        many_page = (await client.get(f"/requests/{second['id']}")).text
    assert "<bdi>a</bdi>: <bdi>{1 key}</bdi> · <bdi>b</bdi>: <bdi>[1 item]</bdi>" in listed
    assert "<bdi>c</bdi>: <bdi>{2 keys}</bdi>" in listed
    shapes = re.findall(r'<span class="p-shape">([^<]*)</span>', one_page)
    assert shapes == ["1 key", "1 item", "2 keys", "26 items"]
    for cue in ("1 more param of 26", "1 more item of 26", "1 more character of 601"):
        assert f"<summary>{cue} &ndash; expand</summary>" in one_page
    for cue in ("3 more params of 28", "2 more items of 27", "2 more characters of 602"):
        assert f"<summary>{cue} &ndash; expand</summary>" in many_page


async def test_expired_request_cannot_be_approved(site: Site) -> None:
    """Posting Approve on an expired request shows the service's refusal and decides nothing."""
    request = await site.ask(approval_ttl=0.5)
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")
        await asyncio.sleep(0.6)
        response = await client.post(
            f"/requests/{request['id']}/decision",
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf},
        )
    assert response.status_code == 409
    assert "expired" in response.text
    assert (await site.store_request(request["id"]))["status"] == "expired"


async def test_revoked_token_ends_the_session(site: Site) -> None:
    """Revoking the reviewer's token signs their browser out at the next request."""
    async with site.client() as client:
        await site.sign_in(client, "alice")
        assert (await client.get("/")).status_code == 200
        site.store.revoke_token("alice", datetime.now(UTC))
        assert (await client.get("/")).status_code == 303


async def test_an_expiring_token_ends_the_session_and_its_form(site: Site) -> None:
    """Once the token's time is up, its session is signed out and its open form decides nothing."""
    expires = datetime.now(UTC) + timedelta(seconds=4)
    site.store.create_token(
        TokenInfo("brief", Role.REVIEWER, (), datetime.now(UTC), expires),
        hash_token("brief-secret"),
    )
    request = await site.ask(session_id="s-brief")
    async with site.client() as client:
        csrf = await site.sign_in(client, "brief")
        assert (await client.get(f"/requests/{request['id']}")).status_code == 200
        await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
        assert (await client.get("/")).status_code == 303
        late = await client.post(
            f"/requests/{request['id']}/decision",
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf},
            headers={"Origin": "http://inbox.test"},
        )
        assert late.status_code == 303
        assert late.headers["location"].startswith("/signin")
    assert (await site.store_request(request["id"]))["status"] == "pending"


async def test_a_token_revoked_while_the_form_is_on_the_way_decides_nothing(site: Site) -> None:
    """A decision form whose token is revoked after its headers came, before its body, is void."""
    request = await site.ask(session_id="s-slow")
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")
        form = urllib.parse.urlencode(
            {"verdict": "approve", "confirm": "yes", "csrf": csrf, "grant_minutes": "60"}
        ).encode()

        async def body() -> AsyncIterator[bytes]:
            # The inbox asks for the form only once it has read the session.
            await asyncio.to_thread(site.store.revoke_token, "alice", datetime.now(UTC))
            yield form

        late = await client.post(
            f"/requests/{request['id']}/decision",
            content=body(),
            headers={
                "Origin": "http://inbox.test",
                "Content-Type": "application/x-www-form-urlencoded",
                "Content-Length": str(len(form)),
            },
        )
    assert late.status_code == 303
    assert late.headers["location"].startswith("/signin")
    stored = await site.store_request(request["id"])
    assert (stored["status"], stored["decisions"], stored["granted"]) == ("pending", [], None)


async def test_sign_out_needs_the_form_and_ends_the_session(site: Site) -> None:
    """Sign out is a POST with the CSRF token; afterwards pages need sign-in again."""
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")
        refused = await client.post("/signout", data={"csrf": "nope"})
        assert refused.status_code == 403
        assert (await client.get("/")).status_code == 200
        out = await client.post("/signout", data={"csrf": csrf})
        assert out.headers["location"] == "/signin"
        assert (await client.get("/")).status_code == 303


async def test_sign_in_returns_only_to_local_pages(site: Site) -> None:
    """The `next` page after sign-in is a local path; another site is ignored."""
    async with site.client() as client:
        for target, expected in (("/history", "/history"), ("//evil.example/x", "/")):
            page = await client.get("/signin", params={"next": target})
            done = await client.post(
                "/signin",
                data={"token": "alice-secret", "csrf": csrf_of(page.text), "next": target},
            )
            assert done.headers["location"] == expected
            client.cookies.clear()


async def test_history_filters_by_status_agent_and_reviewer(site: Site) -> None:
    """History lists finished requests with who and comment, filtered by status and reviewer."""
    approved = await site.ask(action={"type": "type_approved", "target": "t"})
    denied = await site.ask(action={"type": "type_denied", "target": "t"})
    pending = await site.ask(action={"type": "type_pending", "target": "t"})
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")
        await client.post(
            f"/requests/{approved['id']}/decision",
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf, "comment": "looks right"},
        )
        csrf_bob = await site.sign_in(bob := site.client(), "bob")
        await bob.post(
            f"/requests/{denied['id']}/decision", data={"verdict": "deny", "csrf": csrf_bob}
        )
        await bob.aclose()
        everything = (await client.get("/history")).text
        only_denied = (await client.get("/history", params={"status": "denied"})).text
        by_alice = (await client.get("/history", params={"reviewer": "alice"})).text
        other_agent = (await client.get("/history", params={"agent": "someone"})).text
    assert "type_approved" in everything
    assert "type_denied" in everything
    assert "type_pending" not in everything
    assert "looks right" in everything
    assert "alice approved" in everything
    assert "bob denied" in everything
    assert "type_denied" in only_denied
    assert "type_approved" not in only_denied
    assert "type_approved" in by_alice
    assert "type_denied" not in by_alice
    assert "No requests match" in other_agent
    assert pending["status"] == "pending"


async def test_audit_page_shows_hashes_and_a_broken_chain(site: Site) -> None:
    """Audit shows an auditor records with their hashes and verification, and the first bad one."""
    await site.ask()
    async with site.client() as client:
        await site.sign_in(client, "ida")
        page = (await client.get("/audit")).text
        assert "Chain verified: 1 record, head" in page
        await site.ask(action={"type": "refund", "target": "again"})
        assert "Chain verified: 2 records, head" in (await client.get("/audit")).text
        assert re.search(r'class="mono small hash nowrap" title="[0-9a-f]{64}"', page)
        filtered = (await client.get("/audit", params={"type": "nothing-like-this"})).text
        assert "No records match" in filtered
        bad = (await client.get("/audit", params={"since": "yesterday"})).text
        assert "not an ISO 8601 time" in bad
        site.edit_audit_record(1)
        broken = (await client.get("/audit")).text
    assert "Chain broken at record 1" in broken


async def test_grants_listed_and_revoked_from_the_audit_page(site: Site) -> None:
    """An approval with grant minutes creates a grant; the audit page revokes it."""
    request = await site.ask()
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")
        await client.post(
            f"/requests/{request['id']}/decision",
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf, "grant_minutes": "15"},
        )
        page = (await client.get("/audit")).text
        grant_id = re.search(r"/grants/(grt_[0-9a-f]+)/revoke", page)
        assert grant_id, "no grant on the audit page"
        done = await client.post(f"/grants/{grant_id.group(1)}/revoke", data={"csrf": csrf})
        assert done.status_code == 303
        after = (await client.get("/audit")).text
    assert "No active grants" in after
    assert f"Grant {grant_id.group(1)} revoked." in after


async def test_bad_grant_minutes_are_refused_on_the_page(site: Site) -> None:
    """A grant that is not a whole number of minutes is refused before anything is decided."""
    request = await site.ask()
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")
        response = await client.post(
            f"/requests/{request['id']}/decision",
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf, "grant_minutes": "-5"},
        )
    assert response.status_code == 422
    assert "Grant minutes must be a whole number" in response.text
    assert (await site.store_request(request["id"]))["status"] == "pending"


@pytest.mark.parametrize(
    ("verdict", "minutes"),
    [("approve", "1441"), ("approve", "9" * 5000), ("approve", "\u00b2"), ("deny", "1441")],
    ids=["over-a-day-approve", "thousands-of-digits", "superscript", "over-a-day-deny"],
)
async def test_the_page_holds_grants_to_the_services_rule(
    site: Site, verdict: str, minutes: str
) -> None:
    """The service's grant length rule holds on the form too: 422, nothing decided."""
    request = await site.ask()
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")
        response = await client.post(
            f"/requests/{request['id']}/decision",
            data={"verdict": verdict, "confirm": "yes", "csrf": csrf, "grant_minutes": minutes},
        )
    assert response.status_code == 422
    assert (await site.store_request(request["id"]))["status"] == "pending"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (61, "1m 01s"), (3600, "1h 00m"), (90061, "1d 1h"), (-5, "0s")],
)
def test_human_duration(seconds: float, text: str) -> None:
    """Clocks on the pages read like 1m 01s, 1h 00m, 1d 1h."""
    assert human_duration(seconds) == text


async def test_audit_opens_on_the_newest_records_and_pages_forward(tmp_path: Path) -> None:
    """Unfiltered, Audit shows the newest records; from the first record it pages forward."""
    site, inbox = build_site(str(tmp_path / "aegis.db"), audit_limit=2)
    try:
        for index in range(5):
            await site.ask(action={"type": f"kind_{index}", "target": "t"})
        async with site.client() as client:
            await site.sign_in(client, "alice")
            newest = (await client.get("/audit")).text
            first = (await client.get("/audit", params={"after": "0"})).text
            following = re.search(r'href="(/audit\?after=\d+)" id="next-page"', first)
            assert following, "no next page link"
            second = (await client.get(following.group(1).replace("&amp;", "&"))).text
    finally:
        inbox.close()
        site.service.close()
    assert "kind_4" in newest
    assert "kind_3" in newest
    assert "kind_0" not in newest
    assert "kind_0" in first
    assert "kind_1" in first
    assert "kind_2" in second
    assert "kind_0" not in second


async def test_public_url_origin_is_accepted_and_cookies_are_secure(tmp_path: Path) -> None:
    """Behind a TLS proxy, forms from --public-url's origin are accepted and cookies are Secure."""
    site, inbox = build_site(str(tmp_path / "aegis.db"), public_url="https://aegis.example.com")
    try:
        request = await site.ask()
        async with site.client() as client:
            form = await client.get("/signin")
            # the test client keeps Secure cookies off plain http: hand them over
            client.cookies.set("aegis_signin", form.cookies["aegis_signin"])
            done = await client.post(
                "/signin",
                data={"token": "alice-secret", "csrf": csrf_of(form.text)},
                headers={"Origin": "https://aegis.example.com"},
            )
            assert done.status_code == 303
            assert done.headers["location"] == "/"
            cookie = next(
                c for c in done.headers.get_list("set-cookie") if c.startswith("aegis_session=")
            )
            assert "secure" in cookie.lower()
            client.cookies.set("aegis_session", done.cookies["aegis_session"])
            csrf = csrf_of((await client.get("/")).text)
            decided = await client.post(
                f"/requests/{request['id']}/decision",
                data={"verdict": "deny", "csrf": csrf},
                headers={"Origin": "https://aegis.example.com"},
            )
            assert decided.status_code == 303
            other = await client.post(
                f"/requests/{request['id']}/decision",
                data={"verdict": "deny", "csrf": csrf},
                headers={"Origin": "https://other.example.com"},
            )
            assert other.status_code == 403
    finally:
        inbox.close()
        site.service.close()


async def test_oversized_form_is_refused(site: Site) -> None:
    """A decision form larger than the inbox's limit is refused before it is read."""
    request = await site.ask()
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")
        response = await client.post(
            f"/requests/{request['id']}/decision",
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf, "comment": "x" * 100_000},
        )
    assert response.status_code == 403
    assert (await site.store_request(request["id"]))["status"] == "pending"


async def test_own_request_cannot_be_decided(site: Site) -> None:
    """A reviewer whose name asked for a request (with an earlier agent token) may not decide it.

    Names are retired on revocation now; a store from before may still hold such a reviewer.
    """
    now = datetime.now(UTC)
    site.store.create_token(TokenInfo("carl", Role.AGENT, (), now), hash_token("carl-agent"))
    async with site.client() as client:
        response = await client.post(
            "/api/v1/approvals",
            json={
                "session_id": "s9",
                "action": {"type": "deploy", "target": "prod"},
                "risk_level": "high",
            },
            headers={"Authorization": "Bearer carl-agent"},
        )
    request = response.json()
    site.store.revoke_token("carl", now)
    with pytest.raises(ApprovalServiceError) as retired:  # a revoked name is retired now
        site.store.create_token(TokenInfo("carl", Role.REVIEWER, (), now), hash_token("carl-2"))
    assert retired.value.code == "token_name_retired"
    site.give_name_again("carl", Role.REVIEWER, "carl-secret")  # a store from before that
    async with site.client() as client:
        csrf = await site.sign_in(client, "carl")
        page = (await client.get(f"/requests/{request['id']}")).text
        refused = await client.post(
            f"/requests/{request['id']}/decision",
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf},
        )
    assert "nobody may decide their own request" in page
    assert re.search(r'id="approve" disabled', page)
    assert refused.status_code == 403
    assert (await site.store_request(request["id"]))["status"] == "pending"


async def test_pending_sorts_and_filters(site: Site) -> None:
    """Pending sorts by risk or time left and filters by risk, agent and rule; counts stay true."""
    low = await site.ask(risk_level="low", matched_rule="notes", approval_ttl=500)
    critical = await site.ask(
        risk_level="critical", session_id="s2", matched_rule="erasure", approval_ttl=60
    )
    high = await site.ask(risk_level="high", session_id="s3", matched_rule="refunds")
    async with site.client() as client:
        await site.sign_in(client, "alice")

        def order(html: str) -> list[str]:
            return re.findall(r'class="request-row" data-id="([^"]+)"', html)

        newest = (await client.get("/")).text
        assert order(newest) == [high["id"], critical["id"], low["id"]]
        by_risk = (await client.get("/", params={"sort": "risk"})).text
        assert order(by_risk) == [critical["id"], high["id"], low["id"]]
        expiring = (await client.get("/", params={"sort": "expiring"})).text
        assert order(expiring)[0] == critical["id"]
        only = (await client.get("/", params={"risk": "high", "rule": "refunds"})).text
        assert order(only) == [high["id"]]
        assert "3 pending in all" in only
        assert "1 match the filters" in only
        nobody = (await client.get("/", params={"agent": "someone-else"})).text
        assert order(nobody) == []
        rows = await client.get("/inbox/pending-rows", params={"sort": "risk", "risk": "critical"})
        assert order(rows.text) == [critical["id"]]
        assert rows.headers["x-pending-total"] == "3"


def _order(html: str) -> list[str]:
    return re.findall(r'class="request-row" data-id="([^"]+)"', html)


async def _mixed(site: Site) -> dict[str, dict[str, Any]]:
    """Five pending requests of mixed risk, rule and expiry, filed oldest first."""
    made = {}
    for name, risk, rule, ttl in [
        ("old-low", "low", "notes", 300),
        ("critical", "critical", "erasure", 200),
        ("high", "high", "refunds", 500),
        ("new-low", "low", "notes", 400),
        ("medium", "medium", "refunds", 100),
    ]:
        made[name] = await site.ask(
            session_id=name, risk_level=risk, matched_rule=rule, approval_ttl=ttl
        )
    return made


async def test_pending_filters_and_sorts_every_request_not_one_page(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pages of two, the filter and the sort cover all pending; links keep them."""
    monkeypatch.setattr("aegis.server.inbox.PENDING_PAGE", 2)
    made = await _mixed(site)
    ids = {name: request["id"] for name, request in made.items()}
    async with site.client() as client:
        await site.sign_in(client, "alice")
        lows = (await client.get("/", params={"risk": "low"})).text
        assert _order(lows) == [ids["new-low"], ids["old-low"]]
        assert "5 pending in all; 2 match the filters." in lows
        first = (await client.get("/", params={"sort": "risk", "rule": "refunds"})).text
        assert _order(first) == [ids["high"], ids["medium"]]
        by_risk = (await client.get("/", params={"sort": "risk"})).text
        assert _order(by_risk) == [ids["critical"], ids["high"]]
        assert "3 more pending after these" in by_risk
        # the request links carry the list's query, for the next one after a decision
        assert f'href="/requests/{ids["critical"]}?sort=risk"' in by_risk
        link = re.search(r'<a href="([^"]+)">Next page</a>', by_risk)
        assert link is not None
        assert "sort=risk" in link.group(1)
        second = (await client.get(link.group(1).replace("&amp;", "&"))).text
        assert _order(second) == [ids["medium"], ids["new-low"]]
        expiring = (await client.get("/", params={"sort": "expiring"})).text
        assert _order(expiring) == [ids["medium"], ids["critical"]]
        several = (await client.get("/", params={"risk": "high,critical", "sort": "risk"})).text
        assert _order(several) == [ids["critical"], ids["high"]]
        rows = await client.get("/inbox/pending-rows", params={"risk": "low"})
        assert _order(rows.text) == [ids["new-low"], ids["old-low"]]
        assert rows.headers["x-pending-total"] == "5"
        assert rows.headers["x-pending-matching"] == "2"
        # a value the list cannot take is named, and the list shown without it
        bad = await client.get("/", params={"sort": "oldest", "risk": "severe"})
        assert bad.status_code == 400
        assert "sort=&#39;oldest&#39; is not a sort" in bad.text
        assert "risk=&#39;severe&#39; is not a risk level" in bad.text
        stale = await client.get("/", params={"sort": "expiring", "before": "x~y"})
        assert stale.status_code == 400
        assert "page link is out of date" in stale.text


async def test_the_api_filters_and_sorts_in_the_store_and_names_bad_values(site: Site) -> None:
    """GET /api/v1/approvals takes risk, rule, sort; counts all; a bad value is a 422 naming it."""
    made = await _mixed(site)
    ids = {name: request["id"] for name, request in made.items()}
    reviewer = {"Authorization": "Bearer alice-secret"}
    async with site.client() as client:

        async def listed(**params: Any) -> dict[str, Any]:
            answer = await client.get("/api/v1/approvals", params=params, headers=reviewer)
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        page = await listed(sort="risk", limit=2)
        assert [r["id"] for r in page["approvals"]] == [ids["critical"], ids["high"]]
        assert (page["total"], page["more"]) == (5, 3)
        rest = await listed(sort="risk", limit=5, before=page["next"])
        assert [r["id"] for r in rest["approvals"]] == [
            ids["medium"],
            ids["new-low"],
            ids["old-low"],
        ]
        refunds = await listed(rule="refunds", risk="medium,high", sort="expiring")
        assert [r["id"] for r in refunds["approvals"]] == [ids["medium"], ids["high"]]
        assert refunds["total"] == 2
        for params, named in [
            ({"sort": "oldest"}, "sort="),
            ({"risk": "high,severe"}, "risk="),
            ({"sort": "expiring", "before": page["next"]}, "before"),
            ({"limit": "0"}, "limit"),
        ]:
            answer = await client.get("/api/v1/approvals", params=params, headers=reviewer)
            assert answer.status_code == 422, params
            assert answer.json()["error"]["message"].startswith(named), answer.text


async def test_a_decision_goes_on_to_the_next_pending_of_the_list(site: Site) -> None:
    """After a decision the next request of the filtered, sorted list opens, saying what was done.

    Back to the list when none is left.
    """
    made = await _mixed(site)
    ids = {name: request["id"] for name, request in made.items()}
    async with site.client() as client:
        csrf = await site.sign_in(client, "alice")

        async def decide(name: str, query: str, verdict: str = "approve") -> str:
            done = await client.post(
                f"/requests/{ids[name]}/decision?{query}",
                data={"verdict": verdict, "confirm": "yes", "csrf": csrf},
            )
            assert done.status_code == 303, done.text
            return str(done.headers["location"])

        where = await decide("critical", "sort=risk")
        assert where == f"/requests/{ids['high']}?sort=risk"
        page = (await client.get(where)).text
        assert f"Decided: approved {ids['critical']} (refund on billing)." in page
        assert "Showing the next pending request." in page
        assert 'id="approve"' in page
        assert (await site.store_request(ids["critical"]))["status"] == "approved"
        # within the filter: the one after it in the list, then none, back to the list
        where = await decide("old-low", "sort=expiring&rule=notes", "deny")
        assert where == f"/requests/{ids['new-low']}?sort=expiring&rule=notes"
        where = await decide("new-low", "sort=expiring&rule=notes")
        assert where == "/?sort=expiring&rule=notes"
        page = (await client.get(where)).text
        assert f"Decided: approved {ids['new-low']} (refund on billing)." in page
        assert "Nothing else is pending that matches the filters." in page
        # a decided page offers the next one (n), in the same list
        decided = (await client.get(f"/requests/{ids['new-low']}?sort=risk")).text
        assert f'href="/requests/{ids["high"]}?sort=risk">Next pending request' in decided
        # the last ones: nothing else pending at all
        await decide("high", "")
        where = await decide("medium", "")
        assert where == "/"
        assert "Nothing else is pending." in (await client.get(where)).text


async def test_text_no_store_can_keep_is_refused_by_name(site: Site) -> None:
    """A comment, filter or page link holding NUL (which PostgreSQL cannot keep) or a lone
    surrogate is the sender's mistake, refused as the API refuses it and naming the field,
    on either store: not a 503 saying the store is down, and nothing is decided."""
    request = await site.ask()
    async with site.client() as client:
        csrf = await site.sign_in(client, "ida")
        decided = await client.post(
            f"/requests/{request['id']}/decision",
            data={"verdict": "approve", "confirm": "yes", "csrf": csrf, "comment": "ok\x00"},
        )
        assert decided.status_code == 422, decided.text
        assert "comment" in decided.text
        assert "NUL" in decided.text
        for page in ("/?agent=a%00b", "/history?agent=a%00b", "/audit?type=a%00b"):
            shown = await client.get(page)
            assert shown.status_code == 400, (page, shown.status_code)
            assert "NUL" in shown.text
        shown = await client.get("/audit?target=%ED%A0%80")
        assert shown.status_code in (200, 400), shown.text
    assert (await site.store_request(request["id"]))["status"] == "pending"
