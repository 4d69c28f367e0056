"""Why a decision was made: the rule's description, the conditions that held on which values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aegis.core.action import Action
from aegis.core.explain import matched_conditions, why
from aegis.core.policy import Policy

POLICY = Policy.from_dict(
    {
        "version": "1",
        "rules": [
            {
                "name": "big_refunds",
                "description": "Refunds over 500 need finance",
                "match": {"type": "refund"},
                "conditions": {"param_gt": {"amount": 500}, "param_in": {"region": ["eu", "us"]}},
                "approval": "approve",
                "risk_level": "high",
            },
            {
                "name": "night_deploys",
                "match": {"type": "deploy"},
                "conditions": {
                    "time_after": "18:00",
                    "time_before": "08:00",
                    "timezone": "Europe/Berlin",
                    "weekdays": [1, 2, 3, 4, 5, 6, 7],
                },
                "approval": "approve",
            },
        ],
    }
)


def test_a_rule_match_names_its_description_and_the_values_that_matched() -> None:
    """A refund of 1299 reads 'amount 1,299 > 500' beside the rule's description."""
    decision = POLICY.evaluate(Action("refund", "billing", {"amount": 1299, "region": "eu"}))
    explained = why(POLICY, decision)
    assert explained.rule == "big_refunds"
    assert explained.description == "Refunds over 500 need finance"
    assert explained.conditions == ("amount 1,299 > 500", "region 'eu' in ['eu', 'us']")
    assert "amount 1,299 > 500" in explained.text()
    assert explained.to_json()["conditions"][0] == "amount 1,299 > 500"


def test_time_windows_show_the_local_time_they_were_checked_at() -> None:
    """A time window names the local time in the rule's timezone and the window."""
    now = datetime(2026, 12, 6, 22, 0, tzinfo=UTC)  # 23:00 in Berlin, a Sunday
    decision = POLICY.evaluate(Action("deploy", "prod"), now=now)
    lines = why(POLICY, decision, now=now).conditions
    assert "time 23:00 (Europe/Berlin) within 18:00-08:00" in lines
    assert "weekday 7 in [1, 2, 3, 4, 5, 6, 7]" in lines


def test_the_defaults_say_no_rule_matched() -> None:
    """An action no rule matches is explained as the policy's defaults, not a blank."""
    explained = why(POLICY, POLICY.evaluate(Action("launch", "rocket")))
    assert "no rule" in explained.text()


@pytest.mark.parametrize(
    ("conditions", "params", "line"),
    [
        ({"param_eq": {"force": True}}, {"force": True}, "force true == true"),
        ({"param_lte": {"n": 2.5}}, {"n": 1.25}, "n 1.25 <= 2.5"),
        ({"param_contains": {"to": "@"}}, {"to": "a@b"}, "to 'a@b' contains '@'"),
        (
            {"param_matches": {"c.tier": "^g"}},
            {"c": {"tier": "gold"}},
            "c.tier 'gold' matches '^g'",
        ),
        ({"param_gt": {"amount": 5}}, {}, "amount (missing) > 5"),
        ({"after": {"type": "read"}}, {}, "after {type: 'read'} in this session"),
    ],
)
def test_each_condition_reads_as_one_line(
    conditions: dict[str, object], params: dict[str, object], line: str
) -> None:
    """Each kind of condition gives one line naming the value it tested."""
    assert matched_conditions(conditions, Action("t", "x", params)) == (line,)


def test_long_values_are_cut() -> None:
    """A long value is cut to a readable width with an ellipsis."""
    (line,) = matched_conditions({"param_ne": {"body": ""}}, Action("t", "x", {"body": "y" * 500}))
    assert len(line) < 100
    assert line.endswith("!= ''")
    assert "…" in line
