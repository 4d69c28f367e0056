"""One scripted agent per framework, driven the same way, for the integration contract.

Each harness builds the framework's real agent loop around a scripted
model (no network): the model asks for the given tool calls, then answers
"done". The harness runs the loop to its end, settling any suspension
through Aegis (``resolve_interrupts`` / ``resolve_interruptions``), and
reports which tools really ran with which arguments, and what the model
read back for each call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aegis import Policy, Runtime
from aegis.testing import InMemoryAuditLog

POLICY = {
    "version": "1",
    "defaults": {"approval": "approve", "risk_level": "medium"},
    "rules": [
        {"name": "reads", "match": {"type": "lookup"}, "approval": "auto", "risk_level": "low"},
        {
            "name": "no-deletes",
            "description": "deletes need a ticket",
            "match": {"type": "delete*"},
            "approval": "block",
            "risk_level": "critical",
        },
        {
            "name": "refunds",
            "description": "refunds need a reviewer",
            "match": {"type": "refund"},
            "approval": "approve",
            "risk_level": "high",
        },
    ],
}

#: the description every harness gives its refund tool (part of the approved action)
DESCRIPTIONS = {
    "lookup": "Look a customer up.",
    "delete_customer": "Delete a customer.",
    "refund": "Refund an order.",
}

#: a scripted model turn: (tool name, arguments, call id)
Call = tuple[str, dict[str, Any], str]


def model_json(value: Any) -> str:
    """``value`` as a model's JSON text: an infinite float as ``1e400``, nan as ``NaN``.

    JSON has no infinity; a model that means it writes a number too large
    for a float, which ``json.loads`` (and so the frameworks) read back as
    infinity. The scripted values hold no string with "Infinity" in it.
    """
    text = json.dumps(value)
    return text.replace("-Infinity", "-1e400").replace("Infinity", "1e400")


def make_runtime(
    approval_handler: Any = None,
    *,
    approval_timeout: float | None = None,
    audit: Any = None,
    policy: dict[str, Any] | None = None,
    no_approver: bool = False,
) -> Runtime:
    """A runtime with the contract policy, an in-memory audit and the given approver.

    Without an approver it denies; with ``no_approver`` it has none configured
    (the runtime's default, which asks at the terminal).
    """

    def no_executor(action: Any) -> Any:
        raise AssertionError(f"the runtime's own executor ran {action}")

    return Runtime(
        executor=no_executor,
        policy=Policy.from_dict(policy or POLICY),
        approval_handler=None
        if no_approver
        else approval_handler
        if approval_handler is not None
        else (lambda d: False),
        audit_logger=audit if audit is not None else InMemoryAuditLog(),
        approval_timeout=approval_timeout,
    )


@dataclass
class Run:
    """What happened in one scripted run."""

    executed: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: call id -> what the model read back for it
    model_saw: dict[str, str] = field(default_factory=dict)


def _recorders(run: Run) -> dict[str, Callable[..., str]]:
    def lookup(customer_id: int) -> str:
        run.executed.append(("lookup", {"customer_id": customer_id}))
        return f"customer {customer_id}: gold"

    def delete_customer(customer_id: int) -> str:
        run.executed.append(("delete_customer", {"customer_id": customer_id}))
        return "deleted"

    def refund(order_id: str, amount: float) -> str:
        run.executed.append(("refund", {"order_id": order_id, "amount": amount}))
        return f"refunded {amount} on {order_id}"

    functions = {"lookup": lookup, "delete_customer": delete_customer, "refund": refund}
    for name, fn in functions.items():
        fn.__doc__ = DESCRIPTIONS[name]
    return functions


# ---------------------------------------------------------------- LangChain


class LangChainHarness:
    """``create_agent`` with AegisMiddleware, a fake chat model and InMemorySaver."""

    name = "langchain"

    async def run(self, runtime: Runtime, calls: list[Call], *, target: str = "crm") -> Run:
        from langchain.agents import create_agent
        from langchain_core.messages import ToolMessage
        from langchain_core.tools import tool
        from langgraph.checkpoint.memory import InMemorySaver

        from aegis.adapters.langchain import AegisMiddleware, resolve_interrupts

        run = Run()
        tools = [tool(fn) for fn in _recorders(run).values()]
        model = scripted_chat_model(calls)
        agent = create_agent(
            model,
            tools=tools,
            middleware=[AegisMiddleware(runtime, target=target, agent="support")],
            checkpointer=InMemorySaver(),
        )
        config: Any = {"configurable": {"thread_id": "contract"}}
        state = await agent.ainvoke({"messages": [{"role": "user", "content": "go"}]}, config)
        for _ in range(5):
            if not state.get("__interrupt__"):
                break
            state = await resolve_interrupts(agent, config, runtime)
        for message in model.seen[-1]:
            if isinstance(message, ToolMessage):
                run.model_saw[message.tool_call_id] = str(message.content)
        return run


def scripted_chat_model(calls: list[Call], *, resumed: bool = False) -> Any:
    """LangChain's fake chat model asking for ``calls``, then saying "done".

    ``resumed`` leaves the first turn out: the run it serves made it already.
    """
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    class ScriptedChatModel(GenericFakeChatModel):
        """GenericFakeChatModel that accepts tools and remembers what it was sent."""

        seen: list[list[Any]] = []  # noqa: RUF012  # a pydantic field, copied per instance

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

        def _generate(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> Any:
            self.seen.append(list(messages))
            return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    turns = [
        AIMessage(
            content="",
            tool_calls=[{"name": n, "args": a, "id": i, "type": "tool_call"} for n, a, i in calls],
        ),
        AIMessage(content="done"),
    ]
    return ScriptedChatModel(messages=iter(turns[1:] if resumed else turns), seen=[])


# ---------------------------------------------------------------- OpenAI Agents SDK


class OpenAIAgentsHarness:
    """``Runner.run`` on a governed Agent with a scripted ``Model``."""

    name = "openai-agents"

    async def run(self, runtime: Runtime, calls: list[Call], *, target: str = "crm") -> Run:
        from agents import Agent, Runner, function_tool

        from aegis.adapters.openai_agents import govern, resolve_interruptions

        run = Run()
        tools = [function_tool(fn) for fn in _recorders(run).values()]
        model = ScriptedModel(
            [[function_call(n, a, i) for n, a, i in calls], [output_text("done")]]
        )
        agent = govern(Agent(name="support", model=model, tools=tools), runtime, target=target)
        result = await Runner.run(agent, "go")
        for _ in range(5):
            if not result.interruptions:
                break
            result = await Runner.run(agent, await resolve_interruptions(result, runtime))
        for item in model.inputs[-1]:
            if isinstance(item, dict) and item.get("type") == "function_call_output":
                run.model_saw[item["call_id"]] = str(item["output"])
        return run


def function_call(name: str, args: dict[str, Any], call_id: str) -> Any:
    """A Responses API function call item."""
    from openai.types.responses import ResponseFunctionToolCall

    return ResponseFunctionToolCall(
        arguments=model_json(args),
        call_id=call_id,
        name=name,
        type="function_call",
        id=f"fc_{call_id}",
        status="completed",
    )


def output_text(text: str) -> Any:
    """A Responses API assistant message."""
    from openai.types.responses import ResponseOutputMessage, ResponseOutputText

    return ResponseOutputMessage(
        id="msg_1",
        content=[ResponseOutputText(annotations=[], text=text, type="output_text")],
        role="assistant",
        status="completed",
        type="message",
    )


def _scripted_model_class() -> type:
    from agents import Model, ModelResponse, Usage

    class ScriptedModel(Model):
        """An Agents SDK Model that answers from a script and remembers its inputs."""

        def __init__(self, turns: list[list[Any]]) -> None:
            self.turns = list(turns)
            self.inputs: list[Any] = []

        async def get_response(  # noqa: PLR0917  # the SDK's Model signature
            self,
            system_instructions: Any,
            input: Any,
            model_settings: Any,
            tools: Any,
            output_schema: Any,
            handoffs: Any,
            tracing: Any,
            *,
            previous_response_id: Any = None,
            conversation_id: Any = None,
            prompt: Any = None,
        ) -> Any:
            self.inputs.append(input)
            if not self.turns:
                raise AssertionError("the scripted model was asked more often than scripted")
            return ModelResponse(output=self.turns.pop(0), usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("the contract runs are not streamed")

    return ScriptedModel


def ScriptedModel(turns: list[list[Any]]) -> Any:
    """A scripted Agents SDK Model (built lazily: importing agents takes a second)."""
    return _scripted_model_class()(turns)


# ---------------------------------------------------------------- Anthropic


class AnthropicHarness:
    """The SDK's tool runner with ``governed`` @beta_tools and a mock transport."""

    name = "anthropic"

    async def run(self, runtime: Runtime, calls: list[Call], *, target: str = "crm") -> Run:
        from anthropic.lib.tools import beta_tool

        from aegis.adapters.anthropic import governed

        run = Run()
        tools = [
            governed(beta_tool(fn), runtime, target=target, agent="support")
            for fn in _recorders(run).values()
        ]
        client, sent = mock_anthropic(
            [[tool_use(n, a, i) for n, a, i in calls], [text_block("done")]]
        )
        runner = client.beta.messages.tool_runner(
            model="claude-test",
            max_tokens=100,
            messages=[{"role": "user", "content": "go"}],
            tools=tools,
        )
        runner.until_done()
        for block in sent[-1]["messages"][-1]["content"]:
            if block.get("type") == "tool_result":
                run.model_saw[block["tool_use_id"]] = str(block["content"])
        return run


def tool_use(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    """A ``tool_use`` content block."""
    return {"type": "tool_use", "id": call_id, "name": name, "input": args}


def text_block(text: str) -> dict[str, Any]:
    """A ``text`` content block."""
    return {"type": "text", "text": text}


def mock_anthropic(
    turns: list[list[dict[str, Any]]], *, asynchronous: bool = False
) -> tuple[Any, list[Any]]:
    """An Anthropic client whose transport answers from ``turns``; and the bodies it was sent."""
    import anthropic
    import httpx2

    sent: list[Any] = []
    remaining = list(turns)

    def handle(request: Any) -> Any:
        sent.append(json.loads(request.content))
        content = remaining.pop(0)
        stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
        body = {
            "id": f"msg_{len(sent)}",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
        return httpx2.Response(
            200, content=model_json(body), headers={"content-type": "application/json"}
        )

    transport = httpx2.MockTransport(handle)
    if asynchronous:
        return anthropic.AsyncAnthropic(
            api_key="test", http_client=httpx2.AsyncClient(transport=transport)
        ), sent
    return anthropic.Anthropic(api_key="test", http_client=httpx2.Client(transport=transport)), sent


# ---------------------------------------------------------------- Pydantic AI


class PydanticAIHarness:
    """A governed ``Agent`` driven by Pydantic AI's ``FunctionModel``."""

    name = "pydantic-ai"

    async def run(self, runtime: Runtime, calls: list[Call], *, target: str = "crm") -> Run:
        from pydantic_ai import Agent, DeferredToolRequests

        from aegis.adapters.pydantic_ai import govern, resolve_deferred

        run = Run()
        model, seen = scripted_function_model(calls)
        agent = govern(
            Agent(model, name="support", tools=list(_recorders(run).values())),
            runtime,
            target=target,
        )
        result = await agent.run("go")
        for _ in range(5):
            if not isinstance(result.output, DeferredToolRequests):
                break
            result = await agent.run(
                message_history=result.all_messages(),
                deferred_tool_results=await resolve_deferred(result, runtime),
            )
        run.model_saw.update(pydantic_ai_tool_results(seen[-1]))
        return run


def scripted_function_model(calls: list[Call]) -> tuple[Any, list[list[Any]]]:
    """A ``FunctionModel`` asking for ``calls`` until it reads their results, then "done".

    It decides from the messages alone, so a run resumed in another process
    (from its saved history) gets the same answers. Returns the model and
    the message lists it was sent.
    """
    from pydantic_ai.messages import (
        ModelRequest,
        ModelResponse,
        RetryPromptPart,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
    )
    from pydantic_ai.models.function import FunctionModel

    seen: list[list[Any]] = []

    def respond(messages: list[Any], info: Any) -> Any:
        seen.append(list(messages))
        last = messages[-1]
        answered = isinstance(last, ModelRequest) and any(
            isinstance(part, ToolReturnPart | RetryPromptPart) for part in last.parts
        )
        if answered or not calls:
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(
            parts=[ToolCallPart(name, args, tool_call_id=call_id) for name, args, call_id in calls]
        )

    return FunctionModel(respond), seen


def pydantic_ai_tool_results(messages: list[Any]) -> dict[str, str]:
    """Call id -> what the model read back for it, over a whole message history."""
    from pydantic_ai.messages import ModelRequest, RetryPromptPart, ToolReturnPart

    saw: dict[str, str] = {}
    for message in messages:
        if not isinstance(message, ModelRequest):
            continue
        for part in message.parts:
            if isinstance(part, ToolReturnPart) or (
                isinstance(part, RetryPromptPart) and part.tool_call_id
            ):
                saw[part.tool_call_id] = str(part.content)
    return saw


# ---------------------------------------------------------------- Claude Agent SDK

#: the input schema of each recorder, for the SDK's @tool
_SCHEMAS: dict[str, dict[str, type]] = {
    "lookup": {"customer_id": int},
    "delete_customer": {"customer_id": int},
    "refund": {"order_id": str, "amount": float},
}


def claude_sdk_tools(run: Run) -> list[Any]:
    """The recorders as the SDK's in-process MCP tools."""
    from claude_agent_sdk import tool

    def as_tool(name: str, fn: Callable[..., str]) -> Any:
        async def handler(args: dict[str, Any]) -> dict[str, Any]:
            return {"content": [{"type": "text", "text": fn(**args)}]}

        return tool(name, DESCRIPTIONS[name], _SCHEMAS[name])(handler)

    return [as_tool(name, fn) for name, fn in _recorders(run).items()]


class ClaudeAgentSDKHarness:
    """``query()`` with Aegis's hooks, against a scripted Claude Code speaking the SDK protocol."""

    name = "claude-agent-sdk"
    framework = "claude-agent-sdk"
    permission_callback = False

    async def run(self, runtime: Runtime, calls: list[Call], *, target: str = "crm") -> Run:
        from claude_agent_sdk import ClaudeAgentOptions, create_sdk_mcp_server, query
        from fake_claude_code import FakeClaudeCode

        from aegis.adapters.claude_agent_sdk import can_use_tool, hooks

        run = Run()
        tools = claude_sdk_tools(run)
        server = create_sdk_mcp_server("crm", tools=tools)
        if self.permission_callback:
            options = ClaudeAgentOptions(
                mcp_servers={"crm": server},
                can_use_tool=can_use_tool(
                    runtime, target=target, tools={"crm": tools}, agent="support"
                ),
            )
        else:
            options = ClaudeAgentOptions(
                mcp_servers={"crm": server},
                hooks=hooks(runtime, target=target, tools={"crm": tools}, agent="support"),  # type: ignore[arg-type]
            )
        cli = FakeClaudeCode(calls, server="crm", ask_permission=self.permission_callback)

        async def prompt() -> Any:
            yield {"type": "user", "message": {"role": "user", "content": "go"}}

        final = None
        async for message in query(prompt=prompt(), options=options, transport=cli):
            final = getattr(message, "result", final)
        assert final == "done"
        run.model_saw.update(cli.model_saw)
        return run


class ClaudeAgentSDKPermissionHarness(ClaudeAgentSDKHarness):
    """``query()`` with Aegis's ``can_use_tool`` callback instead of hooks."""

    name = "claude-agent-sdk-can-use-tool"
    permission_callback = True


# ---------------------------------------------------------------- Google ADK


def scripted_llm(calls: list[Call]) -> Any:
    """An ADK ``BaseLlm`` asking for ``calls`` until it reads their results, then "done".

    It decides from the request alone (a resumed invocation gets the same
    answers); ``.seen`` holds the contents of every request.
    """
    from google.adk.models.base_llm import BaseLlm
    from google.adk.models.llm_response import LlmResponse
    from google.genai import types

    class ScriptedLlm(BaseLlm):  # type: ignore[misc]
        """Answers from the script; remembers what it was sent."""

        seen: list[list[Any]] = []  # noqa: RUF012  # a pydantic field, copied per instance

        async def generate_content_async(self, llm_request: Any, stream: bool = False) -> Any:
            contents = list(llm_request.contents or [])
            self.seen.append(contents)
            last = contents[-1] if contents else None
            answered = last is not None and any(
                part.function_response is not None for part in last.parts or []
            )
            if answered or not calls:
                parts = [types.Part(text="done")]
            else:
                parts = [
                    types.Part(function_call=types.FunctionCall(name=n, args=a, id=i))
                    for n, a, i in calls
                ]
            yield LlmResponse(content=types.Content(role="model", parts=parts))

    return ScriptedLlm(model="scripted", seen=[])


def adk_tool_results(contents: list[Any]) -> dict[str, str]:
    """Call id -> what the model read back for it (the function response)."""
    saw: dict[str, str] = {}
    for content in contents:
        for part in content.parts or []:
            response = part.function_response
            if response is not None and response.id and response.name != "adk_request_confirmation":
                value = response.response or {}
                text = value.get("result", value.get("error", value))
                saw[response.id] = text if isinstance(text, str) else json.dumps(text)
    return saw


class GoogleADKHarness:
    """An ADK ``Runner`` with the AegisPlugin, a scripted ``BaseLlm`` and tool confirmations."""

    name = "google-adk"

    async def run(self, runtime: Runtime, calls: list[Call], *, target: str = "crm") -> Run:
        from google.adk.agents import LlmAgent
        from google.adk.apps import App
        from google.adk.runners import Runner
        from google.adk.sessions import InMemorySessionService
        from google.adk.tools import FunctionTool
        from google.genai import types

        from aegis.adapters.google_adk import (
            AegisPlugin,
            confirmation_responses,
            pending_confirmations,
        )

        run = Run()
        llm = scripted_llm(calls)
        agent = LlmAgent(
            name="support",
            model=llm,
            tools=[FunctionTool(fn) for fn in _recorders(run).values()],
        )
        app = App(name="contract", root_agent=agent, plugins=[AegisPlugin(runtime, target=target)])
        sessions = InMemorySessionService()
        runner = Runner(app=app, session_service=sessions)
        session = await sessions.create_session(app_name="contract", user_id="u")
        message = types.Content(role="user", parts=[types.Part(text="go")])
        events = [
            e
            async for e in runner.run_async(user_id="u", session_id=session.id, new_message=message)
        ]
        for _ in range(5):
            if not pending_confirmations(events):
                break
            events += [
                e
                async for e in runner.run_async(
                    user_id="u", session_id=session.id, new_message=confirmation_responses(events)
                )
            ]
        run.model_saw.update(adk_tool_results(llm.seen[-1]))
        return run


# ---------------------------------------------------------------- CrewAI


def scripted_crewai_llm(calls: list[Call]) -> Any:
    """A CrewAI ``BaseLLM`` asking for ``calls`` (native tool calls), then answering "done".

    It decides from the messages alone; ``.seen`` holds every message list.
    """
    from crewai.llms.base_llm import BaseLLM

    class ScriptedLLM(BaseLLM):  # type: ignore[misc]
        """Answers from the script; remembers what it was sent."""

        seen: list[list[Any]] = []  # noqa: RUF012  # a pydantic field, copied per instance

        def call(self, messages: Any, tools: Any = None, *args: Any, **kwargs: Any) -> Any:
            listed = (
                messages if isinstance(messages, list) else [{"role": "user", "content": messages}]
            )
            self.seen.append(list(listed))
            if not calls or any(m.get("role") == "tool" for m in listed):
                return "done"
            return [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": model_json(args)},
                }
                for name, args, call_id in calls
            ]

        def supports_function_calling(self) -> bool:
            return True

    return ScriptedLLM(model="scripted", seen=[])


class CrewAIHarness:
    """A governed ``Crew`` with a scripted ``BaseLLM`` making native tool calls."""

    name = "crewai"

    async def run(self, runtime: Runtime, calls: list[Call], *, target: str = "crm") -> Run:
        import asyncio

        from crewai import Agent, Crew, Task
        from crewai.tools import tool

        from aegis.adapters.crewai import govern, ungovern

        run = Run()
        tools = [tool(name)(fn) for name, fn in _recorders(run).items()]
        llm = scripted_crewai_llm(calls)
        agent = Agent(role="support", goal="help", backstory="a support desk", llm=llm, tools=tools)
        task = Task(description="go", expected_output="a summary", agent=agent)
        crew = govern(Crew(agents=[agent], tasks=[task]), runtime, target=target)
        try:
            output = await asyncio.to_thread(crew.kickoff)
        finally:
            ungovern(crew)
        assert str(output) == "done"
        for message in llm.seen[-1]:
            if message.get("role") == "tool":
                run.model_saw[message["tool_call_id"]] = str(message["content"])
        return run


#: the integration whose own environment runs the tests (scripts/check sets it), if any
ISOLATED = os.environ.get("AEGIS_TEST_FRAMEWORK", "")

#: the integrations of the main environment, and those that need their own
#: (their pins conflict with the main environment's packages)
MAIN_HARNESSES: list[Any] = [
    LangChainHarness(),
    OpenAIAgentsHarness(),
    AnthropicHarness(),
    PydanticAIHarness(),
    ClaudeAgentSDKHarness(),
    ClaudeAgentSDKPermissionHarness(),
]
ISOLATED_HARNESSES: dict[str, list[Any]] = {
    "google-adk": [GoogleADKHarness()],
    "crewai": [CrewAIHarness()],
}

HARNESSES = ISOLATED_HARNESSES[ISOLATED] if ISOLATED else MAIN_HARNESSES
