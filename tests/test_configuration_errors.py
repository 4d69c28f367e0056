"""Bad configuration is a ConfigurationError wherever it is given, with a message naming it.

ConfigurationError is an AegisError, and a ValueError and a TypeError both,
so callers that caught the builtin exception before keep working.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aegis import (
    Action,
    AegisError,
    AuditLogger,
    ConfigurationError,
    Head,
    Policy,
    PolicyError,
    ResultStatus,
    Runtime,
)
from aegis.core.approval_request import parse_approval_ttl, parse_duration


def test_the_error_tree() -> None:
    """One class for every kind of bad setting; the command line exits 2 for it."""
    assert issubclass(ConfigurationError, AegisError)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationError, TypeError)
    assert ConfigurationError.exit_code == 2
    # a policy's own mistakes stay PolicyErrors, which are no ConfigurationErrors
    assert not issubclass(PolicyError, ConfigurationError)


@pytest.fixture
def log(tmp_path: Path) -> Any:
    """An audit trail in a SQLite file with one action a Runtime ran."""
    policy = Policy.from_dict(
        {
            "rules": [
                {
                    "name": "reads",
                    "match": {"type": "read"},
                    "approval": "auto",
                    "risk_level": "low",
                }
            ]
        }
    )

    async def run() -> None:
        runtime = Runtime(
            executor=lambda action: "ok",
            policy=policy,
            audit_logger=AuditLogger(tmp_path / "audit.db"),
        )
        async with runtime:
            [result] = await runtime.execute(runtime.plan([Action("read", "crm")]))
            assert result.status is ResultStatus.SUCCESS

    asyncio.run(run())
    with AuditLogger(tmp_path / "audit.db") as audit:
        yield audit


@pytest.mark.parametrize(
    ("filters", "names"),
    [
        ({"risk_level": "severe"}, "risk_level"),
        ({"risk_level": 99}, "risk_level"),
        ({"result_status": "done"}, "result_status"),
        ({"since": "yesterday"}, "since"),
        ({"until": 1700000000}, "until"),
        ({"view": "all"}, "view"),
        ({"colour": "red"}, "colour"),
    ],
    ids=["risk-name", "risk-number", "status", "since-text", "until-type", "view", "unknown"],
)
def test_bad_filters_are_configuration_errors(
    log: Any, filters: dict[str, Any], names: str
) -> None:
    """get_log, iter_log and count refuse a filter no record could match, naming it."""
    for read in (log.get_log, log.count, lambda **f: next(log.iter_log(**f))):
        with pytest.raises(ConfigurationError, match=names):
            read(**filters)


def test_good_filters_still_read(log: Any) -> None:
    """The normalised forms keep working: a lower-case risk, an aware time."""
    assert log.count(risk_level="low", since=datetime(2000, 1, 1, tzinfo=UTC)) == 1


@pytest.mark.parametrize(
    "head", ["garbage", "12:abc", "x:" + "0" * 64, 42], ids=["word", "short", "count", "type"]
)
def test_a_malformed_expected_head_is_a_configuration_error(log: Any, head: Any) -> None:
    """verify() and Head.parse refuse what no head looks like, before reading anything."""
    with pytest.raises(ConfigurationError, match="head"):
        log.verify(head)
    with pytest.raises(ConfigurationError, match="head"):
        Head.parse(head)
    assert log.verify(str(log.head())).ok


@pytest.mark.parametrize(
    ("value", "says"),
    [("soon", "not a duration"), (0, "positive"), (True, "number of seconds"), ("31d", "30 days")],
)
def test_bad_durations_are_configuration_errors(value: Any, says: str) -> None:
    """A duration setting (a TTL, a token's lifetime) that cannot be used names the value."""
    with pytest.raises(ConfigurationError, match=says):
        parse_approval_ttl(value)
    if says != "30 days":
        with pytest.raises(ConfigurationError, match=says):
            parse_duration(value)


def test_a_policy_ttl_stays_a_policy_error() -> None:
    """In a policy, a bad approval_ttl is the policy's error, naming the field."""
    bad = {
        "rules": [
            {"name": "r", "match": {"type": "x"}, "approval": "approve", "approval_ttl": "soon"}
        ]
    }
    with pytest.raises(PolicyError, match="approval_ttl"):
        Policy.from_dict(bad)
