"""Durability, the store contract's one option: its values, its alias, and which commits flush.

Which commits wait for the disk is observed where the engine shows it
(:attr:`Engine.observes_flushes`); a power cut cannot be simulated, so the
tests check the flag each commit ran under (SQLite's ``synchronous``), or
whether the commit was within the flushed WAL when the append returned
(PostgreSQL, on a quiet cluster of the session's own), and that a killed
process keeps every record whose append returned, at every level.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from store_engines import Engine

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.filters import Filters
from aegis.core.policy import Policy
from aegis.core.record import final_draft, start_draft
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import ConfigurationError
from aegis.runtime.approval import ApprovalHandler
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime
from aegis.stores.base import DEFAULT_DURABILITY, DURABILITIES, resolve_durability

WRITER = Path(__file__).with_name("store_writer.py")

#: what ``synchronous="normal"`` meant on each engine before durability= existed
OLD_NORMAL = {"memory": "process", "sqlite": "process", "postgres": "result"}


def _decision(n: int, type_: str = "write") -> PolicyDecision:
    return PolicyDecision(Action(type_, "crm", {"n": n}), RiskLevel.LOW, Approval.AUTO, "w")


# ---------------------------------------------------------------- the option


def test_the_default_is_result(engine: Engine) -> None:
    """A store opened without the option promises that a returned Result's record is on disk."""
    store = engine.open()
    assert DEFAULT_DURABILITY == "result"
    assert store.durability == "result"  # type: ignore[attr-defined]  # every engine has it
    store.close()


@pytest.mark.parametrize("level", DURABILITIES)
def test_each_level_is_kept_as_given(engine: Engine, level: str) -> None:
    """durability= is reported back by every engine, the same word for the same promise."""
    store = engine.open(durability=level)
    store.check()
    assert store.durability == level  # type: ignore[attr-defined]
    store.close()


@pytest.mark.parametrize(("synchronous", "full"), [("normal", False), ("full", True)])
def test_synchronous_stays_an_alias(engine: Engine, synchronous: str, full: bool) -> None:
    """synchronous='full' is durability 'full'; 'normal' keeps what it meant on the engine."""
    store = engine.open(synchronous=synchronous)
    expected = "full" if full else OLD_NORMAL[engine.name]
    assert store.durability == expected  # type: ignore[attr-defined]
    store.close()


@pytest.mark.parametrize(
    "options",
    [
        {"durability": "sometimes"},
        {"durability": "FULL"},
        {"synchronous": "off"},
        {"durability": "process", "synchronous": "full"},
    ],
)
def test_an_unknown_or_contradictory_level_is_refused(
    engine: Engine, options: dict[str, str]
) -> None:
    """A level that is not one of the three, or two options that disagree, fail at once."""
    with pytest.raises(ConfigurationError, match=r"durability|synchronous"):
        engine.open(**options)


def test_the_logger_passes_the_level_to_its_store(engine: Engine) -> None:
    """AuditLogger(url, durability=...) opens its store at that level."""
    for level in DURABILITIES:
        with AuditLogger(engine.url, durability=level) as audit:
            assert audit.store.durability == level  # type: ignore[attr-defined]


def test_resolve_durability_truth_table() -> None:
    """The two options resolve to one level; the engine says what 'normal' meant."""
    assert resolve_durability(None) == "result"
    assert resolve_durability("process") == "process"
    assert resolve_durability(None, "normal") == "process"
    assert resolve_durability(None, "normal", normal="result") == "result"
    assert resolve_durability(None, "FULL") == "full"
    assert resolve_durability("full", "full") == "full"
    assert resolve_durability("result", "normal", normal="result") == "result"


# ---------------------------------------------------------------- which commits flush


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("process", [False, False, False, False]),
        ("result", [False, True, True, True]),
        ("full", [True, True, True, True]),
    ],
)
def test_which_appends_wait_for_the_disk(
    flushing_engine: Engine, level: str, expected: list[bool]
) -> None:
    """A start waits only at 'full'; a final (or a batch holding one) waits unless 'process'."""
    store = flushing_engine.open(durability=level)
    store.check()
    with flushing_engine.watch_flushes(store) as commits:
        [start] = store.append([start_draft("s", _decision(1))])
        done = Result(_decision(1).action, ResultStatus.SUCCESS)
        store.append([final_draft("s", _decision(1), done, start_id=start.id)])
        # a final record without a start: a blocked or denied action
        blocked = Result(_decision(2).action, ResultStatus.DENIED, error="blocked")
        store.append([final_draft("s", _decision(2), blocked)])
        # one batch of a start and another action's final: one commit
        store.append(
            [start_draft("s", _decision(3)), final_draft("s", _decision(4), done)],
        )
    store.close()
    assert commits == expected


class _Deny(ApprovalHandler):
    async def request_approval(self, decision: PolicyDecision) -> bool:
        return False


def _policy() -> Policy:
    return Policy.from_dict(
        {
            "version": "1",
            "defaults": {"risk_level": "low", "approval": "auto"},
            "rules": [
                {"name": "no-drop", "match": {"type": "drop"}, "approval": "block"},
                {"name": "ask", "match": {"type": "refund"}, "approval": "approve"},
            ],
        }
    )


@pytest.mark.parametrize(("level", "flushes"), [("process", 0), ("result", 1), ("full", 2)])
async def test_an_action_waits_for_one_flush_at_result(
    flushing_engine: Engine, level: str, flushes: int
) -> None:
    """run_one of an action that runs commits twice; only its final record flushes at 'result'."""
    audit = AuditLogger(flushing_engine.url, durability=level)
    async with Runtime(executor=lambda a: "ok", policy=_policy(), audit_logger=audit) as rt:
        await rt.run_one(Action("read", "crm"))  # the store is open from here on
        with flushing_engine.watch_flushes(audit.store) as commits:
            result = await rt.run_one(Action("read", "crm", {"n": 1}))
    assert result.ok
    assert len(commits) == 2
    assert commits.count(True) == flushes


@pytest.mark.parametrize("type_", ["drop", "refund"])
async def test_blocked_and_denied_actions_flush_at_result(
    flushing_engine: Engine, type_: str
) -> None:
    """A refused action ran nothing, yet its one record is flushed before its Result returns."""
    audit = AuditLogger(flushing_engine.url, durability="result")
    runtime = Runtime(
        executor=lambda a: "ok", policy=_policy(), audit_logger=audit, approval_handler=_Deny()
    )
    async with runtime as rt:
        await rt.run_one(Action("read", "crm"))
        with flushing_engine.watch_flushes(audit.store) as commits:
            result = await rt.run_one(Action(type_, "crm"))
    assert result.status in (ResultStatus.BLOCKED, ResultStatus.DENIED)
    assert commits == [True]


async def test_gathered_actions_share_their_flushes(flushing_engine: Engine) -> None:
    """Fifty actions gathered at 'result' commit in a few batches, with a few flushes in all."""
    audit = AuditLogger(flushing_engine.url, durability="result")
    async with Runtime(executor=lambda a: "ok", policy=_policy(), audit_logger=audit) as rt:
        await rt.run_one(Action("read", "crm"))
        with flushing_engine.watch_flushes(audit.store) as commits:
            results = await asyncio.gather(
                *(rt.run_one(Action("read", "crm", {"n": n})) for n in range(50))
            )
        records = audit.store.count(Filters(view="records"))
    assert all(r.ok for r in results)
    assert records == 102  # the first action's two, and each of the fifty's two
    # every final record is in a commit that flushed; the fifty share a handful
    assert 1 <= commits.count(True) <= 5, commits
    assert len(commits) <= 10, commits


# ---------------------------------------------------------------- what a killed process keeps


@pytest.mark.parametrize("level", DURABILITIES)
def test_a_killed_writer_keeps_every_returned_record(persistent_engine: Engine, level: str) -> None:
    """At every level, each final record whose append returned before kill -9 is stored."""
    child = subprocess.Popen(
        [sys.executable, str(WRITER), persistent_engine.url, level],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    printed = [int(child.stdout.readline()) for _ in range(30)]
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=60)
    printed += [int(line) for line in out.split("\n")[:-1]]
    store = persistent_engine.open(create=False)
    stored = {r.id for r in store.records(Filters(view="records"))}
    report = store.verify()
    store.close()
    assert set(printed) <= stored
    assert report.ok, report.reason
