"""Govern the tools of an Anthropic SDK agent loop.

Two ways, one semantics (see :mod:`aegis.adapters._governance`):

- :func:`governed` wraps a function, or a ``@beta_tool`` /
  ``@beta_async_tool``, for the SDK's tool runner
  (``client.beta.messages.tool_runner(tools=[...])``). A call the policy
  allows runs and its outcome is recorded; a blocked, denied or failed call
  raises the SDK's ``ToolError``, which the runner sends to the model as a
  ``tool_result`` with ``is_error: true`` and the rule and reason in it.
- :func:`govern_tool_call` and :func:`tool_results_to_api_format` serve a
  hand-written loop: govern each ``tool_use`` block, then send the results.

The Messages API has no way to suspend a run for a human, so an ``approve``
call waits on the runtime's approval handler (with its ``approval_timeout``).

Example::

    from aegis.adapters.anthropic import governed

    @beta_tool
    def refund(order_id: str, amount: float) -> str:
        "Refund an order."
        ...

    runner = client.beta.messages.tool_runner(
        model="claude-sonnet-4-5", max_tokens=1024, messages=[...],
        tools=[governed(refund, runtime, target="billing")],
    )
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Generic, TypeVar

from aegis.adapters._governance import Governor, OnBlock, ToolCall, missing_extra
from aegis.core.action import Action, thaw
from aegis.core.coerce import UnreadableSchema, coerce_arguments
from aegis.core.result import Result, ResultStatus
from aegis.errors import ConfigurationError

try:
    from anthropic.lib.tools import (
        BetaAsyncFunctionTool,
        BetaFunctionTool,
        ToolError,
        beta_async_tool,
        beta_tool,
    )
    from anthropic.types.beta import BetaToolUseBlock
except ImportError as exc:
    missing_extra("aegis.adapters.anthropic", "anthropic", exc)

__all__ = [
    "GovernedToolResult",
    "govern_tool_call",
    "governed",
    "tool_results_to_api_format",
]

_FRAMEWORK = "anthropic"
#: the tool a governed tool wraps: synchronous or async
_Inner = TypeVar("_Inner", BetaFunctionTool[Any], BetaAsyncFunctionTool[Any])


def governed(
    fn: Callable[..., Any] | BetaFunctionTool[Any] | BetaAsyncFunctionTool[Any],
    runtime: Any,
    *,
    target: str = _FRAMEWORK,
    agent: str | None = None,
) -> BetaFunctionTool[Any] | BetaAsyncFunctionTool[Any]:
    """A tool for the SDK's tool runner whose every call Aegis governs.

    Args:
        fn: a plain function (sync or ``async``), or a tool made with
            ``@beta_tool`` / ``@beta_async_tool``; its name, description and
            input schema are kept.
        runtime: the :class:`~aegis.runtime.engine.Runtime` that decides,
            approves and records.
        target: the action ``target`` (the toolset's name).
        agent: the agent name recorded with each call.

    Returns:
        a ``BetaFunctionTool`` (or ``BetaAsyncFunctionTool`` for async
        functions) that raises ``ToolError`` with the rule and reason for a
        call that does not run. The ``tool_use`` id goes in the audit record.
    """
    if isinstance(fn, BetaFunctionTool | BetaAsyncFunctionTool):
        inner: BetaFunctionTool[Any] | BetaAsyncFunctionTool[Any] = fn
    elif callable(fn):
        inner = beta_async_tool(fn) if inspect.iscoroutinefunction(fn) else beta_tool(fn)
    else:
        raise ConfigurationError(
            f"governed() needs a function or a @beta_tool, got {type(fn).__name__}"
        )
    governor = Governor(runtime, target=target, framework=_FRAMEWORK, agent=agent)
    if isinstance(inner, BetaAsyncFunctionTool):
        return _GovernedAsyncTool(inner, governor)
    return _GovernedTool(inner, governor)


class _Governed(Generic[_Inner]):
    """What the sync and the async governed tool share: the inner tool's definition."""

    def __init__(self, inner: _Inner, governor: Governor) -> None:
        # A mixin: super() is the SDK's tool class, which mypy takes for object.
        super().__init__(  # type: ignore[call-arg]
            inner.func,
            name=inner.name,
            description=inner.description,
            input_schema=inner.input_schema,
        )
        self._inner: _Inner = inner
        self._governor = governor

    def to_dict(self) -> Any:
        """The inner tool's definition, with all its options."""
        return self._inner.to_dict()


class _GovernedTool(_Governed[BetaFunctionTool[Any]], BetaFunctionTool[Any]):
    """A synchronous tool whose calls go through the runtime first."""

    def call(self, input: object) -> Any:
        """Run the call through the runtime; raise ToolError when it does not run."""
        call = _tool_call(self._inner, input, self._governor)

        def execute(action: Action) -> Any:
            return self._inner.call(thaw(action.params))

        result = self._governor.run_sync(call, execute, reraise=True)
        return _answer(self._governor, call, result)


class _GovernedAsyncTool(_Governed[BetaAsyncFunctionTool[Any]], BetaAsyncFunctionTool[Any]):
    """An async tool whose calls go through the runtime first."""

    async def call(self, input: object) -> Any:
        """Run the call through the runtime; raise ToolError when it does not run."""
        call = _tool_call(self._inner, input, self._governor)

        async def execute(action: Action) -> Any:
            return await self._inner.call(thaw(action.params))

        result = await self._governor.run(call, execute, reraise=True)
        return _answer(self._governor, call, result)


def _tool_call(tool: Any, input: object, governor: Governor) -> ToolCall:
    # As the tool's input_schema types them: the SDK's tools coerce "yes" to True.
    arguments, unreadable = _read_input(input, getattr(tool, "input_schema", None))
    return ToolCall(
        tool.name,
        arguments,
        call_id=_tool_use_id(input),
        description=tool.description or "",
        agent=governor.agent,
        unreadable=unreadable,
    )


def _read_input(input: object, schema: object) -> tuple[Mapping[str, Any], str | None]:
    """The call's arguments as the tool's schema reads them, or as sent and why they cannot be.

    An input that is not an object, or a schema that cannot be read (a
    broken ``$ref``), leaves the call undecidable: the governor blocks it
    and records it, and the model reads why.
    """
    if not isinstance(input, Mapping):
        return {"input": input}, "its input must be a JSON object"
    if not schema:
        return input, None
    try:
        return coerce_arguments(input, schema), None
    except UnreadableSchema as exc:
        return input, str(exc)


def _tool_use_id(input: object) -> str | None:
    """The id of the ``tool_use`` block whose input the runner is running.

    The runner calls ``tool.call(tool_use.input)`` and does not pass the
    block; the block is still a local of the runner's frame. Only the block
    whose input *is* this object counts, so the id is never misattributed;
    when it cannot be found (another runner, another SDK version) the audit
    record simply has no call id.
    """
    frame: FrameType | None = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            return None
        candidate = frame.f_locals.get("tool_use")
        if isinstance(candidate, BetaToolUseBlock) and candidate.input is input:
            return candidate.id
        frame = frame.f_back
    return None


def _answer(governor: Governor, call: ToolCall, result: Result) -> Any:
    if result.status is ResultStatus.SUCCESS:
        return result.data
    raise ToolError(governor.refusal(call, result))


# ---------------------------------------------------------------- hand-written loops


@dataclass(frozen=True, slots=True)
class GovernedToolResult:
    """One governed ``tool_use`` block: what happened, and what the model reads.

    Attributes:
        tool_use_id: the id of the ``tool_use`` block.
        result: the runtime's Result (recorded in the audit trail).
        content: the text of the ``tool_result`` block.
        is_error: whether the block reports an error.
    """

    tool_use_id: str | None
    result: Result
    content: str
    is_error: bool

    # Code written for the runtime's Result keeps working on what a loop gets back.

    @property
    def status(self) -> ResultStatus:
        """The Result's status (``success``, ``blocked``, ``denied``, ``failed``)."""
        return self.result.status

    @property
    def ok(self) -> bool:
        """Whether the call ran and succeeded."""
        return self.result.ok

    @property
    def data(self) -> Any:
        """What the tool returned (``None`` unless it succeeded)."""
        return self.result.data

    @property
    def error(self) -> str | None:
        """Why the call did not run or failed, as the runtime recorded it."""
        return self.result.error


async def govern_tool_call(
    *,
    runtime: Any,
    tool_name: str,
    tool_input: Mapping[str, Any],
    target: str = _FRAMEWORK,
    tool_use_id: str | None = None,
    description: str = "",
    execute: Callable[[Action], Any] | None = None,
    agent: str | None = None,
    on_block: OnBlock = "return",
    input_schema: Mapping[str, Any] | None = None,
) -> GovernedToolResult:
    """Govern one ``tool_use`` block of a hand-written loop.

    The call runs through ``runtime.run_one``: with ``execute`` (a function
    of the approved :class:`~aegis.core.action.Action`, sync or async) when
    given, else with the runtime's own executor. Give the tool's
    ``input_schema`` (the one sent to the model) when your tool coerces its
    input: the arguments are then coerced with it first, decided on as
    coerced, and ``execute`` receives exactly those.

    Example::

        def run_tool(action):  # the approved action: its params are what may run
            return TOOLS[action.type](**action.params)

        results = [
            await govern_tool_call(runtime=rt, tool_name=b.name, tool_input=b.input,
                                   tool_use_id=b.id, target="billing", execute=run_tool)
            for b in message.content if b.type == "tool_use"
        ]
        if any(not r.ok for r in results): ...  # r.status, r.data, r.error as on a Result
        messages.append({"role": "user", "content": tool_results_to_api_format(results)})

    Raises:
        ToolBlockedError: the policy blocks the call and ``on_block="raise"``.
    """
    if not isinstance(tool_input, Mapping):
        raise ConfigurationError(
            f"tool_input must be the tool_use block's input object, got {type(tool_input).__name__}"
        )
    governor = Governor(runtime, target=target, framework=_FRAMEWORK, on_block=on_block)
    arguments, unreadable = _read_input(tool_input, input_schema)
    call = ToolCall(tool_name, arguments, tool_use_id, description, agent, unreadable)
    result = await governor.run(call, execute)
    if result.status is ResultStatus.SUCCESS:
        return GovernedToolResult(tool_use_id, result, _text(result.data), False)
    return GovernedToolResult(tool_use_id, result, governor.refusal(call, result), True)


def tool_results_to_api_format(results: Iterable[GovernedToolResult]) -> list[dict[str, Any]]:
    """The ``tool_result`` blocks of a user message, one per governed call."""
    blocks: list[dict[str, Any]] = []
    for item in results:
        if not isinstance(item, GovernedToolResult):
            raise ConfigurationError(
                f"expected the GovernedToolResult of govern_tool_call(), got {type(item).__name__}"
            )
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": item.tool_use_id,
            "content": item.content,
        }
        if item.is_error:
            block["is_error"] = True
        blocks.append(block)
    return blocks


def _text(data: Any) -> str:
    if isinstance(data, str):
        return data
    try:
        return json.dumps(data, default=str)
    except (TypeError, ValueError):
        return str(data)
