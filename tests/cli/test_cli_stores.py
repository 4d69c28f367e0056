"""Every command with --db opens it through the one opener: --schema, no odd schemes, no leaks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from cli_support import Invoke

from aegis import Action, AuditLogger, Policy, Runtime
from aegis.core.approval_request import NewRequest, Role, Verdict
from aegis.core.risk import RiskLevel
from aegis.server import open_service
from aegis.server.service import Principal
from aegis.stores import open_stores
from aegis.stores.approvals import hash_token

BAD_ESCAPE_DSN = "postgresql://app:Xk%zzq-5150@127.0.0.1:1/aegis"


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    """A schema name of the test database (not on the DSN's search_path), dropped afterwards."""
    name = f"aegis_cli_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _write_trail(dsn: str, schema: str) -> None:
    async def run() -> None:
        policy = Policy.from_dict({"rules": [{"name": "all", "match": {"type": "*"}}]})
        async with Runtime(
            executor=lambda a: "ok",
            policy=policy,
            audit_logger=AuditLogger(dsn, schema=schema),
            session_id="in-schema",
        ) as runtime:
            await runtime.run_one(Action("send_email", "smtp"))

    asyncio.run(run())


def test_audit_commands_read_the_trail_of_the_named_schema(
    invoke: Invoke, postgres_dsn: str, schema: str
) -> None:
    """`aegis audit list` and `verify` take --schema; without it they look elsewhere."""
    _write_trail(postgres_dsn, schema)
    listed = invoke("audit", "list", "--db", postgres_dsn, "--schema", schema, "--format", "json")
    assert listed.exit_code == 0, listed.output
    assert "in-schema" in listed.stdout
    verified = invoke("audit", "verify", "--db", postgres_dsn, "--schema", schema)
    assert verified.exit_code == 0, verified.output
    elsewhere = invoke("audit", "list", "--db", postgres_dsn)
    assert elsewhere.exit_code != 0  # the search_path's schema holds no trail
    assert "in-schema" not in elsewhere.stdout
    assert "--schema" in elsewhere.stderr  # the fix is named


def test_token_commands_take_a_schema(invoke: Invoke, postgres_dsn: str, schema: str) -> None:
    """`aegis token create --schema S` keeps the token beside the trail in S."""
    made = invoke(
        "token", "create", "alice", "--role", "reviewer", "--db", postgres_dsn, "--schema", schema
    )
    assert made.exit_code == 0, made.output
    with open_stores(postgres_dsn, schema=schema) as stores:
        info = stores.approvals.token_by_hash(hash_token(made.stdout.strip()))
    assert info is not None
    assert info.name == "alice"
    assert f"schema {schema!r}" in made.stderr  # new tables there: said out loud
    assert f"--schema {schema}" in made.stderr
    listed = invoke("token", "list", "--db", postgres_dsn, "--schema", schema)
    assert "alice" in listed.stdout
    again = invoke("token", "create", "bob", "--role", "agent", "--db", postgres_dsn)
    assert "created" in again.stderr  # the DSN's own schema had no approval tables either


def test_token_list_never_creates_tables_in_a_mistyped_schema(
    invoke: Invoke, postgres_dsn: str, schema: str
) -> None:
    """`aegis token list --schema TYPO` is an error; no schema or table appears."""
    result = invoke("token", "list", "--db", postgres_dsn, "--schema", schema)
    assert result.exit_code != 0
    assert schema in result.output
    with psycopg.connect(postgres_dsn) as conn:
        found = conn.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()
    assert found == (None,)


@pytest.mark.parametrize(
    "args",
    [
        ("audit", "verify", "--db", BAD_ESCAPE_DSN),
        ("audit", "list", "--db", BAD_ESCAPE_DSN),
        ("replay", "POLICY", "--db", BAD_ESCAPE_DSN),
        ("token", "list", "--db", BAD_ESCAPE_DSN),
    ],
)
def test_a_bad_percent_escape_in_a_password_never_reaches_the_terminal(
    invoke: Invoke, policy_path: Path, args: tuple[str, ...]
) -> None:
    """A DSN whose password holds '%zz' is refused by every command with the password masked."""
    result = invoke(*(str(policy_path) if arg == "POLICY" else arg for arg in args))
    assert result.exit_code != 0
    assert "zzq" not in result.output
    assert "app:***@127.0.0.1:1/aegis" in result.output


def test_mcp_proxy_never_shows_a_password_with_a_bad_percent_escape(policy_path: Path) -> None:
    """`aegis mcp-proxy` with '%zz' in its DSN's password (in AEGIS_DB) exits with it masked.

    (On the command line, a --db holding a password is refused before it is read.)
    """
    proxy = subprocess.run(
        [
            *(sys.executable, "-m", "aegis", "mcp-proxy", "--policy", str(policy_path)),
            *("--", sys.executable, "-c", "pass"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "AEGIS_DB": BAD_ESCAPE_DSN},
        check=False,
    )
    assert proxy.returncode != 0
    assert "zzq" not in proxy.stdout + proxy.stderr
    assert "app:***@127.0.0.1:1/aegis" in proxy.stderr


@pytest.mark.parametrize(
    "args",
    [("audit", "list"), ("token", "list"), ("token", "create", "x", "--role", "agent")],
)
def test_an_unknown_scheme_is_refused_not_taken_for_a_file(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    """`--db mysql://...` names no store Aegis has: a clear error, and no file is created."""
    monkeypatch.chdir(tmp_path)
    result = invoke(*args, "--db", "mysql://app@db/aegis")
    assert result.exit_code != 0
    assert "mysql" in result.output
    assert "no audit database at" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_schema_with_a_sqlite_file_is_refused(invoke: Invoke, audit_db: Path) -> None:
    """--schema names a PostgreSQL schema: with a SQLite --db it is an error, not ignored."""
    result = invoke("audit", "list", "--db", str(audit_db), "--schema", "agents")
    assert result.exit_code != 0
    assert "schema" in result.output


def test_token_create_in_an_empty_folder_says_where_it_created_the_database(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token command never creates a store unnoticed: the new file's full path is printed."""
    monkeypatch.chdir(tmp_path)
    made = invoke("token", "create", "bot", "--role", "agent")
    assert made.exit_code == 0, made.output
    created = tmp_path / "aegis_audit.db"
    assert created.exists()
    assert str(created) in made.stderr
    assert "aegis serve --db" in made.stderr
    assert made.stdout.strip().startswith("aegis_")  # stdout stays the token alone
    again = invoke("token", "create", "alice", "--role", "reviewer")
    assert again.exit_code == 0
    assert "created a new database" not in again.stderr  # only when it was created


def test_token_list_and_revoke_never_create_a_store(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing or revoking in a folder without a database is an error naming the path."""
    monkeypatch.chdir(tmp_path)
    for args in (("token", "list"), ("token", "revoke", "bot")):
        result = invoke(*args)
        assert result.exit_code != 0
        assert str(tmp_path / "aegis_audit.db") in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args", [("--db", "mysql://app@db/aegis"), ("--db", "aegis.db", "--schema", "agents")]
)
def test_serve_refuses_a_store_it_cannot_open_as_named(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    """`aegis serve` with an unknown scheme, or --schema on a SQLite file, stops at once."""
    monkeypatch.chdir(tmp_path)
    result = invoke("serve", "--port", "0", *args)
    assert result.exit_code != 0
    assert ("mysql" if "mysql" in args[1] else "schema") in result.output
    assert list(tmp_path.iterdir()) == []


def test_grants_revoke_records_in_the_trail_of_the_named_schema(
    invoke: Invoke, postgres_dsn: str, schema: str
) -> None:
    """`aegis grants revoke --schema S` writes its record to the trail in S, where the
    service reads it; it went to the search path's trail, and S's never had it."""

    async def granted() -> str:
        service = open_service(postgres_dsn, schema=schema)
        try:
            agent = Principal("bot", Role.AGENT)
            asked, _ = await service.create(
                agent,
                NewRequest(session_id="g", action=Action("refund", "b"), risk_level=RiskLevel.HIGH),
            )
            reviewer = Principal("alice", Role.REVIEWER)
            decided = await service.decide(reviewer, asked.id, Verdict.APPROVE, "", 30)
        finally:
            service.close()
        assert decided.granted is not None
        return decided.granted

    grant_id = asyncio.run(granted())
    revoked = invoke("grants", "revoke", grant_id, "--db", postgres_dsn, "--schema", schema)
    assert revoked.exit_code == 0, revoked.output
    with AuditLogger(postgres_dsn, schema=schema) as trail:
        texts = [r["human_decision"] for r in trail.get_log("g")]
    assert any(f"grant {grant_id} revoked by operator:" in t for t in texts), texts


@pytest.fixture
def own_schema_role(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    """A role with a password and a schema of its own name; (DSN, role). Dropped after."""
    name = f"aegis_auditor_{uuid.uuid4().hex[:10]}"
    password = f"pw/{uuid.uuid4().hex[:8]}:@"
    server = urlsplit(postgres_dsn)
    dsn = (
        f"postgresql://{name}:{quote(password, safe='')}@{server.hostname}:{server.port or 5432}"
        f"{server.path}"
    )
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        try:
            conn.execute(f"CREATE SCHEMA {name} AUTHORIZATION {name}")
            yield dsn, name
        finally:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
            conn.execute(f"DROP ROLE {name}")


def test_audit_commands_say_which_schema_they_read(
    invoke: Invoke, own_schema_role: tuple[str, str]
) -> None:
    """Without --schema, `aegis audit verify` and `list` name the schema they read.

    A role's default search_path starts with a schema named after it, so a
    trail planted there is what a reader without --schema verifies; the
    output named only the DSN, and the auditor could not tell.
    """
    dsn, role = own_schema_role
    _write_trail(dsn, role)
    verified = invoke("audit", "verify", "--db", dsn)
    assert verified.exit_code == 0, verified.output
    assert f"in schema {role} of postgresql://" in verified.stdout
    assert dsn.split(":")[2].split("@")[0] not in verified.output  # the password stays masked
    report = json.loads(invoke("audit", "verify", "--db", dsn, "--format", "json").stdout)
    assert (report["ok"], report["schema"]) == (True, role)
    listed = invoke("audit", "list", "--db", dsn, "--format", "jsonl")
    assert listed.exit_code == 0, listed.output
    assert [json.loads(line)["session_id"] for line in listed.stdout.splitlines()] == ["in-schema"]
    assert f"schema {role} of postgresql://" in listed.stderr
    table = invoke("audit", "list", "--db", dsn)
    assert f"schema {role} of postgresql://" in table.stderr


#: every other command reading the trail: its arguments (POLICY is the policy file),
#: and how its stdout parses (None: not machine-readable)
READERS: list[tuple[tuple[str, ...], str | None]] = [
    (("audit", "head"), None),
    (("audit", "head", "--format", "json"), "json"),
    (("audit", "stats"), None),
    (("audit", "stats", "--format", "json"), "json"),
    (("audit", "show", "1"), None),
    (("audit", "show", "1", "--format", "json"), "json"),
    (("audit", "export"), "jsonl"),
    (("audit", "export", "--records", "-o", "OUT"), None),
    (("audit", "tail", "-n", "5"), None),
    (("audit", "--format", "json"), "json"),
    (("audit", "--format", "jsonl", "-o", "OUT"), None),
    (("replay", "POLICY"), None),
    (("replay", "POLICY", "--format", "json"), "json"),
]


@pytest.mark.parametrize(("args", "parse"), READERS, ids=[" ".join(args) for args, _ in READERS])
def test_every_reader_of_the_trail_says_which_schema_it_read(  # noqa: PLR0917  # pytest passes by name
    invoke: Invoke,
    own_schema_role: tuple[str, str],
    policy_path: Path,
    tmp_path: Path,
    args: tuple[str, ...],
    parse: str | None,
) -> None:
    """Without --schema, head, stats, show, export, tail and replay name the schema they read.

    They read the role's own-named schema, first in its search_path, as
    verify and list do, but named only the DSN. The note goes to stderr:
    stdout stays parseable.
    """
    dsn, role = own_schema_role
    _write_trail(dsn, role)
    out = tmp_path / "out.jsonl"
    given = {"POLICY": str(policy_path), "OUT": str(out)}
    if args[0] == "audit" and args[1] == "--format":
        args = ("audit", "--db", dsn, *args[1:])  # the agent-aegis form: options before
    else:
        args = (*args, "--db", dsn)
    result = invoke(*(given.get(arg, arg) for arg in args))
    assert result.exit_code == 0, result.output
    assert f"schema {role} of postgresql://" in result.stderr
    assert f"schema {role}" not in result.stdout  # never mixed into what is parsed
    assert dsn.split(":")[2].split("@")[0] not in result.output  # the password stays masked
    if parse == "json":
        assert json.loads(result.stdout)
    elif parse == "jsonl":
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [line["session_id"] for line in lines] == ["in-schema"]
    if "OUT" in args:
        assert [json.loads(line)["session_id"] for line in out.read_text().splitlines()] == [
            "in-schema"
        ]


def test_replay_json_names_the_schema_it_read(
    invoke: Invoke, own_schema_role: tuple[str, str], policy_path: Path
) -> None:
    """`aegis replay --format json` names the schema beside the DSN, as verify's JSON does."""
    dsn, role = own_schema_role
    _write_trail(dsn, role)
    result = invoke("replay", str(policy_path), "--db", dsn, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["schema"], report["checked"]) == (role, 1)


def test_show_of_a_missing_record_names_the_schema_searched(
    invoke: Invoke, own_schema_role: tuple[str, str]
) -> None:
    """`aegis audit show 99` says in which schema there is no record 99."""
    dsn, role = own_schema_role
    _write_trail(dsn, role)
    result = invoke("audit", "show", "99", "--db", dsn)
    assert result.exit_code != 0
    assert f"no record 99 in schema {role} of postgresql://" in result.stderr
