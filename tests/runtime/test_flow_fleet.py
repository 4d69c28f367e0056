"""Flow rules in a fleet: what one process lets through, another's ``not_after`` sees.

Processes sharing a session and a usage store may run different policies
(a rollout, a hot reload, a service with no flow rules at all): a flow rule
must never let through what it forbids because the process that ran the
earlier action had no rule that looked for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aegis import Action, AuditLogger, Policy, Runtime
from aegis.core.limits import FlowEvent
from aegis.stores.postgres.usage import PostgresUsageStore
from aegis.stores.sqlite.usage import SQLiteUsageStore
from aegis.stores.usage import MemoryUsageStore, UsageStore

WORKER = Path(__file__).with_name("limits_worker.py")

#: every action runs: no limit, no flow rule
PLAIN: dict[str, Any] = {"rules": [{"name": "all", "match": {"type": "*"}, "approval": "auto"}]}
#: a limit and a flow rule, neither of which looks at a read of the vault
OTHER_RULES: dict[str, Any] = {
    "rules": [
        {
            "name": "sends",
            "match": {"type": "send_email"},
            "limit": {"max": 100, "per": "1h", "key": ["session"]},
            "approval": "auto",
        },
        {
            "name": "after_crm",
            "match": {"type": "export"},
            "conditions": {"after": {"type": "read", "target": "crm"}},
            "approval": "block",
        },
        {"name": "rest", "match": {"type": "*"}, "approval": "auto"},
    ]
}
#: no email once the session read a secret
GUARDED: dict[str, Any] = {
    "rules": [
        {
            "name": "no_mail_after_secret",
            "match": {"type": "send_email"},
            "conditions": {"not_after": {"type": "read_secret", "within": "session"}},
            "approval": "auto",
        },
        {"name": "rest", "match": {"type": "*"}, "approval": "block"},
    ]
}


def _file(tmp_path: Path, name: str, policy: dict[str, Any]) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(policy), encoding="utf-8")
    return path


def _run(policy: Path, db: Path, dsn: str, session: str, *actions: str) -> list[str]:
    """Run ``actions`` in a fresh OS process of the limits worker; their statuses."""
    start = db.with_name("go")
    start.touch()
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(policy), str(db), dsn, session, str(start), *actions],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    statuses: list[str] = json.loads(proc.stdout)
    return statuses


@pytest.fixture(params=["sqlite", "postgres"])
def dsn(request: pytest.FixtureRequest) -> str:
    """``-`` for the audit file's own usage store, else a PostgreSQL usage store's DSN."""
    if request.param == "sqlite":
        return "-"
    location: str = request.getfixturevalue("postgres_dsn")
    return location


@pytest.mark.parametrize("reader", ["plain", "other_rules"])
def test_a_not_after_sees_a_read_by_a_process_whose_policy_never_looked_for_it(
    tmp_path: Path, dsn: str, reader: str
) -> None:
    """Process A (no flow rule that looks for the read) reads the secret; process B, whose
    not_after forbids mail after it, must block the mail of that session, not others'."""
    policy_a = _file(tmp_path, "a", PLAIN if reader == "plain" else OTHER_RULES)
    policy_b = _file(tmp_path, "b", GUARDED)
    db = tmp_path / "aegis_audit.db"
    assert _run(policy_b, db, dsn, "other", "send_email:smtp") == ["success"]
    assert _run(policy_a, db, dsn, "shared", "read_secret:vault") == ["success"]
    assert _run(policy_b, db, dsn, "shared", "send_email:smtp") == ["blocked"]
    assert _run(policy_b, db, dsn, "other", "send_email:smtp") == ["success"]


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_a_reload_that_adds_a_not_after_sees_what_ran_before_it(
    tmp_path: Path, engine: str
) -> None:
    """A hot reload adds the not_after: the secret read under the old policy still forbids."""
    usage = MemoryUsageStore() if engine == "memory" else None
    async with Runtime(
        executor=lambda action: "done",
        policy=Policy.from_dict(PLAIN),
        audit_logger=AuditLogger(tmp_path / "aegis_audit.db"),
        usage_store=usage,
        session_id="s",
    ) as rt:
        assert (await rt.run_one(Action("read_secret", "vault"))).status.value == "success"
        rt.update_policy(Policy.from_dict(GUARDED))
        blocked = await rt.run_one(Action("send_email", "smtp"))
        rt.session_id = "t"
        other = await rt.run_one(Action("send_email", "smtp"))
    assert blocked.status.value == "blocked"
    assert other.status.value == "success"


def _not_after_secret(within: str) -> Policy:
    return Policy.from_dict(
        {
            "rules": [
                {
                    "name": "no_mail_after_secret",
                    "match": {"type": "send_email"},
                    "conditions": {"not_after": {"type": "read_secret", "within": within}},
                    "approval": "auto",
                },
                {"name": "rest", "match": {"type": "*"}, "approval": "block"},
            ]
        }
    )


@pytest.mark.parametrize("engine", ["memory", "sqlite", "postgres"])
async def test_a_reload_that_looks_back_further_than_was_kept_blocks_saying_why(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    """A secret read an hour ago, deleted under a 10 min window; a reload to a whole-session
    not_after cannot know it did not happen: it blocks with the reason, where nothing was
    deleted it lets through."""
    usage: UsageStore
    if engine == "memory":
        usage = MemoryUsageStore()
    elif engine == "sqlite":
        usage = SQLiteUsageStore(tmp_path / "aegis_audit.db")
    else:
        usage = PostgresUsageStore(request.getfixturevalue("postgres_dsn"))
    usage.remember(FlowEvent("s", "read_secret", "vault", {}, time.time() - 3600))
    try:
        async with Runtime(
            executor=lambda action: "done",
            policy=_not_after_secret("10m"),
            audit_logger=AuditLogger(tmp_path / "aegis_audit.db"),
            usage_store=usage,
            session_id="s",
        ) as rt:
            # the read is older than 10 min: allowed, and the store deletes it
            assert (await rt.run_one(Action("send_email", "smtp"))).status.value == "success"
            rt.update_policy(_not_after_secret("session"))
            unknown = await rt.run_one(Action("send_email", "smtp"))
            rt.session_id = "t"
            known = await rt.run_one(Action("send_email", "smtp"))
    finally:
        usage.close()
    assert unknown.status.value == "blocked"
    assert "flow history up to" in (unknown.error or "")
    assert "is not kept" in (unknown.error or "")
    assert known.status.value == "success"


class _SaysDeleted(MemoryUsageStore):
    """A usage store of one's own whose ``forgotten`` answers ``said`` for every session."""

    def __init__(self, said: object) -> None:
        super().__init__()
        self.said = said

    def forgotten(self, session_id: str) -> Any:
        return self.said


@pytest.mark.parametrize(
    ("said", "why"),
    [
        (1_800_000_000, "flow history up to 2027-01-15"),  # an int: seconds all the same
        (1.8e9, "flow history up to 2027-01-15"),
        ("2027-01-15", "not a time"),
        (float("nan"), "not a time"),
        (True, "not a time"),
    ],
)
async def test_a_deleted_history_is_any_number_a_store_gives_and_else_blocks(
    tmp_path: Path, said: object, why: str
) -> None:
    """A store's forgotten() answer of any real number is the time history was deleted up
    to; anything else cannot say what was deleted: either way a whole-session not_after
    that finds nothing blocks, saying why, never reads the answer as nothing deleted."""
    async with Runtime(
        executor=lambda action: "done",
        policy=_not_after_secret("session"),
        audit_logger=AuditLogger(tmp_path / "aegis_audit.db"),
        usage_store=_SaysDeleted(said),
        session_id="s",
    ) as rt:
        mail = await rt.run_one(Action("send_email", "smtp"))
    assert mail.status.value == "blocked"
    assert why in (mail.error or "")
