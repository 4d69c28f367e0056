"""Actions: deeply frozen params, value semantics and serialisation."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest

from aegis.core.action import Action, FrozenDict, freeze, thaw


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
    """thaw turns frozen params back into dicts, lists and sets."""
    frozen = freeze({"a": [1, {"b": {2}}]})
    assert thaw(frozen) == {"a": [1, {"b": {2}}]}
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
