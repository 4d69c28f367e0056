"""OpenID sign-in in a real browser: Chromium, the real provider's login page, `aegis serve`.

A person opens the inbox, signs in with the company's provider
(oidc-provider from npm, its own login and consent pages), sees only what
their groups may decide, approves, and signs out; the cookie they had is
worth nothing afterwards. Screenshots land in tests/output/.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_support import axe_problems, install_axe
from oidc_support import OpenIdProvider, loopback_only
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from serve_support import Server, aegis, create_token

OUTPUT = Path(__file__).resolve().parent.parent / "output"
CLIENT_SECRET = "browser-test-client-secret"  # a test fixture's secret
WAIT_MS = 20_000

ACCOUNTS = {
    "alice": {"name": "Alice Example", "groups": ["security"]},
    "bob": {"name": "Bob Builder", "groups": ["finance"]},
}


@dataclass
class World:
    """The provider, `aegis serve` trusting it, an agent token and one Chromium."""

    provider: OpenIdProvider
    server: Server
    agent: str
    browser: Browser
    errors: list[str]

    def context(self) -> BrowserContext:
        """A fresh profile that reaches loopback only and reports the inbox's console errors."""
        context = self.browser.new_context(viewport={"width": 1100, "height": 720})
        context.route("**/*", loopback_only)
        context.on("page", self._watch)
        return context

    def _watch(self, page: Page) -> None:
        def console(message: Any) -> None:
            # the provider's page asks for a web font it cannot reach: not ours
            if message.type == "error" and page.url.startswith(self.server.url):
                self.errors.append(f"{page.url}: {message.text}")

        page.on("console", console)

    def ask(self, action_type: str, reviewers: list[str], approvers: int = 1) -> str:
        """The agent asks for approval; the request's id."""
        answer = httpx.post(
            f"{self.server.url}/api/v1/approvals",
            json={
                "session_id": "s-" + secrets.token_hex(4),
                "action": {"type": action_type, "target": "crm", "params": {"customer": "c_42"}},
                "risk_level": "high",
                "matched_rule": action_type,
                "reviewers": reviewers,
                "approvers": approvers,
            },
            headers={"Authorization": f"Bearer {self.agent}"},
            timeout=20,
        )
        assert answer.status_code in {200, 201}, answer.text
        return str(answer.json()["id"])

    def status(self, request_id: str) -> dict[str, Any]:
        """The request as the agent sees it."""
        answer = httpx.get(
            f"{self.server.url}/api/v1/approvals/{request_id}",
            headers={"Authorization": f"Bearer {self.agent}"},
            timeout=20,
        )
        result: dict[str, Any] = answer.json()
        return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, oidc_provider_package: Path) -> Iterator[World]:
    """oidc-provider, `aegis serve --oidc-issuer …` (bound address as redirect base), Chromium."""
    folder = tmp_path_factory.mktemp("oidc-browser")
    db = folder / "aegis.db"
    agent = create_token(db, "support-bot", "agent")
    server = Server(db, log=folder / "serve.log", env={"AEGIS_OIDC_CLIENT_SECRET": CLIENT_SECRET})
    clients = [
        {
            "client_id": "aegis-inbox",
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [f"{server.url}/signin/oidc/callback"],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
        }
    ]
    OUTPUT.mkdir(exist_ok=True)
    with OpenIdProvider(oidc_provider_package, clients, ACCOUNTS, workdir=folder) as provider:
        server.args += [
            "--oidc-issuer", provider.issuer, "--oidc-client-id", "aegis-inbox",
            "--oidc-scopes", "openid profile groups",
        ]  # fmt: skip
        with server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                yield World(provider, server, agent, browser, [])
            finally:
                browser.close()


def _sign_in_at_provider(
    world: World, page: Page, login: str, *, shots: str = "", lands: str = "Pending"
) -> None:
    """From the inbox's sign-in page: the button, the provider's login and consent, back
    to a page whose heading says ``lands``."""
    expect(page.locator("#oidc-signin")).to_contain_text("Sign in with 127.0.0.1:")
    if shots:
        page.screenshot(path=OUTPUT / f"{shots}-1-signin.png")
    page.click("#oidc-signin")
    expect(page).to_have_url(re.compile("^" + re.escape(world.provider.issuer) + "/"))
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "correct horse battery staple")
    if shots:
        page.screenshot(path=OUTPUT / f"{shots}-2-provider-login.png")
    page.click("button[type=submit]")
    expect(page.locator("button[type=submit]")).to_have_text("Continue", timeout=WAIT_MS)
    if shots:
        page.screenshot(path=OUTPUT / f"{shots}-3-provider-consent.png")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text(lands, timeout=WAIT_MS)


def _refused_page(world: World, page: Page, request_id: str, group: str, hidden: str) -> None:
    """Opening another group's request by its address shows a refusal, and none of it."""
    refused = page.goto(f"{world.server.url}/requests/{request_id}")
    assert refused is not None
    assert refused.status == 403
    expect(page.locator("main h1")).to_have_text("Not available")
    expect(page.locator("main")).to_contain_text(f"is for reviewers in {group}")
    expect(page.locator("main")).not_to_contain_text(hidden)
    expect(page.locator("#approve")).to_have_count(0)
    # the browser reports the refused page's 403 as a console error: that one is expected
    mine = f"{world.server.url}/requests/{request_id}"
    expected = [e for e in world.errors if e.startswith(mine)]
    assert len(expected) == 1, world.errors
    world.errors.remove(expected[0])


def test_person_signs_in_decides_within_their_groups_and_signs_out(world: World) -> None:
    """Sign in at the provider, see only your groups' requests, approve, sign out for good."""
    security = world.ask("rotate_api_keys", ["security"])
    finance = world.ask("pay_invoice", ["finance"])
    context = world.context()
    page = context.new_page()
    page.goto(f"{world.server.url}/")
    expect(page).to_have_url(f"{world.server.url}/signin")
    _sign_in_at_provider(world, page, "alice", shots="oidc")
    expect(page.locator(".who .name")).to_have_text("Alice Example")
    rows = page.locator("#pending-rows tr")
    expect(rows.filter(has_text="rotate_api_keys")).to_have_count(1)
    expect(rows.filter(has_text="pay_invoice")).to_have_count(0)
    page.screenshot(path=OUTPUT / "oidc-4-pending.png")

    page.click(f"a[href='/requests/{security}']")
    expect(page.locator("#approve")).to_be_enabled()
    page.fill("#comment", "Rotation window agreed with the on-call")
    page.check("#confirm")  # a HIGH risk request asks for the box
    page.click("#approve")
    expect(page.locator(".flash-ok")).to_contain_text(f"Decided: approved {security}")
    # nothing else of hers is pending: back on the list, which says so
    expect(page.locator(".flash-ok")).to_contain_text("Nothing else is pending")
    page.goto(f"{world.server.url}/requests/{security}")
    expect(page.locator(".decisions")).to_contain_text("Alice Example")
    expect(page.locator(".decisions .identity")).to_contain_text(
        f"alice at {world.provider.issuer}"
    )
    page.screenshot(path=OUTPUT / "oidc-5-approved.png", full_page=True)
    decided = world.status(security)
    assert decided["status"] == "approved"
    assert decided["decisions"][0]["reviewer"] == f"{world.provider.issuer}#alice"

    # the finance request is not hers to decide, nor to read, even by its address
    _refused_page(world, page, finance, "finance", "pay_invoice")

    # sign out: the cookie she had is refused afterwards, from anywhere
    cookies = [c for c in context.cookies() if c["name"] == "aegis_session"]
    assert cookies
    page.goto(f"{world.server.url}/")
    page.click("#signout")
    expect(page).to_have_url(f"{world.server.url}/signin")
    expect(page.locator(".flash-ok")).to_contain_text("Signed out")
    page.screenshot(path=OUTPUT / "oidc-6-signed-out.png")
    thief = world.context()
    thief.add_cookies(cookies)  # type: ignore[arg-type]
    stolen = thief.new_page()
    stolen.goto(f"{world.server.url}/")
    expect(stolen).to_have_url(f"{world.server.url}/signin")
    thief.close()
    context.close()
    assert world.errors == []


def test_other_groups_see_their_own_requests(world: World) -> None:
    """Bob (finance) sees the finance request, and not the security one."""
    security = world.ask("disable_mfa", ["security"])
    finance = world.ask("refund_order", ["finance"])
    context = world.context()
    page = context.new_page()
    page.goto(f"{world.server.url}/signin")
    _sign_in_at_provider(world, page, "bob")
    expect(page.locator(".who .name")).to_have_text("Bob Builder")
    expect(page.locator(f"a[href='/requests/{finance}']")).to_have_count(1)
    expect(page.locator(f"a[href='/requests/{security}']")).to_have_count(0)
    assert world.status(finance)["status"] == "pending"
    context.close()
    assert world.errors == []


def test_a_revoked_person_is_signed_out_live_and_stays_out_until_reinstated(
    world: World, axe_source: str
) -> None:
    """bob approved a two-person request and has its page open. `aegis reviewer revoke`
    withdraws his approval and ends his session: his page goes to the sign-in page without
    a touch. The provider still lets him in; the inbox refuses him, until
    `aegis reviewer reinstate`."""
    request_id = world.ask("wire_funds", ["finance"], approvers=2)
    db = world.server.args[world.server.args.index("--db") + 1]
    person = f"{world.provider.issuer}#bob"
    context = world.context()
    page = context.new_page()
    page.goto(f"{world.server.url}/signin")
    _sign_in_at_provider(world, page, "bob")
    page.goto(f"{world.server.url}/requests/{request_id}")
    page.check("#confirm")
    page.click("#approve")
    expect(page.locator(".flash-ok")).to_contain_text(f"Decided: approved {request_id}")
    page.goto(f"{world.server.url}/requests/{request_id}")
    expect(page.locator("#refusal")).to_be_visible()  # his approval is in; one more is needed

    revoked = aegis("reviewer", "revoke", person, "--db", db)
    assert request_id in revoked.stderr
    expect(page).to_have_url(
        re.compile("^" + re.escape(f"{world.server.url}/signin")), timeout=WAIT_MS
    )
    assert world.status(request_id)["decisions"] == []
    context.close()

    again = world.context()
    refused = again.new_page()
    refused.goto(f"{world.server.url}/signin")
    _sign_in_at_provider(world, refused, "bob", lands="Not signed in")
    expect(refused.locator("main")).to_contain_text("revoked")
    refused.screenshot(path=OUTPUT / "oidc-7-revoked-refused.png")
    assert axe_problems(refused, axe_source) == []
    refused.goto(f"{world.server.url}/")
    expect(refused).to_have_url(f"{world.server.url}/signin")  # no session came of it
    # the browser reports the refusal's 403 as a console error: that one is expected
    world.errors[:] = [e for e in world.errors if "/signin/oidc/callback" not in e]
    again.close()

    aegis("reviewer", "reinstate", person, "--db", db)
    back = world.context()
    allowed = back.new_page()
    allowed.goto(f"{world.server.url}/signin")
    _sign_in_at_provider(world, allowed, "bob")
    expect(allowed.locator(f"a[href='/requests/{request_id}']")).to_have_count(1)
    back.close()
    assert world.errors == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", [{"width": 1180, "height": 760}, {"width": 390, "height": 844}])
def test_the_sign_in_page_with_a_provider_passes_axe(
    world: World, axe_source: str, scheme: str, size: dict[str, int]
) -> None:
    """The sign-in page offering the provider's button: nothing serious or critical to axe-core."""
    context = world.browser.new_context(viewport=size, color_scheme=scheme)  # type: ignore[arg-type]
    context.route("**/*", loopback_only)
    page = context.new_page()
    page.goto(f"{world.server.url}/signin")
    expect(page.locator("a[href^='/signin/oidc']")).to_be_visible()
    problems = axe_problems(page, axe_source)
    context.close()
    assert problems == [], "\n".join(problems)


@pytest.fixture(scope="module")
def axe_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """axe-core from the npm registry, once for this module."""
    return install_axe(tmp_path_factory)
