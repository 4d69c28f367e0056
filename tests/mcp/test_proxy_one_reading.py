"""What the server receives is what was decided: raw messages a case-folding server reads otherwise.

The downstream server here decodes JSON as Go's ``encoding/json`` does
(member names matched ignoring case and Unicode folding, the last match
winning) and logs every line it receives, so each test shows what such a
server would have run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp_support import HERE, Files, RawProxy

POLICY = """\
version: "1"
defaults: {risk_level: medium, approval: block}
rules:
  - name: no-secrets
    match: {type: read}
    conditions:
      param_matches: {path: "^/srv/secret"}
    risk_level: critical
    approval: block
  - name: no-force
    match: {type: read}
    conditions:
      param_eq: {force: true}
    risk_level: high
    approval: block
  - name: no-forced-options
    match: {type: read}
    conditions:
      param_eq: {options.force: true}
    risk_level: high
    approval: block
  - name: reads
    match: {type: read}
    risk_level: low
    approval: auto
  - name: no-deletes
    match: {type: delete}
    risk_level: critical
    approval: block
"""


class Folding:
    """The proxy in front of the folding server, and what that server received."""

    def __init__(self, root: Path, policy: str = POLICY) -> None:
        self.files = Files(root, policy)
        self.log = root / "folding.jsonl"
        command = self.files.proxy()
        command = command[: command.index("--") + 1]
        command += [sys.executable, str(HERE / "folding_server.py"), "--log", str(self.log)]
        self.proxy = RawProxy(command, self.files.stderr)

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def ran(self) -> list[tuple[Any, Any]]:
        """The tools the server ran, with the arguments it read."""
        return [(e["ran"], e["arguments"]) for e in self.entries() if "ran" in e]

    def received(self) -> list[dict[str, Any]]:
        """Every message the server received, decoded plainly."""
        return [json.loads(e["raw"]) for e in self.entries() if "raw" in e]


@pytest.fixture
def folding(tmp_path: Path) -> Iterator[Folding]:
    """An initialized proxy whose tools list is known."""
    setup = Folding(tmp_path)
    try:
        setup.proxy.initialize()
        assert "result" in setup.proxy.request("list", "tools/list")
        yield setup
    finally:
        setup.proxy.close()


def _raw(proxy: RawProxy, text: str) -> Any:
    proxy.send(text)
    return proxy.receive()


READ = '"params": {"name": "read", "arguments": {"path": "/srv/readme.txt"}}'
DELETE = '{"name": "delete", "arguments": {"path": "/srv/readme.txt"}}'


@pytest.mark.parametrize(
    "frame",
    [
        # a ping the proxy would pass through, a tools/call to a case-insensitive server
        '{"jsonrpc": "2.0", "id": 5, "method": "ping", "Method": "tools/call", "params": '
        + DELETE
        + "}",
        # a second name for the tool, in another case
        '{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": '
        '{"name": "read", "arguments": {"path": "/srv/readme.txt"}, "Name": "delete"}}',
        # params spelt with a long s (U+017F), which folds to "s"
        '{"jsonrpc": "2.0", "id": 5, "method": "tools/call", '
        + READ
        + ', "param\\u017f": '
        + DELETE
        + "}",
        # the same member twice
        '{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": '
        '{"name": "delete", "name": "read", "arguments": {"path": "/srv/readme.txt"}}}',
        # an argument the policy reads, and its look-alike the server reads last
        '{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "read", '
        '"arguments": {"path": "/srv/readme.txt", "Path": "/srv/secret/key.txt"}}}',
        # an argument named with the Kelvin sign (U+212A), folding to "k", next to "k"
        '{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "read", '
        '"arguments": {"path": "/srv/readme.txt", "k": 1, "\\u212a": 2}}}',
    ],
)
def test_ambiguous_members_are_refused_before_anything_reaches_the_server(
    folding: Folding, frame: str
) -> None:
    """A message a case-insensitive decoder reads differently is refused under its id."""
    before = len(folding.received())
    reply = _raw(folding.proxy, frame)
    assert reply["id"] == 5
    assert reply["error"]["code"] in (-32600, -32602)
    assert folding.proxy.request("alive", "ping")["result"] == {}
    assert folding.ran() == []
    # only the ping reached the server
    assert [m.get("method") for m in folding.received()[before:]] == ["ping"]


def test_a_ping_carrying_a_tool_call_is_recorded_as_refused(folding: Folding) -> None:
    """The refused ping-form call lands in the audit trail as a blocked delete."""
    _raw(
        folding.proxy,
        '{"jsonrpc": "2.0", "id": 9, "method": "ping", "Method": "tools/call", "params": '
        + DELETE
        + "}",
    )
    folding.proxy.request("alive", "ping")
    [record] = folding.files.records()
    assert (record["action_type"], record["result_status"]) == ("delete", "blocked")
    assert "ambiguous" in record["reason"]


def test_the_server_receives_the_proxys_own_serialization(folding: Folding) -> None:
    """Unknown members at any level of a call are not forwarded; the decided ones are."""
    reply = _raw(
        folding.proxy,
        '{"jsonrpc": "2.0", "id": 6, "method": "tools/call", "extra": {"name": "delete"}, '
        '"params": {"name": "read", "arguments": {"path": "/srv/readme.txt"}, '
        '"_meta": {"progressToken": "p1"}, "tool": "delete"}}',
    )
    assert reply["result"]["content"][0]["text"] == "ran read"
    reply = _raw(folding.proxy, '{"jsonrpc": "2.0", "id": 7, "method": "ping", "x": 1}')
    assert reply["result"] == {}
    call, ping = folding.received()[-2:]
    assert set(call) == {"jsonrpc", "id", "method", "params"}
    assert call["params"] == {
        "name": "read",
        "arguments": {"path": "/srv/readme.txt"},
        "_meta": {"progressToken": "p1"},
    }
    assert set(ping) == {"jsonrpc", "id", "method"}
    assert folding.ran() == [("read", {"path": "/srv/readme.txt"})]


def test_arguments_are_decided_and_forwarded_as_the_input_schema_types_them(
    folding: Folding,
) -> None:
    """force: "yes" is the boolean true the rule names; count: "3" reaches the server as 3."""
    blocked = folding.proxy.request(
        8, "tools/call", {"name": "read", "arguments": {"path": "/srv/a", "force": "yes"}}
    )
    assert blocked["result"]["isError"] is True
    allowed = folding.proxy.request(
        9,
        "tools/call",
        {"name": "read", "arguments": {"path": "/srv/a", "force": "no", "count": "3"}},
    )
    assert allowed["result"]["content"][0]["text"] == "ran read"
    assert folding.ran() == [("read", {"path": "/srv/a", "force": False, "count": 3})]
    rules = [(r["matched_rule"], r["result_status"]) for r in folding.files.records()]
    assert rules == [("no-force", "blocked"), ("reads", "success")]


@pytest.fixture
def unlisted(tmp_path: Path) -> Iterator[Folding]:
    """An initialized proxy whose client never asked for the tools list."""
    setup = Folding(tmp_path)
    try:
        setup.proxy.initialize()
        yield setup
    finally:
        setup.proxy.close()


def test_a_call_before_any_tools_list_is_read_as_the_tools_schema_reads_it(
    unlisted: Folding,
) -> None:
    """Without a tools/list from the client, "Force" is still the force a folding server reads."""
    reply = unlisted.proxy.request(
        3, "tools/call", {"name": "read", "arguments": {"path": "/srv/a", "Force": True}}
    )
    assert reply["error"]["code"] == -32602
    assert unlisted.ran() == []
    allowed = unlisted.proxy.request(
        4, "tools/call", {"name": "read", "arguments": {"path": "/srv/a", "count": "3"}}
    )
    assert allowed["result"]["content"][0]["text"] == "ran read"
    assert unlisted.ran() == [("read", {"path": "/srv/a", "count": 3})]


def test_a_nested_lookalike_argument_is_refused(folding: Folding) -> None:
    """A nested member a case-insensitive server reads as a ruled field is refused, not run."""
    reply = folding.proxy.request(
        5,
        "tools/call",
        {"name": "read", "arguments": {"path": "/srv/a", "options": {"Force": True}}},
    )
    assert reply["error"]["code"] == -32602
    assert folding.ran() == []
    allowed = folding.proxy.request(
        6,
        "tools/call",
        {"name": "read", "arguments": {"path": "/srv/a", "options": {"force": False}}},
    )
    assert allowed["result"]["content"][0]["text"] == "ran read"


def test_a_nested_model_under_a_ref_is_decided_and_forwarded_as_typed(folding: Folding) -> None:
    """options.force under a $ref: "yes" is the true a rule blocks, "no" runs as false."""
    blocked = folding.proxy.request(
        5,
        "tools/call",
        {"name": "read", "arguments": {"path": "/srv/a", "options": {"force": "yes"}}},
    )
    assert blocked["result"]["isError"] is True
    allowed = folding.proxy.request(
        6,
        "tools/call",
        {"name": "read", "arguments": {"path": "/srv/a", "options": {"force": "no"}}},
    )
    assert allowed["result"]["content"][0]["text"] == "ran read"
    assert folding.ran() == [("read", {"path": "/srv/a", "options": {"force": False}})]
    rules = [(r["matched_rule"], r["result_status"]) for r in folding.files.records()]
    assert rules == [("no-forced-options", "blocked"), ("reads", "success")]


def test_a_lookalike_inside_a_map_of_models_is_refused(folding: Folding) -> None:
    """A model under additionalProperties (a map of models) is read for look-alikes too."""
    reply = folding.proxy.request(
        8,
        "tools/call",
        {"name": "read", "arguments": {"path": "/srv/a", "named": {"a": {"Force": True}}}},
    )
    assert reply["error"]["code"] == -32602
    assert folding.ran() == []
    allowed = folding.proxy.request(
        9,
        "tools/call",
        {"name": "read", "arguments": {"path": "/srv/a", "named": {"a": {"force": "no"}}}},
    )
    assert allowed["result"]["content"][0]["text"] == "ran read"
    assert folding.ran() == [("read", {"path": "/srv/a", "named": {"a": {"force": False}}})]


def test_an_argument_under_a_ref_outside_the_schema_is_refused_and_recorded(
    folding: Folding,
) -> None:
    """A value the tool reads by a remote schema is refused, named, recorded, never run."""
    reply = folding.proxy.request(
        7,
        "tools/call",
        {"name": "read", "arguments": {"path": "/srv/a", "remote": {"force": "yes"}}},
    )
    assert reply["error"]["code"] == -32602
    assert "remote" in reply["error"]["message"]
    assert folding.ran() == []
    [record] = folding.files.records()
    assert (record["action_type"], record["result_status"]) == ("read", "blocked")
    assert "cannot be read" in record["reason"]


@pytest.mark.parametrize(
    ("arguments", "member"),
    [
        ('{"path": "/srv/a", "count": 1e400}', "params.arguments.count"),
        (
            '{"path": "/srv/a", "options": {"force": true, "n": -2E+999}}',
            "params.arguments.options.n",
        ),
        ('{"path": "/srv/a", "paths": [1, 1.5e309]}', "params.arguments.paths[1]"),
        # an integer of more digits than Python converts (4300) is refused the same way
        ('{"path": "/srv/a", "count": ' + "7" * 5000 + "}", "params.arguments.count"),
    ],
)
def test_a_number_json_cannot_carry_is_refused_naming_its_member(
    folding: Folding, arguments: str, member: str
) -> None:
    """1e400 overflows to infinity, no JSON value: refused under the id, named, recorded."""
    reply = _raw(
        folding.proxy,
        '{"jsonrpc": "2.0", "id": 8, "method": "tools/call", '
        f'"params": {{"name": "read", "arguments": {arguments}}}}}',
    )
    assert reply["id"] == 8
    assert reply["error"]["code"] == -32602
    assert member in reply["error"]["message"]
    assert folding.proxy.request("alive", "ping")["result"] == {}
    assert folding.ran() == []
    [record] = folding.files.records()
    assert (record["action_type"], record["result_status"]) == ("read", "blocked")


UNLISTED_POLICY = """\
version: "1"
defaults: {risk_level: low, approval: auto}
rules:
  - name: no-secrets
    match: {type: "read*"}
    conditions: {path_under: {path: /srv/secret}}
    risk_level: critical
    approval: block
  - name: no-forced-options
    match: {type: "read*"}
    conditions: {param_eq: {options.force: true}}
    risk_level: high
    approval: block
  - name: no-secret-resources
    match: {type: resources/read}
    conditions: {param_matches: {uri: "^file:///srv/secret/"}}
    risk_level: critical
    approval: block
"""


NARROW_POLICY = """\
version: "1"
defaults: {risk_level: low, approval: auto}
rules:
  - name: no-forced-reads
    match: {type: "read*"}
    conditions: {param_eq: {force: true}}
    risk_level: high
    approval: block
"""


def test_a_lookalike_of_a_name_the_policy_reads_is_refused_where_the_schema_names_less(
    tmp_path: Path,
) -> None:
    """The schema names no "force", but the server binds "Force" into its force field."""
    setup = Folding(tmp_path, NARROW_POLICY)
    try:
        setup.proxy.initialize()
        setup.proxy.request(1, "tools/list", {})
        refused = setup.proxy.request(
            2, "tools/call", {"name": "read_narrow", "arguments": {"path": "/srv/a", "Force": True}}
        )
        assert refused["error"]["code"] == -32602, refused
        # a name no rule reads, and the rule's own name, still pass to be decided
        allowed = setup.proxy.request(
            3, "tools/call", {"name": "read_narrow", "arguments": {"path": "/srv/a", "Mode": 1}}
        )
        assert allowed["result"]["content"][0]["text"] == "ran read_narrow"
        blocked = setup.proxy.request(
            4, "tools/call", {"name": "read_narrow", "arguments": {"path": "/srv/a", "force": True}}
        )
        assert blocked["result"]["isError"] is True, blocked
        assert setup.ran() == [("read_narrow", {"path": "/srv/a", "Mode": 1})]
        outcomes = [(r["action_type"], r["result_status"]) for r in setup.files.records()]
        assert outcomes == [
            ("read_narrow", "blocked"),
            ("read_narrow", "success"),
            ("read_narrow", "blocked"),
        ]
    finally:
        setup.proxy.close()


def test_without_a_schema_lookalikes_of_what_the_policy_reads_are_refused(
    tmp_path: Path,
) -> None:
    """A tool the server does not list: "Path" is still the path a folding server reads."""
    setup = Folding(tmp_path, UNLISTED_POLICY)
    try:
        setup.proxy.initialize()
        for request_id, arguments in enumerate(
            [
                {"Path": "/srv/secret/key.txt"},
                {"path": "/srv/a", "options": {"Force": True}},
                {"path": "/srv/a", "Options": {"force": True}},
            ]
        ):
            reply = setup.proxy.request(
                request_id, "tools/call", {"name": "read_unlisted", "arguments": arguments}
            )
            assert reply["error"]["code"] == -32602, reply
        resource = setup.proxy.request(5, "resources/read", {"URI": "file:///srv/secret/key.txt"})
        assert resource["error"]["code"] == -32602, resource
        # names no rule reads pass in any case
        allowed = setup.proxy.request(
            6, "tools/call", {"name": "read_unlisted", "arguments": {"path": "/srv/a", "Mode": 1}}
        )
        assert allowed["result"]["content"][0]["text"] == "ran read_unlisted"
        assert setup.ran() == [("read_unlisted", {"path": "/srv/a", "Mode": 1})]
        assert "resources/read" not in [m.get("method") for m in setup.received()]
        outcomes = [(r["action_type"], r["result_status"]) for r in setup.files.records()]
        assert outcomes == [("read_unlisted", "blocked")] * 3 + [
            ("resources/read", "blocked"),
            ("read_unlisted", "success"),
        ]
    finally:
        setup.proxy.close()
