"""`aegis token`, `aegis grants` and the checks `aegis serve` makes before it listens."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from cli_support import Invoke

from aegis.core.action import Action, action_digest
from aegis.core.approval_request import ApprovalRequest, Verdict, iso, request_digest
from aegis.core.risk import RiskLevel
from aegis.runtime.audit import AuditLogger
from aegis.stores.approvals import hash_token, new_request_id, open_approval_store


def test_token_create_prints_once_and_stores_a_hash(invoke: Invoke, tmp_path: Path) -> None:
    """The token goes to stdout alone; the database keeps only its hash."""
    db = tmp_path / "aegis.db"
    result = invoke(
        "token", "create", "alice", "--role", "reviewer", "--group", "finance", "--db", str(db)
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("aegis_")
    assert "shown only this once" in result.stderr
    raw = db.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("aegis.db-*"))
    assert token.encode() not in raw
    store = open_approval_store(str(db))
    try:
        info = store.token_by_hash(hash_token(token))
    finally:
        store.close()
    assert info is not None
    assert (info.name, info.role.value, info.groups) == ("alice", "reviewer", ("finance",))


def test_token_list_and_revoke(invoke: Invoke, tmp_path: Path) -> None:
    """List shows names, roles and states, never secrets; revoke ends a token once."""
    db = str(tmp_path / "aegis.db")
    secret = invoke(
        "token", "create", "bot", "--role", "agent", "--expires", "30d", "--db", db
    ).stdout.strip()
    listed = invoke("token", "list", "--db", db, "--format", "json")
    assert listed.exit_code == 0
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == "bot"
    assert entry["state"] == "active"
    assert entry["expires_at"] is not None
    assert secret not in listed.stdout
    assert invoke("token", "revoke", "bot", "--db", db).exit_code == 0
    again = invoke("token", "revoke", "bot", "--db", db)
    assert again.exit_code == 1
    assert "no active token named 'bot'" in again.stderr
    table = invoke("token", "list", "--db", db)
    assert "revoked" in table.stdout


def test_a_revoked_name_is_not_given_to_another_holder(invoke: Invoke, tmp_path: Path) -> None:
    """`token create alice` after `token revoke alice` exits 1 saying why; alice-2 is fine."""
    db = str(tmp_path / "aegis.db")
    made = invoke(
        "token", "create", "alice", "--role", "reviewer", "--group", "finance", "--db", db
    )
    assert made.exit_code == 0, made.output
    assert invoke("token", "revoke", "alice", "--db", db).exit_code == 0
    again = invoke("token", "create", "alice", "--role", "reviewer", "--group", "ops", "--db", db)
    assert again.exit_code == 1
    assert again.stdout == ""  # no secret printed for a token that was not made
    assert "was revoked" in again.stderr
    assert "alice-2" in again.stderr
    listed = json.loads(invoke("token", "list", "--db", db, "--format", "json").stdout)
    assert [(t["name"], t["state"], t["groups"]) for t in listed] == [
        ("alice", "revoked", ["finance"])
    ]
    assert invoke("token", "create", "alice-2", "--role", "reviewer", "--db", db).exit_code == 0


def test_token_create_refuses_a_taken_name_and_bad_input(invoke: Invoke, tmp_path: Path) -> None:
    """An active name cannot be created twice (exit 1); a bad role or expiry is a usage error."""
    db = str(tmp_path / "aegis.db")
    assert invoke("token", "create", "bot", "--role", "agent", "--db", db).exit_code == 0
    taken = invoke("token", "create", "bot", "--role", "agent", "--db", db)
    assert taken.exit_code == 1
    assert "another name" in taken.stderr
    assert invoke("token", "create", "x", "--role", "admin", "--db", db).exit_code == 2
    assert (
        invoke("token", "create", "x", "--role", "agent", "--expires", "soon", "--db", db).exit_code
        == 2
    )
    forever = invoke(
        "token", "create", "x", "--role", "agent", "--expires", "99999999d", "--db", db
    )
    assert forever.exit_code == 2
    assert "ten years" in forever.stderr


def test_a_metrics_token_is_made_for_a_scraper(invoke: Invoke, tmp_path: Path) -> None:
    """`--role metrics` makes a scraper's token; groups, which it has no use for, are refused."""
    db = str(tmp_path / "aegis.db")
    grouped = invoke(
        "token", "create", "prometheus", "--role", "metrics", "--group", "x", "--db", db
    )
    assert grouped.exit_code == 2
    assert "--group" in grouped.stderr
    assert grouped.stdout == ""
    made = invoke("token", "create", "prometheus", "--role", "metrics", "--db", db)
    assert made.exit_code == 0, made.output
    store = open_approval_store(db)
    try:
        info = store.token_by_hash(hash_token(made.stdout.strip()))
    finally:
        store.close()
    assert info is not None
    assert (info.name, info.role.value, info.groups) == ("prometheus", "metrics", ())
    listed = json.loads(invoke("token", "list", "--db", db, "--format", "json").stdout)
    assert [(t["name"], t["role"]) for t in listed] == [("prometheus", "metrics")]


def test_a_token_of_an_unknown_role_is_listed_marked(invoke: Invoke, tmp_path: Path) -> None:
    """A row whose role this version does not know (edited by hand) is listed, marked as such.

    Revoking it ends the grants it gave: whatever the role, its word must not outlive it."""
    db = tmp_path / "aegis.db"
    for name in ("alice", "bob"):
        assert invoke("token", "create", name, "--role", "reviewer", "--db", str(db)).exit_code == 0
    hers = _granted(str(db), by="alice")
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE aegis_tokens SET role = 'auditor' WHERE name = 'alice'")
    listed = invoke("token", "list", "--db", str(db), "--format", "json")
    assert listed.exit_code == 0, listed.output
    assert [(t["name"], t["role"], t["role_known"]) for t in json.loads(listed.stdout)] == [
        ("alice", "auditor", False),
        ("bob", "reviewer", True),
    ]
    table = invoke("token", "list", "--db", str(db))
    assert table.exit_code == 0, table.output
    assert "auditor (unknown)" in table.stdout
    assert "'alice'" in table.stderr  # and what to do about it
    revoked = invoke("token", "revoke", "alice", "--db", str(db))
    assert revoked.exit_code == 0, revoked.output
    assert hers in revoked.stderr


def test_token_list_needs_an_existing_database(invoke: Invoke, tmp_path: Path) -> None:
    """Listing tokens of a missing file says so instead of creating it."""
    missing = tmp_path / "nope.db"
    result = invoke("token", "list", "--db", str(missing))
    assert result.exit_code == 1
    assert "no database at" in result.stderr
    assert not missing.exists()


def _granted(
    db: str, reviewers: tuple[str, ...] = (), *, by: str = "alice", session: str = "s1"
) -> str:
    """A request (for ``reviewers``) approved ``by`` with a grant, in ``db``; the grant's id."""
    with AuditLogger(db) as audit:
        audit.head()
    store = open_approval_store(db)
    try:
        now = datetime.now(UTC)
        action = Action("refund", "billing", {"amount": 5})
        request = ApprovalRequest(
            id=new_request_id(),
            session_id=session,
            requester="bot",
            action=action,
            risk_level=RiskLevel.HIGH,
            matched_rule="refunds",
            reason="",
            approvers=1,
            reviewers=reviewers,
            created_at=now,
            expires_at=now + timedelta(hours=1),
            digest=request_digest(action, "bot"),
            action_digest=action_digest(action),
        )
        store.create_request(request, now)
        _, grant = store.decide(
            request.id, by, Verdict.APPROVE, comment="", grant_minutes=30, now=now
        )
    finally:
        store.close()
    assert grant is not None
    return grant.id


def test_grants_list_and_revoke(invoke: Invoke, tmp_path: Path) -> None:
    """Grants are listed while active; revoking one is audited and leaves it listed with --all."""
    db = str(tmp_path / "aegis.db")
    grant_id = _granted(db)
    listed = json.loads(invoke("grants", "list", "--db", db, "--format", "json").stdout)
    assert [g["id"] for g in listed] == [grant_id]
    assert listed[0]["granted_by"] == ["alice"]
    revoked = invoke("grants", "revoke", grant_id, "--db", db)
    assert revoked.exit_code == 0, revoked.output
    assert json.loads(invoke("grants", "list", "--db", db, "--format", "json").stdout) == []
    assert grant_id in invoke("grants", "list", "--all", "--db", db).stdout
    again = invoke("grants", "revoke", grant_id, "--db", db)
    assert again.exit_code == 1
    assert "no longer active" in again.stderr
    unknown = invoke("grants", "revoke", "grt_nope", "--db", db)
    assert unknown.exit_code == 1
    with AuditLogger(db) as audit:
        texts = [r["human_decision"] for r in audit.get_log("s1")]
    assert any(f"grant {grant_id} revoked by operator:" in t for t in texts)


def test_grants_revoke_stops_a_grant_given_for_a_group(invoke: Invoke, tmp_path: Path) -> None:
    """The operator is in no reviewer group, yet `aegis grants revoke` stops finance's grant:
    an operator's brake that worked only on grants open to anyone would not be one."""
    db = str(tmp_path / "aegis.db")
    grant_id = _granted(db, reviewers=("finance",))
    revoked = invoke("grants", "revoke", grant_id, "--db", db)
    assert revoked.exit_code == 0, revoked.output
    assert json.loads(invoke("grants", "list", "--db", db, "--format", "json").stdout) == []
    with AuditLogger(db) as audit:
        texts = [r["human_decision"] for r in audit.get_log("s1")]
    assert any(f"grant {grant_id} revoked by operator:" in t for t in texts)


def test_token_revoke_ends_the_grants_it_gave(invoke: Invoke, tmp_path: Path) -> None:
    """Revoking alice's token ends the grants she gave (audited, and said), not bob's: a
    grant keeps approving in its giver's name, and a revoked giver's word must not."""
    db = str(tmp_path / "aegis.db")
    for name in ("alice", "bob"):
        made = invoke("token", "create", name, "--role", "reviewer", "--group", "ops", "--db", db)
        assert made.exit_code == 0, made.output
    hers = _granted(db, ("ops",), by="alice", session="s1")
    his = _granted(db, ("ops",), by="bob", session="s2")
    revoked = invoke("token", "revoke", "alice", "--db", db)
    assert revoked.exit_code == 0, revoked.output
    assert hers in revoked.stderr
    listed = json.loads(invoke("grants", "list", "--db", db, "--format", "json").stdout)
    assert [g["id"] for g in listed] == [his]
    with AuditLogger(db) as audit:
        texts = [r["human_decision"] for r in audit.get_log("s1")]
    assert any(f"grant {hers} revoked by operator:" in t for t in texts)
    # A token tied to a person ends that person's grants at its issuer, not a namesake's.
    tied = ("--oidc-subject", "248289", "--oidc-issuer", "https://id.example.com")
    made = invoke("token", "create", "kim-cli", "--role", "reviewer", *tied, "--db", db)
    assert made.exit_code == 0, made.output
    kims = _granted(db, ("ops",), by="https://id.example.com#248289", session="s3")
    namesake = _granted(db, ("ops",), by="https://other.example.com#248289", session="s4")
    assert invoke("token", "revoke", "kim-cli", "--db", db).exit_code == 0
    listed = json.loads(invoke("grants", "list", "--db", db, "--format", "json").stdout)
    assert sorted(g["id"] for g in listed) == sorted([his, namesake])
    assert kims not in {g["id"] for g in listed}


def test_token_revoke_ends_a_grant_behind_a_thousand_newer_ones(
    invoke: Invoke, tmp_path: Path
) -> None:
    """However many grants others gave since, the revoked token's older grant ends too."""
    db = str(tmp_path / "aegis.db")
    made = invoke("token", "create", "alice", "--role", "reviewer", "--db", db)
    assert made.exit_code == 0, made.output
    hers = _granted(db, by="alice")
    with sqlite3.connect(db) as conn:  # bob's grants, given after hers
        columns = [row[1] for row in conn.execute("PRAGMA table_info(aegis_grants)")]
        kept = dict(
            zip(
                columns,
                conn.execute("SELECT * FROM aegis_grants WHERE id = ?", (hers,)).fetchone(),
                strict=True,
            )
        )
        later = iso(datetime.now(UTC) + timedelta(seconds=1))
        others = [
            {**kept, "id": f"grt_bob{n:04d}", "granted_by": '["bob"]', "created_at": later}
            for n in range(1000)
        ]
        conn.executemany(
            f"INSERT INTO aegis_grants ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})",
            [tuple(row[c] for c in columns) for row in others],
        )
    revoked = invoke("token", "revoke", "alice", "--db", db)
    assert revoked.exit_code == 0, revoked.output
    store = open_approval_store(db)
    try:
        grant = store.get_grant(hers)
        active = store.list_grants(datetime.now(UTC))
    finally:
        store.close()
    assert grant is not None
    assert grant.revoked_at is not None
    assert len(active) == 1000  # bob's stand


def test_serve_refuses_a_public_address_without_tls(invoke: Invoke, tmp_path: Path) -> None:
    """A non-loopback host needs TLS or --insecure-http; half a TLS pair is a usage error."""
    db = str(tmp_path / "aegis.db")
    public = invoke("serve", "--db", db, "--host", "0.0.0.0")
    assert public.exit_code == 2
    assert "not a loopback address" in public.stderr
    named = invoke("serve", "--db", db, "--host", "example.internal")
    assert named.exit_code == 2
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    half = invoke("serve", "--db", db, "--tls-cert", str(cert))
    assert half.exit_code == 2
    assert "both --tls-cert and --tls-key" in half.stderr
    assert invoke("serve", "--db", db, "--approval-ttl", "never").exit_code == 2
    assert not Path(db).exists()


def test_serve_on_a_taken_port_says_so(tmp_path: Path) -> None:
    """`aegis serve` on a port another process holds exits 1 and names the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *(sys.executable, "-m", "aegis", "serve", "--db", str(tmp_path / "a.db")),
                *("--port", str(port), "--log-level", "critical"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert f"could not listen on 127.0.0.1:{port}" in result.stderr


def test_grants_list_all_says_active_as_the_database_clock_does(
    invoke: Invoke, postgres_dsn: str
) -> None:
    """`aegis grants list --all` calls a grant active only while the store does: one the
    database server's clock says ended is "expired", though its end by the clock of the
    host that gave it is still ahead (a host running behind); and every grant is listed,
    not the newest thousand."""
    store = open_approval_store(postgres_dsn)
    try:
        ids = []
        for session in ("s1", "s2"):
            now = datetime.now(UTC)
            action = Action("refund", "billing", {"amount": 5})
            request = ApprovalRequest(
                id=new_request_id(),
                session_id=session,
                requester="bot",
                action=action,
                risk_level=RiskLevel.HIGH,
                matched_rule="refunds",
                reason="",
                approvers=1,
                reviewers=(),
                created_at=now,
                expires_at=now + timedelta(hours=1),
                digest=request_digest(action, "bot"),
                action_digest=action_digest(action),
            )
            store.create_request(request, now)
            _, grant = store.decide(
                request.id, "alice", Verdict.APPROVE, comment="", grant_minutes=30, now=now
            )
            assert grant is not None
            ids.append(grant.id)
    finally:
        store.close()
    ended, running = ids
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        # by the database's clock it ended a minute ago; by its giver's it runs 29 more
        conn.execute(
            "UPDATE aegis_grants SET db_expires_at = %s WHERE id = %s",
            (iso(datetime.now(UTC) - timedelta(minutes=1)), ended),
        )
        # a thousand older ones, long expired, behind the two
        conn.execute(
            "INSERT INTO aegis_grants (id, session_id, requester, action_type, action_target, "
            "matched_rule, granted_by, request_id, created_at, expires_at, approvers, "
            "reviewer_groups) SELECT 'grt_old' || n, 's0', 'bot', 'refund', 'billing', "
            "'refunds', '[\"bob\"]', 'apr_old', '2026-01-01T00:00:00.000000+00:00', "
            "'2026-01-01T01:00:00.000000+00:00', 1, '[]' FROM generate_series(1, 1000) AS n"
        )
    listed = invoke("grants", "list", "--all", "--db", postgres_dsn)
    assert listed.exit_code == 0, listed.output
    states = {line.split("\t")[0]: line.split("\t")[-1] for line in listed.stdout.splitlines()[1:]}
    assert (states[ended], states[running]) == ("expired", "active")
    assert len(states) == 1002
    active = invoke("grants", "list", "--db", postgres_dsn, "--format", "json")
    assert [g["id"] for g in json.loads(active.stdout)] == [running]
