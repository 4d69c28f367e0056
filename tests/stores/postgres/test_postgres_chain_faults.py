"""The PostgreSQL chain under faults: a fleet of writers, kill -9, a server crash, a silent server.

The server restart runs on a cluster of the test's own (initdb into a temp
dir as the ``postgres`` OS user, a free port), never on the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.filters import Filters
from aegis.core.limits import flow_event
from aegis.core.policy import Policy
from aegis.core.record import DecisionStamp, final_draft, start_draft
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AuditOutcomeUnknown, StoreError
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime
from aegis.stores.postgres.audit import PostgresAuditStore
from aegis.stores.postgres.usage import PostgresUsageStore

WRITER = Path(__file__).with_name("chain_writer.py")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
POLICY = Policy.from_dict(
    {"version": "1", "defaults": {"risk_level": "low", "approval": "auto"}, "rules": []}
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------- a server of our own


@dataclass
class OwnServer:
    """A PostgreSQL cluster of this test alone."""

    base: Path
    port: int
    user: pwd.struct_passwd = field(default_factory=lambda: pwd.getpwnam("postgres"))
    settings: str = ""

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=on "
            + self.settings
        )

    def init(self) -> None:
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"),
            "-o", self._options(), "-w", "-t", "120", "start",
        )  # fmt: skip

    def crash_and_restart(self) -> None:
        """Stop at once, as a crash would (no checkpoint, no flush), and start again.

        The postmaster gets SIGQUIT, the signal of ``pg_ctl stop -m immediate``,
        from this process: the crash comes the moment the test calls for it,
        not once runuser and pg_ctl have started, seconds later on a loaded
        machine, while the WAL writer may write what the crash was to take.
        """
        pid_file = self.data / "postmaster.pid"
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
        # the postmaster removes its pid file once every backend is gone
        _wait_for(lambda: not pid_file.exists(), 120, "the crashed server to exit")
        self.start()

    def stop(self) -> None:
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
        )


@pytest.fixture
def own_server(request: pytest.FixtureRequest) -> Iterator[OwnServer]:
    """A fresh cluster on a free port, stopped and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="aegis-pg-"))
    server = OwnServer(base, _free_port(), settings=getattr(request, "param", ""))
    if os.geteuid() == 0:
        os.chown(base, server.user.pw_uid, server.user.pw_gid)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # never started, or down
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- a fleet of writers


class Writer:
    """One chain_writer.py process and the actions it was told succeeded."""

    def __init__(self, dsn: str, worker: int) -> None:
        self.worker = worker
        self.acked: list[int] = []
        self.process = subprocess.Popen(
            [sys.executable, str(WRITER), dsn, str(worker)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.acked.append(int(line))

    def kill(self) -> None:
        """SIGKILL, at whatever moment of an action it is in."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        self.close()

    def close(self) -> None:
        """Close the pipes to the process (it is gone)."""
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()

    def stop(self) -> None:
        """Close stdin: it finishes the action in hand and leaves."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=120)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=30)
        self.close()


def test_eight_writers_kill_9_and_a_server_crash_leave_one_chain_with_every_acked_record(
    own_server: OwnServer,
) -> None:
    """No fork, gap, duplicate or lost acknowledged record through SIGKILLs and a server crash."""
    dsn = own_server.dsn
    PostgresAuditStore(dsn).check()  # create the tables before the fleet starts
    writers = [Writer(dsn, w) for w in range(8)]
    everyone = list(writers)

    def acked() -> int:
        return sum(len(w.acked) for w in everyone)

    try:
        _wait_for(lambda: all(len(w.acked) >= 3 for w in writers), 180, "every writer to write")
        # kill -9 two writers at random moments of their actions; others take their place
        for victim in writers[:2]:
            time.sleep(random.uniform(0, 0.3))
            victim.kill()
        writers = [*writers[2:], Writer(dsn, 8), Writer(dsn, 9)]
        everyone += writers[-2:]
        before = acked()
        _wait_for(lambda: acked() >= before + 40, 180, "the fleet to go on after the kills")
        # the server crashes mid-run (no flush, no checkpoint) and comes back
        own_server.crash_and_restart()
        after_crash = acked()
        _wait_for(lambda: acked() >= after_crash + 40, 180, "the fleet to go on after the crash")
        writers[0].kill()
        for writer in writers[1:]:
            writer.stop()
    finally:
        for writer in everyone:
            if writer.process.poll() is None:
                writer.process.kill()
                writer.process.wait()
            writer.close()

    reader = PostgresAuditStore(dsn, readonly=True, create=False)
    try:
        report = reader.verify()
        assert report.ok, report.reason  # one chain: no fork, no gap, no edit
        records = list(reader.records(Filters(view="records")))
    finally:
        reader.close()
    assert [r.id for r in records] == list(range(1, len(records) + 1))
    finals = Counter(
        (json.loads(r.context or "{}")["w"], json.loads(r.context or "{}")["n"], r.kind)
        for r in records
    )
    assert max(finals.values()) == 1  # no record was written twice
    for writer in everyone:
        for n in writer.acked:
            assert (writer.worker, n, "final") in finals, (writer.worker, n)
    assert report.checked == len(records) > acked()


# the WAL writer waits 10 s (its longest) between writes, and nothing else
# writes the WAL: a commit that does not wait for the disk is lost by a
# crash soon after it
_LAZY_WAL = (
    "-c wal_writer_delay=10000 -c wal_writer_flush_after=2147483647 -c wal_level=minimal "
    "-c max_wal_senders=0 -c autovacuum=off -c checkpoint_timeout=3600"
)


@pytest.mark.parametrize("own_server", [_LAZY_WAL], indirect=True)
def test_a_start_lost_in_a_server_crash_is_recorded_again_before_its_outcome(
    own_server: OwnServer,
) -> None:
    """A crash that loses an unflushed start: the final record names the start recorded again."""
    store = PostgresAuditStore(own_server.dsn, durability="result", connect_timeout=2)
    decision = PolicyDecision(Action("write", "crm", {"n": 1}), RiskLevel.LOW, Approval.AUTO, "r")
    try:
        store.check()
        # The WAL writer's round comes every 10 s whatever the test does: a
        # slow moment between the start and the crash lets it write the start,
        # and a crash that keeps the start proves nothing. Then the next action
        # (its own session) tries again; one of five crashes must take its start.
        for attempt in range(1, 6):
            session = f"s{attempt}"
            (start,) = store.append([start_draft(session, decision)])
            own_server.crash_and_restart()  # the start was committed, never flushed
            if store.count(Filters(session_id=session, view="records")) == 0:
                break  # the crash took it
        else:
            pytest.fail("five crashes in a row kept a start that was never flushed")
        outcome = Result(decision.action, ResultStatus.SUCCESS, {"done": True})
        (final,) = store.append([final_draft(session, decision, outcome, start_id=start.id)])
        records = list(store.records(Filters(session_id=session, view="records")))
        report = store.verify()
    finally:
        store.close()
    assert report.ok, report.reason
    assert [(r.kind, r.start_id) for r in records] == [("start", None), ("final", records[0].id)]
    assert final.start_id == records[0].id
    assert records[0][1:-2] == start[1:-2]  # the same start, recorded again


@pytest.mark.parametrize("own_server", [_LAZY_WAL], indirect=True)
def test_a_start_written_with_its_flow_event_survives_a_server_crash(
    own_server: OwnServer,
) -> None:
    """A start written with its flow event waits for the disk, at ``result`` too: a crash
    right after it keeps both (another process's flow rule reads the event before this one
    could write it again). Two crashes, each after a writer's first such start."""
    decision = PolicyDecision(Action("write", "crm", {"n": 1}), RiskLevel.LOW, Approval.AUTO, "r")
    events = "SELECT action_type, params FROM aegis_flow_events WHERE session_id = %s"
    for attempt in range(1, 3):
        session = f"s{attempt}"
        store = PostgresAuditStore(own_server.dsn, durability="result", connect_timeout=2)
        usage = PostgresUsageStore(own_server.dsn, connect_timeout=2)
        try:
            store.check()
            usage.forgotten(session)  # the usage tables are there, its schema known
            assert store.guards(usage.db)
            event = flow_event(session, "write", "crm", {"n": 1}, time.time())
            start = store.append_guarded(start_draft(session, decision), usage.guard(None, event))
        finally:
            store.close()
            usage.close()
        own_server.crash_and_restart()
        reader = PostgresAuditStore(own_server.dsn, create=False, readonly=True)
        try:
            records = list(reader.records(Filters(session_id=session, view="records")))
            report = reader.verify()
        finally:
            reader.close()
        assert [r[1:] for r in records] == [start[1:]]
        assert report.ok, report.reason
        with psycopg.connect(own_server.dsn) as conn:
            assert conn.execute(events, (session,)).fetchall() == [("write", '{"n":1}')]


def _decision(n: int) -> PolicyDecision:
    """An action let through, told apart by ``n``."""
    return PolicyDecision(Action("write", "crm", {"n": n}), RiskLevel.LOW, Approval.AUTO, "r")


@pytest.mark.parametrize("own_server", [_LAZY_WAL], indirect=True)
def test_a_later_start_given_the_id_of_a_start_lost_in_a_crash_keeps_its_own_outcome(
    own_server: OwnServer,
) -> None:
    """A crash takes an action's start and the record before it; its outcome is never written.

    The start is recorded again, at the lower id the crash freed; the next
    action of the same writer then gets the lost start's old id, and its
    final record must name its own start, not the one recorded again.
    """

    decision = _decision
    other = PostgresAuditStore(own_server.dsn, connect_timeout=2)
    store = PostgresAuditStore(own_server.dsn, durability="result", connect_timeout=2)
    try:
        for attempt in range(1, 6):  # see the test above: the WAL writer may keep them
            before = store.head().count
            # another writer's start, then this writer's: neither flushed
            other.append([start_draft(f"other{attempt}", decision(0))])
            (lost,) = store.append([start_draft(f"s{attempt}", decision(1))])
            own_server.crash_and_restart()
            if store.head().count == before:
                break  # the crash took both; action 1 fails, its outcome never written
        else:
            pytest.fail("five crashes in a row kept starts that were never flushed")
        session = f"s{attempt}"
        (start,) = store.append([start_draft(session, decision(2))])
        assert start.id == lost.id  # action 1's start was recorded again, just before it
        outcome = Result(decision(2).action, ResultStatus.SUCCESS, {"done": True})
        (final,) = store.append([final_draft(session, decision(2), outcome, start_id=start.id)])
        records = list(store.records(Filters(session_id=session, view="records")))
        report = store.verify()
    finally:
        other.close()
        store.close()
    assert report.ok, report.reason
    assert final.start_id == start.id
    again = lost.id - 1
    assert [(r.id, r.kind, r.start_id) for r in records] == [
        (again, "start", None),  # action 1, recorded again: still without an outcome
        (start.id, "start", None),
        (final.id, "final", start.id),
    ]


def _cut_the_writer(dsn: str) -> None:
    """End the backend of the store's writing connection; the server goes on."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND query LIKE %s",
            ("%aegis_audit_append%",),
        ).fetchall()
    assert ended == [(True,)]


@pytest.mark.parametrize("own_server", [_LAZY_WAL], indirect=True)
def test_a_start_still_there_after_a_lost_connection_is_recorded_again_if_a_crash_takes_it(
    own_server: OwnServer,
) -> None:
    """A connection lost while the server stays up, then a crash before the outcome.

    Action 1 begins; its writer's connection is cut (the server runs on);
    action 2 begins on a new connection, which finds action 1's start
    there, not yet on disk. The crash then takes both starts, and the final
    record of action 1 must name action 1's start recorded again.
    """
    opened: list[PostgresAuditStore] = []
    try:
        for attempt in range(1, 6):  # see the tests above: the WAL writer may keep them
            # a store of its own per attempt: its first append is the connection's last query
            store = PostgresAuditStore(own_server.dsn, durability="result", connect_timeout=2)
            opened.append(store)
            session = f"s{attempt}"
            before = store.head().count
            (first,) = store.append([start_draft(session, _decision(1))])
            _cut_the_writer(own_server.dsn)
            store.append([start_draft(session, _decision(2))])
            own_server.crash_and_restart()
            if store.head().count == before:
                break  # the crash took both starts
        else:
            pytest.fail("five crashes in a row kept starts that were never flushed")
        outcome = Result(_decision(1).action, ResultStatus.SUCCESS, {"done": True})
        (final,) = store.append([final_draft(session, _decision(1), outcome, start_id=first.id)])
        records = list(store.records(Filters(session_id=session, view="records")))
        report = store.verify()
    finally:
        for each in opened:
            each.close()
    assert report.ok, report.reason
    starts = {r.id: json.loads(r.action_params)["n"] for r in records if r.kind == "start"}
    assert starts[final.start_id] == 1  # action 1's start, recorded again
    assert sorted(starts.values()) == [1, 2]  # both starts recorded again


# ---------------------------------------------------------------- a server that stops answering


class StallingProxy:
    """A loopback TCP proxy to a server that, once stalled, keeps every socket open and silent."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stalled = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while not self._closed.is_set():
            if self._stalled.is_set():  # hold the bytes: the peer hears nothing
                self._closed.wait(0.1)
                continue
            try:
                data = source.recv(65536)
                if not data:
                    return
                if self._stalled.is_set():
                    self._closed.wait()
                    return
                sink.sendall(data)
            except OSError:
                return

    def stall(self) -> None:
        """From now on nothing more passes, in either direction; nothing is closed."""
        self._stalled.set()

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            sock.close()


def _through(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


async def test_a_server_that_stops_answering_fails_the_action_not_runs_it(
    postgres_dsn: str,
) -> None:
    """A silent server (a stalled pooler) fails the next action within response_timeout."""
    target = urlsplit(postgres_dsn)
    proxy = StallingProxy(target.hostname or "127.0.0.1", target.port or 5432)
    ran: list[str] = []
    try:
        audit = AuditLogger(
            _through(postgres_dsn, proxy.port), response_timeout=1, connect_timeout=2
        )
        async with Runtime(
            executor=lambda action: ran.append(action.type), policy=POLICY, audit_logger=audit
        ) as runtime:
            assert (await runtime.run_one(Action("read", "crm"))).ok
            proxy.stall()
            # a safety net for the test run only: without the deadline this never returns
            result = await asyncio.wait_for(runtime.run_one(Action("update", "crm")), 120)
            assert result.status is ResultStatus.FAILED
            assert "not run" in str(result.error)
        assert ran == ["read"]
    finally:
        proxy.close()


async def test_a_silent_server_fails_a_limited_action_at_its_usage_check(
    postgres_dsn: str,
) -> None:
    """With a limit, the usage counters' round trip has the deadline too: FAILED, not run."""
    target = urlsplit(postgres_dsn)
    proxy = StallingProxy(target.hostname or "127.0.0.1", target.port or 5432)
    ran: list[str] = []
    policy = Policy.from_dict(
        {
            "version": "1",
            "defaults": {"risk_level": "low", "approval": "auto"},
            "rules": [
                {
                    "name": "sends",
                    "match": {"type": "send"},
                    "limit": {"max": 100, "per": "1h"},
                    "approval": "auto",
                }
            ],
        }
    )
    try:
        audit = AuditLogger(
            _through(postgres_dsn, proxy.port), response_timeout=1, connect_timeout=2
        )
        store = audit.store
        assert isinstance(store, PostgresAuditStore)
        usage = PostgresUsageStore(store.db)  # the trail's database, its deadline
        async with Runtime(
            executor=lambda action: ran.append(action.type),
            policy=policy,
            audit_logger=audit,
            usage_store=usage,
        ) as runtime:
            assert (await runtime.run_one(Action("send", "crm"))).ok
            proxy.stall()
            result = await asyncio.wait_for(runtime.run_one(Action("send", "crm")), 120)
            # the counter's round trip ran out of time: blocked, fail-closed
            assert result.status is ResultStatus.FAILED
            assert "blocked" in str(result.error)
        assert ran == ["send"]
    finally:
        proxy.close()


# ---------------------------------------------------------------- an answer that comes too late


class HoldingProxy:
    """A loopback TCP proxy that can hold what the connections open so far send to the server.

    :meth:`hold` keeps every byte those clients send from then on; the
    connections opened afterwards pass as usual. :meth:`release` sends what
    was held, as a network that was stuck and delivers late: the server
    then runs a query whose client gave up on it long ago.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._held: dict[socket.socket, bytearray] = {}
        self.delivered = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            with self._lock:
                held = self._held.get(source)
                if held is not None:
                    held += data  # the client's end may close: the bytes stay held
                    if not data:
                        return
                    continue
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            with contextlib.suppress(OSError):
                sink.sendall(data)

    def hold(self) -> None:
        """From now on, keep what the clients connected so far send."""
        with self._lock:
            for client, _ in self._pairs:
                self._held[client] = bytearray()

    def release(self) -> None:
        """Send the held bytes to the server; :attr:`delivered` is set once it answered or left."""
        with self._lock:
            pairs = [(c, s, self._held.pop(c)) for c, s in self._pairs if c in self._held]
        for _, server, data in pairs:
            try:
                server.sendall(bytes(data))
                server.settimeout(30)
                server.recv(1)  # an answer, or the end of a connection the server had closed
            except OSError:
                pass
        self.delivered.set()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for client, server in self._pairs:
                client.close()
                server.close()


def test_an_append_whose_answer_came_too_late_is_never_written_twice(postgres_dsn: str) -> None:
    """A response timeout, then the stuck append reaches the server: one copy, not two.

    The client gives up on the round trip (response_timeout) while its
    bytes are stuck on the way; it settles on a new connection, which finds
    nothing landed. Only then does the old append reach the server. The
    settling must have made sure it never runs (its session ended) before
    appending the records again; else the chain holds them twice.
    """
    target = urlsplit(postgres_dsn)
    proxy = HoldingProxy(target.hostname or "127.0.0.1", target.port or 5432)
    store = PostgresAuditStore(_through(postgres_dsn, proxy.port), response_timeout=1)
    try:
        (first,) = store.append([start_draft("s1", _decision(1))])
        proxy.hold()
        (second,) = store.append([start_draft("s1", _decision(2))])
        proxy.release()
        records = list(store.records(Filters(view="records")))
        report = store.verify()
    finally:
        store.close()
        proxy.close()
    assert report.ok, report.reason
    assert [(r.id, r.action_params) for r in records] == [
        (first.id, '{"n":1}'),
        (second.id, '{"n":2}'),
    ]


def test_a_lost_session_that_does_not_end_in_time_fails_the_append_and_writes_nothing_again(
    postgres_dsn: str,
) -> None:
    """Settling ends the lost connection's session; one that stays fails the append, closed.

    The append's bytes are stuck on the way (held by the proxy) and the
    server's session of its connection is stopped (SIGSTOP: a hung backend
    that takes no signal), so it is still there after being told to end.
    The append is reported failed with its outcome unknown (the session
    named), after waiting the store's response timeout, and never written again:
    once the session has ended and the stuck bytes arrive, the trail holds
    nothing of it, and the next append goes on.
    """
    application = f"aegis_test_{uuid.uuid4().hex[:8]}"
    target = urlsplit(postgres_dsn)
    proxy = HoldingProxy(target.hostname or "127.0.0.1", target.port or 5432)
    dsn = _through(f"{postgres_dsn}&application_name={application}", proxy.port)
    store = PostgresAuditStore(dsn, response_timeout=1)
    stopped: int | None = None
    try:
        (first,) = store.append([start_draft("s1", _decision(1))])
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            (pid,) = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application,)
            ).fetchone() or (None,)
        assert isinstance(pid, int)
        proxy.hold()
        os.kill(pid, signal.SIGSTOP)
        stopped = pid
        with pytest.raises(AuditOutcomeUnknown) as failed:
            store.append([start_draft("s1", _decision(2))])
        os.kill(pid, signal.SIGCONT)
        stopped = None

        def ended() -> bool:
            with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                return (
                    admin.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
                    ).fetchone()
                    is None
                )

        _wait_for(ended, 60, "the stopped session to end once it runs again")
        proxy.release()  # the stuck append reaches a session that is gone
        (third,) = store.append([start_draft("s1", _decision(3))])
        records = list(store.records(Filters(view="records")))
        report = store.verify()
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        store.close()
        proxy.close()
    assert f"pid {pid}" in str(failed.value)
    assert report.ok, report.reason
    assert [(r.id, r.action_params) for r in records] == [
        (first.id, '{"n":1}'),
        (third.id, '{"n":3}'),
    ]


async def test_a_start_with_its_event_whose_session_does_not_end_fails_its_action_unrun(
    postgres_dsn: str,
) -> None:
    """An action's start, written with its flow event, is lost and its session will not end.

    Its outcome is unknown (it may yet commit, start and event together), so
    the action must not run, and its start must not be written again the
    ordinary way, which could leave it in the trail twice.
    """
    application = f"aegis_test_{uuid.uuid4().hex[:8]}"
    target = urlsplit(postgres_dsn)
    proxy = HoldingProxy(target.hostname or "127.0.0.1", target.port or 5432)
    dsn = _through(f"{postgres_dsn}&application_name={application}", proxy.port)
    audit = AuditLogger(dsn, response_timeout=1)
    ran: list[str] = []
    stopped: int | None = None
    try:
        async with Runtime(
            executor=lambda action: ran.append(action.type),
            policy=POLICY,
            audit_logger=audit,
            session_id="s1",
        ) as runtime:
            assert (await runtime.run_one(Action("read", "crm"))).ok
            with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                (pid,) = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                    " AND query LIKE %s",
                    (application, "%aegis_audit_append%"),
                ).fetchone() or (None,)
            assert isinstance(pid, int)
            proxy.hold()
            os.kill(pid, signal.SIGSTOP)
            stopped = pid
            result = await runtime.run_one(Action("update", "crm"))
            os.kill(pid, signal.SIGCONT)
            stopped = None

            def ended() -> bool:
                with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                    query = "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
                    return admin.execute(query, (pid,)).fetchone() is None

            _wait_for(ended, 60, "the stopped session to end once it runs again")
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        audit.close()
        proxy.close()
    reader = PostgresAuditStore(postgres_dsn, readonly=True)
    try:
        records = [(r.kind, r.action_type) for r in reader.records(Filters(view="records"))]
        report = reader.verify()
    finally:
        reader.close()
    assert result.status is ResultStatus.FAILED
    assert "not run" in str(result.error)
    assert ran == ["read"]
    assert report.ok, report.reason
    assert records == [("start", "read"), ("final", "read")]


# ---------------------------------------------------------------- starts recorded again


def _lose_tail(dsn: str, application: str, records: int = 1) -> None:
    """What a server crash does to the writer ``application``: the last records gone, cut off.

    The crash takes the commits not yet on disk (the newest records) and
    every connection; here the newest ``records`` are deleted and the
    writer's session ended, on the shared server, at the moment the test
    chooses.
    """
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "DELETE FROM aegis_audit_log WHERE id > (SELECT max(id) FROM aegis_audit_log) - %s",
            (records,),
        )
        admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (application,),
        )


class FailingRecovery(PostgresAuditStore):
    """A store whose first recording of lost starts never commits: its session ends first."""

    admin_dsn = ""
    failed = False

    def _record_lost_starts(self, conn: psycopg.Connection[tuple[object, ...]]) -> object:
        moved = super()._record_lost_starts(conn)  # type: ignore[misc]
        if not self.failed:
            self.failed = True
            with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 10000)", (conn.info.backend_pid,))
        return moved


def test_a_recovery_that_never_committed_leaves_no_trace_in_the_store(postgres_dsn: str) -> None:
    """Starts recorded again in a transaction that failed: the store does not act as if they were.

    Action 1's start is lost (as in a crash); another writer appends in its
    place. The store records the start again, but that transaction never
    commits. After another writer's record, action 1's outcome must name
    action 1's start, recorded again for good, not the id the failed
    attempt had given it (now the other writer's record).
    """
    application = f"aegis_test_{uuid.uuid4().hex[:8]}"
    store = FailingRecovery(f"{postgres_dsn}&application_name={application}", durability="result")
    store.admin_dsn = postgres_dsn
    other = PostgresAuditStore(postgres_dsn)
    try:
        (lost,) = store.append([start_draft("s1", _decision(1))])
        _lose_tail(postgres_dsn, application)
        other.append([start_draft("other", _decision(0))])  # takes the lost start's id
        with pytest.raises(StoreError):  # action 2 does not begin: its start failed
            store.append([start_draft("s1", _decision(2))])
        assert store.failed
        other.append([start_draft("other", _decision(0))])  # takes the failed attempt's id
        outcome = Result(_decision(1).action, ResultStatus.SUCCESS, {"done": True})
        (final,) = store.append([final_draft("s1", _decision(1), outcome, start_id=lost.id)])
        records = {r.id: r for r in store.records(Filters(view="records"))}
        report = store.verify()
    finally:
        store.close()
        other.close()
    assert report.ok, report.reason
    start = records[final.start_id]
    assert (start.kind, start.session_id) == ("start", "s1")
    assert start[1:-2] == lost[1:-2]  # action 1's start, recorded again
    assert [r.session_id for r in records.values()].count("s1") == 2


def test_two_identical_actions_each_get_their_own_outcome_after_a_start_is_recorded_again(
    postgres_dsn: str,
) -> None:
    """An action's start is lost and recorded again; an identical action then takes its old id.

    Both actions are the same session, action and params, decided at
    different moments; the runtime holds the same start id for both. The
    second finishes first (succeeded), then the first (failed): each outcome
    must name its own action's start, not the other's.
    """
    application = f"aegis_test_{uuid.uuid4().hex[:8]}"
    store = PostgresAuditStore(f"{postgres_dsn}&application_name={application}")
    other = PostgresAuditStore(postgres_dsn)
    same = _decision(1)
    first_stamp = DecisionStamp("2026-01-01T00:00:01.000000+00:00")
    second_stamp = DecisionStamp("2026-01-01T00:00:02.000000+00:00")
    try:
        other.append([start_draft("other", _decision(0))])
        (first,) = store.append([start_draft("s1", same, stamp=first_stamp)])
        _lose_tail(postgres_dsn, application, records=2)  # the other writer's record too
        # the first action's start is recorded again, one id lower; the second's takes its id
        (second,) = store.append([start_draft("s1", same, stamp=second_stamp)])
        assert second.id == first.id
        succeeded = Result(same.action, ResultStatus.SUCCESS, {"done": True})
        failed = Result(same.action, ResultStatus.FAILED, None, error="boom")
        (ok,) = store.append(
            [final_draft("s1", same, succeeded, stamp=second_stamp, start_id=second.id)]
        )
        (bad,) = store.append(
            [final_draft("s1", same, failed, stamp=first_stamp, start_id=first.id)]
        )
        records = {r.id: r for r in store.records(Filters(view="records"))}
        report = store.verify()
    finally:
        store.close()
        other.close()
    assert report.ok, report.reason
    assert records[ok.start_id] == second
    assert records[bad.start_id][1:-2] == first[1:-2]  # the first start, recorded again
    assert bad.start_id == first.id - 1


def test_identical_actions_recorded_again_twice_keep_their_own_outcomes(postgres_dsn: str) -> None:
    """Two identical actions' starts lost in two crashes in a row, recorded again each time.

    The second time, each start recorded again sits at an id the runtime
    holds for the other action (or for a third one): every final must still
    name its own action's start.
    """
    application = f"aegis_test_{uuid.uuid4().hex[:8]}"
    store = PostgresAuditStore(f"{postgres_dsn}&application_name={application}")
    other = PostgresAuditStore(postgres_dsn)
    same = _decision(1)
    stamps = [DecisionStamp(f"2026-01-01T00:00:0{n}.000000+00:00") for n in (1, 2)]
    try:
        other.append([start_draft("other", _decision(0))])
        starts = [store.append([start_draft("s1", same, stamp=s)])[0] for s in stamps]
        _lose_tail(postgres_dsn, application, records=3)
        # the next start (another action) records both again, one id lower each
        store.append([start_draft("s2", _decision(2))])
        _lose_tail(postgres_dsn, application, records=3)
        store.append([start_draft("s2", _decision(3))])  # and again, at the same ids
        outcomes = [
            Result(same.action, ResultStatus.FAILED, None, error="boom"),
            Result(same.action, ResultStatus.SUCCESS, {"done": True}),
        ]
        finals = {
            n: store.append(
                [final_draft("s1", same, outcomes[n], stamp=stamps[n], start_id=starts[n].id)]
            )[0]
            for n in (1, 0)  # the second action finishes first
        }
        records = {r.id: r for r in store.records(Filters(view="records"))}
        report = store.verify()
    finally:
        store.close()
        other.close()
    assert report.ok, report.reason
    for n in (0, 1):
        assert records[finals[n].start_id][1:-2] == starts[n][1:-2], n


async def test_an_action_whose_start_id_is_given_again_finishes_with_its_own_start(
    postgres_dsn: str,
) -> None:
    """Two decisions of one action object; the first's start is lost and its id given again.

    The audit logger keeps each start by the id the runtime holds for it:
    after the crash both actions hold the same id. The decisions differ (their
    reasons) but not their stamps (none given, as a caller that keeps no
    stamp). The first action finishes first: its final must carry its own
    decision and name its own start (recorded again), the second's its own.
    """
    application = f"aegis_test_{uuid.uuid4().hex[:8]}"
    audit = AuditLogger(store=PostgresAuditStore(f"{postgres_dsn}&application_name={application}"))
    other = PostgresAuditStore(postgres_dsn)
    action = Action("write", "crm", {"n": 1})
    decisions = [
        PolicyDecision(action, RiskLevel.LOW, Approval.AUTO, "r", reason=reason)
        for reason in ("first reason", "second reason")
    ]
    try:
        other.append([start_draft("other", _decision(0))])
        first = await audit.record_start("s1", decisions[0])
        _lose_tail(postgres_dsn, application, records=2)  # the other writer's record too
        # the first start is recorded again, one id lower; the second takes its id
        second = await audit.record_start("s1", decisions[1])
        assert second == first
        failed = Result(action, ResultStatus.FAILED, None, error="boom")
        succeeded = Result(action, ResultStatus.SUCCESS, {"done": True})
        ends = [
            await audit.record("s1", decisions[0], result=failed, start_token=first),
            await audit.record("s1", decisions[1], result=succeeded, start_token=second),
        ]
        records = {r.id: r for r in audit.store.records(Filters(view="records"))}
        report = audit.store.verify()
    finally:
        audit.close()
        other.close()
    assert report.ok, report.reason
    for end, decision in zip(ends, decisions, strict=True):
        final = records[end]
        start = records[final.start_id]
        assert (start.kind, final.kind) == ("start", "final")
        assert start.reason == final.reason == decision.reason
    assert [records[end].start_id for end in ends] == [first - 1, first]
