"""A server that misbehaves on purpose, behind the real proxy CLI: the client gets clear errors.

The server is ``hostile_server.py``, a real subprocess speaking MCP over
stdio by hand; the proxy is ``python -m aegis mcp-proxy`` spoken to line
by line. Each test checks what the client reads, that the proxy lives on
(or ends cleanly), and that the call's audit record says what happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp_support import HERE, Files, RawProxy, background, free_port

HOSTILE = HERE / "hostile_server.py"
HOSTILE_HTTP = HERE / "hostile_http_server.py"

POLICY = """\
version: "1"
defaults:
  risk_level: low
  approval: auto
rules:
  - name: no-deletes
    match: {type: delete}
    risk_level: critical
    approval: block
"""

READ = {"name": "read", "arguments": {"path": "/x"}}


@contextmanager
def hostile(tmp_path: Path, *mode: str, options: tuple[str, ...] = ()) -> Iterator[RawProxy]:
    """The proxy in front of ``hostile_server.py MODE...``, initialized."""
    files = Files(tmp_path, POLICY)
    command = [
        sys.executable, "-m", "aegis", "mcp-proxy", "--policy", str(files.policy),
        "--db", files.db, "--name", "hostile", *options,
        "--", sys.executable, str(HOSTILE), *mode,
    ]  # fmt: skip
    proxy = RawProxy(command, files.stderr)
    proxy.files = files  # type: ignore[attr-defined]  # for the test's own checks
    try:
        proxy.initialize()
        yield proxy
    finally:
        proxy.close()


def _records(proxy: RawProxy) -> list[dict[str, Any]]:
    files: Files = proxy.files  # type: ignore[attr-defined]
    return files.records()


def _reply(template: str) -> str:
    return '{"jsonrpc": "2.0", "id": {id}, "result": ' + template + "}"


#: replies JSON parsers could read differently, and what the call's error says of each;
#: a server's reply is judged the same over stdio and over HTTP
UNREADABLE_REPLIES = [
    # the proxy would see isError true, a last-wins client false (or the other way)
    (_reply('{"content": [], "isError": false, "isError": true}'), "'isError' appears twice"),
    (_reply('{"content": [], "isError": false, "IsError": true}'), "differ only by case"),
    (
        '{"jsonrpc": "2.0", "id": {id}, "result": {"content": []}, '
        '"error": {"code": 1, "message": "x"}}',
        "exactly one of",
    ),
    (_reply('{"content": [], "n": NaN}'), "NaN"),
    (_reply('{"content": [], "n": -Infinity}'), "Infinity"),
    (_reply('{"content": [], "n": 1e400}'), "result.n is 1e400"),
    (_reply('{"content": [], "n": ' + "9" * 5000 + "}"), "more digits"),
    (_reply('{"content": [], "n": ' + "[" * 5000 + "]" * 5000 + "}"), "nested deeper"),
    # the id is found by the scanner when the rest cannot be decoded
    (_reply('{"content": [], "n": tru}'), None),
]


@pytest.mark.parametrize(("reply", "says"), UNREADABLE_REPLIES)
def test_a_reply_the_proxy_cannot_read_safely_fails_the_call_at_once(
    tmp_path: Path, reply: str, says: str | None
) -> None:
    """A reply JSON parsers could read differently is an error to the client now, and recorded."""
    with hostile(tmp_path, "raw", reply, options=("--call-timeout", "120")) as proxy:
        answer = proxy.request(1, "tools/call", READ, timeout=60)
        assert answer["id"] == 1
        assert answer["error"]["code"] == -32011
        assert "refused by the Aegis proxy" in answer["error"]["message"]
        assert says is None or says in answer["error"]["message"]
        # the proxy lives on, and the server with it
        assert proxy.request(2, "ping", timeout=60) == {"jsonrpc": "2.0", "id": 2, "result": {}}
    [record] = _records(proxy)
    assert (record["action_type"], record["result_status"]) == ("read", "failed")
    assert "refused by the Aegis proxy" in record["result_error"]


def test_an_http_server_s_replies_are_judged_as_a_stdio_server_s(tmp_path: Path) -> None:
    """Over --upstream-url each reply refused over stdio fails its call, as a body or an event."""
    replies = [reply for reply, _ in UNREADABLE_REPLIES]
    # past --max-server-message-bytes, as the stdio server's long line
    replies.append(_reply('{"content": [{"type": "text", "text": "' + "a" * 200_000 + '"}]}'))
    # and one it reads: the call is answered with it
    replies.append(_reply('{"content": [], "isError": false}'))
    says = [said for _, said in UNREADABLE_REPLIES] + ["longer than 100000 bytes"]
    (tmp_path / "replies.json").write_text(json.dumps(replies), encoding="utf-8")
    files = Files(tmp_path, POLICY)
    port = free_port()
    upstream = f"http://127.0.0.1:{port}/mcp"
    server = [sys.executable, str(HOSTILE_HTTP), str(port), str(tmp_path / "replies.json")]
    command = [
        sys.executable, "-m", "aegis", "mcp-proxy", "--policy", str(files.policy),
        "--db", files.db, "--name", "hostile", "--call-timeout", "120",
        "--max-server-message-bytes", "100000", "--upstream-url", upstream,
    ]  # fmt: skip
    with background(server, tmp_path / "server.log", upstream):
        proxy = RawProxy(command, files.stderr)
        try:
            proxy.initialize()
            request_id = 0
            for index, said in enumerate(says):
                for how in ("json", "sse"):
                    request_id += 1
                    path = {"name": "read", "arguments": {"path": f"{how}/{index}"}}
                    answer = proxy.request(request_id, "tools/call", path, timeout=60)
                    assert answer["id"] == request_id, (how, index)
                    assert answer["error"]["code"] == -32011, (how, index, answer)
                    assert "refused by the Aegis proxy" in answer["error"]["message"]
                    assert said is None or said in answer["error"]["message"], (how, index)
            for how in ("json", "sse"):
                path = {"name": "read", "arguments": {"path": f"{how}/{len(says)}"}}
                answer = proxy.request(how, "tools/call", path, timeout=60)
                assert answer == {
                    "jsonrpc": "2.0",
                    "id": how,
                    "result": {"content": [], "isError": False},
                }
        finally:
            proxy.close()
    records = files.records()
    assert [r["result_status"] for r in records] == ["failed"] * request_id + ["success"] * 2
    assert all("refused by the Aegis proxy" in r["result_error"] for r in records[:request_id])


#: tools/list replies --check must refuse from an HTTP server, and what its error says of each
UNREADABLE_LISTS = [
    (
        '{"jsonrpc": "2.0", "id": {id}, "result": {"tools": [], "tools": []}}',
        "'tools' appears twice",
    ),
    (_reply('{"tools": [{"name": "read", "inputSchema": {"type": "object", "n": NaN}}]}'), "NaN"),
    (_reply('{"tools": [{"name": "' + "a" * 200_000 + '", "inputSchema": {}}]}'), "longer than"),
]


async def test_check_of_an_http_server_reads_its_tool_list_as_a_stdio_server_s(
    tmp_path: Path,
) -> None:
    """--check --upstream-url refuses a tools/list reply the proxy cannot read, saying why.

    The check runs in this process (a CLI run costs seconds of start-up
    each); the CLI prints its error as is (see the stdio checks).
    """
    from aegis import Policy
    from aegis.errors import ConfigurationError
    from aegis.mcp.runner import ProxySettings, check_tools

    (tmp_path / "replies.json").write_text("[]", encoding="utf-8")
    lists = [reply for reply, _ in UNREADABLE_LISTS]
    (tmp_path / "lists.json").write_text(json.dumps(lists), encoding="utf-8")
    port = free_port()
    upstream = f"http://127.0.0.1:{port}/mcp"
    server = [
        sys.executable, str(HOSTILE_HTTP), str(port),
        str(tmp_path / "replies.json"), str(tmp_path / "lists.json"),
    ]  # fmt: skip
    files = Files(tmp_path, POLICY)
    settings = ProxySettings(
        policy=Policy.from_yaml(files.policy),
        upstream_url=upstream,
        max_server_message_bytes=100_000,
    )
    with background(server, tmp_path / "server.log", upstream):
        # the server answers its Nth tools/list with list N: one check each, in order
        for _, says in UNREADABLE_LISTS:
            with pytest.raises(ConfigurationError) as refused:
                await check_tools(settings, deadline=60)
            error = str(refused.value)
            assert "refused by the Aegis proxy" in error
            assert says in error
            assert upstream in error
        # past its scripted lists the server lists its tool as it should: the check passes
        [read] = await check_tools(settings, deadline=60)
    assert read.tool["name"] == "read"
    assert read.decision.approval.value == "auto"


def test_a_reply_is_passed_on_as_its_json_rpc_members_only(tmp_path: Path) -> None:
    """Members a JSON-RPC reply does not have are not relayed to the client."""
    reply = '{"jsonrpc": "2.0", "id": {id}, "result": {"content": []}, "extra": {"a": 1}}'
    with hostile(tmp_path, "raw", reply) as proxy:
        answer = proxy.request(1, "tools/call", READ, timeout=60)
    assert answer == {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}


def test_a_lone_surrogate_reaches_the_client_as_utf8_json(tmp_path: Path) -> None:
    """A lone surrogate in a reply is written as its escape: UTF-8 on the wire, the value intact."""
    reply = _reply('{"content": [{"type": "text", "text": "a\\ud800b"}]}')
    with hostile(tmp_path, "raw", reply) as proxy:
        proxy.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": READ})
        line = proxy._lines.get(timeout=60)
    answer = json.loads(line.decode("utf-8"))  # strict UTF-8: the old bytes were not
    assert answer["result"]["content"][0]["text"] == "a\ud800b"
    [record] = _records(proxy)
    assert record["result_status"] == "success"


def test_a_line_over_the_server_limit_fails_its_call_and_the_next_line_is_read(
    tmp_path: Path,
) -> None:
    """A reply longer than --max-server-message-bytes is read past; its call fails under its id."""
    with hostile(
        tmp_path, "long-line", "200000", options=("--max-server-message-bytes", "100000")
    ) as proxy:
        answer = proxy.request(1, "tools/call", READ, timeout=60)
        assert answer["id"] == 1
        assert "longer than 100000 bytes" in answer["error"]["message"]
        assert proxy.request(2, "ping", timeout=60) == {"jsonrpc": "2.0", "id": 2, "result": {}}
    [record] = _records(proxy)
    assert record["result_status"] == "failed"
    assert "longer than 100000 bytes" in record["result_error"]


def test_a_server_stalling_mid_line_times_the_call_out(tmp_path: Path) -> None:
    """Half a reply and then nothing: the call fails at --call-timeout, recorded; the proxy ends."""
    with hostile(tmp_path, "half-line", options=("--call-timeout", "2")) as proxy:
        answer = proxy.request(1, "tools/call", READ, timeout=60)
        assert answer["id"] == 1
        assert "did not answer tools/call within 2s" in answer["error"]["message"]
        # a call the proxy refuses itself is still answered at once
        blocked = proxy.request(2, "tools/call", {"name": "delete", "arguments": {}}, timeout=60)
        assert blocked["result"]["isError"] is True
    assert proxy.process.returncode == 0
    assert [(r["action_type"], r["result_status"]) for r in _records(proxy)] == [
        ("read", "failed"),
        ("delete", "blocked"),
    ]


def test_replies_to_ids_never_asked_are_dropped(tmp_path: Path) -> None:
    """Replies under ids the proxy never used reach nobody; the call's own reply gets through."""
    with hostile(tmp_path, "stray-ids") as proxy:
        answer = proxy.request(1, "tools/call", READ, timeout=60)
        assert answer["result"]["content"][0]["text"] == "yours"
        assert proxy.nothing(0.5)
    err = proxy.files.stderr.read_text()  # type: ignore[attr-defined]
    assert "unknown request 10000" in err


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return "zombie"  # gone while read


@pytest.mark.parametrize(
    ("mode", "options", "within"),
    [
        # never answers initialize (nor exits when its stdin closes): the default deadline
        ("hang-initialize", (), "within 10s"),
        # answers initialize, then stalls on tools/list
        ("stall-list", ("--check-timeout", "1"), "within 1s"),
    ],
)
def test_check_against_a_hanging_server_fails_at_its_deadline_and_kills_it(
    tmp_path: Path, mode: str, options: tuple[str, ...], within: str
) -> None:
    """--check gives a hanging server --check-timeout seconds (10 by default), then kills it."""
    files = Files(tmp_path, POLICY)
    pids = tmp_path / "pids"
    command = [
        sys.executable, "-m", "aegis", "mcp-proxy", "--check", "--policy", str(files.policy),
        "--db", files.db, *options, "--", sys.executable, str(HOSTILE), mode,
    ]  # fmt: skip
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "HOSTILE_PIDS": str(pids)},
    )
    assert done.returncode == 2
    assert f"did not list its tools {within}" in done.stderr
    assert "--check-timeout" in done.stderr
    assert "Traceback" not in done.stderr
    # the server is gone with the check
    assert not _alive(int(pids.read_text()))


def _answers(log: Path) -> list[dict[str, Any]]:
    """The answers the hostile server got to its own requests, in order."""
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines() if line]
    return [line["answer"] for line in lines if "answer" in line]


def test_a_server_request_it_cannot_read_is_refused_to_the_server_not_to_a_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's own request holding NaN, under the id of a call in flight, fails neither."""
    log = tmp_path / "server.jsonl"
    monkeypatch.setenv("HOSTILE_LOG", str(log))
    with hostile(tmp_path, "bad-request", options=("--call-timeout", "120")) as proxy:
        answer = proxy.request(1, "tools/call", READ, timeout=60)
        # the call is answered by its own reply, sent once the server heard back
        assert answer == {"jsonrpc": "2.0", "id": 1, "result": _text("ok")}
    [refused] = _answers(log)
    assert refused["error"]["code"] == -32600
    assert "NaN" in refused["error"]["message"]
    [record] = _records(proxy)
    assert record["result_status"] == "success"


def _text(value: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": value}], "isError": False}


def test_a_server_cancelling_its_own_request_cancels_the_one_the_client_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's cancel names its request by the id the client knows it by, not the server's."""
    log = tmp_path / "server.jsonl"
    monkeypatch.setenv("HOSTILE_LOG", str(log))
    with hostile(tmp_path, "cancel-own") as proxy:
        proxy.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": READ})
        first, second, cancel, answer = (proxy.receive(60) for _ in range(4))
        assert (first["method"], second["method"]) == ("roots/list", "roots/list")
        assert first["id"] != second["id"]
        # the server cancelled its request 1: the second it sent
        assert cancel["method"] == "notifications/cancelled"
        assert cancel["params"]["requestId"] == second["id"]
        assert answer["id"] == 1
        # the client answers both; only the live one reaches the server
        for request in (first, second):
            proxy.send({"jsonrpc": "2.0", "id": request["id"], "result": {"roots": []}})
        assert proxy.request(2, "ping", timeout=60)["id"] == 2
    assert [a["id"] for a in _answers(log)] == [2]


def test_server_requests_the_client_has_not_answered_are_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the cap a server's request gets an error at once; those within it all get through."""
    from aegis.mcp._ids import MAX_CLIENT_PENDING

    log = tmp_path / "server.jsonl"
    monkeypatch.setenv("HOSTILE_LOG", str(log))
    count = MAX_CLIENT_PENDING + 5
    with hostile(tmp_path, "requests", str(count)) as proxy:
        proxy.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": READ})
        relayed = []
        while True:
            message = proxy.receive(60)
            if message.get("id") == 1 and "method" not in message:
                break
            relayed.append(message)
        assert len(relayed) == MAX_CLIENT_PENDING
        for request in relayed:
            proxy.send({"jsonrpc": "2.0", "id": request["id"], "result": {"roots": []}})
        # answered, they make room again: a ping still works, and so would a new request
        assert proxy.request(2, "ping", timeout=60)["id"] == 2
    answers = _answers(log)
    refused = [a for a in answers if "error" in a]
    assert [a["id"] for a in refused] == [f"r{i}" for i in range(MAX_CLIENT_PENDING, count)]
    assert all("waiting for the client" in a["error"]["message"] for a in refused)
    assert sorted(a["id"] for a in answers if "result" in a) == sorted(
        f"r{i}" for i in range(MAX_CLIENT_PENDING)
    )
    err = proxy.files.stderr.read_text()  # type: ignore[attr-defined]
    assert err.count("waiting for the client") <= 12


def _lines_about(proxy: RawProxy, text: str) -> list[str]:
    err: str = proxy.files.stderr.read_text()  # type: ignore[attr-defined]
    return [line for line in err.splitlines() if text in line]


def test_a_flood_of_refused_client_lines_is_answered_in_full_and_logged_in_brief(
    tmp_path: Path,
) -> None:
    """Every refused line gets its error; stderr gets the first ten, then one count."""
    with hostile(tmp_path, "ok", options=("--max-message-bytes", "4096")) as proxy:
        for i in range(300):
            proxy.send("{not json" if i % 2 else json.dumps({"id": i, "pad": "a" * 5000}))
        replies = [proxy.receive(60) for _ in range(300)]
        assert [r["error"]["code"] for r in replies[:2]] == [-32600, -32700]
        assert [r["id"] for r in replies[::2]] == list(range(0, 300, 2))
        assert proxy.request(1, "ping", timeout=60)["id"] == 1
    refused = _lines_about(proxy, "refused a message")
    assert len(refused) <= 12
    assert any("290 more like it" in line for line in refused)


def test_an_oversized_or_unparseable_call_is_recorded_as_far_as_it_reads(
    tmp_path: Path,
) -> None:
    """A refused tools/call line is recorded blocked: its tool when its start names it."""
    pad = "a" * 70_000  # past the 64 KiB of a line's start that are read for its record
    with hostile(tmp_path, "ok", options=("--max-message-bytes", "4096")) as proxy:
        lines = [
            # too large: its id, method and tool come before the large part
            '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete", '
            f'"arguments": {{"path": "{pad}"}}}}}}',
            # too large, its tool named after the large part
            '{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": '
            f'{{"arguments": {{"path": "{pad}"}}, "name": "delete"}}}}',
            # not JSON past its tool's name
            '{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "read"}, x}',
            # nothing to tell it was a call: refused, and only logged
            '{"jsonrpc": "2.0", "id": 4, "pad": "' + pad + '"}',
            "{nothing",
        ]
        for line in lines:
            proxy.send(line)
        replies = [proxy.receive(60) for _ in lines]
        assert [r["error"]["code"] for r in replies] == [-32600, -32600, -32700, -32600, -32700]
        assert proxy.request(5, "ping", timeout=60)["id"] == 5
    records = _records(proxy)
    assert [(r["action_type"], r["result_status"]) for r in records] == [
        ("delete", "blocked"),
        ("tools/call", "blocked"),
        ("read", "blocked"),
    ]
    assert [r["context"]["mcp_request_id"] for r in records] == [1, 2, 3]
    assert {r["matched_rule"] for r in records} == {"<mcp-proxy>"}
    assert "larger than 4096 bytes" in records[0]["reason"]
    assert "its tool could not be read" in records[1]["reason"]
    assert "not JSON" in records[2]["reason"]


def test_a_flood_of_unreadable_server_lines_is_logged_in_brief(tmp_path: Path) -> None:
    """A server writing 300 lines that are not JSON: ten logged, then one count, the call served."""
    with hostile(tmp_path, "garbage", "300") as proxy:
        answer = proxy.request(1, "tools/call", READ, timeout=60)
        assert answer["result"] == _text("after the garbage")
    dropped = _lines_about(proxy, "not a JSON-RPC message")
    assert len(dropped) <= 12
    assert any("290 more like it" in line for line in dropped)


def test_requests_in_flight_are_capped_and_the_excess_refused_at_once(tmp_path: Path) -> None:
    """Past MAX_INFLIGHT unanswered requests the next is refused at once; the proxy lives on."""
    from aegis.mcp.proxy import MAX_INFLIGHT

    # stall-list: the server never answers tools/list, so each one stays in flight
    with hostile(tmp_path, "stall-list", options=("--call-timeout", "600")) as proxy:
        for i in range(MAX_INFLIGHT + 1):
            proxy.send({"jsonrpc": "2.0", "id": i, "method": "tools/list"})
        refused = proxy.receive(60)
        assert refused["id"] == MAX_INFLIGHT
        assert refused["error"]["code"] == -32600
        assert "in flight" in refused["error"]["message"]
        # a request refused at once is also refused without the server: a cancel makes room
        proxy.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": 0}})  # fmt: skip
        assert proxy.request("after", "ping", timeout=60)["id"] == "after"


def test_an_http_server_failing_mid_call_fails_that_call_only(tmp_path: Path) -> None:
    """Behind the proxy CLI: a hostile HTTP answer fails its call once, recorded once.

    The first read is answered with another request's reply, the second
    with half a body before the connection closes; the blocked delete
    between them is answered and recorded by the proxy alone. A broken
    exchange is one request's failure, not the session's (over HTTP each
    request has its own exchange): the third read is answered. Every call
    has exactly one record, and the chain verifies.
    """
    from scripted_http import Request, polite, response, scripted

    calls = 0

    def answer(request: Request, connection: Any) -> bool:
        nonlocal calls
        if request.rpc_method != "tools/call":
            return polite(request, connection)
        calls += 1
        if calls == 3:
            return polite(request, connection)
        other = {"jsonrpc": "2.0", "id": 99, "result": {"content": []}}
        raw = response(body=json.dumps(other).encode())
        connection.sendall(raw if calls == 1 else raw[:-10])
        return calls == 1

    files = Files(tmp_path, POLICY)
    with scripted(answer) as upstream:
        command = [
            sys.executable, "-m", "aegis", "mcp-proxy", "--policy", str(files.policy),
            "--db", files.db, "--name", "hostile", "--upstream-url", upstream.url,
        ]  # fmt: skip
        proxy = RawProxy(command, files.stderr)
        try:
            proxy.initialize()
            first = proxy.request(1, "tools/call", READ, timeout=60)
            delete = {"name": "delete", "arguments": {"path": "/x"}}
            blocked = proxy.request(2, "tools/call", delete, timeout=60)
            second = proxy.request(3, "tools/call", READ, timeout=60)
            third = proxy.request(4, "tools/call", READ, timeout=60)
        finally:
            status = proxy.close()
    assert first["error"]["code"] == -32011
    assert "answered the request as request 99" in first["error"]["message"]
    assert blocked["result"]["isError"] is True
    assert second["error"]["code"] == -32011
    assert third["result"] == {}
    assert status == 0
    records = files.records()  # the chain verifies
    assert [(r["action_type"], r["result_status"]) for r in records] == [
        ("read", "failed"),
        ("delete", "blocked"),
        ("read", "failed"),
        ("read", "success"),
    ]
    assert [r["context"]["mcp_request_id"] for r in records] == [1, 2, 3, 4]
    assert len(upstream.posted("tools/call")) == 3  # the blocked call never reached it


def test_an_http_server_ending_the_session_stops_the_proxy_saying_so(tmp_path: Path) -> None:
    """A 404 to the session's id: the server ended the session; the call fails, the proxy stops.

    Every later request would get the same 404. The proxy stops, saying
    the server ended the session, so that the client starts a new one.
    """
    from scripted_http import Request, polite, response, scripted

    def answer(request: Request, connection: Any) -> bool:
        if request.rpc_method == "initialize":
            body = {
                "jsonrpc": "2.0",
                "id": request.message["id"],
                "result": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "scripted", "version": "1"},
                },
            }
            headers = {"mcp-session-id": "s-1"}
            connection.sendall(response(body=json.dumps(body).encode(), headers=headers))
            return True
        if request.rpc_method == "tools/call":
            connection.sendall(response(404, b"", kind=None))
            return True
        return polite(request, connection)

    files = Files(tmp_path, POLICY)
    with scripted(answer) as upstream:
        command = [
            sys.executable, "-m", "aegis", "mcp-proxy", "--policy", str(files.policy),
            "--db", files.db, "--name", "hostile", "--upstream-url", upstream.url,
        ]  # fmt: skip
        proxy = RawProxy(command, files.stderr)
        try:
            proxy.initialize()
            call = proxy.request(1, "tools/call", READ, timeout=60)
        finally:
            status = proxy.close()
    assert call["error"]["code"] == -32011
    assert "ended the session" in call["error"]["message"]
    assert status == 1
    assert "ended the session" in files.stderr.read_text()
    assert [r["result_status"] for r in files.records()] == ["failed"]
