"""The proxy's pure parts: JSON-RPC frame checks, and what a policy says of tools and methods."""

from __future__ import annotations

import json

import pytest

from aegis.core.action import Action
from aegis.core.decision import Approval
from aegis.core.policy import Policy
from aegis.mcp._jsonrpc import IdScanner, parse_frame
from aegis.mcp.proxy import blocks_every_call, policy_names_method


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ('{"jsonrpc": "2.0", "id": 1, "method": "ping"}', "request"),
        ('{"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": {}}', "request"),
        ('{"jsonrpc": "2.0", "method": "notifications/initialized"}', "notification"),
        ('{"jsonrpc": "2.0", "id": 1, "result": {}}', "response"),
        ('{"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "x"}}', "response"),
    ],
)
def test_valid_frames_are_classified(frame: str, kind: str) -> None:
    """Requests, notifications and responses are recognised as such."""
    parsed = parse_frame(frame)
    assert (parsed.kind, parsed.replies) == (kind, ())


@pytest.mark.parametrize(
    ("line", "found"),
    [
        (rb'{"jsonrpc": "2.0", "id": 5, "method": "x"}', 5),
        (rb'{"\u0069d": 5, "params": {"id": 7}}', 5),
        (rb'{"params": {"id": 7, "s": "}\"{"}, "id": "a\"b"}', 'a"b'),
        (rb'{"params": {"s": ["\\", {"a": [["]]"]]}]}, "id": 3}', 3),
        (rb'{"x": ["id", {"id": 3, "y": [["]"]]}], "id": -4}', -4),
        (rb'{"id": "\u0061b"}', "ab"),
        (rb'{"id": 1, "ID": 2}', None),
        (rb'{"id": 1, "id": 2}', None),
        (rb'{"\uff29d": 1, "id": 2}', None),
        (rb'{"Id": 1}', None),
        (rb'[{"id": 1}]', None),
        (rb'5 {"id": 1}', None),
        (rb'{"id": true}', None),
        (rb'{"id": 1.5}', None),
        (rb'{"id": {"a": 1}}', None),
    ],
)
def test_the_id_scanner_reads_the_id_as_a_parser_would(line: bytes, found: object) -> None:
    """The top-level id, read with escapes decoded, in any pieces; none when it is ambiguous."""
    for size in (len(line), 1, 2, 3, 7):
        scanner = IdScanner()
        for start in range(0, len(line), size):
            scanner.feed(line[start : start + size])
        assert (scanner.found, type(scanner.found)) == (found, type(found)), size


@pytest.mark.parametrize(
    "frame",
    [
        '{"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "x"}}',
        '{"jsonrpc": "2.0", "id": 1, "result": 5}',
        '{"jsonrpc": "2.0", "id": 1, "error": "x"}',
        '{"jsonrpc": "2.0", "id": 1, "method": ""}',
        "[" * 100000,
        b"\xff\xfe",
    ],
)
def test_invalid_frames_get_one_error(frame: str | bytes) -> None:
    """Contradictory, mistyped, too deep or undecodable frames are refused with one error."""
    parsed = parse_frame(frame)
    assert parsed.message is None
    assert len(parsed.replies) == 1
    assert parsed.replies[0]["error"]["code"] in (-32700, -32600)


def test_a_batch_gets_an_error_per_request() -> None:
    """A batch is answered as an array: one refusal per member with an id."""
    parsed = parse_frame(
        '[{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "method": "x"}, 5]'
    )
    assert parsed.batch is True
    assert [r["id"] for r in parsed.replies] == [1]


@pytest.mark.parametrize(
    ("frame", "request_id", "code", "member"),
    [
        (
            '{"jsonrpc": "2.0", "id": 3, "method": "x", "params": {"a": [0, 1e400]}}',
            3,
            -32602,
            "params.a[1]",
        ),
        ('{"jsonrpc": "2.0", "id": 1e999, "method": "ping"}', None, -32600, "id is 1e999"),
        (
            '{"jsonrpc": "2.0", "id": 4, "id": 5, "method": "x", "params": {"n": -1e400}}',
            None,
            -32602,
            "params.n",
        ),
        (
            '{"jsonrpc": "2.0", "id": 6, "method": "x", "params": {"n": -' + "9" * 5000 + "}}",
            6,
            -32602,
            "params.n is -9999",
        ),
        ('{"jsonrpc": "2.0", "id": ' + "9" * 5000 + ', "method": "ping"}', None, -32600, "id is"),
    ],
)
def test_a_number_past_a_floats_range_is_refused_naming_it(
    frame: str, request_id: int | None, code: int, member: str
) -> None:
    """1e400 is no JSON value the proxy can decide on or send on: refused, named, kept as text."""
    parsed = parse_frame(frame)
    assert parsed.message is None
    [reply] = parsed.replies
    assert (reply["id"], reply["error"]["code"]) == (request_id, code)
    assert member in reply["error"]["message"]
    assert all(json.dumps(m, allow_nan=False) for m in parsed.members)


POLICY = Policy.from_dict(
    {
        "defaults": {"approval": "approve"},
        "rules": [
            {
                "name": "safe-deletes",
                "match": {"type": "delete"},
                "approval": "block",
                "conditions": {"param_eq": {"path": "/"}},
            },
            {"name": "deletes", "match": {"type": "delete"}, "approval": "block"},
            {
                "name": "big-writes",
                "match": {"type": "write"},
                "approval": "block",
                "conditions": {"param_gt": {"size": 10}},
            },
            {"name": "writes", "match": {"type": "write"}, "approval": "auto"},
            {"name": "reads", "match": {"type": "read", "target": "files"}, "approval": "block"},
            {"name": "resources", "match": {"type": "resources/*"}, "approval": "auto"},
        ],
    }
)


@pytest.mark.parametrize(
    ("tool", "target", "hidden"),
    [
        ("delete", "files", True),
        ("write", "files", False),
        ("read", "files", True),
        ("read", "crm", False),
        ("other", "files", False),
    ],
)
def test_blocks_every_call(tool: str, target: str, hidden: bool) -> None:
    """Only a tool whose first unconditional matching rule blocks counts as always blocked."""
    assert blocks_every_call(POLICY, tool, target) is hidden


def test_blocks_every_call_compares_names_as_the_policy_does() -> None:
    """Under match_case: insensitive a tool is judged by the rule the policy would use."""
    policy = Policy.from_dict(
        {
            "match_case": "insensitive",
            "rules": [
                {"name": "reads", "match": {"type": "Read*"}, "approval": "auto"},
                {"name": "rest", "match": {"type": "*"}, "approval": "block"},
            ],
        }
    )
    assert policy.evaluate(Action("read_file", "files")).approval is Approval.AUTO
    assert blocks_every_call(policy, "read_file", "files") is False
    assert blocks_every_call(policy, "DELETE", "files") is True


def test_default_block_blocks_every_unmatched_tool() -> None:
    """With a blocking default, a tool no rule matches is always blocked."""
    assert blocks_every_call(Policy.from_dict({"rules": []}), "anything", "x") is True


@pytest.mark.parametrize(
    ("method", "named"),
    [("resources/read", True), ("resources/list", True), ("prompts/get", False), ("ping", False)],
)
def test_a_rule_names_a_method_only_with_a_slash(method: str, named: bool) -> None:
    """Rules name MCP methods by a type pattern with a '/'; '*' alone names none."""
    assert policy_names_method(POLICY, method) is named
    catch_all = Policy.from_dict({"rules": [{"match": {"type": "*"}, "approval": "block"}]})
    assert policy_names_method(catch_all, method) is False
