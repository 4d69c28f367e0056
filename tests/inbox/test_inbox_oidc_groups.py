"""Groups from the OpenID provider are asked again within --oidc-max-age.

A real provider (oidc-provider from npm) and `aegis serve --oidc-max-age
MAX_AGE`. A person signs in as a member of finance; an administrator then
removes them from finance at the provider. Once the session is older than
the bound, the inbox treats the person as signed out (pages, forms and the
live list alike), and signing in again brings the provider's groups of now.
Walked over HTTP and in Chromium. A session is made older by moving its
start and end back in the store, which the service reads on every request,
rather than by waiting the bound out.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from oidc_support import OpenIdProvider, loopback_only, sign_in
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
from serve_support import Server, aegis, create_token

CLIENT_SECRET = "groups-test-client-secret"  # a test fixture's secret
#: seconds the provider's word on a person's groups is trusted here: long
#: enough that a loaded machine signs in and reads a page within it
MAX_AGE = 15
WAIT_MS = 30_000

ACCOUNTS = {
    "dana": {"name": "Dana Finance", "groups": ["finance"]},
    "evan": {"name": "Evan Finance", "groups": ["finance"]},
    "fay": {"name": "Fay Finance", "groups": ["finance"]},
    "gail": {"name": "Gail Finance", "groups": ["finance"]},
    "hana": {"name": "Hana Support", "groups": ["support"]},
    "ivy": {"name": "Ivy Finance", "groups": ["finance"]},
    "jo": {"name": "Jo Finance", "groups": ["finance"]},
    "kim": {"name": "Kim Finance", "groups": ["finance"]},
    "lee": {"name": "Lee Finance", "groups": ["finance"]},
}


@dataclass
class World:
    """The provider, `aegis serve` trusting it with a short max age, an agent's token."""

    provider: OpenIdProvider
    server: Server
    agent: str
    browser: Browser
    later: Server  # not started: the restart test starts it, twice
    db: Path  # the server's store

    def ask(self, action_type: str, reviewers: list[str]) -> str:
        """The agent asks for approval; the request's id."""
        return _ask(self.server, self.agent, action_type, reviewers, matched_rule=action_type)

    def status(self, request_id: str) -> str:
        """The request's status as the agent sees it."""
        answer = httpx.get(
            f"{self.server.url}/api/v1/approvals/{request_id}",
            headers={"Authorization": f"Bearer {self.agent}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["status"])


def _ask(
    server: Server, agent: str, action_type: str, reviewers: list[str], **terms: object
) -> str:
    """The agent asks ``server`` for approval of a high-risk action; the request's id."""
    answer = httpx.post(
        f"{server.url}/api/v1/approvals",
        json={
            "session_id": "s-" + secrets.token_hex(4),
            "action": {"type": action_type, "target": "crm", "params": {"n": 1}},
            "risk_level": "high",
            "reviewers": reviewers,
            **terms,
        },
        headers={"Authorization": f"Bearer {agent}"},
        timeout=30,
    )
    assert answer.status_code in {200, 201}, answer.text
    return str(answer.json()["id"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, oidc_provider_package: Path) -> Iterator[World]:
    """oidc-provider, `aegis serve --oidc-max-age 15s`, Chromium."""
    folder = tmp_path_factory.mktemp("oidc-groups")
    db = folder / "aegis.db"
    agent = create_token(db, "support-bot", "agent")
    server = Server(db, log=folder / "serve.log", env={"AEGIS_OIDC_CLIENT_SECRET": CLIENT_SECRET})
    later = Server(
        folder / "later.db",
        log=folder / "later.log",
        env={"AEGIS_OIDC_CLIENT_SECRET": CLIENT_SECRET, "AEGIS_SESSION_KEY": "k" * 40},
    )
    clients = [
        {
            "client_id": "aegis-inbox",
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [
                f"{server.url}/signin/oidc/callback",
                f"{later.url}/signin/oidc/callback",
            ],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
        }
    ]
    with OpenIdProvider(oidc_provider_package, clients, ACCOUNTS, workdir=folder) as provider:
        common = [
            "--oidc-issuer", provider.issuer, "--oidc-client-id", "aegis-inbox",
            "--oidc-scopes", "openid profile groups",
        ]  # fmt: skip
        server.args += [*common, "--oidc-max-age", f"{MAX_AGE}s"]
        later.args += common
        with server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                yield World(provider, server, agent, browser, later, db)
            finally:
                browser.close()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no csrf field on the page"
    return found.group(1)


def _past_the_bound(db: Path, subject: str, bound: float = MAX_AGE) -> None:
    """Make ``subject``'s live session older than ``bound`` seconds, as if that time had passed.

    Its start and end move back by the bound and a second, as the store would
    hold them that much later: the service reads both from the store on every
    request (tests waited the bound out instead, a minute and a half of sleep).
    """
    _move_session(db, subject, -timedelta(seconds=bound + 1))


def test_a_person_removed_from_a_group_loses_it_within_the_max_age(world: World) -> None:
    """Dana, taken out of finance at the provider, can neither read nor decide finance's
    request once her session is older than --oidc-max-age; signing in again brings her
    groups of now."""
    world.provider.set_account("dana", ACCOUNTS["dana"])
    finance = world.ask("pay_salary", ["finance"])
    with httpx.Client(timeout=30) as client:
        sign_in(world.server.url, "dana", client)
        page = client.get(f"{world.server.url}/requests/{finance}")
        assert page.status_code == 200
        assert "pay_salary" in page.text
        csrf = _csrf(page.text)

        world.provider.set_account("dana", {**ACCOUNTS["dana"], "groups": []})
        _past_the_bound(world.db, "dana")

        lapsed = client.get(f"{world.server.url}/requests/{finance}")
        assert lapsed.status_code == 303
        assert lapsed.headers["location"].startswith("/signin")
        assert "pay_salary" not in lapsed.text
        decided = client.post(
            f"{world.server.url}/requests/{finance}/decision",
            data={"csrf": csrf, "verdict": "approve", "comment": "", "confirm": "yes"},
            headers={"Origin": world.server.url},
        )
        assert decided.status_code == 303
        assert decided.headers["location"].startswith("/signin")
        assert world.status(finance) == "pending"

        sign_in(world.server.url, "dana", client)  # the provider's groups of now
        pending = client.get(f"{world.server.url}/")
        assert pending.status_code == 200
        assert "Dana Finance" in pending.text
        assert "(finance)" not in pending.text
        assert finance not in pending.text
        assert client.get(f"{world.server.url}/requests/{finance}").status_code == 403
    assert world.status(finance) == "pending"


def test_the_live_list_signs_out_when_the_max_age_passes(world: World) -> None:
    """An open Pending page's event stream says signout once the session is past the bound."""
    with httpx.Client(timeout=30) as client:
        sign_in(world.server.url, "evan", client)
        deadline = time.monotonic() + MAX_AGE + 60
        kinds: list[str] = []
        with client.stream("GET", f"{world.server.url}/inbox/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kinds.append(line.removeprefix("event: "))
                    if kinds[-1] == "signout":
                        break
                    if len(kinds) == 1:  # live when the stream began; now past the bound
                        _past_the_bound(world.db, "evan")
                if time.monotonic() > deadline:
                    break
    assert kinds[0] == "pending"  # the session was live when the stream began
    assert kinds[-1] == "signout", kinds


def _move_session(db: Path, subject: str, by: timedelta) -> None:
    """Move the start and end of ``subject``'s live session by ``by``, as another host's clock."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT id_hash, created_at, expires_at FROM aegis_inbox_sessions "
            "WHERE identity LIKE ? AND ended_at IS NULL",
            (f'%"subject": "{subject}"%',),
        ).fetchall()
        assert len(rows) == 1, rows
        id_hash, created, expires = rows[0]
        conn.execute(
            "UPDATE aegis_inbox_sessions SET created_at = ?, expires_at = ? WHERE id_hash = ?",
            (
                (datetime.fromisoformat(created) + by).isoformat(timespec="microseconds"),
                (datetime.fromisoformat(expires) + by).isoformat(timespec="microseconds"),
                id_hash,
            ),
        )


def test_a_session_started_by_a_clock_a_little_ahead_holds_and_one_far_ahead_does_not(
    world: World,
) -> None:
    """Ivy's session row says it began 5 s from now, as a service process on a host whose
    clock runs ahead writes it: she stays signed in. Said to begin 55 s from now, it still
    holds, but gives her grants no time: under the 15 s max age a grant is refused as it
    is without the skew. Said to begin an hour from now, it would outlast the max age: it
    counts for nothing."""
    finance = world.ask("pay_invoice", ["finance"])
    with httpx.Client(timeout=30) as client:
        sign_in(world.server.url, "ivy", client)
        _move_session(world.db, "ivy", timedelta(seconds=5))
        page = client.get(f"{world.server.url}/")
        assert page.status_code == 200, page.headers.get("location")
        assert "Ivy Finance" in page.text
        _move_session(world.db, "ivy", timedelta(seconds=50))
        refused = _approve(client, world.server.url, finance, grant_minutes="60")
        assert refused.status_code == 422, refused.headers.get("location")
        assert "--oidc-max-age" in refused.text
        assert world.status(finance) == "pending"
        _move_session(world.db, "ivy", timedelta(hours=1))
        refused = client.get(f"{world.server.url}/")
        assert refused.status_code == 303
        assert refused.headers["location"].startswith("/signin")


def _provider_sign_in(world: World, page: Page, login: str) -> None:
    """From the inbox's sign-in page through the provider and back to Pending.

    The provider shows its login (and consent) the first time; later its
    single sign-on sends the browser straight back.
    """
    page.click("#oidc-signin")
    form = page.locator("input[name=login]")
    pending = page.locator("h1", has_text="Pending")
    expect(form.or_(pending)).to_be_visible(timeout=WAIT_MS)
    if form.count():
        form.fill(login)
        page.fill("input[name=password]", "any password")
        page.click("button[type=submit]")
        consent = page.locator("button[type=submit]", has_text="Continue")
        expect(consent.or_(pending)).to_be_visible(timeout=WAIT_MS)
        if consent.count():
            consent.click()
    expect(pending).to_be_visible(timeout=WAIT_MS)


def test_in_a_browser_the_lapsed_session_signs_in_again_with_new_groups(world: World) -> None:
    """In Chromium: Fay's open page leaves for the sign-in page once her session is past the
    bound, and after signing in again her groups are the provider's new ones."""
    world.provider.set_account("fay", ACCOUNTS["fay"])
    finance = world.ask("approve_budget", ["finance"])
    ops = world.ask("restart_cache", ["ops"])
    context = world.browser.new_context()
    context.route("**/*", loopback_only)
    page = context.new_page()
    page.goto(f"{world.server.url}/")
    _provider_sign_in(world, page, "fay")
    rows = page.locator("#pending-rows tr")
    expect(rows.filter(has_text="approve_budget")).to_have_count(1)
    expect(rows.filter(has_text="restart_cache")).to_have_count(0)

    world.provider.set_account("fay", {**ACCOUNTS["fay"], "groups": ["ops"]})
    _past_the_bound(world.db, "fay")
    # the page is left open: its live list is told of the signout and reloads
    expect(page).to_have_url(
        re.compile("^" + re.escape(world.server.url) + "/signin"),
        timeout=(MAX_AGE + 60) * 1000,
    )
    _provider_sign_in(world, page, "fay")
    expect(page.locator(".who .name")).to_have_attribute("title", "Signed in as Fay Finance (ops)")
    expect(rows.filter(has_text="restart_cache")).to_have_count(1)
    expect(rows.filter(has_text="approve_budget")).to_have_count(0)
    refused = page.goto(f"{world.server.url}/requests/{finance}")
    assert refused is not None
    assert refused.status == 403
    context.close()
    assert world.status(finance) == "pending"
    assert world.status(ops) == "pending"


def test_in_a_browser_a_session_lapsed_before_the_live_list_connects_signs_out(
    world: World,
) -> None:
    """In Chromium: Lee's session passes the bound before her page's live list connects
    (a loaded machine, or a reconnect after the stream dropped). The events answer
    401, on which a browser's EventSource gives up without a "signout" event; the
    page still leaves for the sign-in page."""
    world.provider.set_account("lee", ACCOUNTS["lee"])
    context = world.browser.new_context()
    context.route("**/*", loopback_only)
    page = context.new_page()
    page.goto(f"{world.server.url}/")
    lapsed: list[str] = []

    def lapse_first(route: Route) -> None:
        # the session passes its bound while the live list's request is on its way
        if not lapsed:
            _past_the_bound(world.db, "lee")
            lapsed.append(route.request.url)
        route.fallback()

    page.route("**/inbox/events*", lapse_first)
    _provider_sign_in(world, page, "lee")
    expect(page).to_have_url(
        re.compile("^" + re.escape(world.server.url) + "/signin"), timeout=WAIT_MS
    )
    assert lapsed, "the live list never connected"
    context.close()


def test_settings_tightened_at_a_restart_hold_for_sessions_already_started(
    world: World,
) -> None:
    """Gail (finance) and Hana (support) sign in under a max age of 1h and no required group;
    after a restart (same session key, same store) with a lower max age and
    --oidc-require-group finance, Hana's session is over at once, and Gail's works while
    young and ends once older than the lower max age."""
    lowered = 2 * MAX_AGE
    server = world.later
    with httpx.Client(timeout=30) as client, httpx.Client(timeout=30) as hana:
        with server.started("--oidc-max-age", "1h"):
            sign_in(server.url, "gail", client)
            sign_in(server.url, "hana", hana)
            assert "Hana Support" in hana.get(f"{server.url}/").text
        with server.started("--oidc-max-age", f"{lowered}s", "--oidc-require-group", "finance"):
            shut_out = hana.get(f"{server.url}/")
            assert shut_out.status_code == 303
            assert shut_out.headers["location"].startswith("/signin")
            young = client.get(f"{server.url}/")
            assert young.status_code == 200, young.text[:300]
            assert "Gail Finance" in young.text
            _past_the_bound(world.db.parent / "later.db", "gail", lowered)
            lapsed = client.get(f"{server.url}/")
            assert lapsed.status_code == 303
            assert lapsed.headers["location"].startswith("/signin")


def _approve(
    client: httpx.Client, inbox: str, request_id: str, grant_minutes: str = ""
) -> httpx.Response:
    """Approve ``request_id`` from its page in the inbox, with a grant of so many minutes."""
    page = client.get(f"{inbox}/requests/{request_id}")
    assert page.status_code == 200, page.headers.get("location")
    return client.post(
        f"{inbox}/requests/{request_id}/decision",
        data={
            "csrf": _csrf(page.text),
            "verdict": "approve",
            "comment": "",
            "grant_minutes": grant_minutes,
            "confirm": "yes",
        },
        headers={"Origin": inbox},
    )


def test_a_grant_is_refused_when_the_sign_in_has_less_than_a_minute_left(world: World) -> None:
    """Jo's sign-in is trusted for 15 s: a grant of an hour would keep approving for finance
    long after the provider's word on her membership, so nothing is recorded and she is told
    why; approving without a grant works."""
    finance = world.ask("refund_order", ["finance"])
    with httpx.Client(timeout=30) as client:
        sign_in(world.server.url, "jo", client)
        page = client.get(f"{world.server.url}/requests/{finance}")
        assert 'id="grant-until"' in page.text  # the form says a grant ends with the sign-in
        refused = _approve(client, world.server.url, finance, grant_minutes="60")
        assert refused.status_code == 422, refused.headers.get("location")
        assert "--oidc-max-age" in refused.text
        assert world.status(finance) == "pending"
        approved = _approve(client, world.server.url, finance)
        assert approved.status_code == 303
        assert not approved.headers["location"].startswith("/signin")
    assert world.status(finance) == "approved"


def _grant_of(server: Server, token: str, request_id: str) -> dict[str, str]:
    """The grant given on ``request_id``, as the grants API shows it to a reviewer."""
    answer = httpx.get(
        f"{server.url}/api/v1/grants",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    found = [g for g in answer.json()["grants"] if g["request_id"] == request_id]
    assert len(found) == 1, answer.text
    return dict(found[0])


def test_a_grant_given_from_an_openid_session_ends_by_the_sign_ins_max_age(
    world: World,
) -> None:
    """Under --oidc-max-age 10m Kim gives a day's grant: it is shortened to end by her
    sign-in's start + 10 min, and the inbox says so. Approving first of two, her grant is
    counted from the request's expiry (the latest the grant can start), so the grant
    the second approver completes ends by then too."""
    server = world.later
    db = world.db.parent / "later.db"
    with server.started("--oidc-max-age", "10m"):
        agent = create_token(db, "grant-bot", "agent")
        bob = create_token(db, "bob", "reviewer", ["finance"])

        alone = _ask(server, agent, "refund_order", ["finance"])
        jointly = _ask(server, agent, "pay_supplier", ["finance"], approvers=2, approval_ttl="5m")
        with httpx.Client(timeout=30) as client:
            sign_in(server.url, "kim", client)
            trusted_until = datetime.now(UTC) + timedelta(minutes=10)
            decided = _approve(client, server.url, alone, grant_minutes="1440")
            assert decided.status_code == 303
            told = client.get(f"{server.url}{decided.headers['location']}").text
            shortened = re.search(r"shortened from 1440 to (\d+) minutes", told)
            assert shortened is not None, told[:2000]
            grant = _grant_of(server, bob, alone)
            given = datetime.fromisoformat(grant["created_at"])
            ends = datetime.fromisoformat(grant["expires_at"])
            assert ends - given == timedelta(minutes=int(shortened.group(1)))
            assert ends <= trusted_until

            first = _approve(client, server.url, jointly, grant_minutes="1440")
            assert first.status_code == 303
        second = httpx.post(
            f"{server.url}/api/v1/approvals/{jointly}/decision",
            json={"verdict": "approve", "grant_minutes": 1440},
            headers={"Authorization": f"Bearer {bob}"},
            timeout=30,
        )
        assert second.status_code == 200, second.text
        assert second.json()["status"] == "approved"
        joint = _grant_of(server, bob, jointly)
        assert datetime.fromisoformat(joint["expires_at"]) <= trusted_until


@pytest.mark.parametrize(
    ("value", "said"),
    [("soon", "is not a duration"), ("0s", "must be positive"), ("5s", "at least 10 seconds")],
)
def test_serve_refuses_a_max_age_that_is_not_a_duration(
    tmp_path: Path, value: str, said: str
) -> None:
    """--oidc-max-age takes a duration of 10 s or more such as 30m; else a usage error (exit 2)."""
    done = aegis(
        "serve", "--db", str(tmp_path / "a.db"), "--oidc-issuer", "http://127.0.0.1:9",
        "--oidc-client-id", "x", "--oidc-max-age", value, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--oidc-max-age" in done.stderr
    assert said in done.stderr
    assert not (tmp_path / "a.db").exists()  # refused before anything was opened
