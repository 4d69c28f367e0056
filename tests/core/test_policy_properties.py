"""The compiled, indexed policy decides exactly like a plain first-match loop."""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.core.action import Action
from aegis.core.decision import DEFAULT_RULE, Approval
from aegis.core.policy import Policy, PolicyRule
from aegis.core.risk import RiskLevel

LITERALS = ["a", "b", "ab", "tool_1", "tool_12", "tool_2", "sys", "sysx", "x"]
PATTERNS = st.one_of(
    st.sampled_from(LITERALS),  # exact
    st.sampled_from(LITERALS).map(lambda s: s + "*"),  # literal prefix
    st.sampled_from(["?", "??", "t?ol_1", "[ab]*", "[!a]*", "*x", "*_1*", "a*b", "tool_*2"]),
    st.just("*"),
)
CONDITION = st.one_of(
    st.none(),
    st.tuples(
        st.sampled_from(["param_gt", "param_gte", "param_lt", "param_lte"]), st.integers(-3, 3)
    ),
    st.tuples(st.just("param_eq"), st.sampled_from([0, 1, "gold", True])),
)
RULE = st.tuples(
    PATTERNS,
    PATTERNS,
    st.sampled_from(list(RiskLevel)),
    st.sampled_from(list(Approval)),
    CONDITION,
    st.integers(1, 5),  # copies with shifted thresholds, to build runs of similar rules
)
AMOUNT = st.one_of(st.integers(-5, 5), st.sampled_from(["x", True, 2.5, None, -0.5, "gold"]))


def build(specs: list[tuple[Any, ...]]) -> list[PolicyRule]:
    """Turn drawn rule specs into rules, repeating some with other thresholds."""
    rules = []
    for kind, target, risk, approval, condition, copies in specs:
        for copy in range(copies if condition else 1):
            conditions = {}
            if condition is not None:
                name, value = condition
                if name != "param_eq":
                    value = value + (copy if name in ("param_gt", "param_gte") else -copy) * (
                        -1 if copy % 2 else 1
                    )
                conditions = {name: {"amount": value}}
            rules.append(PolicyRule(kind, target, risk, approval, conditions=conditions))
    return rules


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else type(value).__name__


def reference(policy: Policy, action: Action) -> tuple[Approval, RiskLevel, str]:
    """A straightforward first-match loop with the documented condition semantics."""
    for rule in policy.rules:
        if not (
            fnmatchcase(action.type, rule.match_type)
            and fnmatchcase(action.target, rule.match_target)
        ):
            continue
        if not rule.conditions:
            return rule.approval, rule.risk_level, rule.name
        ((name, spec),) = rule.conditions.items()
        bound = spec["amount"]
        if "amount" not in action.params:
            continue
        value = action.params["amount"]
        if name == "param_eq":
            same_type = _json_type(value) == _json_type(bound)
            holds = value == bound and same_type
            if not holds and not same_type:  # a type mismatch is unevaluable: it blocks
                return Approval.BLOCK, max(rule.risk_level, RiskLevel.HIGH), rule.name
        elif isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return Approval.BLOCK, max(rule.risk_level, RiskLevel.HIGH), rule.name
        else:
            holds = {
                "param_gt": value > bound,
                "param_gte": value >= bound,
                "param_lt": value < bound,
                "param_lte": value <= bound,
            }[name]
        if holds:
            return rule.approval, rule.risk_level, rule.name
    return policy.default_approval, policy.default_risk_level, DEFAULT_RULE


@settings(max_examples=250, deadline=None)
@given(
    specs=st.lists(RULE, max_size=25),
    actions=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(LITERALS), st.text("abtolsyx_12", max_size=7)),
            st.one_of(st.sampled_from(LITERALS), st.text("abtolsyx_12", max_size=7)),
            st.one_of(st.none(), AMOUNT),
        ),
        min_size=1,
        max_size=20,
    ),
    default=st.sampled_from(list(Approval)),
)
def test_compiled_policy_equals_reference_loop(
    specs: list[tuple[Any, ...]], actions: list[tuple[str, str, Any]], default: Approval
) -> None:
    """For random policies and actions, evaluate() equals a plain first-match loop."""
    policy = Policy(build(specs), default_approval=default)
    for kind, target, amount in actions:
        params = {} if amount is None else {"amount": amount}
        action = Action(kind, target, params)
        decision = policy.evaluate(action)
        assert (decision.approval, decision.risk_level, decision.matched_rule) == reference(
            policy, action
        )
