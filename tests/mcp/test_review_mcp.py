"""Review: the proxy governs a method as the policy names it, in the policy's case rules."""

from __future__ import annotations

import pytest

from aegis import Policy
from aegis.mcp.proxy import policy_names_method


@pytest.mark.parametrize(
    ("match_case", "pattern", "named"),
    [
        ("insensitive", "Resources/*", True),
        ("insensitive", "RESOURCES/READ", True),
        ("insensitive", "prompts/*", False),
        (None, "Resources/*", False),
        (None, "resources/*", True),
    ],
)
def test_a_method_is_named_as_the_policy_compares_names(
    match_case: str | None, pattern: str, named: bool
) -> None:
    """Under match_case: insensitive a rule for Resources/* governs resources/read; else not."""
    data: dict[str, object] = {
        "rules": [{"name": "r", "match": {"type": pattern}, "approval": "block"}]
    }
    if match_case is not None:
        data["match_case"] = match_case
    assert policy_names_method(Policy.from_dict(data), "resources/read") is named
