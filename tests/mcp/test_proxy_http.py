"""The proxy serving Streamable HTTP (--listen), and governing an HTTP server (--upstream-url)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp_support import SERVER, Files, background, child_pids, free_port, proxied_client

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.fixture(scope="module")
def listening(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Files]]:
    """The proxy serving Streamable HTTP on a free loopback port, in front of the stdio server."""
    files = Files(tmp_path_factory.mktemp("http"))
    port = free_port()
    command = files.proxy("--listen", f"127.0.0.1:{port}", "--max-message-bytes", "4096")
    url = f"http://127.0.0.1:{port}/mcp"
    with background(command, files.stderr, url):
        yield url, files


async def test_sdk_client_over_http_is_governed(listening: tuple[str, Files]) -> None:
    """Through --listen: annotations intact, auto runs, block is a tool error, both recorded."""
    url, files = listening
    async with Client(url, cache=None) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        read = await client.call_tool("read", {"path": "/srv/readme.txt"})
        blocked = await client.call_tool("delete", {"path": "/srv/readme.txt"})
    assert tools["delete"].annotations is not None
    assert tools["delete"].annotations.destructive_hint is True
    assert tools["read"].output_schema is not None
    assert read.structured_content == {"path": "/srv/readme.txt", "content": "hello"}
    assert blocked.is_error is True
    assert "no-deletes" in blocked.content[0].text  # type: ignore[union-attr]
    assert [c["tool"] for c in files.calls()] == ["read"]
    records = files.records()
    statuses = [(r["action_type"], r["result_status"]) for r in records]
    assert ("read", "success") in statuses
    assert ("delete", "blocked") in statuses
    keys = {"mcp_request_id", "mcp_session_id", "mcp_client"}
    assert all(set(r["context"]) == keys for r in records)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{nope", 400, -32700),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}]', 400, -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}', 400, -32600),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "p": "' + b"x" * 5000 + b'"}',
            413,
            -32600,
        ),
    ],
)
def test_bad_posts_are_refused_before_anything_runs(
    listening: tuple[str, Files], body: bytes, status: int, code: int
) -> None:
    """Malformed, batched, session-less and oversized POSTs get a JSON-RPC error and a 4xx."""
    url, _ = listening
    response = httpx.post(url, content=body, headers=HEADERS, timeout=10)
    assert response.status_code == status
    reply = response.json()
    first = reply[0] if isinstance(reply, list) else reply
    assert first["error"]["code"] == code


def test_unknown_session_is_not_found(listening: tuple[str, Files]) -> None:
    """A POST naming a session the proxy does not have is a 404 with a JSON-RPC error."""
    url, _ = listening
    response = httpx.post(
        url,
        content=b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}',
        headers={**HEADERS, "mcp-session-id": "nope"},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == -32600


def test_non_loopback_listen_is_refused(tmp_path: Path) -> None:
    """--listen on a non-loopback address is refused with one clear line."""
    import subprocess

    files = Files(tmp_path)
    out = subprocess.run(
        files.proxy("--listen", "0.0.0.0:8811"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "loopback only" in out.stderr
    assert "Traceback" not in out.stderr


async def test_stdio_proxy_in_front_of_an_http_server(tmp_path: Path) -> None:
    """With --upstream-url the proxy governs a Streamable HTTP server for a stdio client.

    ``--check`` lists the same server's tools over the proxy's own HTTP
    client, which reads an SDK server's replies as they are.
    """
    import subprocess

    files = Files(tmp_path)
    port = free_port()
    server = [sys.executable, str(SERVER), "--log", str(files.log), "--http", str(port)]
    upstream = f"http://127.0.0.1:{port}/mcp"
    with background(server, tmp_path / "server.log", upstream):
        command = files.proxy(upstream=upstream)
        async with proxied_client(files, _command=command) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            read = await client.call_tool("read", {"path": "/srv/readme.txt"})
            blocked = await client.call_tool("delete", {"path": "/srv/readme.txt"})
        checked = subprocess.run(
            files.proxy("--check", "--format", "json", upstream=upstream),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert checked.returncode == 0, checked.stderr
    rows = {row["tool"]: row for row in json.loads(checked.stdout)}
    assert {name: row["approval"] for name, row in rows.items()} == {
        "read": "auto",
        "write": "approve",
        "delete": "block",
    }
    assert rows["read"]["hints"] == ["readOnlyHint"]
    assert tools["read"].annotations is not None
    assert tools["read"].annotations.read_only_hint is True
    assert read.structured_content == {"path": "/srv/readme.txt", "content": "hello"}
    assert blocked.is_error is True
    assert [c["tool"] for c in files.calls()] == ["read"]


async def test_the_servers_own_request_reaches_an_http_client(
    listening: tuple[str, Files],
) -> None:
    """Over --listen, the server's mid-call elicitation travels on the call's stream and back."""
    from mcp import types

    url, _ = listening
    asked: list[str] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"ok": True})

    async with Client(url, cache=None, elicitation_callback=elicit) as client:
        result = await client.call_tool("read", {"path": "/ask"})
    assert result.structured_content == {"path": "/ask", "content": "ok=True"}
    assert asked == ["May I read /ask?"]


def test_a_foreign_origin_cannot_start_a_session(listening: tuple[str, Files]) -> None:
    """A browser page of another origin (DNS rebinding) is refused before any session starts."""
    url, _ = listening
    body = (
        b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": '
        b'"2025-11-25", "capabilities": {}, "clientInfo": {"name": "evil", "version": "1"}}}'
    )
    response = httpx.post(
        url, content=body, headers={**HEADERS, "origin": "http://evil.example"}, timeout=10
    )
    assert response.status_code == 403
    assert "mcp-session-id" not in response.headers


def test_an_ambiguous_call_over_http_is_refused_and_recorded(
    listening: tuple[str, Files],
) -> None:
    """Over HTTP too, a second "Name" in a call's params is refused, recorded, never run."""
    url, files = listening
    with httpx.Client(timeout=10) as http:
        opened = _initialize(url, client="raw-http", http=http)
        assert opened.status_code == 200
        session = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert http.post(url, json=note, headers=session).status_code == 202
        body = (
            b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "read",'
            b' "arguments": {"path": "/srv/readme.txt"}, "Name": "delete"}}'
        )
        refused = http.post(url, content=body, headers=session)
    assert refused.status_code == 400
    assert refused.json()["id"] == 2
    assert refused.json()["error"]["code"] == -32600
    assert "delete" not in [c["tool"] for c in files.calls()]
    [record] = [r for r in files.records() if r["context"].get("mcp_client") == "raw-http"]
    assert record["context"]["mcp_request_id"] == 2
    assert (record["action_type"], record["result_status"]) == ("read", "blocked")
    assert "ambiguous" in record["reason"]


def test_an_oversized_or_unparseable_call_over_http_is_recorded(
    listening: tuple[str, Files],
) -> None:
    """A tools/call POST refused as too large or not JSON is recorded blocked, as it reads."""
    url, files = listening
    large = (
        b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "delete",'
        b' "arguments": {"path": "' + b"a" * 5000 + b'"}}}'
    )
    broken = b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "write"}, x}'
    with httpx.Client(timeout=10) as http:
        opened = _initialize(url, client="raw-http-unread", http=http)
        session = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
        assert http.post(url, content=large, headers=session).status_code == 413
        assert http.post(url, content=broken, headers=session).status_code == 400
        # nothing to tell it was a call: refused, and not recorded
        assert http.post(url, content=b"{nothing", headers=session).status_code == 400
    records = [r for r in files.records() if r["context"].get("mcp_client") == "raw-http-unread"]
    assert [(r["action_type"], r["result_status"]) for r in records] == [
        ("delete", "blocked"),
        ("write", "blocked"),
    ]
    assert [r["context"]["mcp_request_id"] for r in records] == [2, 3]
    assert "larger than 4096 bytes" in records[0]["reason"]
    assert "not JSON" in records[1]["reason"]
    assert {r["matched_rule"] for r in records} == {"<mcp-proxy>"}


def _initialize(
    url: str, *, client: str = "forgetful", http: httpx.Client | None = None
) -> httpx.Response:
    """Start a session with a raw initialize POST, as a client that never ends it would."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": client, "version": "1"},
        },
    }
    if http is not None:
        return http.post(url, json=body, headers=HEADERS)
    return httpx.post(url, json=body, headers=HEADERS, timeout=30)


def _ping(url: str, session: str) -> httpx.Response:
    return httpx.post(
        url,
        json={"jsonrpc": "2.0", "id": 2, "method": "ping"},
        headers={**HEADERS, "mcp-session-id": session},
        timeout=30,
    )


def test_the_session_idle_the_longest_gives_way_to_a_new_client(tmp_path: Path) -> None:
    """With every session taken by clients that never end theirs, a new client still gets in."""
    files = Files(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    command = files.proxy("--listen", f"127.0.0.1:{port}", "--max-sessions", "2")
    with background(command, files.stderr, url):
        sessions = []
        for _ in range(3):
            response = _initialize(url)
            assert response.status_code == 200, response.text
            sessions.append(response.headers["mcp-session-id"])
        first, second, third = sessions
        assert _ping(url, first).status_code == 404  # idle the longest: ended for the third
        assert _ping(url, second).status_code == 200
        assert _ping(url, third).status_code == 200


def test_idle_sessions_end_after_the_idle_timeout(tmp_path: Path) -> None:
    """A session nobody uses for --session-idle-timeout seconds is ended with its server."""
    import time

    files = Files(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    command = files.proxy("--listen", f"127.0.0.1:{port}", "--session-idle-timeout", "2")
    with background(command, files.stderr, url) as proxy:
        session = _initialize(url).headers["mcp-session-id"]
        assert _ping(url, session).status_code == 200
        assert len(child_pids(proxy.pid)) == 1  # the session's server
        deadline = time.monotonic() + 30
        while _ping(url, session).status_code != 404:
            assert time.monotonic() < deadline, "the idle session was never ended"
            time.sleep(3)
        while child_pids(proxy.pid):  # its server process ends with it
            assert time.monotonic() < deadline + 10, "the idle session's server still runs"
            time.sleep(0.2)


def test_metrics_count_the_proxys_calls_behind_a_token(tmp_path: Path) -> None:
    """--listen serves /metrics to the metrics token: the proxy's calls by decision and status."""
    import asyncio

    from prometheus_client.parser import text_string_to_metric_families

    files = Files(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    metrics = f"http://127.0.0.1:{port}/metrics"
    token_file = tmp_path / "metrics.token"
    token_file.write_text("scrape-me\n", encoding="utf-8")
    command = files.proxy("--listen", f"127.0.0.1:{port}", "--metrics-token-file", str(token_file))

    async def calls() -> None:
        async with Client(url, cache=None) as client:
            await client.call_tool("read", {"path": "/srv/readme.txt"})
            await client.call_tool("delete", {"path": "/srv/readme.txt"})

    with background(command, files.stderr, url):
        assert httpx.get(metrics, timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(metrics, headers=wrong, timeout=10).status_code == 401
        asyncio.run(calls())
        good = {"Authorization": "Bearer scrape-me"}
        response = httpx.get(metrics, headers=good, timeout=10)
    assert response.status_code == 200
    seen = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert seen[("aegis_actions_total", (("decision", "auto"), ("status", "success")))] == 1
    assert seen[("aegis_actions_total", (("decision", "block"), ("status", "blocked")))] == 1
    assert ("aegis_mcp_sessions", ()) in seen


def test_metrics_are_off_without_a_token_or_public(listening: tuple[str, Files]) -> None:
    """Without --metrics-token-file or --metrics-public, /metrics answers 404 and says why."""
    url, _ = listening
    response = httpx.get(url.replace("/mcp", "/metrics"), timeout=10)
    assert response.status_code == 404
    assert "metrics-public" in response.json()["error"]


def test_a_session_whose_server_crashed_ends_so_the_client_starts_anew(tmp_path: Path) -> None:
    """Over HTTP, a crashed server ends its session: the call errs, then 404, then a new one."""
    files = Files(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    command = files.proxy("--listen", f"127.0.0.1:{port}", server_args=["--crash-on", "read"])
    with background(command, files.stderr, url):
        session = _initialize(url).headers["mcp-session-id"]
        headers = {**HEADERS, "mcp-session-id": session}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert httpx.post(url, json=note, headers=headers, timeout=30).status_code == 202
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "read", "arguments": {"path": "/srv/readme.txt"}},
        }
        crashed = httpx.post(url, json=call, headers=headers, timeout=30)
        assert "closed the connection" in crashed.text
        for _ in range(200):  # the session ends once its call is answered
            if _ping(url, session).status_code == 404:
                break
            time.sleep(0.05)
        assert _ping(url, session).status_code == 404
        fresh = _initialize(url)
        assert fresh.status_code == 200
        assert _ping(url, fresh.headers["mcp-session-id"]).status_code == 200


def test_a_duplicated_id_in_flight_over_http_is_refused_and_recorded(tmp_path: Path) -> None:
    """Over HTTP as over stdio, a request reusing an id in flight is refused and recorded."""
    files = Files(tmp_path)
    port = free_port()
    command = files.proxy("--listen", f"127.0.0.1:{port}", server_args=["--hang-on", "read"])
    url = f"http://127.0.0.1:{port}/mcp"
    with background(command, files.stderr, url) as proxy:
        opened = _initialize(url)
        # the session's server hangs in its tool: the proxy's SIGTERM ends it
        [server] = child_pids(proxy.pid)
        session = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        with httpx.Client(timeout=30) as http:
            assert http.post(url, json=note, headers=session).status_code == 202
            listed = http.post(
                url, json={"jsonrpc": "2.0", "id": 6, "method": "tools/list"}, headers=session
            )
            assert listed.status_code == 200
        read = {"name": "read", "arguments": {"path": "/srv/readme.txt"}}
        hanging = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": read}
        with httpx.Client(timeout=30) as http, _posting(url, hanging, session):
            deadline = time.monotonic() + 30
            while not files.calls() and time.monotonic() < deadline:
                time.sleep(0.05)  # the read is in flight once the server has it
            delete = {"name": "delete", "arguments": {"path": "/srv/readme.txt"}}
            duplicate = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": delete}
            refused = http.post(url, json=duplicate, headers=session)
            # stopped here, not after: the hanging read is answered only once the proxy
            # stops, and its client would wait out its own 60 s timeout first
            proxy.terminate()
            proxy.wait(60)
    assert proxy.returncode == 0
    assert _gone(server), "the session's server outlived the proxy"
    assert refused.status_code == 409
    assert [c["tool"] for c in files.calls()] == ["read"]
    [record] = [r for r in files.records() if r["matched_rule"] == "<mcp-proxy>"]
    assert (record["action_type"], record["result_status"]) == ("delete", "blocked")
    assert record["context"]["mcp_request_id"] == 7
    assert "already in flight" in record["reason"]


@contextlib.contextmanager
def _posting(url: str, body: dict[str, Any], headers: dict[str, str]) -> Iterator[list[str]]:
    """POST ``body`` on a thread of its own, for a request that is answered late or never.

    Yields a list that holds the response's body once it came.
    """
    answered: list[str] = []

    def post() -> None:
        with contextlib.suppress(httpx.HTTPError):
            answered.append(httpx.post(url, json=body, headers=headers, timeout=60).text)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        thread.join(60)


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (exited, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _session(url: str) -> dict[str, str]:
    """The headers of a new, initialized session."""
    opened = _initialize(url)
    session = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert httpx.post(url, json=note, headers=session, timeout=30).status_code == 202
    return session


def _wait_for(what: str, done: Any) -> None:
    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_sigterm_mid_call_ends_the_servers_and_records_the_calls(tmp_path: Path) -> None:
    """SIGTERM to --listen mid-call: a call done within the grace keeps its outcome, others end.

    The call its server answers within STOP_GRACE after the signal is answered
    and recorded with its real outcome; the one still running then is
    recorded as interrupted, so `aegis audit verify` finds no action without
    its outcome; exit 0, and no server hanging in a call outlives the proxy.
    """
    import subprocess

    files = Files(tmp_path)
    port = free_port()
    release = tmp_path / "release"
    hang = ["--hang-on", "read", "--release", str(release)]
    command = files.proxy("--listen", f"127.0.0.1:{port}", "--verbose", server_args=hang)
    url = f"http://127.0.0.1:{port}/mcp"
    with background(command, files.stderr, url) as proxy:
        quick, slow = _session(url), _session(url)
        servers = child_pids(proxy.pid)
        assert len(servers) == 2
        soon = {"name": "read", "arguments": {"path": "/srv/readme.txt"}}
        never = {"name": "read", "arguments": {"path": "/forever"}}
        with (
            _posting(
                url, {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": soon}, quick
            ) as answered,
            _posting(
                url, {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": never}, slow
            ),
        ):
            # both calls are in flight once their servers have them
            _wait_for("the calls never reached the servers", lambda: len(files.calls()) == 2)
            proxy.send_signal(signal.SIGTERM)
            # the proxy is stopping: the first call's server answers now, within the grace
            _wait_for("no stop", lambda: "stopping on SIGTERM" in files.stderr.read_text())
            release.touch()
            try:
                status = proxy.wait(60)  # generous: a loaded machine; the grace is seconds
            finally:
                alive = [server for server in servers if not _gone(server)]
                for server in alive:  # never leave one behind, even when the test fails
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(server, signal.SIGKILL)
    assert status == 0, files.stderr.read_text()
    assert not alive, "a session's server outlived the proxy"
    # the client of the call done within the grace got its answer
    [answer] = answered
    assert '"hello"' in answer
    records = {record["context"]["mcp_request_id"]: record for record in files.records()}
    assert records[7]["result_status"] == "success"
    assert records[8]["result_status"] == "failed"
    assert "interrupted" in records[8]["result_error"]
    assert "the proxy stopped (SIGTERM)" in records[8]["result_error"]
    verified = subprocess.run(
        [sys.executable, "-m", "aegis", "audit", "verify", "--db", files.db, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sigterm_ends_the_children_a_server_left_behind(tmp_path: Path) -> None:
    """A server that exits when the proxy stops, leaving a child, leaves nothing: its group ends."""
    files = Files(tmp_path)
    port = free_port()
    pidfile = tmp_path / "child.pid"
    command = files.proxy("--listen", f"127.0.0.1:{port}", server_args=["--spawn", str(pidfile)])
    url = f"http://127.0.0.1:{port}/mcp"
    with background(command, files.stderr, url) as proxy:
        assert _initialize(url).status_code == 200
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline, "the server never started its child"
            time.sleep(0.05)
        child = int(pidfile.read_text())
        proxy.send_signal(signal.SIGTERM)
        status = proxy.wait(60)
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = not _gone(child)
    if alive:
        os.kill(child, signal.SIGKILL)  # never leave it behind, even when the test fails
    assert status == 0, files.stderr.read_text()
    assert not alive, "the server's child outlived the proxy"


def test_the_sessions_of_a_listening_proxy_share_their_connections(tmp_path: Path) -> None:
    """With --listen and --upstream-url, sessions one after another reuse the same connections.

    Each session had an HTTP client of its own, so at least one connection
    to the server; the proxy now has one pool for all.
    """
    from scripted_http import polite, scripted

    files = Files(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    with scripted(polite) as upstream:
        command = files.proxy("--listen", f"127.0.0.1:{port}", upstream=upstream.url)
        with background(command, files.stderr, url):
            for _ in range(4):
                session = _session(url)
                assert _ping(url, session["mcp-session-id"]).status_code == 200
        pings = upstream.posted("ping")
        connections = upstream.connections
    assert len(pings) == 4
    assert connections < 4
