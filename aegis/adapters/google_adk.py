"""Govern the tools of a Google Agent Development Kit (ADK) agent.

:class:`AegisPlugin` is an ADK plugin: give it to the ``Runner`` (or the
``App``) and it decides every tool call of every agent in its before-tool
callback, with one semantics (see :mod:`aegis.adapters._governance`):

- a call the policy lets through runs there, once, with exactly the decided
  arguments, through :meth:`~aegis.runtime.engine.Runtime.run_one` (the
  function call id and the agent's name in the audit record);
- a call it blocks never runs: the model reads ``{"error": ...}`` with the
  rule and the reason;
- a call that needs approval asks for ADK's *tool confirmation*: the
  invocation pauses (a resumable ``App`` keeps its place) with an
  ``adk_request_confirmation`` call, and the approval request is opened at
  once for reviewers (with the approval service). Answer the confirmation
  (:func:`confirmation_responses` builds the message) to resume, in this
  process or another with the same session store: the plugin then collects
  the reviewers' verdict from the runtime's approval handler and runs the
  call with exactly the approved arguments, or records the refusal. The
  confirmation itself only resumes: a ``confirmed: false`` cancels the call,
  a ``confirmed: true`` approves nothing by itself.

Example::

    runner = Runner(app=App(name="support", root_agent=agent,
                            plugins=[AegisPlugin(runtime, target="billing")]),
                    session_service=sessions)
    async for event in runner.run_async(user_id=u, session_id=s, new_message=msg):
        ...
    # later, once a reviewer has answered:
    resume = confirmation_responses(events)
    async for event in runner.run_async(user_id=u, session_id=s, new_message=resume):
        ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aegis.adapters._governance import Governor, OnBlock, ToolCall, missing_extra
from aegis.core.action import Action, thaw
from aegis.core.decision import Approval
from aegis.core.outcome import ApprovalOutcome
from aegis.core.result import ResultStatus

try:
    from google.adk.plugins.base_plugin import BasePlugin
    from google.adk.tools.base_tool import BaseTool
    from google.adk.tools.tool_context import ToolContext
    from google.genai import types
except ImportError as exc:
    missing_extra("aegis.adapters.google_adk", "google-adk", exc)

__all__ = ["AegisPlugin", "confirmation_responses", "pending_confirmations"]

_FRAMEWORK = "google-adk"
#: ADK's function name for a tool confirmation request and its response
_CONFIRMATION = "adk_request_confirmation"
#: the session-state key holding the approval requests opened at a pause, by call id
_STATE_KEY = "aegis_approval_requests"
#: the marker in a confirmation request's payload that says Aegis asked for it
_PAYLOAD_KEY = "aegis"


class AegisPlugin(BasePlugin):  # type: ignore[misc,unused-ignore]  # untyped outside ADK's env
    """An ADK plugin putting every tool call through one Aegis runtime.

    Args:
        runtime: the :class:`~aegis.runtime.engine.Runtime` that decides,
            approves, executes and records.
        target: the action ``target`` of every call (the toolset's name).
        on_block: ``"return"`` (the model reads the refusal) or ``"raise"``
            (:class:`~aegis.errors.ToolBlockedError` ends the invocation).
        agent: the agent name recorded when ADK gives none.
        name: the plugin's name in the runner.
    """

    def __init__(
        self,
        runtime: Any,
        *,
        target: str = _FRAMEWORK,
        on_block: OnBlock = "return",
        agent: str | None = None,
        name: str = "aegis",
    ) -> None:
        super().__init__(name=name)
        self.governor = Governor(
            runtime, target=target, framework=_FRAMEWORK, on_block=on_block, agent=agent
        )

    async def before_tool_callback(
        self, *, tool: BaseTool, tool_args: dict[str, Any], tool_context: ToolContext
    ) -> dict[str, Any] | None:
        """Decide the call; run it, refuse it, or pause it for a confirmation."""
        governor = self.governor
        call_id = tool_context.function_call_id
        call = ToolCall(
            tool.name,
            tool_args,
            call_id=call_id,
            description=tool.description or "",
            agent=tool_context.agent_name or governor.agent,
        )

        async def execute(action: Action) -> Any:
            # Exactly the params the runtime decided (and a reviewer approved).
            return await tool.run_async(args=thaw(action.params), tool_context=tool_context)

        answer: ApprovalOutcome | None = None
        decision = governor.decide(call)
        if decision.approval is Approval.APPROVE:
            confirmation = tool_context.tool_confirmation
            requests = _requests(tool_context)
            if confirmation is None:
                # Pause: reviewers see the request now; nothing waits for them.
                request_id = await governor.submit(decision, call)
                if request_id is not None and call_id:
                    requests[call_id] = request_id
                    tool_context.state[_STATE_KEY] = requests
                tool_context.request_confirmation(
                    hint=f"Aegis: {tool.name} needs a reviewer's approval (rule "
                    f"{decision.matched_rule}); answer this confirmation to resume once "
                    "a reviewer has decided.",
                    payload={_PAYLOAD_KEY: {"request_id": request_id}},
                )
                tool_context.actions.skip_summarization = True
                return {"error": "awaiting approval by a reviewer (Aegis)"}
            request_id = requests.pop(call_id or "", None)
            tool_context.state[_STATE_KEY] = requests
            if not confirmation.confirmed:
                answer = ApprovalOutcome(
                    False, reason="the confirmation was declined", request_id=request_id
                )
            else:
                answer = await governor.collect(request_id, decision)
        result = await governor.run(call, execute, answer, reraise=True)
        if result.status is ResultStatus.SUCCESS:
            data = result.data
            return data if isinstance(data, dict) else {"result": data}
        return {"error": governor.refusal(call, result)}


def _requests(tool_context: ToolContext) -> dict[str, str]:
    held = tool_context.state.get(_STATE_KEY)
    if not isinstance(held, Mapping):
        return {}
    return {str(k): str(v) for k, v in held.items() if isinstance(v, str)}


def pending_confirmations(events: Iterable[Any]) -> list[types.FunctionCall]:
    """The ``adk_request_confirmation`` calls Aegis made among ``events`` and not yet answered."""
    asked: dict[str, types.FunctionCall] = {}
    answered: set[str] = set()
    for event in events:
        content = getattr(event, "content", None)
        for part in getattr(content, "parts", None) or ():
            call = getattr(part, "function_call", None)
            if call is not None and call.name == _CONFIRMATION and call.id:
                confirmation = (call.args or {}).get("toolConfirmation") or {}
                payload = confirmation.get("payload") if isinstance(confirmation, dict) else None
                if isinstance(payload, dict) and _PAYLOAD_KEY in payload:
                    asked[call.id] = call
            response = getattr(part, "function_response", None)
            if response is not None and response.name == _CONFIRMATION and response.id:
                answered.add(response.id)
    return [call for call_id, call in asked.items() if call_id not in answered]


def confirmation_responses(events: Iterable[Any], *, confirmed: bool = True) -> types.Content:
    """The user message answering Aegis's pending confirmations, to resume the invocation.

    ``confirmed=True`` resumes: each paused call is then decided by the
    reviewers' verdict (collected from the runtime's approval handler), not
    by this message. ``confirmed=False`` cancels the calls.
    """
    parts = [
        types.Part(
            function_response=types.FunctionResponse(
                id=call.id, name=_CONFIRMATION, response={"confirmed": confirmed}
            )
        )
        for call in pending_confirmations(events)
    ]
    return types.Content(role="user", parts=parts)
