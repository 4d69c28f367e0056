"""Limits, budgets and flow conditions as policy syntax: parsing, errors, evaluation, digest."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from aegis.core.action import Action
from aegis.core.conditions import Unevaluable
from aegis.core.decision import Approval
from aegis.core.limits import (
    BUDGET_SCALE,
    FlowEvent,
    RecordedHistory,
    Subject,
    budget_units,
    flow_event,
    format_window,
    parse_window,
)
from aegis.core.policy import Policy, PolicyRule
from aegis.core.risk import RiskLevel
from aegis.errors import PolicyError

POLICY = """\
version: "1"
defaults: {approval: block}
rules:
  - name: email_rate
    match: {type: send_email}
    limit: {max: 20, per: 1h, key: [agent]}
    on_exceed: {approval: block, risk_level: high}
    risk_level: low
    approval: auto
  - name: refund_budget
    match: {type: refund}
    budget: {sum: amount, max: 2000, per: 1d, key: [params.customer_id]}
    on_exceed: {approval: approve, risk_level: critical}
    risk_level: medium
    approval: auto
  - name: exfiltration
    match: {type: "send*", target: "external*"}
    conditions:
      after: {type: "read*", target: crm, within: session}
    risk_level: critical
    approval: approve
  - name: first_contact
    match: {type: "send*"}
    conditions:
      not_after: {type: send_welcome, within: 1d, params: {param_eq: {lang: en}}}
    approval: approve
  - name: sends
    match: {type: "send*"}
    approval: auto
"""

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def load(tmp_path: Path, text: str = POLICY) -> Policy:
    """Write ``text`` to a file and load it."""
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return Policy.from_yaml(path)


def rule_error(tmp_path: Path, rule: str) -> PolicyError:
    """The error of loading a policy whose only rule is ``rule`` (YAML lines)."""
    text = "rules:\n  - name: r\n    match: {type: x}\n" + rule
    with pytest.raises(PolicyError) as info:
        load(tmp_path, text)
    return info.value


def test_the_issue_policy_loads_and_compiles_its_stateful_rules(tmp_path: Path) -> None:
    """The three rules of the issue load; limits are indexed by rule and flows listed."""
    policy = load(tmp_path)
    assert policy.limits is not None
    assert set(policy.limits.by_rule) == {"email_rate", "refund_budget"}
    meter = policy.limits.by_rule["email_rate"].meters[0]
    assert (meter.kind, meter.maximum, meter.window, meter.key) == ("limit", 20, 3600, ("agent",))
    budget = policy.limits.by_rule["refund_budget"]
    assert budget.meters[0].sum_path == "amount"
    assert budget.on_exceed.approval is Approval.APPROVE
    assert budget.on_exceed.risk_level is RiskLevel.CRITICAL
    assert [spec.name for spec in policy.limits.flow_specs] == ["after", "not_after"]


def test_a_policy_without_stateful_rules_has_no_limits() -> None:
    """limits is None when no rule counts or remembers, so the runtime skips its step."""
    policy = Policy([PolicyRule("read", approval="auto", conditions={"param_gt": {"n": 1}})])
    assert policy.limits is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), (" 2 h ", 7200), ("366d", 31622400)],
)
def test_windows_parse_to_seconds(text: str, seconds: int) -> None:
    """Each window unit gives its number of seconds."""
    assert parse_window(text) == seconds


@pytest.mark.parametrize("bad", ["0s", "1w", "1.5h", "h", "", 60, None, "367d", "-1m"])
def test_bad_windows_are_refused(bad: object) -> None:
    """A window must be a positive whole number of s, m, h or d, at most a year."""
    with pytest.raises(ValueError, match="per"):
        parse_window(bad)


@pytest.mark.parametrize(("seconds", "text"), [(30, "30s"), (300, "5m"), (7200, "2h"), (90, "90s")])
def test_windows_print_in_their_largest_unit(seconds: int, text: str) -> None:
    """format_window writes a window the way a policy would."""
    assert format_window(seconds) == text


@pytest.mark.parametrize(
    ("rule", "line", "message"),
    [
        ("    limit: {max: 0, per: 1h}\n", 4, "limit max must be a whole number greater than 0"),
        ("    limit: {max: 2.5, per: 1h}\n", 4, "whole number"),
        ("    limit: {max: 5, per: 1w}\n", 4, "per must be a window"),
        ("    limit: {max: 5}\n", 4, "limit needs 'per'"),
        ("    limit:\n      max: 5\n      per: 1h\n      keys: [agent]\n", 7, "unknown key 'keys'"),
        ("    limit:\n      max: 5\n      per: 1h\n      key: [user]\n", 7, "key 'user' is not"),
        ("    limit: {max: 5, per: 1h, key: [agent, agent]}\n", 4, "names a key twice"),
        ("    limit: 5\n", 4, "limit must be a mapping"),
        ("    budget: {max: 5, per: 1h}\n", 4, "budget needs 'sum'"),
        ("    budget: {sum: '', max: 5, per: 1h}\n", 4, "is not a param path"),
        ("    budget: {sum: a, max: -1, per: 1h}\n", 4, "greater than 0"),
        ("    budget: {sum: a, max: .nan, per: 1h}\n", 4, "greater than 0"),
        ("    on_exceed: {approval: block}\n", 4, "on_exceed needs a limit or a budget"),
        (
            "    limit: {max: 5, per: 1h}\n    on_exceed: {approval: maybe}\n",
            5,
            "on_exceed approval must be one of",
        ),
        (
            "    limit: {max: 5, per: 1h}\n    on_exceed: {approval: block, risk_level: severe}\n",
            5,
            "on_exceed risk_level must be one of",
        ),
        ("    conditions:\n      after: {type: read, within: forever}\n", 5, "within must be"),
        ("    conditions:\n      after: {kind: read}\n", 5, "unknown key 'kind' in after"),
        ("    conditions:\n      not_after: [read]\n", 5, "not_after must be a mapping"),
        (
            "    conditions:\n      after: {type: read, params: {time_after: '10:00'}}\n",
            5,
            "is not a param condition",
        ),
        (
            "    conditions:\n      after: {type: read, params: {param_gt: {n: x}}}\n",
            5,
            "must be a number",
        ),
    ],
)
def test_bad_stateful_keys_name_the_file_line_and_rule(
    tmp_path: Path, rule: str, line: int, message: str
) -> None:
    """Every invalid limit, budget, on_exceed or flow condition is a PolicyError at file:line."""
    error = rule_error(tmp_path, rule)
    assert message in str(error)
    assert error.line == line, str(error)
    assert error.rule == "r"
    assert str(error).startswith(f"{tmp_path / 'policy.yaml'}:{line}: rule 'r': ")


def test_a_misspelled_rule_key_suggests_limit(tmp_path: Path) -> None:
    """An unknown rule key close to a new one gets a did-you-mean."""
    error = rule_error(tmp_path, "    limits: {max: 5, per: 1h}\n")
    assert "did you mean 'limit'?" in str(error)


def test_rules_built_in_python_take_the_same_keys() -> None:
    """PolicyRule accepts limit, budget and on_exceed, and to_dict writes them back."""
    rule = PolicyRule(
        "refund",
        approval="auto",
        name="b",
        budget={"sum": "amount", "max": 10, "per": "1d"},
        on_exceed={"approval": "approve"},
    )
    data = Policy([rule]).to_dict()["rules"][0]
    assert data["budget"] == {"sum": "amount", "max": 10, "per": "1d"}
    assert data["on_exceed"] == {"approval": "approve"}
    assert Policy.from_dict(Policy([rule]).to_dict()) == Policy([rule])


def test_on_exceed_reads_approval_and_risk_names_as_the_rule_does() -> None:
    """Names in any case or the members themselves read alike in a rule and in its on_exceed."""
    rule = PolicyRule(
        "refund",
        name="r",
        approval="APPROVE",
        risk_level=RiskLevel.HIGH,
        limit={"max": 1, "per": "1d"},
        on_exceed={"approval": Approval.APPROVE, "risk_level": "High"},
    )
    limits = Policy([rule]).limits
    assert limits is not None
    on_exceed = limits.by_rule["r"].on_exceed
    assert (rule.approval, rule.risk_level) == (Approval.APPROVE, RiskLevel.HIGH)
    assert (on_exceed.approval, on_exceed.risk_level) == (Approval.APPROVE, RiskLevel.HIGH)


@pytest.mark.parametrize("field", ["approval", "risk_level"])
@pytest.mark.parametrize("value", [2, True, "", "blocked"])
def test_a_value_naming_no_member_is_refused_in_a_rule_and_in_on_exceed(
    field: str, value: object
) -> None:
    """What is not a member's name is a PolicyError whether the rule or its on_exceed says it."""
    with pytest.raises(PolicyError, match=field):
        PolicyRule("refund", **{field: value})
    with pytest.raises(PolicyError, match=f"on_exceed {field}"):
        PolicyRule(
            "refund", limit={"max": 1, "per": "1d"}, on_exceed={"approval": "block", field: value}
        )


def test_unnamed_rules_count_under_their_generated_name() -> None:
    """A limit of an unnamed rule is counted under rule_<position>, as matched_rule says."""
    policy = Policy(
        [PolicyRule("read", approval="auto"), PolicyRule("send", limit={"max": 1, "per": "1m"})]
    )
    assert policy.limits is not None
    assert list(policy.limits.by_rule) == ["rule_2"]
    assert policy.limits.by_rule["rule_2"].meters[0].rule == "rule_2"


def test_the_json_schema_describes_the_new_keys() -> None:
    """The JSON Schema knows limit, budget, on_exceed, after and not_after."""
    schema = Policy.json_schema()
    rule = schema["properties"]["rules"]["items"]["properties"]
    assert rule["limit"]["required"] == ["max", "per"]
    assert rule["budget"]["required"] == ["sum", "max", "per"]
    assert set(rule["on_exceed"]["properties"]) == {"approval", "risk_level"}
    conditions = rule["conditions"]["properties"]
    assert set(conditions["after"]["properties"]) == {"type", "target", "params", "within"}
    assert "param_eq" in conditions["not_after"]["properties"]["params"]["properties"]


# -- evaluation -------------------------------------------------------------------


def test_without_history_after_never_holds_and_not_after_always_does(tmp_path: Path) -> None:
    """evaluate with no history treats the session as new: pure and deterministic."""
    policy = load(tmp_path)
    decision = policy.evaluate(Action("send", "external_x"), now=NOW)
    assert decision.matched_rule == "first_contact"


def test_after_holds_once_the_history_has_a_matching_action(tmp_path: Path) -> None:
    """An earlier read of the CRM makes the exfiltration rule match."""
    policy = load(tmp_path)
    history = RecordedHistory([FlowEvent("s", "read_customer", "crm", {}, NOW.timestamp() - 5)])
    decision = policy.evaluate(Action("send", "external_x"), now=NOW, history=history)
    assert (decision.matched_rule, decision.approval) == ("exfiltration", Approval.APPROVE)


def test_after_ignores_other_targets_and_later_events(tmp_path: Path) -> None:
    """A read of another system, or an event after now, does not satisfy after."""
    policy = load(tmp_path)
    history = RecordedHistory(
        [
            FlowEvent("s", "read", "billing", {}, NOW.timestamp() - 5),
            FlowEvent("s", "read", "crm", {}, NOW.timestamp() + 5),
        ]
    )
    decision = policy.evaluate(Action("send", "external_x"), now=NOW, history=history)
    assert decision.matched_rule == "first_contact"


def test_not_after_with_params_and_a_window(tmp_path: Path) -> None:
    """not_after fails while a matching event is inside its window, and holds after it."""
    policy = load(tmp_path)
    welcome = FlowEvent("s", "send_welcome", "mail", {"lang": "en"}, NOW.timestamp() - 3600)
    other = FlowEvent("s", "send_welcome", "mail", {"lang": "de"}, NOW.timestamp() - 60)
    action = Action("send", "mail")
    assert policy.evaluate(action, now=NOW, history=RecordedHistory([other])).matched_rule == (
        "first_contact"
    )
    assert policy.evaluate(action, now=NOW, history=RecordedHistory([welcome])).matched_rule == (
        "sends"
    )
    later = datetime.fromtimestamp(NOW.timestamp() + 86400, UTC)
    assert policy.evaluate(action, now=later, history=RecordedHistory([welcome])).matched_rule == (
        "first_contact"
    )


def test_an_earlier_action_whose_params_cannot_be_judged_blocks(tmp_path: Path) -> None:
    """A not_after whose only candidate has params of another type (a tool may coerce them
    into the very value named) blocks as unevaluable, never lets through; a sure match or a
    false condition beside it still decides."""
    text = """\
rules:
  - name: sends
    match: {type: send}
    conditions:
      not_after: {type: read, params: {param_eq: {table: customers}}}
    approval: auto
  - name: rest
    approval: block
"""
    policy = load(tmp_path, text)
    at = NOW.timestamp()
    odd = FlowEvent("s", "read", "crm", {"table": ("customers",)}, at - 2)
    decision = policy.evaluate(Action("send", "x"), now=NOW, history=RecordedHistory([odd]))
    assert (decision.approval, decision.matched_rule) == (Approval.BLOCK, "sends")
    assert "cannot be evaluated" in decision.reason
    assert "not_after: an earlier 'read' on 'crm'" in decision.reason
    sure = FlowEvent("s", "read", "crm", {"table": "customers"}, at - 5)
    both = RecordedHistory([sure, odd])
    assert policy.evaluate(Action("send", "x"), now=NOW, history=both).matched_rule == "rest"
    other = FlowEvent("s", "read", "crm", {"table": "orders"}, at - 5)
    fine = RecordedHistory([other])
    assert policy.evaluate(Action("send", "x"), now=NOW, history=fine).approval is Approval.AUTO


def test_a_false_param_condition_decides_before_the_history(tmp_path: Path) -> None:
    """A rule whose param condition is false does not match, whatever the history says."""
    text = """\
rules:
  - name: big_after_read
    match: {type: send}
    conditions:
      param_gt: {n: 10}
      after: {type: read}
    approval: block
  - name: rest
    approval: auto
"""
    policy = load(tmp_path, text)
    history = RecordedHistory([FlowEvent("s", "read", "x", {}, NOW.timestamp() - 1)])
    assert policy.evaluate(
        Action("send", "x", {"n": 5}), now=NOW, history=history
    ).matched_rule == ("rest")
    assert policy.evaluate(Action("send", "x", {"n": 50}), now=NOW, history=history).approval is (
        Approval.BLOCK
    )
    odd = policy.evaluate(Action("send", "x", {"n": "many"}), now=NOW, history=history)
    assert (odd.approval, odd.matched_rule) == (Approval.BLOCK, "big_after_read")
    assert "cannot be evaluated" in odd.reason
    fresh = policy.evaluate(Action("send", "x", {"n": "many"}), now=NOW)
    assert fresh.matched_rule == "rest"  # false flow condition wins over an unevaluable one


# -- charges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "units"),
    [
        (0, 0),
        (2000, 2000 * BUDGET_SCALE),
        (0.1, 100_000),
        (0.3, 300_000),
        (Decimal("1.0000001"), 1_000_001),
        (Fraction(1, 3), 333_334),
        (1e-9, 1),
    ],
)
def test_budget_amounts_are_exact_millionths_rounded_up(value: Any, units: int) -> None:
    """Amounts become whole millionths, rounded against the agent."""
    assert budget_units(value) == units


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "a boolean"),
        ("12", "a string"),
        (None, "null"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (-5, "negative"),
        (Decimal("NaN"), "not a finite number"),
        (10**30, "larger than a budget can count"),
        ([1], "a list"),
    ],
)
def test_budget_amounts_that_are_not_plain_numbers_are_refused(value: Any, message: str) -> None:
    """Anything but a finite, non-negative, countable number is refused with why."""
    with pytest.raises(ValueError, match=message):
        budget_units(value)


@pytest.mark.parametrize("spelling", [7, 7.0, "7", " 7", "7.0", "07", "7e0", "0_7", "+7.0"])
def test_one_customer_however_its_id_is_spelled(tmp_path: Path, spelling: Any) -> None:
    """7, 7.0 and "7" are one customer to a limit: tools coerce one into the other."""
    text = """\
rules:
  - name: r
    limit: {max: 3, per: 1h, key: [params.customer_id]}
    approval: auto
"""
    policy = load(tmp_path, text)
    assert policy.limits is not None
    meter = policy.limits.by_rule["r"].meters[0]
    subject = Subject("s1", "bot")
    seven = meter.charge(Action("send", "mail", {"customer_id": 7}), subject)
    spelt = meter.charge(Action("send", "mail", {"customer_id": spelling}), subject)
    assert spelt.bucket == seven.bucket
    eight = meter.charge(Action("send", "mail", {"customer_id": "8"}), subject)
    assert eight.bucket != seven.bucket


@pytest.mark.parametrize(
    ("plain", "spelling"),
    [
        (1000, "1_000"),
        (1000, "10_00"),
        (1000, "1_000.0"),
        (1, True),
        (1, "true"),
        (1, "yes"),
        (0, False),
        (0, "off"),
    ],
)
def test_one_customer_however_pydantic_reads_its_id(
    tmp_path: Path, plain: int, spelling: Any
) -> None:
    """Spellings a Pydantic int field reads as one number ("1_000", true) are one customer."""
    text = """\
rules:
  - name: r
    limit: {max: 1, per: 1h, key: [params.customer_id]}
    approval: auto
"""
    policy = load(tmp_path, text)
    assert policy.limits is not None
    meter = policy.limits.by_rule["r"].meters[0]
    subject = Subject("s1", "bot")
    one = meter.charge(Action("send", "mail", {"customer_id": plain}), subject)
    spelt = meter.charge(Action("send", "mail", {"customer_id": spelling}), subject)
    assert spelt.bucket == one.bucket
    other = meter.charge(Action("send", "mail", {"customer_id": "1_0_01"}), subject)
    assert other.bucket != one.bucket


def test_charges_key_by_every_kind_of_key(tmp_path: Path) -> None:
    """session, agent, type, target and params.<path> all go into the counter's name."""
    text = """\
rules:
  - name: r
    limit: {max: 3, per: 1h, key: [session, agent, type, target, params.customer.id]}
    approval: auto
"""
    policy = load(tmp_path, text)
    assert policy.limits is not None
    meter = policy.limits.by_rule["r"].meters[0]
    action = Action("send", "mail", {"customer": {"id": 7}})
    charge = meter.charge(action, Subject("s1", "bot"))
    keys = ["session", "agent", "type", "target", "params.customer.id"]
    assert json.loads(charge.bucket) == ["r", "limit", keys, ["s1", "bot", "send", "mail", 7]]
    assert (charge.amount, charge.maximum, charge.window) == (1, 3, 3600)
    other = meter.charge(Action("send", "mail", {"customer": {"id": 8}}), Subject("s1", "bot"))
    assert other.bucket != charge.bucket
    with pytest.raises(Unevaluable, match=r"counted per params\.customer\.id"):
        meter.charge(Action("send", "mail"), Subject("s1", "bot"))


def test_a_budget_charge_is_its_amount_and_refuses_a_bad_one(tmp_path: Path) -> None:
    """A budget charges the summed param; a missing or non-numeric one is Unevaluable."""
    policy = load(tmp_path)
    assert policy.limits is not None
    meter = policy.limits.by_rule["refund_budget"].meters[0]
    subject = Subject("s")
    charge = meter.charge(Action("refund", "x", {"amount": 12.5, "customer_id": 1}), subject)
    assert (charge.amount, charge.maximum) == (12_500_000, 2000 * BUDGET_SCALE)
    with pytest.raises(Unevaluable, match="which this action does not have"):
        meter.charge(Action("refund", "x", {"customer_id": 1}), subject)
    with pytest.raises(Unevaluable, match="is a string"):
        meter.charge(Action("refund", "x", {"amount": "12", "customer_id": 1}), subject)


# -- digest -------------------------------------------------------------------------


def test_the_digest_is_stable_and_follows_the_content(tmp_path: Path) -> None:
    """Equal content gives equal digests; any change of a rule or a limit changes it."""
    first = load(tmp_path)
    second = Policy.from_dict(first.to_dict())
    assert first.digest == second.digest
    assert len(first.digest) == 64
    changed = load(tmp_path, POLICY.replace("max: 20,", "max: 21,"))
    assert changed.digest != first.digest
    assert load(tmp_path, POLICY.replace("risk_level: low", "risk_level: medium")).digest != (
        first.digest
    )


def test_the_digest_is_the_same_in_another_process(tmp_path: Path) -> None:
    """A fresh interpreter computes the same digest for the same file."""
    import subprocess
    import sys

    policy = load(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from aegis import Policy; print(Policy.from_yaml(sys.argv[1]).digest)",
            str(tmp_path / "policy.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == policy.digest


def test_a_flow_event_built_the_short_way_is_the_same_frozen_event() -> None:
    """flow_event (the runtime's per-action constructor) equals FlowEvent's own, and is frozen."""
    params = Action("refund", "stripe", {"amount": 1.5}).params
    event = flow_event("s", "refund", "stripe", params, 12.5)
    assert type(event) is FlowEvent
    assert event == FlowEvent("s", "refund", "stripe", params, 12.5)
    assert hash(event) == hash(FlowEvent("s", "refund", "stripe", params, 12.5))
    assert (event.session_id, event.type, event.target, event.params, event.at) == (
        "s",
        "refund",
        "stripe",
        params,
        12.5,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.at = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "params",
    [
        {"param_eq": {"n": 10**5000}},
        {"param_eq": {"n": -(10**600)}},
        {"param_in": {"n": [1, 10**4400]}},
        {"param_eq": {"ids": {"a": [10**700]}}},
    ],
    ids=["past the digit limit", "601 digits", "in a list", "nested"],
)
def test_a_flow_condition_comparing_an_int_a_stored_event_may_hold_as_text_is_refused(
    params: dict[str, Any],
) -> None:
    """An int some process stores as text in an event's params (past its digit limit, which is
    640 at least) would never equal an earlier action's: the after rule it is in would never
    block. The policy is refused at load, saying why and what to do."""
    rule = {
        "name": "no_send_after_secret",
        "match": {"type": "send"},
        "conditions": {"after": {"type": "read_secret", "params": params}},
        "approval": "block",
    }
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict({"rules": [rule]})
    assert "more than 600 digits" in str(caught.value)
    assert "no_send_after_secret" in str(caught.value)


def test_a_flow_condition_of_an_int_every_process_stores_as_a_number_is_taken() -> None:
    """600 digits: every process keeps it as a number, so the condition is compiled."""
    history = Policy.from_dict(
        {
            "rules": [
                {
                    "name": "r",
                    "match": {"type": "send"},
                    "conditions": {
                        "after": {"type": "read", "params": {"param_eq": {"n": 10**600 - 1}}}
                    },
                    "approval": "block",
                }
            ]
        }
    )
    assert history.limits is not None


async def test_a_policy_comparing_an_int_past_the_digit_limit_decides_and_is_recorded(
    tmp_path: Path,
) -> None:
    """A rule's own param_eq of an int Python cannot print (a Python policy may hold one):
    its digest is taken as canonical_json writes such an int, so the runtime decides, records
    and blocks the action that has it, instead of failing every action with a ValueError."""
    from aegis import AuditLogger, Runtime
    from aegis.core.result import ResultStatus

    huge = 10**5000
    rules = [
        {
            "name": "no_huge",
            "match": {"type": "send"},
            "conditions": {"param_eq": {"n": huge}},
            "approval": "block",
        },
        {"name": "all", "match": {"type": "*"}, "approval": "auto"},
    ]
    policy = Policy.from_dict({"rules": rules})
    assert policy.digest == Policy.from_dict({"rules": rules}).digest
    assert (
        policy.digest != Policy.from_dict({"rules": [{**rules[0], "name": "x"}, rules[1]]}).digest
    )
    audit = AuditLogger(tmp_path / "audit.db")
    async with Runtime(
        executor=lambda action: "sent", policy=policy, audit_logger=audit, session_id="s"
    ) as rt:
        blocked = await rt.run_one(Action("send", "mail", {"n": huge}))
        sent = await rt.run_one(Action("send", "mail", {"n": 1}))
        log = audit.get_log()
    assert [blocked.status, sent.status] == [ResultStatus.BLOCKED, ResultStatus.SUCCESS]
    assert [r["result_status"] for r in log] == ["blocked", "success"]
    assert {r["policy_digest"] for r in log} == {policy.digest}
