"""A production DSN (a role with a password) and a schema: trail, counters, approvals all in it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import psycopg
import pytest
from pg_support import POSTGRES_DSN

from aegis import Action, AuditLogger, Policy, ResultStatus, Runtime
from aegis.core.approval_request import Role, TokenInfo
from aegis.server import open_service
from aegis.stores import open_stores
from aegis.stores.approvals import hash_token

POLICY = Policy.from_dict(
    {
        "version": "1",
        "defaults": {"approval": "block"},
        "rules": [
            {
                "name": "email_rate",
                "match": {"type": "send_email"},
                "limit": {"max": 2, "per": "1h"},
                "on_exceed": {"approval": "block"},
                "approval": "auto",
            },
            {
                "name": "exfiltration",
                "match": {"type": "send_file"},
                "conditions": {"after": {"type": "read*", "within": "session"}},
                "approval": "block",
            },
            {"name": "other", "match": {"type": "*"}, "approval": "auto"},
        ],
    }
)

#: every table the three stores keep
TABLES = {
    "aegis_audit_log",
    "aegis_usage",
    "aegis_usage_totals",
    "aegis_flow_events",
    "aegis_approval_requests",
    "aegis_tokens",
    "aegis_schema_versions",
}


def _admin(sql: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        cur = conn.execute(sql, args or None)  # type: ignore[arg-type]  # psycopg's own typing
        return cur.fetchall() if cur.description else []


def _tables(schema: str) -> set[str]:
    rows = _admin(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", schema
    )
    return {str(row[0]) for row in rows}


class Role_:  # "Role" is the approval role of aegis
    """A login role with a password, whose search_path is a decoy schema of its own."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.name = f"aegis_app_{suffix}"
        # a generated password: URL-special characters, and a '%' escape to decode
        self.password = f"Xq:7/@%zz#{suffix}"
        self.decoy = f"aegis_decoy_{suffix}"
        self.dsn = f"postgresql://{self.name}:{quote(self.password, safe='')}@127.0.0.1:5432/test"
        self.schemas: list[str] = [self.decoy]

    def schema(self, name: str) -> str:
        """A fresh schema name, dropped with the role."""
        made = f"aegis_{name}_{uuid.uuid4().hex[:8]}"
        self.schemas.append(made)
        return made


@pytest.fixture
def role() -> Iterator[Role_]:
    """A role with a password that may create schemas in the test database; dropped after."""
    made = Role_()
    _admin(f"CREATE ROLE {made.name} LOGIN PASSWORD '{made.password}'")
    try:
        _admin(f"GRANT CREATE ON DATABASE test TO {made.name}")
        _admin(f"CREATE SCHEMA {made.decoy} AUTHORIZATION {made.name}")
        _admin(f"ALTER ROLE {made.name} SET search_path = {made.decoy}")
        yield made
    finally:
        for schema in made.schemas:
            _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        _admin(f"REVOKE CREATE ON DATABASE test FROM {made.name}")
        _admin(f"DROP ROLE {made.name}")


async def _send(runtime: Runtime, count: int, kind: str = "send_email") -> list[str]:
    out = []
    for _ in range(count):
        result = await runtime.run_one(Action(kind, "smtp"))
        out.append(result.status.value)
    return out


async def test_limits_approvals_and_trail_of_a_password_dsn_land_in_its_schema(
    role: Role_,
) -> None:
    """With a password and schema=, limits hold and every table is in that schema, none outside."""
    schema = role.schema("agents")
    audit = AuditLogger(role.dsn, schema=schema)
    assert role.password not in repr(audit)
    async with Runtime(executor=lambda a: "sent", policy=POLICY, audit_logger=audit) as runtime:
        assert await _send(runtime, 3) == ["success", "success", "blocked"]
        blocked = await runtime.run_one(Action("send_email", "smtp"))
        assert "limit" in (blocked.error or "")  # the limit, not a store error, blocked it
        assert "usage counters" not in (blocked.error or "")
        # a flow rule reads the session's history from the same schema
        await runtime.run_one(Action("read_crm", "crm"))
        assert (await runtime.run_one(Action("send_file", "x"))).status is ResultStatus.BLOCKED
    service = open_service(role.dsn, schema=schema)
    try:
        now = datetime.now(UTC)
        service.store.create_token(TokenInfo("alice", Role.REVIEWER, (), now), hash_token("t"))
    finally:
        service.close()
    audit.close()
    assert _tables(schema) >= TABLES
    assert _tables(role.decoy) == set()  # nothing in the connection's current_schema
    (usage,) = _admin(f'SELECT count(*) FROM "{schema}".aegis_usage')
    assert usage == (2,)
    (tokens,) = _admin(f'SELECT name FROM "{schema}".aegis_tokens')
    assert tokens == ("alice",)
    finals = _admin(
        f'SELECT action_type, result_status FROM "{schema}".aegis_audit_log'
        " WHERE kind IS DISTINCT FROM 'start' ORDER BY id"
    )
    assert [row[1] for row in finals[:4]] == ["success", "success", "blocked", "blocked"]
    verified = AuditLogger(role.dsn, schema=schema, create=False, readonly=True)
    assert verified.verify().ok
    verified.close()


async def test_two_teams_in_two_schemas_count_apart(role: Role_) -> None:
    """Team A's sends never use team B's limit: each schema keeps its own counters."""
    team_a, team_b = role.schema("team_a"), role.schema("team_b")
    runtimes = [
        Runtime(
            executor=lambda a: "sent",
            policy=POLICY,
            audit_logger=AuditLogger(role.dsn, schema=schema),
        )
        for schema in (team_a, team_b)
    ]
    async with runtimes[0] as first, runtimes[1] as second:
        assert await _send(first, 2) == ["success", "success"]
        assert await _send(second, 2) == ["success", "success"]  # not blocked by team A's
        assert await _send(first, 1) == ["blocked"]
        assert await _send(second, 1) == ["blocked"]
    for schema in (team_a, team_b):
        assert _admin(f'SELECT count(*) FROM "{schema}".aegis_usage') == [(2,)]
    assert _tables(role.decoy) == set()


async def test_teams_without_a_password_count_apart_too(postgres_dsn: str) -> None:
    """On a DSN without a password, schema= also decides where the counters are, not search_path."""
    suffix = uuid.uuid4().hex[:8]
    schemas = [f"aegis_team_a_{suffix}", f"aegis_team_b_{suffix}"]
    try:
        for schema in schemas:
            async with Runtime(
                executor=lambda a: "sent",
                policy=POLICY,
                audit_logger=AuditLogger(postgres_dsn, schema=schema),
            ) as runtime:
                assert await _send(runtime, 3) == ["success", "success", "blocked"]
            assert _admin(f'SELECT count(*) FROM "{schema}".aegis_usage') == [(2,)]
    finally:
        for schema in schemas:
            _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_open_stores_shares_one_database_between_the_three(role: Role_) -> None:
    """The usage and approval stores use the audit store's Database: one DSN, schema, pool."""
    schema = role.schema("shared")
    with open_stores(role.dsn, schema=schema) as stores:
        stores.audit.check()
        database = stores.audit.db  # type: ignore[attr-defined]
        assert stores.usage.db is database  # type: ignore[attr-defined]
        assert stores.approvals.db is database  # type: ignore[attr-defined]
        assert stores.approvals.list_tokens() == []
        assert stores.usage.recall("s", None, None) == []
    assert _tables(schema) >= TABLES
