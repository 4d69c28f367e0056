"""The PostgreSQL audit trail behind a real pooler: PgBouncer in transaction mode.

A pooler hands each transaction of a client to whichever server session is
free: the session that answered a writer when it connected may serve
another client by the time an append of that writer is lost. Settling such
an append must never end that session, and, unable to stop the append
wherever it runs, must never write it again.

PgBouncer is Debian's (scripts/check installs it); it runs as the
``postgres`` OS user on a free port, in front of the test server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from pg_support import POSTGRES_DSN

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.filters import Filters
from aegis.core.record import start_draft
from aegis.core.risk import RiskLevel
from aegis.errors import AuditOutcomeUnknown
from aegis.stores.postgres.audit import AUDIT_TABLE, PostgresAuditStore

PGBOUNCER = Path("/usr/sbin/pgbouncer")


def _decision(n: int) -> PolicyDecision:
    return PolicyDecision(Action("write", "crm", {"n": n}), RiskLevel.LOW, Approval.AUTO, "r")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Pooler:
    """A PgBouncer of this test: transaction pooling, at most ``size`` server sessions."""

    dsn: str  # the test database, through the pooler
    schema: str  # a fresh schema of the test server, dropped afterwards


@pytest.fixture
def pooler() -> Iterator[Pooler]:
    if not PGBOUNCER.exists():  # fail, never skip: scripts/check installs it
        pytest.fail(f"{PGBOUNCER} is missing: apt-get install pgbouncer")
    target = urlsplit(POSTGRES_DSN)
    database = target.path.lstrip("/") or "test"
    base = Path(tempfile.mkdtemp(prefix="aegis-pgbouncer-"))
    port = _free_port()
    (base / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{database} = host={target.hostname or '127.0.0.1'} port={target.port or 5432} "
        f"dbname={database} user={target.username or 'postgres'}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\npool_mode = transaction\ndefault_pool_size = 2\n"
        # libpq's startup options (statement_timeout) are not passed on by PgBouncer
        "ignore_startup_parameters = options\n"
        f"logfile = {base}/pgbouncer.log\npidfile = {base}/pgbouncer.pid\n"
    )
    schema = f"aegis_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    prefix: list[str] = []
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    process = subprocess.Popen(
        [*prefix, str(PGBOUNCER), str(base / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dsn = f"postgresql://postgres@127.0.0.1:{port}/{database}"
    try:

        def answers() -> bool:
            try:
                with psycopg.connect(dsn, connect_timeout=2) as probe:
                    probe.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                return False

        _wait_for(answers, 30, "PgBouncer to answer")
        yield Pooler(dsn, schema)
    finally:
        pid_file = base / "pgbouncer.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(base, ignore_errors=True)
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def _chain_held(schema: str) -> Iterator[Callable[[], None]]:
    """The chain's lock held by a direct connection until the given release is called."""
    held = psycopg.connect(POSTGRES_DSN)
    held.execute(
        "SELECT pg_advisory_xact_lock(1095059283, hashtext(%s))", (f"{schema}.{AUDIT_TABLE}",)
    )
    try:
        yield held.commit
    finally:
        held.close()


def _waiting_for_locks(schema: str) -> int:
    """How many sessions wait for an advisory lock (the chain's: nothing else takes one)."""
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid = hashtext(%s)::oid",
            (f"{schema}.{AUDIT_TABLE}",),
        ).fetchone()
    return 0 if row is None else int(row[0])


def test_settling_behind_a_pooler_ends_no_other_clients_session(pooler: Pooler) -> None:
    """An append lost behind PgBouncer is settled without ending the session it first met.

    The writer connects (its first transactions run on server session S);
    another client then holds S in a transaction of its own, so the next
    append runs on a second session, where it waits for the chain's lock
    (held by a third connection) until the writer gives up on it. Settling
    ended S, the other client's session, by the process id S had when the
    writer connected. Now the other client keeps its session, and the
    append, which committed once the lock was free, is found and returned.
    """
    store = PostgresAuditStore(
        pooler.dsn,
        schema=pooler.schema,
        response_timeout=1,
        connect_timeout=5,
        statement_timeout=None,
    )
    other = psycopg.connect(pooler.dsn)  # a transaction of its own, on S
    try:
        (first,) = store.append([start_draft("s1", _decision(1))])
        other_pid = other.execute("SELECT pg_backend_pid()").fetchone()
        with _chain_held(pooler.schema) as release:
            # the lost append, then the settling, queue for the chain's lock
            def release_when_both_wait() -> None:
                with contextlib.suppress(Exception):
                    _wait_for(lambda: _waiting_for_locks(pooler.schema) >= 2, 60, "two waiters")
                release()

            releaser = threading.Thread(target=release_when_both_wait)
            releaser.start()
            try:
                (second,) = store.append([start_draft("s1", _decision(2))])
            finally:
                releaser.join()
        # the other client's session is still there, in the same transaction
        assert other.execute("SELECT pg_backend_pid()").fetchone() == other_pid
        other.commit()
        records = list(store.records(Filters(view="records")))
        report = store.verify()
    finally:
        other.close()
        store.close()
    assert report.ok, report.reason
    assert [(r.id, r.action_params) for r in records] == [
        (first.id, '{"n":1}'),
        (second.id, '{"n":2}'),
    ]


def test_an_append_lost_behind_a_pooler_and_not_found_fails_and_is_never_written_again(
    pooler: Pooler,
) -> None:
    """Behind PgBouncer a lost append that is not in the trail counts as failed, not retried.

    Both of the pooler's server sessions are held by other clients: the
    append waits in PgBouncer's queue until the writer gives up on it. The
    settling cannot tell an append dropped from one still on its way (and
    cannot end the session it may yet run on), so it reports the append's
    outcome unknown and writes nothing again; the two other clients keep
    their sessions.
    """
    store = PostgresAuditStore(
        pooler.dsn,
        schema=pooler.schema,
        response_timeout=2,
        connect_timeout=5,
        statement_timeout=None,
    )
    holders = [psycopg.connect(pooler.dsn) for _ in range(2)]
    try:
        (first,) = store.append([start_draft("s1", _decision(1))])
        pids = [h.execute("SELECT pg_backend_pid()").fetchone() for h in holders]
        assert pids[0] != pids[1]  # the pool's two sessions, one each
        # once the writer has given up (its response timeout), one frees its session
        timer = threading.Timer(3, holders[0].commit)
        timer.start()
        try:
            with pytest.raises(AuditOutcomeUnknown) as failed:
                store.append([start_draft("s1", _decision(2))])
        finally:
            timer.join()
        assert holders[1].execute("SELECT pg_backend_pid()").fetchone() == pids[1]
        holders[1].commit()
        (third,) = store.append([start_draft("s1", _decision(3))])
        records = list(store.records(Filters(view="records")))
        report = store.verify()
    finally:
        for holder in holders:
            holder.close()
        store.close()
    assert "not written again" in str(failed.value)
    assert report.ok, report.reason
    # the lost append was dropped with its client: not there, and never written twice
    assert [r.action_params for r in records] == ['{"n":1}', '{"n":3}']
    assert [r.id for r in records] == [first.id, third.id]
