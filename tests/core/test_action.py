"""Actions: deeply frozen params, value semantics and serialisation."""

from __future__ import annotations

import copy
import json
import pickle
import threading
import uuid
from collections import deque
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import PurePosixPath
from typing import Any

import pytest

from aegis.core.action import Action, FrozenDict, freeze, thaw
from aegis.core.risk import RiskLevel


def test_params_are_frozen() -> None:
    """Assigning to an action's params raises TypeError."""
    action = Action("update", "crm", {"id": 7})
    with pytest.raises(TypeError, match="read-only"):
        action.params["id"] = 8  # type: ignore[index]


def test_nested_params_are_frozen() -> None:
    """Nested mappings are frozen too, and lists become tuples."""
    action = Action("update", "crm", {"fields": {"tier": "gold"}, "tags": ["a"], "ids": {1}})
    with pytest.raises(TypeError):
        action.params["fields"]["tier"] = "free"
    assert action.params["tags"] == ("a",)
    assert action.params["ids"] == frozenset({1})


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.update(a=2),
        lambda p: p.pop("a"),
        lambda p: p.popitem(),
        lambda p: p.setdefault("b", 1),
        lambda p: p.clear(),
        lambda p: p.__delitem__("a"),
        lambda p: p.__ior__({"b": 1}),
    ],
)
def test_every_mutating_method_raises(mutate: Any) -> None:
    """Every dict method that would change params raises TypeError."""
    action = Action("a", "b", {"a": 1})
    with pytest.raises(TypeError):
        mutate(action.params)
    assert action.params == {"a": 1}


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
    """Frozen params serialise with json.dumps like a dict."""
    action = Action("a", "b", {"x": [1, 2], "y": {"z": None}})
    assert json.loads(json.dumps(action.params)) == {"x": [1, 2], "y": {"z": None}}


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
        ((1, "b"), "must be strings"),
        (("a", None), "must be strings"),
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


def test_bytearray_params_become_bytes() -> None:
    """A bytearray param is stored as bytes, so changing the original changes nothing."""
    raw = bytearray(b"rm -rf /tmp/x")
    action = Action("exec", "shell", {"cmd": raw, "args": [bytearray(b"-v")]})
    raw[:] = b"rm -rf /"
    assert action.params["cmd"] == b"rm -rf /tmp/x"
    assert type(action.params["cmd"]) is bytes
    assert action.params["args"] == (b"-v",)


@pytest.mark.parametrize(
    "value",
    [
        "text",
        7,
        1.5,
        True,
        None,
        b"raw",
        2j,
        Decimal("1.10"),
        Fraction(1, 3),
        datetime(2024, 5, 1, 12, tzinfo=UTC),
        date(2024, 5, 1),
        time(12, 30),
        timedelta(minutes=5),
        uuid.UUID(int=7),
        RiskLevel.HIGH,
        PurePosixPath("/tmp/x"),
    ],
)
def test_immutable_scalars_are_kept_as_they_are(value: object) -> None:
    """Values that cannot change are stored as the very same object."""
    assert Action("a", "b", {"v": value}).params["v"] is value


@pytest.mark.parametrize("value", [Box(1), deque([1]), threading.Lock(), {"deep": [Box(2)]}])
def test_values_that_could_change_are_refused(value: object) -> None:
    """Objects that could change after approval raise TypeError naming the param."""
    with pytest.raises(TypeError, match=r"param '(v|deep)' .*could change after approval"):
        Action("a", "b", {"v": value})


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


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.__setitem__("a", 2),
        lambda p: p.update({"a": 2}),
        lambda p: p.setdefault("a", 2),
        lambda p: p.pop("a", None),
        lambda p: p.popitem(),
        lambda p: p.clear(),
        lambda p: p.__ior__({"a": 2}),
    ],
)
def test_empty_params_refuse_every_change(mutate: Any) -> None:
    """The shared empty params raise on every mutating method and stay empty."""
    with pytest.raises(TypeError, match="read-only"):
        mutate(Action("x", "y").params)
    assert Action("x", "y").params == {}


def test_frozen_dict_constructor_freezes_deeply() -> None:
    """FrozenDict(...) freezes its values like freeze does."""
    frozen = FrozenDict({"ids": [1, 2], "raw": bytearray(b"x")}, n={"m": {3}})
    assert frozen == {"ids": (1, 2), "raw": b"x", "n": {"m": frozenset({3})}}
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
