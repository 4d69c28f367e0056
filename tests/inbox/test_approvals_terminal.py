"""`aegis approvals` as a reviewer reads it: 80 columns, why and summary, id prefixes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shlex
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from serve_support import Server, create_token

from aegis.core.action import Action, action_digest
from aegis.core.approval_request import ApprovalRequest, request_digest
from aegis.core.explain import Why
from aegis.core.risk import RiskLevel
from aegis.stores.approvals import open_approval_store

WHY = {
    "rule": "big-refunds",
    "description": "Refunds above 500 need a person",
    "conditions": ["amount 1,299 > 500"],
    "reason": "",
}
#: two ids that share their first 6 digits, to be told apart only by more
TWINS = ("apr_abcdef000000000000000001", "apr_abcdef111111111111111112")


class Setup:
    """The running service, the reviewer's token and the requests filed."""

    def __init__(self, server: Server, token: str) -> None:
        self.server = server
        self.token = token
        self.ids: list[str] = []


def _stored(request_id: str, session: str) -> ApprovalRequest:
    action = Action("refund", "billing", {"amount": 42, "order": session})
    now = datetime.now(UTC)
    return ApprovalRequest(
        id=request_id,
        session_id=session,
        requester="bot",
        action=action,
        risk_level=RiskLevel.MEDIUM,
        matched_rule="refunds",
        reason="",
        approvers=1,
        reviewers=(),
        created_at=now - timedelta(minutes=5),
        expires_at=now + timedelta(hours=1),
        digest=request_digest(action, "bot"),
        action_digest=action_digest(action),
        why=Why("refunds", "every refund"),
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """`aegis serve` with three refunds on billing that differ only in their params."""
    folder = tmp_path_factory.mktemp("terminal")
    db = folder / "aegis.db"
    token = create_token(db, "alice", "reviewer")
    agent = create_token(db, "bot", "agent")
    store = open_approval_store(str(db))
    try:
        for number, request_id in enumerate(TWINS):
            store.create_request(_stored(request_id, f"twin-{number}"), datetime.now(UTC))
    finally:
        store.close()
    with Server(db) as server:
        made = Setup(server, token)
        for number, (amount, note) in enumerate(
            [(1299, "customer c-17 was charged twice for order 5521, refund the second"),
             (2400, "order 9 never arrived"),
             (900, "")]
        ):  # fmt: skip
            body = {
                "session_id": f"s{number}",
                "action": {
                    "type": "refund",
                    "target": "billing",
                    "params": {"amount": amount, "customer": f"c-{number}", "currency": "EUR",
                               "lines": [1, 2, 3]},
                    "description": note,
                },
                "risk_level": "critical" if amount > 2000 else "high",
                "matched_rule": "big-refunds",
                "why": {**WHY, "conditions": [f"amount {amount:,} > 500"]},
            }  # fmt: skip
            answer = httpx.post(
                f"{server.url}/api/v1/approvals",
                json=body,
                headers={"Authorization": f"Bearer {agent}"},
                timeout=10,
            )
            assert answer.status_code == 201, answer.text
            made.ids.append(answer.json()["id"])
        yield made


def _env(setup: Setup, columns: int) -> dict[str, str]:
    return {
        **os.environ,
        "AEGIS_TOKEN": setup.token,
        "AEGIS_URL": setup.server.url,
        "NO_COLOR": "1",
        "COLUMNS": str(columns),
        "LINES": "50",
        "TERM": "xterm",
    }


def on_terminal(setup: Setup, *args: str, columns: int = 80) -> tuple[int, str, str]:
    """Run the CLI on a pseudo-terminal ``columns`` wide; exit status, output, stderr."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "aegis", *args],
        stdout=follower,
        stderr=subprocess.PIPE,
        env=_env(setup, columns),
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    _, err = process.communicate(timeout=60)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    return process.returncode, text, err.decode("utf-8", "replace")


def piped(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with its output piped."""
    return subprocess.run(
        [sys.executable, "-m", "aegis", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(setup, 80),
        check=False,
    )


def test_list_fits_80_columns_with_why_summary_and_whole_short_ids(setup: Setup) -> None:
    """At 80 columns every line fits, each row has an accepted id, its summary and why."""
    status, out, err = on_terminal(setup, "approvals", "list")
    assert status == 0, err
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in out.splitlines()]
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    assert "5 pending requests" in out
    for request_id in setup.ids:
        shown = re.search(re.escape(request_id[:12]) + r"[0-9a-f]*", out)
        assert shown is not None, out
        assert request_id.startswith(shown.group())
    # the twins share 6 digits: shown with enough to tell them apart
    assert "apr_abcdef00" in out
    assert "apr_abcdef11" in out
    for amount in ("1,299", "2,400", "900"):
        assert f"amount={amount}" in out
        assert f"amount {amount} > 500" in out
    assert "agent wrote: “customer" in out
    assert "CRITICAL" in out


def test_list_wide_shows_whole_ids(setup: Setup) -> None:
    """On a wide terminal the ids are shown whole."""
    status, out, err = on_terminal(setup, "approvals", "list", columns=160)
    assert status == 0, err
    for request_id in setup.ids:
        assert request_id in out


def test_list_sorts_by_risk_and_filters_by_agent(setup: Setup) -> None:
    """--sort risk puts the critical refund first; --agent keeps that agent's requests."""
    listed = json.loads(
        piped(setup, "approvals", "list", "--sort", "risk", "--format", "json").stdout
    )
    assert [r["risk_level"] for r in listed][:3] == ["critical", "high", "high"]
    nobody = piped(setup, "approvals", "list", "--agent", "someone-else", "--format", "json")
    assert json.loads(nobody.stdout) == []


def test_list_filters_by_risk_and_rule_on_the_service_and_pages_with_them(setup: Setup) -> None:
    """--risk and --rule are asked of the service; the next-page command keeps them and --sort."""
    critical = json.loads(
        piped(setup, "approvals", "list", "--risk", "critical", "--format", "json").stdout
    )
    assert [r["id"] for r in critical] == [setup.ids[1]]
    several = piped(setup, "approvals", "list", "--risk", "HIGH", "--risk", "critical",
                    "--rule", "big-refunds", "--sort", "expiring", "--limit", "1")  # fmt: skip
    assert several.returncode == 0, several.stderr
    assert "2 more after these" in several.stderr
    command = several.stderr.split("the next page: ", 1)[1].strip()
    assert "--sort expiring --risk critical --risk high --rule big-refunds --before " in command
    second = piped(setup, *shlex.split(command)[1:], "--format", "json")
    assert second.returncode == 0, second.stderr
    assert "1 more after these" in second.stderr
    third = piped(setup, *shlex.split(second.stderr.split("the next page: ", 1)[1])[1:],
                  "--format", "json")  # fmt: skip
    first = piped(setup, *several.args[3:], "--format", "json")
    pages = [json.loads(p.stdout) for p in (first, second, third)]
    assert [len(page) for page in pages] == [1, 1, 1]
    assert sorted(page[0]["id"] for page in pages) == sorted(setup.ids)
    # on a terminal: the count is of every request matching, and says so
    status, out, _ = on_terminal(setup, "approvals", "list", "--rule", "refunds")
    assert status == 0
    assert "2 pending requests matching the filters; 2 shown" in out
    status, out, _ = on_terminal(setup, "approvals", "list", "--risk", "critical")
    assert status == 0
    assert "1 pending request matching the filters; 1 shown" in out
    bad = piped(setup, "approvals", "list", "--risk", "severe")
    assert bad.returncode == 2
    assert "--risk" in bad.stderr


def test_piped_list_carries_summary_and_why(setup: Setup) -> None:
    """Piped, the list keeps whole ids and adds the summary and why columns."""
    done = piped(setup, "approvals", "list")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split("\t")[-2:] == ["summary", "why"]
    assert any(
        r.startswith(setup.ids[0]) and "amount=1,299" in r and "amount 1,299 > 500" in r
        for r in rows
    )


@pytest.mark.parametrize("cut", [12, 8])
def test_show_accepts_an_unambiguous_start_of_an_id(setup: Setup, cut: int) -> None:
    """A start of an id (with or without apr_) shows that request, with its why."""
    request_id = setup.ids[0]
    prefix = request_id[:cut] if cut > 8 else request_id[4 : 4 + cut]
    status, out, err = on_terminal(setup, "approvals", "show", prefix)
    assert status == 0, err
    assert request_id in out
    assert "Refunds above 500 need a person" in out
    assert "matched:     amount 1,299 > 500" in out
    assert "agent wrote:" in out


def test_an_ambiguous_start_says_so_and_changes_nothing(setup: Setup) -> None:
    """A start two ids share is refused as ambiguous, naming both; nothing is decided."""
    done = piped(setup, "approvals", "approve", "apr_abcdef")
    assert done.returncode == 2
    assert "ambiguous" in done.stderr
    assert TWINS[0] in done.stderr
    assert TWINS[1] in done.stderr
    for twin in TWINS:
        shown = json.loads(piped(setup, "approvals", "show", twin, "--format", "json").stdout)
        assert shown["status"] == "pending"
    approved = piped(setup, "approvals", "approve", "apr_abcdef0")
    assert approved.returncode == 0, approved.stderr
    assert TWINS[0] in approved.stdout


def test_an_unknown_start_is_a_clear_refusal(setup: Setup) -> None:
    """A start no id has is exit 1 with a line saying so, as is too short a start."""
    unknown = piped(setup, "approvals", "show", "apr_ffffffff")
    assert unknown.returncode == 1
    assert "no request id starts with apr_ffffffff" in unknown.stderr
    short = piped(setup, "approvals", "show", "ab")
    assert short.returncode == 1
    assert "404" in short.stderr


def test_help_names_ids_that_are_accepted(setup: Setup) -> None:
    """The ids in the help are of the form the commands accept."""
    done = piped(setup, "approvals", "--help")
    examples = re.findall(r"aegis approvals (?:approve|show|deny) (\S+)", done.stdout)
    assert examples
    for example in examples:
        assert re.fullmatch(r"(?:apr_)?[0-9a-f]{4,24}", example), example
        # taken as the start of an id and looked up, not refused as malformed
        looked_up = piped(setup, "approvals", "show", example)
        assert looked_up.returncode == 1, looked_up.stderr
        start = "apr_" + example.removeprefix("apr_")
        assert f"no request id starts with {start}" in looked_up.stderr
