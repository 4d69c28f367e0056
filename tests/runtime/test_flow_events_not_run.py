"""A flow event stays only for an action that goes on to run, on SQLite and PostgreSQL.

Every action let through is noted as a flow event (while some policy
sharing the store looks back: these tests start so), and the flow rules of
every runtime sharing the store count it as run. Concurrent actions' events
are written together; an action cancelled after that write, before its task
resumed, never runs: its event is taken back, or a rule blocking deploys
unless tests ran would let a deploy through after tests that never ran.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flow_horizon import looked_back

from aegis import Action, AuditLogger, Policy, Runtime
from aegis.core.limits import FlowEvent
from aegis.core.result import Result, ResultStatus
from aegis.stores.postgres.usage import PostgresUsageStore
from aegis.stores.sqlite.usage import SQLiteUsageStore
from aegis.stores.usage import MemoryUsageStore

#: every action runs (alone: no limit, no flow rule)
ALL_AUTO: dict[str, Any] = {"name": "all", "match": {"type": "*"}, "approval": "auto"}
PLAIN = Policy.from_dict({"rules": [ALL_AUTO]})
#: a send waits for a person
ASKED_SEND: dict[str, Any] = {
    "name": "asked",
    "match": {"type": "send_external"},
    "approval": "approve",
}
#: no deploy unless the session's tests ran
GATED = Policy.from_dict(
    {
        "rules": [
            {
                "name": "deploy_needs_tests",
                "match": {"type": "deploy"},
                "conditions": {"not_after": {"type": "run_tests", "within": "session"}},
                "approval": "block",
            },
            ALL_AUTO,
        ]
    }
)


def _blocked_after(
    blocked: str, earlier: dict[str, Any], then: list[dict[str, Any]] | None = None
) -> Policy:
    """``blocked`` actions are blocked after an ``earlier`` one; then ``then`` (all auto)."""
    rule = {
        "name": f"no_{blocked}_after",
        "match": {"type": blocked},
        "conditions": {"after": earlier},
        "approval": "block",
    }
    return Policy.from_dict({"rules": [rule, *(then if then is not None else [ALL_AUTO])]})


@dataclass
class Trail:
    """One audit trail (its usage store beside it) and its flow events, read from outside."""

    open: Callable[[], AuditLogger]
    #: how many flow events of a type the database holds
    events: Callable[[str], int]


def _counter(conn: sqlite3.Connection) -> Callable[[str], int]:
    """How many flow events of a type a SQLite trail holds, read on ``conn``."""

    def count(kind: str) -> int:
        found = conn.execute(
            "SELECT count(*) FROM aegis_flow_events WHERE action_type = ?", (kind,)
        ).fetchone()
        return int(found[0])

    return count


@pytest.fixture(params=["sqlite", "postgres"])
def trail(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Trail]:
    """A fresh trail of each engine, in a fleet whose flow rules look back (see looked_back)."""
    if request.param == "sqlite":
        db = tmp_path / "audit.db"
        looked_back(db)
        with closing(sqlite3.connect(db, isolation_level=None)) as conn:
            yield Trail(lambda: AuditLogger(db), _counter(conn))
        return
    import psycopg

    dsn = request.getfixturevalue("postgres_dsn")
    looked_back(dsn)
    with psycopg.connect(dsn, autocommit=True) as pg:

        def counted(kind: str) -> int:
            found = pg.execute(
                "SELECT count(*) FROM aegis_flow_events WHERE action_type = %s", (kind,)
            ).fetchone()
            return int(found[0]) if found is not None else 0

        yield Trail(lambda: AuditLogger(dsn), counted)


async def _cancel_tests_once_noted(
    trail: Trail, ran: list[str], ready: Callable[[], None] = lambda: None
) -> tuple[BaseException | None, dict[str, Any]]:
    """Run tests and a read at once (a runtime without flow rules); cancel the tests in the
    loop iteration their event is committed, before their task resumes. What the tests
    raised, and their record."""

    async def execute(action: Action) -> None:
        ran.append(action.type)

    audit = trail.open()
    async with Runtime(executor=execute, policy=PLAIN, audit_logger=audit, session_id="s") as rt:
        await rt.run_one(Action("warm", "up"))
        ready()
        tests = asyncio.ensure_future(rt.run_one(Action("run_tests", "ci")))
        read = asyncio.ensure_future(rt.run_one(Action("read", "docs")))
        while not trail.events("run_tests"):  # the batch of the two events is written
            assert not tests.done()
            await asyncio.sleep(0)
        tests.cancel()
        outcomes = await asyncio.gather(tests, read, return_exceptions=True)
        (record,) = audit.get_log(action_type="run_tests")
    raised = outcomes[0] if isinstance(outcomes[0], BaseException) else None
    return raised, record


async def _deploy(trail: Trail) -> ResultStatus:
    """A deploy in the session, by another runtime whose rule needs tests first."""
    async with Runtime(
        executor=lambda action: "deployed",
        policy=GATED,
        audit_logger=trail.open(),
        session_id="s",
    ) as other:
        return (await other.run_one(Action("deploy", "prod"))).status


async def test_an_action_cancelled_once_its_event_was_written_leaves_no_event(
    trail: Trail,
) -> None:
    """Cancelled after its batch of events was written, the tests never ran: their event is
    taken back, and a deploy that needs tests is still blocked."""
    ran: list[str] = []
    raised, record = await _cancel_tests_once_noted(trail, ran)
    assert isinstance(raised, asyncio.CancelledError)
    assert ran == ["warm", "read"]  # cancelled in the window: the tests never ran
    assert record["result_status"] == "skipped"
    assert trail.events("run_tests") == 0
    assert trail.events("read") == 1  # the sibling's event stays: it ran
    assert await _deploy(trail) is ResultStatus.BLOCKED


async def test_an_event_that_cannot_be_taken_back_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database refuses the delete: the error is logged, saying that flow conditions will
    count the action as run (the event stays; a rule needing tests then lets a deploy by)."""
    db = tmp_path / "audit.db"
    looked_back(db)
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        count = _counter(conn)

        def refuse_deletes() -> None:
            conn.execute(
                "CREATE TRIGGER keep BEFORE DELETE ON aegis_flow_events"
                " BEGIN SELECT RAISE(ABORT, 'events are kept'); END"
            )

        ran: list[str] = []
        with caplog.at_level(logging.ERROR, logger="aegis.runtime"):
            raised, record = await _cancel_tests_once_noted(
                Trail(lambda: AuditLogger(db), count), ran, refuse_deletes
            )
        assert count("run_tests") == 1
    assert isinstance(raised, asyncio.CancelledError)
    assert ran == ["warm", "read"]
    assert record["result_status"] == "skipped"
    logged = [r for r in caplog.records if "could not delete the flow event" in r.getMessage()]
    assert len(logged) == 1
    assert "count it as run" in logged[0].getMessage()


async def _batch_around(trail: Trail, odd: Action) -> tuple[list[Result], list[str]]:
    """Run ``odd`` between two plain reads, gathered (their events noted in one batch).

    Returns the three results in order, and the targets the executor ran.
    """
    ran: list[str] = []

    def execute(action: Action) -> str:
        ran.append(action.target)
        return "ok"

    async with Runtime(
        executor=execute, policy=PLAIN, audit_logger=trail.open(), session_id="s"
    ) as rt:
        await rt.run_one(Action("warm", "up"))
        results = await asyncio.gather(
            rt.run_one(Action("read", "docs")), rt.run_one(odd), rt.run_one(Action("read", "wiki"))
        )
    return list(results), ran


async def test_an_event_that_cannot_be_written_fails_its_own_action_only(trail: Trail) -> None:
    """A lone surrogate in a name (a model's JSON can carry one): that action fails, not run,
    with the reason; the actions noted in the same batch run."""
    results, ran = await _batch_around(trail, Action("read\ud800", "bad"))
    assert [r.status for r in results] == [
        ResultStatus.SUCCESS,
        ResultStatus.FAILED,
        ResultStatus.SUCCESS,
    ]
    assert "lone surrogate" in (results[1].error or "")
    assert sorted(ran) == ["docs", "up", "wiki"]
    assert trail.events("read") == 2


async def test_a_nul_in_a_name_fails_no_other_action(trail: Trail) -> None:
    """A NUL in a target (a model's URL can carry one): its batch's other actions run.

    PostgreSQL text cannot hold a NUL, so there the action cannot be noted
    and does not run; SQLite keeps it. Before, on PostgreSQL, the event
    failed the whole batch's transaction: every action noted with it failed.
    """
    results, ran = await _batch_around(trail, Action("fetch", "https://x/\x00"))
    assert results[0].status is ResultStatus.SUCCESS
    assert results[2].status is ResultStatus.SUCCESS
    assert trail.events("read") == 2
    if results[1].status is ResultStatus.SUCCESS:  # a store that keeps it: noted
        assert trail.events("fetch") == 1
        assert sorted(ran) == ["docs", "https://x/\x00", "up", "wiki"]
    else:  # not run, with the reason
        assert results[1].status is ResultStatus.FAILED
        assert "NUL" in (results[1].error or "")
        assert trail.events("fetch") == 0
        assert sorted(ran) == ["docs", "up", "wiki"]


async def test_a_nul_in_an_action_alone_is_kept_whole_or_refused(trail: Trail) -> None:
    """One action at a time (its event written in its start's transaction, on PostgreSQL):
    a NUL in the session or the target never leaves an event cut at the NUL.

    Before, on PostgreSQL, libpq read the event's texts up to the NUL: the
    tests of session ``s\x00t`` counted as session ``s``'s (its deploy let
    through), and a read of ``x\x00/secret`` as a read of ``x`` (a mail
    forbidden after a secret went out).
    """
    async with Runtime(
        executor=lambda action: "ok", policy=GATED, audit_logger=trail.open(), session_id="s\x00t"
    ) as rt:
        await rt.run_one(Action("warm", "up"))
        await rt.run_one(Action("run_tests", "ci"))
    assert await _deploy(trail) is ResultStatus.BLOCKED  # session s ran no tests

    no_mail = _blocked_after(
        "send_email", {"type": "read_file", "target": "*secret*", "within": "session"}
    )
    ran: list[str] = []

    def execute(action: Action) -> str:
        ran.append(action.target)
        return "ok"

    async with Runtime(
        executor=execute, policy=no_mail, audit_logger=trail.open(), session_id="m"
    ) as rt:
        await rt.run_one(Action("warm", "up"))
        read = await rt.run_one(Action("read_file", "x\x00/secret"))
        mail = await rt.run_one(Action("send_email", "smtp"))
    if read.status is ResultStatus.SUCCESS:  # a store that keeps it: the rule sees it whole
        assert mail.status is ResultStatus.BLOCKED
    else:  # not run, not noted: nothing to forbid the mail
        assert read.status is ResultStatus.FAILED
        assert "NUL" in (read.error or "")
        assert "x\x00/secret" not in ran
        assert trail.events("read_file") == 0


async def test_an_int_too_long_to_print_is_noted_and_counted(trail: Trail) -> None:
    """A param past Python's 4,300-digit limit (an Action takes it): the action runs and its
    event is noted, alone or with others, and another runtime's flow rule sees it."""
    huge = Action("read_secret", "vault", {"n": 10**5000})
    async with Runtime(
        executor=lambda action: "ok", policy=PLAIN, audit_logger=trail.open(), session_id="s"
    ) as rt:
        alone = await rt.run_one(huge)
        together = await asyncio.gather(rt.run_one(huge), rt.run_one(Action("read", "docs")))
    assert [r.status for r in (alone, *together)] == [ResultStatus.SUCCESS] * 3
    assert trail.events("read_secret") == 2
    no_mail = _blocked_after("send_email", {"type": "read_secret", "within": "session"})
    async with Runtime(
        executor=lambda action: "sent", policy=no_mail, audit_logger=trail.open(), session_id="s"
    ) as other:
        mail = await other.run_one(Action("send_email", "smtp"))
    assert mail.status is ResultStatus.BLOCKED


def _approved_sends(limit: bool) -> Policy:
    """No send after a secret was read; else a send needs approval (with a limit, or not)."""
    asked = {**ASKED_SEND, "limit": {"max": 100, "per": "1h"}} if limit else ASKED_SEND
    return _blocked_after(
        "send_external", {"type": "read_secret", "within": "session"}, then=[asked, ALL_AUTO]
    )


@pytest.mark.parametrize("limit", [True, False], ids=["limit", "no limit"])
async def test_an_approved_action_never_runs_after_what_its_rule_forbids(
    trail: Trail, limit: bool
) -> None:
    """The secret is read while the approved send is on its way to the executor (its limit
    counted again, its start written, its event noted): the send is decided again once
    nothing more is awaited before it runs, so it never runs after the read."""
    order: list[str] = []

    async def execute(action: Action) -> str:
        order.append(action.type)
        return "ok"

    later: list[asyncio.Future[Any]] = []
    runtimes: list[Runtime] = []

    async def approve(decision: Any) -> bool:
        # the read starts as the person says yes, and runs while the send goes on
        later.append(asyncio.ensure_future(runtimes[0].run_one(Action("read_secret", "vault"))))
        return True

    async with Runtime(
        executor=execute,
        policy=_approved_sends(limit),
        approval_handler=approve,
        audit_logger=trail.open(),
        session_id="s",
    ) as rt:
        runtimes.append(rt)
        await rt.run_one(Action("warm", "up"))
        send = await rt.run_one(Action("send_external", "mail"))
        read = await later[0]
        again = await rt.run_one(Action("send_external", "mail"))
    assert read.status is ResultStatus.SUCCESS
    assert again.status is ResultStatus.BLOCKED
    if send.status is ResultStatus.SUCCESS:
        assert order.index("send_external") < order.index("read_secret")
    else:
        assert send.status is ResultStatus.BLOCKED
        assert "send_external" not in order
        assert trail.events("send_external") == 0  # it did not run: its event is taken back


async def test_an_approved_action_decided_again_passes_over_its_own_event(trail: Trail) -> None:
    """One approved send per session: decided again once noted, the first send does not
    count its own event as an earlier send and runs; the second is blocked by it."""
    policy = _blocked_after(
        "send_external", {"type": "send_external", "within": "session"}, then=[ASKED_SEND]
    )
    async with Runtime(
        executor=lambda action: "sent",
        policy=policy,
        approval_handler=lambda decision: True,
        audit_logger=trail.open(),
        session_id="s",
    ) as rt:
        first = await rt.run_one(Action("send_external", "mail"))
        second = await rt.run_one(Action("send_external", "mail"))
    assert first.status is ResultStatus.SUCCESS
    assert second.status is ResultStatus.BLOCKED
    assert trail.events("send_external") == 1


class _OwnStore:
    """A usage store of one's own over a SQLite one: no ids, so nothing passed over by id."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def acquire(self, charges: Any, now: float, *, reserve: bool, over: bool) -> Any:
        return self.inner.acquire(charges, now, reserve=reserve, over=over)

    def acquire_many(self, requests: Any) -> Any:
        return self.inner.acquire_many(requests)

    def release(self, reservation: Any) -> None:
        self.inner.release(reservation)

    def remember(self, event: FlowEvent) -> None:
        self.inner.remember(event)

    def recall(self, session_id: str, since: float | None, action_type: str | None) -> Any:
        return self.inner.recall(session_id, since, action_type)

    def latest_event(  # the protocol's, without passing
        self,
        session_id: str,
        since: float | None,
        where: Any = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
    ) -> FlowEvent | None:
        return self.inner.latest_event(
            session_id, since, where, action_type=action_type, action_target=action_target
        )

    def forgotten(self, session_id: str) -> float | None:
        return self.inner.forgotten(session_id)

    def forget_events(self, horizon: float | None, now: float) -> bool:
        return self.inner.forget_events(horizon, now)

    def close(self) -> None:
        self.inner.close()


def _twinning(base: type) -> type:
    """``base`` noting, with the first send, another send at the same moment, in every field
    alike: another process's approved send let through at once (on another machine)."""

    class Twinning(base):  # type: ignore[misc, valid-type]
        twinned = False

        def _twin(self, events: Any) -> None:
            for event in events:
                if event.type == "send_external" and not self.twinned:
                    self.twinned = True
                    twin = FlowEvent(
                        event.session_id, event.type, event.target, event.params, event.at
                    )
                    base.remember(self, twin)

        def remember(self, event: FlowEvent) -> None:
            base.remember(self, event)
            self._twin([event])

    def remember_many(self: Any, events: Any) -> Any:
        ids = base.remember_many(self, events)
        self._twin(events)
        return ids

    if hasattr(base, "remember_many"):  # a store without ids has none
        Twinning.remember_many = remember_many  # type: ignore[attr-defined]
    return Twinning


@pytest.mark.parametrize("engine", ["memory", "sqlite", "postgres", "own store"])
async def test_an_approved_action_passes_over_its_own_event_only_not_its_twin(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """One approved send per session; another send is noted at the very moment of the first's
    event, alike in every field. Decided again, the send passes over its own event (by its
    id) and no other: the twin is an earlier send, and the send is blocked, never run."""
    db = tmp_path / "audit.db"
    store: Any
    if engine == "memory":
        store = _twinning(MemoryUsageStore)()
    elif engine == "sqlite":
        store = _twinning(SQLiteUsageStore)(tmp_path / "usage.db")
    elif engine == "postgres":
        store = _twinning(PostgresUsageStore)(request.getfixturevalue("postgres_dsn"))
    else:
        store = _twinning(_OwnStore)(SQLiteUsageStore(tmp_path / "usage.db"))
    policy = _blocked_after(
        "send_external", {"type": "send_external", "within": "session"}, then=[ASKED_SEND]
    )
    sent: list[str] = []
    async with Runtime(
        executor=lambda action: sent.append(action.target),
        policy=policy,
        approval_handler=lambda decision: True,
        audit_logger=AuditLogger(db),
        usage_store=store,
        session_id="s",
    ) as rt:
        first = await rt.run_one(Action("send_external", "mail"))
    store.close()  # given, so not the runtime's to close
    assert store.twinned
    assert first.status is ResultStatus.BLOCKED
    assert sent == []
    # its own event taken back where the store can (the twin stays: it ran elsewhere)
    left = SQLiteUsageStore(tmp_path / "usage.db") if engine == "own store" else None
    if left is not None:
        assert len(left.recall("s", None, "send_external")) == 2  # no ids: its own stays
        left.close()


async def test_a_long_int_a_flow_condition_compares_matches_the_stored_event(
    trail: Trail,
) -> None:
    """The longest int a flow condition may compare (600 digits, refused past that) is kept
    as a number in the event: the earlier read is seen, and the send after it is blocked."""
    n = 10**600 - 1
    policy = _blocked_after("send_email", {"type": "read_secret", "params": {"param_eq": {"n": n}}})
    async with Runtime(
        executor=lambda action: "ok", policy=policy, audit_logger=trail.open(), session_id="s"
    ) as rt:
        before = await rt.run_one(Action("send_email", "smtp"))
        read = await rt.run_one(Action("read_secret", "vault", {"n": n}))
        after = await rt.run_one(Action("send_email", "smtp"))
    assert [before.status, read.status, after.status] == [
        ResultStatus.SUCCESS,
        ResultStatus.SUCCESS,
        ResultStatus.BLOCKED,
    ]
