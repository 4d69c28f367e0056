"""Arguments coerced by a tool's JSON Schema, as a lax (Pydantic) tool would read them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import BaseModel

from aegis.core.coerce import MAX_DEPTH, UnreadableSchema, coerce_arguments

SCHEMA = {
    "type": "object",
    "properties": {
        "force": {"type": "boolean"},
        "count": {"type": "integer"},
        "amount": {"type": "number"},
        "name": {"type": "string"},
        "maybe": {"type": ["boolean", "null"]},
        "ids": {"type": "array", "items": {"type": "integer"}},
        "nested": {"type": "object", "properties": {"on": {"type": "boolean"}}},
        "either": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    },
}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"force": "true"}, {"force": True}),
        ({"force": "Yes"}, {"force": True}),
        ({"force": 1}, {"force": True}),
        ({"force": "off"}, {"force": False}),
        ({"force": "maybe"}, {"force": "maybe"}),
        ({"count": "7"}, {"count": 7}),
        ({"count": 7.0}, {"count": 7}),
        ({"count": 7.5}, {"count": 7.5}),
        # more digits than Python converts to an int: left a string, not an internal error
        ({"count": "9" * 5000}, {"count": "9" * 5000}),
        ({"amount": "9" * 5000}, {"amount": "9" * 5000}),
        ({"amount": "2.5"}, {"amount": 2.5}),
        ({"amount": "3"}, {"amount": 3}),
        ({"amount": "inf"}, {"amount": "inf"}),
        ({"name": 5}, {"name": 5}),
        ({"maybe": None}, {"maybe": None}),
        ({"maybe": "no"}, {"maybe": False}),
        ({"ids": ["1", 2]}, {"ids": [1, 2]}),
        ({"nested": {"on": "1"}}, {"nested": {"on": True}}),
        ({"either": "4"}, {"either": 4}),
        ({"unknown": "true"}, {"unknown": "true"}),
    ],
)
def test_values_are_coerced_as_the_schema_types_them(
    args: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Each JSON type converts what a lax tool converts, and leaves the rest as it was."""
    assert json.dumps(coerce_arguments(args, SCHEMA)) == json.dumps(expected)


def test_without_properties_nothing_changes() -> None:
    """No schema, or one without properties: the arguments come back as they are."""
    assert coerce_arguments({"force": "true"}, None) == {"force": "true"}
    assert coerce_arguments({"force": "true"}, {"type": "object"}) == {"force": "true"}


def _exactly(value: Any) -> str:
    # Type-exact: True and 1 are different readings, although Python says they are equal.
    return json.dumps(value, sort_keys=True)


class Options(BaseModel):
    """A nested model: Pydantic writes it once under $defs and refers to it."""

    force: bool = False
    count: int = 0


class Node(BaseModel):
    """A model that holds itself: its schema refers to itself."""

    name: str
    child: Node | None = None


class Args(BaseModel):
    """A tool's arguments with nested models in every place a schema can put them."""

    path: str = ""
    options: Options | None = None
    maybe: Options | None = None
    many: list[Options] = []
    named: dict[str, Options] = {}
    tree: Node | None = None


ARGS_SCHEMA = Args.model_json_schema()


@pytest.mark.parametrize(
    "args",
    [
        {"options": {"force": "true"}},
        {"options": {"force": "yes", "count": "3"}},
        {"maybe": {"force": 1}},
        {"maybe": None},
        {"many": [{"force": "on"}, {"count": 2.0}]},
        {"named": {"a": {"force": "off"}, "b": {"count": "9"}}},
        {"tree": {"name": "a", "child": {"name": "b", "child": {"name": "c"}}}},
        {"path": "/srv/a", "options": {"force": "f"}},
    ],
)
def test_nested_models_under_refs_are_read_as_pydantic_reads_them(args: dict[str, Any]) -> None:
    """Values under $ref, anyOf, items and additionalProperties come out as the model has them."""
    seen_by_tool = Args.model_validate(args).model_dump(mode="json", exclude_unset=True)
    assert _exactly(coerce_arguments(args, ARGS_SCHEMA)) == _exactly(seen_by_tool)


def test_a_nested_value_in_a_recursive_model_is_coerced() -> None:
    """A deep child of a self-referring model is read by the model: "true" there is a boolean."""
    schema = {
        "type": "object",
        "properties": {"root": {"$ref": "#/definitions/Node"}},
        "definitions": {
            "Node": {
                "type": "object",
                "properties": {
                    "force": {"type": "boolean"},
                    "child": {"allOf": [{"$ref": "#/definitions/Node"}]},
                },
            }
        },
    }
    args = {"root": {"child": {"child": {"force": "true"}}}}
    assert coerce_arguments(args, schema) == {"root": {"child": {"child": {"force": True}}}}


def test_a_schema_that_is_itself_a_ref_is_followed() -> None:
    """A root schema written as a $ref to its definition reads the arguments by that definition."""
    body = {k: v for k, v in ARGS_SCHEMA.items() if k != "$defs"}
    schema = {"$ref": "#/$defs/Args", "$defs": {**ARGS_SCHEMA["$defs"], "Args": body}}
    coerced = coerce_arguments({"options": {"force": "1"}}, schema)
    assert _exactly(coerced) == _exactly({"options": {"force": True}})


BROKEN = {
    "type": "object",
    "properties": {
        "remote": {"$ref": "https://schemas.example/options.json"},
        "missing": {"$ref": "#/$defs/Nowhere"},
        "looping": {"$ref": "#/$defs/A"},
        "listed": {"type": "array", "items": {"$ref": "#/$defs/Nowhere"}},
        "plain": {"type": "boolean"},
    },
    "$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}},
}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"remote": {"force": "true"}}, "remote"),
        ({"missing": "true"}, "missing"),
        ({"looping": "true"}, "looping"),
        ({"listed": ["true"]}, "listed[0]"),
    ],
)
def test_a_value_under_a_ref_that_cannot_be_followed_is_refused(
    args: dict[str, Any], named: str
) -> None:
    """A remote, missing or looping $ref leaves the tool's reading unknown: refused, named."""
    with pytest.raises(UnreadableSchema, match=re.escape(named)):
        coerce_arguments(args, BROKEN)


def test_a_broken_ref_no_argument_uses_refuses_nothing() -> None:
    """Only a value under the unreadable part is refused; the other arguments are read as usual."""
    coerced = coerce_arguments({"plain": "yes", "listed": []}, BROKEN)
    assert _exactly(coerced) == _exactly({"plain": True, "listed": []})


def test_values_nested_past_the_depth_bound_are_refused() -> None:
    """A self-referring schema reads a value to MAX_DEPTH levels, and refuses one deeper."""
    schema = Node.model_json_schema()
    shallow: dict[str, Any] = {"name": "leaf"}
    for _ in range(10):
        shallow = {"name": "n", "child": shallow}
    assert coerce_arguments(shallow, schema) == shallow
    deep: dict[str, Any] = {"name": "leaf"}
    for _ in range(MAX_DEPTH + 1):
        deep = {"name": "n", "child": deep}
    with pytest.raises(UnreadableSchema, match="deeper"):
        coerce_arguments(deep, schema)


def test_a_value_two_union_options_read_differently_is_left_as_it_is() -> None:
    """Two object options reading "1" as a boolean and as an integer: neither is guessed."""
    schema = {
        "type": "object",
        "properties": {
            "either": {
                "anyOf": [
                    {"type": "object", "properties": {"x": {"type": "boolean"}}},
                    {"type": "object", "properties": {"x": {"type": "integer"}}},
                ]
            }
        },
    }
    assert _exactly(coerce_arguments({"either": {"x": "1"}}, schema)) == _exactly(
        {"either": {"x": "1"}}
    )
