"""Shared audit pieces: the backend protocol, JSON, hashing, times and filters."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.core.chain import row_hash
from aegis.core.record import from_dict
from aegis.core.result import ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AuditError
from aegis.runtime.audit import AuditLogger
from aegis.runtime.audit_backend import (
    GENESIS_HASH,
    AuditBackend,
    Filters,
    SubscriberList,
    dump_json,
    isoformat,
    record_hash,
    write_jsonl,
)
from aegis.runtime.audit_logging import LoggingAuditLogger


@pytest.mark.parametrize("backend", [AuditLogger(":memory:"), LoggingAuditLogger()])
def test_both_backends_implement_the_protocol(backend: object) -> None:
    """AuditLogger and LoggingAuditLogger satisfy the runtime-checkable AuditBackend."""
    assert isinstance(backend, AuditBackend)


def test_an_unrelated_object_is_not_a_backend() -> None:
    """An object without the audit methods is not an AuditBackend."""
    assert not isinstance(object(), AuditBackend)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_text = st.text()
_optional = st.none() | st.text()


@settings(max_examples=250)
@given(
    params=st.dictionaries(st.text(), _json, max_size=4),
    data=_json,
    texts=st.lists(_text, min_size=11, max_size=11),
    optionals=st.lists(_optional, min_size=5, max_size=5),
    record_id=st.integers(1, 2**62),
)
def test_the_fast_hash_equals_the_documented_hash(
    params: dict[str, Any],
    data: Any,
    texts: list[str],
    optionals: list[str | None],
    record_id: int,
) -> None:
    """Hashing with pre-serialised JSON fields gives the same digest as record_hash."""
    record = {
        "id": record_id,
        "session_id": texts[0],
        "timestamp": texts[1],
        "action_type": texts[2],
        "action_target": texts[3],
        "action_params": params,
        "action_desc": texts[4],
        "risk_level": texts[5],
        "approval": texts[6],
        "matched_rule": texts[7],
        "reason": texts[8],
        "human_decision": optionals[0],
        "result_status": optionals[1],
        "result_data": data,
        "result_error": optionals[2],
        "started_at": optionals[3],
        "completed_at": optionals[4],
        "prev_hash": texts[9],
        "hash": texts[10],
    }
    record.update(
        context={"from_params": dump_json(params)} if params else None,
        decided_at=optionals[3],
        policy_digest=optionals[4],
        kind=optionals[0],
        start_id=record_id - 1 if record_id % 2 else None,
    )
    assert row_hash(from_dict(record)) == record_hash(record)


def test_record_hash_ignores_only_the_hash_field() -> None:
    """Changing any field but ``hash`` changes the digest."""
    record = {"id": 1, "action_params": {"a": 1}, "hash": "x"}
    base = record_hash(record)
    assert record_hash({**record, "hash": "y"}) == base
    assert record_hash({**record, "id": 2}) != base
    assert record_hash({**record, "action_params": {"a": 2}}) != base


@settings(max_examples=200)
@given(value=_json)
def test_dump_json_is_canonical_json(value: Any) -> None:
    """dump_json writes sorted, compact JSON that reads back to the same value."""
    text = dump_json(value)
    assert json.loads(text) == value
    assert text == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": 2}, '{"a":2,"b":1}'),
        ({"s": frozenset({3, 1})}, '{"s":[1,3]}'),
        (datetime(2024, 1, 2, tzinfo=UTC), '"2024-01-02T00:00:00+00:00"'),
        (RiskLevel.CRITICAL, "4"),
        ({"x": Path("a")}, json.dumps({"x": repr(Path("a"))}, separators=(",", ":"))),
        ({"é": "ü"}, '{"é":"ü"}'),
    ],
)
def test_dump_json_keeps_what_it_can(value: Any, expected: str) -> None:
    """Non-JSON values become their nearest JSON form, never an exception."""
    assert dump_json(value) == expected


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05.000000+00:00"),
        (datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "2024-01-02T03:04:05.000006+00:00"),
        (
            datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            "2024-01-02T03:04:05.000000+00:00",
        ),
    ],
)
def test_isoformat_is_fixed_width_utc(moment: datetime, expected: str) -> None:
    """Times are stored in UTC with microseconds, naive ones read as UTC."""
    assert isoformat(moment) == expected


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({"risk_level": RiskLevel.HIGH}, "risk_level", "HIGH"),
        ({"risk_level": " medium "}, "risk_level", "MEDIUM"),
        ({"risk_level": 4}, "risk_level", "CRITICAL"),
        ({"result_status": ResultStatus.SKIPPED}, "result_status", "skipped"),
        ({"result_status": "Denied"}, "result_status", "denied"),
        ({"since": "2024-05-01"}, "since", "2024-05-01T00:00:00.000000+00:00"),
        (
            {"until": datetime(2024, 5, 1, 2, tzinfo=timezone(timedelta(hours=2)))},
            "until",
            "2024-05-01T00:00:00.000000+00:00",
        ),
    ],
)
def test_filters_normalise_to_stored_values(
    kwargs: dict[str, Any], field: str, expected: str
) -> None:
    """Filter arguments are turned into the exact values records store."""
    assert getattr(Filters.of(**kwargs), field) == expected


def test_filters_reject_a_non_time() -> None:
    """A since/until that is neither a datetime nor a string raises TypeError."""
    with pytest.raises(TypeError, match="since must be a datetime"):
        Filters.of(since=12345)  # type: ignore[arg-type]


def test_a_failing_subscriber_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    """Every subscriber is called even when an earlier one raises."""
    subscribers = SubscriberList()
    got: list[int] = []

    def broken(record: dict[str, Any]) -> None:
        raise ValueError("bad")

    subscribers.add(broken)
    subscribers.add(lambda record: got.append(record["id"]))
    with caplog.at_level(logging.ERROR, logger="aegis.audit"):
        subscribers.notify({"id": 9})
    assert got == [9]
    assert "record 9" in caplog.text


def test_a_subscriber_may_unsubscribe_itself() -> None:
    """Removing a subscriber while notifying does not skip or repeat the others."""
    subscribers = SubscriberList()
    calls: list[str] = []

    def once(record: dict[str, Any]) -> None:
        calls.append("once")
        subscribers.remove(once)

    subscribers.add(once)
    subscribers.add(lambda record: calls.append("always"))
    subscribers.notify({"id": 1})
    subscribers.notify({"id": 2})
    assert calls == ["once", "always", "always"]


def test_write_jsonl_reports_an_unwritable_path(tmp_path: Path) -> None:
    """write_jsonl turns an OS error into an AuditError that names the path."""
    target = tmp_path / "missing" / "out.jsonl"
    with pytest.raises(AuditError, match=r"out\.jsonl"):
        write_jsonl(target, [{"id": 1}])


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ({"x": float("nan")}, {"x": "nan"}),
        ({"x": [1.5, float("inf")]}, {"x": [1.5, "inf"]}),
        (float("-inf"), "-inf"),
    ],
)
def test_non_finite_floats_are_stored_as_strings(value: Any, stored: Any) -> None:
    """NaN and infinities, which JSON cannot hold, become strings; the rest is kept."""
    text = dump_json(value)
    assert json.loads(text) == stored
    assert "NaN" not in text
    assert "Infinity" not in text


def test_moving_text_between_the_json_columns_changes_the_hash() -> None:
    """The hash pins where params end, so text shifted into result_data is caught."""
    row = [1, "final", "s", "t", "read", "crm", '{"amount":1,"to":"alice"}', "", "LOW", "auto"]
    row += ["r", "", None, "success", "null", None, None, None, None, None, None, None]
    row += [GENESIS_HASH]
    shifted = list(row)
    shifted[6], shifted[14] = '{"amount":1', '"to":"alice"},null'
    assert row_hash(row) != row_hash(shifted)
