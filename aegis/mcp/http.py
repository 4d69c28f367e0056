"""The proxy's Streamable HTTP face: many clients, one governed server each.

Each client session (an ``initialize`` POST without a session id) gets
its own :class:`~aegis.mcp.proxy.ProxySession` with its own downstream
connection, since a stdio server serves exactly one client. The SDK's
``StreamableHTTPServerTransport`` speaks the transport (sessions, SSE
streams, GET and DELETE); in front of it this app judges every POST body
the way the stdio face judges a line: too large, not JSON, a batch, a
duplicated id in flight, or no session: a JSON-RPC error, and nothing
reaches the transport or the server.

Size: one app holds the whole HTTP face, because its parts share the
session table and its lock: the body checks, the Host and Origin checks,
sessions made, idled out and given way, the shared upstream client, and
the server's start and stop; split, each part would reach into the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aegis.mcp._jsonrpc import (
    DOWNSTREAM_UNAVAILABLE,
    INVALID_REQUEST,
    IdScanner,
    Message,
    RequestId,
    classify,
    error_reply,
    parse_frame,
)
from aegis.mcp._logs import QuietLog
from aegis.mcp._sketch import HEAD_BYTES, sketch_request
from aegis.mcp.downstream import EXIT_GRACE, check_server, http_pool
from aegis.mcp.proxy import ProxySession
from aegis.mcp.runner import ProxySettings, build_runtime, check_loopback, session_opener
from aegis.runtime.engine import Runtime

try:
    import uvicorn
    from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
    from mcp.server.transport_security import (
        TransportSecurityMiddleware,
        TransportSecuritySettings,
    )
    from mcp.shared.message import ServerMessageMetadata, SessionMessage
    from mcp.types import jsonrpc_message_adapter
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily, Metric
    from starlette.requests import Request

    from aegis.runtime.metrics import ActionsCollector, ActionTally, metrics_response
except ImportError as exc:
    # The mcp extra brings all of these (the SDK needs uvicorn and starlette).
    missing = exc.name or getattr(exc.__cause__, "name", None) or "the mcp SDK"
    raise ImportError(
        f"aegis mcp-proxy --listen needs the mcp extra ({missing.partition('.')[0]} is not "
        'installed): pip install "aegis-runtime[mcp]"'
    ) from exc

__all__ = ["GovernedHttpApp", "run_http"]


class _SessionsCollector:
    """``aegis_mcp_sessions``: the client sessions open now."""

    def __init__(self, sessions: dict[str, Any]) -> None:
        self.sessions = sessions

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "aegis_mcp_sessions", "MCP client sessions open now.", value=len(self.sessions)
        )


_log = logging.getLogger("aegis.mcp")

#: the path clients POST to
MCP_PATH = "/mcp"
#: seconds the calls in flight get to finish after SIGTERM or SIGINT; then they are
#: cancelled (recorded as interrupted: the proxy stopped) and their servers closed
STOP_GRACE = 1.0
#: seconds uvicorn waits for its connections once the sessions are stopping, on top of
#: STOP_GRACE and a server's exit (two EXIT_GRACEs): then it drops them
_CONNECTIONS_GRACE = 2.0

_Scope = dict[str, Any]
_Receive = Any
_Send = Any


@dataclass
class _Session:
    """One client's transport, its governed relay, and the task that runs both."""

    transport: StreamableHTTPServerTransport
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    proxy: ProxySession | None = None
    failure: str | None = None
    task: asyncio.Task[None] | None = None
    #: when the client last sent anything (the event loop's clock)
    last_seen: float = field(default_factory=lambda: asyncio.get_running_loop().time())

    def idle(self) -> bool:
        """Whether nothing of the client is being served now."""
        return self.proxy is not None and self.proxy.inflight == 0


async def _respond(
    send: _Send, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    for key, value in (headers or {}).items():
        raw_headers.append((key.encode(), value.encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class _TooLarge(Exception):
    """A body past the limit; ``head`` is its start, kept for the audit trail."""

    def __init__(self, head: bytes) -> None:
        super().__init__()
        self.head = head


async def _read_body(receive: _Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise ConnectionError("the client disconnected")
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge((b"".join(chunks) + chunk)[:HEAD_BYTES])
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: _Receive) -> _Receive:
    """A ``receive`` that yields ``body`` once, then waits on the real one."""
    sent = False

    async def again() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        event: dict[str, Any] = await receive()
        return event

    return again


def _header(scope: _Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class GovernedHttpApp:
    """An ASGI app serving governed MCP sessions at ``/mcp``."""

    def __init__(
        self,
        settings: ProxySettings,
        runtime: Runtime,
        *,
        host: str,
        port: int,
        pool: Any = None,
    ) -> None:
        self._settings = settings
        # the sessions reach an --upstream-url over the one pool of connections
        self._open = session_opener(settings, runtime, pool)
        self._sessions: dict[str, _Session] = {}
        #: why the proxy stopped, once it is stopping (no new session then)
        self._stopped: str | None = None
        self._security = security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[
                f"{host}:{port}",
                f"127.0.0.1:{port}",
                f"localhost:{port}",
                f"[::1]:{port}",
            ],
            allowed_origins=[
                f"http://{host}:{port}",
                f"http://127.0.0.1:{port}",
                f"http://localhost:{port}",
            ],
        )
        self._guard = TransportSecurityMiddleware(security)
        # the log lines clients provoke, bounded (a flood of bad POSTs)
        self._refusals = QuietLog(_log)
        # /metrics: the actions this proxy records, and its sessions
        tally = ActionTally()
        self._registry = CollectorRegistry(auto_describe=True)
        self._registry.register(ActionsCollector(tally))
        self._registry.register(_SessionsCollector(self._sessions))
        runtime.audit.subscribe(tally.add)

    async def _metrics(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        settings = self._settings
        if settings.metrics_token is None and not settings.metrics_public:
            await _respond(
                send,
                404,
                {"error": "metrics are off: give --metrics-token-file or --metrics-public"},
            )
            return
        if not settings.metrics_public:
            given = _header(scope, b"authorization") or ""
            scheme, _, token = given.partition(" ")
            expected = settings.metrics_token or ""
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), expected.encode()
            ):
                await _respond(
                    send,
                    401,
                    {"error": "/metrics needs the metrics token (Authorization: Bearer ...)"},
                    {"www-authenticate": "Bearer"},
                )
                return
        await metrics_response(self._registry)(scope, receive, send)

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        """Serve one HTTP request."""
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            refused = await self._guard.validate_request(Request(scope), is_post=False)
            if refused is not None:
                await refused(scope, receive, send)
                return
            await self._metrics(scope, receive, send)
            return
        if scope["path"].rstrip("/") != MCP_PATH:
            await _respond(send, 404, {"error": f"not found; MCP is served at {MCP_PATH}"})
            return
        method = scope["method"]
        # Host and Origin first (DNS rebinding): a page in a browser must not
        # be able to start a session, and with it a server process.
        refused = await self._guard.validate_request(Request(scope), is_post=method == "POST")
        if refused is not None:
            self._refusals.warning(
                "http", "refused an HTTP request: %s", bytes(refused.body).decode(errors="replace")
            )
            await refused(scope, receive, send)
            return
        session_id = _header(scope, MCP_SESSION_ID_HEADER.encode())
        if method == "POST":
            await self._post(scope, receive, send, session_id)
            return
        if method not in ("GET", "DELETE"):
            await _respond(
                send, 405, {"error": "use POST, GET or DELETE"}, {"allow": "GET, POST, DELETE"}
            )
            return
        session = self._sessions.get(session_id or "")
        if session is None:
            await _respond(
                send, 404, error_reply(None, INVALID_REQUEST, "Not Found: unknown or ended session")
            )
            return
        session.last_seen = asyncio.get_running_loop().time()
        await session.transport.handle_request(scope, receive, send)
        if method == "DELETE" and session.task is not None:
            session.task.cancel()

    async def _post(
        self, scope: _Scope, receive: _Receive, send: _Send, session_id: str | None
    ) -> None:
        limit = self._settings.max_message_bytes
        try:
            body = await _read_body(receive, limit)
        except _TooLarge as large:
            self._refusals.warning("client", "refused a message over %d bytes", limit)
            known = self._sessions.get(session_id or "")
            scanner = IdScanner()
            scanner.feed(large.head)
            sketch = sketch_request(large.head, scanner.found)
            if sketch is not None and known is not None and known.proxy is not None:
                await known.proxy.record_refused(
                    sketch, f"it was larger than {limit} bytes (--max-message-bytes)"
                )
            await _respond(
                send,
                413,
                error_reply(
                    None, INVALID_REQUEST, f"Invalid Request: message larger than {limit} bytes"
                ),
            )
            return
        except ConnectionError:
            return
        frame = parse_frame(body)
        if frame.replies:
            self._refusals.warning(
                "client", "refused a message: %s", frame.replies[0]["error"]["message"]
            )
            known = self._sessions.get(session_id or "")
            if known is not None and known.proxy is not None:
                for member in frame.members:
                    await known.proxy.record_refused(member, frame.why)
            await _respond(send, 400, list(frame.replies) if frame.batch else frame.replies[0])
            return
        message = frame.message or {}
        request_id: RequestId | None = message.get("id") if frame.kind == "request" else None
        if session_id is None:
            if frame.kind != "request" or message.get("method") != "initialize":
                await _respond(
                    send,
                    400,
                    error_reply(
                        request_id,
                        INVALID_REQUEST,
                        "Bad Request: no Mcp-Session-Id; start with initialize",
                    ),
                )
                return
            if self._stopped is not None:
                await _respond(
                    send,
                    503,
                    error_reply(
                        request_id, INVALID_REQUEST, f"Service Unavailable: {self._stopped}"
                    ),
                )
                return
            most = self._settings.max_sessions
            if len(self._sessions) >= most and not await self._evict_idlest():
                _log.warning("refused a new session: %d sessions are busy", most)
                await _respond(
                    send,
                    503,
                    error_reply(
                        request_id,
                        INVALID_REQUEST,
                        f"Service Unavailable: {most} sessions are serving requests;"
                        " try again when one is done",
                    ),
                )
                return
            session = await self._start_session()
        else:
            found = self._sessions.get(session_id)
            if found is None:
                await _respond(
                    send,
                    404,
                    error_reply(request_id, INVALID_REQUEST, "Not Found: unknown or ended session"),
                )
                return
            session = found
            session.last_seen = asyncio.get_running_loop().time()
        await session.ready.wait()
        if session.proxy is None:
            await _respond(
                send,
                502,
                error_reply(
                    request_id,
                    DOWNSTREAM_UNAVAILABLE,
                    session.failure or "the MCP server is unavailable",
                ),
            )
            return
        if request_id is not None and session.proxy.is_inflight(request_id):
            await session.proxy.record_refused(message, "its request id was already in flight")
            await _respond(
                send,
                409,
                error_reply(
                    request_id,
                    INVALID_REQUEST,
                    f"Invalid Request: id {request_id!r} is already in use by a request in flight",
                ),
            )
            return
        await session.transport.handle_request(scope, _replay(body, receive), send)

    async def _evict_idlest(self) -> bool:
        """End the session idle the longest, to make room; ``False`` when every one is busy."""
        idle = [(s.last_seen, sid) for sid, s in self._sessions.items() if s.idle()]
        if not idle:
            return False
        _, session_id = min(idle)
        session = self._sessions.pop(session_id)
        _log.warning(
            "ended MCP session %s, idle the longest, to make room for a new client", session_id
        )
        if session.task is not None:
            session.task.cancel()
            with contextlib.suppress(BaseException):
                await session.task
        return True

    async def _start_session(self) -> _Session:
        session_id = uuid.uuid4().hex
        transport = StreamableHTTPServerTransport(
            session_id,
            security_settings=self._security,
            # many clients (the Inspector, test suites) never end their sessions
            idle_timeout=self._settings.idle_timeout,
        )
        session = _Session(transport)
        self._sessions[session_id] = session
        session.task = asyncio.create_task(self._run_session(session_id, session))
        return session

    async def _run_session(self, session_id: str, session: _Session) -> None:
        try:
            async with session.transport.connect() as (read_stream, write_stream):

                async def send_to_client(
                    message: Message | list[Message], related: RequestId | None
                ) -> None:
                    for one in message if isinstance(message, list) else [message]:
                        envelope = jsonrpc_message_adapter.validate_python(one, by_name=False)
                        metadata = (
                            None
                            if related is None
                            else ServerMessageMetadata(related_request_id=related)
                        )
                        await write_stream.send(SessionMessage(envelope, metadata=metadata))

                idle = session.transport.idle_scope
                with idle if idle is not None else contextlib.nullcontext():
                    await self._relay(session, session_id, read_stream, send_to_client)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # one session's failure must not end the proxy
            _log.exception("MCP session %s failed", session_id)
            session.failure = f"the MCP server is unavailable: {type(exc).__name__}: {exc}"
        finally:
            session.ready.set()
            self._sessions.pop(session_id, None)

    async def _relay(
        self, session: _Session, session_id: str, read_stream: Any, send_to_client: Any
    ) -> None:
        """Relay one session's messages until the client or the transport ends it."""
        async with self._open(send_to_client, mcp_session_id=session_id) as proxy:
            session.proxy = proxy
            session.ready.set()
            pump = asyncio.create_task(proxy.pump())

            async def reading() -> None:
                async for item in read_stream:
                    if isinstance(item, Exception):
                        proxy.refusals.warning(
                            "client", "the transport refused a message: %s", item
                        )
                        continue
                    checked = classify(
                        item.message.model_dump(by_alias=True, mode="json", exclude_unset=True)
                    )
                    if checked.message is not None and checked.kind is not None:
                        await proxy.from_client(checked.kind, checked.message)

            reader = asyncio.create_task(reading())
            try:
                await asyncio.wait({pump, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not reader.done():
                    # The server is gone: the calls in flight fail at once; once
                    # they are answered the session ends, and the client's next
                    # request gets 404, which tells it to start a new session
                    # (with a new server).
                    await proxy.drain(1.0)
                    _log.error("ended MCP session %s: %s", session_id, proxy.gone)
                else:
                    reader.result()
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                await proxy.close(self._stopped)
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump

    async def stop(self, why: str, grace: float = STOP_GRACE) -> None:
        """Start no session; give the calls in flight ``grace`` seconds, then end every session.

        A call still running then is cancelled, and its audit record says it
        was interrupted, and ``why``; each session's server is closed (killed
        when it does not exit).
        """
        self._stopped = why
        proxies = [s.proxy for s in self._sessions.values() if s.proxy is not None]
        if proxies:
            await asyncio.gather(*(proxy.drain(grace) for proxy in proxies))
        await self.close()

    async def close(self) -> None:
        """End every session."""
        tasks = [s.task for s in self._sessions.values() if s.task is not None]
        for task in tasks:
            task.cancel(self._stopped)
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


async def run_http(
    settings: ProxySettings, host: str, port: int, *, approval_handler: Any = None
) -> None:
    """Serve governed sessions over Streamable HTTP at ``http://host:port/mcp``."""
    check_loopback(host)
    check_server(settings.command, settings.upstream_url)
    async with (
        build_runtime(settings, approval_handler) as runtime,
        http_pool(settings.upstream_url) as pool,
    ):
        app = GovernedHttpApp(settings, runtime, host=host, port=port, pool=pool)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            # a connection still open once the sessions have ended is dropped
            timeout_graceful_shutdown=math.ceil(STOP_GRACE + 2 * EXIT_GRACE + _CONNECTIONS_GRACE),
        )
        server = _Server(config)
        sys.stderr.write(
            f"aegis mcp-proxy: serving {settings.target!r} at http://{host}:{port}{MCP_PATH}\n"
        )
        sys.stderr.flush()
        with _stop_on_signals(server, app) as stopping:
            try:
                await server.serve()
            finally:
                if stopping:
                    with contextlib.suppress(BaseException):
                        await stopping[0]
                await app.close()


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handlers (see :func:`_stop_on_signals`).

    uvicorn's restore the previous handlers when it has shut down and raise
    the signal again: SIGTERM's default action then ends the process before
    the sessions are closed, leaving their servers running and the calls in
    flight without their outcome.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def _stop_on_signals(
    server: uvicorn.Server, app: GovernedHttpApp
) -> Iterator[list[asyncio.Task[None]]]:
    """On SIGTERM or SIGINT: stop accepting, stop the sessions, and let ``serve()`` return.

    The first signal makes uvicorn shut down (no new connection) while the
    app gives the calls in flight :data:`STOP_GRACE` seconds, then ends
    every session: calls cancelled and recorded as interrupted, servers
    closed. A second signal makes uvicorn stop waiting for its connections.
    Yields the list that then holds the stopping task, for the caller to await.
    """
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def stop(sig: signal.Signals) -> None:
        if stopping:
            server.force_exit = True
            return
        why = f"the proxy stopped ({sig.name})"
        _log.info("stopping on %s: the calls in flight get %gs, then end", sig.name, STOP_GRACE)
        server.should_exit = True
        stopping.append(loop.create_task(app.stop(why)))

    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop, sig)
            installed.append(sig)
    try:
        yield stopping
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
