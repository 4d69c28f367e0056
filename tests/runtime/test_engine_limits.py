"""The metering step: limits, budgets and flow rules enforced by the runtime against a store."""

from __future__ import annotations

import asyncio
import json
import select
import sqlite3
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flow_horizon import looked_back

from aegis import (
    Action,
    AuditLogger,
    MemoryUsageStore,
    Policy,
    Result,
    ResultStatus,
    Runtime,
    SQLiteUsageStore,
)
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.limits import FlowEvent, Subject
from aegis.core.risk import RiskLevel
from aegis.runtime import metering as metering_module
from aegis.runtime.audit_logging import LoggingAuditLogger
from aegis.runtime.limits import Metering
from aegis.runtime.signing import generate_key_files
from aegis.stores.postgres.usage import PostgresUsageStore
from aegis.stores.usage import UsageStore

WORKER = Path(__file__).with_name("limits_worker.py")

POLICY = """\
version: "1"
defaults: {approval: block}
rules:
  - name: email_rate
    match: {type: send_email}
    limit: {max: 3, per: 1h, key: [agent]}
    on_exceed: {approval: block, risk_level: high}
    risk_level: low
    approval: auto
  - name: sms_rate
    match: {type: send_sms}
    limit: {max: 2, per: 5m, key: [session, params.to]}
    on_exceed: {approval: approve, risk_level: critical}
    risk_level: low
    approval: auto
  - name: refund_budget
    match: {type: refund}
    budget: {sum: amount, max: 0.3, per: 1d, key: [params.customer_id]}
    on_exceed: {approval: block}
    risk_level: medium
    approval: auto
  - name: transfers
    match: {type: transfer}
    limit: {max: 2, per: 1h}
    risk_level: high
    approval: approve
  - name: exfiltration
    match: {type: "send*", target: "external*"}
    conditions:
      after: {type: "read*", target: crm, within: session}
    risk_level: critical
    approval: block
  - name: reads
    match: {type: "read*"}
    risk_level: low
    approval: auto
  - name: other_sends
    match: {type: "send*"}
    risk_level: low
    approval: auto
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    """The test policy as a file."""
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture
def policy(policy_file: Path) -> Policy:
    """The test policy."""
    return Policy.from_yaml(policy_file)


def runtime(
    policy: Policy,
    tmp_path: Path,
    *,
    approve: Callable[[PolicyDecision], Any] = lambda d: False,
    **kwargs: Any,
) -> Runtime:
    """A runtime with a SQLite audit in ``tmp_path`` and a recording executor."""
    kwargs.setdefault("audit_logger", AuditLogger(tmp_path / "aegis_audit.db"))
    return Runtime(executor=lambda a: "ok", policy=policy, approval_handler=approve, **kwargs)


async def statuses(rt: Runtime, actions: list[Action], **kwargs: Any) -> list[str]:
    """Run ``actions`` one after another; their statuses."""
    return [(await rt.run_one(a, **kwargs)).status.value for a in actions]


# -- limits through the runtime ---------------------------------------------------------


async def test_the_action_past_a_limit_gets_on_exceed_with_a_reason(
    policy: Policy, tmp_path: Path
) -> None:
    """Three emails run; the fourth is blocked, its reason naming limit, count and window."""
    async with runtime(policy, tmp_path, agent="support") as rt:
        results = [await rt.run_one(Action("send_email", "smtp")) for _ in range(4)]
        records = rt.audit.get_log(rt.session_id)  # type: ignore[attr-defined]
    assert [r.status for r in results[:3]] == [ResultStatus.SUCCESS] * 3
    assert results[3].status is ResultStatus.BLOCKED
    assert results[3].error == (
        "blocked by policy rule 'email_rate': limit of rule 'email_rate' exceeded: 3 of 3"
        " actions already in the last 1h per agent"
    )
    assert records[3]["risk_level"] == "HIGH"
    assert records[3]["matched_rule"] == "email_rate"
    assert "3 of 3 actions" in records[3]["reason"]


async def test_on_exceed_approve_asks_a_human_and_a_denial_consumes_nothing(
    policy: Policy, tmp_path: Path
) -> None:
    """Past the SMS limit a human decides; denied ones are released, approved ones count."""
    answers = iter([False, True])
    asked: list[PolicyDecision] = []

    def approve(decision: PolicyDecision) -> bool:
        asked.append(decision)
        return next(answers)

    store = MemoryUsageStore()
    async with runtime(policy, tmp_path, approve=approve, usage_store=store) as rt:
        sms = Action("send_sms", "twilio", {"to": "+1"})
        got = await statuses(rt, [sms, sms, sms, sms])
        assert got == ["success", "success", "denied", "success"]
        assert [d.risk_level for d in asked] == [RiskLevel.CRITICAL] * 2
        assert "2 of 2 actions already in the last 5m per session, params.to" in asked[0].reason
        assert "3 of 2" in asked[1].reason or "2 of 2" in asked[1].reason
        plan = rt.plan([sms])
    assert plan[0].approval is Approval.APPROVE
    assert "3 of 2 actions" in plan[0].reason  # the denied one was released


async def test_a_denied_action_under_the_limit_gives_its_room_back(
    policy: Policy, tmp_path: Path
) -> None:
    """Two denied transfers leave a limit of two untouched: two approved ones still run."""
    answers = iter([False, False, True, True, True])
    async with runtime(policy, tmp_path, approve=lambda d: next(answers)) as rt:
        got = await statuses(rt, [Action("transfer", "bank")] * 5)
    assert got == ["denied", "denied", "success", "success", "blocked"]


async def test_a_cancelled_approval_releases_its_reservation(
    policy: Policy, tmp_path: Path
) -> None:
    """An action interrupted while waiting for a human does not count."""
    waiting = asyncio.Event()

    async def slow(decision: PolicyDecision) -> bool:
        waiting.set()
        await asyncio.sleep(60)
        return True

    store = MemoryUsageStore()
    async with runtime(policy, tmp_path, approve=slow, usage_store=store) as rt:
        task = asyncio.ensure_future(rt.run_one(Action("transfer", "bank")))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        preview = Metering(store).check(rt.policy, Action("transfer", "bank"), Subject("x"))
    assert preview[0].reason == ""  # no count was left behind


async def test_limits_count_per_key(policy: Policy, tmp_path: Path) -> None:
    """Agents count apart (from Runtime(agent=) or the context); SMS recipients count apart."""
    store = MemoryUsageStore()
    email = Action("send_email", "smtp")
    async with runtime(policy, tmp_path, agent="a", usage_store=store) as first:
        assert await statuses(first, [email] * 4) == ["success"] * 3 + ["blocked"]
    async with runtime(policy, tmp_path, usage_store=store) as second:
        by_context = await statuses(second, [email] * 4, context={"agent": "b"})
        assert by_context == ["success"] * 3 + ["blocked"]
        assert await statuses(second, [email], context={"agent": "a"}) == ["blocked"]
        assert await statuses(second, [email] * 4) == ["success"] * 3 + ["blocked"]  # agent None
        one, two = (Action("send_sms", "t", {"to": n}) for n in ("+1", "+2"))
        assert await statuses(second, [one, one, two, two]) == ["success"] * 4
    async with runtime(policy, tmp_path, usage_store=store) as third:  # a new session
        assert await statuses(third, [one, one]) == ["success"] * 2


async def test_a_missing_key_param_blocks(policy: Policy, tmp_path: Path) -> None:
    """An SMS without the 'to' its limit is keyed by cannot be counted, so it is blocked."""
    async with runtime(policy, tmp_path) as rt:
        result = await rt.run_one(Action("send_sms", "twilio"))
    assert result.status is ResultStatus.BLOCKED
    assert "counted per params.to, which this action does not have" in (result.error or "")


async def test_budgets_sum_floats_exactly(policy: Policy, tmp_path: Path) -> None:
    """0.1 + 0.2 fits a budget of 0.3; another 0.1 does not; other customers are apart."""

    def refund(amount: Any, customer: int = 1) -> Action:
        return Action("refund", "stripe", {"amount": amount, "customer_id": customer})

    async with runtime(policy, tmp_path) as rt:
        got = await statuses(rt, [refund(0.1), refund(0.2), refund(0.1), refund(0.3, 2)])
        last = await rt.run_one(refund(0.0001))
    assert got == ["success", "success", "blocked", "success"]
    assert last.status is ResultStatus.BLOCKED
    assert "budget of rule 'refund_budget' exceeded: 0.3 of 0.3 amount" in (last.error or "")
    assert "adds 0.0001" in (last.error or "")


@pytest.mark.parametrize(
    ("amount", "why"),
    [
        (None, "which this action does not have"),
        ("12", "is a string"),
        (True, "is a boolean"),
        (-0.1, "is negative"),
    ],
)
async def test_a_budget_param_that_is_missing_or_not_a_number_blocks(
    policy: Policy, tmp_path: Path, amount: Any, why: str
) -> None:
    """A refund whose amount cannot be summed never runs, and says why."""
    params: dict[str, Any] = {"customer_id": 1}
    if amount is not None:
        params["amount"] = amount
    async with runtime(policy, tmp_path) as rt:
        result = await rt.run_one(Action("refund", "stripe", params))
        records = rt.audit.get_log(rt.session_id)  # type: ignore[attr-defined]
    assert result.status is ResultStatus.BLOCKED
    assert why in (result.error or "")
    assert records[-1]["risk_level"] == "HIGH"


async def test_plan_shows_the_limits_without_reserving(policy: Policy, tmp_path: Path) -> None:
    """plan() says what the limits would decide now and leaves the counts alone."""
    email = Action("send_email", "smtp")
    async with runtime(policy, tmp_path, agent="x") as rt:
        for _ in range(10):
            assert rt.plan([email])[0].approval is Approval.AUTO
        assert await statuses(rt, [email] * 3) == ["success"] * 3
        plan = rt.plan([email, Action("read", "crm")])
    assert [d.approval for d in plan] == [Approval.BLOCK, Approval.AUTO]
    assert "3 of 3" in plan[0].reason


async def test_a_broken_usage_store_blocks_with_the_reason(policy: Policy, tmp_path: Path) -> None:
    """Counters that cannot be checked block; history that cannot be noted fails the action,
    any action: another process's flow rule may look for it."""
    store = MemoryUsageStore()
    store.close()
    async with runtime(policy, tmp_path, usage_store=store) as rt:
        result = await rt.run_one(Action("send_email", "smtp"))
        remembered = await rt.run_one(Action("read", "crm"))
        plain = await rt.run_one(Action("read", "billing"))
    assert result.status is ResultStatus.BLOCKED
    assert "the usage counters could not be checked" in (result.error or "")
    # every action let through is history some flow rule may look for: unnoted, it must not run
    for unnoted in (remembered, plain):
        assert unnoted.status is ResultStatus.FAILED
        assert "not run: the usage store could not note the action" in (unnoted.error or "")


async def test_a_policy_without_limits_notes_its_actions_with_their_start_records(
    tmp_path: Path,
) -> None:
    """A policy with no stateful rules still notes each action let through, for the flow rules
    of another process sharing the file (which look back an hour): in its start record's
    transaction, one commit."""
    plain = Policy.from_dict({"rules": [{"match": {"type": "*"}, "approval": "auto"}]})
    looked_back(tmp_path / "aegis_audit.db")
    audit = AuditLogger(tmp_path / "aegis_audit.db")
    async with runtime(plain, tmp_path, audit_logger=audit, session_id="s") as rt:
        await rt.run_one(Action("read_secret", "vault"))  # opens the file, learns the head
        seen = _trace(audit)
        await rt.run_one(Action("send_email", "smtp", {"to": "x"}))
        words = [
            sql.split()[0] + (" " + sql.split()[2] if sql.startswith("INSERT") else "")
            for sql in seen
        ]
        assert words[:4] == ["BEGIN", "INSERT aegis_flow_events", "INSERT audit_log", "COMMIT"]
    with sqlite3.connect(tmp_path / "aegis_audit.db") as conn:
        rows = conn.execute(
            "SELECT session_id, action_type, action_target, params FROM aegis_flow_events"
        ).fetchall()
    assert rows == [("s", "read_secret", "vault", "{}"), ("s", "send_email", "smtp", '{"to":"x"}')]


#: no mail within the hour after a secret was read
NO_MAIL_AFTER_SECRET = Policy.from_dict(
    {
        "rules": [
            {
                "name": "no_mail_after_secret",
                "match": {"type": "send_email"},
                "conditions": {"after": {"type": "read_secret", "within": "1h"}},
                "approval": "block",
            },
            {"name": "all", "match": {"type": "*"}, "approval": "auto"},
        ]
    }
)


async def _send(policy: Policy, tmp_path: Path, session_id: str) -> Result:
    """A mail in ``session_id``, by a runtime of ``policy`` on the file in ``tmp_path``."""
    audit = AuditLogger(tmp_path / "aegis_audit.db")
    async with runtime(policy, tmp_path, audit_logger=audit, session_id=session_id) as rt:
        return await rt.run_one(Action("send_email", "smtp"))


async def test_while_no_policy_looks_back_a_gap_stands_in_for_the_events(tmp_path: Path) -> None:
    """No policy sharing the file has a flow condition: an action's start is one INSERT, no
    event is noted, and a gap covers the session past its actions. A runtime whose rule then
    looks back over the gap cannot say the read never happened: it blocks, unsure; in a
    session without a gap it decides as ever."""
    plain = Policy.from_dict({"rules": [{"match": {"type": "*"}, "approval": "auto"}]})
    db = tmp_path / "aegis_audit.db"
    audit = AuditLogger(db)
    async with runtime(plain, tmp_path, audit_logger=audit, session_id="s") as rt:
        await rt.run_one(Action("warm", "up"))  # opens the file, tells it no policy looks back
        seen = _trace(audit)
        read_at = time.time()
        assert (await rt.run_one(Action("read_secret", "vault"))).ok
        words = [sql.split()[0] + " " + sql.split()[2] for sql in seen if sql.startswith("INSERT")]
        assert words == ["INSERT audit_log", "INSERT audit_log"]
        assert not [sql for sql in seen if sql.startswith("BEGIN")]
    with sqlite3.connect(db) as conn:
        events = conn.execute("SELECT count(*) FROM aegis_flow_events").fetchone()
        gaps = conn.execute("SELECT session_id, until FROM aegis_flow_gaps").fetchall()
    assert events == (0,)
    assert [session for session, _ in gaps] == ["s"]
    assert gaps[0][1] > read_at  # the gap reaches past the read
    sent, elsewhere = [
        await _send(NO_MAIL_AFTER_SECRET, tmp_path, session) for session in ("s", "t")
    ]
    assert sent.status is ResultStatus.BLOCKED
    assert "is not kept" in (sent.error or "")
    assert elsewhere.status is ResultStatus.SUCCESS


async def test_once_a_policy_looks_back_the_others_note_their_events_again(
    tmp_path: Path,
) -> None:
    """A runtime with a flow rule tells the file how far it looks back: a runtime without one,
    asking the file for a new cover, is refused it and notes its actions as events, which the
    rule then finds (blocked because the read happened, not for want of history)."""
    plain = Policy.from_dict({"rules": [{"match": {"type": "*"}, "approval": "auto"}]})
    db = tmp_path / "aegis_audit.db"
    async with runtime(plain, tmp_path, audit_logger=AuditLogger(db), session_id="s") as rt:
        await rt.run_one(Action("warm", "up"))  # no policy looks back: covered
    async with runtime(
        NO_MAIL_AFTER_SECRET, tmp_path, audit_logger=AuditLogger(db), session_id="u"
    ) as gated:
        assert (await gated.run_one(Action("warm", "up"))).ok  # tells the file its hour
    async with runtime(plain, tmp_path, audit_logger=AuditLogger(db), session_id="t") as rt:
        assert (await rt.run_one(Action("read_secret", "vault"))).ok
    sent = await _send(NO_MAIL_AFTER_SECRET, tmp_path, "t")
    with sqlite3.connect(db) as conn:
        events = conn.execute("SELECT session_id, action_type FROM aegis_flow_events").fetchall()
    assert ("t", "read_secret") in events
    assert sent.status is ResultStatus.BLOCKED
    assert "is not kept" not in (sent.error or "")
    assert "no_mail_after_secret" in (sent.error or "")


async def test_the_usage_store_follows_the_audit(tmp_path: Path, policy: Policy) -> None:
    """A SQLite audit gets its file's counters; a logging audit gets counters in memory."""
    async with runtime(policy, tmp_path) as rt:
        await rt.run_one(Action("send_email", "smtp"))
        metering = rt._metering.metering()
        assert isinstance(metering.store, SQLiteUsageStore)
        assert metering.store.db_path == str(tmp_path / "aegis_audit.db")
    assert metering.store._closed  # the runtime opened it, so it closed it
    async with runtime(policy, tmp_path, audit_logger=LoggingAuditLogger()) as rt:
        await rt.run_one(Action("send_email", "smtp"))
        assert isinstance(rt._metering.metering().store, MemoryUsageStore)
    given = MemoryUsageStore()
    async with runtime(policy, tmp_path, usage_store=given) as rt:
        await rt.run_one(Action("send_email", "smtp"))
    assert given.acquire([], 0.0, reserve=False, over=False).used == ()  # still open


# -- windows, with the clock given -------------------------------------------------------


@pytest.mark.parametrize(
    ("per", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400)]
)
@pytest.mark.parametrize("key", ["session", "agent", "type", "target", "params.customer.id", None])
def test_each_window_and_key_slides_on_sqlite(
    tmp_path: Path, per: str, seconds: int, key: str | None
) -> None:
    """A limit of 2 is full until its oldest action leaves the window, for every window and key."""
    policy = Policy.from_dict(
        {"rules": [{"name": "r", "approval": "auto", "limit": _limit(per, key)}]}
    )
    store = SQLiteUsageStore(tmp_path / "aegis_audit.db")
    metering = Metering(store, agent="bot")
    action = Action("send", "mail", {"customer": {"id": 7}})
    other = Action("send", "mail", {"customer": {"id": 8}})
    subject = Subject("s1", "bot")
    t0 = 1_000_000.0

    def approval(at: float, act: Action = action, who: Subject = subject) -> Approval:
        decision, _ = metering.check(policy, act, who, now=at)
        return decision.approval

    assert approval(t0) is Approval.AUTO
    assert approval(t0 + 1) is Approval.AUTO
    assert approval(t0 + 2) is Approval.BLOCK
    assert approval(t0 + seconds - 0.5) is Approval.BLOCK
    assert approval(t0 + seconds + 0.5) is Approval.AUTO  # the first left the window
    assert approval(t0 + seconds + 0.6) is Approval.BLOCK  # the second has not
    # another value of the key has its own count; without a key everything shares one
    changed = {
        "session": (action, Subject("s2", "bot")),
        "agent": (action, Subject("s1", "other")),
        "type": (Action("send2", "mail", {"customer": {"id": 7}}), subject),
        "target": (Action("send", "mail2", {"customer": {"id": 7}}), subject),
        "params.customer.id": (other, subject),
        None: (other, Subject("s9", "x")),
    }[key]
    expected = Approval.BLOCK if key is None else Approval.AUTO
    assert approval(t0 + seconds + 0.7, *changed) is expected
    store.close()


def _limit(per: str, key: str | None) -> dict[str, Any]:
    limit: dict[str, Any] = {"max": 2, "per": per}
    if key is not None:
        limit["key"] = [key]
    return limit


# -- concurrency: no limit is ever passed ----------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def usage_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(engine, location): the audit file for SQLite, or a DSN for PostgreSQL."""
    if request.param == "sqlite":
        yield "sqlite", str(tmp_path / "aegis_audit.db")
    else:
        yield "postgres", request.getfixturevalue("postgres_dsn")


def _usage(engine: str, location: str) -> UsageStore:
    if engine == "sqlite":
        return SQLiteUsageStore(location)
    return PostgresUsageStore(location)


LIMIT_20 = {
    "rules": [
        {
            "name": "r",
            "match": {"type": "send"},
            "limit": {"max": 20, "per": "1h"},
            "approval": "auto",
        }
    ]
}


async def test_fifty_concurrent_tasks_never_pass_a_limit_of_twenty(
    tmp_path: Path, usage_factory: tuple[str, str]
) -> None:
    """50 run_one at once, over two runtimes on one store: exactly 20 run."""
    engine, location = usage_factory
    policy = Policy.from_dict(LIMIT_20)
    ran: list[int] = []

    async def execute(action: Action) -> str:
        await asyncio.sleep(0)  # let the others interleave
        ran.append(1)
        return "ok"

    stores = [_usage(engine, location), _usage(engine, location)]
    runtimes = [
        Runtime(
            executor=execute,
            policy=policy,
            audit_logger=AuditLogger(tmp_path / f"audit{i}.db"),
            usage_store=store,
        )
        for i, store in enumerate(stores)
    ]
    try:
        results = await asyncio.gather(
            *(runtimes[i % 2].run_one(Action("send", "x", {"i": i})) for i in range(50))
        )
    finally:
        for rt in runtimes:
            await rt.close()
        for store in stores:
            store.close()
    counts = {s: sum(r.status is s for r in results) for s in ResultStatus}
    assert counts[ResultStatus.SUCCESS] == 20
    assert counts[ResultStatus.BLOCKED] == 30
    assert len(ran) == 20


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _collect(procs: list[subprocess.Popen[str]]) -> list[str]:
    out: list[str] = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        out.extend(json.loads(stdout))
    return out


def test_four_processes_never_pass_a_limit_of_twenty(
    tmp_path: Path, usage_factory: tuple[str, str]
) -> None:
    """Four real processes send 40 actions at once against one store: exactly 20 run."""
    engine, location = usage_factory
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(LIMIT_20), encoding="utf-8")
    start = tmp_path / "go"
    dsn = location if engine == "postgres" else "-"
    procs = [
        _spawn(
            [
                str(policy),
                str(tmp_path / ("aegis_audit.db" if engine == "sqlite" else f"a{i}.db")),
                dsn,
                f"session-{i}",
                str(start),
                *(f'send:x:{{"i": {j}}}' for j in range(10)),
            ]
        )
        for i in range(4)
    ]
    start.touch()
    got = _collect(procs)
    assert len(got) == 40
    assert got.count("success") == 20
    assert got.count("blocked") == 20
    if engine == "sqlite":
        audit = AuditLogger(tmp_path / "aegis_audit.db")
        assert audit.verify().ok
        assert len(audit.get_log(result_status="success")) == 20
        audit.close()


# -- flow rules ----------------------------------------------------------------------------


async def test_a_flow_rule_sees_earlier_run_one_calls(policy: Policy, tmp_path: Path) -> None:
    """After reading the CRM in this session, sending outside is blocked; other sessions are not."""
    store = MemoryUsageStore()
    external = Action("send", "external_mail")
    async with runtime(policy, tmp_path, usage_store=store) as rt:
        assert await statuses(rt, [external]) == ["success"]
        assert rt.plan([external])[0].matched_rule == "other_sends"
        assert await statuses(rt, [Action("read_customer", "crm")]) == ["success"]
        result = await rt.run_one(external)
        assert rt.plan([external])[0].matched_rule == "exfiltration"
    assert result.status is ResultStatus.BLOCKED
    assert "exfiltration" in (result.error or "")
    async with runtime(policy, tmp_path, usage_store=store) as fresh:
        assert await statuses(fresh, [external]) == ["success"]


async def test_a_blocked_read_is_not_history(policy: Policy, tmp_path: Path) -> None:
    """Only actions let through count as history: a blocked read does not arm the flow rule."""
    text = POLICY.replace(
        "  - name: reads\n",
        "  - name: no_secret\n    match: {type: read_secret}\n"
        "    approval: block\n  - name: reads\n",
    )
    strict = Policy.from_dict(__import__("yaml").safe_load(text))
    async with runtime(strict, tmp_path) as rt:
        assert await statuses(rt, [Action("read_secret", "crm")]) == ["blocked"]
        assert await statuses(rt, [Action("send", "external_x")]) == ["success"]


def test_a_flow_rule_sees_another_process_of_the_session(
    tmp_path: Path, usage_factory: tuple[str, str], policy_file: Path
) -> None:
    """A read in one process arms the flow rule for a send of the same session in another."""
    engine, location = usage_factory
    dsn = location if engine == "postgres" else "-"
    db = str(tmp_path / "aegis_audit.db")
    start = tmp_path / "go"
    start.touch()

    def run(session: str, *actions: str) -> list[str]:
        return _collect([_spawn([str(policy_file), db, dsn, session, str(start), *actions])])

    assert run("shared", "send:external_x") == ["success"]
    assert run("shared", "read:crm") == ["success"]
    assert run("shared", "send:external_x") == ["blocked"]
    assert run("other", "send:external_x") == ["success"]


# (conditions of a rule on sends, match_case, whether the rule holds for session "s"; "unsure":
# no earlier action satisfies it for certain but one may, its params not judged: the rule blocks)
FLOW_CASES: list[tuple[dict[str, Any], str, bool | str]] = [
    ({"after": {"type": "read_customer", "target": "crm", "within": "1h"}}, "sensitive", False),
    ({"after": {"type": "read_customer", "target": "crm"}}, "sensitive", True),
    ({"after": {"type": "read_customer", "target": "crm", "within": "3h"}}, "sensitive", True),
    ({"after": {"type": "read*", "target": "crm", "within": "1h"}}, "sensitive", False),
    ({"after": {"type": "read*", "target": "crm", "within": "1h"}}, "insensitive", True),
    ({"after": {"type": "read_contacts", "target": "crm"}}, "sensitive", False),
    ({"after": {"type": "read_contacts", "target": "crm"}}, "insensitive", True),
    ({"after": {"target": "CRM"}}, "sensitive", True),
    ({"after": {"type": "read_contacts", "target": "*"}}, "insensitive", True),
    (
        {"after": {"type": "read*", "params": {"param_eq": {"table": "customers"}}}},
        "sensitive",
        True,
    ),
    ({"after": {"type": "read*", "params": {"param_eq": {"table": "orders"}}}}, "sensitive", False),
    ({"after": {"type": "log", "target": "disk", "within": "1m"}}, "sensitive", False),
    ({"after": {"type": "log", "target": "disk", "within": "5m"}}, "sensitive", True),
    ({"after": {"type": "l?g", "params": {"param_gt": {"n": 198}}}}, "sensitive", True),
    ({"after": {"type": "log", "params": {"param_gt": {"n": 199}}}}, "sensitive", False),
    ({"not_after": {"type": "delete", "target": "crm"}}, "sensitive", True),
    # params read back from a database as the Action held them: lists, nested mappings, sets
    (
        {"not_after": {"type": "export", "params": {"param_eq": {"ids": [1, 2]}}}},
        "sensitive",
        False,
    ),
    ({"not_after": {"type": "exp*", "params": {"param_contains": {"ids": 2}}}}, "sensitive", False),
    (
        {"not_after": {"target": "files", "params": {"param_in": {"ids": [[1, 2]]}}}},
        "sensitive",
        False,
    ),
    ({"not_after": {"params": {"path_under": {"o.paths": ["/srv"]}}}}, "sensitive", False),
    (
        {"after": {"type": "export", "params": {"param_eq": {"o": {"paths": ["/srv/a"]}}}}},
        "sensitive",
        True,
    ),
    (
        {"after": {"type": "EXPORT", "params": {"param_eq": {"tags": ["a", "b"]}}}},
        "insensitive",
        True,
    ),
    ({"after": {"type": "export", "params": {"param_contains": {"ids": 3}}}}, "sensitive", False),
    # an earlier dump of table ["customers"] cannot be judged against a string
    ({"not_after": {"params": {"param_eq": {"table": "orders"}}}}, "sensitive", "unsure"),
    ({"after": {"type": "d*", "params": {"param_eq": {"table": "orders"}}}}, "sensitive", "unsure"),
    (
        {"not_after": {"type": "read*", "params": {"param_eq": {"table": "orders"}}}},
        "sensitive",
        True,
    ),
    ({"after": {"params": {"param_eq": {"table": "customers"}}}}, "sensitive", True),
    (
        {"after": {"params": {"param_eq": {"table": "orders"}}}, "not_after": {"type": "log"}},
        "sensitive",
        False,
    ),
    ({"not_after": {"type": "delete"}}, "insensitive", True),
    ({"not_after": {"type": "log", "target": "disk"}}, "sensitive", False),
    (
        {
            "after": {"type": "read_customer", "target": "crm"},
            "not_after": {"type": "read_contacts", "target": "crm", "within": "1h"},
        },
        "insensitive",
        False,
    ),
    (
        {
            "after": {"type": "read_customer", "target": "crm"},
            "not_after": {"type": "read_contacts", "target": "crm", "within": "1h"},
        },
        "sensitive",
        True,
    ),
]


@pytest.mark.parametrize("engine", ["memory", "sqlite", "postgres"])
def test_flow_conditions_decide_alike_on_every_store(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    """Globs, params, not_after, windows and case folding decide as written, on every store,
    however many newer events that do not match lie above the one that does."""
    if engine == "memory":
        store: UsageStore = MemoryUsageStore()
    elif engine == "sqlite":
        store = SQLiteUsageStore(tmp_path / "aegis_audit.db")
    else:
        store = PostgresUsageStore(request.getfixturevalue("postgres_dsn"))
    now = 1_000_000.0
    store.remember(FlowEvent("s", "read_customer", "crm", {"table": "customers"}, now - 7200))
    store.remember(FlowEvent("s", "Read_Contacts", "CRM", {"table": "contacts"}, now - 600))
    exported = Action(
        "export", "files", {"ids": [1, 2], "o": {"paths": ["/srv/a"]}, "tags": {"b", "a"}}
    )
    store.remember(FlowEvent("s", exported.type, exported.target, exported.params, now - 500))
    store.remember(
        FlowEvent("s", "dump", "db", Action("d", "t", {"table": ["customers"]}).params, now - 400)
    )
    for n in range(200):  # newer than every match: a search must read past them
        store.remember(FlowEvent("s", "log", "disk", {"n": n}, now - 300 + n))
    store.remember(FlowEvent("other", "delete", "crm", {}, now - 10))
    metering = Metering(store)
    found = []
    try:
        for conditions, match_case, _ in FLOW_CASES:
            policy = Policy.from_dict(
                {
                    "match_case": match_case,
                    "rules": [
                        {"name": "flow", "match": {"type": "send"}, "conditions": conditions},
                        {"name": "rest", "match": {"type": "*"}},
                    ],
                    "defaults": {"approval": "auto"},
                }
            )
            decision, _ = metering.check(
                policy, Action("send", "mail"), Subject("s"), reserve=False, now=now
            )
            unsure = (
                decision.approval is Approval.BLOCK and "cannot be evaluated" in decision.reason
            )
            found.append("unsure" if unsure else decision.matched_rule == "flow")
    finally:
        store.close()
    assert found == [holds for *_, holds in FLOW_CASES]


def _flow_policy(within: str) -> Policy:
    """Sends outside blocked within ``within`` of a read of the CRM; everything else runs."""
    return Policy.from_dict(
        {
            "rules": [
                {
                    "name": "exfiltration",
                    "match": {"type": "send", "target": "external*"},
                    "conditions": {"after": {"type": "read*", "target": "crm", "within": within}},
                    "approval": "block",
                },
                {"name": "rest", "match": {"type": "*"}, "approval": "auto"},
            ]
        }
    )


async def test_flow_events_no_rule_looks_back_to_are_forgotten_and_a_reload_keeps_more(
    tmp_path: Path, usage_factory: tuple[str, str]
) -> None:
    """The runtime deletes events older than its flow rules look back; a longer window
    declared by a reload is kept from then on by every process, even one with the old policy."""
    engine, location = usage_factory
    now = time.time()
    seed = _usage(engine, location)
    for age in (3 * 86400, 7200, 600):
        seed.remember(FlowEvent("s", "read", "crm", {}, now - age))
    send = Action("send", "external_mail")
    first, second = _usage(engine, location), _usage(engine, location)
    try:
        async with runtime(_flow_policy("1h"), tmp_path, usage_store=first, session_id="s") as rt:
            # the first governed action lets the store forget: only the read 10 min ago is left
            assert await statuses(rt, [send]) == ["blocked"]
            assert [round(now - e.at) for e in seed.recall("s", None, None)] == [600]
            # written since (say, by a machine whose clock is behind): past the 1 h policy's
            # horizon, it would go at its next sweep; the reload comes first
            seed.remember(FlowEvent("t", "read", "crm", {}, now - 5 * 3600))
            rt.update_policy(_flow_policy("1d"))
            rt.session_id = "t"
            assert await statuses(rt, [send]) == ["blocked"]  # the 5 h old read still counts
        # another process, still on the 1 h policy, keeps what the 1 d window reads
        other = runtime(_flow_policy("1h"), tmp_path, usage_store=second, session_id="u")
        async with other as rt:
            assert await statuses(rt, [send]) == ["success"]
        assert len(seed.recall("t", None, None)) == 1
    finally:
        for store in (seed, first, second):
            store.close()


async def test_a_clock_set_back_does_not_stop_the_forgetting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the clock goes back a day, old flow events are still deleted within the minute."""
    clock = [time.time()]
    monkeypatch.setattr(metering_module, "time", types.SimpleNamespace(time=lambda: clock[0]))
    store = MemoryUsageStore()
    send = Action("send", "external_mail")
    async with runtime(_flow_policy("1h"), tmp_path, usage_store=store, session_id="s") as rt:
        assert await statuses(rt, [send]) == ["success"]  # the first sweep: nothing to delete
        clock[0] -= 86400  # set back a day (say, by hand, after it ran ahead)
        store.remember(FlowEvent("s", "read", "crm", {}, clock[0] - 3 * 3600))  # past 1 h
        clock[0] += 61  # a minute on
        assert await statuses(rt, [send]) == ["success"]
    assert store.recall("s", None, "read") == []  # (the sends are noted, and recent)


def _answer(proc: subprocess.Popen[str], action: str) -> str:
    """Have the running worker ``proc`` (ACTION ``-``) run ``action``; its status."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(action + "\n")
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "the worker did not answer within 60 s"
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else "the worker ended"
    status: str = json.loads(line)
    return status


def test_a_process_on_a_shorter_window_keeps_what_a_running_longer_one_reads(
    tmp_path: Path, usage_factory: tuple[str, str]
) -> None:
    """Two OS processes on one store, flow windows of 1 d and 1 h: the 1 h one's sweep deletes
    only what is older than 1 d, and the 1 d one, still running, still blocks on a 5 h old read."""
    engine, location = usage_factory
    dsn = location if engine == "postgres" else "-"
    db, start = str(tmp_path / "aegis_audit.db"), tmp_path / "go"
    start.touch()
    policies = {}
    for within in ("1d", "1h"):
        policies[within] = tmp_path / f"flow_{within}.json"
        policies[within].write_text(
            json.dumps(
                {
                    "rules": [
                        {
                            "name": "exfiltration",
                            "match": {"type": "send", "target": "external*"},
                            "conditions": {
                                "after": {"type": "read*", "target": "crm", "within": within}
                            },
                            "approval": "block",
                        },
                        {"name": "rest", "match": {"type": "*"}, "approval": "auto"},
                    ]
                }
            ),
            encoding="utf-8",
        )
    now = time.time()
    seed = _usage(engine, location)
    for age in (3 * 86400, 5 * 3600):  # older than either window; inside the 1 d one only
        seed.remember(FlowEvent("s", "read", "crm", {}, now - age))
    with subprocess.Popen(
        [sys.executable, str(WORKER), str(policies["1d"]), db, dsn, "s", str(start), "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as long:
        try:
            assert _answer(long, "send:external_x") == "blocked"  # the 5 h old read counts
            # another process with the 1 h policy: its first action lets the store forget
            short = _spawn([str(policies["1h"]), db, dsn, "s", str(start), "send:external_x"])
            assert _collect([short]) == ["success"]
            # it did delete (the 3 d old read is gone), but not the read the 1 d window needs
            reads = seed.recall("s", None, "read")  # (the sends are noted too, and recent)
            assert [round((now - e.at) / 3600) for e in reads] == [5]
            assert _answer(long, "send:external_x") == "blocked"
            _, stderr = long.communicate(timeout=60)  # closes its stdin: it ends
            assert long.returncode == 0, stderr
        finally:
            if long.poll() is None:
                long.kill()
            seed.close()


# -- hot reload ----------------------------------------------------------------------------


async def test_update_policy_swaps_for_later_actions_only(policy: Policy, tmp_path: Path) -> None:
    """An action waiting for approval finishes under the old policy; the next uses the new."""
    waiting, release = asyncio.Event(), asyncio.Event()

    async def approve(decision: PolicyDecision) -> bool:
        waiting.set()
        await release.wait()
        return True

    block_all = Policy.from_dict({"rules": [{"name": "nothing", "approval": "block"}]})
    async with runtime(policy, tmp_path, approve=approve) as rt:
        in_flight = asyncio.ensure_future(rt.run_one(Action("transfer", "bank")))
        await waiting.wait()
        rt.update_policy(block_all)
        later = await rt.run_one(Action("read", "crm"))
        release.set()
        first = await in_flight
        records = rt.audit.get_log(rt.session_id)  # type: ignore[attr-defined]
    assert first.status is ResultStatus.SUCCESS
    assert later.status is ResultStatus.BLOCKED
    by_rule = {r["matched_rule"]: r["policy_digest"] for r in records}
    assert by_rule == {"transfers": policy.digest, "nothing": block_all.digest}


async def test_reload_follows_the_file_and_survives_a_broken_one(
    policy_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under steady load: a broken file is logged with file:line and ignored; a good one loads."""
    email = Action("send", "mail")
    outcomes: list[str] = []
    rt = Runtime(
        executor=lambda a: "ok",
        policy_path=policy_file,
        reload=True,
        reload_interval=0.02,
        approval_handler=lambda d: False,
        audit_logger=AuditLogger(tmp_path / "aegis_audit.db"),
    )
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            outcomes.append((await rt.run_one(email)).status.value)
            await asyncio.sleep(0.002)

    async def until(predicate: Callable[[], bool]) -> None:
        for _ in range(3000):  # up to 30 s on a loaded machine
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    async with rt:
        workers = [asyncio.ensure_future(load()) for _ in range(4)]
        await until(lambda: len(outcomes) > 20)
        assert set(outcomes) == {"success"}
        old_digest = rt.policy.digest
        policy_file.write_text(POLICY + "  - name: broken\n    approval: sometimes\n")
        await until(lambda: "not reloaded" in caplog.text)
        assert f"{policy_file}:" in caplog.text
        assert "approval must be one of" in caplog.text
        count = len(outcomes)
        await until(lambda: len(outcomes) > count + 20)
        assert rt.policy.digest == old_digest
        assert set(outcomes) == {"success"}
        policy_file.write_text(POLICY.replace("approval: auto\n", "approval: block\n"))
        await until(lambda: rt.policy.digest != old_digest)
        count = len(outcomes)
        await until(lambda: len(outcomes) > count + 20)
        stop.set()
        await asyncio.gather(*workers)
    assert set(outcomes[count + 4 :]) == {"blocked"}


def test_reload_needs_a_path_and_a_runtime_needs_a_policy() -> None:
    """reload without policy_path, or no policy at all, is a ConfigurationError."""
    from aegis.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="reload=True needs policy_path"):
        Runtime(executor=lambda a: None, policy=Policy(), reload=True)
    with pytest.raises(ConfigurationError, match="Runtime needs a policy"):
        Runtime(executor=lambda a: None)
    with pytest.raises(ConfigurationError, match="usage_store must implement"):
        Runtime(executor=lambda a: None, policy=Policy(), usage_store=object())  # type: ignore[arg-type]


class _EarlierStore:
    """A user's usage store written to the protocol before latest_event and forgotten."""

    def __init__(self) -> None:
        self._inner = MemoryUsageStore()
        for name in ("acquire", "acquire_many", "release", "remember", "recall"):
            setattr(self, name, getattr(self._inner, name))
        self.forget_events, self.close = self._inner.forget_events, self._inner.close


def test_a_usage_store_of_the_earlier_protocol_is_refused_naming_what_to_add() -> None:
    """A store without latest_event and forgotten fails at Runtime(), naming the methods and
    how to write them, never later on the first flow check."""
    from aegis.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        Runtime(executor=lambda a: None, policy=Policy(), usage_store=_EarlierStore())  # type: ignore[arg-type]
    message = str(caught.value)
    assert "_EarlierStore has no forgotten, latest_event (" in message
    assert "recall" in message
    assert "acquire" not in message


async def test_concurrent_checks_share_a_batch_and_a_cancelled_one_reserves_nothing(
    tmp_path: Path,
) -> None:
    """Checks of one loop iteration are reserved together; a waiter cancelled first counts not."""
    policy = Policy.from_dict(LIMIT_20)
    store = SQLiteUsageStore(tmp_path / "aegis_audit.db")
    metering = Metering(store)
    action = Action("send", "x")
    tasks = [
        asyncio.ensure_future(metering.check_async(policy, action, Subject("s"))) for _ in range(5)
    ]
    await asyncio.sleep(0)  # the tasks run up to their wait for the batch
    tasks[0].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    assert all(isinstance(d, tuple) and d[1] is not None for d in done[1:])
    preview, _ = metering.check(policy, action, Subject("s"), reserve=False)
    assert preview.approval is Approval.AUTO
    used = store.acquire(
        [policy.limits.by_rule["r"].meters[0].charge(action, Subject("s"))],  # type: ignore[union-attr]
        time.time(),
        reserve=False,
        over=False,
    ).used
    assert used == (4,)
    store.close()


async def test_a_postgres_audit_gets_its_counters_in_the_same_database(
    postgres_dsn: str,
) -> None:
    """AuditLogger(DSN) gives the runtime a PostgreSQL usage store in that schema, shared."""
    import psycopg

    policy = Policy.from_dict(
        LIMIT_20 | {"rules": [LIMIT_20["rules"][0] | {"limit": {"max": 3, "per": "1h"}}]}
    )
    statuses_seen: list[str] = []
    for _ in range(2):  # two runtimes, as two workers of a fleet would be
        async with Runtime(
            executor=lambda a: "ok", policy=policy, audit_logger=AuditLogger(postgres_dsn)
        ) as rt:
            statuses_seen += await statuses(rt, [Action("send", "x")] * 2)
            assert isinstance(rt._metering.metering().store, PostgresUsageStore)
    assert statuses_seen == ["success", "success", "success", "blocked"]
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute("SELECT count(*) FROM aegis_usage").fetchone()
        versions = dict(conn.execute("SELECT component, version FROM aegis_schema_versions"))
    assert rows == (3,)
    assert {"audit", "usage"} <= set(versions)


def test_a_killed_action_stays_counted(tmp_path: Path) -> None:
    """An action whose process is SIGKILLed mid-run keeps its reservation until its window ends."""
    import signal

    policy = tmp_path / "policy.yaml"
    limit_one = {"rules": [{"name": "r", "limit": {"max": 1, "per": "1h"}, "approval": "auto"}]}
    policy.write_text(json.dumps(limit_one), encoding="utf-8")
    start = tmp_path / "go"
    start.touch()
    db = tmp_path / "aegis_audit.db"
    proc = _spawn([str(policy), str(db), "-", "s", str(start), "hang:x"])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "hanging"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.communicate()
    after = _collect([_spawn([str(policy), str(db), "-", "s2", str(start), "send:x"])])
    assert after == ["blocked"]
    audit = AuditLogger(db)
    assert [r["action_type"] for r in audit.pending()] == ["hang"]
    audit.close()


async def test_an_in_memory_audit_counts_in_memory(
    policy: Policy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aegis.testing's InMemoryAuditLog ("memory://") counts in memory and writes no file."""
    import os

    from aegis.testing import InMemoryAuditLog

    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for _ in range(2):  # a fresh log starts from zero
        async with Runtime(
            executor=lambda a: "ok", policy=policy, audit_logger=InMemoryAuditLog(), agent="t"
        ) as rt:
            got = await statuses(rt, [Action("send_email", "smtp")] * 4)
            store = rt._metering.metering().store
        assert got == ["success"] * 3 + ["blocked"]
        assert isinstance(store, MemoryUsageStore)
    assert os.listdir() == []


def test_the_usage_store_comes_from_the_audit_loggers_stores(tmp_path: Path) -> None:
    """An AuditLogger's counters are its opened stores' (on its connection); others count here."""
    from aegis import AuditLogger
    from aegis.runtime.audit_logging import LoggingAuditLogger
    from aegis.runtime.limits import usage_store_for

    audit = AuditLogger(f"sqlite:///{tmp_path / 'x.db'}")
    store, owned = usage_store_for(audit)
    assert store is audit.stores.usage  # closed with the audit logger
    assert not owned
    assert isinstance(store, SQLiteUsageStore)
    assert store.db is audit.store.db  # type: ignore[attr-defined]  # a SQLite store
    audit.close()
    # an object that merely looks like an audit with a database is not sniffed for one
    lookalike = type("Url", (), {"db_path": "sqlite:///y.db", "dsn": "postgresql://x@y/z"})()
    for other in (LoggingAuditLogger(), lookalike):
        found, owned = usage_store_for(other)
        assert isinstance(found, MemoryUsageStore)
        assert owned
    assert not (tmp_path / "y.db").exists()


async def test_a_memory_url_audit_counts_in_memory(
    policy: Policy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AuditLogger("memory://") keeps its counters in memory and writes no file."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    audit = AuditLogger("memory://")
    async with Runtime(executor=lambda a: "ok", policy=policy, audit_logger=audit, agent="t") as rt:
        got = await statuses(rt, [Action("send_email", "smtp")] * 4)
    assert got == ["success"] * 3 + ["blocked"]
    assert list(workdir.iterdir()) == []  # no stray database file


# -- a sequential action's reservation rides on its start record ------------------------


def _trace(audit: AuditLogger) -> list[str]:
    """Every SQL statement the trail's connection runs from now on."""
    seen: list[str] = []
    with audit.store.db.connection("trace") as conn:  # type: ignore[attr-defined]
        conn.set_trace_callback(seen.append)
    return seen


async def test_a_sequential_action_reserves_in_its_start_records_transaction(
    policy: Policy, tmp_path: Path
) -> None:
    """One by one, an action's count and its start record are one transaction, then its final.

    Once the connection knows the counter and nobody else wrote to the file
    (``PRAGMA data_version`` unchanged), the count is not read again.
    """
    audit = AuditLogger(tmp_path / "aegis_audit.db")
    async with runtime(policy, tmp_path, audit_logger=audit, agent="support") as rt:
        await rt.run_one(Action("send_email", "smtp"))  # opens the file, learns the head
        seen = _trace(audit)
        results = [await rt.run_one(Action("send_email", "smtp")) for _ in range(3)]
        assert [r.status.value for r in results] == ["success", "success", "blocked"]
        words = [
            sql.split()[0] + (" " + sql.split()[2] if sql.startswith("INSERT") else "")
            for sql in seen
        ]
        # a final record commits with synchronous=FULL (the default durability, "result")
        final = ["PRAGMA", "INSERT audit_log", "PRAGMA"]
        # the action's flow event too: every action is noted, for any process's flow rules
        written = ["INSERT aegis_usage", "INSERT aegis_flow_events", "INSERT audit_log", "COMMIT"]
        written += final
        assert words == [
            *["BEGIN", "PRAGMA", "SELECT", *written],  # the version, first seen: keeps nothing
            *["BEGIN", "PRAGMA", "SELECT", "SELECT", *written],  # reads the counter, keeps it
            # the third does not fit, as the connection knows without reading:
            # nothing is written but its blocked record
            *["BEGIN", "PRAGMA", "ROLLBACK", *final],
        ]
        assert audit.verify().ok
    with sqlite3.connect(tmp_path / "aegis_audit.db") as conn:
        assert conn.execute("SELECT count(*) FROM aegis_usage").fetchone()[0] == 3


async def test_a_start_that_cannot_be_written_leaves_no_count_behind(
    policy: Policy, tmp_path: Path
) -> None:
    """When the trail refuses an action's start, the action does not run and counts nothing."""
    ran: list[Action] = []
    audit = AuditLogger(tmp_path / "aegis_audit.db")
    rt = Runtime(executor=ran.append, policy=policy, audit_logger=audit, agent="support")
    async with rt:
        assert (await rt.run_one(Action("send_email", "smtp"))).ok
        with sqlite3.connect(tmp_path / "aegis_audit.db") as conn:
            conn.execute(
                "CREATE TRIGGER no_starts BEFORE INSERT ON audit_log WHEN NEW.kind = 'start'"
                " BEGIN SELECT RAISE(ABORT, 'the disk said no'); END"
            )
        refused = await rt.run_one(Action("send_email", "smtp"))
        with sqlite3.connect(tmp_path / "aegis_audit.db") as conn:
            conn.execute("DROP TRIGGER no_starts")
            rows = conn.execute("SELECT SUM(units) FROM aegis_usage").fetchone()[0]
        assert refused.status is ResultStatus.FAILED
        assert "could not record its start" in (refused.error or "")
        assert len(ran) == 1
        assert rows == 1
        later = [await rt.run_one(Action("send_email", "smtp")) for _ in range(3)]
    assert [r.status.value for r in later] == ["success", "success", "blocked"]


async def test_counters_edited_by_hand_block_a_sequential_action(
    policy: Policy, tmp_path: Path
) -> None:
    """Nonsense in the counters blocks the next action with the reason, as before it ran."""
    async with runtime(policy, tmp_path, agent="support") as rt:
        for _ in range(2):
            assert (await rt.run_one(Action("send_email", "smtp"))).ok
        with sqlite3.connect(tmp_path / "aegis_audit.db") as conn:
            conn.execute("UPDATE aegis_usage SET total = 'lots'")
        result = await rt.run_one(Action("send_email", "smtp"))
    assert result.status is ResultStatus.BLOCKED
    assert "the usage counters could not be checked" in (result.error or "")
    assert "edited by hand" in (result.error or "")


@pytest.mark.parametrize("where", ["beside the audit", "in memory"])
async def test_on_exceed_approve_counts_only_what_a_human_let_run(
    policy: Policy, tmp_path: Path, where: str
) -> None:
    """Past the limit, one by one: each action asks a human; only approved ones are counted."""
    answers = iter([False, True, False])
    store = MemoryUsageStore() if where == "in memory" else None
    async with runtime(policy, tmp_path, approve=lambda d: next(answers), usage_store=store) as rt:
        sms = Action("send_sms", "twilio", {"to": "+1"})
        got = await statuses(rt, [sms] * 5)
        plan = rt.plan([sms])
    assert got == ["success", "success", "denied", "success", "denied"]
    assert "3 of 2 actions" in plan[0].reason


async def test_a_checkpoint_failing_after_the_start_commits_counts_the_action_once(
    policy: Policy, tmp_path: Path
) -> None:
    """Start and count commit before signing: a checkpoint that then fails counts nothing twice."""
    key, _ = generate_key_files(tmp_path / "audit.key")
    db = tmp_path / "aegis_audit.db"
    ran: list[Action] = []
    audit = AuditLogger(db, signing_key=key, checkpoint_every=1)
    rt = Runtime(executor=ran.append, policy=policy, audit_logger=audit, agent="support")
    async with rt:
        assert (await rt.run_one(Action("send_email", "smtp"))).ok  # the next one is guarded
        with sqlite3.connect(db) as conn:
            conn.execute(
                "CREATE TRIGGER no_checkpoints BEFORE INSERT ON audit_checkpoints"
                " BEGIN SELECT RAISE(ABORT, 'no room for checkpoints'); END"
            )
        second = await rt.run_one(Action("send_email", "smtp"))
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TRIGGER no_checkpoints")
            counted = conn.execute("SELECT count(*) FROM aegis_usage").fetchone()[0]
            starts = conn.execute("SELECT count(*) FROM audit_log WHERE kind = 'start'").fetchone()[
                0
            ]
    assert len(ran) == 2
    assert counted == 2
    assert starts == 2
    # both its records are committed: the checkpoint is logged and tried again later
    assert second.status is ResultStatus.SUCCESS


class _NoDigest:
    """A duck-typed policy without a digest, wrapping a real one."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self.limits = policy.limits

    def evaluate(self, action: Action, **kwargs: Any) -> PolicyDecision:
        return self._policy.evaluate(action, **kwargs)


async def test_a_policy_swapped_during_setup_decides_the_first_action(tmp_path: Path) -> None:
    """run_one's decision is not reused by the metering step once another policy took over."""

    def mail(approval: str) -> Policy:
        rule = {"name": "mail", "match": {"type": "send_email"}, "approval": approval}
        return Policy.from_dict({"rules": [{**rule, "limit": {"max": 5, "per": "1h"}}]})

    allow, forbid = mail("auto"), mail("block")
    ran: list[Action] = []

    class Swapping:
        runtime: Runtime

        async def setup(self) -> None:
            self.runtime.update_policy(_NoDigest(forbid))  # type: ignore[arg-type]

        async def execute(self, action: Action) -> None:
            ran.append(action)

    executor = Swapping()
    rt = Runtime(
        executor=executor,
        policy=_NoDigest(allow),  # type: ignore[arg-type]
        audit_logger=AuditLogger(tmp_path / "aegis_audit.db"),
    )
    executor.runtime = rt
    result = await rt.run_one(Action("send_email", "smtp"))
    await rt.close()
    assert result.status is ResultStatus.BLOCKED
    assert ran == []


# -- an agent's repeated actions: the last check reused -----------------------------------

# No flow condition: an agent's next action of the same rule may reuse the last check.
REPEAT = {
    "rules": [
        {"name": "email_rate", "match": {"type": "send_email"}, "approval": "auto",
         "limit": {"max": 3, "per": "1h", "key": ["agent"]}},
        {"name": "ping_rate", "match": {"type": "ping"}, "approval": "auto",
         "limit": {"max": 2, "per": "1h", "key": ["session"]}},
        {"name": "sms_rate", "match": {"type": "send_sms"}, "approval": "auto",
         "limit": {"max": 2, "per": "1h", "key": ["params.to"]}},
        {"name": "refunds", "match": {"type": "refund"}, "approval": "auto",
         "budget": {"sum": "amount", "max": 0.3, "per": "1d", "key": ["params.customer"]}},
        {"name": "rest", "match": {"type": "*"}, "approval": "auto"},
    ]
}  # fmt: skip


@pytest.fixture
def begins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The rules the metering step worked out from the policy (not reused), in order."""
    seen: list[str] = []
    begin = Metering.begin

    def counting(self: Metering, policy: Any, action: Action, *args: Any, **kw: Any) -> Any:
        seen.append(action.type)
        return begin(self, policy, action, *args, **kw)

    monkeypatch.setattr(Metering, "begin", counting)
    return seen


async def test_an_agents_repeated_actions_reuse_the_check_and_stop_at_the_limit(
    tmp_path: Path, begins: list[str]
) -> None:
    """From the second action on the check is reused; the fourth still finds the limit."""
    async with runtime(Policy.from_dict(REPEAT), tmp_path, agent="a") as rt:
        got = await statuses(rt, [Action("send_email", "smtp")] * 5)
        listed = rt.audit.get_log(rt.session_id)  # type: ignore[attr-defined]
    assert got == ["success"] * 3 + ["blocked"] * 2
    # worked out for the first two (the first goes through the batch), then reused
    assert begins == ["send_email"] * 2
    assert "3 of 3 actions already in the last 1h" in listed[-1]["reason"]


async def test_a_swapped_policy_is_not_checked_with_the_last_ones_charges(
    tmp_path: Path, begins: list[str]
) -> None:
    """The same rule name in a new policy with a lower limit applies at once."""
    lower = json.loads(json.dumps(REPEAT))
    lower["rules"][0]["limit"]["max"] = 2
    async with runtime(Policy.from_dict(REPEAT), tmp_path, agent="a") as rt:
        first = await statuses(rt, [Action("send_email", "smtp")] * 2)
        rt.update_policy(Policy.from_dict(lower))
        after = await statuses(rt, [Action("send_email", "smtp")])
    assert first == ["success", "success"]
    assert after == ["blocked"]


async def test_two_limited_rules_in_turn_each_count_their_own(
    tmp_path: Path, begins: list[str]
) -> None:
    """Alternating rules never take each other's counter."""
    actions = [Action("send_email", "smtp"), Action("ping", "host")] * 4
    async with runtime(Policy.from_dict(REPEAT), tmp_path, agent="a") as rt:
        got = await statuses(rt, actions)
    assert got[0::2] == ["success"] * 3 + ["blocked"]  # email: 3 an hour
    assert got[1::2] == ["success"] * 2 + ["blocked"] * 2  # ping: 2 an hour


async def test_a_limit_keyed_by_a_param_counts_each_value(
    tmp_path: Path, begins: list[str]
) -> None:
    """A charge that depends on the action is worked out for every action, in the reuse too."""
    to = [{"to": "ann"}, {"to": "bob"}] * 3
    async with runtime(Policy.from_dict(REPEAT), tmp_path, agent="a") as rt:
        got = await statuses(rt, [Action("send_sms", "twilio", p) for p in to])
    assert got == ["success"] * 4 + ["blocked"] * 2
    assert len(begins) == 2  # the rest reused the rule, not its charges


async def test_a_budget_in_the_reuse_sums_each_amount_and_blocks_nonsense(
    tmp_path: Path, begins: list[str]
) -> None:
    """Amounts are charged one by one; one that is not a number blocks, with the reason."""
    amounts: list[Any] = [0.1, 0.1, "lots", 0.1, 0.1]
    async with runtime(Policy.from_dict(REPEAT), tmp_path, agent="a") as rt:
        results = [
            await rt.run_one(Action("refund", "stripe", {"customer": "c1", "amount": amount}))
            for amount in amounts
        ]
    assert [r.status.value for r in results] == ["success"] * 2 + ["blocked"] + [
        "success",
        "blocked",
    ]
    assert "amount" in (results[2].error or "")
    assert "0.3" in (results[4].error or "")


async def test_agents_named_by_the_context_count_apart(tmp_path: Path, begins: list[str]) -> None:
    """Without Runtime(agent=...), each call's context names its agent: no reuse across them."""
    async with runtime(Policy.from_dict(REPEAT), tmp_path) as rt:
        got = [
            (await rt.run_one(Action("send_email", "smtp"), context={"agent": who})).status.value
            for who in ["x", "y"] * 4
        ]
    assert got[0::2] == ["success"] * 3 + ["blocked"]
    assert got[1::2] == ["success"] * 3 + ["blocked"]


async def test_the_reuse_folds_names_like_the_policy(tmp_path: Path, begins: list[str]) -> None:
    """Under match_case: insensitive, a reused check counts EMAIL to BOB with email to Bob."""
    policy = Policy.from_dict(
        {
            "match_case": "insensitive",
            "rules": [
                {"name": "emails", "match": {"type": "email"}, "approval": "auto",
                 "limit": {"max": 2, "per": "1h", "key": ["type", "target"]}},
            ],
        }
    )  # fmt: skip
    sent = [("email", "Bob"), ("email", "Bob"), ("EMAIL", "BOB"), ("Email", "Ann")]
    async with runtime(policy, tmp_path, agent="a") as rt:
        got = await statuses(rt, [Action(kind, target) for kind, target in sent])
    assert got == ["success", "success", "blocked", "success"]
    assert len(begins) == 2


async def test_a_new_session_is_not_counted_with_the_last_one(tmp_path: Path) -> None:
    """A limit per session starts again when the runtime's session changes."""
    async with runtime(Policy.from_dict(REPEAT), tmp_path, agent="a") as rt:
        got = await statuses(rt, [Action("ping", "host")] * 3)
        rt.session_id = "another"
        got += await statuses(rt, [Action("ping", "host")] * 3)
    assert got == ["success", "success", "blocked"] * 2


class _Swappable:
    """A policy of another kind: its rules are a Policy's it can swap."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner

    def evaluate(self, action: Action, **kwargs: Any) -> PolicyDecision:
        return self.inner.evaluate(action, **kwargs)

    @property
    def limits(self) -> Any:
        return self.inner.limits


async def test_a_policy_of_another_kind_is_asked_for_its_limits_each_time(
    tmp_path: Path,
) -> None:
    """Only a Policy (which never changes) has its last check reused."""
    three = Policy.from_dict(REPEAT)
    lower = json.loads(json.dumps(REPEAT))
    lower["rules"][0]["limit"]["max"] = 1
    swappable = _Swappable(three)
    async with runtime(swappable, tmp_path, agent="a") as rt:  # type: ignore[arg-type]
        got = await statuses(rt, [Action("send_email", "smtp")] * 2)
        swappable.inner = Policy.from_dict(lower)  # at most one an hour now
        got += await statuses(rt, [Action("send_email", "smtp")])
    assert got == ["success", "success", "blocked"]


def test_a_guarded_start_takes_the_stamp_as_keywords_too(tmp_path: Path) -> None:
    """record_start_guarded(context=..., decided_at=..., policy_digest=...) stores them."""
    audit = AuditLogger(tmp_path / "aegis_audit.db")
    audit.check()
    usage = SQLiteUsageStore(database=audit.store.db)  # type: ignore[attr-defined]
    decision = PolicyDecision(Action("ping", "host"), RiskLevel.LOW, Approval.AUTO, "pings")
    started = audit.record_start_guarded(
        "s1",
        decision,
        usage.guard(None, None),
        context={"tool_call_id": "t1"},
        decided_at="2026-11-29T12:00:00+00:00",
        policy_digest="d" * 64,
    )
    assert started is not None
    record = audit.get_log("s1")[-1]
    assert record["decided_at"] == "2026-11-29T12:00:00+00:00"
    assert record["policy_digest"] == "d" * 64
    assert record["context"] == {"tool_call_id": "t1"}
    audit.close()


async def test_names_a_database_cannot_hold_fail_the_action_clearly(
    usage_factory: tuple[str, str],
) -> None:
    """A type, target or session with a lone surrogate (UTF-8 has none; a model's JSON can
    hold one) is not run, with a StoreError's reason, when a flow rule must remember it or
    look it up: no exception escapes run_one, nothing runs unremembered."""
    _, location = usage_factory
    policy = Policy.from_dict(
        {
            "rules": [
                {"match": {"type": "send"}, "conditions": {"not_after": {"type": "read*"}}},
                {"match": {"type": "send"}, "approval": "block"},
            ],
            "defaults": {"approval": "auto"},
        }
    )
    ran: list[Action] = []
    for session, action in [
        ("s1", Action("read\ud800", "crm")),
        ("s2", Action("read", "crm\udfff")),
        ("s3\ud800", Action("read", "crm")),
        ("s3\ud800", Action("send", "mail")),
    ]:
        rt = Runtime(
            executor=ran.append,
            policy=policy,
            audit_logger=AuditLogger(location),
            session_id=session,
        )
        async with rt:
            result = await rt.run_one(action)
        assert result.status in (ResultStatus.FAILED, ResultStatus.BLOCKED)
        assert "lone surrogate" in (result.error or "")
    assert ran == []


async def test_a_flow_condition_broken_while_a_person_decides_blocks_the_approved_action(
    tmp_path: Path,
) -> None:
    """A send that may run only if no secret was read waits for approval; a secret is read in
    the session meanwhile (another process): once approved the send is blocked, as the policy
    now says, not let through by the decision taken before the read."""
    policy = Policy.from_dict(
        {
            "rules": [
                {
                    "name": "clean_sends",
                    "match": {"type": "send"},
                    "conditions": {"not_after": {"type": "read_secret"}},
                    "approval": "approve",
                },
                {"name": "tainted_sends", "match": {"type": "send"}, "approval": "block"},
            ],
            "defaults": {"approval": "auto"},
        }
    )
    ran: list[str] = []
    other = Runtime(
        executor=lambda a: ran.append(a.type),
        policy=policy,
        audit_logger=AuditLogger(tmp_path / "aegis_audit.db"),
        session_id="s",
    )

    async def approve(decision: PolicyDecision) -> bool:
        assert (await other.run_one(Action("read_secret", "vault"))).ok
        return True

    rt = Runtime(
        executor=lambda a: ran.append(a.type),
        policy=policy,
        approval_handler=approve,
        audit_logger=AuditLogger(tmp_path / "aegis_audit.db"),
        session_id="s",
    )
    async with other, rt:
        result = await rt.run_one(Action("send", "mail"))
    assert result.status is ResultStatus.BLOCKED
    assert "'tainted_sends'" in (result.error or "")
    assert "history changed while approval was asked" in (result.error or "")
    assert ran == ["read_secret"]


class _JsonEventsStore(MemoryUsageStore):
    """A user's store that gives events back with params as JSON decodes them (lists, dicts)."""

    def latest_event(self, session_id, since, where=None, *, action_type=None, action_target=None):  # type: ignore[no-untyped-def, override]
        def plain(event: FlowEvent) -> FlowEvent:
            params = json.loads(json.dumps(dict(event.params), default=list))
            return FlowEvent(event.session_id, event.type, event.target, params, event.at)

        found = super().latest_event(
            session_id,
            since,
            None if where is None else lambda e: where(plain(e)),
            action_type=action_type,
            action_target=action_target,
        )
        return None if found is None else plain(found)


def test_a_store_of_ones_own_giving_json_params_still_trips_a_not_after() -> None:
    """Params a custom store gives back as JSON lists are compared as an Action's tuples:
    a not_after on a list param blocks."""
    store = _JsonEventsStore()
    policy = Policy.from_dict(
        {
            "rules": [
                {
                    "match": {"type": "send"},
                    "conditions": {
                        "not_after": {"type": "read", "params": {"param_eq": {"ids": [1, 2]}}}
                    },
                    "approval": "auto",
                },
                {"match": {"type": "send"}, "approval": "block"},
            ],
            "defaults": {"approval": "auto"},
        }
    )
    metering = Metering(store)
    metering.ran(policy, Action("read", "crm", {"ids": [1, 2]}), "s", now=10.0)
    decision, _ = metering.check(policy, Action("send", "x"), Subject("s"), reserve=False, now=11.0)
    assert (decision.approval, decision.matched_rule) == (Approval.BLOCK, "rule_2")
    metering.ran(policy, Action("read", "crm", {"ids": [3]}), "t", now=10.0)
    decision, _ = metering.check(policy, Action("send", "x"), Subject("t"), reserve=False, now=11.0)
    assert (decision.approval, decision.matched_rule) == (Approval.AUTO, "rule_1")


async def test_an_action_whose_start_was_refused_does_not_satisfy_an_after(
    tmp_path: Path,
) -> None:
    """A wire may run only after a verify; a verify whose start the trail refused did not run,
    so it must not count as the earlier action the wire needs."""
    policy = Policy.from_dict(
        {
            "rules": [
                {
                    "match": {"type": "wire"},
                    "conditions": {"after": {"type": "verify"}},
                    "approval": "auto",
                },
                {"match": {"type": "wire"}, "approval": "block"},
            ],
            "defaults": {"approval": "auto"},
        }
    )
    ran: list[Action] = []
    audit = AuditLogger(tmp_path / "aegis_audit.db")
    async with Runtime(executor=ran.append, policy=policy, audit_logger=audit) as rt:
        assert (await rt.run_one(Action("ping", "host"))).ok
        with sqlite3.connect(tmp_path / "aegis_audit.db") as conn:
            conn.execute(
                "CREATE TRIGGER no_verify BEFORE INSERT ON audit_log"
                " WHEN NEW.kind = 'start' AND NEW.action_type = 'verify'"
                " BEGIN SELECT RAISE(ABORT, 'the disk said no'); END"
            )
        refused = await rt.run_one(Action("verify", "kyc"))
        wire = await rt.run_one(Action("wire", "bank", {"amount": 10}))
        assert audit.verify().ok
    assert refused.status is ResultStatus.FAILED
    assert "could not record its start" in (refused.error or "")
    assert wire.status is ResultStatus.BLOCKED
    assert [a.type for a in ran] == ["ping"]
