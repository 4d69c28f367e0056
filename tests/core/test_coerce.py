"""Arguments coerced by a tool's JSON Schema, as a lax (Pydantic) tool would read them."""

from __future__ import annotations

from typing import Any

import pytest

from aegis.core.coerce import coerce_arguments

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
    assert coerce_arguments(args, SCHEMA) == expected


def test_without_properties_nothing_changes() -> None:
    """No schema, or one without properties: the arguments come back as they are."""
    assert coerce_arguments({"force": "true"}, None) == {"force": "true"}
    assert coerce_arguments({"force": "true"}, {"type": "object"}) == {"force": "true"}
