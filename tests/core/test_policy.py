"""Policy rules and evaluation: first match, defaults, names, merge and shadowing."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime

import pytest

from aegis.core.action import Action
from aegis.core.decision import DEFAULT_RULE, Approval, PolicyDecision
from aegis.core.policy import Policy, PolicyRule
from aegis.core.risk import RiskLevel
from aegis.errors import PolicyError


def test_rule_defaults() -> None:
    """A bare rule matches everything and asks for approval at medium risk."""
    rule = PolicyRule()
    assert (rule.match_type, rule.match_target) == ("*", "*")
    assert rule.risk_level is RiskLevel.MEDIUM
    assert rule.approval is Approval.APPROVE
    assert rule.source is None


@pytest.mark.parametrize(
    ("risk", "approval", "expected"),
    [
        ("high", "block", (RiskLevel.HIGH, Approval.BLOCK)),
        ("LOW", "Auto", (RiskLevel.LOW, Approval.AUTO)),
        (RiskLevel.CRITICAL, Approval.APPROVE, (RiskLevel.CRITICAL, Approval.APPROVE)),
    ],
)
def test_rule_accepts_enum_strings(
    risk: RiskLevel | str, approval: Approval | str, expected: tuple[RiskLevel, Approval]
) -> None:
    """Risk levels and approvals may be given as members or their names, any case."""
    rule = PolicyRule(risk_level=risk, approval=approval)
    assert (rule.risk_level, rule.approval) == expected


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"risk_level": "extreme"}, "low, medium, high, critical"),
        ({"risk_level": 3}, "low, medium, high, critical"),
        ({"approval": "maybe"}, "auto, approve, block"),
        ({"match_type": ""}, "must not be empty"),
        ({"match_target": 5}, "glob string"),
        ({"name": 5}, "rule name must be a string"),
    ],
)
def test_rule_rejects_bad_values(kwargs: dict[str, object], fragment: str) -> None:
    """Bad rule values raise PolicyError listing what is valid."""
    with pytest.raises(PolicyError, match=fragment):
        PolicyRule(**kwargs)  # type: ignore[arg-type]


def test_rule_is_frozen() -> None:
    """Rules cannot change once compiled, so the index cannot go stale."""
    rule = PolicyRule(name="r")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.name = "other"  # type: ignore[misc]


def test_rule_matches_globs_case_sensitively() -> None:
    """PolicyRule.matches applies the globs, and case matters."""
    rule = PolicyRule("read*", "crm")
    assert rule.matches(Action("read_all", "crm"))
    assert not rule.matches(Action("Read", "crm"))
    assert not rule.matches(Action("read", "CRM"))


def test_first_match_wins() -> None:
    """Rules are tried top to bottom and the first match decides."""
    policy = Policy(
        [
            PolicyRule("delete", "*", "critical", "block", name="no_delete"),
            PolicyRule("*", "crm", "low", "auto", name="crm"),
        ]
    )
    assert policy.evaluate(Action("delete", "crm")).matched_rule == "no_delete"
    assert policy.evaluate(Action("read", "crm")).matched_rule == "crm"


def test_first_match_order_holds_across_indexes() -> None:
    """An earlier glob rule beats a later exact rule, and the other way round."""
    policy = Policy(
        [
            PolicyRule("tool_*", "*", name="glob_first"),
            PolicyRule("tool_a", "sys", name="exact_later"),
            PolicyRule("x", "sys", name="exact_first"),
            PolicyRule("?", "s*", name="glob_later"),
        ]
    )
    assert policy.evaluate(Action("tool_a", "sys")).matched_rule == "glob_first"
    assert policy.evaluate(Action("x", "sys")).matched_rule == "exact_first"
    assert policy.evaluate(Action("y", "sys")).matched_rule == "glob_later"


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("*", "", True),
        ("read", "read", True),
        ("read", "reader", False),
        ("read*", "read", True),
        ("read*", "Read", False),
        ("*_all", "read_all", True),
        ("r?ad", "road", True),
        ("[ab]*", "beta", True),
        ("[ab]*", "gamma", False),
        ("[!a]x", "bx", True),
        ("a[", "a[", True),
        ("*.*", "a.b", True),
    ],
)
def test_fnmatch_semantics(pattern: str, value: str, matches: bool) -> None:
    """Type and target globs follow case-sensitive fnmatch, on both sides."""
    on_type = Policy([PolicyRule(pattern, "*", name="hit")])
    on_target = Policy([PolicyRule("*", pattern, name="hit")])
    assert (on_type.evaluate(Action(value, "-")).matched_rule == "hit") is matches
    assert (on_target.evaluate(Action("-", value)).matched_rule == "hit") is matches


def test_no_match_uses_defaults() -> None:
    """An action no rule matches gets the policy's defaults and the default rule name."""
    policy = Policy([PolicyRule("read")], default_risk_level="low", default_approval="approve")
    decision = policy.evaluate(Action("write", "crm"))
    assert decision.matched_rule == DEFAULT_RULE
    assert (decision.risk_level, decision.approval) == (RiskLevel.LOW, Approval.APPROVE)


def test_policy_fails_closed_by_default() -> None:
    """A policy that states no defaults blocks unmatched actions at medium risk."""
    decision = Policy().evaluate(Action("anything", "anywhere"))
    assert decision.approval is Approval.BLOCK
    assert decision.risk_level is RiskLevel.MEDIUM
    assert not decision.is_allowed


def test_decision_carries_action_and_rule() -> None:
    """A decision holds the action, the rule's verdict and no reason."""
    action = Action("read", "crm", {"id": 1})
    decision = Policy([PolicyRule("read", risk_level="low", approval="auto", name="r")]).evaluate(
        action
    )
    assert decision == PolicyDecision(action, RiskLevel.LOW, Approval.AUTO, "r", "")
    assert decision.action is action
    assert decision.is_allowed


def test_decision_is_frozen() -> None:
    """A decision cannot be changed after the policy made it."""
    decision = Policy().evaluate(Action("a", "b"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.approval = Approval.AUTO  # type: ignore[misc]


def test_unnamed_rules_get_position_names() -> None:
    """Unnamed rules are named rule_<position> (from 1), skipping names already taken."""
    policy = Policy([PolicyRule("a"), PolicyRule("b", name="rule_3"), PolicyRule("c")])
    assert [r.name for r in policy.rules] == ["rule_1", "rule_3", "rule_3_"]
    assert policy.evaluate(Action("c", "x")).matched_rule == "rule_3_"


def test_duplicate_rule_names_are_rejected() -> None:
    """Two rules with the same name make the policy invalid."""
    with pytest.raises(PolicyError, match="'dup' is used twice"):
        Policy([PolicyRule("a", name="dup"), PolicyRule("b", name="dup")])


def test_policy_rejects_non_rules() -> None:
    """Only PolicyRule objects are accepted as rules."""
    with pytest.raises(PolicyError, match="PolicyRule objects"):
        Policy([{"match": {"type": "a"}}])  # type: ignore[list-item]


def test_policy_rejects_bad_defaults() -> None:
    """Bad default values raise PolicyError listing the valid ones."""
    with pytest.raises(PolicyError, match="auto, approve, block"):
        Policy(default_approval="sometimes")


def test_attributes() -> None:
    """A policy exposes its rules as a tuple and its defaults as enum members."""
    policy = Policy([PolicyRule("a")], "high", "auto")
    assert isinstance(policy.rules, tuple)
    assert policy.default_risk_level is RiskLevel.HIGH
    assert policy.default_approval is Approval.AUTO
    assert "1 rules" in repr(policy)


def test_time_conditions_only_read_the_clock_when_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluating rules without time conditions never reads the clock."""
    import aegis.core.policy as policy_module

    class NoClock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> NoClock:
            raise AssertionError("the clock was read")

    monkeypatch.setattr(policy_module, "datetime", NoClock)
    policy = Policy(
        [
            PolicyRule("a", name="plain", conditions={"param_eq": {"x": 1}}),
            PolicyRule("b", name="timed", conditions={"time_after": "00:00"}),
        ]
    )
    assert policy.evaluate(Action("a", "t", {"x": 1})).matched_rule == "plain"
    assert policy.evaluate(Action("c", "t")).matched_rule == DEFAULT_RULE
    with pytest.raises(AssertionError, match="clock"):
        policy.evaluate(Action("b", "t"))


def test_threshold_runs_keep_first_match_order() -> None:
    """Many rules comparing one param pick the first matching rule in order."""
    rules = [
        PolicyRule("refund", name=f"{i}_gt_{bound}", conditions={"param_gt": {"amount": bound}})
        for i, bound in enumerate((1000, 500, 700, 100, 100, 50))
    ]
    policy = Policy(rules, default_approval="auto")
    expected = {2000: "0_gt_1000", 800: "1_gt_500", 600: "1_gt_500", 200: "3_gt_100", 60: "5_gt_50"}
    for amount, name in expected.items():
        assert policy.evaluate(Action("refund", "s", {"amount": amount})).matched_rule == name
    assert policy.evaluate(Action("refund", "s", {"amount": 10})).matched_rule == DEFAULT_RULE
    assert policy.evaluate(Action("refund", "s", {})).matched_rule == DEFAULT_RULE
    bad = policy.evaluate(Action("refund", "s", {"amount": "x"}))
    assert (bad.matched_rule, bad.approval) == ("0_gt_1000", Approval.BLOCK)


def test_merge_appends_rules_and_keeps_own_defaults() -> None:
    """merge puts the other policy's rules after this one's and keeps this one's defaults."""
    base = Policy([PolicyRule("a", name="a")], "low", "auto")
    extra = Policy([PolicyRule("*", name="all"), PolicyRule("b")], "critical", "block")
    merged = base.merge(extra)
    assert [r.name for r in merged.rules] == ["a", "all", "rule_3"]
    assert (merged.default_risk_level, merged.default_approval) == (RiskLevel.LOW, Approval.AUTO)


def test_merge_renumbers_unnamed_rules() -> None:
    """Unnamed rules of both policies get fresh position names instead of clashing."""
    merged = Policy([PolicyRule("a")]).merge(Policy([PolicyRule("b")]))
    assert [r.name for r in merged.rules] == ["rule_1", "rule_2"]


def test_merge_name_clash_names_both_sources() -> None:
    """A rule name used in both policies is an error naming where each one is."""
    first = Policy([PolicyRule("a", name="same", source="base.yaml:4")])
    second = Policy([PolicyRule("b", name="same", source="team.yaml:9")])
    with pytest.raises(PolicyError) as info:
        first.merge(second)
    assert "base.yaml:4" in str(info.value)
    assert "team.yaml:9" in str(info.value)
    assert info.value.rule == "same"


def test_shadowed_rules() -> None:
    """A later rule that an earlier unconditional rule always catches is reported."""
    everything = PolicyRule("*", "*", name="everything")
    policy = Policy(
        [
            PolicyRule("read*", "*", name="reads"),
            PolicyRule("read_all", "crm", name="read_all"),
            PolicyRule("read_x*", "*", name="read_x"),
            PolicyRule("delete", "crm", name="cond", conditions={"param_eq": {"a": 1}}),
            PolicyRule("delete", "crm", name="delete"),
            PolicyRule("?rite", "*", name="writes"),
            everything,
            PolicyRule("late", name="late"),
        ]
    )
    pairs = [(s.name, by.name) for s, by in policy.shadowed_rules()]
    assert pairs == [("read_all", "reads"), ("read_x", "reads"), ("late", "everything")]


def test_conditional_rules_never_shadow() -> None:
    """A rule with conditions may not match, so it shadows nothing."""
    policy = Policy([PolicyRule(name="c", conditions={"param_eq": {"a": 1}}), PolicyRule("x")])
    assert policy.shadowed_rules() == []


def test_glob_that_might_miss_does_not_shadow() -> None:
    """Only sure coverage counts: 'a*' does not shadow '?b' or 'b*'."""
    policy = Policy([PolicyRule("a*", name="a"), PolicyRule("?b"), PolicyRule("b*")])
    assert policy.shadowed_rules() == []


def test_to_dict_round_trips() -> None:
    """to_dict gives the file format, and loading it back gives an equal policy."""
    policy = Policy(
        [
            PolicyRule(
                "refund",
                "stripe",
                "high",
                "approve",
                name="refunds",
                conditions={"param_in": {"currency": ["EUR", "USD"]}},
                description="money out",
            ),
            PolicyRule("read*", risk_level="low", approval="auto"),
        ],
        default_approval="approve",
    )
    data = policy.to_dict()
    assert data["defaults"] == {"risk_level": "medium", "approval": "approve"}
    assert data["rules"][0]["conditions"] == {"param_in": {"currency": ["EUR", "USD"]}}
    assert "name" not in data["rules"][1]
    assert Policy.from_dict(data) == policy


def test_rule_positional_arguments_follow_documented_order() -> None:
    """PolicyRule(type, target, risk, approval, name, conditions) in that order."""
    rule = PolicyRule("t", "g", "low", "auto", "n", {"param_eq": {"a": 1}})
    assert (rule.match_type, rule.match_target, rule.name) == ("t", "g", "n")
    assert rule.conditions == {"param_eq": {"a": 1}}


def test_evaluate_with_aware_now_in_utc() -> None:
    """An explicit aware ``now`` decides time conditions."""
    policy = Policy([PolicyRule(name="night", conditions={"time_after": "22:00"})])
    late = datetime(2024, 1, 1, 23, 0, tzinfo=UTC)
    early = datetime(2024, 1, 1, 21, 0, tzinfo=UTC)
    assert policy.evaluate(Action("a", "b"), now=late).matched_rule == "night"
    assert policy.evaluate(Action("a", "b"), now=early).matched_rule == DEFAULT_RULE


def test_uncopyable_condition_value_is_a_policy_error() -> None:
    """A condition value that cannot be frozen raises PolicyError naming the rule."""
    with pytest.raises(PolicyError, match=r"rule 'r': .*not plain JSON-like data"):
        PolicyRule(name="r", conditions={"param_eq": {"x": threading.Lock()}})


def test_condition_paths_must_be_strings() -> None:
    """A param path that is not a string is refused, not silently turned into one."""
    with pytest.raises(PolicyError, match="1 is not a param path"):
        PolicyRule(conditions={"param_eq": {1: "x"}})


def test_duplicate_names_in_policy_name_both_sources() -> None:
    """Two rules with one name in a Policy raise PolicyError with both sources."""
    with pytest.raises(PolicyError, match=r"'same' is used twice \(at a.yaml:1 and b.yaml:2\)"):
        Policy(
            [
                PolicyRule("x", name="same", source="a.yaml:1"),
                PolicyRule("y"),
                PolicyRule("x", name="same", source="b.yaml:2"),
            ]
        )
