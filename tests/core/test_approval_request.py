"""Approval requests as pure values: the digest, durations, request bodies, and the policy keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aegis import Action, Policy, PolicyError, PolicyRule
from aegis.core.action import action_digest
from aegis.core.approval_request import (
    action_from_json,
    action_to_json,
    parse_duration,
    parse_new_request,
    request_digest,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@given(params=st.dictionaries(st.text(max_size=5), json_values, max_size=4))
def test_json_round_trip_keeps_the_digest(params: dict[str, object]) -> None:
    """An action sent as JSON and rebuilt by the service has the agent's digest."""
    action = Action("refund", "billing", params, "d")
    rebuilt = action_from_json(action_to_json(action))
    assert action_digest(rebuilt) == action_digest(action)
    assert request_digest(rebuilt, "bot") == request_digest(action, "bot")


#: params with canonical JSON's marks and what looks like them: ints too long to print,
#: their hex, and mappings keyed as the marks are
_HUGE_INTS = st.integers(4301, 4320).map(lambda digits: 10**digits) | st.integers(4301, 4320).map(
    lambda digits: -(10**digits) + 1
)
_MARKED_VALUES = st.recursive(
    st.none() | st.integers() | _HUGE_INTS | _HUGE_INTS.map(hex) | st.sampled_from(["0x5", "x"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["__aegis_int__", "__aegis_map__", "__aegis_type__", "repr", "a"]),
            inner,
            max_size=2,
        )
    ),
    max_leaves=6,
)


@given(params=st.dictionaries(st.sampled_from(["__aegis_int__", "n"]), _MARKED_VALUES))
def test_json_round_trip_gives_the_action_back_whatever_looks_like_a_mark(
    params: dict[str, object],
) -> None:
    """An action sent as JSON is rebuilt as the very action, whether its params hold ints too
    long to print (sent as marks) or mappings shaped like those marks (sent escaped)."""
    action = Action("refund", "billing", params, "d")
    rebuilt = action_from_json(action_to_json(action))
    assert rebuilt == action
    assert action_digest(rebuilt) == action_digest(action)


def test_awkward_params_keep_the_digest() -> None:
    """Floats, nested containers and non-ASCII text survive the trip with the same digest."""
    action = Action("refund", "billing", {"amount": 9.99, "n": [1, {"é": None}], "s": "\u2028"})
    assert action_digest(action_from_json(action_to_json(action))) == action_digest(action)


def test_digest_binds_action_and_requester() -> None:
    """Another param, description or requester gives another request digest."""
    base = Action("refund", "billing", {"amount": 1})
    digests = {
        request_digest(base, "bot"),
        request_digest(Action("refund", "billing", {"amount": 2}), "bot"),
        request_digest(Action("refund", "billing", {"amount": 1}, "other"), "bot"),
        request_digest(base, "bot2"),
    }
    assert len(digests) == 4
    assert request_digest(base, "bot") == request_digest(
        Action("refund", "billing", {"amount": 1}), "bot"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("45", 45.0),
        ("30s", 30.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        (" 1.5 h ", 5400.0),
    ],
)
def test_durations(text: float | str, seconds: float) -> None:
    """Durations are seconds or a number with s, m, h or d."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", [0, -1, "0m", "1w", "soon", "", True, None, float("inf"), float("nan")]
)
def test_bad_durations(text: object) -> None:
    """Zero, negative, unknown units, booleans and non-numbers are refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)  # type: ignore[arg-type]


def test_new_request_body() -> None:
    """A valid body parses into an action, risk and the rule's approval keys."""
    new = parse_new_request(
        {
            "session_id": "s1",
            "action": {"type": "wire", "target": "bank", "params": {"to": "x"}},
            "risk_level": "critical",
            "approvers": 2,
            "reviewers": ["finance"],
            "approval_ttl": "10m",
        }
    )
    assert new.action == Action("wire", "bank", {"to": "x"})
    assert new.risk_level.name == "CRITICAL"
    assert (new.approvers, new.reviewers, new.approval_ttl) == (2, ("finance",), 600.0)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"action": {"type": "x", "target": "y"}}, "session_id is required"),
        ({"session_id": "s", "action": {"type": "x"}}, "action.target"),
        ({"session_id": "s", "action": {"type": "x", "target": "y", "x": 1}}, "unknown fields"),
        (
            {"session_id": "s", "action": {"type": "x", "target": "y"}, "approvers": True},
            "approvers",
        ),
        (
            {"session_id": "s", "action": {"type": "x", "target": "y"}, "reviewers": "finance"},
            "reviewers",
        ),
        (
            {"session_id": "s", "action": {"type": "x", "target": "y"}, "approval_ttl": "forever"},
            "approval_ttl",
        ),
        ({"session_id": "s" * 201, "action": {"type": "x", "target": "y"}}, "longer than"),
        (
            {"session_id": "s", "action": {"type": "x", "target": "y"}, "approval_ttl": 1e12},
            "30 days",
        ),
    ],
)
def test_bad_request_bodies(body: dict[str, object], words: str) -> None:
    """Each invalid field is refused with a message naming it."""
    with pytest.raises(ValueError, match=words):
        parse_new_request(body)


def test_policy_rule_approval_keys_reach_the_decision() -> None:
    """approvers, reviewers and approval_ttl of the matching rule are on the decision."""
    policy = Policy(
        [PolicyRule("wire", approvers=2, reviewers=["finance"], approval_ttl="30m", name="w")],
        default_approval="auto",
    )
    decision = policy.evaluate(Action("wire", "bank"))
    assert (decision.approvers, decision.reviewers, decision.approval_ttl) == (
        2,
        ("finance",),
        1800.0,
    )
    default = policy.evaluate(Action("read", "crm"))
    assert (default.approvers, default.reviewers, default.approval_ttl) == (1, (), None)
    assert Policy.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("approvers", 0, "approvers must be"),
        ("approvers", "two", "approvers must be"),
        ("reviewers", "finance", "reviewers must be a list"),
        ("reviewers", [""], "group name"),
        ("approval_ttl", "1w", "approval_ttl"),
        ("approval_ttl", -5, "approval_ttl"),
        ("approval_ttl", "31d", "30 days"),
    ],
)
def test_policy_file_rejects_bad_approval_keys(
    tmp_path: Path, key: str, value: object, words: str
) -> None:
    """A bad approval key in a policy file is a PolicyError naming the file, line and rule."""
    import yaml

    path = tmp_path / "policy.yaml"
    rule = {"name": "wires", "match": {"type": "wire"}, key: value}
    path.write_text(yaml.safe_dump({"rules": [rule]}), encoding="utf-8")
    with pytest.raises(PolicyError, match=words) as caught:
        Policy.from_yaml(path)
    assert str(caught.value).startswith(f"{path}:")
    assert caught.value.rule == "wires"


def test_schema_knows_the_approval_keys() -> None:
    """The JSON Schema lists the new rule keys."""
    rule = Policy.json_schema()["properties"]["rules"]["items"]["properties"]
    assert {"approvers", "reviewers", "approval_ttl"} <= set(rule)
