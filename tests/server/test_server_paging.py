"""Lists say how many more requests there are, and reviewers can page to them (a real serve)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from service_support import Service, add_tokens

from aegis.core.action import Action, action_digest
from aegis.core.approval_request import ApprovalRequest, request_digest
from aegis.core.risk import RiskLevel
from aegis.stores.approvals import new_request_id, open_approval_store

REVIEWER = {"Authorization": "Bearer alice-secret"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`aegis serve` holding 507 pending requests, filed a second apart."""
    root = tmp_path_factory.mktemp("paging")
    db = str(root / "aegis.db")
    add_tokens(db)
    store = open_approval_store(db)
    start = datetime.now(UTC) - timedelta(hours=1)
    try:
        for number in range(507):
            action = Action("refund", "billing", {"n": number})
            store.create_request(
                ApprovalRequest(
                    id=new_request_id(),
                    session_id=uuid.uuid4().hex,
                    requester="bot",
                    action=action,
                    risk_level=RiskLevel.HIGH,
                    matched_rule="refunds",
                    reason="",
                    approvers=1,
                    reviewers=(),
                    created_at=start + timedelta(seconds=number),
                    expires_at=start + timedelta(days=2),
                    digest=request_digest(action, "bot"),
                    action_digest=action_digest(action),
                ),
                start + timedelta(seconds=number),
            )
    finally:
        store.close()
    service = Service(db, root).start()
    yield service
    service.stop()


def test_the_api_pages_through_every_request_once(served: Service) -> None:
    """Pages of 200 say how many more follow; following `next` lists each request exactly once."""
    seen: list[int] = []
    params: dict[str, str] = {"limit": "200"}
    mores = []
    while True:
        page = httpx.get(
            f"{served.url}/api/v1/approvals", params=params, headers=REVIEWER, timeout=10
        ).json()
        seen += [r["action"]["params"]["n"] for r in page["approvals"]]
        mores.append(page["more"])
        if page["next"] is None:
            break
        params = {"limit": "200", "before": page["next"]}
    assert mores == [307, 107, 0]
    assert seen == list(range(506, -1, -1))


def test_a_bad_cursor_is_a_422(served: Service) -> None:
    """A `before` that is not a page's `next` is refused with a 422."""
    answer = httpx.get(
        f"{served.url}/api/v1/approvals", params={"before": "x"}, headers=REVIEWER, timeout=10
    )
    assert answer.status_code == 422


def test_the_cli_says_how_many_more_and_how_to_see_them(served: Service) -> None:
    """`aegis approvals list --limit 5` names the 502 others and the command for the next page."""
    env = {**os.environ, "AEGIS_TOKEN": "alice-secret", "AEGIS_URL": served.url}
    first = subprocess.run(
        [sys.executable, "-m", "aegis", "approvals", "list", "--limit", "5"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    assert len(first.stdout.strip().splitlines()) == 1 + 5
    assert "502 more" in first.stderr
    found = re.search(r"--before (\S+)", first.stderr)
    assert found
    second = subprocess.run(
        [sys.executable, "-m", "aegis", "approvals", "list", "--limit", "5",
         "--before", found.group(1).strip("'"), "--format", "json"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    assert [r["action"]["params"]["n"] for r in json.loads(second.stdout)] == [
        501,
        500,
        499,
        498,
        497,
    ]
    assert "497 more" in second.stderr


def test_the_inbox_says_how_many_more_are_pending(served: Service) -> None:
    """The inbox's pending page shows 500, counts 507, and says 7 more are older, linked."""
    with httpx.Client(base_url=served.url) as browser:
        nonce = re.search(r'name="csrf" value="([^"]+)"', browser.get("/signin").text)
        assert nonce is not None
        browser.post("/signin", data={"token": "alice-secret", "csrf": nonce.group(1)})
        page = browser.get("/")
        assert "7 more pending" in page.text
        # the count in the menu and above the list is every pending request, not the page's
        assert '<span class="count" id="pending-count">507</span>' in page.text
        assert "507 pending in all" in page.text
        link = re.search(r'<a href="(/\?before=[^"]+)">Older requests</a>', page.text)
        assert link
        older = browser.get(link.group(1).replace("&amp;", "&"))
    assert older.status_code == 200
    rows = older.text.split('id="pending-rows"', 1)[1].split(">", 1)[1].split("</tbody>", 1)[0]
    assert rows.count("<tr") == 7
    assert "more pending" not in older.text
