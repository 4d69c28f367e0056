"""Actions: deeply frozen params, value semantics and serialisation."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import pickle
import re
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from pathlib import PurePosixPath
from typing import Any

import pytest

from aegis.core.action import (
    Action,
    FrozenDict,
    NonFiniteNumber,
    action_digest,
    canonical_json,
    freeze,
    thaw,
)
from aegis.core.decision import Approval
from aegis.core.policy import Policy, PolicyRule
from aegis.core.result import ResultStatus
from aegis.core.risk import RiskLevel


def test_params_are_frozen() -> None:
    """Assigning to an action's params raises TypeError."""
    action = Action("update", "crm", {"id": 7})
    with pytest.raises(TypeError):
        action.params["id"] = 8  # type: ignore[index]


def test_nested_params_are_frozen() -> None:
    """Nested mappings are frozen too, and lists become tuples."""
    action = Action("update", "crm", {"fields": {"tier": "gold"}, "tags": ["a"], "ids": {1}})
    with pytest.raises(TypeError):
        action.params["fields"]["tier"] = "free"
    assert action.params["tags"] == ("a",)
    assert action.params["ids"] == frozenset({1})


MUTATIONS = [
    lambda p: p.update(a=2),
    lambda p: p.pop("a"),
    lambda p: p.popitem(),
    lambda p: p.setdefault("b", 1),
    lambda p: p.clear(),
    lambda p: p.__delitem__("a"),
    lambda p: p.__ior__({"b": 1}),
    lambda p: p.__setitem__("a", 2),
    # the routes around the mapping's own methods: dict's, and the attributes
    lambda p: dict.__setitem__(p, "a", 1_000_000),
    lambda p: dict.update(p, a=1_000_000),
    lambda p: dict.__init__(p, a=1_000_000),
    dict.clear,
    lambda p: p.__init__({"a": 1_000_000}),
    lambda p: setattr(p, "_data", {"a": 1_000_000}),
    lambda p: delattr(p, "_data"),
]


@pytest.mark.parametrize("mutate", MUTATIONS)
def test_every_mutating_route_fails(mutate: Any) -> None:
    """No dict method, attribute or re-init changes params; the approver's 50 stays 50."""
    action = Action("a", "b", {"a": 1})
    with contextlib.suppress(TypeError, AttributeError):
        mutate(action.params)
    assert action.params == {"a": 1}
    assert dict(action.params) == {"a": 1}


def test_params_are_a_mapping_not_a_dict() -> None:
    """FrozenDict is a read-only Mapping and deliberately not a dict subclass."""
    params = Action("a", "b", {"a": 1}).params
    assert isinstance(params, Mapping)
    assert not isinstance(params, dict)
    assert params == {"a": 1}
    assert {"a": 1} == params  # noqa: SIM300  # the reflected comparison is the point
    assert params.get("a") == 1
    assert params.get("zz") is None
    assert list(params.items()) == [("a", 1)]
    assert (params | {"b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(TypeError, match="cannot be subclassed"):
        type("Sneaky", (FrozenDict,), {})


def test_caller_dict_changes_do_not_leak() -> None:
    """Changing the dict the action was built from does not change the action."""
    source: dict[str, Any] = {"amount": 5, "nested": {"x": 1}}
    action = Action("refund", "stripe", source)
    source["amount"] = 500
    source["nested"]["x"] = 2
    assert action.params == {"amount": 5, "nested": {"x": 1}}


def test_dict_of_params_is_a_mutable_copy() -> None:
    """dict(action.params) gives a plain dict the caller may change."""
    action = Action("a", "b", {"x": 1})
    copied = dict(action.params)
    copied["x"] = 2
    assert action.params["x"] == 1


def test_thaw_gives_plain_nested_values() -> None:
    """thaw turns frozen params back into dicts and lists (sets become sorted lists)."""
    frozen = freeze({"a": [1, {"b": {2}}]})
    assert thaw(frozen) == {"a": [1, {"b": [2]}]}
    assert type(thaw(frozen)["a"]) is list


def test_params_are_json_serialisable() -> None:
    """Frozen params serialise through thaw() and canonical_json()."""
    action = Action("a", "b", {"x": [1, 2], "y": {"z": None}})
    assert json.loads(json.dumps(thaw(action.params))) == {"x": [1, 2], "y": {"z": None}}
    assert json.loads(canonical_json(action))["params"] == {"x": [1, 2], "y": {"z": None}}


def test_actions_are_hashable_and_compare_by_value() -> None:
    """Equal actions are equal and hash alike, so they work in sets and as keys."""
    one = Action("a", "b", {"x": [1], "y": {"z": 1}})
    two = Action("a", "b", {"y": {"z": 1}, "x": (1,)})
    assert one == two
    assert hash(one) == hash(two)
    assert len({one, two}) == 1
    assert one != Action("a", "b", {"x": [2]})


def test_empty_params_default() -> None:
    """An action without params has an empty frozen mapping."""
    action = Action("read", "crm")
    assert action.params == {}
    assert isinstance(action.params, FrozenDict)


def test_action_is_frozen() -> None:
    """An action's fields cannot be reassigned."""
    action = Action("a", "b")
    with pytest.raises(AttributeError):
        action.type = "c"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, "b"), "type must be a string"),
        (("a", None), "target must be a string"),
        (("a", "b", {}, 7), "description must be a string"),
        (("a", "b", ["x"]), "must be a mapping"),
    ],
)
def test_invalid_actions_raise_type_error(args: tuple[Any, ...], message: str) -> None:
    """Non-string type/target or non-mapping params raise TypeError."""
    with pytest.raises(TypeError, match=message):
        Action(*args)


def test_str_shows_type_target_and_description() -> None:
    """str(action) reads as 'type -> target - description'."""
    assert str(Action("read", "crm")) == "read -> crm"
    assert str(Action("read", "crm", description="list leads")) == "read -> crm - list leads"


def test_frozen_dict_copies_and_pickles() -> None:
    """FrozenDict survives copy, deepcopy and pickle unchanged."""
    params = Action("a", "b", {"x": {"y": 1}}).params
    assert copy.copy(params) is params
    assert copy.deepcopy(params) is params
    restored = pickle.loads(pickle.dumps(params))
    assert restored == params
    assert isinstance(restored, FrozenDict)
    assert repr(params).startswith("FrozenDict(")


class Box:
    """A mutable object that is not a container."""

    def __init__(self, value: int) -> None:
        self.value = value


@pytest.mark.parametrize("value", ["text", 7, 1.5, True, None, 2**70])
def test_plain_scalars_are_kept_as_they_are(value: object) -> None:
    """Values of the exact JSON scalar types are stored as the very same object."""
    assert Action("a", "b", {"v": value}).params["v"] is value


class LyingInt(int):
    """An int that says it is small to every comparison."""

    def __gt__(self, other: object) -> bool:
        return False

    def __ge__(self, other: object) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = int.__hash__


class LyingStr(str):
    """A str that equals nothing and prints as something harmless."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return "harmless"


class LyingFloat(float):
    """A float that is never greater than anything."""

    def __gt__(self, other: object) -> bool:
        return False


class ElsewherePath(PurePosixPath):
    """A path that shows one place and opens another."""

    def __fspath__(self) -> str:
        return "/etc/shadow"


class Colour(Enum):
    """A plain enum: no plain value is obvious for it."""

    RED = "red"


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (LyingInt(1_000_000), 1_000_000),
        (LyingStr("rm -rf /"), "rm -rf /"),
        (LyingFloat(9e9), 9e9),
        (RiskLevel.HIGH, 3),
        (ResultStatus.DENIED, "denied"),
        (ElsewherePath("/tmp/x"), "/tmp/x"),
        (PurePosixPath("/tmp/y"), "/tmp/y"),
    ],
)
def test_subclasses_become_their_plain_value(value: object, plain: object) -> None:
    """Subclasses of str/int/float, IntEnum/StrEnum members and paths become exact plain values."""
    stored = Action("a", "b", {"v": value, "nested": {"list": [value]}}).params
    assert type(stored["v"]) is type(plain)
    assert stored["v"] == plain
    assert type(stored["nested"]["list"][0]) is type(plain)


def test_container_subclasses_become_plain_containers() -> None:
    """dict/list/tuple subclasses and other Mappings become FrozenDict and tuples."""

    class MyDict(dict[str, Any]):
        def items(self) -> Any:  # a lie that dict's own view ignores
            return [("amount", 1)]

    class MyList(list[Any]):
        def __iter__(self) -> Any:
            return iter([1])

    stored = Action("a", "b", {"d": MyDict(amount=900), "l": MyList([900])}).params
    assert type(stored["d"]) is FrozenDict
    assert stored["d"] == {"amount": 900}
    assert stored["l"] == (900,)
    assert Action("a", "b", MyDict(amount=900)).params == {"amount": 900}


def test_block_rules_hold_against_lying_values() -> None:
    """A lying int or str subclass cannot slip past a block rule (7 of 7 used to pass)."""
    policy = Policy(
        [
            PolicyRule("pay", "*", "critical", "block", "big", {"param_gt": {"amount": 500}}),
            PolicyRule("pay", "*", "critical", "block", "eq", {"param_eq": {"to": "mallory"}}),
            PolicyRule("pay", "*", "critical", "block", "in", {"param_in": {"to": ["eve"]}}),
            PolicyRule(
                "pay", "*", "critical", "block", "re", {"param_matches": {"memo": "secret"}}
            ),
            PolicyRule("pay", "*", "low", "auto", "rest"),
        ]
    )
    cases = [
        {"amount": LyingInt(1_000_000)},
        {"amount": LyingFloat(1e9)},
        {"to": LyingStr("mallory")},
        {"to": LyingStr("eve")},
        {"memo": LyingStr("the secret plan")},
        {"amount": {"nested": LyingInt(1)}, "to": LyingStr("mallory")},
        {"to": ElsewherePath("mallory")},
    ]
    for params in cases:
        assert policy.evaluate(Action("pay", "bank", params)).approval is Approval.BLOCK, params


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (b"raw", "decode it"),
        (bytearray(b"rm -rf /tmp/x"), "decode it"),
        (2j, "real and imaginary"),
        (Decimal("1.10"), "str\\(value\\)"),
        (Fraction(1, 3), "str\\(value\\)"),
        (datetime(2024, 5, 1, 12, tzinfo=UTC), "isoformat"),
        (date(2024, 5, 1), "isoformat"),
        (time(12, 30), "isoformat"),
        (timedelta(minutes=5), "total_seconds"),
        (uuid.UUID(int=7), "str\\(value\\)"),
        (Colour.RED, "Colour.RED.value"),
        (Box(1), "model_dump"),
        (deque([1]), "model_dump"),
        (threading.Lock(), "model_dump"),
    ],
)
def test_values_that_are_not_plain_data_are_refused(value: object, hint: str) -> None:
    """Anything but plain JSON-like data raises TypeError naming the param and the fix."""
    with pytest.raises(TypeError, match=rf"param 'v' is a \w+, not plain JSON-like data.*{hint}"):
        Action("a", "b", {"v": value})
    with pytest.raises(TypeError, match=r"param 'deep'"):
        Action("a", "b", {"deep": [value]})


@pytest.mark.parametrize("key", [(1, 2), b"k", Colour.RED])
def test_keys_must_be_strings(key: object) -> None:
    """A mapping key that is not text (or a number, bool or None) raises TypeError."""
    with pytest.raises(TypeError, match="param names must be strings"):
        Action("a", "b", {key: 1})


def test_text_fields_are_exact_strings() -> None:
    """type, target and description become exact str; a None description becomes ""."""
    action = Action(LyingStr("delete"), LyingStr("prod"), {}, None)  # type: ignore[arg-type]
    assert (type(action.type), type(action.target), action.description) == (str, str, "")
    assert (action.type, action.target) == ("delete", "prod")
    assert Action("a", "b", description=LyingStr("d")).description.__class__ is str


def test_keys_that_collide_as_strings_raise_type_error() -> None:
    """Keys such as 1 and '1' would silently merge, so they raise TypeError naming them."""
    with pytest.raises(TypeError, match=r"1 and '1' are both '1'"):
        Action("a", "b", {1: "one", "1": "uno"})
    with pytest.raises(TypeError, match="'1'"):
        Action("a", "b", {"nested": {"1": "uno", 1: "one"}})


def test_non_string_keys_become_strings() -> None:
    """Keys that do not collide are converted to strings."""
    assert Action("a", "b", {1: "one", None: 0}).params == {"1": "one", "None": 0}


@pytest.mark.parametrize("params", [[], (), None, "", 0, [("a", 1)]])
def test_non_mapping_params_raise_even_when_empty(params: object) -> None:
    """Params that are not a mapping raise TypeError, even an empty list."""
    with pytest.raises(TypeError, match="must be a mapping"):
        Action("a", "b", params)  # type: ignore[arg-type]


def test_reinit_cannot_change_the_shared_empty_params() -> None:
    """Calling __init__ again on params changes nothing, not even the shared empty mapping."""
    Action("x", "y").params.__init__(evil=1)  # type: ignore[misc]
    full = Action("x", "y", {"a": 1})
    full.params.__init__({"a": 2})  # type: ignore[misc]
    assert Action("x", "y").params == {}
    assert full.params == {"a": 1}


@pytest.mark.parametrize("mutate", MUTATIONS)
def test_empty_params_refuse_every_change(mutate: Any) -> None:
    """The shared empty params refuse every route of change and stay empty."""
    with contextlib.suppress(TypeError, AttributeError):
        mutate(Action("x", "y").params)
    assert Action("x", "y").params == {}


def test_frozen_dict_constructor_freezes_deeply() -> None:
    """FrozenDict(...) freezes its values like freeze does."""
    frozen = FrozenDict({"ids": [1, 2], "raw": LyingStr("x")}, n={"m": {3}})
    assert frozen == {"ids": (1, 2), "raw": "x", "n": {"m": frozenset({3})}}
    assert isinstance(frozen["n"], FrozenDict)
    assert Action("a", "b", frozen).params is frozen


def test_frozen_dict_fromkeys() -> None:
    """FrozenDict.fromkeys builds a FrozenDict instead of failing on __setitem__."""
    frozen = FrozenDict.fromkeys(["a", "b"], [0])
    assert frozen == {"a": (0,), "b": (0,)}
    assert isinstance(frozen, FrozenDict)


def test_empty_and_built_frozen_dicts_copy_and_pickle() -> None:
    """The empty params and a constructed FrozenDict survive copy and pickle."""
    for params in (Action("a", "b").params, FrozenDict(a=[1])):
        assert copy.copy(params) is params
        restored = pickle.loads(pickle.dumps(params))
        assert restored == params
        assert isinstance(restored, FrozenDict)


def test_thaw_turns_frozensets_into_sorted_lists() -> None:
    """A frozenset of tuples thaws to a sorted list of lists, which JSON accepts."""
    action = Action("a", "b", {"pairs": {(2, "b"), (1, "a")}})
    thawed = thaw(action.params)
    assert thawed == {"pairs": [[1, "a"], [2, "b"]]}
    assert json.loads(json.dumps(thawed)) == thawed


def test_thaw_keeps_unsortable_frozensets_in_iteration_order() -> None:
    """Elements that cannot be ordered are listed in the frozenset's own order."""
    frozen = frozenset({1, "a", (None,)})
    assert thaw(frozen) == [thaw(v) for v in frozen]


@pytest.mark.parametrize(
    "action",
    [
        Action("read", "crm"),
        Action('qu"ote', "tärget\n", {"b": [1, {"z": [2.5, None, True]}], "a": "\u202e"}, "dé"),
        Action("x", "y", {"nested": {"deeper": {"n": -(2**70)}}, "e": [], "f": {}}),
    ],
)
def test_canonical_json_is_sorted_compact_json(action: Action) -> None:
    """canonical_json gives exactly json.dumps's sorted, compact text of the plain action."""
    expected = json.dumps(
        {
            "type": action.type,
            "target": action.target,
            "params": thaw(action.params),
            "description": action.description,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert canonical_json(action) == expected


def test_digest_of_huge_ints_and_sets_is_stable() -> None:
    """An int past the 4,300-digit limit has a digest, and a set's digest ignores its order."""
    huge = Action("pay", "bank", {"amount": 10**5000})
    assert action_digest(huge) != action_digest(Action("pay", "bank", {"amount": 10**5000 + 1}))
    assert '"__aegis_int__"' in canonical_json(huge)
    assert action_digest(Action("a", "b", {"s": {"x", "y", "z"}})) == action_digest(
        Action("a", "b", {"s": frozenset(["z", "y", "x"])})
    )


_HUGE = 10**5000
_MARK = {"__aegis_int__": hex(_HUGE)}


@pytest.mark.parametrize(
    ("params", "look_alike"),
    [
        ({"n": _HUGE}, {"n": _MARK}),
        ({"n": [1, -_HUGE]}, {"n": [1, {"__aegis_int__": hex(-_HUGE)}]}),
        ({"n": {"m": _HUGE}}, {"n": {"m": _MARK}}),
        ({"n": {_HUGE}}, {"n": [_MARK]}),
        ({"n": _MARK}, {"n": {"__aegis_map__": _MARK}}),
    ],
    ids=["param", "in a list", "nested", "in a set", "an escape's look-alike"],
)
def test_params_shaped_like_an_int_too_long_to_print_have_their_own_digest(
    params: dict[str, Any], look_alike: dict[str, Any]
) -> None:
    """An int past the digit limit is written as a mapping in canonical JSON; params holding
    a mapping of that shape are another action, with another text and digest."""
    one, other = Action("pay", "bank", params), Action("pay", "bank", look_alike)
    assert one != other
    assert canonical_json(one) != canonical_json(other)
    assert action_digest(one) != action_digest(other)


def test_a_policy_holding_a_mapping_shaped_like_a_mark_has_its_own_digest() -> None:
    """A policy's digest writes an int past the digit limit as canonical JSON does; a policy
    comparing a mapping of that shape instead has another digest."""

    def policy(value: object) -> Policy:
        rule = {"name": "r", "match": {"type": "pay"}, "conditions": {"param_eq": {"n": value}}}
        return Policy.from_dict({"rules": [{**rule, "approval": "block"}]})

    assert policy(_HUGE).digest != policy(_MARK).digest
    assert policy(_HUGE).digest == policy(_HUGE).digest


def test_repr_of_an_action_holding_huge_ints_abbreviates_them() -> None:
    """repr() works for ints past the 4,300-digit limit, anywhere in params; hashing is unchanged.

    The Action built, but its repr raised ValueError, so logging or
    printing it (a traceback's locals, a debugger) failed.
    """
    huge = 7 * 16**5000 + 0xABCDEF
    action = Action("pay", "bank", {"amount": huge, "list": [1, -huge], "set": {huge}})
    digest, json_text = action_digest(action), canonical_json(action)
    text = repr(action)
    assert len(text) < 1000
    for part in ("'pay'", "'bank'", "0x7000", "abcdef", "-0x7000", str(huge.bit_length())):
        assert part in text
    assert action.params["amount"] == huge  # what is stored is untouched
    assert action_digest(action) == digest
    assert canonical_json(action) == json_text
    small = Action("pay", "bank", {"amount": 10**20})
    assert repr(small.params) == "FrozenDict({'amount': 100000000000000000000})"


def test_params_nested_too_deeply_are_refused() -> None:
    """Params nested past MAX_DEPTH are a TypeError naming the param, not a RecursionError."""
    deep: Any = 1
    for _ in range(900):
        deep = {"a": deep}
    with pytest.raises(TypeError, match="param 'a' is nested more than 100 levels deep"):
        Action("a", "b", {"a": deep})
    shallow: Any = [1]
    for _ in range(99):
        shallow = {"a": shallow}
    assert Action("a", "b", {"a": shallow}).params["a"]["a"]


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"amount": json.loads("1e400")}, "amount"),
        ({"amount": -math.inf}, "amount"),
        ({"order": {"lines": [1.5, math.nan]}}, "order.lines[1]"),
        ({"limits": ({"max": math.inf},)}, "limits[0].max"),
    ],
)
def test_a_non_finite_number_is_refused_naming_its_path(params: dict[str, Any], path: str) -> None:
    """Infinity and NaN (as json.loads reads 1e400 and NaN) are no value a rule can judge."""
    with pytest.raises(ValueError, match=re.escape(f"param {path!r} is not a finite number")):
        Action("refund", "billing", params)
    with pytest.raises(NonFiniteNumber):
        FrozenDict(params)
    with pytest.raises(NonFiniteNumber):
        freeze(params)


def test_a_float_subclass_holding_infinity_is_refused() -> None:
    """A float subclass is read as its plain value, and that value is checked too."""

    class Amount(float):
        pass

    with pytest.raises(NonFiniteNumber, match="param 'amount'"):
        Action("refund", "billing", {"amount": Amount("inf")})
    assert Action("refund", "billing", {"amount": Amount(2.5)}).params["amount"] == 2.5
