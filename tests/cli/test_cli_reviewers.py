"""`aegis reviewer revoke | reinstate | list` and `aegis token revoke` leave their trail records.

Every revocation and reinstatement is one audit record in the session
``aegis-operator``, naming the operator who ran it and whom it concerned,
whatever it withdrew: on SQLite and on the real PostgreSQL.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import pytest
from cli_support import Invoke

from aegis.runtime.audit import AuditLogger
from aegis.server.service import OPERATOR_SESSION

ISSUER = "https://id.example.com"
KIM = f"{ISSUER}#kim"


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "aegis.db")
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


def _operator_records(db: str) -> list[dict[str, Any]]:
    with AuditLogger(db) as audit:
        return list(audit.get_log(OPERATOR_SESSION))


def test_revocations_and_reinstatements_each_leave_a_record_naming_who_and_whom(
    invoke: Invoke, db: str
) -> None:
    """Nothing pending, nothing to withdraw: each command still leaves its record."""
    me = f"operator:{getpass.getuser()}"
    assert invoke("token", "create", "idle", "--role", "reviewer", "--db", db).exit_code == 0
    assert invoke("token", "revoke", "idle", "--db", db).exit_code == 0
    revoked = invoke("reviewer", "revoke", KIM, "--db", db)
    assert revoked.exit_code == 0, revoked.output
    assert "until reinstated" in revoked.output
    records = _operator_records(db)
    texts = [r["human_decision"] for r in records]
    assert len(texts) == 2, texts
    assert "token idle" in texts[0]
    assert me in texts[0]
    assert KIM in texts[1]
    assert me in texts[1]
    assert [r["action_type"] for r in records] == ["token_revoked", "reviewer_revoked"]
    assert records[1]["action_params"]["subject"] == KIM
    assert records[1]["action_params"]["by"] == me

    # The revocation sticks: no token may speak for kim, until she is reinstated.
    tied = ("token", "create", "kim-cli", "--role", "reviewer", "--oidc-subject", "kim",
            "--oidc-issuer", ISSUER, "--db", db)  # fmt: skip
    refused = invoke(*tied)
    assert refused.exit_code != 0
    assert "reinstate" in refused.output
    listed = invoke("reviewer", "list", "--db", db, "--format", "json")
    assert [(p["person"], p["revoked_by"]) for p in json.loads(listed.stdout)] == [(KIM, me)]

    back = invoke("reviewer", "reinstate", KIM, "--db", db)
    assert back.exit_code == 0, back.output
    again = invoke("reviewer", "reinstate", KIM, "--db", db)
    assert again.exit_code != 0
    assert "not revoked" in again.output
    assert json.loads(invoke("reviewer", "list", "--db", db, "--format", "json").stdout) == []
    assert invoke(*tied).exit_code == 0
    records = _operator_records(db)
    assert len(records) == 3
    assert records[2]["action_type"] == "reviewer_reinstated"
    assert KIM in records[2]["human_decision"]
    assert me in records[2]["human_decision"]
    with AuditLogger(db) as audit:
        assert audit.verify().ok
