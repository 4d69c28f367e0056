"""The logging audit backend: one JSON line per action, levels by risk, a bounded copy."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AuditError, ConfigurationError
from aegis.runtime.audit_backend import RECORD_FIELDS
from aegis.runtime.audit_logging import LoggingAuditLogger


def decide(
    type: str = "read", risk: RiskLevel = RiskLevel.LOW, params: dict[str, Any] | None = None
) -> PolicyDecision:
    """A decision on a new action."""
    return PolicyDecision(Action(type, "crm", params or {}), risk, Approval.AUTO, "rule")


def done(decision: PolicyDecision, status: ResultStatus = ResultStatus.SUCCESS) -> Result:
    """A result for ``decision``'s action."""
    return Result(decision.action, status, data={"ok": True})


@pytest.mark.parametrize(
    ("risk", "level"),
    [
        (RiskLevel.LOW, logging.DEBUG),
        (RiskLevel.MEDIUM, logging.INFO),
        (RiskLevel.HIGH, logging.WARNING),
        (RiskLevel.CRITICAL, logging.ERROR),
    ],
)
async def test_each_record_is_one_json_line_at_its_risk_level(
    caplog: pytest.LogCaptureFixture, risk: RiskLevel, level: int
) -> None:
    """A record is logged once on aegis.audit as JSON, at the level of its risk."""
    audit = LoggingAuditLogger()
    decision = decide(risk=risk, params={"id": 1})
    with caplog.at_level(logging.DEBUG, logger="aegis.audit"):
        record_id = await audit.record("s", decision, result=done(decision))
    [line] = [r for r in caplog.records if r.getMessage().startswith("{")]
    assert line.name == "aegis.audit"
    assert line.levelno == level
    logged = json.loads(line.getMessage())
    assert logged == audit.get_log()[0]
    assert logged["id"] == record_id
    assert logged["action_params"] == {"id": 1}
    assert logged["risk_level"] == risk.name


def test_records_have_the_sqlite_fields_without_the_chain() -> None:
    """A kept record has every record field except prev_hash and hash."""
    audit = LoggingAuditLogger()
    audit.log("s", decide(), human_decision="approved")
    [record] = audit.get_log()
    assert tuple(record) == RECORD_FIELDS[:-2]
    assert record["human_decision"] == "approved"
    assert record["result_status"] is None


def test_a_given_logger_is_used(caplog: pytest.LogCaptureFixture) -> None:
    """Records go to the logger passed in, not to aegis.audit."""
    mine = logging.getLogger("myapp.audit")
    audit = LoggingAuditLogger(mine)
    with caplog.at_level(logging.DEBUG, logger="myapp.audit"):
        audit.log("s", decide(risk=RiskLevel.HIGH))
    assert [r.name for r in caplog.records] == ["myapp.audit"]
    assert caplog.records[0].aegis_audit["risk_level"] == "HIGH"  # type: ignore[attr-defined]


def test_a_record_below_the_logger_level_is_still_kept(caplog: pytest.LogCaptureFixture) -> None:
    """A LOW record filtered out by the logger level is still kept for get_log."""
    with caplog.at_level(logging.WARNING, logger="aegis.audit"):
        LoggingAuditLogger().log("s", decide())
        audit = LoggingAuditLogger()
        audit.log("s", decide())
    assert caplog.records == []
    assert audit.count() == 1


async def test_record_start_logs_a_debug_line_and_returns_no_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """record_start logs 'started ...' at DEBUG and returns None."""
    audit = LoggingAuditLogger()
    with caplog.at_level(logging.DEBUG, logger="aegis.audit"):
        token = await audit.record_start("s", decide("delete"))
    assert token is None
    [line] = caplog.records
    assert line.levelno == logging.DEBUG
    assert line.getMessage().startswith("started delete -> crm")
    assert audit.count() == 0


def test_only_the_latest_records_are_kept() -> None:
    """max_records bounds the in-memory copy; ids keep counting."""
    audit = LoggingAuditLogger(max_records=3)
    for _ in range(5):
        audit.log("s", decide())
    assert [r["id"] for r in audit.get_log()] == [3, 4, 5]


def test_a_negative_max_records_is_refused() -> None:
    """max_records below zero raises ValueError."""
    with pytest.raises(ConfigurationError, match="max_records"):
        LoggingAuditLogger(max_records=-1)


@pytest.mark.parametrize(
    ("filters", "ids"),
    [
        ({}, [1, 2, 3, 4]),
        ({"session_id": "a"}, [1, 2]),
        ({"action_type": "write"}, [2, 4]),
        ({"risk_level": "high"}, [2]),
        ({"risk_level": RiskLevel.LOW}, [1, 3]),
        ({"result_status": "failed"}, [3]),
        ({"session_id": "b", "action_type": "write"}, [4]),
        ({"since": "2000-01-01"}, [1, 2, 3, 4]),
        ({"until": "2000-01-01"}, []),
        ({"limit": 2}, [1, 2]),
        ({"after_id": 2}, [3, 4]),
        ({"action_type": "write", "limit": 1, "after_id": 2}, [4]),
        ({"limit": 0}, []),
    ],
)
def test_filters_limit_and_after_id(filters: dict[str, Any], ids: list[int]) -> None:
    """get_log filters the kept records like the SQLite backend does."""
    audit = LoggingAuditLogger()
    for session, type, risk, status in [
        ("a", "read", RiskLevel.LOW, ResultStatus.SUCCESS),
        ("a", "write", RiskLevel.HIGH, ResultStatus.SUCCESS),
        ("b", "read", RiskLevel.LOW, ResultStatus.FAILED),
        ("b", "write", RiskLevel.MEDIUM, ResultStatus.SUCCESS),
    ]:
        decision = decide(type, risk)
        audit.log(session, decision, result=done(decision, status))
    assert [r["id"] for r in audit.get_log(**filters)] == ids
    counted = {k: v for k, v in filters.items() if k not in ("limit", "after_id")}
    assert audit.count(**counted) == len(audit.get_log(**counted))


def test_export_writes_the_kept_records(tmp_path: Path) -> None:
    """export_jsonl writes the kept records as UTF-8 JSON lines with nested params."""
    audit = LoggingAuditLogger()
    audit.log("s1", decide(params={"name": "Zoë"}))
    audit.log("s2", decide())
    out = tmp_path / "out.jsonl"
    assert audit.export_jsonl(out, "s1") == 1
    [line] = out.read_text("utf-8").splitlines()
    assert json.loads(line)["action_params"] == {"name": "Zoë"}


def test_values_json_cannot_hold_are_kept_as_repr() -> None:
    """Non-JSON result data is stored as its repr, like the SQLite backend."""
    audit = LoggingAuditLogger()
    decision = decide()
    audit.log(
        "s", decision, result=Result(decision.action, ResultStatus.SUCCESS, data={"c": 1 + 2j})
    )
    assert audit.get_log()[0]["result_data"] == {"c": repr(1 + 2j)}


def test_subscribers_and_a_raising_one(caplog: pytest.LogCaptureFixture) -> None:
    """Subscribers get each record; one that raises is logged, not raised."""
    audit = LoggingAuditLogger()
    got: list[dict[str, Any]] = []

    def broken(record: dict[str, Any]) -> None:
        raise RuntimeError("down")

    audit.subscribe(broken)
    audit.subscribe(got.append)
    with caplog.at_level(logging.ERROR, logger="aegis.audit"):
        audit.log("s", decide())
    assert [r["id"] for r in got] == [1]
    assert "audit subscriber" in caplog.text
    audit.unsubscribe(broken)
    audit.log("s", decide())
    assert len(got) == 2


def test_close_is_idempotent_and_stops_writes() -> None:
    """close() twice is fine; writing afterwards raises AuditError, reading still works."""
    audit = LoggingAuditLogger()
    audit.log("s", decide())
    audit.close()
    audit.close()
    with pytest.raises(AuditError, match="closed"):
        audit.log("s", decide())
    assert audit.count() == 1
