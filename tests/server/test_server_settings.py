"""The approval service's settings: what it cannot use is a ConfigurationError naming it.

Through the public constructors (``open_service``, ``ApprovalService``,
``Inbox``, ``OidcSettings``, ``Notifications``); and ``aegis serve`` reports
each kind as one line with exit status 2, before anything listens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from aegis.cli import cli
from aegis.errors import ConfigurationError
from aegis.server import ApprovalService, open_service
from aegis.server.inbox import Inbox
from aegis.server.notify import Notification, Notifications
from aegis.server.oidc import OidcSettings
from aegis.stores.sqlite.approvals import SqliteApprovalStore


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"approval_ttl": 0}, "approval_ttl"),
        ({"approval_ttl": -5}, "approval_ttl"),
        ({"approval_ttl": float("nan")}, "approval_ttl"),
        ({"approval_ttl": "1h"}, "approval_ttl"),
        ({"max_wait": 0}, "max_wait"),
        ({"poll_interval": float("inf")}, "poll_interval"),
        ({"max_polls": 0}, "max_polls"),
        ({"max_polls": 2.5}, "max_polls"),
    ],
)
def test_service_settings(tmp_path: Path, options: dict[str, Any], names: str) -> None:
    """ApprovalService refuses a setting it cannot use, naming it."""
    store = SqliteApprovalStore(tmp_path / "aegis.db")
    try:
        with pytest.raises(ConfigurationError, match=names):
            ApprovalService(store, **options)
    finally:
        store.close()


def _open_files(path: Path) -> int:
    """How many file descriptors of this process point to ``path`` (Linux)."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += Path(os.readlink(fd)) == path
        except OSError:  # closed while listed
            continue
    return count


def test_open_service_closes_what_it_opened_on_a_bad_setting(tmp_path: Path) -> None:
    """A bad TTL leaves no connection to the database open behind the error."""
    db = tmp_path / "aegis.db"
    with pytest.raises(ConfigurationError, match="approval_ttl") as caught:
        open_service(str(db), approval_ttl=0)
    # the traceback keeps open_service's frame, and so anything it left open, alive
    assert caught.traceback
    assert db.exists()
    assert _open_files(db) == 0
    service = open_service(str(db), approval_ttl=60)
    assert _open_files(db) >= 1
    service.close()


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"issuer": "ftp://id.example.com"}, "issuer"),
        ({"issuer": "http://id.example.com"}, "https"),
        ({"issuer": "https://id.example.com/?tenant=1"}, "query"),
        ({"client_id": ""}, "client id"),
        ({"groups_claim": ""}, "groups claim"),
        ({"max_age": 0.5}, "--oidc-max-age"),
        ({"max_age": 9}, "at least 10 seconds"),
    ],
)
def test_openid_settings(settings: dict[str, Any], names: str) -> None:
    """OidcSettings refuses an issuer or client it cannot sign anyone in with."""
    given = {"issuer": "https://id.example.com", "client_id": "aegis", **settings}
    with pytest.raises(ConfigurationError, match=names):
        OidcSettings(**given)


@pytest.mark.parametrize(
    ("args", "options", "names"),
    [
        (["https://hooks.example.com/a"], {}, "AEGIS_WEBHOOK_SECRET"),
        (["ftp://hooks.example.com/a"], {"secret": "s"}, "not an http"),
        (["https://hooks.example.com:port/a"], {"secret": "s"}, "hooks.example.com"),
        ((), {"slack_webhooks": ["hooks.slack.com/x"]}, "not an http"),
        ((), {"attempts": 0}, "attempts"),
        ((), {"timeout": 0}, "timeout"),
    ],
)
def test_notification_settings(args: Any, options: dict[str, Any], names: str) -> None:
    """Notifications refuses a webhook it could not sign or reach, and bad retry settings."""
    with pytest.raises(ConfigurationError, match=names):
        Notifications(args, **options)


def test_an_unknown_event_type() -> None:
    """A Notification of a type no receiver knows is refused, naming the types."""
    with pytest.raises(ConfigurationError, match=r"approval\.requested"):
        Notification("approval.misplaced", {})


def test_an_inbox_nobody_can_sign_in_to(tmp_path: Path) -> None:
    """Token sign-in off without OpenID sign-in is refused."""
    store = SqliteApprovalStore(tmp_path / "aegis.db")
    try:
        with pytest.raises(ConfigurationError, match="OpenID"):
            Inbox(ApprovalService(store), token_signin=False)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--approval-ttl", "40d"], {}, "30 days"),
        (["--approval-ttl", "soon"], {}, "not a duration"),
        (["--webhook", "ftp://hooks.example.com/a"], {"AEGIS_WEBHOOK_SECRET": "s"}, "http"),
        (["--webhook", "https://hooks.example.com/a"], {}, "AEGIS_WEBHOOK_SECRET"),
        (["--oidc-issuer", "ftp://id.example.com", "--oidc-client-id", "a"], {}, "issuer"),
        (["--db", "mysql://db.example.com/aegis"], {}, "mysql"),
    ],
    ids=["ttl-too-long", "ttl-text", "webhook-url", "webhook-secret", "oidc-issuer", "store-url"],
)
def test_serve_reports_each_kind_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    said: str,
) -> None:
    """`aegis serve` with a setting it cannot use: exit 2, one error line, no traceback."""
    for name in ("AEGIS_DB", "AEGIS_SCHEMA", "AEGIS_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    given = args if "--db" in args else ["--db", str(tmp_path / "aegis.db"), *args]
    result = CliRunner().invoke(cli, ["serve", "--port", "0", *given], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert said in errors[0]
    assert "Traceback" not in result.stderr
