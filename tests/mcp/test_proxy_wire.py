"""Raw JSON-RPC on the proxy's stdio: each odd frame gets a deliberate answer; none passes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp_support import Files, RawProxy, raw_proxy

BLOCKED_CALL = {"name": "delete", "arguments": {"path": "/srv/readme.txt"}}
#: enough to take a frame past the module's 4096-byte limit
PAD = "a" * 5000


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RawProxy, Files]]:
    """One initialized proxy (with a small message limit) for the module's frames."""
    files = Files(tmp_path_factory.mktemp("wire"))
    with raw_proxy(files, "--max-message-bytes", "4096") as proxy:
        yield proxy, files


def _alive(proxy: RawProxy) -> None:
    assert proxy.request("alive", "ping") == {"jsonrpc": "2.0", "id": "alive", "result": {}}


def test_batch_smuggling_a_blocked_call_is_refused_whole(wire: tuple[RawProxy, Files]) -> None:
    """A batch hiding a blocked call next to a harmless one is refused member by member."""
    proxy, files = wire
    proxy.send(
        [
            {"jsonrpc": "2.0", "id": 11, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": BLOCKED_CALL},
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}},
        ]
    )
    replies = proxy.receive()
    assert [(r["id"], r["error"]["code"]) for r in replies] == [(11, -32600), (12, -32600)]
    assert "batches are not accepted" in replies[0]["error"]["message"]
    _alive(proxy)
    assert files.calls() == []
    [record] = [r for r in files.records() if r["context"].get("mcp_request_id") == 12]
    assert (record["action_type"], record["result_status"]) == ("delete", "blocked")
    assert "batch" in record["reason"]


@pytest.mark.parametrize(
    ("frame", "reply_id", "code"),
    [
        ("{not json", None, -32700),
        ("[]", None, -32600),
        ('"just a string"', None, -32600),
        ('{"jsonrpc": "1.0", "id": 3, "method": "ping"}', 3, -32600),
        ('{"jsonrpc": "2.0", "id": true, "method": "ping"}', None, -32600),
        ('{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', None, -32600),
        ('{"jsonrpc": "2.0", "id": null, "method": "ping"}', None, -32600),
        ('{"jsonrpc": "2.0", "id": 4, "method": 7}', 4, -32600),
        ('{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": [1]}', 5, -32600),
        ('{"jsonrpc": "2.0", "id": 6}', 6, -32600),
        ('{"jsonrpc": "2.0", "id": 7, "method": "evil/exec", "params": {}}', 7, -32601),
        ('{"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {}}', 8, -32602),
        (
            '{"jsonrpc": "2.0", "id": 9, "method": "tools/call", '
            '"params": {"name": "read", "arguments": [1]}}',
            9,
            -32602,
        ),
        ('{"jsonrpc": "2.0", "id": 10, "method": "ping", "x": "' + "a" * 5000 + '"}', 10, -32600),
        # Over the limit, the id is read wherever it stands; a nested "id" is not it.
        (
            '{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "write", '
            '"arguments": {"id": 99, "content": "' + 'a\\"},{' * 2000 + '"}}, "id": "late"}',
            "late",
            -32600,
        ),
        ('{"jsonrpc": "2.0", "method": "ping", "x": "' + "a" * 5000 + '"}', None, -32600),
        # Over the limit, a member name is read as a JSON parser reads it: escapes decoded.
        ('{"\\u0069d": 13, "jsonrpc": "2.0", "method": "ping", "x": "' + PAD + '"}', 13, -32600),
        ('{"jsonrpc": "2.0", "method": "ping", "x": "' + PAD + '", "i\\u0064": "t"}', "t", -32600),
        # ...and an id named twice (or by a look-alike) is no id to answer under.
        ('{"ID": 14, "id": 14, "method": "ping", "x": "' + PAD + '"}', None, -32600),
        ('{"id": 15, "method": "ping", "x": "' + PAD + '", "id": 16}', None, -32600),
        # Valid JSON nested deeper than Python decodes: refused under its id all the same.
        (
            '{"jsonrpc": "2.0", "id": 12, "method": "ping", "x": ' + "[" * 1900 + "]" * 1900 + "}",
            12,
            -32600,
        ),
    ],
)
def test_bad_frames_get_json_rpc_errors(
    wire: tuple[RawProxy, Files], frame: str, reply_id: object, code: int
) -> None:
    """Each malformed, invalid, unknown or oversized frame gets one error; the proxy lives on."""
    proxy, files = wire
    proxy.send(frame)
    reply = proxy.receive()
    assert (reply["id"], reply["error"]["code"]) == (reply_id, code)
    _alive(proxy)
    assert files.calls() == []


@pytest.mark.parametrize(
    ("request_id", "params", "why"),
    [
        ("arguments-list", {"name": "delete", "arguments": [1]}, "arguments were not"),
        ("task-number", {**BLOCKED_CALL, "task": 5}, "task was not"),
    ],
)
def test_a_call_refused_for_its_params_shape_is_recorded(
    wire: tuple[RawProxy, Files], request_id: str, params: dict[str, object], why: str
) -> None:
    """A tools/call whose arguments or task is not an object is refused, and recorded as blocked."""
    proxy, files = wire
    reply = proxy.request(request_id, "tools/call", params)
    assert reply["error"]["code"] == -32602
    [record] = [r for r in files.records() if r["context"].get("mcp_request_id") == request_id]
    assert (record["action_type"], record["matched_rule"]) == ("delete", "<mcp-proxy>")
    assert record["result_status"] == "blocked"
    assert why in record["reason"]
    assert files.calls() == []


def test_a_call_sent_as_a_notification_never_runs(wire: tuple[RawProxy, Files]) -> None:
    """tools/call without an id (a notification) is dropped: no answer, no call."""
    proxy, files = wire
    proxy.send({"jsonrpc": "2.0", "method": "tools/call", "params": BLOCKED_CALL})
    proxy.send({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "read"}})
    assert proxy.nothing()
    _alive(proxy)
    assert files.calls() == []


def test_a_stray_response_is_dropped(wire: tuple[RawProxy, Files]) -> None:
    """A response to a request nobody sent is dropped without an answer."""
    proxy, _ = wire
    proxy.send({"jsonrpc": "2.0", "id": 999, "result": {}})
    assert proxy.nothing()
    _alive(proxy)


def test_duplicated_id_in_flight_is_refused(tmp_path: Path) -> None:
    """A second request reusing an id in flight is refused; after cancelling, the id is free."""
    files = Files(tmp_path)
    with raw_proxy(files, server_args=["--hang-on", "read"]) as proxy:
        # the schemas known first: the read is decided as soon as it arrives
        assert "result" in proxy.request("list", "tools/list")
        proxy.send(
            {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "read", "arguments": {"path": "/srv/readme.txt"}},
            }
        )
        duplicate = proxy.request(7, "tools/call", BLOCKED_CALL)
        assert duplicate["error"]["code"] == -32600
        assert "already in use" in duplicate["error"]["message"]
        proxy.send(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
        )
        assert proxy.nothing()
        reused = proxy.request(7, "tools/call", BLOCKED_CALL)
        assert reused["result"]["isError"] is True
    statuses = [(r["action_type"], r["matched_rule"], r["result_status"]) for r in files.records()]
    assert statuses == [
        ("delete", "<mcp-proxy>", "blocked"),
        ("read", "reads", "failed"),
        ("delete", "no-deletes", "blocked"),
    ]
    assert [c["tool"] for c in files.calls()] == ["read"]


def _alive_with(marker: str) -> list[int]:
    """Pids of the processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_sigterm_stops_cleanly_recording_the_call_in_flight(tmp_path: Path) -> None:
    """SIGTERM mid-call: the proxy exits 0, records the call as interrupted, ends its server."""
    import signal
    import time

    files = Files(tmp_path)
    with raw_proxy(files, server_args=["--hang-on", "read"]) as proxy:
        proxy.send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "read", "arguments": {"path": "/srv/readme.txt"}},
            }
        )
        for _ in range(200):
            if files.calls():
                break
            time.sleep(0.05)
        assert _alive_with(str(files.log))
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(20) == 0
    [record] = files.records()
    assert record["result_status"] == "failed"
    assert "interrupted" in record["result_error"]
    assert "the proxy stopped (SIGTERM)" in record["result_error"]  # as over --listen
    assert _alive_with(str(files.log)) == []


def test_sigterm_while_a_hung_server_is_given_time_to_exit_still_ends_it(tmp_path: Path) -> None:
    """The client leaves, then sends SIGTERM within the server's grace: no server is left behind.

    The SDK's client does just that (it waits as long as the proxy's grace);
    the proxy used to exit and leave a hung server running for an hour.
    """
    import signal
    import time

    files = Files(tmp_path)
    with raw_proxy(files, "--call-timeout", "1", server_args=["--hang-on", "read"]) as proxy:
        reply = proxy.request(
            1, "tools/call", {"name": "read", "arguments": {"path": "/srv/readme.txt"}}
        )
        assert "did not answer" in json.dumps(reply)  # the server still hangs in the call
        assert _alive_with(str(files.log))
        assert proxy.process.stdin is not None
        proxy.process.stdin.close()  # the proxy closes its server's stdin and waits for it
        time.sleep(0.5)
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(20) == 0
    deadline = time.monotonic() + 5
    while _alive_with(str(files.log)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_with(str(files.log)) == []


def test_terminal_approval_asks_on_the_controlling_terminal(tmp_path: Path) -> None:
    """--approval terminal asks on /dev/tty, not on the wire; a typed yes runs the call."""
    import os
    import pty
    import select
    import sys
    import time

    files = Files(tmp_path)
    master, slave = pty.openpty()
    tty_name = os.ttyname(slave)
    # A new session whose first opened terminal becomes its controlling one.
    launcher = (
        "import os, sys; os.setsid(); os.close(os.open(sys.argv[1], os.O_RDWR)); "
        "os.execvp(sys.argv[2], sys.argv[2:])"
    )
    command = [sys.executable, "-c", launcher, tty_name, *files.proxy("--approval", "terminal")]
    proxy = RawProxy(command, files.stderr)
    try:
        proxy.initialize()
        proxy.send(
            {
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "write", "arguments": {"path": "/t", "content": "x"}},
            }
        )
        seen = b""
        deadline = time.monotonic() + 30
        while b"Approve this action?" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
        assert b"write" in seen
        os.write(master, b"y\n")
        reply = proxy.receive()
        assert reply["id"] == 5
        assert reply["result"]["isError"] is False
    finally:
        proxy.close()
        os.close(master)
        os.close(slave)
    assert files.calls() == [{"tool": "write", "arguments": {"path": "/t", "content": "x"}}]
    [record] = files.records()
    assert (record["result_status"], record["human_decision"]) == ("success", "approved")


def test_a_call_continues_the_trace_passed_in_its_meta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A traceparent in a call's _meta makes the proxy's span of that action its child."""
    files = Files(tmp_path)
    spans = tmp_path / "spans.jsonl"
    monkeypatch.setenv("SPANS_FILE", str(spans))
    command = files.proxy()
    command[1:3] = [str(Path(__file__).with_name("traced_proxy.py"))]
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    proxy = RawProxy(command, files.stderr)
    try:
        proxy.initialize()
        reply = proxy.request(
            7,
            "tools/call",
            {
                "name": "read",
                "arguments": {"path": "/srv/readme.txt"},
                "_meta": {"traceparent": f"00-{trace_id}-{parent_id}-01"},
            },
        )
    finally:
        proxy.close()
    assert "result" in reply
    found = [json.loads(line) for line in spans.read_text(encoding="utf-8").splitlines()]
    (span,) = [s for s in found if s["name"] == "execute_tool read"]
    assert span["trace_id"] == trace_id
    assert span["parent_id"] == parent_id
    assert span["attributes"]["aegis.status"] == "success"


def test_a_refused_governed_method_is_recorded_like_a_refused_call(
    wire: tuple[RawProxy, Files],
) -> None:
    """prompts/get, which a rule governs, refused in a batch or as a notification, is audited."""
    proxy, files = wire
    secret = {"name": "secret-prompt", "arguments": {"who": "ops"}}
    proxy.send([{"jsonrpc": "2.0", "id": "batched", "method": "prompts/get", "params": secret}])
    [reply] = proxy.receive()
    assert (reply["id"], reply["error"]["code"]) == ("batched", -32600)
    proxy.send({"jsonrpc": "2.0", "method": "prompts/get", "params": secret})
    assert proxy.nothing()
    _alive(proxy)
    records = [r for r in files.records() if r["action_type"] == "prompts/get"]
    assert [(r["matched_rule"], r["result_status"]) for r in records] == [
        ("<mcp-proxy>", "blocked"),
        ("<mcp-proxy>", "blocked"),
    ]
    assert records[0]["context"]["mcp_request_id"] == "batched"
    assert "batch" in records[0]["reason"]
    assert "notification" in records[1]["reason"]
    assert records[0]["action_params"] == secret
