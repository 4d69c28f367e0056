"""`aegis approvals` and `aegis serve`'s notifications, against the real service in a subprocess."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from serve_support import Server, aegis, create_token
from webhook_receiver import Receiver

from aegis.cli import cli
from aegis.server.notify import verify_signature

SECRET = "webhook-secret-for-tests"


class Service:
    """The running service, its tokens and its notification receivers."""

    def __init__(
        self,
        server: Server,
        tokens: dict[str, str],
        hook: Receiver,
        slack: Receiver,
        hanging: Receiver,
        *,
        db: Path,
    ) -> None:
        self.server = server
        self.db = db
        self.hanging = hanging
        self.url = server.url
        self.tokens = tokens
        self.hook = hook
        self.slack = slack

    def ask(self, action: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Open a request as the agent through the documented API."""
        body = {"session_id": "cli-tests", "action": action, "risk_level": "high", **fields}
        response = httpx.post(
            f"{self.url}/api/v1/approvals",
            json=body,
            headers={"Authorization": f"Bearer {self.tokens['bot']}"},
            timeout=5,
        )
        assert response.status_code == 201, response.text
        return dict(response.json())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`aegis serve` with a reviewer, an agent, a webhook and a Slack receiver."""
    folder = tmp_path_factory.mktemp("approvals-cli")
    db = folder / "aegis.db"
    tokens = {
        "alice": create_token(db, "alice", "reviewer"),
        "bob": create_token(db, "bob", "reviewer", ["finance"]),
        "bot": create_token(db, "bot", "agent"),
    }
    # a second webhook hangs on every delivery: nothing here may wait for it
    with Receiver() as hook, Receiver() as slack, Receiver(default="hang") as hanging:
        server = Server(
            db,
            "--webhook", hook.url, "--webhook", hanging.url,
            "--slack-webhook", slack.url,
            "--public-url", "https://aegis.example.com",
            log=folder / "serve.log",
            env={"AEGIS_WEBHOOK_SECRET": SECRET},
        )  # fmt: skip
        with server:
            yield Service(server, tokens, hook, slack, hanging, db=db)


@pytest.fixture
def run(service: Service, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run `aegis approvals ...` in-process as alice (unless a token is given)."""
    monkeypatch.delenv("AEGIS_TOKEN", raising=False)
    monkeypatch.delenv("AEGIS_URL", raising=False)

    def invoke(*args: str, token: str | None = "alice", url: str | None = None) -> Result:
        extra = ["--url", url or service.url]
        env = {} if token is None else {"AEGIS_TOKEN": service.tokens.get(token, token)}
        return CliRunner(env=env).invoke(cli, ["approvals", *args, *extra], catch_exceptions=False)

    return invoke


def refund(amount: int) -> dict[str, Any]:
    return {"type": "refund", "target": "billing", "params": {"amount": amount}, "description": ""}


def test_list_shows_pending_requests_as_table_and_json(service: Service, run: Any) -> None:
    """`list` shows a pending request in the table and as JSON, newest first."""
    first = service.ask(refund(101))
    second = service.ask(refund(102))
    table = run("list")
    assert table.exit_code == 0, table.output
    assert first["id"] in table.stdout
    assert "refund:billing" in table.stdout
    listed = json.loads(run("list", "--format", "json").stdout)
    ids = [item["id"] for item in listed]
    assert ids.index(second["id"]) < ids.index(first["id"])


def test_show_prints_params_and_rule(service: Service, run: Any) -> None:
    """`show` prints the action, params and rule; --format json is the API's object."""
    request = service.ask(refund(250), matched_rule="refunds", reason="money moves")
    text = run("show", request["id"])
    assert text.exit_code == 0
    assert '"amount": 250' in text.stdout
    assert "refunds" in text.stdout
    assert "money moves" in text.stdout
    shown = json.loads(run("show", request["id"], "--format", "json").stdout)
    assert shown["digest"] == request["digest"]


def test_approve_then_refused_a_second_time(service: Service, run: Any) -> None:
    """Approving works once (exit 0); a second decision gets the service's 409 (exit 1)."""
    request = service.ask(refund(300))
    done = run("approve", request["id"], "--comment", "checked")
    assert done.exit_code == 0, done.output
    assert f"{request['id']}: approved" in done.stdout
    again = run("approve", request["id"], token="bob")
    assert again.exit_code == 1
    assert "refused (409)" in again.stderr


def test_deny_with_comment_is_recorded(service: Service, run: Any) -> None:
    """`deny --comment` denies, and the comment is in the request's decisions."""
    request = service.ask(refund(400))
    assert run("deny", request["id"], "-m", "not this customer").exit_code == 0
    shown = json.loads(run("show", request["id"], "--format", "json").stdout)
    assert shown["status"] == "denied"
    assert shown["decisions"][0]["comment"] == "not this customer"
    assert shown["decisions"][0]["reviewer"] == "alice"


def test_refusals_exit_1_with_the_service_message(service: Service, run: Any) -> None:
    """Unknown id, a reviewer outside the group and an agent token are refused with exit 1."""
    unknown = run("show", "apr_nope")
    assert unknown.exit_code == 1
    assert "refused (404)" in unknown.stderr
    assert "apr_nope" in unknown.stderr
    finance_only = service.ask(refund(500), reviewers=["finance"])
    wrong_group = run("approve", finance_only["id"])
    assert wrong_group.exit_code == 1
    assert "finance" in wrong_group.stderr
    agent = run("list", token="bot")
    assert agent.exit_code == 1
    assert "reviewer token" in agent.stderr
    bad = run("list", token="aegis_not-a-token")
    assert bad.exit_code == 1
    assert "AEGIS_TOKEN" in bad.stderr


def test_usage_errors_exit_2(run: Any) -> None:
    """A missing token, a bad status and a grant of 0 minutes are usage errors."""
    missing = run("list", token=None)
    assert missing.exit_code == 2
    assert "AEGIS_TOKEN" in missing.stderr
    assert run("list", "--status", "maybe").exit_code == 2
    assert run("approve", "apr_x", "--grant-minutes", "0").exit_code == 2
    schemeless = run("list", url="localhost:8700")  # the scheme forgotten
    assert schemeless.exit_code == 2
    assert "http://localhost:8700" in schemeless.stderr


def test_unreachable_service_exits_1(run: Any) -> None:
    """A service that does not answer is one clear line and exit 1."""
    result = run("list", url="http://127.0.0.1:9")
    assert result.exit_code == 1
    assert "cannot reach the approval service" in result.stderr


def test_token_and_url_from_the_environment(service: Service) -> None:
    """AEGIS_TOKEN and AEGIS_URL give the token and the URL (a real subprocess)."""
    request = service.ask(refund(600))
    result = aegis(
        "approvals", "list", "--format", "json",
        env={"AEGIS_TOKEN": service.tokens["alice"], "AEGIS_URL": service.url},
    )  # fmt: skip
    assert request["id"] in [item["id"] for item in json.loads(result.stdout)]


def test_webhook_and_slack_hear_of_requests_and_decisions(service: Service, run: Any) -> None:
    """`aegis serve --webhook` posts signed events with the public link; Slack gets Block Kit."""
    request = service.ask(refund(700))
    assert run("approve", request["id"], "-m", "fine").exit_code == 0

    def events_for(receiver: Receiver, kind: str) -> list[Any]:
        found: list[Any] = []
        for _ in range(50):
            found = [
                d
                for d in receiver.deliveries
                if request["id"] in d.body.decode() and kind in d.body.decode()
            ]
            if found:
                return found
            receiver.wait_for(len(receiver.deliveries) + 1, timeout=5)
        return found

    (requested,) = events_for(service.hook, "approval.requested")
    (decided,) = events_for(service.hook, "approval.decided")
    for delivery in (requested, decided):
        assert verify_signature(
            SECRET,
            delivery.body,
            delivery.headers["X-Aegis-Signature"],
            delivery.headers["X-Aegis-Delivery"],
        )
    body = decided.json()
    assert body["link"] == f"https://aegis.example.com/requests/{request['id']}"
    assert body["reviewer"] == "alice"
    assert body["request"]["status"] == "approved"
    texts: list[str] = []
    for _ in range(100):  # the decision's Slack update may trail its webhook under load
        slack = [d.json() for d in service.slack.wait_for(2) if request["id"] in d.body.decode()]
        texts = [message["text"] for message in slack]
        if any(text.startswith("Approved by alice") for text in texts):
            break
        time.sleep(0.05)
    assert "Approval needed: refund on billing (risk HIGH, rule (no rule))" in texts[0]
    assert any(text.startswith("Approved by alice") for text in texts)


def test_a_withdrawal_by_aegis_token_revoke_reaches_the_webhooks(service: Service) -> None:
    """The command line has no webhooks: the running service tells them of its withdrawals.

    carol approves a two-person request and `aegis token revoke carol` (another
    process) withdraws it; the service's webhook and Slack hear of it, signed,
    with the request pending again.
    """
    name = "carol-" + secrets.token_hex(3)
    token = create_token(service.db, name, "reviewer")
    request = service.ask(refund(1800), approvers=2)
    approved = httpx.post(
        f"{service.url}/api/v1/approvals/{request['id']}/decision",
        json={"verdict": "approve"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert approved.status_code == 200, approved.text
    revoked = aegis("token", "revoke", name, "--db", str(service.db))
    assert request["id"] in revoked.stderr

    def withdrawn(receiver: Receiver) -> list[Any]:
        for _ in range(20):
            found = [
                d
                for d in receiver.deliveries
                if request["id"] in d.body.decode() and "withdrawn" in d.body.decode()
            ]
            if found:
                return found
            receiver.wait_for(len(receiver.deliveries) + 1, timeout=5)
        return []

    (hook,) = withdrawn(service.hook)
    assert hook.headers["X-Aegis-Event"] == "approval.withdrawn"
    assert verify_signature(
        SECRET, hook.body, hook.headers["X-Aegis-Signature"], hook.headers["X-Aegis-Delivery"]
    )
    body = hook.json()
    assert body["reviewer"] == name
    assert (body["request"]["status"], body["request"]["decisions"]) == ("pending", [])
    (slack,) = withdrawn(service.slack)
    assert slack.json()["text"].startswith(f"Approval by {name} withdrawn")


def test_dead_webhook_never_delays_the_service(service: Service) -> None:
    """With a webhook that hangs, requests and decisions still answer at once."""
    with httpx.Client(base_url=service.url, timeout=5) as client:
        for index in range(5):
            # a 5 s client timeout: each call would fail if it waited for the hanging receiver
            created = service.ask(refund(800 + index))
            decided = client.post(
                f"/api/v1/approvals/{created['id']}/decision",
                json={"verdict": "deny"},
                headers={"Authorization": f"Bearer {service.tokens['alice']}"},
            )
            assert decided.status_code == 200
    service.hanging.wait_for(1)  # the receiver was reached, and hangs


def test_serve_refuses_unsigned_or_malformed_webhooks(tmp_path: Path) -> None:
    """`aegis serve --webhook` without a secret, or a URL not http(s), is a usage error."""
    db = str(tmp_path / "aegis.db")
    runner = CliRunner()
    unsigned = runner.invoke(cli, ["serve", "--db", db, "--webhook", "http://127.0.0.1:9/x"])
    assert unsigned.exit_code == 2
    assert "AEGIS_WEBHOOK_SECRET" in unsigned.stderr
    malformed = runner.invoke(cli, ["serve", "--db", db, "--slack-webhook", "hooks.slack.com/x"])
    assert malformed.exit_code == 2
    assert "not an http:// or https:// URL" in malformed.stderr


def test_ctrl_c_stops_serve_cleanly(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) on `aegis serve` shuts it down with exit 0 and no 'Aborted!'."""
    import signal

    server = Server(tmp_path / "aegis.db", log=tmp_path / "serve.log")
    with server:
        assert server.process is not None
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(20) == 0
    output = (tmp_path / "serve.log").read_text(encoding="utf-8")
    assert "Aborted" not in output
    assert "Traceback" not in output
    assert "stopped" in output
