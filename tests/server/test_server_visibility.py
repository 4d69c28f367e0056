"""Reviewers see only the requests their groups may decide, however they look.

A real `aegis serve` on a loopback port, an agent's token and reviewers of
two groups: finance (alice) and ops (carol). Each asks the same service
through every door a reviewer has: the JSON API (list, count, one by id,
each sort and status), `aegis approvals list|show`, the inbox's pages, its
live rows and its server-sent events, and grants. A request naming no
group is anyone's to decide, so everyone sees it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from service_support import Service, add_tokens


@dataclass
class World:
    """The service, and one pending request per audience: finance, ops, anyone."""

    service: Service
    finance: str
    ops: str
    anyone: str
    finance_done: str  # approved, with a grant
    finance_grant: str

    def api(self, who: str) -> httpx.Client:
        """An API client holding ``who``'s token."""
        return httpx.Client(
            base_url=self.service.url,
            headers={"Authorization": f"Bearer {who}-secret"},
            timeout=20,
        )


def _ask(client: httpx.Client, action_type: str, groups: list[str], risk: str) -> str:
    body = {
        "session_id": "s-" + secrets.token_hex(4),
        "action": {"type": action_type, "target": "crm", "params": {"n": 1}},
        "risk_level": risk,
        "matched_rule": action_type,
        "reviewers": groups,
    }
    answer = client.post("/api/v1/approvals", json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Three pending requests and one finance grant on a fresh service."""
    folder = tmp_path_factory.mktemp("visibility")
    db = str(folder / "aegis.db")
    add_tokens(db)
    service = Service(db, folder).start()
    try:
        with httpx.Client(
            base_url=service.url, headers={"Authorization": "Bearer bot-secret"}, timeout=20
        ) as bot:
            granted = _ask(bot, "pay_invoice", ["finance"], "medium")
            finance = _ask(bot, "pay_salary", ["finance"], "critical")
            ops = _ask(bot, "restart_db", ["ops"], "high")
            anyone = _ask(bot, "read_report", [], "low")
        with httpx.Client(
            base_url=service.url, headers={"Authorization": "Bearer alice-secret"}, timeout=20
        ) as alice:
            given = alice.post(
                f"/api/v1/approvals/{granted}/decision",
                json={"verdict": "approve", "grant_minutes": 30},
            )
            assert given.status_code == 200, given.text
            grant = str(given.json()["granted"])
        yield World(service, finance, ops, anyone, granted, grant)
    finally:
        service.stop()


# ------------------------------------------------------------------ the JSON API


@pytest.mark.parametrize("sort", ["newest", "expiring", "risk"])
@pytest.mark.parametrize("status", ["pending", "all"])
def test_api_list_shows_only_your_groups_requests(world: World, sort: str, status: str) -> None:
    """Alice (finance) lists finance's and open requests, Carol (ops) ops' and open; true totals."""
    for who, mine, theirs in (
        ("alice", world.finance, world.ops),
        ("carol", world.ops, world.finance),
    ):
        with world.api(who) as client:
            answer = client.get("/api/v1/approvals", params={"status": status, "sort": sort})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        ids = [r["id"] for r in body["approvals"]]
        assert mine in ids
        assert world.anyone in ids
        assert theirs not in ids
        assert body["total"] == len(ids)
        assert body["more"] == 0


def test_api_list_pages_count_only_your_groups(world: World) -> None:
    """Paging one at a time, Carol's pages and their counts never reach finance's request."""
    seen: list[str] = []
    before: str | None = None
    with world.api("carol") as client:
        while True:
            params: dict[str, Any] = {"status": "all", "limit": 1}
            if before:
                params["before"] = before
            body = client.get("/api/v1/approvals", params=params).json()
            seen += [r["id"] for r in body["approvals"]]
            assert body["more"] + len(seen) == body["total"]
            before = body["next"]
            if not before:
                break
    assert sorted(seen) == sorted([world.ops, world.anyone])


def test_api_get_by_id_refuses_another_groups_request(world: World) -> None:
    """Carol asking for finance's request by id is refused (403) and learns nothing of it."""
    with world.api("carol") as client:
        refused = client.get(f"/api/v1/approvals/{world.finance}")
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "wrong_group"
        assert "pay_salary" not in refused.text
        assert client.get(f"/api/v1/approvals/{world.ops}").status_code == 200
        assert client.get(f"/api/v1/approvals/{world.anyone}").status_code == 200
    with world.api("alice") as client:
        assert client.get(f"/api/v1/approvals/{world.finance}").status_code == 200
        assert client.get(f"/api/v1/approvals/{world.ops}").status_code == 403


def test_api_grants_show_only_your_groups(world: World) -> None:
    """Finance's grant is listed to Alice, not to Carol, and Carol cannot revoke it."""
    with world.api("alice") as client:
        mine = client.get("/api/v1/grants").json()["grants"]
    assert world.finance_grant in [g["id"] for g in mine]
    with world.api("carol") as client:
        theirs = client.get("/api/v1/grants", params={"all": "true"}).json()["grants"]
        assert world.finance_grant not in [g["id"] for g in theirs]
        revoke = client.post(f"/api/v1/grants/{world.finance_grant}/revoke")
        assert revoke.status_code == 403, revoke.text
    with world.api("alice") as client:
        still = client.get("/api/v1/grants").json()["grants"]
    assert world.finance_grant in [g["id"] for g in still]


# ------------------------------------------------------------------ the command line


def _cli(world: World, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AEGIS_TOKEN": f"{who}-secret",
        "AEGIS_URL": world.service.url,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "aegis", "approvals", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_list_and_show_keep_to_your_groups(world: World) -> None:
    """`aegis approvals list` for Carol omits finance's request; `show` of it is refused."""
    listed = _cli(world, "carol", "list", "--status", "all", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    ids = [r["id"] for r in json.loads(listed.stdout)]
    assert world.ops in ids
    assert world.finance not in ids
    shown = _cli(world, "carol", "show", world.finance)
    assert shown.returncode != 0
    assert "pay_salary" not in shown.stdout
    prefix = _cli(world, "carol", "show", world.finance[:12])
    assert prefix.returncode != 0
    assert "pay_salary" not in prefix.stdout
    own = _cli(world, "alice", "show", world.finance)
    assert own.returncode == 0, own.stderr
    assert "pay_salary" in own.stdout


# ------------------------------------------------------------------ the inbox


@contextlib.contextmanager
def _signed_in(world: World, who: str) -> Iterator[httpx.Client]:
    """A browser-like client signed in to the inbox with ``who``'s token."""
    with httpx.Client(base_url=world.service.url, timeout=20) as client:
        _sign_in(client, world, who)
        yield client


def _sign_in(client: httpx.Client, world: World, who: str) -> None:
    form = client.get("/signin").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    done = client.post(
        "/signin",
        data={"token": f"{who}-secret", "csrf": csrf.group(1)},
        headers={"Origin": world.service.url},
    )
    assert done.status_code == 303, done.text


def _first_event(client: httpx.Client) -> dict[str, Any]:
    """The first ``pending`` event of the live list's stream."""
    with client.stream("GET", "/inbox/events") as stream:
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "pending":
                return dict(json.loads(line.removeprefix("data: ")))
    raise AssertionError("the stream ended without a pending event")


def test_inbox_keeps_to_your_groups_everywhere(world: World) -> None:
    """Carol's Pending, live rows, events, History and request pages never show finance's."""
    with _signed_in(world, "carol") as carol:
        pending = carol.get("/").text
        assert world.ops in pending
        assert world.finance not in pending
        rows = carol.get("/inbox/pending-rows")
        assert world.ops in rows.text
        assert world.finance not in rows.text
        assert rows.headers["X-Pending-Total"] == "2"
        event = _first_event(carol)
        assert sorted(event["ids"]) == sorted([world.ops, world.anyone])
        assert event["total"] == 2
        history = carol.get("/history", params={"status": "all"}).text
        assert world.finance_done not in history
        page = carol.get(f"/requests/{world.finance}")
        assert page.status_code == 403
        assert "pay_salary" not in page.text
        assert carol.get(f"/requests/{world.ops}").status_code == 200
    with _signed_in(world, "alice") as alice:
        assert world.finance in alice.get("/").text
        assert alice.get(f"/requests/{world.finance}").status_code == 200
        assert world.finance_done in alice.get("/history", params={"status": "all"}).text
