"""The inbox in a real browser (Debian's Chromium via Playwright) against the real `aegis serve`.

A real Runtime with a RemoteApprovalHandler waits on the service while a
reviewer works in the browser. Screenshots land in tests/output/.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from axe_support import axe_problems, install_axe
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from serve_support import Server, aegis, create_token

from aegis import Action, Policy, Result, ResultStatus, Runtime
from aegis.runtime.approval_remote import RemoteApprovalHandler
from aegis.runtime.audit import AuditLogger

OUTPUT = Path(__file__).resolve().parent.parent / "output"

POLICY = """\
version: "1"
defaults: {risk_level: medium, approval: block}
rules:
  - name: refunds
    description: refunds move money, so a person checks them
    match: {type: refund}
    risk_level: high
    approval: approve
  - name: erasure
    match: {type: "delete*"}
    risk_level: critical
    approval: approve
  - name: notes
    match: {type: add_note}
    risk_level: low
    approval: approve
  - name: quick
    match: {type: quick_check}
    risk_level: medium
    approval: approve
    approval_ttl: 6s  # the expiry test opens the page first: room for a loaded machine
"""

T = TypeVar("T")

#: how long a test waits for something the page or the agent should do
WAIT_MS = 15_000


class Agent:
    """A real Runtime with a RemoteApprovalHandler, running on its own event loop thread."""

    def __init__(self, url: str, token: str, audit_db: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runtime: Runtime = self.call(self._open(url, token, audit_db))

    async def _open(self, url: str, token: str, audit_db: Path) -> Runtime:
        async def executor(action: Action) -> dict[str, Any]:
            return {"done": action.type}

        self.handler = RemoteApprovalHandler(url, token=token, timeout=60, poll=5)
        runtime = Runtime(
            executor=executor,
            policy=Policy.from_dict(yaml.safe_load(POLICY)),
            approval_handler=self.handler,
            audit_logger=AuditLogger(audit_db),
        )
        await runtime.__aenter__()
        return runtime

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the agent's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def start(self, action: Action) -> concurrent.futures.Future[Result]:
        """Start governing ``action``; the future resolves when the runtime returns."""
        return asyncio.run_coroutine_threadsafe(self.runtime.run_one(action), self.loop)

    def close(self) -> None:
        self.call(self.runtime.__aexit__(None, None, None))
        self.call(self.handler.aclose())
        self.call(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class World:
    """The service, its tokens, the agent and the browser of one test module."""

    def __init__(self, server: Server, tokens: dict[str, str], agent: Agent, browser: Browser):
        self.server = server
        self.tokens = tokens
        self.agent = agent
        self.browser = browser
        #: console errors and uncaught exceptions of every page (a CSP violation is one)
        self.errors: list[str] = []

    def context(self) -> BrowserContext:
        """A fresh browser profile (its own cookies) whose pages report console errors."""
        context = self.browser.new_context(viewport={"width": 1180, "height": 760})
        context.on("page", self._watch)
        return context

    def _watch(self, page: Page) -> None:
        page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def signed_in(self, name: str = "alice") -> Page:
        """A new page signed in as ``name`` through the form, showing Pending."""
        page = self.context().new_page()
        page.goto(f"{self.server.url}/")
        page.fill("#token", self.tokens[name])
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_contain_text("Pending")
        return page

    def row(self, page: Page, action_type: str) -> Any:
        """The pending row of an action type."""
        return page.locator("#pending-rows tr", has_text=action_type)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """`aegis serve`, a reviewer and an agent token, a Runtime waiting on it, one Chromium."""
    folder = tmp_path_factory.mktemp("inbox-browser")
    db = folder / "aegis.db"
    tokens = {
        "alice": create_token(db, "alice", "reviewer"),
        "support-bot": create_token(db, "support-bot", "agent"),
    }
    OUTPUT.mkdir(exist_ok=True)
    with Server(db, log=folder / "serve.log") as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        agent = Agent(server.url, tokens["support-bot"], folder / "agent.db")
        try:
            yield World(server, tokens, agent, browser)
        finally:
            agent.close()
            browser.close()


def test_sign_in_form(world: World) -> None:
    """A wrong token is refused on the page; a reviewer token opens Pending."""
    page = world.context().new_page()
    page.goto(f"{world.server.url}/")
    expect(page).to_have_url(f"{world.server.url}/signin")
    page.fill("#token", "aegis_wrong")
    page.click("button[type=submit]")
    expect(page.locator(".flash-error")).to_contain_text("the token is unknown")
    page.fill("#token", world.tokens["alice"])
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text("Pending")
    expect(page.locator(".who .name")).to_have_text("alice")
    page.context.close()


def test_request_appears_live_and_approval_lets_the_runtime_run(world: World) -> None:
    """A waiting Runtime's request appears without reload; approving it makes the Result SUCCESS."""
    pending = world.signed_in()
    expect(pending.locator("#live")).to_have_class("live on", timeout=WAIT_MS)
    pending.evaluate("window.__notReloaded = 42")
    refund = world.agent.start(
        Action(
            "refund",
            "billing",
            {"amount": 900, "currency": "EUR", "order": "A-1017", "customer": "c_4242"},
            "Refund order A-1017: the customer was charged twice",
        )
    )
    note = world.agent.start(Action("add_note", "crm", {"customer": "c_4242", "text": "called"}))
    erase = world.agent.start(
        Action("delete_customer", "crm", {"customer": "c_977"}, "GDPR erasure request")
    )
    for kind in ("refund", "add_note", "delete_customer"):
        expect(world.row(pending, kind)).to_be_visible(timeout=WAIT_MS)
    expect(world.row(pending, "refund").locator(".risk")).to_have_text("HIGH")
    expect(world.row(pending, "delete_customer").locator(".risk")).to_have_text("CRITICAL")
    expect(world.row(pending, "add_note").locator(".risk")).to_have_text("LOW")
    expect(world.row(pending, "refund")).to_contain_text("support-bot")
    expect(pending.locator("#pending-count")).to_have_text("3")
    # rows that arrive live are inside a polite live region: a screen reader hears them
    live = world.row(pending, "refund").evaluate(
        "row => row.closest('[aria-live]')?.getAttribute('aria-live')"
    )
    assert live == "polite"
    # the clocks tick in the page: waiting time grows without a reload
    expect(world.row(pending, "refund").locator(".ago")).not_to_have_text("0s", timeout=WAIT_MS)
    pending.screenshot(path=OUTPUT / "inbox-pending.png", clip=_content_box(pending))

    # the request page in a second tab; the first keeps the live list
    page = pending.context.new_page()
    page.goto(
        world.server.url + (world.row(pending, "refund").locator("a").get_attribute("href") or "")
    )
    expect(page.locator("#params .p-entry", has_text="amount")).to_contain_text("900")
    expect(page.locator(".agent-said .agent-text")).to_contain_text("charged twice")
    expect(page.locator("#why")).to_contain_text("refunds")
    expect(page.locator("#why")).to_contain_text("refunds move money, so a person checks them")
    # how urgent, at a glance: the time left ticks beside the risk, in the request's header
    expect(page.locator(".request-head #time-left")).to_have_text(re.compile(r"^\d+m \d\ds left$"))
    assert page.locator("#time-left").bounding_box()["y"] < 200  # type: ignore[index]
    page.screenshot(path=OUTPUT / "inbox-request.png", full_page=True)
    refund_url = page.url
    page.fill("#comment", "Duplicate charge confirmed in Stripe")
    page.check("#confirm")  # HIGH risk: Approve asks for the box first
    page.click("#approve")
    expect(page.locator(".flash-ok")).to_contain_text("Decided: approved")
    assert refund.result(WAIT_MS / 1000).status is ResultStatus.SUCCESS
    # on to the next pending request by itself; the decided one says who decided
    expect(page.locator("#request")).not_to_have_attribute("data-id", refund_url.split("/")[-1])
    expect(page.locator("#approve")).to_be_enabled()
    page.goto(refund_url)
    expect(page.locator(".decisions")).to_contain_text("Duplicate charge confirmed")
    # decided: it says so plainly, by whom and when, and offers no form to fill in
    expect(page.locator("#outcome")).to_contain_text(re.compile(r"Approved by alice at \d{4}-"))
    expect(page.locator("#decide")).to_have_count(0)
    expect(page.locator(".badges .status")).to_have_text("approved")
    page.screenshot(path=OUTPUT / "inbox-request-decided.png", full_page=True)

    # decided and cancelled requests leave the live list, still without a reload
    expect(world.row(pending, "refund")).to_have_count(0, timeout=WAIT_MS)
    note.cancel()
    erase.cancel()
    expect(pending.locator("#pending-rows tr")).to_have_count(0, timeout=WAIT_MS)
    expect(pending.locator("#pending-empty")).to_be_visible()
    assert pending.evaluate("window.__notReloaded") == 42
    assert world.errors == []  # the script runs under the CSP without a single complaint
    pending.context.close()


def _content_box(page: Page) -> Any:
    """The part of the page down to the end of its main content, for a tight picture."""
    bottom = page.evaluate("document.querySelector('main').getBoundingClientRect().bottom")
    width = page.viewport_size["width"] if page.viewport_size else 1180
    return {"x": 0, "y": 0, "width": width, "height": bottom + 16}


def test_deny_with_the_keyboard(world: World) -> None:
    """Pressing d on a request page denies it, and the waiting Runtime gets DENIED."""
    page = world.signed_in()
    future = world.agent.start(Action("delete_account", "crm", {"customer": "c_31"}))
    expect(world.row(page, "delete_account")).to_be_visible(timeout=WAIT_MS)
    world.row(page, "delete_account").locator("a").click()
    page.fill("#comment", "not without a ticket")
    page.locator("#params").click()  # leave the comment field: shortcuts skip text fields
    page.keyboard.press("d")
    expect(page.locator(".flash-ok")).to_contain_text("Decided: denied")
    result = future.result(WAIT_MS / 1000)
    assert result.status is ResultStatus.DENIED
    page.context.close()


def test_expired_request_cannot_be_decided(world: World, axe_source: str) -> None:
    """A request past its approval_ttl leaves the live list; its open page says so and closes.

    Its clock is red while under five minutes and says "expired" at the end, never
    "expired left"; the expired request's page passes axe-core.
    """
    pending = world.signed_in()
    future = world.agent.start(Action("quick_check", "ops", {"host": "db-1"}))
    expect(world.row(pending, "quick_check")).to_be_visible(timeout=WAIT_MS)
    page = pending.context.new_page()
    page.goto(
        world.server.url
        + (world.row(pending, "quick_check").locator("a").get_attribute("href") or "")
    )
    expect(page.locator("#approve")).to_be_enabled()
    expect(page.locator("#time-left .left")).to_have_class(re.compile(r"\burgent\b"))
    result = future.result(WAIT_MS / 1000)  # the 6 s TTL runs out while the page is open
    assert result.status is ResultStatus.DENIED
    expect(world.row(pending, "quick_check")).to_have_count(0, timeout=WAIT_MS)
    # the open page says so by itself, and its form is closed
    expect(page.locator("#gone")).to_contain_text("expired elsewhere", timeout=WAIT_MS)
    expect(page.locator("#approve")).to_be_disabled()
    expect(page.locator("#time-left")).to_have_text("expired")
    page.reload()
    # expired: said plainly, with no form to fill in
    expect(page.locator("#outcome")).to_contain_text(
        re.compile(r"Expired at \d{4}-.* UTC without a decision; the agent was refused")
    )
    expect(page.locator("#decide")).to_have_count(0)
    expect(page.locator(".badges .status")).to_have_text("expired")
    expect(page.locator("#time-left")).to_have_count(0)  # the status says it
    page.screenshot(path=OUTPUT / "inbox-request-expired.png", full_page=True)
    assert axe_problems(page, axe_source) == []
    pending.context.close()


def test_hostile_params_render_as_text(world: World) -> None:
    """<script> and <img onerror> in what the agent wrote show as text and never run."""
    page = world.signed_in()
    script = "<script>window.__pwned = 1</script>"
    image = "<img src=x onerror=window.__pwned=2>"
    future = world.agent.start(
        Action("add_note", "crm<b>bold</b>", {"text": script, "html": image}, image)
    )
    expect(world.row(page, "crm<b>bold</b>")).to_be_visible(timeout=WAIT_MS)
    world.row(page, "crm<b>bold</b>").locator("a").click()
    expect(page.locator("#params")).to_contain_text(script)
    expect(page.locator("#params")).to_contain_text(image)
    expect(page.locator("#params-json pre")).to_contain_text(script)
    expect(page.locator(".agent-said .agent-text")).to_have_text(image)
    assert page.locator("main img").count() == 0
    assert page.locator("main b").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert not [e for e in world.errors if "Content Security Policy" in e]
    page.click("#deny")
    expect(page.locator(".flash-ok")).to_contain_text("Decided: denied")
    assert future.result(WAIT_MS / 1000).status is ResultStatus.DENIED
    page.context.close()


def test_every_page_fits_a_phone(world: World) -> None:
    """On a 390 px wide phone no inbox page scrolls sideways, and Approve is reachable."""
    page = world.signed_in()
    page.set_viewport_size({"width": 390, "height": 844})
    future = world.agent.start(
        Action("refund", "billing-eu", {"customer": "c_1", "memo": "x" * 120}, "a long memo")
    )
    expect(world.row(page, "billing-eu")).to_be_visible(timeout=WAIT_MS)
    # a card says what, how risky and how long is left first; why, who and where below
    tops = {
        label: world.row(page, "billing-eu").locator(f'td[data-label="{label}"]').bounding_box()
        for label in ("Action", "Risk", "Time left", "Rule", "Agent", "Session", "Waiting")
    }
    top = {label: box["y"] for label, box in tops.items() if box is not None}
    assert top["Action"] < top["Risk"] < top["Time left"] < top["Rule"], top
    assert max(top["Risk"], top["Time left"]) < min(top["Agent"], top["Session"], top["Waiting"])
    href = world.row(page, "billing-eu").locator("a").get_attribute("href") or ""
    for path in ("/", href, "/history", "/audit"):
        page.goto(world.server.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide on a 390 px screen"
    page.goto(world.server.url + href)
    page.screenshot(path=OUTPUT / "inbox-request-phone.png", full_page=True)
    page.check("#confirm")
    page.click("#approve")
    expect(page.locator(".flash-ok")).to_contain_text("Decided: approved")
    assert future.result(WAIT_MS / 1000).status is ResultStatus.SUCCESS
    page.context.close()


def test_sign_out(world: World) -> None:
    """Sign out ends the session: the inbox asks for a token again."""
    page = world.signed_in()
    page.click("#signout")
    expect(page.locator(".flash-ok")).to_contain_text("Signed out")
    page.goto(f"{world.server.url}/history")
    expect(page).to_have_url(f"{world.server.url}/signin?next=%2Fhistory")
    page.context.close()


def test_critical_approval_needs_confirmation_by_keyboard_too(world: World) -> None:
    """On a CRITICAL request, a, a click and a forged post all wait for the confirm box."""
    page = world.signed_in()
    future = world.agent.start(Action("delete_customer", "crm-eu", {"customer": "c_5"}))
    expect(world.row(page, "crm-eu")).to_be_visible(timeout=WAIT_MS)
    world.row(page, "crm-eu").locator("a").click()
    page.locator("#params").click()
    page.keyboard.press("a")
    expect(page.locator("label.confirm")).to_have_class(re.compile(r"\bask\b"))
    expect(page.locator("#confirm")).to_be_focused()
    page.click("#approve")
    assert page.locator(".flash-ok").count() == 0
    assert not future.done()
    # without the script's check, the server refuses it and changes nothing
    page.evaluate("document.getElementById('confirm').remove()")
    page.evaluate(
        "document.getElementById('decide').requestSubmit(document.getElementById('approve'))"
    )
    expect(page.locator(".flash-error")).to_contain_text("Nothing was changed")
    assert not future.done()
    page.check("#confirm")
    page.locator("#params").click()
    page.keyboard.press("a")
    expect(page.locator(".flash-ok")).to_contain_text("Decided: approved")
    assert future.result(WAIT_MS / 1000).status is ResultStatus.SUCCESS
    page.context.close()


def test_a_request_decided_elsewhere_says_so_live(world: World) -> None:
    """The open page of a request cancelled elsewhere says so without a reload."""
    page = world.signed_in()
    future = world.agent.start(Action("add_note", "crm-live", {"text": "hello"}))
    expect(world.row(page, "crm-live")).to_be_visible(timeout=WAIT_MS)
    world.row(page, "crm-live").locator("a").click()
    expect(page.locator("#approve")).to_be_enabled()
    page.evaluate("window.__notReloaded = 7")
    future.cancel()  # the agent stops waiting: the service cancels the request
    expect(page.locator("#gone")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#gone")).to_contain_text("cancelled elsewhere")
    expect(page.locator("#approve")).to_be_disabled()
    assert page.evaluate("window.__notReloaded") == 7
    page.context.close()


def test_a_request_approved_by_another_reviewer_says_so_live(world: World, axe_source: str) -> None:
    """Another reviewer approves the request open on this page: it says so, no reload.

    The notice passes axe-core as the pages do.
    """
    page = world.signed_in()
    future = world.agent.start(Action("add_note", "crm-other", {"text": "hello"}))
    expect(world.row(page, "crm-other")).to_be_visible(timeout=WAIT_MS)
    world.row(page, "crm-other").locator("a").click()
    expect(page.locator("#approve")).to_be_enabled()
    page.evaluate("window.__notReloaded = 7")
    request_id = page.url.split("/requests/", 1)[1].split("?", 1)[0]
    db = world.server.args[world.server.args.index("--db") + 1]
    bob = create_token(db, "bob-elsewhere", "reviewer")
    decided = httpx.post(
        f"{world.server.url}/api/v1/approvals/{request_id}/decision",
        json={"verdict": "approve"},
        headers={"Authorization": f"Bearer {bob}"},
        timeout=30,
    )
    assert decided.status_code == 200, decided.text
    expect(page.locator("#gone")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#gone")).to_contain_text("approved elsewhere")
    assert page.locator("#gone").get_attribute("aria-live") == "polite"
    expect(page.locator("#approve")).to_be_disabled()
    expect(page.locator("#deny")).to_be_disabled()
    assert page.evaluate("window.__notReloaded") == 7
    assert axe_problems(page, axe_source) == []
    assert future.result(WAIT_MS / 1000).status is ResultStatus.SUCCESS
    page.context.close()


@pytest.mark.parametrize(("scheme", "size"), [
    ("light", {"width": 1180, "height": 760}),
    ("dark", {"width": 1180, "height": 760}),
    ("light", {"width": 390, "height": 844}),
    ("dark", {"width": 390, "height": 844}),
])  # fmt: skip
def test_every_page_passes_axe(
    world: World, axe_source: str, scheme: str, size: dict[str, int]
) -> None:
    """axe-core finds nothing serious or critical on any inbox page: light, dark, desk, phone.

    Sign-in, Pending, a request (asking to confirm, decided), History, Audit with a
    grant, a missing request and a missing page (404), a forged form (403) and the
    signed-out page.
    """
    context = world.browser.new_context(viewport=size, color_scheme=scheme)  # type: ignore[arg-type]
    page = context.new_page()
    problems: dict[str, list[str]] = {}
    page.goto(f"{world.server.url}/signin")
    problems["/signin"] = axe_problems(page, axe_source)
    page.fill("#token", world.tokens["alice"])
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text("Pending")
    future = world.agent.start(
        Action("refund", f"axe-{scheme}-{size['width']}",
               {"amount": 1299, "lines": [{"sku": f"s{i}", "qty": i} for i in range(30)]},
               "customer asked twice")
    )  # fmt: skip
    row = world.row(page, f"axe-{scheme}-{size['width']}")
    expect(row).to_be_visible(timeout=WAIT_MS)
    href = row.locator("a").get_attribute("href") or ""
    problems["/ (pending)"] = axe_problems(page, axe_source)
    for path in (href, "/history", "/audit", "/requests/apr_000000000000000000000000", "/nope"):
        page.goto(world.server.url + path)
        problems[path] = axe_problems(page, axe_source)
    page.goto(world.server.url + href)
    page.locator(".more-params summary").first.click()
    page.locator("#params").click()
    page.keyboard.press("a")  # HIGH: the confirm box asks first, highlighted
    expect(page.locator("label.confirm")).to_have_class(re.compile(r"\bask\b"))
    problems[href + " (asking to confirm)"] = axe_problems(page, axe_source)
    page.check("#confirm")
    page.fill("#grant_minutes", "5")
    page.click("#approve")
    expect(page.locator(".flash-ok")).to_contain_text("Decided: approved")
    problems[href + " (decided)"] = axe_problems(page, axe_source)
    assert future.result(WAIT_MS / 1000).status is ResultStatus.SUCCESS
    page.goto(world.server.url + href)  # the decided request's own page: its decisions, no form
    expect(page.locator(".decisions")).to_be_visible()
    problems[href + " (its page, decided)"] = axe_problems(page, axe_source)
    page.goto(world.server.url + "/history")
    problems["/history (with the decision)"] = axe_problems(page, axe_source)
    page.goto(world.server.url + "/audit")
    grant = page.locator("#grants + table tr", has_text=f"axe-{scheme}-{size['width']}")
    expect(grant).to_have_count(1)
    problems["/audit (with a grant)"] = axe_problems(page, axe_source)
    grant.locator("input[name=csrf]").evaluate("field => { field.value = 'forged'; }")
    grant.locator("button").click()  # a form from elsewhere: the 403 page
    expect(page.locator("h1")).to_have_text("Refused")
    problems["403 (a forged form)"] = axe_problems(page, axe_source)
    page.click("#signout")
    expect(page.locator(".flash-ok")).to_contain_text("Signed out")
    problems["/signin (signed out)"] = axe_problems(page, axe_source)
    context.close()
    found = [f"{path}: {problem}" for path, listed in problems.items() for problem in listed]
    assert found == [], "\n".join(found)


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1180, "height": 760}

#: elements of main wider than the screen, as "tag.class right=..."
OVERFLOWING = """() => Array.from(document.querySelectorAll('main *'))
  .filter(el => { const r = el.getBoundingClientRect();
                  return r.width > 0 && r.height > 0 && r.right > window.innerWidth + 0.5; })
  .map(el => el.tagName.toLowerCase() + '.' + el.className + ' right=' +
             Math.round(el.getBoundingClientRect().right))"""


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_nested_params_read_whole_without_sideways_scroll(
    world: World, size: dict[str, int]
) -> None:
    """Nested params are key/value rows, long text wraps; every value is shown or one click away."""
    page = world.signed_in()
    page.set_viewport_size(size)
    memo = "ref:" + "7f3a9c" * 150  # 904 characters without a space
    deep: Any = {"level": 7, "value": "at the bottom"}
    for level in range(6, 0, -1):
        deep = {"level": level, "inner": deep}
    params = {
        "amount": 1299,
        "memo": memo,
        "customer": {"id": "c_4242", "email": "someone.with.a.very.long.address@example.com",
                     "tags": ["vip", "eu", ""], "flags": {}},
        "lines": [{"sku": f"sku-{i:02d}", "qty": i, "gift": i % 2 == 0} for i in range(30)],
        "deep": deep,
        "note": None,
    }  # fmt: skip
    target = f"nested-{size['width']}"
    future = world.agent.start(Action("refund", target, params, "nested params"))
    expect(world.row(page, target)).to_be_visible(timeout=WAIT_MS)
    world.row(page, target).locator("a").click()
    tree = page.locator("#params")
    expect(tree.locator(".p-entry", has_text="amount").first).to_contain_text("1299")
    assert page.evaluate("document.documentElement.scrollWidth") <= size["width"]
    assert page.evaluate(OVERFLOWING) == []
    # what is held back says how much, and opens on a click (or Enter on its summary)
    more = tree.locator("details.more-params > summary")
    expect(more.filter(has_text="5 more items of 30")).to_have_count(1)
    expect(more.filter(has_text="304 more characters of 904")).to_have_count(1)
    while tree.locator("details.more-params:not([open]) > summary").count():
        tree.locator("details.more-params:not([open]) > summary").first.click()
    assert page.evaluate(OVERFLOWING) == []
    assert page.evaluate("document.documentElement.scrollWidth") <= size["width"]
    # every value is on the page and visible now
    leaves = tree.locator(".p-str, .p-num, .p-lit, .p-empty, .p-json")
    assert leaves.count() > 0
    hidden = [i for i in range(leaves.count()) if not leaves.nth(i).is_visible()]
    assert hidden == []
    for i in range(30):
        expect(tree.locator(".p-str", has_text=f"sku-{i:02d}")).to_have_count(1)
    memo_row = tree.locator(".p-entry", has=page.locator("dt", has_text="memo"))
    assert "".join(memo_row.locator(".p-str").all_text_contents()) == memo
    expect(tree).to_contain_text("at the bottom")  # below the tree's depth: JSON text, wrapped
    expect(tree).to_contain_text("someone.with.a.very.long.address@example.com")
    page.screenshot(path=OUTPUT / f"inbox-params-{size['width']}.png", full_page=True)
    page.click("#deny")
    expect(page.locator(".flash-ok")).to_contain_text("Decided: denied")
    assert future.result(WAIT_MS / 1000).status is ResultStatus.DENIED
    page.context.close()


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_a_filtered_list_by_url_stays_filtered_live_and_the_keyboard_goes_on(
    world: World, size: dict[str, int]
) -> None:
    """A linked filter holds live; a, Space, a approve a CRITICAL one, the next opens; d, back."""
    page = world.signed_in()
    page.set_viewport_size(size)
    tag = f"kb{size['width']}"
    page.goto(f"{world.server.url}/?risk=critical&sort=expiring")
    expect(page.locator("#f-risk")).to_have_value("critical")
    expect(page.locator("#f-sort")).to_have_value("expiring")
    expect(page.locator("#live")).to_have_class("live on", timeout=WAIT_MS)
    first = world.agent.start(Action("delete_customer", f"{tag}-1", {"customer": "c_1"}))
    expect(world.row(page, f"{tag}-1")).to_be_visible(timeout=WAIT_MS)
    second = world.agent.start(Action("delete_customer", f"{tag}-2", {"customer": "c_2"}))
    note = world.agent.start(Action("add_note", f"{tag}-note", {"text": "low"}))
    expect(world.row(page, f"{tag}-2")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#pending-count")).to_have_text("3", timeout=WAIT_MS)
    expect(page.locator("#pending-total")).to_contain_text("2 match the filters")
    expect(world.row(page, f"{tag}-note")).to_have_count(0)  # live, and still filtered
    assert page.url.endswith("/?risk=critical&sort=expiring")

    world.row(page, f"{tag}-1").locator("a").click()
    expect(page).to_have_url(re.compile(r"/requests/apr_\w+\?sort=expiring&risk=critical$"))
    first_id = page.locator("#request").get_attribute("data-id")
    page.keyboard.press("a")  # CRITICAL: the confirm box first
    expect(page.locator("#confirm")).to_be_focused()
    assert not first.done()
    page.keyboard.press("Space")
    expect(page.locator("#confirm")).to_be_checked()
    page.keyboard.press("a")
    # on to the next critical one by itself, saying what was decided, aloud too
    notice = f"Decided: approved {first_id} (delete_customer on {tag}-1)"
    expect(page.locator(".flash-ok")).to_contain_text(notice)
    expect(page.locator("#announce")).to_contain_text(notice)
    expect(page.locator("h1")).to_contain_text(f"{tag}-2")
    assert first.result(WAIT_MS / 1000).status is ResultStatus.SUCCESS
    page.screenshot(path=OUTPUT / f"inbox-next-{size['width']}.png", full_page=True)
    page.keyboard.press("d")
    expect(page.locator(".flash-ok")).to_contain_text("Decided: denied")
    expect(page.locator(".flash-ok")).to_contain_text(
        "Nothing else is pending that matches the filters"
    )
    expect(page).to_have_url(f"{world.server.url}/?sort=expiring&risk=critical")
    assert second.result(WAIT_MS / 1000).status is ResultStatus.DENIED
    expect(world.row(page, f"{tag}-note")).to_have_count(0)
    note.cancel()
    expect(page.locator("#pending-count")).to_have_text("0", timeout=WAIT_MS)
    page.context.close()


#: a long action name and target, as agents write them
LONG_TYPE = "delete_customer_records_including_backups_and_replicas"
LONG_TARGET = "postgresql://crm-primary.internal/customers_production_eu_central"

#: the audit table's scroll box and where each header cell ends
AUDIT_COLUMNS = """() => { const box = document.querySelector('.scroll');
  return {right: box.getBoundingClientRect().right, wide: box.scrollWidth, shown: box.clientWidth,
          columns: Array.from(box.querySelectorAll('th')).map(th =>
            [th.textContent, Math.round(th.getBoundingClientRect().right)])}; }"""


@pytest.mark.parametrize("width", [1200, 1440])
def test_the_audit_table_shows_every_column_on_a_desk(world: World, width: int) -> None:
    """On a 1,200 or 1,440 px screen the audit table fits its box: Hash is in sight, no scrolling.

    A record of a long action name, target and session wraps instead of pushing
    the last columns past the box's edge.
    """
    page = world.signed_in()
    page.set_viewport_size({"width": width, "height": 800})
    target = f"{LONG_TARGET}_{width}"
    future = world.agent.start(Action(LONG_TYPE, target, {"customer": "c_8"}, "long names"))
    expect(world.row(page, target)).to_be_visible(timeout=WAIT_MS)
    page.goto(f"{world.server.url}/audit")
    expect(page.locator(".audit td", has_text=target).first).to_be_visible()
    table = page.evaluate(AUDIT_COLUMNS)
    past = [name for name, right in table["columns"] if right > table["right"] + 0.5]
    assert past == [], f"{past} past the table's edge at {table['right']} px: {table['columns']}"
    assert table["wide"] <= table["shown"]
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    future.cancel()
    page.context.close()


#: the focused element and the outline it draws
FOCUSED = """() => { const el = document.activeElement, style = getComputedStyle(el);
  return {what: el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
                (el.className ? '.' + el.className : ''),
          style: style.outlineStyle, width: parseFloat(style.outlineWidth)}; }"""


def test_the_keyboard_focus_is_drawn_on_every_control(world: World) -> None:
    """Tab goes through each page's controls, and each one draws the inbox's 2 px focus ring.

    Selects, expanders (a long value's "more characters") and the audit table's
    scroll box too: the browser's own ring is 1 px, dark on the dark scheme.
    """
    page = world.signed_in()
    future = world.agent.start(
        Action("refund", "focus-ring", {"memo": "m" * 700, "lines": list(range(30))})
    )
    expect(world.row(page, "focus-ring")).to_be_visible(timeout=WAIT_MS)
    href = world.row(page, "focus-ring").locator("a").get_attribute("href") or ""
    undrawn: list[str] = []
    reached: set[str] = set()
    for path in ("/", href, "/history", "/audit"):
        page.goto(world.server.url + path)
        for _ in range(120):
            page.keyboard.press("Tab")
            focused = page.evaluate(FOCUSED)
            if focused["what"].startswith("body"):
                break  # past the last control
            reached.add(focused["what"].split("#")[0].split(".")[0])
            if focused["style"] != "solid" or focused["width"] < 2:
                undrawn.append(f"{path}: {focused}")
    assert {"a", "button", "input", "select", "summary", "textarea", "div"} <= reached
    assert undrawn == []
    future.cancel()
    page.context.close()


#: whether an element's text ends left of where it starts: drawn right to left
ENDS_LEFT = """el => { const text = el.firstChild, range = document.createRange();
  range.setStart(text, 0); range.setEnd(text, 1);
  const first = range.getBoundingClientRect().left;
  range.setStart(text, text.length - 1); range.setEnd(text, text.length);
  return range.getBoundingClientRect().left < first; }"""


def test_right_to_left_text_reads_in_its_own_direction(world: World) -> None:
    """Arabic the agent wrote is drawn right to left, its full stop at its end, in list and page.

    In the page's left-to-right flow the stop and quotes of an Arabic sentence
    were drawn at its start; each value now keeps its own direction.
    """
    page = world.signed_in()
    sentence = "تم شحن الطلب."
    future = world.agent.start(
        Action("add_note", "rtl-text", {"text": sentence, "id": 7}, sentence)
    )
    row = world.row(page, "rtl-text")
    expect(row).to_be_visible(timeout=WAIT_MS)
    value = row.locator(".summary bdi", has_text=sentence)
    expect(value).to_have_text(f'"{sentence}"')
    assert value.evaluate(ENDS_LEFT)
    assert row.locator(".agent-text").evaluate(ENDS_LEFT)
    assert not row.locator(".summary bdi", has_text="id").evaluate(ENDS_LEFT)
    row.locator("a").click()
    assert page.locator(".agent-said .agent-text").evaluate(ENDS_LEFT)
    assert page.locator("#params .p-str", has_text=sentence).evaluate(ENDS_LEFT)
    assert not page.locator("#params .p-num").evaluate(ENDS_LEFT)  # 7 stays as it is
    page.click("#deny")
    expect(page.locator(".flash-ok")).to_contain_text("Decided: denied")
    assert future.result(WAIT_MS / 1000).status is ResultStatus.DENIED
    page.context.close()


def test_an_approval_withdrawn_by_a_revocation_shows_live(world: World, axe_source: str) -> None:
    """bob approved a two-person request; alice has the list and the request open, bob his
    page of it. `aegis token revoke bob` withdraws his approval: without a reload, alice's
    request page marks it withdrawn and its decision buttons go, her list says the request
    lost an approval, and bob's page signs him out. Both of alice's pages pass axe-core."""
    db = world.server.args[world.server.args.index("--db") + 1]
    bob_name = "bob-withdrawn"
    bob = create_token(db, bob_name, "reviewer")
    world.tokens[bob_name] = bob
    agent = {"Authorization": f"Bearer {world.tokens['support-bot']}"}
    asked = httpx.post(
        f"{world.server.url}/api/v1/approvals",
        json={
            "session_id": "s-withdrawn",
            "action": {"type": "close_account", "target": "crm-withdrawn", "params": {"id": 7}},
            "risk_level": "medium",
            "matched_rule": "accounts",
            "approvers": 2,
        },
        headers=agent,
        timeout=30,
    )
    assert asked.status_code == 201, asked.text
    request_id = asked.json()["id"]
    approved = httpx.post(
        f"{world.server.url}/api/v1/approvals/{request_id}/decision",
        json={"verdict": "approve"},
        headers={"Authorization": f"Bearer {bob}"},
        timeout=30,
    )
    assert approved.status_code == 200, approved.text
    pending = world.signed_in()
    expect(pending.locator("#live")).to_have_class("live on", timeout=WAIT_MS)
    row = world.row(pending, "crm-withdrawn")
    expect(row.locator(".approvals-line")).to_have_text("1 of 2 approvals")
    page = pending.context.new_page()
    page.goto(f"{world.server.url}/requests/{request_id}")
    expect(page.locator(".decisions li")).to_contain_text(bob_name)
    expect(page.locator("#approved-count")).to_have_text("1")
    expect(page.locator("#approve")).to_be_visible()
    his = world.signed_in(bob_name)
    his.goto(f"{world.server.url}/requests/{request_id}")
    expect(his.locator("#refusal")).to_be_visible()  # he approved it already
    for each in (pending, page, his):
        each.evaluate("window.__notReloaded = 7")

    revoked = aegis("token", "revoke", bob_name, "--db", db)
    assert request_id in revoked.stderr

    expect(page.locator("#gone")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#gone")).to_contain_text("withdrawn")
    expect(page.locator("#gone")).to_contain_text("0 of 2 approvals now count")
    expect(page.locator(".decisions li.withdrawn")).to_contain_text(bob_name)
    expect(page.locator("#approved-count")).to_have_text("0")
    expect(page.locator("#approve")).to_be_hidden()
    expect(page.locator("#deny")).to_be_hidden()
    expect(page.locator("#comment")).to_be_disabled()
    page.keyboard.press("a")  # the shortcut decides nothing either
    expect(row).to_have_class(re.compile(r"\bwithdrawn\b"), timeout=WAIT_MS)
    expect(row.locator(".approvals-line")).to_contain_text("0 of 2 approvals")
    expect(row.locator(".approvals-line")).to_contain_text("an approval was withdrawn")
    expect(his).to_have_url(re.compile(r"/signin"), timeout=WAIT_MS)
    for each in (pending, page):
        assert each.evaluate("window.__notReloaded") == 7
    page.screenshot(path=OUTPUT / "inbox-approval-withdrawn.png", full_page=True)
    pending.screenshot(path=OUTPUT / "inbox-list-withdrawn.png")
    assert axe_problems(page, axe_source) == []
    assert axe_problems(pending, axe_source) == []
    status = httpx.get(
        f"{world.server.url}/api/v1/approvals/{request_id}", headers=agent, timeout=30
    ).json()
    assert (status["status"], status["decisions"]) == ("pending", [])  # nothing was decided
    cancelled = httpx.post(
        f"{world.server.url}/api/v1/approvals/{request_id}/cancel", headers=agent, timeout=30
    )
    assert cancelled.status_code == 200, cancelled.text
    pending.context.close()
    his.context.close()


@pytest.fixture(scope="module")
def axe_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """axe-core from the npm registry, once for this module."""
    return install_axe(tmp_path_factory)
