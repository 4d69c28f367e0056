"""The SQLite audit trail: records, filters, export, subscribers, lifetime, concurrency."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AuditError
from aegis.runtime.audit import AuditLogger
from aegis.runtime.audit_backend import GENESIS_HASH, RECORD_FIELDS, record_hash

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def decide(
    type: str = "read",
    target: str = "crm",
    params: dict[str, Any] | None = None,
    *,
    risk: RiskLevel = RiskLevel.LOW,
    approval: Approval = Approval.AUTO,
    rule: str = "reads",
    reason: str = "",
    description: str = "",
) -> PolicyDecision:
    """A decision on a new action."""
    action = Action(type, target, params or {}, description)
    return PolicyDecision(action, risk, approval, rule, reason)


def done(
    decision: PolicyDecision, status: ResultStatus = ResultStatus.SUCCESS, **kw: Any
) -> Result:
    """A result for ``decision``'s action."""
    return Result(decision.action, status, **kw)


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLogger]:
    """A fresh audit log in a temporary file."""
    logger = AuditLogger(tmp_path / "audit.db")
    yield logger
    logger.close()


# -- records ------------------------------------------------------------------


def test_a_logged_record_round_trips_every_field(audit: AuditLogger) -> None:
    """get_log returns every field of a record as it was written."""
    decision = decide(
        "refund",
        "billing",
        {"order": 7, "lines": [{"sku": "a", "qty": 2}], "note": "déjà vu"},
        risk=RiskLevel.HIGH,
        approval=Approval.APPROVE,
        rule="refunds",
        reason="over 100",
        description="Refund order 7",
    )
    result = done(
        decision,
        ResultStatus.FAILED,
        data={"partial": [1, 2]},
        error="gateway timeout",
        started_at=T0,
        completed_at=T0 + timedelta(seconds=2),
    )
    record_id = audit.log(
        "sess-1",
        decision,
        result=result,
        human_decision="approved",
        context={"tool_call_id": "call_1", "attempt": 2, "retry": False},
        decided_at="2024-05-01T11:59:59.000000+00:00",
        policy_digest="ab" * 32,
    )
    [record] = audit.get_log()
    assert tuple(record) == RECORD_FIELDS
    kind = record.pop("kind")
    assert kind == "final"
    assert record.pop("start_id") is None
    timestamp = datetime.fromisoformat(record.pop("timestamp"))
    assert timestamp.tzinfo is not None
    assert timestamp.utcoffset() == timedelta(0)
    assert record == {
        "id": record_id,
        "session_id": "sess-1",
        "action_type": "refund",
        "action_target": "billing",
        "action_params": {"order": 7, "lines": [{"sku": "a", "qty": 2}], "note": "déjà vu"},
        "action_desc": "Refund order 7",
        "risk_level": "HIGH",
        "approval": "approve",
        "matched_rule": "refunds",
        "reason": "over 100",
        "human_decision": "approved",
        "result_status": "failed",
        "result_data": {"partial": [1, 2]},
        "result_error": "gateway timeout",
        "started_at": "2024-05-01T12:00:00.000000+00:00",
        "completed_at": "2024-05-01T12:00:02.000000+00:00",
        "context": {"tool_call_id": "call_1", "attempt": 2, "retry": False},
        "decided_at": "2024-05-01T11:59:59.000000+00:00",
        "policy_digest": "ab" * 32,
        "prev_hash": GENESIS_HASH,
        "hash": record["hash"],
    }
    assert (
        record_hash(
            {**record, "kind": kind, "timestamp": timestamp.isoformat(timespec="microseconds")}
        )
        == (record["hash"])
    )


async def test_record_round_trips_like_log(audit: AuditLogger) -> None:
    """The async record() stores the same fields as log() and returns the new id."""
    decision = decide(params={"id": 1})
    result = done(decision, data="ok", started_at=T0, completed_at=T0)
    first = await audit.record("s", decision, result=result, human_decision=None)
    second = audit.log("s", decision, result=result)
    a, b = audit.get_log()
    assert (first, second) == (1, 2)
    assert b["prev_hash"] == a["hash"]
    for key in ("action_params", "result_data", "result_status", "started_at", "completed_at"):
        assert a[key] == b[key]


@pytest.mark.parametrize("status", list(ResultStatus))
def test_every_result_status_is_recorded(audit: AuditLogger, status: ResultStatus) -> None:
    """Blocked, denied and skipped outcomes are recorded like successes."""
    audit.log("s", decide(), result=done(decide(), status))
    assert audit.get_log()[0]["result_status"] == status.value


@pytest.mark.parametrize(
    ("approval", "human"),
    [
        (Approval.BLOCK, None),
        (Approval.APPROVE, "denied"),
        (Approval.APPROVE, "denied: timeout"),
        (Approval.APPROVE, "approved"),
        (Approval.AUTO, None),
    ],
)
def test_a_record_without_result_has_no_status(
    audit: AuditLogger, approval: Approval, human: str | None
) -> None:
    """log() without a result invents no status: nothing is known to have run."""
    audit.log("s", decide(approval=approval), human_decision=human)
    [record] = audit.get_log()
    assert record["result_status"] is None
    assert record["human_decision"] == human
    assert record["result_data"] is None
    assert record["started_at"] is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"c": 1 + 2j}, {"c": repr(1 + 2j)}),
        ({"when": T0}, {"when": T0.isoformat()}),
        ({"tags": {"b", "a"}}, {"tags": ["a", "b"]}),
        ({"blob": b"\x00\xff"}, {"blob": repr(b"\x00\xff")}),
        ({"risk": RiskLevel.HIGH}, {"risk": 3}),
        ({"status": ResultStatus.DENIED}, {"status": "denied"}),
        ({"t": (1, (2, 3))}, {"t": [1, [2, 3]]}),
    ],
)
def test_values_json_cannot_hold_are_stored_safely(
    audit: AuditLogger, data: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Result data that is not JSON is stored readably instead of failing the action."""
    decision = decide(params={"tags": {"b", "a"}, "risk": RiskLevel.HIGH, "t": (1, (2, 3))})
    audit.log("s", decision, result=done(decision, data=data))
    [record] = audit.get_log()
    assert record["action_params"] == {"tags": ["a", "b"], "risk": 3, "t": [1, [2, 3]]}
    assert record["result_data"] == expected
    assert audit.verify().ok


def test_result_data_json_cannot_encode_at_all_is_stored_as_text(audit: AuditLogger) -> None:
    """A cyclic value keeps its other parts; a dict with tuple keys is stored as its repr."""
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    for data in (cyclic, {(1, 2): "pair"}):
        decision = decide()
        audit.log("s", decision, result=done(decision, data=data))
    records = audit.get_log()
    assert [r["result_data"] for r in records] == [
        [1, "<unstorable: refers to itself>"],
        repr({(1, 2): "pair"}),
    ]
    assert audit.verify().ok


def test_a_value_with_a_broken_repr_is_still_recorded(audit: AuditLogger) -> None:
    """Even an object whose repr raises leaves a record behind."""

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    decision = decide()
    audit.log("s", decision, result=done(decision, data={Broken(): 1}))
    assert audit.get_log()[0]["result_data"] == {"<unrepresentable Broken>": 1}


# -- filters ----------------------------------------------------------------


@pytest.fixture
def varied(audit: AuditLogger) -> AuditLogger:
    """Six records across sessions, types, targets, risks and statuses."""
    rows = [
        ("s1", "read", "crm", RiskLevel.LOW, ResultStatus.SUCCESS),
        ("s1", "update", "crm", RiskLevel.MEDIUM, ResultStatus.SUCCESS),
        ("s1", "delete", "crm", RiskLevel.CRITICAL, ResultStatus.BLOCKED),
        ("s2", "read", "erp", RiskLevel.LOW, ResultStatus.FAILED),
        ("s2", "refund", "billing", RiskLevel.HIGH, ResultStatus.DENIED),
        ("s2", "email", "smtp", RiskLevel.MEDIUM, ResultStatus.SKIPPED),
    ]
    for session, type, target, risk, status in rows:
        decision = decide(type, target, risk=risk)
        audit.log(session, decision, result=done(decision, status))
    return audit


@pytest.mark.parametrize(
    ("filters", "ids"),
    [
        ({}, [1, 2, 3, 4, 5, 6]),
        ({"session_id": "s1"}, [1, 2, 3]),
        ({"session_id": "nope"}, []),
        ({"action_type": "read"}, [1, 4]),
        ({"action_target": "crm"}, [1, 2, 3]),
        ({"risk_level": RiskLevel.MEDIUM}, [2, 6]),
        ({"risk_level": "critical"}, [3]),
        ({"risk_level": "HIGH"}, [5]),
        ({"risk_level": 1}, [1, 4]),
        ({"result_status": ResultStatus.DENIED}, [5]),
        ({"result_status": "success"}, [1, 2]),
        ({"result_status": "BLOCKED"}, [3]),
        ({"session_id": "s2", "action_type": "read"}, [4]),
        ({"session_id": "s2", "risk_level": "MEDIUM", "result_status": "skipped"}, [6]),
        ({"action_target": "crm", "result_status": "failed"}, []),
    ],
)
def test_filters_select_matching_records(
    varied: AuditLogger, filters: dict[str, Any], ids: list[int]
) -> None:
    """Each filter keeps exactly the records whose field matches; filters combine with AND."""
    assert [r["id"] for r in varied.get_log(**filters)] == ids
    assert [r["id"] for r in varied.iter_log(**filters)] == ids
    assert varied.count(**filters) == len(ids)


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (T0 - timedelta(days=1), None, 6),
        (T0 + timedelta(days=1), None, 0),
        (None, T0 - timedelta(days=1), 0),
        (None, T0 + timedelta(days=1), 6),
        ("2024-04-30", "2024-05-02T00:00:00+00:00", 6),
        (T0.replace(tzinfo=None) - timedelta(hours=1), None, 6),
        (T0.astimezone(timezone(timedelta(hours=5))), T0 + timedelta(minutes=1), 6),
    ],
)
def test_time_filters_bound_the_timestamp(
    tmp_path: Path, since: Any, until: Any, expected: int
) -> None:
    """since/until accept aware or naive datetimes and ISO strings and bound timestamps."""
    from aegis.core.record import final_draft

    with AuditLogger(tmp_path / "t.db") as audit:
        for n in range(6):
            moment = (T0 + timedelta(seconds=n)).isoformat(timespec="microseconds")
            audit.store.append([final_draft("s", decide(), None, timestamp=moment)])
        assert audit.count(since=since, until=until) == expected
        assert len(audit.get_log(since=since, until=until)) == expected


def test_naive_datetimes_mean_utc(varied: AuditLogger) -> None:
    """A naive datetime filter is read as UTC, not local time."""
    stamp = datetime.fromisoformat(varied.get_log()[2]["timestamp"])
    naive = stamp.replace(tzinfo=None)
    assert varied.count(since=naive, until=naive) == varied.count(since=stamp, until=stamp) == 1


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"risk_level": "extreme"}, "risk_level='extreme' is not a risk level"),
        ({"risk_level": 9}, "risk_level=9"),
        ({"result_status": "exploded"}, "result_status='exploded'"),
        ({"since": "yesterday"}, "since='yesterday' is not an ISO 8601"),
        ({"until": "2024-13-45"}, "until="),
    ],
)
def test_bad_filters_are_refused_with_the_allowed_values(
    varied: AuditLogger, filters: dict[str, Any], message: str
) -> None:
    """A filter value that names nothing raises ValueError saying what is allowed."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        varied.get_log(**filters)
    with pytest.raises(ValueError, match="use"):
        varied.count(**filters)


@pytest.mark.parametrize(
    ("limit", "after_id", "ids"),
    [
        (None, None, [1, 2, 3, 4, 5, 6]),
        (2, None, [1, 2]),
        (None, 4, [5, 6]),
        (2, 2, [3, 4]),
        (10, 5, [6]),
        (0, None, []),
        (3, 6, []),
    ],
)
def test_limit_and_after_id_page_through_records(
    varied: AuditLogger, limit: int | None, after_id: int | None, ids: list[int]
) -> None:
    """limit caps the records returned and after_id starts after a given id."""
    assert [r["id"] for r in varied.get_log(limit=limit, after_id=after_id)] == ids


def test_paging_with_after_id_visits_every_record_once(audit: AuditLogger) -> None:
    """Reading pages with after_id covers a log larger than one internal page."""
    for n in range(2500):
        audit.log("even" if n % 2 == 0 else "odd", decide(params={"n": n}))
    seen: list[int] = []
    last = 0
    while page := audit.get_log("odd", limit=700, after_id=last):
        seen += [r["id"] for r in page]
        last = page[-1]["id"]
    assert seen == list(range(2, 2501, 2))
    assert [r["id"] for r in audit.iter_log("even", limit=1200)] == list(range(1, 2400, 2))


def test_stats_count_by_status_risk_rule_and_type(varied: AuditLogger) -> None:
    """stats() counts records per status, risk level, rule and action type."""
    varied.log("s2", decide("read", rule="other"))
    assert varied.stats() == {
        "result_status": {
            "blocked": 1,
            "denied": 1,
            "failed": 1,
            "none": 1,
            "skipped": 1,
            "success": 2,
        },
        "risk_level": {"CRITICAL": 1, "HIGH": 1, "LOW": 3, "MEDIUM": 2},
        "matched_rule": {"other": 1, "reads": 6},
        "action_type": {"delete": 1, "email": 1, "read": 3, "refund": 1, "update": 1},
    }
    assert varied.stats("s1")["result_status"] == {"blocked": 1, "success": 2}


# -- export -----------------------------------------------------------------


def test_export_writes_utf8_json_lines_with_nested_values(
    audit: AuditLogger, tmp_path: Path
) -> None:
    """export_jsonl writes one UTF-8 JSON object per record, params and data nested."""
    decision = decide(params={"name": "Zoë", "tags": ["日本", "€"]}, description="naïve")
    audit.log("s1", decision, result=done(decision, data={"rows": [{"id": 1}]}))
    audit.log("s2", decide())
    out = tmp_path / "export.jsonl"
    assert audit.export_jsonl(out) == 2
    raw = out.read_bytes()
    assert "Zoë".encode() in raw
    lines = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    assert lines == audit.get_log()
    assert lines[0]["action_params"] == {"name": "Zoë", "tags": ["日本", "€"]}
    assert lines[0]["result_data"] == {"rows": [{"id": 1}]}
    assert all(record_hash(line) == line["hash"] for line in lines)


def test_export_of_one_session(varied: AuditLogger, tmp_path: Path) -> None:
    """export_jsonl with a session id writes only that session's records."""
    out = tmp_path / "s2.jsonl"
    assert varied.export_jsonl(out, "s2") == 3
    sessions = {json.loads(line)["session_id"] for line in out.read_text("utf-8").splitlines()}
    assert sessions == {"s2"}


def test_export_to_a_missing_folder_raises_audit_error(audit: AuditLogger, tmp_path: Path) -> None:
    """Exporting where no file can be written raises AuditError naming the path."""
    with pytest.raises(AuditError, match="cannot export"):
        audit.export_jsonl(tmp_path / "no" / "such" / "dir.jsonl")


# -- start markers ----------------------------------------------------------


async def test_record_start_leaves_a_pending_entry_until_record(audit: AuditLogger) -> None:
    """A started action shows in pending() and as started until its final record."""
    decision = decide("update", params={"id": 3}, approval=Approval.APPROVE)
    token = await audit.record_start("s", decision, human_decision="approved")
    [entry] = audit.pending()
    assert entry["id"] == token
    assert entry["kind"] == "start"
    assert entry["action_type"] == "update"
    assert entry["action_params"] == {"id": 3}
    assert entry["human_decision"] == "approved"
    assert entry["approval"] == "approve"
    assert entry["result_status"] is None
    assert [r["id"] for r in audit.get_log()] == [token]
    assert audit.stats()["result_status"] == {"started": 1}
    final = await audit.record("s", decision, result=done(decision), start_token=token)
    assert audit.pending() == []
    assert [(r["id"], r["start_id"]) for r in audit.get_log()] == [(final, token)]
    assert audit.count() == 1
    assert audit.count(view="records") == 2
    assert audit.stats()["result_status"] == {"success": 1}


async def test_start_records_are_in_the_chain(audit: AuditLogger) -> None:
    """A start record is chained like any other: it verifies and counts in the records view."""
    await audit.record_start("s", decide())
    audit.log("s", decide())
    assert audit.count() == 2
    assert audit.count(view="records") == 2
    assert len(audit.pending()) == 1
    report = audit.verify()
    assert report.ok
    assert report.unfinished == (1,)


# -- subscribers ------------------------------------------------------------


async def test_subscribers_receive_each_committed_record(audit: AuditLogger) -> None:
    """A subscriber gets the record dict of log() and record() after they commit."""
    received: list[dict[str, Any]] = []

    def on_record(record: dict[str, Any]) -> None:
        received.append(record)
        assert audit.count() == record["id"]  # already committed and readable

    audit.subscribe(on_record)
    audit.log("s", decide(params={"a": 1}))
    await audit.record("s", decide(), result=done(decide(), data=[1]))
    assert received == audit.get_log()
    audit.unsubscribe(on_record)
    audit.log("s", decide())
    assert len(received) == 2


def test_a_raising_subscriber_is_logged_and_ignored(
    audit: AuditLogger, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber's exception never reaches the writer and is logged on aegis.audit."""
    seen: list[int] = []

    def broken(record: dict[str, Any]) -> None:
        raise RuntimeError("listener down")

    audit.subscribe(broken)
    audit.subscribe(lambda record: seen.append(record["id"]))
    with caplog.at_level(logging.ERROR, logger="aegis.audit"):
        record_id = audit.log("s", decide())
    assert seen == [record_id]
    assert audit.count() == 1
    [log] = caplog.records
    assert log.name == "aegis.audit"
    assert log.exc_info is not None
    assert str(log.exc_info[1]) == "listener down"


def test_unsubscribing_an_unknown_callback_does_nothing(audit: AuditLogger) -> None:
    """unsubscribe() of a callback never subscribed is not an error."""
    audit.unsubscribe(print)
    audit.log("s", decide())
    assert audit.count() == 1


def test_a_subscriber_must_be_callable(audit: AuditLogger) -> None:
    """subscribe() refuses something that cannot be called."""
    with pytest.raises(TypeError, match="callable"):
        audit.subscribe("not a function")  # type: ignore[arg-type]


# -- lifetime and errors ----------------------------------------------------


def test_the_file_is_created_only_when_used(tmp_path: Path) -> None:
    """Constructing an AuditLogger writes nothing; the first record creates the file."""
    path = tmp_path / "lazy.db"
    audit = AuditLogger(path)
    assert not path.exists()
    audit.log("s", decide())
    audit.close()
    assert path.exists()
    assert audit.db_path == str(path)


def test_close_is_idempotent_and_a_closed_logger_refuses_use(audit: AuditLogger) -> None:
    """close() twice is fine; any later read or write raises AuditError."""
    audit.log("s", decide())
    audit.close()
    audit.close()
    for use in (lambda: audit.log("s", decide()), audit.get_log, audit.count, audit.verify):
        with pytest.raises(AuditError, match="closed; create a new AuditLogger"):
            use()


async def test_a_closed_logger_refuses_async_writes(audit: AuditLogger) -> None:
    """record() and record_start() on a closed logger raise AuditError."""
    audit.close()
    with pytest.raises(AuditError, match="closed"):
        await audit.record("s", decide(), result=done(decide()))
    with pytest.raises(AuditError, match="closed"):
        await audit.record_start("s", decide())


async def test_close_commits_queued_records(audit: AuditLogger, tmp_path: Path) -> None:
    """Records queued for the next group commit are written by close()."""
    task = asyncio.ensure_future(audit.record("s", decide(), result=done(decide())))
    await asyncio.sleep(0)  # the task has queued its record, the flush has not run
    audit.close()
    assert await task == 1
    with AuditLogger(tmp_path / "audit.db") as reopened:
        assert reopened.count() == 1


def test_records_survive_reopening_and_the_chain_continues(tmp_path: Path) -> None:
    """A second logger on the same file appends to the same chain."""
    path = tmp_path / "audit.db"
    first, second = AuditLogger(path), AuditLogger(path)
    for n in range(10):
        (first if n % 2 else second).log("s", decide(params={"n": n}))
    first.close()
    second.close()
    with AuditLogger(path) as audit:
        assert [r["action_params"]["n"] for r in audit.get_log()] == list(range(10))
        assert audit.verify().ok


def test_a_missing_file_is_an_error_when_create_is_false(tmp_path: Path) -> None:
    """With create=False a missing file raises AuditError instead of being created."""
    path = tmp_path / "absent.db"
    with pytest.raises(AuditError, match=r"no audit database at .*absent\.db"):
        AuditLogger(path, create=False).get_log()
    assert not path.exists()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    """Opening a file that is not SQLite raises AuditError naming the file."""
    path = tmp_path / "notes.txt"
    path.write_text("just some notes, long enough to fill a sqlite header......" * 20)
    with pytest.raises(AuditError, match="not an Aegis audit database") as caught:
        AuditLogger(path).count()
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_another_sqlite_database_is_refused(tmp_path: Path) -> None:
    """A SQLite file of another application is not taken over."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.close()
    with pytest.raises(AuditError, match="not an Aegis audit database"):
        AuditLogger(path).log("s", decide())
    with sqlite3.connect(path) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master").fetchall()
    conn.close()
    assert tables == [("customers",)]


def test_a_database_from_a_newer_aegis_is_refused(tmp_path: Path) -> None:
    """A schema version above ours raises AuditError asking for an upgrade."""
    path = tmp_path / "future.db"
    with AuditLogger(path) as audit:
        audit.log("s", decide())
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(AuditError, match="newer Aegis"):
        AuditLogger(path).count()


def test_an_unwritable_location_is_an_audit_error(tmp_path: Path) -> None:
    """A path in a folder that does not exist raises AuditError with a hint."""
    with pytest.raises(AuditError, match="folder exists"):
        AuditLogger(tmp_path / "missing" / "audit.db").log("s", decide())


def test_an_in_memory_log_works(tmp_path: Path) -> None:
    """':memory:' keeps a working, verifiable log for tests."""
    with AuditLogger(":memory:") as audit:
        for n in range(1500):
            audit.log("s", decide(params={"n": n}))
        assert audit.count() == 1500
        assert len(list(audit.iter_log())) == 1500
        assert audit.verify().checked == 1500


def test_an_empty_log_verifies_and_has_the_genesis_head(audit: AuditLogger) -> None:
    """An empty log verifies with zero records and head '0:<64 zeros>'."""
    assert str(audit.head()) == f"0:{GENESIS_HASH}"
    report = audit.verify(audit.head())
    assert (report.ok, report.checked, report.first_bad_id) == (True, 0, None)
    assert bool(report)


# -- concurrency ------------------------------------------------------------


async def test_concurrent_records_get_distinct_ids_and_a_valid_chain(audit: AuditLogger) -> None:
    """500 record() calls gathered at once all commit, with distinct ids, in one chain."""
    decisions = [decide(params={"n": n}) for n in range(500)]
    ids = await asyncio.gather(*(audit.record("s", d, result=done(d)) for d in decisions))
    assert sorted(ids) == list(range(1, 501))
    assert audit.count() == 500
    report = audit.verify()
    assert report.ok, report.reason
    assert report.checked == 500


async def test_concurrent_actions_with_start_markers_clear_them_all(audit: AuditLogger) -> None:
    """Gathered record_start + record pairs leave every record and no pending entry."""

    async def act(n: int) -> int:
        decision = decide(params={"n": n})
        token = await audit.record_start("s", decision)
        await asyncio.sleep(0)
        return await audit.record("s", decision, result=done(decision), start_token=token)

    ids = await asyncio.gather(*(act(n) for n in range(300)))
    assert len(set(ids)) == 300
    assert audit.pending() == []
    by_id = {r["id"]: r["action_params"]["n"] for r in audit.get_log()}
    assert [by_id[i] for i in ids] == list(range(300))
    assert audit.verify().ok


async def test_a_failed_group_commit_fails_every_waiter(tmp_path: Path) -> None:
    """When a batch cannot be written, each waiting caller gets the AuditError."""
    path = tmp_path / "audit.db"
    audit = AuditLogger(path, busy_timeout=0.05)
    audit.log("s", decide())
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock like a stuck process
    try:
        results = await asyncio.gather(
            *(audit.record("s", decide(), result=done(decide())) for _ in range(5)),
            return_exceptions=True,
        )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(isinstance(r, AuditError) for r in results)
    assert "locked" in str(results[0])
    assert await audit.record("s", decide(), result=done(decide())) == 2
    audit.close()


def test_log_from_many_threads_keeps_one_valid_chain(audit: AuditLogger) -> None:
    """log() called from several threads at once loses nothing and stays chained."""

    def write(session: str) -> None:
        for n in range(100):
            audit.log(session, decide(params={"n": n}))

    threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert audit.count() == 400
    assert all(audit.count(f"t{i}") == 100 for i in range(4))
    assert audit.verify().ok


def test_two_event_loops_in_two_threads_share_one_logger(audit: AuditLogger) -> None:
    """record() from event loops in different threads writes every record once."""

    def run_loop(session: str) -> None:
        async def main() -> None:
            await asyncio.gather(
                *(audit.record(session, decide(), result=done(decide())) for _ in range(100))
            )

        asyncio.run(main())

    threads = [threading.Thread(target=run_loop, args=(f"loop{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert audit.count("loop0") == audit.count("loop1") == 100
    assert audit.verify().ok


async def test_a_forked_child_that_closes_the_logger_never_writes_its_parents_waiting_records(
    tmp_path: Path,
) -> None:
    """Records waiting in the parent's batch at a fork are written once, by the parent."""
    audit = AuditLogger(tmp_path / "audit.db")
    audit.check()
    waiting = [
        asyncio.ensure_future(audit.record("s", decide(), result=done(decide()))) for _ in range(3)
    ]
    await asyncio.sleep(0)  # the three wait for the end of this loop iteration
    pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child reports through its exit status
        try:
            audit.close()  # commits what this process queued: nothing
            os._exit(0)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ids = await asyncio.gather(*waiting)
    assert audit.count() == 3
    assert sorted(r["id"] for r in audit.get_log()) == sorted(ids)
    assert audit.verify().ok
    audit.close()


# -- streaming --------------------------------------------------------------


async def test_verify_and_iteration_stream_in_constant_memory(audit: AuditLogger) -> None:
    """verify() and iter_log() over 20,000 records hold only a page in memory."""
    decision = decide(params={"payload": "x" * 200})
    result = done(decision, data={"rows": list(range(20))})
    for _ in range(20):
        await asyncio.gather(*(audit.record("s", decision, result=result) for _ in range(1000)))
    tracemalloc.start()
    try:
        assert audit.verify().checked == 20_000
        assert sum(1 for _ in audit.iter_log()) == 20_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Materialising 20,000 records would take well over 20 MB.
    assert peak < 5_000_000


# -- a model ----------------------------------------------------------------

_entries = st.lists(
    st.tuples(
        st.sampled_from(["s1", "s2", "s3"]),
        st.sampled_from(["read", "write", "delete"]),
        st.sampled_from(list(RiskLevel)),
        st.sampled_from(list(ResultStatus)),
    ),
    max_size=25,
)
_queries = st.fixed_dictionaries(
    {},
    optional={
        "session_id": st.sampled_from(["s1", "s2", "s3"]),
        "action_type": st.sampled_from(["read", "write", "delete"]),
        "risk_level": st.sampled_from(list(RiskLevel)),
        "result_status": st.sampled_from(list(ResultStatus)),
        "limit": st.integers(0, 30),
        "after_id": st.integers(0, 30),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=_entries, query=_queries)
def test_queries_agree_with_a_list_model(
    entries: list[tuple[str, str, RiskLevel, ResultStatus]], query: dict[str, Any]
) -> None:
    """get_log and count return what filtering a plain list of the same records gives."""
    with AuditLogger(":memory:") as audit:
        for session, type, risk, status in entries:
            decision = decide(type, risk=risk)
            audit.log(session, decision, result=done(decision, status))
        matching = [
            n
            for n, (session, type, risk, status) in enumerate(entries, 1)
            if query.get("session_id", session) == session
            and query.get("action_type", type) == type
            and query.get("risk_level", risk) == risk
            and query.get("result_status", status) == status
        ]
        filters = {k: v for k, v in query.items() if k not in ("limit", "after_id")}
        assert audit.count(**filters) == len(matching)
        page = [n for n in matching if n > query.get("after_id", 0)]
        if "limit" in query:
            page = page[: query["limit"]]
        assert [r["id"] for r in audit.get_log(**query)] == page
        assert audit.verify().ok
