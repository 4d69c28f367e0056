"""The governing relay between one MCP client and one MCP server.

A :class:`ProxySession` sits between a client connection and a downstream
server connection and moves JSON-RPC messages both ways, as dictionaries,
so that every field a server or client sends (tool annotations, input and
output schemas, ``_meta``, fields of protocol revisions newer than this
code) passes through untouched. It intercepts only what governance needs:

- ``tools/call`` becomes an :class:`~aegis.core.action.Action` (``type`` =
  tool name, ``target`` = the proxy's name, ``params`` = the arguments) and
  goes through the :class:`~aegis.runtime.engine.Runtime`: decided by the
  policy, approved when the policy asks, recorded in the audit trail with
  the MCP request id. Only an allowed call is forwarded, and it is
  forwarded with exactly the arguments that were decided.
- A request for any other method of the MCP specification passes through
  unchanged, unless the policy *names* the method: a rule whose ``type``
  pattern contains a ``/`` and matches it (``resources/read``,
  ``prompts/*``). A named method is governed like a tool call, with the
  request's params (less ``_meta``) as the action's params.
- A request for a method outside the specification is refused
  (``-32601``) unless the policy names it: a server's private method must
  not become a way around ``tools/call``.
- Notifications outside ``notifications/`` are dropped (a "notification"
  named ``tools/call`` would be a call without a decision); duplicated
  in-flight request ids are refused; the downstream server sees the
  proxy's own request ids, never the client's.

The downstream side is anything with the shape of :class:`Downstream`;
:mod:`aegis.mcp.downstream` connects one through the official MCP SDK.

Size: ProxySession is one relay with one state (the pending calls, the tool
list, the governed answers); its halves (the client's side and the server's
side) read and write that state together.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from aegis.core.action import Action, thaw
from aegis.core.coerce import UnreadableSchema, coerce_arguments
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.policy import fold_case
from aegis.core.record import ContextValue, DecisionStamp
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.mcp._ids import MAX_CLIENT_PENDING, IdTable, id_key
from aegis.mcp._jsonrpc import (
    CLIENT_BUSY,
    DOWNSTREAM_UNAVAILABLE,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    POLICY_REFUSED,
    Message,
    RequestId,
    Unreadable,
    error_reply,
    fold_name,
    lookalike_members,
    result_reply,
)
from aegis.mcp._logs import QuietLog
from aegis.mcp._tasks import RELATED_TASK, TERMINAL, ProxyTask, TaskTable
from aegis.runtime._binding import CallBinding, bound_call
from aegis.runtime.refusal import refusal_text

__all__ = [
    "MAX_INFLIGHT",
    "PASS_THROUGH_METHODS",
    "REFUSED_RULE",
    "Downstream",
    "DownstreamError",
    "ProxySession",
    "SendToClient",
    "blocks_every_call",
    "execute_mcp_call",
    "offer_approval_link",
    "policy_names_method",
]

if TYPE_CHECKING:
    from aegis.runtime.engine import Runtime
from aegis.runtime.tracing import remote_parent

_log = logging.getLogger("aegis.mcp")

#: client requests of the MCP specification that pass through ungoverned
#: unless the policy names them; ``tools/call`` is always governed
PASS_THROUGH_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "tasks/cancel",
    }
)

#: ``matched_rule`` of a call refused for how it was sent, before the policy saw it
REFUSED_RULE = "<mcp-proxy>"

#: the client's requests served at once at most; past it a request is refused at
#: once (a client must not grow the proxy's tasks and tables without bound)
MAX_INFLIGHT = 1024

#: seconds a server may take to answer ``initialize``, whatever the call timeout
_STARTUP_ALLOWANCE = 60.0

#: sends one message (or a batch's replies, as a list) to the client; the
#: second argument is the client request the message belongs to, if any
SendToClient = Callable[[Message | list[Message], RequestId | None], Awaitable[None]]


class DownstreamError(Exception):
    """The downstream server could not answer: gone, hung, or unreadable."""


class Downstream(Protocol):
    """A connection to the MCP server being governed."""

    async def send(self, message: Message) -> None:
        """Send one JSON-RPC message to the server."""

    def messages(self) -> AsyncIterator[Message | Exception]:
        """The server's messages as they arrive (an Exception for an unreadable one)."""


# ------------------------------------------------------------------ policy helpers


def policy_names_method(policy: object, method: str) -> bool:
    """Whether a rule of ``policy`` names the MCP ``method`` (see the module docstring)."""
    rules = getattr(policy, "rules", ())
    if getattr(policy, "match_case", None) == "insensitive":
        # As the policy compares names: "Resources/*" names resources/read
        # there, and an ungoverned pass-through would let it by.
        method = fold_case(method)
        return any(
            "/" in rule.match_type and fnmatch.fnmatchcase(method, fold_case(rule.match_type))
            for rule in rules
        )
    return any(
        "/" in rule.match_type and fnmatch.fnmatchcase(method, rule.match_type) for rule in rules
    )


def policy_param_names(policy: object) -> frozenset[str]:
    """Every member name the rules of ``policy`` read in an action's params, at any depth.

    The names in the dotted paths of param and path conditions
    (``options.force`` gives ``options`` and ``force``), of limit and budget
    keys (``params.customer_id``) and of a budget's sum.
    """
    names: set[str] = set()

    def add(path: object) -> None:
        if isinstance(path, str):
            names.update(path.removeprefix("params.").split("."))

    for rule in getattr(policy, "rules", ()):
        conditions = getattr(rule, "conditions", None)
        if isinstance(conditions, Mapping):
            for kind, spec in conditions.items():
                if isinstance(spec, Mapping) and str(kind).startswith(("param_", "path_")):
                    for path in spec:
                        add(path)
        for meter in (getattr(rule, "limit", None), getattr(rule, "budget", None)):
            if isinstance(meter, Mapping):
                keys = meter.get("key") or ()
                for key in (keys,) if isinstance(keys, str) else keys:
                    if isinstance(key, str) and key.startswith("params."):
                        add(key)
                add(meter.get("sum"))
    return frozenset(names)


def blocks_every_call(policy: object, tool: str, target: str) -> bool:
    """Whether ``policy`` blocks every call of ``tool`` on ``target``, whatever its arguments.

    The first rule whose globs match and that has no conditions settles it;
    a matching rule with conditions that does not block means some call may
    pass. A policy without inspectable rules never counts as blocking all.
    """
    rules = getattr(policy, "rules", None)
    if rules is None:
        return False
    fold = fold_case if getattr(policy, "match_case", None) == "insensitive" else None
    if fold is not None:  # as the policy compares names
        tool, target = fold(tool), fold(target)
    for rule in rules:
        kind, where = rule.match_type, rule.match_target
        if fold is not None:
            kind, where = fold(kind), fold(where)
        if not (fnmatch.fnmatchcase(tool, kind) and fnmatch.fnmatchcase(target, where)):
            continue
        if not rule.conditions:
            return bool(rule.approval is Approval.BLOCK)
        if rule.approval is not Approval.BLOCK:
            return False
    return bool(getattr(policy, "default_approval", None) is Approval.BLOCK)


# ------------------------------------------------------------------ the executor


@dataclass(slots=True)
class _Call:
    """A governed request on its way through the runtime."""

    session: ProxySession
    message: Message
    is_tool: bool
    #: the server's reply, once it answered
    reply: Message | None = None
    #: why the server could not answer, if it could not
    failure: str | None = None


_CURRENT: ContextVar[_Call | None] = ContextVar("aegis_mcp_call", default=None)


async def execute_mcp_call(action: Action) -> Result:
    """The proxy runtime's own executor: it runs nothing.

    Each governed request brings its executor to the runtime through the
    binding the framework integrations use (:mod:`aegis.runtime._binding`):
    the request forwarded is built from the action the runtime decided, so
    the server receives exactly the arguments that were decided. An action
    run on the proxy's runtime without such a binding fails.
    """
    return Result(
        action,
        ResultStatus.FAILED,
        error="execute_mcp_call runs only inside the Aegis MCP proxy",
        completed_at=datetime.now(UTC),
    )


def offer_approval_link(url: str) -> None:
    """Show ``url`` (where reviewers decide) to the client of the call awaiting approval.

    Called from inside an approval handler, in the runtime's approve step:
    the call is found from the context. Where the client declared URL
    elicitation, the proxy sends it an ``elicitation/create`` request in
    ``url`` mode; the answer is only a courtesy, the decision comes from
    the reviewers. Does nothing outside a proxied call.
    """
    call = _CURRENT.get()
    if call is not None:
        call.session._offer_link(call, url)


# ------------------------------------------------------------------ the session


_key = id_key


@dataclass
class SessionOptions:
    """How a :class:`ProxySession` governs.

    Args:
        target: the ``target`` of every action (the proxy's ``--name``).
        hide_blocked: leave the tools the policy blocks outright out of
            ``tools/list``.
        call_timeout: seconds the server may take to answer one request;
            ``None`` waits for ever.
        context: extra audit context for every action (JSON scalars).
        progress_interval: while a call waits for its decision (a reviewer),
            seconds between the progress notifications sent to a client
            that gave a ``progressToken``; ``0`` sends none.
    """

    target: str
    hide_blocked: bool = False
    call_timeout: float | None = 300.0
    progress_interval: float = 15.0
    context: Mapping[str, ContextValue] = field(default_factory=dict)


class ProxySession:
    """One client connection relayed to one downstream connection, under a runtime.

    Feed it the client's messages with :meth:`from_client`; run
    :meth:`pump` to read the server's messages; call :meth:`close` at the
    end. Replies and the server's messages go to ``send_to_client``.
    """

    def __init__(
        self,
        runtime: Runtime,
        downstream: Downstream,
        send_to_client: SendToClient,
        options: SessionOptions,
    ) -> None:
        self._runtime = runtime
        self._downstream = downstream
        self._send = send_to_client
        self._options = options
        self._named: dict[str, bool] = {}
        self._named_for: object = None
        self._param_names: frozenset[str] = frozenset()
        self._param_names_for: object = None
        self._descriptions: dict[str, str] = {}
        # a tool's input schema, from tools/list
        self._schemas: dict[str, dict[str, Any]] = {}
        self._listed_at = -math.inf  # when the proxy last asked the server for its tools
        # client request id -> the task serving it
        self._inflight: dict[tuple[type, RequestId], asyncio.Task[None]] = {}
        # where each message belongs, by its JSON-RPC id (nothing decided there)
        self._ids = IdTable()
        self._background: set[asyncio.Task[None]] = set()
        # the proxy's own tasks (task-augmented tools/call)
        self._tasks = TaskTable()
        # the server's own tasks capability, from its initialize reply
        self._server_tasks: dict[str, Any] | None = None
        # tools whose server requires task-augmented calls
        self._task_required: set[str] = set()
        # client request id -> the progress ticker of a call awaiting its decision
        self._waiting: dict[tuple[type, RequestId], asyncio.Task[None]] = {}
        self._gone: str | None = None
        self._closed = False
        self._client_name: str | None = None
        #: the log lines a peer provokes (refused and dropped messages), bounded
        self.refusals = QuietLog(_log)
        #: the capabilities the client declared in ``initialize``
        self.client_capabilities: dict[str, Any] = {}

    # -------------------------------------------------------------- from the client

    @property
    def inflight(self) -> int:
        """How many client requests are being served."""
        return len(self._inflight)

    def is_inflight(self, request_id: RequestId) -> bool:
        """Whether a request with this id is being served now."""
        return _key(request_id) in self._inflight

    async def from_client(self, kind: str, message: Message) -> None:
        """Act on one valid message from the client (see :func:`~aegis.mcp._jsonrpc.classify`).

        A request is served in a task of its own, so a call waiting for a
        human never holds up the others; this returns once it has started.
        """
        if self._closed:
            return
        if kind == "request":
            request_id: RequestId = message["id"]
            key = _key(request_id)
            if key in self._inflight:
                self.refusals.warning(
                    "client", "refused request %r: its id is already in flight", request_id
                )
                await self.record_refused(message, "its request id was already in flight")
                await self._to_client(
                    error_reply(
                        request_id,
                        INVALID_REQUEST,
                        f"Invalid Request: id {request_id!r} is already in use by a request "
                        "in flight; use a new id for every request",
                    ),
                    None,
                )
                return
            if len(self._inflight) >= MAX_INFLIGHT:
                self.refusals.warning(
                    "client",
                    "refused request %r: %d requests are in flight",
                    request_id,
                    MAX_INFLIGHT,
                )
                await self.record_refused(message, f"{MAX_INFLIGHT} requests were in flight")
                await self._to_client(
                    error_reply(
                        request_id,
                        INVALID_REQUEST,
                        f"Invalid Request: {MAX_INFLIGHT} requests of this client are in flight "
                        "already; send more once some are answered",
                    ),
                    None,
                )
                return
            self._inflight[key] = asyncio.create_task(self._serve(message))
        elif kind == "notification":
            await self._client_notification(message)
        else:
            await self._client_response(message)

    async def _serve(self, message: Message) -> None:
        request_id: RequestId = message["id"]
        try:
            try:
                reply = await self._answer(message)
            except asyncio.CancelledError:
                if self._closed:
                    raise
                return  # cancelled by the client: MCP sends no reply then
            except Exception as exc:  # one request's failure must not end the proxy
                _log.exception("the Aegis proxy failed on request %r", request_id)
                reply = error_reply(
                    request_id, INTERNAL_ERROR, f"Internal error in the Aegis proxy: {exc}"
                )
            await self._to_client(reply, request_id)
        finally:
            self._inflight.pop(_key(request_id), None)

    async def _answer(self, message: Message) -> Message:
        method: str = message["method"]
        request_id: RequestId = message["id"]
        params: dict[str, Any] = message.get("params") or {}
        if method == "tools/call":
            return await self._call_tool(message, params)
        if method.startswith("tasks/"):
            own = await self._own_task_request(message, method, params)
            if own is not None:
                return own
        if self._names(method):
            return await self._governed(message, method, params)
        if method == "server/discover":
            # The stateless 2026-07-28 revision is not proxied yet; this
            # answer makes its clients fall back to the initialize handshake.
            return error_reply(
                request_id,
                METHOD_NOT_FOUND,
                "Method not found: the Aegis proxy speaks the initialize handshake; use initialize",
            )
        if method not in PASS_THROUGH_METHODS:
            self.refusals.warning(
                "client", "refused request %r for method %r: not an MCP method", request_id, method
            )
            return error_reply(
                request_id,
                METHOD_NOT_FOUND,
                f"Method not found: {method!r} is not an MCP method the Aegis proxy forwards; "
                "a policy rule whose type names it (with a '/') can allow it",
            )
        if method == "initialize":
            capabilities = params.get("capabilities")
            self.client_capabilities = capabilities if isinstance(capabilities, dict) else {}
            info = params.get("clientInfo")
            name = info.get("name") if isinstance(info, dict) else None
            if isinstance(name, str) and name:
                # Who the client says it is, for the audit only: a client
                # chooses this name, so nothing is decided by it.
                self._client_name = name[:200]
        reply = await self._forward(message)
        if method == "tools/list":
            self._filter_tools(reply)
        elif method == "initialize":
            self._advertise_tasks(reply)
        return reply

    async def _client_notification(self, message: Message) -> None:
        method: str = message["method"]
        if method == "notifications/cancelled":
            params = message.get("params") or {}
            request_id = params.get("requestId")
            if isinstance(request_id, str | int):
                task = self._inflight.get(_key(request_id))
                if task is not None:
                    # Cancelling the task cancels its forwarded request downstream too.
                    task.cancel()
            return
        if not method.startswith("notifications/"):
            # Only notifications travel as notifications; a "notification"
            # named tools/call would run a tool without a decision.
            self.refusals.warning(
                "client", "dropped a notification for method %r: not a notification", method
            )
            await self.record_refused(message, "it was sent as a notification, without an id")
            return
        await self._relay_to_server(_notification(message))

    async def _relay_to_server(self, message: Message) -> None:
        """Pass a notification or a response on; a server that is gone drops it."""
        try:
            await self._to_server(message)
        except DownstreamError as exc:
            _log.info("dropped a message for the MCP server: %s", exc)

    async def _to_client(self, message: Message | list[Message], related: RequestId | None) -> None:
        """Write to the client; a client that is gone or refuses the message is logged."""
        try:
            await self._send(message, related)
        except Exception as exc:
            self.refusals.warning(
                "write", "could not write to the client: %s: %s", type(exc).__name__, exc
            )

    async def _client_response(self, message: Message) -> None:
        request_id = message["id"]
        where, server_id = self._ids.client_answered(request_id)
        if where == "own":
            _log.info("the client answered the approval link %r: %s", request_id, message)
            return
        if server_id is None:
            self.refusals.warning("client", "dropped a response to unknown request %r", request_id)
            return
        await self._relay_to_server(_response(message, server_id))

    async def record_refused(self, message: Message, why: str) -> None:
        """Record a call the proxy refused before any decision, as blocked.

        Every call lands in the audit trail, including those refused for how
        they were sent (in a batch, under a duplicated id, as a notification,
        too large or not JSON: then as far as its start can be read, and as
        ``tools/call`` when its tool's name cannot be):
        a tools/call, and a request for any other method a policy rule
        governs (a ``resources/read``), recorded as the action it would have
        been decided as. Anything else is only logged.
        """
        # Read as leniently as any decoder might (the message may be one
        # refused for look-alike member names): a tools/call under any
        # spelling of its members is recorded.
        methods = _members_like(message, "method")
        params = next((p for p in _members_like(message, "params") if isinstance(p, dict)), None)
        if any(isinstance(m, str) and fold_name(m) == "tools/call" for m in methods):
            names = _members_like(params or {}, "name")
            name = next((n for n in names if isinstance(n, str) and n), None)
            arguments = next(
                (a for a in _members_like(params or {}, "arguments") if isinstance(a, dict)), {}
            )
            if name is None:
                # An attempt to call a tool, its tool unread (a frame refused
                # undecoded): recorded under the method's name.
                name, why = "tools/call", f"{why}; its tool could not be read"
        else:
            # A governed method is decided with its params as the arguments.
            name = next((m for m in methods if isinstance(m, str) and self._names(m)), None)
            arguments = {k: v for k, v in (params or {}).items() if k != "_meta"}
        if not isinstance(name, str) or not name or not isinstance(arguments, dict):
            return
        try:
            action = Action(name, self._options.target, arguments)
        except (TypeError, ValueError):
            return
        decision = PolicyDecision(action, RiskLevel.HIGH, Approval.BLOCK, REFUSED_RULE, why)
        result = Result(
            action,
            ResultStatus.BLOCKED,
            error=f"refused by the Aegis proxy: {why}",
            completed_at=datetime.now(UTC),
        )
        request_id = message.get("id")
        valid = isinstance(request_id, str | int) and not isinstance(request_id, bool)
        context = self._context(request_id if valid else None)
        stamp = DecisionStamp.now(self._runtime.policy, context)
        try:
            await self._runtime.record(decision, result, stamp=stamp)
        except Exception:
            _log.exception("could not record the refused call %r", name)

    def _context(self, request_id: Any) -> dict[str, ContextValue]:
        """The audit context of one call: the request id, the client's name, the options'."""
        context: dict[str, ContextValue] = dict(self._options.context)
        if request_id is not None:
            context["mcp_request_id"] = request_id
        if self._client_name is not None:
            context["mcp_client"] = self._client_name
        return context

    # -------------------------------------------------------------- governance

    def _names(self, method: str) -> bool:
        policy = self._runtime.policy
        if policy is not self._named_for:
            # The runtime's policy may be swapped (hot reload): ask the new one.
            self._named, self._named_for = {}, policy
        named = self._named.get(method)
        if named is None:
            named = self._named[method] = policy_names_method(policy, method)
        return named

    def _read_names(self) -> frozenset[str]:
        policy = self._runtime.policy
        if policy is not self._param_names_for:  # a reload swaps the policy
            self._param_names, self._param_names_for = policy_param_names(policy), policy
        return self._param_names

    async def _call_tool(self, message: Message, params: dict[str, Any]) -> Message:
        request_id: RequestId = message["id"]
        name = params.get("name")
        arguments = params.get("arguments")
        why = lookalike_members(params, _TOOL_CALL_MEMBERS)
        if why is not None:
            await self.record_refused(message, f"its params are ambiguous: {why}")
            return error_reply(request_id, INVALID_PARAMS, f"Invalid params: {why}")
        if not isinstance(name, str) or not name:
            return error_reply(
                request_id, INVALID_PARAMS, 'Invalid params: "name" must be a tool name'
            )
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            await self.record_refused(message, "its arguments were not a JSON object")
            return error_reply(
                request_id, INVALID_PARAMS, 'Invalid params: "arguments" must be a JSON object'
            )
        schema = self._schemas.get(name)
        if schema is None:
            # A client need not list the tools before calling one: ask the
            # server, so that the call is read as the tool's schema reads it.
            try:
                await self._list_tools(request_id)
            except asyncio.CancelledError:
                # Cancelled before it was decided: it ran nothing, and says so.
                await self.record_refused(message, "the client cancelled it before it was decided")
                raise
            schema = self._schemas.get(name)
        if schema is not None:
            # Look-alikes of the schema's names, and of the names a rule reads:
            # a server may bind more fields than its schema declares ("Force"
            # into a Go struct's Force field, when the schema names no force).
            why = _lookalike_arguments(arguments, schema, schema) or _lookalike_of(
                arguments, self._read_names()
            )
            if why is not None:
                await self.record_refused(message, f"its arguments are ambiguous: {why}")
                return error_reply(request_id, INVALID_PARAMS, f"Invalid params: {why}")
            # Decided, and forwarded, as the tool's inputSchema types them.
            try:
                arguments = coerce_arguments(arguments, schema)
            except UnreadableSchema as exc:
                # What the tool would make of them is unknown: nothing to decide on.
                await self.record_refused(message, f"its arguments cannot be read: {exc}")
                return error_reply(request_id, INVALID_PARAMS, f"Invalid params: {exc}")
        else:
            # No schema names what the tool reads (a tool the server does not
            # list): "Path" is still what a case-insensitive server reads as
            # the "path" a rule compares, so it is refused like a look-alike.
            why = _lookalike_of(arguments, self._read_names())
            if why is not None:
                await self.record_refused(message, f"its arguments are ambiguous: {why}")
                return error_reply(request_id, INVALID_PARAMS, f"Invalid params: {why}")
        if "task" in params:
            requested = params["task"]
            if not isinstance(requested, dict):
                await self.record_refused(message, "its task was not a JSON object")
                return error_reply(
                    request_id, INVALID_PARAMS, 'Invalid params: "task" must be a JSON object'
                )
            return self._start_task(message, name, arguments, requested)
        return await self._kept_alive(message, name, arguments, is_tool=True)

    async def _governed(self, message: Message, method: str, params: dict[str, Any]) -> Message:
        arguments = {k: v for k, v in params.items() if k != "_meta"}
        # "URI" alone is what a case-insensitive server reads as the "uri" a rule compares.
        why = _lookalike_of(arguments, self._read_names())
        if why is not None:
            await self.record_refused(message, f"its params are ambiguous: {why}")
            return error_reply(message["id"], INVALID_PARAMS, f"Invalid params: {why}")
        return await self._kept_alive(message, method, arguments, is_tool=False)

    # -------------------------------------------------------------- long waits

    async def _kept_alive(
        self, message: Message, kind: str, arguments: dict[str, Any], *, is_tool: bool
    ) -> Message:
        """:meth:`_govern`, with progress notifications while the decision is awaited.

        A client that gave a ``progressToken`` hears from the proxy every
        ``progress_interval`` seconds until the call is forwarded (or
        refused), so a client that resets its timeout on progress (the
        TypeScript SDK's ``resetTimeoutOnProgress``) waits for a reviewer
        however long they take. Once forwarded, the server's own progress
        under the same token takes over.
        """
        token = _progress_token(message)
        interval = self._options.progress_interval
        if token is None or not interval > 0:
            return await self._govern(message, kind, arguments, is_tool=is_tool)
        key = _key(message["id"])
        ticker = asyncio.create_task(self._tick(message["id"], token[1], interval))
        self._waiting[key] = ticker
        try:
            return await self._govern(message, kind, arguments, is_tool=is_tool)
        finally:
            ticker.cancel()
            if self._waiting.get(key) is ticker:
                del self._waiting[key]

    async def _tick(self, request_id: RequestId, token: str | int, interval: float) -> None:
        count = 0
        while True:
            await asyncio.sleep(interval)
            count += 1
            await self._to_client(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {
                        "progressToken": token,
                        "progress": count,
                        "message": "Aegis: waiting for the call's decision (a reviewer's approval)",
                    },
                },
                request_id,
            )

    def _stop_ticking(self, request_id: RequestId) -> None:
        ticker = self._waiting.pop(_key(request_id), None)
        if ticker is not None:
            ticker.cancel()

    def _start_task(
        self, message: Message, name: str, arguments: dict[str, Any], requested: dict[str, Any]
    ) -> Message:
        """Answer a task-augmented call with its task; decide and run it behind that."""
        task = self._tasks.create(requested)

        async def work() -> None:
            try:
                reply = await self._govern(message, name, arguments, is_tool=True)
            except asyncio.CancelledError:
                task.finish("cancelled", _tool_error(message["id"], "the call was cancelled"))
                raise
            except Exception as exc:  # one task's failure must not end the proxy
                _log.exception("the Aegis proxy failed on task %s", task.task_id)
                reply = error_reply(
                    message["id"], INTERNAL_ERROR, f"Internal error in the Aegis proxy: {exc}"
                )
            status, why = _task_outcome(reply)
            task.finish(status, reply, why)
            await self._to_client(
                {"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": task.view()},
                None,
            )

        task.worker = asyncio.create_task(work())
        self._background.add(task.worker)
        task.worker.add_done_callback(self._background.discard)
        return result_reply(message["id"], {"task": task.view()})

    async def _own_task_request(
        self, message: Message, method: str, params: dict[str, Any]
    ) -> Message | None:
        """Serve ``tasks/*`` for the proxy's own tasks; ``None`` passes the request on."""
        request_id: RequestId = message["id"]
        if method == "tasks/list":
            return await self._list_tasks(message, params)
        task_id = params.get("taskId")
        if method not in ("tasks/get", "tasks/result", "tasks/cancel"):
            return None
        if not self._tasks.owns(task_id):
            return None  # the server's own task
        task = self._tasks.get(task_id)
        if task is None:
            return error_reply(
                request_id,
                INVALID_PARAMS,
                f"Invalid params: no task {task_id!r} (unknown or expired)",
            )
        if method == "tasks/get":
            return result_reply(request_id, task.view())
        if method == "tasks/cancel":
            if task.status in TERMINAL:
                return error_reply(
                    request_id,
                    INVALID_PARAMS,
                    f"Invalid params: task {task_id!r} already ended ({task.status})",
                )
            if task.worker is not None:
                task.worker.cancel()
                with contextlib.suppress(BaseException):
                    await task.worker
            task.finish("cancelled", _tool_error(request_id, "the call was cancelled"))
            return result_reply(request_id, task.view())
        await task.done.wait()
        return _task_result(request_id, task)

    async def _list_tasks(self, message: Message, params: dict[str, Any]) -> Message | None:
        own = [task.view() for task in self._tasks.all()]
        if params.get("cursor") is not None:
            return None  # a page of the server's own list
        server = self._server_tasks
        if not (isinstance(server, dict) and "list" in server):
            return result_reply(message["id"], {"tasks": own})
        reply = await self._forward(message)
        result = reply.get("result")
        if isinstance(result, dict) and isinstance(result.get("tasks"), list):
            result["tasks"] = own + result["tasks"]
        return reply

    def _advertise_tasks(self, reply: Message) -> None:
        """Say in the initialize reply that the proxy takes task-augmented tool calls."""
        result = reply.get("result")
        if not isinstance(result, dict):
            return
        capabilities = result.get("capabilities")
        if not isinstance(capabilities, dict):
            return
        server = capabilities.get("tasks")
        self._server_tasks = server if isinstance(server, dict) else None
        tasks: dict[str, Any] = dict(server) if isinstance(server, dict) else {}
        tasks.setdefault("list", {})
        tasks.setdefault("cancel", {})
        requests = tasks.get("requests")
        requests = dict(requests) if isinstance(requests, dict) else {}
        tools = requests.get("tools")
        tools = dict(tools) if isinstance(tools, dict) else {}
        tools.setdefault("call", {})
        requests["tools"] = tools
        tasks["requests"] = requests
        capabilities["tasks"] = tasks

    async def _govern(
        self, message: Message, kind: str, arguments: dict[str, Any], *, is_tool: bool
    ) -> Message:
        request_id: RequestId = message["id"]
        try:
            action = Action(kind, self._options.target, arguments, self._descriptions.get(kind, ""))
        except (TypeError, ValueError) as exc:
            return error_reply(request_id, INVALID_PARAMS, f"Invalid params: {exc}")
        call = _Call(self, message, is_tool)
        context = self._context(request_id)

        async def execute(decided: Action) -> Result:
            return await self._execute(call, decided)

        token = _CURRENT.set(call)  # for offer_approval_link, from the approval handler
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        try:
            with bound_call(CallBinding(action, execute)), remote_parent(meta):
                result = await self._runtime.run_one(action, context=context)
        finally:
            _CURRENT.reset(token)
        if _log.isEnabledFor(logging.INFO):
            _log.info(
                "request %r: %s on %s -> %s",
                request_id,
                kind,
                self._options.target,
                result.status.value,
            )
        return self._reply_for(call, request_id, result)

    def _refusal(self, result: Result) -> str:
        """The same sentence every integration gives (see :mod:`aegis.runtime.refusal`)."""
        decision = None
        if result.status is ResultStatus.DENIED:
            try:  # only for the text: which rule asked for approval
                decision = self._runtime.decide(result.action)
            except Exception:
                decision = None
        return refusal_text(result, policy=self._runtime.policy, decision=decision)

    def _reply_for(self, call: _Call, request_id: RequestId, result: Result) -> Message:
        status = result.status
        if status in (ResultStatus.BLOCKED, ResultStatus.DENIED):
            text = self._refusal(result)
            if not call.is_tool:
                return error_reply(request_id, POLICY_REFUSED, text)
            return result_reply(
                request_id, {"content": [{"type": "text", "text": text}], "isError": True}
            )
        if call.reply is not None:
            # The server's own answer, result or error, under the client's id.
            return {**call.reply, "id": request_id}
        if call.failure is not None:
            return error_reply(request_id, DOWNSTREAM_UNAVAILABLE, call.failure)
        return error_reply(request_id, INTERNAL_ERROR, f"the call failed: {result.error}")

    async def _execute(self, call: _Call, action: Action) -> Result:
        # The request the server gets is the proxy's own: the decided name and
        # arguments, and of the rest only the protocol's own members.
        message = call.message
        sent = message.get("params") or {}
        params: dict[str, Any]
        if call.is_tool:
            params = {"name": action.type, "arguments": thaw(action.params)}
            for name in _TOOL_CALL_EXTRAS:
                if name in sent:
                    params[name] = sent[name]
            if action.type not in self._task_required:
                # The proxy is the task's receiver; the server gets a plain
                # call unless it takes this tool only as a task.
                params.pop("task", None)
        else:
            params = dict(thaw(action.params))
            if "_meta" in sent:
                params["_meta"] = sent["_meta"]
        outgoing = _request(message["id"], message["method"], params)
        self._stop_ticking(message["id"])  # forwarded: the server's progress now
        try:
            reply = await self._exchange(outgoing)
            if "task" in params:
                reply = await self._task_outcome_of(message["id"], reply)
        except DownstreamError as exc:
            call.failure = str(exc)
            raise
        call.reply = reply
        error = reply.get("error")
        if error is not None:
            return Result(
                action,
                ResultStatus.FAILED,
                data={"error": error},
                error=f"the MCP server answered with error {error.get('code')}: "
                f"{error.get('message')}",
            )
        result = reply["result"]
        if call.is_tool and result.get("isError") is True:
            return Result(
                action,
                ResultStatus.FAILED,
                data=result,
                error=f"the tool reported an error: {_text_of(result)}",
            )
        return Result(action, ResultStatus.SUCCESS, data=result)

    async def _task_outcome_of(self, request_id: RequestId, reply: Message) -> Message:
        """The server's own task's outcome: what its ``tasks/result`` answers."""
        result = reply.get("result")
        created = result.get("task") if isinstance(result, dict) else None
        task_id = created.get("taskId") if isinstance(created, dict) else None
        if not isinstance(task_id, str):
            return reply
        return await self._exchange(_request(request_id, "tasks/result", {"taskId": task_id}))

    def _offer_link(self, call: _Call, url: str) -> None:
        elicitation = self.client_capabilities.get("elicitation")
        if not isinstance(elicitation, dict) or "url" not in elicitation:
            return
        client_id = self._ids.own()
        params = call.message.get("params") or {}
        what = params.get("name") if call.is_tool else call.message["method"]
        request = {
            "jsonrpc": "2.0",
            "id": client_id,
            "method": "elicitation/create",
            "params": {
                "mode": "url",
                "message": f"Aegis: {what!s} on {self._options.target} waits for a reviewer's "
                "approval. Open the link to see the request; the call goes on once it is "
                "decided.",
                "url": url,
                "elicitationId": f"aegis-approval-{client_id}",
            },
        }
        task = asyncio.ensure_future(self._to_client(request, call.message["id"]))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _list_tools(self, request_id: RequestId) -> None:
        """Learn the tools' schemas and descriptions from the server's own tools/list."""
        now = time.monotonic()
        if now - self._listed_at < _RELIST_INTERVAL:
            return
        self._listed_at = now
        cursor: Any = None
        for _ in range(_MAX_LIST_PAGES):
            params = {} if cursor is None else {"cursor": cursor}
            try:
                reply = await self._exchange(_request(request_id, "tools/list", params))
            except DownstreamError as exc:
                _log.warning("could not list the server's tools: %s", exc)
                return
            result = reply.get("result")
            if not isinstance(result, dict):
                return
            self._learn_tools(result.get("tools"))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                return

    def _learn_tools(self, tools: object) -> None:
        if not isinstance(tools, list):
            return
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                description = tool.get("description")
                if isinstance(description, str):
                    self._descriptions[tool["name"]] = description
                schema = tool.get("inputSchema")
                if isinstance(schema, dict):
                    self._schemas[tool["name"]] = schema
                execution = tool.get("execution")
                execution = dict(execution) if isinstance(execution, dict) else {}
                if execution.get("taskSupport") == "required":
                    self._task_required.add(tool["name"])
                else:
                    # The proxy takes any call as a task (see aegis.mcp._tasks).
                    execution["taskSupport"] = "optional"
                    tool["execution"] = execution

    def _filter_tools(self, reply: Message) -> None:
        result = reply.get("result")
        if not isinstance(result, dict):
            return
        tools = result.get("tools")
        if not isinstance(tools, list):
            return
        self._learn_tools(tools)
        if self._options.hide_blocked:
            target = self._options.target
            result["tools"] = [
                tool
                for tool in tools
                if not (
                    isinstance(tool, dict)
                    and isinstance(tool.get("name"), str)
                    and blocks_every_call(self._runtime.policy, tool["name"], target)
                )
            ]

    # -------------------------------------------------------------- to the server

    async def _forward(self, message: Message) -> Message:
        """Forward a request unchanged but for its id; the reply under the client's id."""
        request_id: RequestId = message["id"]
        params = message.get("params")
        try:
            reply = await self._exchange(_request(request_id, message["method"], params))
        except DownstreamError as exc:
            return error_reply(request_id, DOWNSTREAM_UNAVAILABLE, str(exc))
        return {**reply, "id": request_id}

    async def _exchange(self, message: Message) -> Message:
        """Send a request to the server under a fresh id and wait for its reply."""
        if self._gone is not None:
            raise DownstreamError(self._gone)
        token = _progress_token(message)
        downstream_id, future = self._ids.open(message["id"], token)
        limit = self._options.call_timeout
        if limit is not None and message["method"] == "initialize":
            limit = max(limit, _STARTUP_ALLOWANCE)  # the server may still be starting
        try:
            await self._to_server({**message, "id": downstream_id})
            # asyncio.timeout, not wait_for: no extra task per call on the hot path.
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            _log.error(
                "the MCP server did not answer %s (request %r) within %gs",
                message["method"],
                message["id"],
                limit,
            )
            await self._cancel_downstream(downstream_id, "timed out")
            raise DownstreamError(
                f"the MCP server did not answer {message['method']} within {limit:g}s"
            ) from None
        except asyncio.CancelledError:
            await self._cancel_downstream(downstream_id, "cancelled")
            raise
        finally:
            self._ids.close(downstream_id, token)

    async def _cancel_downstream(self, downstream_id: int, reason: str) -> None:
        if self._gone is not None:
            return
        with contextlib.suppress(Exception):
            await self._to_server(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": downstream_id, "reason": reason},
                }
            )

    async def _to_server(self, message: Message) -> None:
        if self._gone is not None:
            raise DownstreamError(self._gone)
        try:
            await self._downstream.send(message)
        except DownstreamError:
            raise
        except Exception as exc:
            self._lost(f"the MCP server cannot be reached: {exc or type(exc).__name__}")
            raise DownstreamError(self._gone or "the MCP server cannot be reached") from exc

    # -------------------------------------------------------------- from the server

    async def pump(self) -> None:
        """Relay the server's messages to the client until the server goes away."""
        try:
            async for item in self._downstream.messages():
                if isinstance(item, Exception):
                    await self._refuse_from_server(item)
                    continue
                await self._from_server(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lost(f"the connection to the MCP server failed: {exc or type(exc).__name__}")
            return
        self._lost("the MCP server closed the connection (it exited or crashed)")

    async def _refuse_from_server(self, item: Exception) -> None:
        """A line of the server the proxy will not use: the request it answers fails now.

        A request of the server's own (the line names a method) is answered
        with an error instead: its id is the server's, and the proxy's
        request under the same number is another one.
        """
        why = item.why if isinstance(item, Unreadable) else _first_line(item)
        request_id = item.request_id if isinstance(item, Unreadable) else None
        line = f": {item.line!r}" if isinstance(item, Unreadable) and item.line else ""
        if isinstance(item, Unreadable) and item.is_request:
            if request_id is not None:
                await self._relay_to_server(
                    error_reply(
                        request_id,
                        INVALID_REQUEST,
                        f"Invalid Request: refused by the Aegis proxy: {why}",
                    )
                )
            self.refusals.error(
                "server",
                "the MCP server sent a request (%r) that is not a JSON-RPC message the proxy "
                "accepts; refused it: %s%s",
                request_id,
                why,
                line,
            )
            return
        failed = request_id is not None and self._ids.fail(
            request_id,
            DownstreamError(f"the MCP server's reply was refused by the Aegis proxy: {why}"),
        )
        if failed:
            self.refusals.error(
                "server",
                "the MCP server's reply to request %r is not a JSON-RPC message the proxy "
                "accepts; the request failed: %s%s",
                request_id,
                why,
                line,
            )
        else:
            self.refusals.error(
                "server",
                "the MCP server sent something that is not a JSON-RPC message the proxy "
                "accepts; dropped it: %s%s",
                why,
                line,
            )

    @property
    def gone(self) -> str | None:
        """Why the server can no longer be reached, once it cannot."""
        return self._gone

    def _lost(self, why: str) -> None:
        if self._gone is not None:
            return
        self._gone = why
        if not self._closed:
            _log.error("%s", why)
        self._ids.fail_all(DownstreamError(why))

    async def _from_server(self, message: Message) -> None:
        if "method" not in message:
            if not self._ids.answered(message):
                self.refusals.warning(
                    "server",
                    "dropped a reply of the MCP server to unknown request %r",
                    message["id"],
                )
            return
        if "id" in message:
            # The server's own request (sampling, elicitation, roots): the
            # client sees a proxy id, so it can never collide with another.
            client_id = self._ids.relay(message["id"])
            if client_id is None:
                await self._client_busy(message)
                return
            await self._to_client({**message, "id": client_id}, self._related(None))
            return
        related = None
        if message["method"] == "notifications/cancelled":
            # The server withdraws a request of its own: the client knows it
            # by the proxy's id, and another of its requests may have the
            # server's number.
            params = message.get("params")
            params = params if isinstance(params, dict) else {}
            client_id = self._ids.withdrawn(params.get("requestId"))
            if client_id is None:
                self.refusals.warning(
                    "server",
                    "dropped the MCP server's cancel of request %r: none of its requests "
                    "with that id waits for the client",
                    params.get("requestId"),
                )
                return
            message = {**message, "params": {**params, "requestId": client_id}}
        elif message["method"] == "notifications/progress":
            related = self._ids.progress_of((message.get("params") or {}).get("progressToken"))
        await self._to_client(message, self._related(related))

    async def _client_busy(self, message: Message) -> None:
        """Refuse the server's request: too many of its requests wait for the client already."""
        self.refusals.warning(
            "server",
            "refused the MCP server's request %r (%s): %d of its requests wait for the "
            "client's answer",
            message["id"],
            message["method"],
            MAX_CLIENT_PENDING,
        )
        await self._relay_to_server(
            error_reply(
                message["id"],
                CLIENT_BUSY,
                f"the Aegis proxy refused the request: {MAX_CLIENT_PENDING} requests of the "
                "server are waiting for the client's answer; send more once it answered some",
            )
        )

    def _related(self, known: RequestId | None) -> RequestId | None:
        # Over HTTP a server message travels on the stream of the request it
        # belongs to; when the server does not say, the only request in
        # flight is the best guess, else the client's standalone stream.
        if known is not None:
            return known
        return self._ids.only_request()

    # -------------------------------------------------------------- the end

    async def drain(self, grace: float) -> None:
        """Give the requests in flight up to ``grace`` seconds to finish."""
        tasks = list(self._inflight.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    async def close(self, why: str | None = None) -> None:
        """Stop serving: cancel what is in flight (its audit records say so, and ``why``)."""
        if self._closed:
            return
        self._closed = True
        self.refusals.flush()
        tasks = list(self._inflight.values())
        tasks.extend(task.worker for task in self._tasks.running() if task.worker is not None)
        for task in tasks:
            task.cancel(why)
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


#: the members of tools/call params the proxy reads or passes on
_TOOL_CALL_MEMBERS = frozenset({"name", "arguments", "_meta", "task"})
#: those of them passed on as the client sent them (the protocol's, not the tool's)
_TOOL_CALL_EXTRAS = ("_meta", "task")


#: seconds between the proxy's own tools/list requests (for calls of unknown tools)
_RELIST_INTERVAL = 1.0
#: pages of a tools/list the proxy reads at most
_MAX_LIST_PAGES = 100


def _lookalike_of(value: Any, names: frozenset[str]) -> str | None:
    """Why a member of ``value``, at any depth, folds like one of ``names`` without being it."""
    if not names:
        return None
    if isinstance(value, dict):
        why = lookalike_members(value, names)
        if why is not None:
            return why
        for name, inner in value.items():
            why = _lookalike_of(inner, names)
            if why is not None:
                return f"in {name!r}: {why}"
    elif isinstance(value, list):
        for inner in value:
            why = _lookalike_of(inner, names)
            if why is not None:
                return why
    return None


def _lookalike_arguments(
    value: Any, spec: Any, root: Mapping[str, Any], seen: set[tuple[int, int]] | None = None
) -> str | None:
    """Why ``value`` holds a member name that folds like one its schema ``spec`` names, or ``None``.

    At every level the schema describes (object properties, array items,
    ``anyOf``/``oneOf`` options, local ``$ref`` definitions): a nested
    ``{"Force": true}`` is what a case-insensitive server reads as ``force``.
    """
    if not isinstance(spec, Mapping):
        return None
    seen = set() if seen is None else seen
    if (id(value), id(spec)) in seen:  # each schema part once per value: refs may loop
        return None
    seen.add((id(value), id(spec)))
    ref = spec.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")  # noqa: PLW2901
            target = target.get(part) if isinstance(target, Mapping) else None
        why = _lookalike_arguments(value, target, root, seen)
        if why is not None:
            return why
    for key in ("anyOf", "oneOf", "allOf"):
        options = spec.get(key)
        if isinstance(options, list):
            for option in options:
                why = _lookalike_arguments(value, option, root, seen)
                if why is not None:
                    return why
    if isinstance(value, dict):
        properties = spec.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        # Members the properties do not name are read by additionalProperties
        # (a map of models: Pydantic's dict[str, Model]).
        others = spec.get("additionalProperties")
        if properties:
            why = lookalike_members(value, properties)
            if why is not None:
                return why
        if properties or isinstance(others, Mapping):
            for name, inner in value.items():
                why = _lookalike_arguments(inner, properties.get(name, others), root, seen)
                if why is not None:
                    return f"in {name!r}: {why}"
    elif isinstance(value, list):
        items = spec.get("items")
        for inner in value:
            why = _lookalike_arguments(inner, items, root, seen)
            if why is not None:
                return why
    return None


def _members_like(value: Message, name: str) -> list[Any]:
    """The values of ``value``'s members whose names fold like ``name``, exact name first."""
    found = [value[name]] if name in value else []
    folded = fold_name(name)
    found.extend(v for k, v in value.items() if k != name and fold_name(k) == folded)
    return found


def _request(request_id: RequestId, method: str, params: Any) -> Message:
    """A request as the proxy writes it: the JSON-RPC members and nothing else."""
    request: Message = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        request["params"] = params
    return request


def _notification(message: Message) -> Message:
    """A client notification as the proxy passes it on: its JSON-RPC members only."""
    out: Message = {"jsonrpc": "2.0", "method": message["method"]}
    if "params" in message:
        out["params"] = message["params"]
    return out


def _response(message: Message, response_id: RequestId) -> Message:
    """A client response as the proxy passes it on, under the server's id."""
    out: Message = {"jsonrpc": "2.0", "id": response_id}
    if "error" in message:
        out["error"] = message["error"]
    else:
        out["result"] = message["result"]
    return out


def _progress_token(message: Message) -> tuple[type, Any] | None:
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return (type(token), token) if isinstance(token, str | int) else None


def _tool_error(request_id: RequestId, text: str) -> Message:
    return result_reply(request_id, {"content": [{"type": "text", "text": text}], "isError": True})


def _task_outcome(reply: Message) -> tuple[str, str | None]:
    """A finished task's status and status message, from the call's reply."""
    error = reply.get("error")
    if isinstance(error, dict):
        return "failed", str(error.get("message", "the call failed"))[:500]
    result = reply.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return "failed", _text_of(result)
    return "completed", None


def _task_result(request_id: RequestId, task: ProxyTask) -> Message:
    """What ``tasks/result`` answers for an ended task: the call's own reply."""
    reply = task.reply or _tool_error(request_id, f"the task ended {task.status}")
    related = {RELATED_TASK: {"taskId": task.task_id}}
    error = reply.get("error")
    if isinstance(error, dict):
        return {"jsonrpc": "2.0", "id": request_id, "error": error}
    result = dict(reply.get("result") or {})
    meta = result.get("_meta")
    result["_meta"] = {**meta, **related} if isinstance(meta, dict) else related
    return result_reply(request_id, result)


def _text_of(result: dict[str, Any]) -> str:
    content = result.get("content")
    texts = (
        [
            block["text"]
            for block in content or ()
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        ]
        if isinstance(content, list)
        else []
    )
    text = " ".join(texts) or "(no text)"
    return text if len(text) <= 500 else text[:500] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
