"""The PostgreSQL audit trail on a real server: runtime, group commit, faults, fleets, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from pg_support import POSTGRES_DSN

from aegis.cli import cli
from aegis.core.action import Action
from aegis.core.chain import GENESIS_HASH, row_hash
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.filters import Filters
from aegis.core.policy import Policy
from aegis.core.record import RECORD_FIELDS, AuditRecord, final_draft, start_draft
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import ConfigurationError, StoreError
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime
from aegis.stores.postgres.audit import PostgresAuditStore
from aegis.stores.postgres.schema import schema_lock_key

WORKER = Path(__file__).with_name("fleet_worker.py")

#: lets every read and write run
POLICY = Policy.from_dict(
    {"version": "1", "defaults": {"risk_level": "low", "approval": "auto"}, "rules": []}
)


def decision(n: int = 1, kind: str = "write") -> PolicyDecision:
    """An auto-approved decision about action number ``n``."""
    return PolicyDecision(Action(kind, "crm", {"n": n}), RiskLevel.LOW, Approval.AUTO, "writes")


def success(d: PolicyDecision) -> Result:
    """A successful Result of ``d``'s action."""
    return Result(d.action, ResultStatus.SUCCESS, {"done": True})


def sql(dsn: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    """Run one statement through a fresh connection, as an outsider would."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, args or None)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def trail(postgres_dsn: str) -> Iterator[AuditLogger]:
    """A PostgreSQL audit trail in the test's own schema, closed afterwards."""
    audit = AuditLogger(postgres_dsn)
    assert isinstance(audit.store, PostgresAuditStore)
    yield audit
    audit.close()


def columns(**replaced: str) -> str:
    """The audit table's columns in order, as SQL, with some replaced by expressions."""
    return ", ".join(replaced.get(name, name) for name in RECORD_FIELDS)


def fill(audit: AuditLogger, count: int) -> None:
    """Append ``count`` finished records."""
    for n in range(1, count + 1):
        d = decision(n)
        audit.log("s1", d, result=success(d), context={"n": n})


def test_audit_logger_dispatches_on_the_url(postgres_dsn: str, tmp_path: Path) -> None:
    """AuditLogger gives the PostgreSQL trail for a DSN and the SQLite one for a path."""
    with AuditLogger(postgres_dsn) as pg, AuditLogger(tmp_path / "a.db") as lite:
        assert type(pg.store) is PostgresAuditStore
        assert type(lite.store) is not PostgresAuditStore
        assert "***" in repr(AuditLogger("postgresql://u:pw@127.0.0.1:1/x"))


async def test_a_runtime_records_every_action_with_its_context(
    trail: AuditLogger,
) -> None:
    """run_one through a Runtime lands each action, context included, in a chain that verifies."""

    def executor(action: Action) -> str:
        return f"did {action.type}"

    async with Runtime(executor=executor, policy=POLICY, audit_logger=trail) as runtime:
        result = await runtime.run_one(Action("read", "crm"), context={"agent": "support"})
        assert result.ok
        (record,) = trail.get_log()
        assert record["context"] == {"agent": "support"}
        assert record["result_data"] == "did read"
        assert trail.verify().ok


async def test_each_result_returns_only_after_its_record_commits(
    trail: AuditLogger, postgres_dsn: str
) -> None:
    """Under group commit every record is visible to another connection when its call returns."""

    async def one(n: int) -> int:
        d = decision(n)
        record_id = await trail.record("s1", d, result=success(d))
        # an outsider's connection must see it the moment record() returns
        found = await asyncio.to_thread(
            sql, postgres_dsn, "SELECT count(*) FROM aegis_audit_log WHERE id = %s", record_id
        )
        assert found == [(1,)]
        return record_id

    ids = await asyncio.gather(*(one(n) for n in range(60)))
    assert sorted(ids) == list(range(1, 61))
    assert trail.verify().ok


async def test_concurrent_actions_share_transactions(trail: AuditLogger) -> None:
    """Five hundred concurrent records commit in far fewer transactions than records."""
    trail.log("s0", decision(0), result=success(decision(0)))  # connect and create first
    before = trail.store.commits
    await asyncio.gather(
        *(trail.record("s1", decision(n), result=success(decision(n))) for n in range(500))
    )
    assert trail.count() == 501
    assert trail.store.commits - before <= 50
    assert trail.verify().ok


def test_an_edited_row_is_caught(trail: AuditLogger, postgres_dsn: str) -> None:
    """A field changed in SQL is reported at that record."""
    fill(trail, 6)
    assert trail.verify().ok
    sql(postgres_dsn, "UPDATE aegis_audit_log SET action_target = 'billing' WHERE id = 3")
    report = trail.verify()
    assert (report.ok, report.first_bad_id) == (False, 3)
    assert "modified" in report.reason


def test_a_deleted_row_is_caught(trail: AuditLogger, postgres_dsn: str) -> None:
    """A row deleted from the middle is reported as missing."""
    fill(trail, 5)
    sql(postgres_dsn, "DELETE FROM aegis_audit_log WHERE id = 2")
    report = trail.verify()
    assert (report.ok, report.first_bad_id) == (False, 2)
    assert "missing" in report.reason


def test_reordered_rows_are_caught(trail: AuditLogger, postgres_dsn: str) -> None:
    """Two rows whose ids are swapped no longer link."""
    fill(trail, 5)
    for move in ("id = -2 WHERE id = 2", "id = 2 WHERE id = 3", "id = 3 WHERE id = -2"):
        sql(postgres_dsn, f"UPDATE aegis_audit_log SET {move}")
    report = trail.verify()
    assert (report.ok, report.first_bad_id) == (False, 2)


def test_an_inserted_row_is_caught(trail: AuditLogger, postgres_dsn: str) -> None:
    """A forged row slipped in (ids shifted to make room) breaks the link after it."""
    fill(trail, 4)
    sql(postgres_dsn, "UPDATE aegis_audit_log SET id = id + 100 WHERE id >= 3")
    sql(postgres_dsn, "UPDATE aegis_audit_log SET id = id - 99 WHERE id >= 103")
    forged = columns(id="3", action_target="'forged'", prev_hash="hash", hash="repeat('0', 64)")
    sql(
        postgres_dsn,
        f"INSERT INTO aegis_audit_log SELECT {forged} FROM aegis_audit_log WHERE id = 2",
    )
    report = trail.verify()
    assert not report.ok
    assert report.first_bad_id == 3


def test_a_truncated_tail_is_caught_with_a_kept_head(trail: AuditLogger, postgres_dsn: str) -> None:
    """Rows cut off the end pass alone but fail against the head kept before."""
    fill(trail, 5)
    head = trail.head()
    sql(postgres_dsn, "DELETE FROM aegis_audit_log WHERE id >= 4")
    assert trail.verify().ok
    report = trail.verify(expected_head=head)
    assert not report.ok
    assert "removed from the end" in report.reason


def test_a_fork_is_refused_by_the_table(trail: AuditLogger, postgres_dsn: str) -> None:
    """A second record linking to the head cannot be stored; one under a free id fails verify.

    Every writer numbers a record one past the head it links to, so two
    writers that both linked to one head (one skipped the lock) give their
    records the same id, and the primary key refuses the second.
    """
    fill(trail, 2)
    successor = columns(id="id + 1", prev_hash="hash", action_target="'racing'")
    after_head = f"SELECT {successor} FROM aegis_audit_log ORDER BY id DESC LIMIT 1 OFFSET %s"
    sql(postgres_dsn, f"INSERT INTO aegis_audit_log {after_head}", 0)
    with pytest.raises(psycopg.errors.UniqueViolation):
        sql(postgres_dsn, f"INSERT INTO aegis_audit_log {after_head}", 1)
    stray = columns(id="99")
    sql(postgres_dsn, f"INSERT INTO aegis_audit_log SELECT {stray} FROM aegis_audit_log LIMIT 1")
    report = trail.verify()
    assert not report.ok


def test_a_terminated_backend_is_survived_without_a_duplicate(postgres_dsn: str) -> None:
    """After pg_terminate_backend kills the writer's connection, the next append succeeds once."""
    name = f"aegis_test_{uuid.uuid4().hex[:8]}"  # so that only this test's backends die
    with AuditLogger(f"{postgres_dsn}&application_name={name}") as trail:
        fill(trail, 3)
        killed = sql(
            postgres_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            name,
        )
        assert len(killed) >= 1
        d = decision(4)
        assert trail.log("s1", d, result=success(d)) == 4
        assert trail.count() == 4
        report = trail.verify()
        assert report.ok, report.reason


def test_a_server_that_does_not_answer_fails_before_the_executor_runs() -> None:
    """With a DSN of a closed port the first action raises StoreError and never executes."""
    ran: list[Action] = []

    async def go() -> None:
        audit = AuditLogger("postgresql://postgres:pw@127.0.0.1:1/test", connect_timeout=2)
        async with Runtime(executor=ran.append, policy=POLICY, audit_logger=audit) as runtime:
            await runtime.run_one(Action("read", "crm"))

    with pytest.raises(StoreError, match=r"postgresql://postgres:\*\*\*@127.0.0.1:1/test"):
        asyncio.run(go())
    assert ran == []


@pytest.fixture
def read_only_dsn(postgres_dsn: str) -> Iterator[str]:
    """A DSN of a role that may read the test schema but not write it; dropped afterwards."""
    role = f"aegis_ro_{uuid.uuid4().hex[:8]}"
    schema = postgres_dsn.rsplit("%3D", 1)[1]
    sql(POSTGRES_DSN, f'CREATE ROLE "{role}" LOGIN')
    sql(POSTGRES_DSN, f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    try:
        yield postgres_dsn.replace("postgres@", f"{role}:secret@", 1)
    finally:
        sql(POSTGRES_DSN, f'DROP OWNED BY "{role}"')
        sql(POSTGRES_DSN, f'DROP ROLE "{role}"')


def test_a_read_only_role_is_refused_before_anything_runs(
    trail: AuditLogger, postgres_dsn: str, read_only_dsn: str
) -> None:
    """A role without INSERT gets one clear error at the first action, naming the grant."""
    fill(trail, 2)
    schema = postgres_dsn.rsplit("%3D", 1)[1]
    role = read_only_dsn.split("//", 1)[1].split(":", 1)[0]
    sql(POSTGRES_DSN, f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
    ran: list[Action] = []

    async def go() -> None:
        async with Runtime(
            executor=ran.append, policy=POLICY, audit_logger=AuditLogger(read_only_dsn)
        ) as rt:
            await rt.run_one(Action("read", "crm"))

    with pytest.raises(StoreError, match=r"may not INSERT|permission denied") as caught:
        asyncio.run(go())
    assert "secret" not in str(caught.value)
    assert ran == []
    # ... and the same role can still verify the trail, as an auditor would
    with AuditLogger(read_only_dsn, create=False) as reader:
        assert reader.verify().ok
        assert reader.count() == 2


def test_a_role_that_may_not_create_tables_gets_a_clear_error(read_only_dsn: str) -> None:
    """Creating the tables without the privilege names the missing privilege."""
    with pytest.raises(StoreError, match="privilege") as caught, AuditLogger(read_only_dsn) as a:
        a.log("s1", decision(), result=success(decision()))
    assert "SQLSTATE 42501" in str(caught.value)


def test_a_schema_without_the_trail_is_an_error_for_readers(postgres_dsn: str) -> None:
    """Reading a DSN whose schema holds no audit trail says so and creates nothing."""
    reader = AuditLogger(postgres_dsn, create=False)
    with pytest.raises(StoreError, match="no Aegis audit tables"):
        reader.verify()
    reader.close()
    assert sql(
        postgres_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
    ) == [(0,)]


def test_every_audit_command_takes_a_dsn(
    trail: AuditLogger, postgres_dsn: str, tmp_path: Path
) -> None:
    """list, show, export, verify, stats, tail and replay read the PostgreSQL trail via --db."""
    fill(trail, 3)
    runner = CliRunner()

    def aegis(*args: str) -> str:
        result = runner.invoke(cli, [*args, "--db", postgres_dsn], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout  # notes (the schema read) go to stderr

    assert len(json.loads(aegis("audit", "list", "--format", "json"))) == 3
    assert json.loads(aegis("audit", "show", "2", "--format", "json"))["context"] == {"n": 2}
    out = tmp_path / "out.jsonl"
    aegis("audit", "export", "-o", str(out))
    assert len(out.read_text().splitlines()) == 3
    assert json.loads(aegis("audit", "verify", "--format", "json"))["checked"] == 3
    assert json.loads(aegis("audit", "stats", "--format", "json"))["total"] == 3
    assert len(aegis("audit", "tail", "-n", "2").splitlines()) == 2
    policy = tmp_path / "policy.yaml"
    policy.write_text('version: "1"\ndefaults: {risk_level: low, approval: block}\nrules: []\n')
    replayed = json.loads(aegis("replay", str(policy), "--format", "json"))
    assert replayed["checked"] == 3


def test_the_cli_names_a_dead_server_in_one_line() -> None:
    """aegis audit verify against a closed port exits 1 with the masked DSN and no traceback."""
    result = CliRunner().invoke(
        cli, ["audit", "verify", "--db", "postgresql://postgres:pw@127.0.0.1:1/test"]
    )
    assert result.exit_code == 1
    assert "postgres:***@127.0.0.1:1" in result.output
    assert "Traceback" not in result.output


def start_fleet(db: str, workers: int, count: int, concurrency: int) -> list[dict[str, object]]:
    """Run ``workers`` processes of ``count`` actions each at once; return their summaries."""
    children = [
        subprocess.Popen(
            [sys.executable, str(WORKER), db, str(count), str(i), str(concurrency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    summaries = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        summaries.append(json.loads(out))
    return summaries


def test_eight_processes_share_one_chain(postgres_dsn: str) -> None:
    """Eight processes writing at once leave one chain that verifies; a tampered row fails it."""
    summaries = start_fleet(postgres_dsn, workers=8, count=150, concurrency=10)
    assert sum(int(str(s["ok"])) for s in summaries) == 8 * 150
    runner = CliRunner()
    result = runner.invoke(cli, ["audit", "verify", "--db", postgres_dsn, "--format", "json"])
    assert result.exit_code == 0, result.output
    # every action has a start record and a final record, all in one chain
    assert json.loads(result.stdout)["checked"] == 2 * 1200
    stats = runner.invoke(cli, ["audit", "stats", "--db", postgres_dsn, "--format", "json"])
    assert json.loads(stats.stdout)["total"] == 1200
    seen = sql(
        postgres_dsn, "SELECT count(DISTINCT context) FROM aegis_audit_log WHERE kind = 'final'"
    )
    assert seen == [(1200,)]
    sql(postgres_dsn, "UPDATE aegis_audit_log SET result_status = 'failed' WHERE id = 700")
    result = runner.invoke(cli, ["audit", "verify", "--db", postgres_dsn])
    assert result.exit_code == 1
    assert "record 700" in result.output


KILLED_CHILD = """
import asyncio, sys, time
from aegis import Action, AuditLogger, Policy, Runtime

policy = Policy.from_dict({"version": "1", "defaults": {"approval": "auto"}, "rules": []})


def transfer(action):
    print("running", flush=True)
    time.sleep(120)


async def main():
    audit = AuditLogger(sys.argv[1])
    async with Runtime(executor=transfer, policy=policy, audit_logger=audit) as runtime:
        await runtime.run_one(Action("transfer", "bank", {"amount": 900}))


asyncio.run(main())
"""


def test_an_action_killed_mid_run_stays_in_the_chain(postgres_dsn: str) -> None:
    """A worker SIGKILLed while its executor runs leaves a chained start record every view shows."""
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, postgres_dsn], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "running\n"
    child.kill()
    child.wait(timeout=30)
    child.stdout.close()
    with AuditLogger(postgres_dsn, create=False) as audit:
        (record,) = audit.get_log()
        assert (record["kind"], record["action_type"], record["result_status"]) == (
            "start",
            "transfer",
            None,
        )
        report = audit.verify()
        assert report.ok
        assert report.unfinished == (record["id"],)
    listed = CliRunner().invoke(cli, ["audit", "list", "--db", postgres_dsn, "--format", "json"])
    assert json.loads(listed.stdout)[0]["action_type"] == "transfer"


async def test_a_rejected_start_means_the_action_never_runs(
    trail: AuditLogger, postgres_dsn: str
) -> None:
    """When the server refuses the start record mid-run, the Result is FAILED and nothing ran."""
    ran: list[Action] = []
    async with Runtime(executor=ran.append, policy=POLICY, audit_logger=trail) as runtime:
        assert (await runtime.run_one(Action("read", "crm"))).ok
        sql(
            postgres_dsn,
            "ALTER TABLE aegis_audit_log ADD CONSTRAINT no_refunds CHECK (action_type <> 'refund')",
        )
        result = await runtime.run_one(Action("refund", "billing", {"amount": 5}))
        assert result.status is ResultStatus.FAILED
        assert "not run" in str(result.error)
        assert "no_refunds" in str(result.error)
        assert [a.type for a in ran] == ["read"]
        assert trail.store.count(Filters(view="records")) == 2  # no half-written record
        assert trail.verify().ok


async def test_a_rejected_outcome_is_failed_never_success(
    trail: AuditLogger, postgres_dsn: str
) -> None:
    """When the final record cannot be written, the Result is FAILED; the start stays open."""
    trail.check()  # creates the tables
    async with Runtime(executor=lambda a: "paid", policy=POLICY, audit_logger=trail) as runtime:
        sql(
            postgres_dsn,
            "ALTER TABLE aegis_audit_log ADD CONSTRAINT no_outcomes "
            "CHECK (kind IS DISTINCT FROM 'final')",
        )
        result = await runtime.run_one(Action("refund", "billing", {"amount": 5}))
        assert result.status is ResultStatus.FAILED
        assert "ended success, but the audit trail could not record it" in str(result.error)
        (start,) = trail.get_log()
        assert (start["kind"], start["action_type"]) == ("start", "refund")
        report = trail.verify()
        assert report.ok
        assert report.unfinished == (start["id"],)


async def test_a_server_lost_mid_run_fails_the_next_action_cleanly(postgres_dsn: str) -> None:
    """With every connection cut and no way back in, the next action is FAILED and never runs."""
    role = f"aegis_gone_{uuid.uuid4().hex[:8]}"
    schema = postgres_dsn.rsplit("%3D", 1)[1]
    sql(POSTGRES_DSN, f'CREATE ROLE "{role}" LOGIN')
    sql(POSTGRES_DSN, f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{role}"')
    dsn = postgres_dsn.replace("postgres@", f"{role}:pw@", 1)
    ran: list[Action] = []
    try:
        async with Runtime(
            executor=ran.append, policy=POLICY, audit_logger=AuditLogger(dsn, connect_timeout=2)
        ) as runtime:
            assert (await runtime.run_one(Action("read", "crm"))).ok
            # the server "goes away" for this role: no new logins, sessions cut
            sql(POSTGRES_DSN, f'ALTER ROLE "{role}" NOLOGIN')
            sql(
                POSTGRES_DSN,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                role,
            )
            result = await runtime.run_one(Action("update", "crm"))
            assert result.status is ResultStatus.FAILED
            assert f"{role}:***@" in str(result.error)
            assert "pw@" not in str(result.error)
        assert [a.type for a in ran] == ["read"]
    finally:
        sql(POSTGRES_DSN, f'DROP OWNED BY "{role}"')
        sql(POSTGRES_DSN, f'DROP ROLE "{role}"')


async def test_synchronous_full_records_every_action(postgres_dsn: str) -> None:
    """synchronous='full' waits for the disk on start records too and writes the same chain."""
    audit = AuditLogger(postgres_dsn, synchronous="full")
    async with Runtime(executor=lambda a: "ok", policy=POLICY, audit_logger=audit) as runtime:
        results = await asyncio.gather(*(runtime.run_one(Action("read", "crm")) for _ in range(20)))
        assert all(r.ok for r in results)
        assert audit.count() == 20
        assert audit.verify().ok


def test_an_unknown_synchronous_mode_is_refused(postgres_dsn: str) -> None:
    """A synchronous mode other than normal or full is a configuration error."""
    with pytest.raises(ConfigurationError, match="'normal' or 'full'"):
        AuditLogger(postgres_dsn, synchronous="off")


def test_a_forked_child_appends_on_its_own_connection(trail: AuditLogger) -> None:
    """A child forked after the parent appended writes through a connection of its own."""
    fill(trail, 1)
    pid = os.fork()
    if pid == 0:  # the child: append one record, leave without cleanup
        code = 0
        try:
            d = decision(2)
            trail.log("child", d, result=success(d))
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    d = decision(3)
    assert trail.log("parent", d, result=success(d)) == 3  # the parent's connection still works
    assert [r["session_id"] for r in trail.get_log()] == ["s1", "child", "parent"]
    assert trail.verify().ok


async def test_a_writer_stuck_holding_the_chain_never_hangs_the_runtime(postgres_dsn: str) -> None:
    """While another session holds the chain's lock, an action fails after statement_timeout."""
    schema = postgres_dsn.rsplit("%3D", 1)[1]
    audit = AuditLogger(postgres_dsn, statement_timeout=0.5)
    ran: list[Action] = []
    async with Runtime(executor=ran.append, policy=POLICY, audit_logger=audit) as runtime:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as stuck:
            stuck.execute(
                "SELECT pg_advisory_lock(1095059283, hashtext(%s))", (f"{schema}.aegis_audit_log",)
            )
            result = await asyncio.wait_for(runtime.run_one(Action("read", "crm")), 30)
        assert result.status is ResultStatus.FAILED
        assert "statement_timeout" in str(result.error)
        assert ran == []
        assert (await runtime.run_one(Action("read", "crm"))).ok  # the lock is free again
        assert audit.verify().ok


async def test_a_search_path_without_a_schema_fails_at_start(postgres_dsn: str) -> None:
    """A DSN whose search_path names no existing schema is one clear error before anything runs."""
    dsn = postgres_dsn.rsplit("%3D", 1)[0] + "%3Daegis_no_such_schema"
    ran: list[Action] = []
    with pytest.raises(StoreError, match=r"CREATE SCHEMA|schema="):
        async with Runtime(executor=ran.append, policy=POLICY, audit_logger=AuditLogger(dsn)):
            pass
    assert ran == []


def test_appending_nothing_writes_nothing(postgres_dsn: str) -> None:
    """An empty append returns no records and leaves the chain empty, in either mode."""
    for mode in ("normal", "full"):
        with AuditLogger(postgres_dsn, synchronous=mode) as audit:
            assert audit.store.append([]) == []
            assert audit.store.head().count == 0


def test_a_trail_of_an_older_schema_is_read_as_is_and_migrated_by_a_writer(
    trail: AuditLogger, postgres_dsn: str
) -> None:
    """A version-1 trail (no checkpoints table) reads and verifies; a writer migrates it."""
    fill(trail, 3)
    sql(postgres_dsn, "DROP TABLE aegis_audit_checkpoints")
    sql(postgres_dsn, "UPDATE aegis_schema_versions SET version = 1 WHERE component = 'audit'")
    with AuditLogger(postgres_dsn, create=False, readonly=True) as reader:
        assert reader.verify().ok
        assert reader.store.checkpoints() == []  # type: ignore[attr-defined]
    assert sql(postgres_dsn, "SELECT to_regclass('aegis_audit_checkpoints')") == [(None,)]
    with AuditLogger(postgres_dsn) as writer:
        writer.check()
        assert writer.store.checkpoints() == []  # type: ignore[attr-defined]
    assert sql(
        postgres_dsn, "SELECT version FROM aegis_schema_versions WHERE component = 'audit'"
    ) == [(7,)]
    assert sql(postgres_dsn, "SELECT count(*) FROM aegis_audit_checkpoints") == [(0,)]


def test_a_trail_written_before_the_append_function_is_upgraded_and_continued(
    trail: AuditLogger, postgres_dsn: str
) -> None:
    """A version-2 trail (appends linked by the client) gains the function and chains on."""
    fill(trail, 3)
    sql(postgres_dsn, "DROP PROCEDURE aegis_audit_append_call")
    sql(postgres_dsn, "DROP FUNCTION aegis_audit_append")
    sql(postgres_dsn, "UPDATE aegis_schema_versions SET version = 2 WHERE component = 'audit'")
    with AuditLogger(postgres_dsn) as writer:
        d = decision(4)
        assert writer.log("s2", d, result=success(d)) == 4
        report = writer.verify()
        assert report.ok, report.reason
        assert report.checked == 4
    assert sql(
        postgres_dsn, "SELECT version FROM aegis_schema_versions WHERE component = 'audit'"
    ) == [(7,)]


@pytest.mark.parametrize("level", ["process", "result", "full"])
def test_a_trail_before_the_append_procedure_is_written_as_is_or_upgraded(
    trail: AuditLogger, postgres_dsn: str, level: str
) -> None:
    """A version-3 trail is appended to as it is by a writer that may not migrate, then upgraded.

    Without the procedure the function and a pipeline append; a writer that
    may migrate adds the procedure; the chain verifies either way.
    """
    fill(trail, 2)
    sql(postgres_dsn, "DROP PROCEDURE aegis_audit_append_call")
    sql(postgres_dsn, "UPDATE aegis_schema_versions SET version = 3 WHERE component = 'audit'")
    with AuditLogger(postgres_dsn, create=False, durability=level) as writer:
        d = decision(3)
        assert writer.log("s3", d, result=success(d)) == 3
    assert sql(
        postgres_dsn, "SELECT version FROM aegis_schema_versions WHERE component = 'audit'"
    ) == [(3,)]
    with AuditLogger(postgres_dsn, durability=level) as writer:
        d = decision(4)
        assert writer.log("s4", d, result=success(d)) == 4
        report = writer.verify()
    assert report.ok, report.reason
    assert report.checked == 4
    assert sql(
        postgres_dsn, "SELECT version FROM aegis_schema_versions WHERE component = 'audit'"
    ) == [(7,)]


@pytest.mark.parametrize("level", ["process", "result", "full"])
def test_a_trail_before_the_one_record_append_is_written_as_is_or_upgraded(
    trail: AuditLogger, postgres_dsn: str, level: str
) -> None:
    """A version-4 trail takes appends through its procedure, then gains the one-record append.

    A writer that may not migrate appends through the version-4 procedure;
    a writer that may adds the one-record function and procedure (version
    5) and appends through them; starts, finals and batches chain on and
    the whole trail verifies.
    """
    fill(trail, 2)
    sql(postgres_dsn, "DROP PROCEDURE aegis_audit_append_one_call")
    sql(postgres_dsn, "DROP FUNCTION aegis_audit_append_one")
    sql(postgres_dsn, "UPDATE aegis_schema_versions SET version = 4 WHERE component = 'audit'")
    with AuditLogger(postgres_dsn, create=False, durability=level) as writer:
        d = decision(3)
        assert writer.log("s3", d, result=success(d)) == 3
    assert sql(
        postgres_dsn, "SELECT version FROM aegis_schema_versions WHERE component = 'audit'"
    ) == [(4,)]
    with AuditLogger(postgres_dsn, durability=level) as writer:
        d = decision(4)
        assert writer.log("s4", d, result=success(d)) == 4
        store = writer.store
        assert isinstance(store, PostgresAuditStore)
        started = store.append([start_draft("s5", d)])
        assert [r.id for r in started] == [5]
        final = final_draft("s5", d, success(d), start_id=5)
        again = start_draft("s6", d)
        assert [r.id for r in store.append([final, again])] == [6, 7]
        report = writer.verify()
    assert report.ok, report.reason
    assert report.checked == 7
    assert sql(
        postgres_dsn, "SELECT version FROM aegis_schema_versions WHERE component = 'audit'"
    ) == [(7,)]
    assert sql(postgres_dsn, "SELECT id, start_id FROM aegis_audit_log WHERE id >= 5") == [
        (5, None),
        (6, 5),
        (7, None),
    ]


def test_a_trail_with_a_unique_prev_hash_is_written_as_is_then_migrated(
    trail: AuditLogger, postgres_dsn: str
) -> None:
    """A version-6 trail (a unique index on prev_hash) keeps it for a writer that may not
    migrate; a writer that may drops it (version 7); one chain verifies throughout."""
    fill(trail, 2)
    sql(
        postgres_dsn,
        "ALTER TABLE aegis_audit_log ADD CONSTRAINT aegis_audit_log_one_successor "
        "UNIQUE (prev_hash)",
    )
    sql(postgres_dsn, "UPDATE aegis_schema_versions SET version = 6 WHERE component = 'audit'")
    constraint = (
        "SELECT count(*) FROM pg_constraint WHERE conname = 'aegis_audit_log_one_successor' "
        "AND conrelid = 'aegis_audit_log'::regclass"
    )
    version = "SELECT version FROM aegis_schema_versions WHERE component = 'audit'"
    with AuditLogger(postgres_dsn, create=False) as old:
        d = decision(3)
        assert old.log("s3", d, result=success(d)) == 3
    assert sql(postgres_dsn, version) == [(6,)]
    assert sql(postgres_dsn, constraint) == [(1,)]
    with AuditLogger(postgres_dsn) as writer:
        store = writer.store
        assert isinstance(store, PostgresAuditStore)
        d = decision(4)
        assert [r.id for r in store.append([start_draft("s4", d)])] == [4]
        assert [r.id for r in store.append([final_draft("s4", d, success(d), start_id=4)])] == [5]
        report = writer.verify()
    assert report.ok, report.reason
    assert report.checked == 5
    assert sql(postgres_dsn, version) == [(7,)]
    assert sql(postgres_dsn, constraint) == [(0,)]


async def test_signed_checkpoints_on_postgresql_catch_a_consistent_rewrite(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """A signing trail keeps checkpoints in PostgreSQL; the CLI checks them with the public key."""
    runner = CliRunner()
    key = tmp_path / "audit.key"
    assert runner.invoke(cli, ["audit", "keygen", str(key)]).exit_code == 0
    audit = AuditLogger(postgres_dsn, signing_key=key, checkpoint_every=2)
    async with Runtime(executor=lambda a: "ok", policy=POLICY, audit_logger=audit) as runtime:
        for n in range(3):
            assert (await runtime.run_one(Action("read", "crm", {"n": n}))).ok
    verify = ["audit", "verify", "--db", postgres_dsn, "--public-key", f"{key}.pub"]
    result = runner.invoke(cli, [*verify, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checkpoints"] >= 1
    head = runner.invoke(cli, ["audit", "head", "--db", postgres_dsn])
    assert head.stdout.strip().startswith("6:")
    # Rewrite the first action and re-hash the whole chain consistently: it
    # links and hashes again, but no longer matches what the key signed.
    with AuditLogger(postgres_dsn, create=False, readonly=True) as reader:
        records = list(reader.store.records(Filters(view="records")))
    prev = GENESIS_HASH
    for record in records:
        fields = record._asdict()
        if record.id in (1, 2):  # the first action's start and final records
            fields["action_target"] = "elsewhere"
        fields["prev_hash"] = prev
        fields["hash"] = row_hash(AuditRecord(**fields))
        prev = fields["hash"]
        sql(
            postgres_dsn,
            "UPDATE aegis_audit_log SET action_target = %s, prev_hash = %s, hash = %s "
            "WHERE id = %s",
            fields["action_target"],
            fields["prev_hash"],
            fields["hash"],
            record.id,
        )
    assert runner.invoke(cli, ["audit", "verify", "--db", postgres_dsn]).exit_code == 0
    rewritten = runner.invoke(cli, verify)
    assert rewritten.exit_code == 1


ODD_TEXTS = [
    "",
    "NULL",
    'a "quoted" word',
    "back\\slash \\\\ and \\",
    '{braces}, commas, {"nested": [1, 2]}',
    "  spaces around  ",
    "line\nbreak\ttab",
    "ünïcödé ✓ 🛡️",
    "nul\x00inside",
    "a NUL's JSON escape written out: \\u0000",
]


@pytest.mark.parametrize("level", ["process", "result"])
def test_odd_text_in_every_field_is_stored_and_read_back_as_hashed(
    postgres_dsn: str, level: str
) -> None:
    """Quotes, backslashes, braces, "NULL", empty and non-ASCII text survive an append whole."""
    with AuditLogger(postgres_dsn, durability=level) as audit:
        for n, text in enumerate(ODD_TEXTS):
            d = PolicyDecision(
                Action(text or "t", text, {text: text, "n": n}), RiskLevel.LOW, Approval.AUTO, text
            )
            audit.log(text, d, result=Result(d.action, ResultStatus.SUCCESS, {"echo": text}))
        stored = list(audit.store.records(Filters(view="records")))
        report = audit.verify()
    assert report.ok, report.reason
    assert [r.id for r in stored] == list(range(1, len(ODD_TEXTS) + 1))
    for record, text in zip(stored, ODD_TEXTS, strict=True):
        assert record.hash == row_hash(record[:-1])
        if "\x00" not in text:  # NUL cannot be stored, and is marked
            assert record.session_id == text
            assert record.matched_rule == text
            assert record.action_target == text
            assert json.loads(record.result_data) == {"echo": text}
            assert json.loads(record.action_params) == {text: text, "n": n_of(record)}


def test_a_field_that_is_not_text_is_refused_and_nothing_is_written(postgres_dsn: str) -> None:
    """A draft holding a number where text belongs is a clear error; the chain stays as it was."""
    with AuditLogger(postgres_dsn) as audit:
        fill(audit, 1)
        store = audit.store
        assert isinstance(store, PostgresAuditStore)
        d = decision(2)
        draft = start_draft("s1", d)._replace(action_target=7)  # type: ignore[arg-type]
        with pytest.raises(StoreError, match="holds int 7, not text"):
            store.append([draft])
        assert audit.log("s1", d, result=success(d)) == 2
        report = audit.verify()
    assert report.ok, report.reason
    assert report.checked == 2


def n_of(record: AuditRecord) -> int:
    """The ``n`` an action of the odd-text test carries in its params."""
    return int(json.loads(record.action_params)["n"])


def test_an_append_after_the_prepared_statements_were_dropped_goes_through(
    postgres_dsn: str,
) -> None:
    """A writer whose session lost its prepared statements (a pooler's DISCARD) prepares again."""
    with AuditLogger(postgres_dsn) as audit:
        fill(audit, 1)
        store = audit.store
        assert isinstance(store, PostgresAuditStore)
        conn = store._writer_conn  # the writer's own session, as a pooler sees it
        assert conn is not None
        conn.execute("DEALLOCATE ALL")
        d = decision(2)
        assert audit.log("s1", d, result=success(d)) == 2
        # one of the statements dropped (the one a lone record's durable
        # append uses): the others are kept as they are
        conn.execute("DEALLOCATE aegis_audit_append_one_durable")
        d = decision(3)
        assert audit.log("s1", d, result=success(d)) == 3
        report = audit.verify()
    assert report.ok, report.reason
    assert report.checked == 3


@pytest.mark.parametrize("level", ["process", "result"])
def test_a_one_record_append_the_server_hashed_otherwise_is_refused(
    postgres_dsn: str, level: str
) -> None:
    """A one-record function changed to hash other text: the append fails, it never chains on.

    The client recomputes the hash of every record from the id and
    predecessor the server chose; quick (``process``) and flushed
    (``result``) appends both go through the one-record path here.
    """
    with AuditLogger(postgres_dsn, durability=level) as audit:
        fill(audit, 1)
        for routine in ("aegis_audit_append_one", "aegis_audit_append_one_call"):
            source = sql(postgres_dsn, f"SELECT pg_get_functiondef('{routine}'::regproc)")[0][0]
            assert "|| tail, 'UTF8'" in str(source)
            sql(postgres_dsn, str(source).replace("|| tail, 'UTF8'", "|| tail || ' ', 'UTF8'"))
        d = decision(2)
        with pytest.raises(StoreError, match="otherwise than Aegis does"):
            audit.log("s1", d, result=success(d))


def test_threads_appending_at_once_share_round_trips_and_flushes(postgres_dsn: str) -> None:
    """Eight threads logging at once through one store: a few commits carry them all, in order."""
    with AuditLogger(postgres_dsn, durability="result") as audit:
        fill(audit, 1)  # the tables exist; the chain's lock key is known
        store = audit.store
        assert isinstance(store, PostgresAuditStore)
        schema = sql(postgres_dsn, "SELECT current_schema()")[0][0]
        holder = psycopg.connect(postgres_dsn, autocommit=True)
        key = schema_lock_key(str(schema), "aegis_audit_log").as_string(holder)
        holder.execute(f"SELECT pg_advisory_lock({key})")  # the chain waits for us
        before = store.commits
        ids: dict[int, int] = {}

        def log(n: int) -> None:
            d = decision(100 + n)
            ids[n] = audit.log(f"thread-{n}", d, result=success(d))

        threads = [threading.Thread(target=log, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        # the first append waits on the server; the other seven queue behind it
        for _ in range(200):
            waiting = sql(
                postgres_dsn,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            if waiting[0][0]:
                break
            time.sleep(0.02)
        time.sleep(0.5)
        holder.execute(f"SELECT pg_advisory_unlock({key})")
        holder.close()
        for thread in threads:
            thread.join(timeout=60)
        report = audit.verify()
        stored = {r.id: r for r in audit.store.records(Filters(view="records"))}
        commits = store.commits - before
    assert report.ok, report.reason
    assert sorted(ids.values()) == list(range(2, 10))  # eight records, no gap, no duplicate
    for n, record_id in ids.items():
        assert stored[record_id].session_id == f"thread-{n}"
    # the first thread's own append, then one for the seven that queued meanwhile
    assert commits == 2, commits


def test_an_append_interrupted_while_waiting_for_the_server_leaves_the_store_usable(
    postgres_dsn: str,
) -> None:
    """A Ctrl-C during an append's round trip raises at once; the next append works, no fork.

    The round trip is held up by another session holding the chain's lock,
    and SIGALRM raises KeyboardInterrupt in the middle of the client's wait
    for the answer: the interrupted connection is closed (its outcome is
    unknown), and the next append settles on a new one.
    """
    schema = postgres_dsn.rsplit("%3D", 1)[1]
    store = PostgresAuditStore(postgres_dsn)
    try:
        started = decision(1)
        first = store.append([start_draft("s1", started)])[0]

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            with psycopg.connect(POSTGRES_DSN, autocommit=True) as holder:
                holder.execute(
                    "SELECT pg_advisory_lock(1095059283, hashtext(%s))",
                    (f"{schema}.aegis_audit_log",),
                )
                signal.setitimer(signal.ITIMER_REAL, 0.5)
                began = time.monotonic()
                with pytest.raises(KeyboardInterrupt):
                    store.append([start_draft("s1", decision(2))])
                assert time.monotonic() - began < 10  # interrupted, not the statement_timeout
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        # the lock is free again: the interrupted append may have committed
        # meanwhile or not; the next one is appended once, after it
        last = store.append([final_draft("s1", started, success(started), start_id=first.id)])[0]
        records = list(store.records(Filters(view="records")))
        assert records[0] == first
        assert records[-1] == last
        assert [r.action_params for r in records[1:-1]] in ([], ['{"n":2}'])
        report = store.verify()
        assert report.ok, report.reason
    finally:
        store.close()
