"""Put a governing proxy in front of an MCP server: the pieces ``aegis mcp-proxy`` runs.

:class:`ProxySettings` says what to run; :func:`run_stdio` serves one
client over the process's own stdin and stdout, :func:`run_http` serves
any number over Streamable HTTP, and :func:`check_tools` lists the
server's tools with what the policy decides for each.

Size: the settings, the runtime they build and the three ways to run
(stdio, HTTP, ``--check``) stay together because each way reads the same
settings and builds the same runtime; ``--check`` adds about 150 lines of
its own (a pipe to the server it starts, a deadline, and stopping that
server's process group), the first candidate for a module of its own.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aegis.core.action import Action
from aegis.core.coerce import coerce_arguments
from aegis.core.decision import PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.core.policy import Policy, fold_case
from aegis.errors import ConfigurationError
from aegis.mcp._jsonrpc import DOWNSTREAM_UNAVAILABLE, Unreadable, error_reply
from aegis.mcp.downstream import MAX_SERVER_LINE, check_server, open_downstream
from aegis.mcp.proxy import (
    ProxySession,
    SendToClient,
    SessionOptions,
    execute_mcp_call,
    offer_approval_link,
)
from aegis.mcp.stdio import DEFAULT_MAX_MESSAGE_BYTES, serve_stdio
from aegis.runtime.approval import ApprovalHandler, CLIApprovalHandler
from aegis.runtime.engine import Runtime

__all__ = [
    "CHECK_DEADLINE",
    "CheckedTool",
    "DenyApprovalHandler",
    "ProxySettings",
    "build_runtime",
    "check_loopback",
    "check_tools",
    "make_approval_handler",
    "run_stdio",
    "session_opener",
]

_log = logging.getLogger("aegis.mcp")


@dataclass
class ProxySettings:
    """Everything the proxy needs to run.

    Args:
        policy: decides every tool call.
        command: the MCP server to start (stdio), or ``()`` with ``upstream_url``.
        upstream_url: the Streamable HTTP URL of a running MCP server.
        name: the ``target`` of every action; defaults to the command's name.
        db: the audit trail (a path, or what ``AuditLogger`` accepts).
        durability: the audit trail's (:data:`~aegis.stores.base.Durability`;
            ``"result"`` when ``None``).
        schema: the PostgreSQL schema of the trail and its usage counters.
        approval: ``"terminal"``, ``"deny"`` or ``"remote"``.
        approval_url: the approval service (``aegis serve``), for ``remote``.
        approval_token: the agent token for the approval service.
        approval_timeout: seconds an approval may take before it is denied.
        call_timeout: seconds the server may take to answer one request.
        hide_blocked: leave out of ``tools/list`` the tools the policy always blocks.
        max_message_bytes: the largest message a client may send.
        max_server_message_bytes: the longest message a server may send (a line,
            an HTTP body or event); a longer one is read past and the request it
            answers fails.
        max_sessions: with ``--listen``, client sessions served at once; when all
            are taken the one idle the longest gives way to a new client.
        idle_timeout: with ``--listen``, seconds a session may sit idle before it ends.
        metrics_public: with ``--listen``, serve ``/metrics`` without a token.
        metrics_token: with ``--listen``, the bearer token ``/metrics`` asks for.
        session_id: the runtime's audit session (random by default).
        context: more audit context for every call.
        agent: who acts, for limits keyed by ``agent``.
        policy_path: the policy's file, watched when ``reload`` is true.
        reload: decide later calls by the file's new content when it changes.
        progress_interval: seconds between the progress notifications sent
            while a call waits for its decision (to clients that asked for
            progress); ``0`` sends none.
    """

    policy: Policy
    command: Sequence[str] = ()
    upstream_url: str | None = None
    name: str | None = None
    db: str = "aegis_audit.db"
    durability: str | None = None
    schema: str | None = None
    approval: str = "deny"
    approval_url: str | None = None
    approval_token: str | None = None
    approval_timeout: float | None = 900.0
    call_timeout: float | None = 300.0
    hide_blocked: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_server_message_bytes: int = MAX_SERVER_LINE
    max_sessions: int = 32
    idle_timeout: float = 300.0
    metrics_public: bool = False
    metrics_token: str | None = None
    session_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    agent: str | None = None
    policy_path: str | None = None
    reload: bool = False
    progress_interval: float = 15.0

    @property
    def target(self) -> str:
        """The actions' ``target``: ``name``, else the server command's or URL's name."""
        if self.name:
            return self.name
        if self.command:
            stem = Path(self.command[0]).name
            # `python server.py` and `npx pkg` say more by their first argument.
            if stem.startswith(("python", "node", "npx", "uvx", "uv", "deno", "bun")):
                for arg in self.command[1:]:
                    if not arg.startswith("-"):
                        return Path(arg).stem or stem
            return stem
        return self.upstream_url or "mcp"


class DenyApprovalHandler(ApprovalHandler):
    """Deny every action that needs approval, saying how to get one asked instead."""

    async def request_approval(self, decision: PolicyDecision) -> ApprovalOutcome:
        """Deny ``decision`` with the reason."""
        return ApprovalOutcome(
            False,
            reason="this call needs a human's approval and the proxy has no approver; start "
            "it with --approval-url URL (the approval service) or --approval terminal",
        )


def check_loopback(host: str) -> None:
    """Refuse to listen beyond this machine: the proxy authenticates nobody.

    Raises:
        ConfigurationError: ``host`` is not a loopback address.
    """
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigurationError(
            f"--listen {host}: the proxy has no authentication of its own, so it listens on "
            "loopback only (127.0.0.1, ::1 or localhost); put an authenticating reverse proxy "
            "in front of it to serve other machines"
        )


def _open_tty(mode: str) -> IO[str]:
    try:
        return open("/dev/tty", mode, encoding="utf-8")  # lives as long as the proxy
    except OSError as exc:
        raise ConfigurationError(
            f"--approval terminal needs a terminal (/dev/tty: {exc.strerror}); the stdio wire "
            "is the client's, so use --approval-url with the approval service instead"
        ) from exc


def make_approval_handler(settings: ProxySettings) -> Any:
    """The approval handler ``settings.approval`` names.

    Raises:
        ConfigurationError: ``remote`` without a URL, or ``terminal`` without a terminal.
    """
    if settings.approval == "deny":
        return DenyApprovalHandler()
    if settings.approval == "terminal":
        # The proxy's stdin and stdout may be the MCP wire: ask on the terminal itself.
        return CLIApprovalHandler(
            input_stream=_open_tty("r"),
            output_stream=_open_tty("w"),
            timeout=settings.approval_timeout,
        )
    if settings.approval == "remote":
        if not settings.approval_url:
            raise ConfigurationError("--approval remote needs --approval-url URL")
        scheme, sep, _ = settings.approval_url.partition("://")
        if not sep or scheme.lower() not in {"http", "https"}:
            example = settings.approval_url if not sep else "127.0.0.1:8700"
            raise ConfigurationError(
                f"--approval-url {settings.approval_url!r} is not the URL of an approval "
                f"service; it starts with http:// or https://, e.g. http://{example}"
            )
        try:
            from aegis.runtime.approval_remote import (  # noqa: PLC0415  # optional part
                RemoteApprovalHandler,
            )
        except ImportError as exc:
            raise ConfigurationError(
                "--approval-url needs the approval client of the server extra: "
                'pip install "aegis-runtime[server]"'
            ) from exc
        token = settings.approval_token or os.environ.get("AEGIS_TOKEN")
        if not token:
            raise ConfigurationError(
                "--approval-url needs an agent token: set AEGIS_TOKEN or give "
                "--approval-token-file PATH (create one with "
                "`aegis token create NAME --role agent`)"
            )
        timeout = settings.approval_timeout or 900.0
        return RemoteApprovalHandler(
            settings.approval_url,
            token=token,
            timeout=timeout,
            transport=_linking_transport(settings.approval_url),
        )
    raise ConfigurationError(
        f"unknown approval mode {settings.approval!r}; use terminal, deny or remote"
    )


def _linking_transport(base_url: str) -> Any:
    """An httpx transport that offers each new approval request's inbox page to the client."""
    import httpx  # noqa: PLC0415  # the server extra, present with the remote handler

    inbox = base_url.rstrip("/")

    class LinkingTransport(httpx.AsyncHTTPTransport):
        """Passes every request on; reads the id of a created approval request."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            if not (
                request.method == "POST"
                and request.url.path.endswith("/api/v1/approvals")
                and response.status_code in (200, 201)
            ):
                return response
            content = await response.aread()
            try:
                request_id = json.loads(content)["id"]
            except (ValueError, KeyError, TypeError):
                request_id = None
            if isinstance(request_id, str | int):
                offer_approval_link(f"{inbox}/requests/{request_id}")
            headers = [
                (k, v)
                for k, v in response.headers.multi_items()
                if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
            ]
            return httpx.Response(
                response.status_code,
                headers=headers,
                content=content,
                extensions=response.extensions,
                request=request,
            )

    return LinkingTransport()


def build_runtime(settings: ProxySettings, approval_handler: Any | None = None) -> Runtime:
    """The runtime that decides, approves and records the proxy's calls."""
    from aegis.runtime.audit import AuditLogger  # noqa: PLC0415  # SQLite only when run

    handler = approval_handler if approval_handler is not None else make_approval_handler(settings)
    timeout = settings.approval_timeout
    if timeout is not None and settings.approval == "remote":
        # The remote handler keeps its own time and cancels its request on
        # the service when it gives up; the runtime's limit is the backstop.
        timeout += 30.0
    return Runtime(
        executor=execute_mcp_call,
        policy=settings.policy,
        approval_handler=handler,
        audit_logger=AuditLogger(
            settings.db, durability=settings.durability, schema=settings.schema
        ),
        session_id=settings.session_id,
        approval_timeout=timeout,
        agent=settings.agent,
        policy_path=settings.policy_path if settings.reload else None,
        reload=settings.reload,
    )


def _options(settings: ProxySettings) -> SessionOptions:
    return SessionOptions(
        target=settings.target,
        hide_blocked=settings.hide_blocked,
        call_timeout=settings.call_timeout,
        context=settings.context,
        progress_interval=settings.progress_interval,
    )


def session_opener(settings: ProxySettings, runtime: Runtime, pool: Any = None) -> Any:
    """A function ``open(send, **context)`` connecting a new server for one client.

    ``context`` adds to every audit record of the session (e.g. its HTTP session id).
    ``pool`` is the proxy's HTTP connections to an ``upstream_url`` (see
    :func:`~aegis.mcp.downstream.http_pool`), whose connections the sessions share.
    """

    @asynccontextmanager
    async def open_session(send: SendToClient, **context: str) -> AsyncIterator[ProxySession]:
        options = _options(settings)
        options.context = {**options.context, **context}
        async with open_downstream(
            settings.command,
            settings.upstream_url,
            max_line=settings.max_server_message_bytes,
            pool=pool,
        ) as downstream:
            yield ProxySession(runtime, downstream, send, options)

    return open_session


async def run_stdio(
    settings: ProxySettings,
    *,
    input_fd: int = 0,
    output_fd: int = 1,
    approval_handler: Any | None = None,
) -> None:
    """Serve one client over ``input_fd``/``output_fd`` until it closes its end."""
    check_server(settings.command, settings.upstream_url)
    async with build_runtime(settings, approval_handler) as runtime:
        if _is_devnull(input_fd):
            # Under a supervisor or nohup there is no client on stdin: nothing to serve.
            raise ConfigurationError(
                "stdin is /dev/null, so no MCP client is connected: the stdio proxy serves the "
                "client on its stdin (start it from the client's configuration), or use "
                "--listen HOST:PORT to serve clients over HTTP"
            )
        _log.info(
            "governing MCP server %s as %r over stdio",
            settings.upstream_url or " ".join(settings.command),
            settings.target,
        )
        with _stop_on_signals():
            await serve_stdio(
                session_opener(settings, runtime),  # one session: its own pool
                input_fd=input_fd,
                output_fd=output_fd,
                max_message_bytes=settings.max_message_bytes,
            )


def _is_devnull(fd: int) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(os.devnull))
    except OSError:
        return False


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into a clean stop of the current task.

    Without it SIGTERM would end the process at once: calls in flight would
    leave no final record and the server would lose its stdin only by
    accident. Cancelling the task runs every ``finally`` on the way out.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    stopping = False

    def stop(sig: signal.Signals) -> None:
        nonlocal stopping
        if task is not None and not stopping:
            stopping = True
            _log.info("stopping: cancelling the calls in flight and closing the server")
            # the message reaches the records of the calls cancelled (serve_stdio)
            task.cancel(f"the proxy stopped ({sig.name})")

    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop, sig)
            installed.append(sig)
    try:
        yield
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


#: seconds ``--check`` gives the server to start and list its tools (``--check-timeout``)
CHECK_DEADLINE = 10.0
#: seconds a checked server gets to exit after its stdin closes, then after SIGTERM,
#: before its process group is killed: a check ends at most 3 of these after its deadline
CHECK_EXIT_GRACE = 0.5


@dataclass(frozen=True)
class CheckedTool:
    """One tool of the server, with what the policy decides for a sample call."""

    tool: dict[str, Any]
    decision: PolicyDecision
    #: the arguments decided on: the sample given for the tool, else none
    arguments: dict[str, Any]
    #: whether a rule for the tool has conditions, so other arguments may decide otherwise
    conditional: bool


def _conditional(policy: Policy, tool: str, target: str) -> bool:
    """Whether a rule matching ``tool`` on ``target`` looks at anything but the names."""
    fold = fold_case if policy.match_case == "insensitive" else None
    if fold is not None:
        tool, target = fold(tool), fold(target)
    for rule in policy.rules:
        kind, where = rule.match_type, rule.match_target
        if fold is not None:
            kind, where = fold(kind), fold(where)
        if (
            fnmatch.fnmatchcase(tool, kind)
            and fnmatch.fnmatchcase(target, where)
            and rule.conditions
        ):
            return True
    return False


class _KeptErrors(logging.Handler):
    """The MCP SDK's log records during a check, kept instead of printed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first: logging.LogRecord | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.first is None:
            self.first = record

    def note(self) -> str:
        """The first kept record as a clause of the check's one line ("" when none)."""
        record = self.first
        if record is None:
            return ""
        error = record.exc_info[1] if record.exc_info else None
        errors = getattr(error, "errors", None)
        if callable(errors) and "JSONRPC" in record.getMessage():
            try:
                line = errors()[0].get("input")
            except Exception:  # an error of another shape: say less, never fail here
                line = None
            if isinstance(line, str | bytes):
                shown = line if isinstance(line, str) else line.decode("utf-8", "replace")
                cut = shown if len(shown) <= 80 else shown[:79] + "\u2026"
                return f"; it wrote a line that is not JSON-RPC on its stdout: {cut!r}"
        return f"; the MCP client said: {record.getMessage()}"


@contextmanager
def _sdk_errors_kept() -> Iterator[_KeptErrors]:
    """Keep the MCP SDK's logs (a traceback per bad line) out of --check's one line.

    A server that prints a banner on stdout, or crashes, makes the SDK log
    each unreadable line with its traceback; the check says the first of
    them in its own line instead.
    """
    sdk = logging.getLogger("mcp")
    kept = _KeptErrors()
    propagate = sdk.propagate
    sdk.addHandler(kept)
    sdk.propagate = False
    try:
        yield kept
    finally:
        sdk.removeHandler(kept)
        sdk.propagate = propagate


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _note(refused: list[Unreadable], kept: _KeptErrors, *, http: bool = False) -> str:
    if refused:
        first = refused[0]
        shown = first.line if len(first.line) <= 79 else first.line[:79] + "\u2026"
        if http:
            return f"; the message refused: {shown!r}"
        return f"; it wrote a line that is not JSON-RPC on its stdout: {shown!r}"
    return kept.note()


@asynccontextmanager
async def _checked_pipe(
    settings: ProxySettings, refused: list[Unreadable]
) -> AsyncIterator[tuple[Any, Any]]:
    """An SDK transport over the proxy's own connection to the server.

    A command is reached over :class:`PipeDownstream`, a URL over
    :class:`~aegis.mcp.http_downstream.HttpDownstream`: each message is
    read by the proxy's reader, as in a proxy session; one it refuses is
    kept in ``refused`` (for the check's error) and, when it answers a
    request, answered to the SDK as an error so that the check fails at once.
    """
    import anyio  # noqa: PLC0415  # with the mcp SDK
    from mcp.shared.message import SessionMessage  # noqa: PLC0415
    from mcp.types import jsonrpc_message_adapter  # noqa: PLC0415

    to_sdk, from_server = anyio.create_memory_object_stream[Any](0)
    to_server, from_sdk = anyio.create_memory_object_stream[Any](0)

    async with open_downstream(
        settings.command,
        settings.upstream_url,
        max_line=settings.max_server_message_bytes,
        exit_grace=CHECK_EXIT_GRACE,
    ) as downstream:

        async def read() -> None:
            async with to_sdk:
                async for item in downstream.messages():
                    if isinstance(item, Unreadable):
                        refused.append(item)
                        if item.request_id is None:
                            continue
                        item = error_reply(  # noqa: PLW2901
                            item.request_id,
                            DOWNSTREAM_UNAVAILABLE,
                            f"the reply was refused by the Aegis proxy: {item.why}",
                        )
                    elif isinstance(item, Exception):
                        continue
                    try:
                        envelope = jsonrpc_message_adapter.validate_python(item, by_name=False)
                    except ValueError as exc:
                        await to_sdk.send(exc)
                        continue
                    await to_sdk.send(SessionMessage(envelope))

        async def write() -> None:
            async with from_sdk:
                async for message in from_sdk:
                    await downstream.send(
                        message.message.model_dump(by_alias=True, mode="json", exclude_unset=True)
                    )

        async with anyio.create_task_group() as group:
            group.start_soon(read)
            group.start_soon(write)
            try:
                yield from_server, to_server
            finally:
                group.cancel_scope.cancel()


async def check_tools(
    settings: ProxySettings,
    samples: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    deadline: float = CHECK_DEADLINE,
) -> list[CheckedTool]:
    """The server's tools, each with the policy's decision for a sample call.

    A tool is decided with its arguments in ``samples`` (typed by its
    inputSchema, as the proxy types real calls), else with none: a rule
    with conditions on the arguments may then show its fallback, and
    :attr:`CheckedTool.conditional` says so. The SDK's own :class:`mcp.Client`
    lists the tools, over the proxy's own connection to the server
    (:func:`_checked_pipe`): what the check reads is what the proxy would.

    Raises:
        ConfigurationError: the server cannot be started, fails, or does not
            list its tools within ``deadline`` seconds; one line saying which.
    """
    try:
        from mcp import Client  # noqa: PLC0415  # the SDK's own client
    except ImportError as exc:
        raise ConfigurationError(
            f'--check needs the mcp SDK ({exc}): pip install "aegis-runtime[mcp]"'
        ) from exc

    check_server(settings.command, settings.upstream_url)
    server: Any
    refused: list[Unreadable] = []
    # The server is reached over the proxy's own pipe or HTTP client, not the
    # SDK's: it is read as the proxy reads it (a URL's replies too: the SDK's
    # client would take a member given twice, or NaN), and a command that hangs
    # is killed within CHECK_EXIT_GRACE seconds, not the SDK's four.
    server = _checked_pipe(settings, refused)
    tools: list[dict[str, Any]] = []

    async def listing() -> None:
        async with Client(server, mode="legacy", cache=None) as client:
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                tools.extend(
                    tool.model_dump(by_alias=True, mode="json", exclude_none=True)
                    for tool in page.tools
                )
                cursor = page.next_cursor
                if not cursor:
                    break

    where = settings.upstream_url or " ".join(settings.command)
    http = settings.upstream_url is not None
    speaking = "Streamable HTTP" if http else "stdio"
    with _sdk_errors_kept() as kept:
        try:
            async with asyncio.timeout(deadline):
                await listing()
        except TimeoutError:
            raise ConfigurationError(
                f"the MCP server ({where}) did not list its tools within {deadline:g}s: "
                f"it hangs, or is not an MCP server speaking {speaking}"
                f"{_note(refused, kept, http=http)}; "
                "a server slow to start may be given longer with --check-timeout SECONDS"
            ) from None
        except Exception as exc:  # the SDK wraps failures in exception groups
            leaf = _leaf(exc)
            text = str(leaf).strip().splitlines()
            why = text[0] if text else type(leaf).__name__
            # a command's stderr is the proxy's: what it said is above the error
            failed, above = (
                ("failed", "") if http else ("failed or exited", "; its own messages are above")
            )
            raise ConfigurationError(
                f"could not list the tools of the MCP server ({where}): it {failed} "
                f"before answering ({type(leaf).__name__}: {why})"
                f"{_note(refused, kept, http=http)}{above}"
            ) from None
    samples = samples or {}
    unknown = sorted(set(samples) - {tool["name"] for tool in tools})
    if unknown:
        raise ConfigurationError(
            f"--check-args names tools the server does not list: {', '.join(unknown)}"
        )
    checked = []
    for tool in tools:
        arguments = dict(samples.get(tool["name"], {}))
        schema = tool.get("inputSchema")
        try:
            if arguments and isinstance(schema, dict):
                arguments = coerce_arguments(arguments, schema)
            action = Action(tool["name"], settings.target, arguments)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"--check-args {tool['name']}: {exc}") from None
        checked.append(
            CheckedTool(
                tool,
                settings.policy.evaluate(action),
                arguments,
                _conditional(settings.policy, tool["name"], settings.target),
            )
        )
    return checked
