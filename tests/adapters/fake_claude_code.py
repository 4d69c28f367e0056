"""A stand-in for the ``claude`` CLI, speaking the Agent SDK's stream-json control protocol.

The Claude Agent SDK drives Claude Code as a subprocess through a
``Transport``; this one answers in-process instead, playing a scripted
model turn the way Claude Code does: it initializes (taking the SDK's hook
registrations), shows the assistant's ``tool_use`` blocks, and for each
call asks the SDK's ``PreToolUse`` hooks (or its ``can_use_tool``
callback) over control requests, honours their decision and
``updatedInput``, runs the tool on the SDK's in-process MCP server (the
real SDK tool, through the SDK's MCP bridge), reports it to the
``PostToolUse`` hooks, sends the tool results back and ends the turn (its
``Stop`` hooks, then a result message). It can play the user interrupting a
tool's run, as Claude Code does on Esc: the run's request is cancelled
(``control_cancel_request``) and no ``PostToolUse`` comes for that call.
Everything on the SDK side is the SDK's own code.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

from claude_agent_sdk._internal.transport import Transport

SESSION = "fake-session"


class FakeClaudeCode(Transport):
    """The scripted CLI: ``calls`` are (tool name, input, tool_use_id) on MCP server ``server``."""

    def __init__(
        self,
        calls: list[tuple[str, dict[str, Any], str]],
        *,
        server: str,
        ask_permission: bool = False,
        pre_allowed: Collection[str] = (),
        cancel_late_hooks: bool = True,
        interrupt: Mapping[str, asyncio.Event] | None = None,
    ) -> None:
        """``ask_permission``: ask ``can_use_tool`` when no hook decided (``stdio`` prompts).

        ``pre_allowed``: the tools Claude Code's own permission rules allow
        without asking (``allowed_tools``, ``bypassPermissions``), by their
        full names (``mcp__crm__refund``).

        A hook that does not answer within its matcher's ``timeout`` fails
        (so with ``on_failure="block"`` it blocks the call); with
        ``cancel_late_hooks`` the CLI also cancels its request
        (``control_cancel_request``), else it ignores the late answer.

        ``interrupt``: by tool_use_id, an event the user sets while that
        call's tool runs: the CLI cancels the run's request, sends no
        ``PostToolUse`` for the call, and the model reads that it was
        interrupted.
        """
        self.interrupt = dict(interrupt or {})
        self.cancel_late_hooks = cancel_late_hooks
        self.calls = calls
        self.pre_allowed = set(pre_allowed)
        self.server = server
        #: tool_use_id -> what the model read back for it
        self.model_saw: dict[str, str] = {}
        self._out: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._hooks: dict[str, list[dict[str, Any]]] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._turn: asyncio.Task[None] | None = None
        self._permission_over_stdio = ask_permission

    # ------------------------------------------------------------ Transport

    async def connect(self) -> None:
        """Nothing to start."""

    def is_ready(self) -> bool:
        """Always ready."""
        return True

    async def write(self, data: str) -> None:
        """What the SDK sends: control requests and responses, and the user's prompt."""
        for line in data.splitlines():
            if line.strip():
                await self._receive(json.loads(line))

    def read_messages(self) -> AsyncIterator[dict[str, Any]]:
        """What the CLI prints, one message at a time, until the input ends."""
        return self._messages()

    async def _messages(self) -> AsyncIterator[dict[str, Any]]:
        while (message := await self._out.get()) is not None:
            yield message

    async def end_input(self) -> None:
        """The SDK closed stdin: the CLI exits."""
        await self._out.put(None)

    async def close(self) -> None:
        """Stop the turn if it still runs."""
        if self._turn is not None and not self._turn.done():
            self._turn.cancel()
        await self._out.put(None)

    # ------------------------------------------------------------ the CLI's side

    async def _receive(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "control_request":
            request = message["request"]
            if request["subtype"] == "initialize":
                self._hooks = request.get("hooks") or {}
                await self._respond(
                    message["request_id"],
                    {"commands": [], "hook_on_failure_supported": True, "hooks_applied": True},
                )
            else:
                await self._respond(message["request_id"], {})
        elif kind == "control_response":
            response = message["response"]
            future = self._waiting.pop(response["request_id"], None)
            if future is not None and not future.done():
                future.set_result(response)
        elif kind == "user":
            self._turn = asyncio.ensure_future(self._play())

    async def _respond(self, request_id: str, payload: dict[str, Any]) -> None:
        await self._out.put(
            {
                "type": "control_response",
                "response": {"subtype": "success", "request_id": request_id, "response": payload},
            }
        )

    async def _ask(
        self,
        request: dict[str, Any],
        timeout: float | None = None,
        interrupt: asyncio.Event | None = None,
    ) -> dict[str, Any]:
        """A control request to the SDK; its response (``subtype`` success or error).

        Past ``timeout`` seconds the request fails (``subtype`` error), as a hook
        does in Claude Code when it does not answer in time. Once ``interrupt``
        is set the request is cancelled (``subtype`` interrupted).
        """
        request_id = f"cli_{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        await self._out.put(
            {"type": "control_request", "request_id": request_id, "request": request}
        )
        if interrupt is not None:
            user = asyncio.ensure_future(interrupt.wait())
            await asyncio.wait({future, user}, return_when=asyncio.FIRST_COMPLETED)
            user.cancel()
            if not future.done():
                self._waiting.pop(request_id, None)
                await self._out.put({"type": "control_cancel_request", "request_id": request_id})
                return {"subtype": "interrupted"}
            return future.result()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._waiting.pop(request_id, None)
            if self.cancel_late_hooks:
                await self._out.put({"type": "control_cancel_request", "request_id": request_id})
            return {"subtype": "error", "error": f"hook timed out after {timeout} s"}

    async def _mcp(
        self, message: dict[str, Any], interrupt: asyncio.Event | None = None
    ) -> dict[str, Any] | None:
        """The MCP server's reply; ``None`` when the user interrupted the request."""
        answer = await self._ask(
            {"subtype": "mcp_message", "server_name": self.server, "message": message},
            interrupt=interrupt,
        )
        if answer["subtype"] == "interrupted":
            return None
        assert answer["subtype"] == "success", answer
        return dict(answer["response"].get("mcp_response") or {})

    async def _hook(self, event: str, tool: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """Run the SDK's hooks of ``event`` matching ``tool``; their outputs (errors as such)."""
        outputs = []
        for matcher in self._hooks.get(event, []):
            pattern = matcher.get("matcher")
            if pattern and event != "Stop" and not re.fullmatch(pattern, tool):
                continue
            for callback_id in matcher["hookCallbackIds"]:
                answer = await self._ask(
                    {
                        "subtype": "hook_callback",
                        "callback_id": callback_id,
                        "input": {
                            "session_id": SESSION,
                            "transcript_path": "",
                            "cwd": "/",
                            "hook_event_name": event,
                            **payload,
                        },
                        "tool_use_id": payload.get("tool_use_id"),
                    },
                    matcher.get("timeout"),
                )
                if answer["subtype"] != "success":
                    outputs.append({"failed": answer.get("error", "hook failed")})
                else:
                    outputs.append(dict(answer["response"]))
        return outputs

    async def _permitted(
        self, tool: str, tool_input: dict[str, Any], tool_use_id: str
    ) -> tuple[dict[str, Any] | None, str]:
        """Claude Code's permission step: the input to run with, or None and why not."""
        decided = None
        for output in await self._hook(
            "PreToolUse",
            tool,
            {"tool_name": tool, "tool_input": tool_input, "tool_use_id": tool_use_id},
        ):
            if "failed" in output:  # on_failure="block": a failing hook blocks the call
                return None, f"PreToolUse hook failed: {output['failed']}"
            specific = output.get("hookSpecificOutput") or {}
            if specific.get("permissionDecision") == "deny":
                return None, str(specific.get("permissionDecisionReason", ""))
            if specific.get("permissionDecision") == "allow":
                decided = "allow"
                tool_input = specific.get("updatedInput", tool_input)
        if decided is None and self._permission_over_stdio and tool not in self.pre_allowed:
            answer = await self._ask(
                {
                    "subtype": "can_use_tool",
                    "tool_name": tool,
                    "input": tool_input,
                    "tool_use_id": tool_use_id,
                    "permission_suggestions": [],
                }
            )
            if answer["subtype"] != "success":
                return None, f"permission callback failed: {answer.get('error')}"
            permission = answer["response"]
            if permission.get("behavior") != "allow":
                return None, str(permission.get("message", ""))
            tool_input = permission.get("updatedInput", tool_input)
        return tool_input, ""

    async def _play(self) -> None:
        await self._mcp(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "fake-claude-code", "version": "0"},
                },
            }
        )
        await self._mcp({"jsonrpc": "2.0", "method": "notifications/initialized"})
        blocks = [
            {"type": "tool_use", "id": call_id, "name": self._name(name), "input": args}
            for name, args, call_id in self.calls
        ]
        await self._out.put(_assistant(blocks))
        results = []
        for index, (name, args, call_id) in enumerate(self.calls, start=1):
            tool = self._name(name)
            tool_input, refusal = await self._permitted(tool, args, call_id)
            if tool_input is None:
                text, is_error = refusal, True
            else:
                reply = await self._mcp(
                    {
                        "jsonrpc": "2.0",
                        "id": index,
                        "method": "tools/call",
                        "params": {"name": name, "arguments": tool_input},
                    },
                    self.interrupt.get(call_id),
                )
                if reply is None:  # interrupted: Claude Code sends no PostToolUse
                    text, is_error = "[Request interrupted by user for tool use]", True
                else:
                    result = reply.get("result") or {}
                    text = "".join(c.get("text", "") for c in result.get("content", []))
                    is_error = bool(result.get("isError")) or "error" in reply
                    payload = {"tool_name": tool, "tool_input": tool_input, "tool_use_id": call_id}
                    if is_error:
                        await self._hook("PostToolUseFailure", tool, {**payload, "error": text})
                    else:
                        await self._hook("PostToolUse", tool, {**payload, "tool_response": result})
            self.model_saw[call_id] = text
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": call_id,
                    "content": text,
                    "is_error": is_error,
                }
            )
        await self._out.put(
            {
                "type": "user",
                "message": {"role": "user", "content": results},
                "parent_tool_use_id": None,
                "session_id": SESSION,
            }
        )
        await self._out.put(_assistant([{"type": "text", "text": "done"}]))
        await self._hook("Stop", "", {"stop_hook_active": False})
        await self._out.put(
            {
                "type": "result",
                "subtype": "success",
                "duration_ms": 1,
                "duration_api_ms": 1,
                "is_error": False,
                "num_turns": 2,
                "session_id": SESSION,
                "result": "done",
            }
        )

    def _name(self, tool: str) -> str:
        return f"mcp__{self.server}__{tool}"


def _assistant(content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "assistant",
        "message": {"role": "assistant", "model": "fake", "content": content},
        "parent_tool_use_id": None,
        "session_id": SESSION,
    }
