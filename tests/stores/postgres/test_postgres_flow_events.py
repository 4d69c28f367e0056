"""An action's flow event written with its start record, on PostgreSQL.

When the usage store keeps its flow events in the audit trail's database and
schema, the start record's append inserts the event in the same transaction
and round trip; any other usage store notes it on its own connection, as
before. Either way another runtime's ``not_after`` sees it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from flow_horizon import looked_back
from pg_support import POSTGRES_DSN

from aegis import Action, AuditLogger, Policy, Runtime
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.limits import flow_event
from aegis.core.record import start_draft
from aegis.core.result import ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import StoreError
from aegis.stores.postgres.audit import PostgresAuditStore
from aegis.stores.postgres.connection import Database
from aegis.stores.postgres.usage import PostgresUsageStore

#: every action runs: no limit, no flow rule
PLAIN = Policy.from_dict({"rules": [{"name": "all", "match": {"type": "*"}, "approval": "auto"}]})
#: no external send once the session read a secret; everything else runs
NO_SEND_AFTER_SECRET = Policy.from_dict(
    {
        "rules": [
            {
                "name": "no_send_after_secret",
                "match": {"type": "send_external"},
                "conditions": {"after": {"type": "read_secret", "within": "session"}},
                "approval": "block",
            },
            {"name": "all", "match": {"type": "*"}, "approval": "auto"},
        ]
    }
)
#: mail runs while the session has read no secret
MAIL_UNLESS_SECRET: dict[str, Any] = {
    "name": "no_mail_after_secret",
    "match": {"type": "send_email"},
    "conditions": {"not_after": {"type": "read_secret", "within": "session"}},
    "approval": "auto",
}
#: no email once the session read a secret; nothing else runs
GUARDED = Policy.from_dict(
    {"rules": [MAIL_UNLESS_SECRET, {"name": "rest", "match": {"type": "*"}, "approval": "block"}]}
)


def sql(dsn: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    """Run one statement through a fresh connection, as an outsider would."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, args or None)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def other_schema() -> Iterator[str]:
    """The DSN of a second fresh schema of the test server, dropped afterwards."""
    schema = f"aegis_test_{uuid.uuid4().hex[:12]}"
    sql(POSTGRES_DSN, f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in POSTGRES_DSN else "?"
    try:
        yield f"{POSTGRES_DSN}{separator}options=-csearch_path%3D{schema}"
    finally:
        sql(POSTGRES_DSN, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class Counted:
    """Counts the calls of a store's methods that write flow events on its own connection."""

    def __init__(self, store: PostgresUsageStore) -> None:
        self.calls: list[str] = []
        for name in ("remember", "remember_many"):
            method = getattr(store, name)
            setattr(store, name, self._counting(name, method))

    def _counting(self, name: str, method: Any) -> Any:
        def counted(*args: Any) -> Any:
            self.calls.append(name)
            return method(*args)

        return counted


def events(dsn: str) -> list[tuple[object, ...]]:
    """The flow events in the DSN's schema: session, type, target, params."""
    return sql(
        dsn,
        "SELECT session_id, action_type, action_target, params FROM aegis_flow_events ORDER BY id",
    )


@pytest.mark.parametrize("level", ["result", "full"])
async def test_the_start_carries_the_event_in_one_append_and_another_runtime_sees_it(
    postgres_dsn: str, level: str
) -> None:
    """Usage beside the trail: no write of the usage store's own, one commit per start, and
    another runtime's not_after (its own connections) blocks the session that read the secret.
    At ``full`` the start's append is the procedure that also waits for the disk."""
    looked_back(postgres_dsn)  # the sender's rule looks back: events are noted
    audit = AuditLogger(postgres_dsn, durability=level)
    usage = audit.stores.usage
    assert isinstance(usage, PostgresUsageStore)
    store = audit.store
    assert isinstance(store, PostgresAuditStore)
    async with Runtime(
        executor=lambda action: "done", policy=PLAIN, audit_logger=audit, session_id="warm"
    ) as reader:
        assert (await reader.run_one(Action("list", "inbox"))).ok  # connects both stores
        counted = Counted(usage)
        reader.session_id = "shared"
        commits = store.commits
        assert (await reader.run_one(Action("read_secret", "vault", {"key": "k"}))).ok
        # the start (with the event) and the final: two appends, nothing else written
        assert store.commits == commits + 2
        assert counted.calls == []
    assert ("shared", "read_secret", "vault", '{"key":"k"}') in events(postgres_dsn)
    async with Runtime(
        executor=lambda action: "done",
        policy=GUARDED,
        audit_logger=AuditLogger(postgres_dsn),
        session_id="shared",
    ) as sender:
        blocked = await sender.run_one(Action("send_email", "smtp"))
        sender.session_id = "other"
        sent = await sender.run_one(Action("send_email", "smtp"))
    assert blocked.status.value == "blocked"
    assert sent.ok
    audit.close()
    with AuditLogger(postgres_dsn, create=False, readonly=True) as reader:
        report = reader.verify()
    assert report.ok, report.reason
    assert report.checked == 7  # the warm-up, the read and the two mails: a start and a final
    # each, but the blocked mail, which has a final only


def test_a_start_whose_event_fails_is_not_written_either(postgres_dsn: str) -> None:
    """The event's insert fails (a constraint): the append fails whole, the chain is unchanged."""
    usage = PostgresUsageStore(postgres_dsn)
    store = PostgresAuditStore(postgres_dsn)
    try:
        store.check()
        at = time.time()
        ok = flow_event("s", "read", "crm", {}, at)
        usage.forgotten("s")  # connects: the usage tables are there, its schema known
        assert store.guards(usage.db)
        decision = PolicyDecision(Action("read", "crm"), RiskLevel.LOW, Approval.AUTO, "r")
        first = store.append_guarded(start_draft("s", decision), usage.guard(None, ok))
        sql(
            postgres_dsn,
            "ALTER TABLE aegis_flow_events"
            " ADD CONSTRAINT no_poison CHECK (action_type <> 'poison')",
        )
        poison = PolicyDecision(Action("poison", "crm"), RiskLevel.LOW, Approval.AUTO, "r")
        bad = flow_event("s", "poison", "crm", {}, at)
        with pytest.raises(StoreError):
            store.append_guarded(start_draft("s", poison), usage.guard(None, bad))
        assert store.head().count == first.id == 1  # the start rolled back with its event
        assert events(postgres_dsn) == [("s", "read", "crm", "{}")]
        again = store.append_guarded(start_draft("s", decision), usage.guard(None, ok))
        assert again.id == 2  # the writer goes on
        assert store.verify().ok
    finally:
        store.close()
        usage.close()


def test_a_guard_of_another_schema_is_refused_before_anything_is_written(
    postgres_dsn: str, other_schema: str
) -> None:
    """The audit store writes only the events of its own schema's usage store."""
    usage = PostgresUsageStore(other_schema)
    store = PostgresAuditStore(postgres_dsn)
    try:
        usage.forgotten("s")
        assert not store.guards(usage.db)
        decision = PolicyDecision(Action("read", "crm"), RiskLevel.LOW, Approval.AUTO, "r")
        guard = usage.guard(None, flow_event("s", "read", "crm", {}, time.time()))
        with pytest.raises(StoreError, match="not beside the audit trail"):
            store.append_guarded(start_draft("s", decision), guard)
        assert store.head().count == 0
    finally:
        store.close()
        usage.close()


@pytest.mark.parametrize("where", ["other schema", "same DSN, schema option"])
async def test_a_usage_store_elsewhere_notes_the_event_on_its_own_connection(
    postgres_dsn: str, other_schema: str, where: str
) -> None:
    """Usage in another schema: each action's event is noted by the usage store, in its
    schema only, and a runtime counting there blocks the mail."""
    if where == "other schema":
        usage = PostgresUsageStore(other_schema)
        usage_dsn = other_schema
    else:
        usage = PostgresUsageStore(postgres_dsn, schema=other_schema.rsplit("%3D", 1)[1])
        usage_dsn = other_schema
    looked_back(usage_dsn)  # the sender's rule looks back: events are noted
    counted = Counted(usage)
    try:
        async with Runtime(
            executor=lambda action: "done",
            policy=PLAIN,
            audit_logger=AuditLogger(postgres_dsn),
            usage_store=usage,
            session_id="shared",
        ) as reader:
            for _ in range(2):
                assert (await reader.run_one(Action("read_secret", "vault"))).ok
        assert counted.calls == ["remember_many", "remember_many"]
        assert events(usage_dsn) == [("shared", "read_secret", "vault", "{}")] * 2
        assert sql(postgres_dsn, "SELECT to_regclass('aegis_flow_events')") == [(None,)]
        async with Runtime(
            executor=lambda action: "done",
            policy=GUARDED,
            audit_logger=AuditLogger(postgres_dsn),
            usage_store=usage,
            session_id="shared",
        ) as sender:
            assert (await sender.run_one(Action("send_email", "smtp"))).status.value == "blocked"
    finally:
        usage.close()


async def test_a_trail_of_the_previous_version_is_read_as_is_and_migrated_by_a_writer(
    postgres_dsn: str,
) -> None:
    """A version-5 trail (no flow append): a reader verifies it as it is, a writer that may not
    migrate notes events the ordinary way, a writer that may migrates and writes them with
    the start."""
    looked_back(postgres_dsn)  # some policy looks back: events are noted
    async with Runtime(
        executor=lambda action: "done", policy=PLAIN, audit_logger=AuditLogger(postgres_dsn)
    ) as runtime:
        assert (await runtime.run_one(Action("read", "crm"))).ok
    sql(postgres_dsn, "DROP PROCEDURE aegis_audit_append_flow_call")
    sql(postgres_dsn, "DROP FUNCTION aegis_audit_append_flow")
    sql(postgres_dsn, "UPDATE aegis_schema_versions SET version = 5 WHERE component = 'audit'")
    version = "SELECT version FROM aegis_schema_versions WHERE component = 'audit'"
    with AuditLogger(postgres_dsn, create=False, readonly=True) as reader:
        report = reader.verify()
        assert report.ok, report.reason
        assert report.checked == 2
    old = AuditLogger(postgres_dsn, create=False)
    async with Runtime(
        executor=lambda action: "done", policy=PLAIN, audit_logger=old, session_id="old"
    ) as runtime:
        for _ in range(2):
            assert (await runtime.run_one(Action("read_secret", "vault"))).ok
    assert sql(postgres_dsn, version) == [(5,)]
    new = AuditLogger(postgres_dsn)
    async with Runtime(
        executor=lambda action: "done", policy=PLAIN, audit_logger=new, session_id="new"
    ) as runtime:
        assert (await runtime.run_one(Action("read", "crm"))).ok
        usage = new.stores.usage
        assert isinstance(usage, PostgresUsageStore)
        counted = Counted(usage)
        assert (await runtime.run_one(Action("read_secret", "vault"))).ok
        assert counted.calls == []  # written with the start, through the new function
    assert sql(postgres_dsn, version) == [(7,)]
    noted = events(postgres_dsn)
    assert noted.count(("old", "read_secret", "vault", "{}")) == 2
    assert noted.count(("new", "read_secret", "vault", "{}")) == 1
    with AuditLogger(postgres_dsn, create=False, readonly=True) as reader:
        report = reader.verify()
    assert report.ok, report.reason
    assert report.checked == 10


async def test_an_action_with_charges_reserves_them_first_and_notes_its_event_as_before(
    postgres_dsn: str,
) -> None:
    """A limited rule on the shared database: the charges are reserved in the usage store's
    own transaction and the event noted there, the limit holds, the start carries nothing."""
    limited = Policy.from_dict(
        {
            "rules": [
                {
                    "name": "sends",
                    "match": {"type": "send"},
                    "limit": {"max": 2, "per": "1h"},
                    "approval": "auto",
                }
            ]
        }
    )
    looked_back(postgres_dsn)  # some policy looks back: events are noted
    audit = AuditLogger(postgres_dsn)
    usage = audit.stores.usage
    assert isinstance(usage, PostgresUsageStore)
    counted = Counted(usage)
    async with Runtime(
        executor=lambda action: "done", policy=limited, audit_logger=audit, agent="a"
    ) as runtime:
        statuses = [(await runtime.run_one(Action("send", "smtp"))).status.value for _ in "abc"]
    audit.close()
    assert statuses == ["success", "success", "blocked"]
    assert counted.calls == ["remember_many", "remember_many"]
    assert [row[1] for row in events(postgres_dsn)] == ["send", "send"]


def test_one_dsn_of_two_hosts_that_reach_two_servers_keeps_the_events_where_they_are_read(
    tmp_path: Any,
) -> None:
    """host=a,b takes each connection to the first server that answers: the usage store's
    to the test server (the other one down), the audit's, later, to the other one. The DSNs
    are equal, but the servers say they are two: the events are noted where the usage store
    reads them, and the send after the secret is blocked. (Before, the audit wrote them on
    the other server, the usage store never saw the read, and the send ran.)"""
    from local_postgres import ClusterUnavailable, LocalCluster

    try:
        other = LocalCluster()
    except ClusterUnavailable as exc:
        pytest.fail(str(exc))
    schema = f"aegis_two_hosts_{uuid.uuid4().hex[:8]}"
    dsn = f"host=127.0.0.1,127.0.0.1 port={other.port},5432 user=postgres dbname=test"
    usage = PostgresUsageStore(dsn, schema=schema)
    policy = NO_SEND_AFTER_SECRET
    try:
        usage.forgotten("s")  # connects while the other server is down: to the test server
        other.start()
        with psycopg.connect(other.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE test")
        audit = PostgresAuditStore(dsn, schema=schema)
        audit.check()  # connects now: to the other server, the first host that answers
        assert not audit.guards(usage.db)

        async def run() -> list[ResultStatus]:
            async with Runtime(
                executor=lambda action: "ok",
                policy=policy,
                audit_logger=AuditLogger(store=audit),
                usage_store=usage,
                session_id="s",
            ) as rt:
                read = await rt.run_one(Action("read_secret", "vault"))
                send = await rt.run_one(Action("send_external", "mail"))
            return [read.status, send.status]

        assert asyncio.run(run()) == [ResultStatus.SUCCESS, ResultStatus.BLOCKED]
        assert usage.latest_event("s", None, action_type="read_secret") is not None
    finally:
        usage.close()
        other.stop()
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_a_usage_store_the_server_says_is_beside_shares_the_append(postgres_dsn: str) -> None:
    """The same DSN, another store object, and the servers say they are one: the start record
    carries its flow event, one round trip. A usage store not yet connected is connected to
    ask its server; a database no usage store reads from is not confirmed."""
    usage = PostgresUsageStore(postgres_dsn)
    store = PostgresAuditStore(postgres_dsn)
    try:
        store.check()
        decision = PolicyDecision(Action("read", "crm"), RiskLevel.LOW, Approval.AUTO, "r")
        event = flow_event("s", "read", "crm", {}, time.time())
        nobody = Database(postgres_dsn)
        assert not store.guards(nobody)  # no usage store to say where it reads
        with pytest.raises(StoreError, match="not beside"):
            store.append_guarded(start_draft("s", decision), usage.guard(None, event))
        assert usage.db.flow_server is None
        assert store.guards(usage.db)  # connects the usage store: its server says
        assert usage.db.flow_server is not None
        store.append_guarded(start_draft("s", decision), usage.guard(None, event))
        assert events(postgres_dsn) == [("s", "read", "crm", "{}")]
    finally:
        store.close()
        usage.close()


class Attempts(PostgresAuditStore):
    """The real audit store, counting the start appends it is asked to carry an event in."""

    attempts = 0

    def append_guarded(self, draft: Any, guard: Any) -> Any:
        self.attempts += 1
        return super().append_guarded(draft, guard)


def test_a_role_that_may_not_ask_its_server_which_it_is_notes_events_the_ordinary_way() -> None:
    """Hardened servers revoke pg_control_system() from PUBLIC. The connections of a role that
    may not run it cannot say which server they reach: guards() says no, once, and no action
    tries to carry its event in its start (before, every one did, was refused, and was noted
    again the ordinary way). The flow rules still see every event. The revoke is made in a
    database of this test's own (pg_proc is per database): other tests never see it."""
    suffix = uuid.uuid4().hex[:8]
    role, database = f"aegis_hardened_{suffix}", f"aegis_hardened_{suffix}"
    password = uuid.uuid4().hex
    sql(POSTGRES_DSN, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        sql(POSTGRES_DSN, f"CREATE DATABASE {database} OWNER {role}")
        try:
            admin = POSTGRES_DSN.rsplit("/", 1)[0] + f"/{database}"
            sql(admin, "REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
            dsn = f"postgresql://{role}:{password}@127.0.0.1:5432/{database}"
            refused = sql(
                admin, "SELECT has_function_privilege(%s, 'pg_control_system()', 'EXECUTE')", role
            )
            assert refused == [(False,)]
            policy = NO_SEND_AFTER_SECRET
            audit = Attempts(dsn)
            usage = PostgresUsageStore(dsn)

            async def run() -> list[ResultStatus]:
                async with Runtime(
                    executor=lambda action: "ok",
                    policy=policy,
                    audit_logger=AuditLogger(store=audit),
                    usage_store=usage,
                    session_id="s",
                ) as rt:
                    actions = [Action("list", "crm") for _ in range(3)]
                    actions += [Action("read_secret", "vault"), Action("send_external", "mail")]
                    return [(await rt.run_one(action)).status for action in actions]

            try:
                statuses = asyncio.run(run())
                assert statuses == [ResultStatus.SUCCESS] * 4 + [ResultStatus.BLOCKED]
                assert audit.attempts == 0  # no start tried to carry its event
                assert usage.latest_event("s", None, action_type="read_secret") is not None
                assert usage.latest_event("s", None, action_type="list") is not None
                assert not audit.guards(usage.db)
            finally:
                usage.close()
                audit.close()
        finally:
            sql(POSTGRES_DSN, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    finally:
        sql(POSTGRES_DSN, f"DROP ROLE IF EXISTS {role}")


def test_a_cover_asked_while_a_horizon_is_declared_waits_and_then_notes_events(
    postgres_dsn: str,
) -> None:
    """Another process declares a horizon in a transaction still open: a cover asked meanwhile
    waits for it, and once it commits says events must be noted; no gap is written on the
    horizon it replaced (the rule that declared it would read that gap as unsure history)."""
    store = PostgresUsageStore(postgres_dsn)
    try:
        store.forget_events(0.0, time.time())
        answers: list[bool] = []
        with psycopg.connect(postgres_dsn) as declaring:  # a transaction, left open
            declaring.execute("UPDATE aegis_flow_horizon SET seconds = 3600")
            asking = threading.Thread(
                target=lambda: answers.append(store.cover_events("s", time.time() + 30))
            )
            asking.start()
            deadline = time.monotonic() + 30
            while asking.is_alive() and time.monotonic() < deadline:
                waiting = sql(postgres_dsn, "SELECT count(*) FROM pg_locks WHERE NOT granted")
                if waiting[0][0]:
                    break
                time.sleep(0.01)
            assert asking.is_alive()  # it waits for the declaration
            declaring.commit()
        asking.join()
        assert answers == [False]
        assert store.forgotten("s") is None
    finally:
        store.close()


#: no email once the session read a secret; everything else runs
MAIL_AFTER_SECRET_BLOCKED = Policy.from_dict(
    {
        "rules": [
            MAIL_UNLESS_SECRET,
            {"name": "mail_after_secret", "match": {"type": "send_email"}, "approval": "block"},
            {"name": "rest", "match": {"type": "*"}, "approval": "auto"},
        ]
    }
)
#: a WAL writer that leaves a commit made without a flush in memory for 10 s
LAZY_WAL = (
    "-c wal_writer_delay=10000 -c wal_writer_flush_after=2147483647 -c wal_level=minimal"
    " -c max_wal_senders=0 -c autovacuum=off -c checkpoint_timeout=3600"
)


async def test_an_event_written_with_its_start_survives_a_server_crash_during_its_action() -> None:
    """The server crashes while the secret is read: the read's event, written with its start,
    is still there once the server is back, and another runtime's not_after blocks the mail.

    (Its start committed without a flush: the crash took it with its event, and only this
    process's next append would have written it again, after the mail was let through.)
    """
    from local_postgres import ClusterUnavailable, LocalCluster

    try:
        server = LocalCluster(settings=LAZY_WAL)
        server.start()
    except ClusterUnavailable as exc:
        pytest.fail(str(exc))
    try:
        crashed: list[str] = []

        def execute(action: Action) -> str:
            if action.type == "read_secret":
                server.crash()
                crashed.append(action.type)
                return "secret"
            return "done"

        audit = AuditLogger(server.dsn, connect_timeout=2, response_timeout=5)
        async with Runtime(
            executor=execute,
            policy=MAIL_AFTER_SECRET_BLOCKED,
            audit_logger=audit,
            session_id="warm",
        ) as reader:
            assert (await reader.run_one(Action("list", "inbox"))).ok  # tells the horizon
            for attempt in range(3):
                reader.session_id = session = f"read-{attempt}"
                for _ in range(3):  # the first append after a restart may find its link broken
                    await reader.run_one(Action("read_secret", "vault"))
                    if crashed:
                        break
                assert crashed == ["read_secret"]
                crashed.clear()
                server.restart()
                assert (session, "read_secret", "vault", "{}") in events(server.dsn)
                async with Runtime(
                    executor=execute,
                    policy=MAIL_AFTER_SECRET_BLOCKED,
                    audit_logger=AuditLogger(server.dsn, connect_timeout=2),
                    session_id=session,
                ) as sender:
                    sent = await sender.run_one(Action("send_email", "smtp"))
                assert sent.status is ResultStatus.BLOCKED
    finally:
        server.stop()


async def test_a_gap_relied_on_survives_a_crash_of_a_server_that_does_not_wait_for_the_disk() -> (
    None
):
    """A server whose default is synchronous_commit=off: no policy looks back, so the reader's
    session is covered by a gap instead of events; the server crashes while the secret is
    read. The gap is still there once it is back, and another runtime's rule blocks the
    mail (unsure), where the crash used to take the gap and let the mail out."""
    from local_postgres import ClusterUnavailable, LocalCluster

    try:
        server = LocalCluster(settings=LAZY_WAL + " -c synchronous_commit=off")
        server.start()
    except ClusterUnavailable as exc:
        pytest.fail(str(exc))
    try:
        crashed: list[str] = []

        def execute(action: Action) -> str:
            if action.type == "read_secret" and not crashed:
                server.crash()
                crashed.append(action.type)
                return "secret"
            return "done"

        audit = AuditLogger(server.dsn, connect_timeout=2, response_timeout=5)
        async with Runtime(
            executor=execute, policy=PLAIN, audit_logger=audit, session_id="warm"
        ) as reader:
            assert (await reader.run_one(Action("list", "inbox"))).ok
            sql(server.dsn, "CHECKPOINT")  # what came before is on disk
            reader.session_id = "s"
            await reader.run_one(Action("read_secret", "vault"))
        assert crashed == ["read_secret"]
        server.restart()
        assert sql(server.dsn, "SELECT session_id FROM aegis_flow_gaps WHERE session_id = 's'")
        async with Runtime(
            executor=execute,
            policy=MAIL_AFTER_SECRET_BLOCKED,
            audit_logger=AuditLogger(server.dsn, connect_timeout=2),
            session_id="s",
        ) as sender:
            sent = await sender.run_one(Action("send_email", "smtp"))
        assert sent.status is ResultStatus.BLOCKED
    finally:
        server.stop()


def test_appends_race_on_a_database_whose_default_isolation_is_repeatable_read(
    tmp_path: Any,
) -> None:
    """Four writers append at once to a server whose default is REPEATABLE READ: every
    append lands (an append's snapshot would predate the chain's lock, its head be stale
    and its insert refused), and the chain verifies."""
    from local_postgres import ClusterUnavailable, LocalCluster

    try:
        server = LocalCluster(settings="-c default_transaction_isolation='repeatable read'")
        server.start()
    except ClusterUnavailable as exc:
        pytest.fail(str(exc))
    try:
        first = PostgresAuditStore(server.dsn)
        first.check()  # the schema, once
        first.close()
        failures: list[BaseException] = []

        def write(n: int) -> None:
            store = PostgresAuditStore(server.dsn)
            try:
                for i in range(40):
                    decision = PolicyDecision(
                        Action("write", "crm", {"n": n, "i": i}), RiskLevel.LOW, Approval.AUTO, "r"
                    )
                    store.append([start_draft(f"w{n}", decision)])
            except BaseException as exc:
                failures.append(exc)
            finally:
                store.close()

        writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        reader = PostgresAuditStore(server.dsn, create=False, readonly=True)
        try:
            report = reader.verify()
        finally:
            reader.close()
        assert failures == []
        assert report.ok, report.reason
        assert report.checked == 160
    finally:
        server.stop()
