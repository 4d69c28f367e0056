"""OpenID sign-in to the inbox against a real OpenID provider (oidc-provider from npm).

`aegis serve` runs as a subprocess with --oidc-issuer; people log in on
the provider's own login page (walked over HTTP here; the browser test
does it in Chromium). The identity decisions record is the issuer and
subject, so one person counts once, whichever way they sign in.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import shlex
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from oidc_support import OpenIdProvider, follow_to, provider_login, sign_in
from serve_support import Server, aegis, create_token

from aegis.core.identity import Identity
from aegis.runtime.audit import AuditLogger
from aegis.server.oidc import OidcError, OidcSettings, OidcSignIn
from aegis.server.service import OPERATOR_SESSION

CLIENT_SECRET = "a-client-secret-for-the-tests"  # a test fixture's secret

ACCOUNTS = {
    "alice": {"name": "Alice Example", "email": "alice@example.com", "groups": ["security"]},
    "bob": {"name": "Bob Builder", "groups": ["finance"]},
    "carol": {"name": "Carol Chen", "groups": ["security", "finance"]},
    "erin": {"name": "Erin Outsider", "groups": ["marketing"]},
}


@dataclass
class Idp:
    """The provider, two `aegis serve` processes that trust it, and an agent's token."""

    provider: OpenIdProvider
    inbox: Server  # token sign-in too; secret from a file
    strict: Server  # --no-token-signin, --public-url, secret from the environment
    public: Server  # a public client (no secret: PKCE alone), --oidc-require-group security
    agent: str
    db: Path
    strict_db: Path

    @property
    def issuer(self) -> str:
        return self.provider.issuer

    def ask(self, action_type: str, reviewers: list[str], approvers: int = 1) -> str:
        """The agent asks the first server for approval; the request's id."""
        body = {
            "session_id": "s-" + secrets.token_hex(4),
            "action": {"type": action_type, "target": "crm", "params": {"n": 1}},
            "risk_level": "high",
            "matched_rule": action_type,
            "approvers": approvers,
            "reviewers": reviewers,
        }
        answer = httpx.post(
            f"{self.inbox.url}/api/v1/approvals",
            json=body,
            headers={"Authorization": f"Bearer {self.agent}"},
            timeout=20,
        )
        assert answer.status_code in {200, 201}, answer.text
        return str(answer.json()["id"])

    def status(self, request_id: str) -> dict[str, Any]:
        """The request as the agent sees it."""
        answer = httpx.get(
            f"{self.inbox.url}/api/v1/approvals/{request_id}",
            headers={"Authorization": f"Bearer {self.agent}"},
            timeout=20,
        )
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory, oidc_provider_package: Path) -> Iterator[Idp]:
    """The real provider with one confidential client for both servers, and the servers."""
    folder = tmp_path_factory.mktemp("oidc")
    db, strict_db = folder / "aegis.db", folder / "strict.db"
    agent = create_token(db, "support-bot", "agent")
    secret_file = folder / "client-secret"
    secret_file.write_text(CLIENT_SECRET + "\n")
    secret_file.chmod(0o600)
    # The servers' ports are known before they start: the provider must list
    # their redirect URIs, and the servers must know the provider's issuer.
    inbox = Server(db, log=folder / "inbox.log")
    strict = Server(strict_db, log=folder / "strict.log")
    public = Server(folder / "public.db", log=folder / "public.log")
    clients = [
        {
            "client_id": "aegis",
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [
                f"{inbox.url}/signin/oidc/callback",
                f"{strict.url}/signin/oidc/callback",
            ],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
        },
        {
            "client_id": "aegis-public",
            "token_endpoint_auth_method": "none",
            "redirect_uris": [f"{public.url}/signin/oidc/callback"],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
        },
    ]
    with OpenIdProvider(oidc_provider_package, clients, ACCOUNTS, workdir=folder) as provider:
        common = [
            "--oidc-issuer", provider.issuer, "--oidc-client-id", "aegis",
            "--oidc-scopes", "openid profile email groups",
        ]  # fmt: skip
        inbox.args += [
            *common, "--oidc-client-secret-file", str(secret_file), "--auditor-group", "auditors",
        ]  # fmt: skip
        strict.args += [*common, "--no-token-signin", "--public-url", strict.url]
        strict.env["AEGIS_OIDC_CLIENT_SECRET"] = CLIENT_SECRET
        public.args += [
            "--oidc-issuer", provider.issuer, "--oidc-client-id", "aegis-public",
            "--oidc-scopes", "openid profile groups", "--oidc-require-group", "security",
        ]  # fmt: skip
        with inbox, strict, public:
            yield Idp(provider, inbox, strict, public, agent, db, strict_db)


Browser = Callable[..., httpx.Client]


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Makes HTTP clients that keep cookies like a browser; all closed after the test."""
    made: list[httpx.Client] = []

    def new(**kwargs: Any) -> httpx.Client:
        client = httpx.Client(timeout=20, **kwargs)
        made.append(client)
        return client

    yield new
    for client in made:
        client.close()


def _decide(client: httpx.Client, inbox: str, request_id: str, verdict: str) -> httpx.Response:
    """Approve or deny on the request's page, with its own form's CSRF token (box ticked)."""
    page = client.get(f"{inbox}/requests/{request_id}")
    assert page.status_code == 200, page.text[:500]
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return client.post(
        f"{inbox}/requests/{request_id}/decision",
        data={"csrf": csrf, "verdict": verdict, "comment": "", "confirm": "yes"},
        headers={"Origin": inbox},
    )


def test_sign_in_page_offers_the_provider(idp: Idp) -> None:
    """The sign-in page has a 'Sign in with …' link that starts the flow at /signin/oidc."""
    page = httpx.get(f"{idp.inbox.url}/signin", timeout=20)
    assert "Sign in with 127.0.0.1:" in page.text
    assert 'href="/signin/oidc"' in page.text
    assert 'id="token"' in page.text  # token sign-in stays on unless switched off


def test_authorization_request_uses_pkce_state_and_nonce(idp: Idp) -> None:
    """The redirect to the provider asks for a code with S256 PKCE, state, nonce, our callback."""
    start = httpx.get(f"{idp.inbox.url}/signin/oidc", timeout=20)
    assert start.status_code == 302
    target = urllib.parse.urlsplit(start.headers["location"])
    query = dict(urllib.parse.parse_qsl(target.query))
    assert target.geturl().startswith(idp.issuer)
    assert query["response_type"] == "code"
    assert query["client_id"] == "aegis"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 32
    assert len(query["nonce"]) >= 32
    assert query["redirect_uri"] == f"{idp.inbox.url}/signin/oidc/callback"
    assert set(query["scope"].split()) == {"openid", "profile", "email", "groups"}
    cookie = start.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Path=/signin/oidc/callback" in cookie


def test_person_signs_in_and_whoami_names_issuer_and_subject(idp: Idp, browser: Browser) -> None:
    """After the provider's login, the inbox shows the person by name, with their groups."""
    client = sign_in(idp.inbox.url, "alice", browser())
    pending = client.get(f"{idp.inbox.url}/")
    assert pending.status_code == 200
    assert "Alice Example" in pending.text
    assert "(security)" in pending.text


def test_pending_shows_only_what_your_groups_may_decide(idp: Idp, browser: Browser) -> None:
    """Bob (finance) sees the finance request and not the security one; Carol sees both."""
    finance = idp.ask("pay_invoice", ["finance"])
    security = idp.ask("rotate_keys", ["security"])
    bob = sign_in(idp.inbox.url, "bob", browser())
    shown = bob.get(f"{idp.inbox.url}/").text
    assert finance in shown
    assert security not in shown
    assert bob.get(f"{idp.inbox.url}/requests/{security}").status_code == 403
    # His own session's form token cannot decide it either.
    csrf = shown.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    refused = bob.post(
        f"{idp.inbox.url}/requests/{security}/decision",
        data={"csrf": csrf, "verdict": "approve", "comment": "", "confirm": "yes"},
        headers={"Origin": idp.inbox.url},
    )
    assert refused.status_code == 403
    assert idp.status(security)["status"] == "pending"
    carol = sign_in(idp.inbox.url, "carol", browser())
    both = carol.get(f"{idp.inbox.url}/").text
    assert finance in both
    assert security in both


def test_another_groups_request_is_hidden_on_every_page(idp: Idp, browser: Browser) -> None:
    """Bob (finance) cannot open security's request, nor see it in rows, events or History."""
    security = idp.ask("rotate_certs", ["security"])
    finished = idp.ask("revoke_certs", ["security"])
    alice = sign_in(idp.inbox.url, "alice", browser())
    assert _decide(alice, idp.inbox.url, finished, "deny").status_code == 303
    bob = sign_in(idp.inbox.url, "bob", browser())
    page = bob.get(f"{idp.inbox.url}/requests/{security}")
    assert page.status_code == 403
    assert "rotate_certs" not in page.text
    assert security not in bob.get(f"{idp.inbox.url}/inbox/pending-rows").text
    with bob.stream("GET", f"{idp.inbox.url}/inbox/events") as stream:
        data = next(line for line in stream.iter_lines() if line.startswith("data: "))
    assert security not in json.loads(data.removeprefix("data: "))["ids"]
    assert finished not in bob.get(f"{idp.inbox.url}/history", params={"status": "all"}).text
    # Alice (security) sees both, the finished one in History.
    assert alice.get(f"{idp.inbox.url}/requests/{security}").status_code == 200
    assert finished in alice.get(f"{idp.inbox.url}/history", params={"status": "all"}).text


def test_decision_records_issuer_subject_and_name(idp: Idp, browser: Browser) -> None:
    """An approval names the person by issuer and subject, with the display name beside."""
    request_id = idp.ask("export_report", ["security"])
    alice = sign_in(idp.inbox.url, "alice", browser())
    assert _decide(alice, idp.inbox.url, request_id, "approve").status_code == 303
    decided = idp.status(request_id)
    assert decided["status"] == "approved"
    (decision,) = decided["decisions"]
    assert decision["reviewer"] == f"{idp.issuer}#alice"
    assert decision["reviewer_issuer"] == idp.issuer
    assert decision["reviewer_subject"] == "alice"
    assert decision["reviewer_name"] == "Alice Example"


def test_audit_trail_names_the_identity(idp: Idp, browser: Browser) -> None:
    """The trail's record of a decision carries issuer, subject and name."""
    request_id = idp.ask("close_account", ["security"])
    carol = sign_in(idp.inbox.url, "carol", browser())
    assert _decide(carol, idp.inbox.url, request_id, "deny").status_code == 303
    reviewer = create_token(idp.db, "auditor-" + secrets.token_hex(3), "reviewer", ["auditors"])
    session = idp.status(request_id)["session_id"]
    deadline = time.monotonic() + 40  # the outbox writes the record soon after the decision
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = httpx.get(
            f"{idp.inbox.url}/api/v1/audit",
            params={"session": session, "limit": 1000},
            headers={"Authorization": f"Bearer {reviewer}"},
            timeout=20,
        )
        assert found.status_code == 200, found.text
        records = [
            r
            for r in found.json()["records"]
            if (r.get("context") or {}).get("approval_request") == request_id
            and (r.get("context") or {}).get("approval_event") == "approval.decided"
        ]
        if records:
            break
        time.sleep(0.25)
    (record,) = records
    context = record["context"]
    assert context["reviewer"] == f"{idp.issuer}#carol"
    assert context["reviewer_issuer"] == idp.issuer
    assert context["reviewer_subject"] == "carol"
    assert context["reviewer_name"] == "Carol Chen"
    assert f"denied by Carol Chen <{idp.issuer}#carol>" in record["human_decision"]


def test_one_person_signed_in_twice_counts_once(idp: Idp, browser: Browser) -> None:
    """Two sessions of one person cannot make the two approvals a request needs."""
    request_id = idp.ask("wire_money", ["finance"], approvers=2)
    first = sign_in(idp.inbox.url, "bob", browser())
    second = sign_in(idp.inbox.url, "bob", browser())  # another browser, the same person
    assert _decide(first, idp.inbox.url, request_id, "approve").status_code == 303
    again = _decide(second, idp.inbox.url, request_id, "approve")
    assert again.status_code in {403, 409}
    assert "already decided" in again.text
    assert idp.status(request_id)["status"] == "pending"
    other = sign_in(idp.inbox.url, "carol", browser())
    assert _decide(other, idp.inbox.url, request_id, "approve").status_code == 303
    assert idp.status(request_id)["status"] == "approved"


def test_token_tied_to_the_subject_is_that_person(idp: Idp, browser: Browser) -> None:
    """A reviewer token made with --oidc-subject decides as the person: it cannot be the second."""
    request_id = idp.ask("delete_backup", ["security"], approvers=2)
    alice = sign_in(idp.inbox.url, "alice", browser())
    assert _decide(alice, idp.inbox.url, request_id, "approve").status_code == 303
    token = aegis(
        "token", "create", "alice-cli", "--role", "reviewer", "--group", "security",
        "--oidc-subject", "alice", "--oidc-issuer", idp.issuer, "--db", str(idp.db),
    ).stdout.strip()  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    who = httpx.get(f"{idp.inbox.url}/api/v1/whoami", headers=headers, timeout=20).json()
    assert who["identity"] == {"issuer": idp.issuer, "subject": "alice", "name": "alice-cli"}
    second = httpx.post(
        f"{idp.inbox.url}/api/v1/approvals/{request_id}/decision",
        json={"verdict": "approve"},
        headers=headers,
        timeout=20,
    )
    assert second.status_code == 409, second.text
    assert idp.status(request_id)["status"] == "pending"
    # An untied token of the same groups is someone else, and may be the second.
    other = create_token(idp.db, "sec-bot-" + secrets.token_hex(3), "reviewer", ["security"])
    third = httpx.post(
        f"{idp.inbox.url}/api/v1/approvals/{request_id}/decision",
        json={"verdict": "approve"},
        headers={"Authorization": f"Bearer {other}"},
        timeout=20,
    )
    assert third.status_code == 200, third.text
    assert idp.status(request_id)["status"] == "approved"


def test_token_tied_first_then_sign_in_counts_once(idp: Idp, browser: Browser) -> None:
    """The other order: the tied token approves first, then the same person in the browser."""
    request_id = idp.ask("purge_logs", ["finance"], approvers=2)
    token = aegis(
        "token", "create", "bob-cli", "--role", "reviewer", "--group", "finance",
        "--oidc-subject", "bob", "--oidc-issuer", idp.issuer, "--db", str(idp.db),
    ).stdout.strip()  # fmt: skip
    first = httpx.post(
        f"{idp.inbox.url}/api/v1/approvals/{request_id}/decision",
        json={"verdict": "approve"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
    )
    assert first.status_code == 200, first.text
    bob = sign_in(idp.inbox.url, "bob", browser())
    page = bob.get(f"{idp.inbox.url}/requests/{request_id}").text
    assert "already decided" in page
    assert _decide(bob, idp.inbox.url, request_id, "approve").status_code in {403, 409}
    assert idp.status(request_id)["status"] == "pending"


def test_one_person_under_two_spellings_of_the_issuer_counts_once(
    idp: Idp, browser: Browser
) -> None:
    """A token tied under "http://x/" and a sign-in from "http://x" are one person, not two."""
    issuer = idp.issuer + "/"
    request_id = idp.ask("wire_money", ["finance"], approvers=2)
    name = "carol-cli-" + secrets.token_hex(3)
    token = aegis(
        "token", "create", name, "--role", "reviewer", "--group", "finance",
        "--oidc-subject", "carol", "--oidc-issuer", issuer, "--db", str(idp.db),
    ).stdout.strip()  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    who = httpx.get(f"{idp.inbox.url}/api/v1/whoami", headers=headers, timeout=20).json()
    assert who["identity"]["issuer"] == idp.issuer
    first = httpx.post(
        f"{idp.inbox.url}/api/v1/approvals/{request_id}/decision",
        json={"verdict": "approve"},
        headers=headers,
        timeout=20,
    )
    assert first.status_code == 200, first.text
    carol = sign_in(idp.inbox.url, "carol", browser())
    assert _decide(carol, idp.inbox.url, request_id, "approve").status_code in {403, 409}
    assert idp.status(request_id)["status"] == "pending"


def test_sign_out_ends_the_session_on_the_server(idp: Idp, browser: Browser) -> None:
    """After sign-out, a copy of the session cookie taken before no longer works."""
    alice = sign_in(idp.inbox.url, "alice", browser())
    copied = {c.name: c.value for c in alice.cookies.jar if c.name == "aegis_session"}
    assert copied
    page = alice.get(f"{idp.inbox.url}/").text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    out = alice.post(
        f"{idp.inbox.url}/signout", data={"csrf": csrf}, headers={"Origin": idp.inbox.url}
    )
    assert out.status_code == 303
    thief = browser(cookies=copied)
    again = thief.get(f"{idp.inbox.url}/")
    assert again.status_code == 303
    assert again.headers["location"].startswith("/signin")


def test_revoking_a_person_ends_their_sign_ins_tokens_and_pending_approvals(
    idp: Idp, browser: Browser
) -> None:
    """`aegis reviewer revoke ISSUER#SUBJECT`: erin's inbox session ends, her tied token is
    refused, her approval of a pending two-person request no longer counts, and the trail
    says so. The provider still lets her in, and the inbox does not: not until
    `aegis reviewer reinstate`, which the trail records too."""
    request_id = idp.ask("rotate_keys", ["marketing"], approvers=2)
    erin = sign_in(idp.inbox.url, "erin", browser())
    assert _decide(erin, idp.inbox.url, request_id, "approve").status_code == 303
    token = aegis(
        "token", "create", "erin-cli", "--role", "reviewer", "--group", "marketing",
        "--oidc-subject", "erin", "--oidc-issuer", idp.issuer, "--db", str(idp.db),
    ).stdout.strip()  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{idp.inbox.url}/api/v1/whoami", headers=headers, timeout=20).is_success
    revoked = aegis("reviewer", "revoke", f"{idp.issuer}#erin", "--db", str(idp.db))
    assert request_id in revoked.stderr
    assert "erin-cli" in revoked.stderr
    gone = erin.get(f"{idp.inbox.url}/")
    assert gone.status_code == 303
    assert gone.headers["location"].startswith("/signin")
    refused = httpx.get(f"{idp.inbox.url}/api/v1/whoami", headers=headers, timeout=20)
    assert refused.status_code == 401
    after = idp.status(request_id)
    assert (after["status"], after["decisions"]) == ("pending", [])
    with AuditLogger(str(idp.db)) as audit:
        texts = [r["human_decision"] for r in audit.get_log(after["session_id"])]
    assert any(f"withdrawn: reviewer {idp.issuer}#erin revoked" in t for t in texts), texts
    # The provider says yes; the inbox refuses her, and no session comes of it.
    client = browser()
    callback = f"{idp.inbox.url}/signin/oidc/callback"
    start = follow_to(client, f"{idp.inbox.url}/signin/oidc", stop_at=callback)
    refused_signin = client.get(provider_login(client, start, "erin", stop_at=callback))
    assert refused_signin.status_code == 403, refused_signin.text[:800]
    assert "revoked" in refused_signin.text
    assert client.get(f"{idp.inbox.url}/").status_code == 303  # not signed in
    tied = aegis(
        "token", "create", "erin-cli-2", "--role", "reviewer", "--group", "marketing",
        "--oidc-subject", "erin", "--oidc-issuer", idp.issuer, "--db", str(idp.db), check=False,
    )  # fmt: skip
    assert tied.returncode != 0
    assert idp.status(request_id)["decisions"] == []
    back = aegis("reviewer", "reinstate", f"{idp.issuer}#erin", "--db", str(idp.db))
    assert "reinstated" in back.stdout
    with AuditLogger(str(idp.db)) as audit:
        said = [r["human_decision"] for r in audit.get_log(OPERATOR_SESSION)]
    assert any(f"reviewer {idp.issuer}#erin revoked" in t for t in said), said
    assert any(f"reviewer {idp.issuer}#erin reinstated" in t for t in said), said
    again = sign_in(idp.inbox.url, "erin", browser())
    assert _decide(again, idp.inbox.url, request_id, "approve").status_code == 303
    assert [d["reviewer"] for d in idp.status(request_id)["decisions"]] == [f"{idp.issuer}#erin"]


def test_forged_state_is_refused(idp: Idp, browser: Browser) -> None:
    """A callback whose state is not the flow's starts no session."""
    client = browser()
    callback = f"{idp.inbox.url}/signin/oidc/callback"
    start = follow_to(client, f"{idp.inbox.url}/signin/oidc", stop_at=callback)
    back = provider_login(client, start, "alice", stop_at=callback)
    parts = urllib.parse.urlsplit(back)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query["state"] = "x" * 43
    refused = client.get(f"{callback}?{urllib.parse.urlencode(query)}")
    assert refused.status_code == 400
    assert "state" in refused.text
    assert client.get(f"{idp.inbox.url}/").status_code == 303  # not signed in


def test_callback_in_another_browser_is_refused(idp: Idp, browser: Browser) -> None:
    """An attacker's callback URL opened in a victim's browser (login CSRF) signs nobody in."""
    attacker = browser()
    callback = f"{idp.inbox.url}/signin/oidc/callback"
    start = follow_to(attacker, f"{idp.inbox.url}/signin/oidc", stop_at=callback)
    back = provider_login(attacker, start, "erin", stop_at=callback)
    victim = browser()
    refused = victim.get(back)
    assert refused.status_code == 400
    assert victim.get(f"{idp.inbox.url}/").status_code == 303


def test_a_code_is_used_once(idp: Idp, browser: Browser) -> None:
    """Replaying the callback after a sign-in succeeds starts no second session."""
    client = browser()
    callback = f"{idp.inbox.url}/signin/oidc/callback"
    start = follow_to(client, f"{idp.inbox.url}/signin/oidc", stop_at=callback)
    back = provider_login(client, start, "alice", stop_at=callback)
    flow_cookie = client.cookies.get("aegis_oidc")
    assert client.get(back).status_code == 200
    replay = browser(cookies={"aegis_oidc": flow_cookie or ""})
    refused = replay.get(back)
    assert refused.status_code == 400  # the provider refuses a code used once
    assert replay.get(f"{idp.inbox.url}/").status_code == 303


def test_provider_refusal_is_shown(idp: Idp, browser: Browser) -> None:
    """A person who aborts at the provider lands on a page saying they are not signed in."""
    client = browser()
    callback = f"{idp.inbox.url}/signin/oidc/callback"
    start = follow_to(client, f"{idp.inbox.url}/signin/oidc", stop_at=callback)
    abort = str(start.url).rstrip("/") + "/abort"
    back = follow_to(client, abort, stop_at=callback)
    target = urllib.parse.urljoin(str(back.url), back.headers["location"])
    refused = client.get(target)
    assert refused.status_code == 400
    assert "refused" in refused.text


def test_no_token_signin_refuses_tokens_in_the_inbox(idp: Idp, browser: Browser) -> None:
    """With --no-token-signin the page has no token field and a posted token is refused."""
    reviewer = create_token(idp.strict_db, "tok-" + secrets.token_hex(3), "reviewer")
    page = httpx.get(f"{idp.strict.url}/signin", timeout=20)
    assert 'id="token"' not in page.text
    assert "Sign in with" in page.text
    client = browser()
    form = client.get(f"{idp.strict.url}/signin").text
    assert 'name="csrf"' not in form
    posted = client.post(
        f"{idp.strict.url}/signin",
        data={"token": reviewer, "csrf": "x"},
        headers={"Origin": idp.strict.url},
    )
    assert posted.status_code == 303
    assert client.get(f"{idp.strict.url}/").status_code == 303  # still not signed in
    # The API still takes the token: scripts and the CLI keep working.
    whoami = httpx.get(
        f"{idp.strict.url}/api/v1/whoami",
        headers={"Authorization": f"Bearer {reviewer}"},
        timeout=20,
    )
    assert whoami.status_code == 200


def test_no_token_signin_still_signs_people_in(idp: Idp, browser: Browser) -> None:
    """The strict server signs a person in through the provider (secret from the environment)."""
    client = sign_in(idp.strict.url, "carol", browser())
    assert "Carol Chen" in client.get(f"{idp.strict.url}/").text


def test_public_client_signs_in_with_pkce_alone(idp: Idp, browser: Browser) -> None:
    """Without a client secret the code is exchanged with the PKCE verifier only, and works."""
    client = sign_in(idp.public.url, "alice", browser())
    assert "Alice Example" in client.get(f"{idp.public.url}/").text


def test_required_group_keeps_others_out(idp: Idp, browser: Browser) -> None:
    """--oidc-require-group security: Erin (marketing) is told why and is not signed in."""
    client = browser()
    callback = f"{idp.public.url}/signin/oidc/callback"
    start = follow_to(client, f"{idp.public.url}/signin/oidc", stop_at=callback)
    back = provider_login(client, start, "erin", stop_at=callback)
    refused = client.get(back)
    assert refused.status_code == 400
    assert "Erin Outsider is in none of the groups allowed to review here" in refused.text
    assert client.get(f"{idp.public.url}/").status_code == 303


# ------------------------------------------------------------------ the ID token's checks


def _id_token(idp: Idp, nonce: str) -> tuple[str, str]:
    """A real ID token and access token for alice, asked for by this test itself."""
    return _tokens_from(idp.issuer, f"{idp.inbox.url}/signin/oidc/callback", nonce)


def _tokens_from(issuer: str, callback: str, nonce: str) -> tuple[str, str]:
    """Alice's ID token and access token from ``issuer``, for client ``aegis`` at ``callback``."""
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    query = {
        "response_type": "code", "client_id": "aegis", "redirect_uri": callback,
        "scope": "openid profile groups", "state": "s" * 20, "nonce": nonce,
        "code_challenge": challenge, "code_challenge_method": "S256",
    }  # fmt: skip
    with httpx.Client(timeout=20) as client:
        start = follow_to(client, f"{issuer}/auth?{urllib.parse.urlencode(query)}", callback)
        back = provider_login(client, start, "alice", stop_at=callback)
        code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back).query))["code"]
        tokens = client.post(
            f"{issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": callback,
                "code_verifier": verifier,
            },
            auth=("aegis", CLIENT_SECRET),
        ).json()
    return tokens["id_token"], tokens["access_token"]


def _checker(idp: Idp, *, client_id: str = "aegis", clock: float | None = None) -> OidcSignIn:
    settings = OidcSettings(idp.issuer, client_id, CLIENT_SECRET)
    return OidcSignIn(settings, "k" * 32, clock=(lambda: clock) if clock else None)


async def test_a_real_id_token_passes_every_check(idp: Idp) -> None:
    """The provider's own token validates: issuer, subject, name and groups come out of it."""
    nonce = secrets.token_urlsafe(32)
    id_token, access = await asyncio.to_thread(_id_token, idp, nonce)
    user = await _checker(idp).validate_id_token(id_token, nonce, access)
    assert user.identity == Identity(idp.issuer, "alice")
    assert user.identity.name == "Alice Example"
    assert user.groups == ("security",)


async def test_id_token_checks_fail_closed(idp: Idp) -> None:
    """Another nonce, another audience, a changed payload, a late clock: each is refused."""
    nonce = secrets.token_urlsafe(32)
    id_token, access = await asyncio.to_thread(_id_token, idp, nonce)
    with pytest.raises(OidcError, match="nonce"):
        await _checker(idp).validate_id_token(id_token, "another-nonce", access)
    with pytest.raises(OidcError, match="aud"):
        await _checker(idp, client_id="someone-else").validate_id_token(id_token, nonce, access)
    header, payload, signature = id_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["security", "finance"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(OidcError, match="signature"):
        await _checker(idp).validate_id_token(f"{header}.{forged}.{signature}", nonce, access)
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    with pytest.raises(OidcError):
        await _checker(idp).validate_id_token(f"{unsigned}.{payload}.", nonce, access)
    later = float(claims["exp"]) + 3600
    with pytest.raises(OidcError, match="exp"):
        await _checker(idp, clock=later).validate_id_token(id_token, nonce, access)


async def test_an_id_token_of_another_issuer_fails_though_its_key_is_trusted(
    tmp_path: Path, oidc_provider_package: Path
) -> None:
    """Two providers signing with one key: B's token, right in all else, fails A's iss check."""
    from joserfc.jwk import RSAKey

    key = {
        **RSAKey.generate_key(2048).as_dict(private=True),
        **{"kid": "shared", "use": "sig", "alg": "RS256"},
    }
    callback = "http://127.0.0.1:9/signin/oidc/callback"  # the walk stops before it
    client = {
        "client_id": "aegis",
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [callback],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    }
    common: dict[str, Any] = {"workdir": tmp_path, "signing_key": key}
    with (
        OpenIdProvider(oidc_provider_package, [client], ACCOUNTS, name="a", **common) as a,
        OpenIdProvider(oidc_provider_package, [client], ACCOUNTS, name="b", **common) as b,
    ):
        assert a.issuer != b.issuer
        nonce = secrets.token_urlsafe(32)
        id_token, access = await asyncio.to_thread(_tokens_from, b.issuer, callback, nonce)
        trusting_a = OidcSignIn(OidcSettings(a.issuer, "aegis", CLIENT_SECRET), "k" * 32)
        with pytest.raises(OidcError, match="iss"):
            await trusting_a.validate_id_token(id_token, nonce, access)
        # B's own checks pass it: the issuer alone was wrong, and the key verified.
        trusting_b = OidcSignIn(OidcSettings(b.issuer, "aegis", CLIENT_SECRET), "k" * 32)
        user = await trusting_b.validate_id_token(id_token, nonce, access)
        assert user.identity == Identity(b.issuer, "alice")


async def test_discovery_of_another_issuer_is_refused(idp: Idp) -> None:
    """An --oidc-issuer that differs from the discovery document's issuer (a slash) is refused."""
    settings = OidcSettings(idp.issuer + "/", "aegis", CLIENT_SECRET)
    with pytest.raises(OidcError, match="issuer"):
        await OidcSignIn(settings, "k" * 32).metadata()


def test_settings_refuse_plain_http_off_loopback() -> None:
    """An issuer on plain http elsewhere than loopback is refused before anything starts."""
    with pytest.raises(ValueError, match="https"):
        OidcSettings("http://id.example.com", "aegis")
    assert OidcSettings("https://id.example.com", "aegis").name == "id.example.com"


# ------------------------------------------------------------------ the README


def test_readme_command_starts_an_inbox_that_sends_people_to_the_provider(
    idp: Idp, tmp_path: Path
) -> None:
    """The README's `aegis serve --oidc-…` line, pointed at the test provider, runs as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Signing in with the company's identity provider", 1)[1]
    shell = section.split("```sh\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    (install, serve) = [shlex.split(line) for line in shell.splitlines() if line.strip()]
    assert install[:2] == ["pip", "install"]
    assert serve[:2] == ["aegis", "serve"]
    secret = tmp_path / "aegis-oidc"
    secret.write_text(CLIENT_SECRET)
    server = Server(tmp_path / "aegis_audit.db")
    swap = {
        "https://aegis.example.com": server.url,
        "https://id.example.com": idp.issuer,
        "/run/secrets/aegis-oidc": str(secret),
    }
    args = [swap.get(arg, arg) for arg in serve[4:]]  # after `aegis serve --db FILE`
    server.args += args
    with server:
        page = httpx.get(f"{server.url}/signin", timeout=20)
        assert "Sign in with 127.0.0.1:" in page.text
        assert 'id="token"' not in page.text  # --no-token-signin
        start = httpx.get(f"{server.url}/signin/oidc", timeout=20)
    assert start.status_code == 302
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(start.headers["location"]).query))
    assert query["client_id"] == "aegis-inbox"
    assert query["redirect_uri"] == f"{server.url}/signin/oidc/callback"
    assert set(query["scope"].split()) == {"openid", "profile", "email", "groups"}
