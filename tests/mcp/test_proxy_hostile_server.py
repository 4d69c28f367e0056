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
from mcp_support import HERE, Files, RawProxy

HOSTILE = HERE / "hostile_server.py"

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


@pytest.mark.parametrize(
    ("reply", "says"),
    [
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
    ],
)
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
