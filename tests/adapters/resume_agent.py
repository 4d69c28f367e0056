"""One phase of a suspended agent run, in its own process.

    python resume_agent.py FRAMEWORK PHASE DIR URL SESSION

FRAMEWORK is ``langchain``, ``openai``, ``pydantic-ai`` or ``google-adk``;
PHASE is ``start`` (run until the refund needs approval, save the run in DIR,
exit) or ``resume`` (load the run from DIR, settle its approvals through Aegis,
finish). The approver is the approval service at URL (``RemoteApprovalHandler``, agent token
``bot-secret``), the runtime's session SESSION. Tools append what they ran to
DIR/ran.jsonl; the audit trail is DIR/audit.db. The last line printed is a
JSON summary.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from pathlib import Path
from typing import Any

from adapters_support import (
    POLICY,
    ScriptedModel,
    function_call,
    output_text,
    scripted_chat_model,
    scripted_function_model,
    scripted_llm,
)

from aegis import Policy, Runtime
from aegis.runtime.audit import AuditLogger

REFUND = {"order_id": "o-17", "amount": 20.0}


def _runtime(folder: Path, url: str, session: str) -> Runtime:
    from aegis.runtime.approval_remote import RemoteApprovalHandler

    handler = RemoteApprovalHandler(url, token="bot-secret", timeout=30, poll=1)

    def no_executor(action: Any) -> Any:
        raise AssertionError(f"the runtime's own executor ran {action}")

    return Runtime(
        executor=no_executor,
        policy=Policy.from_dict(POLICY),
        approval_handler=handler,
        audit_logger=AuditLogger(str(folder / "audit.db")),
        session_id=session,
    )


def _refund(folder: Path) -> Any:
    def refund(order_id: str, amount: float) -> str:
        """Refund an order."""
        with (folder / "ran.jsonl").open("a") as out:
            out.write(json.dumps({"order_id": order_id, "amount": amount}) + "\n")
        return f"refunded {amount}"

    return refund


# ---------------------------------------------------------------- LangChain


def _saver(folder: Path) -> Any:
    from langgraph.checkpoint.memory import InMemorySaver, PersistentDict

    names = iter(("storage", "writes", "blobs"))

    def persistent(*args: Any) -> Any:
        table = PersistentDict(*args, filename=str(folder / f"{next(names)}.pickle"))
        if Path(table.filename).exists():
            table.load()
        return table

    return InMemorySaver(factory=functools.partial(persistent))


async def langchain(phase: str, folder: Path, url: str, session: str) -> dict[str, Any]:
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    from aegis.adapters.langchain import AegisMiddleware, resolve_interrupts

    runtime = _runtime(folder, url, session)
    model = scripted_chat_model([("refund", REFUND, "call_refund")], resumed=phase != "start")
    config: Any = {"configurable": {"thread_id": "thread-1"}}
    with _saver(folder) as saver:
        agent = create_agent(
            model,
            tools=[tool(_refund(folder))],
            middleware=[AegisMiddleware(runtime, target="crm", agent="support")],
            checkpointer=saver,
        )
        if phase == "start":
            state = await agent.ainvoke({"messages": [("user", "refund o-17")]}, config)
            [pending] = state["__interrupt__"]
            summary = {"suspended": pending.value["aegis"]["requests"]}
        else:
            state = await resolve_interrupts(agent, config, runtime)
            summary = {
                "final": state["messages"][-1].content,
                "interrupted": bool(state.get("__interrupt__")),
            }
    await runtime.close()
    return summary


# ---------------------------------------------------------------- OpenAI Agents SDK


async def openai(phase: str, folder: Path, url: str, session: str) -> dict[str, Any]:
    from agents import Agent, Runner, RunState, function_tool, set_tracing_disabled

    from aegis.adapters.openai_agents import govern, resolve_interruptions

    set_tracing_disabled(True)
    runtime = _runtime(folder, url, session)
    turns = [[function_call("refund", REFUND, "call_refund")], [output_text("done")]]
    model = ScriptedModel(turns if phase == "start" else turns[1:])
    agent = govern(
        Agent(name="support", model=model, tools=[function_tool(_refund(folder))]),
        runtime,
        target="crm",
    )
    saved = folder / "run_state.json"
    if phase == "start":
        result = await Runner.run(agent, "refund o-17")
        saved.write_text(result.to_state().to_string())
        summary: dict[str, Any] = {
            "suspended": [{"name": i.name, "call_id": i.call_id} for i in result.interruptions]
        }
    else:
        state = await RunState.from_string(agent, saved.read_text())
        result = await Runner.run(agent, await resolve_interruptions(state, runtime))
        summary = {"final": result.final_output, "interrupted": bool(result.interruptions)}
    await runtime.close()
    return summary


# ---------------------------------------------------------------- Pydantic AI


async def pydantic_ai(phase: str, folder: Path, url: str, session: str) -> dict[str, Any]:
    from pydantic import TypeAdapter
    from pydantic_ai import Agent, DeferredToolRequests
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    from aegis.adapters.pydantic_ai import govern, resolve_deferred

    runtime = _runtime(folder, url, session)
    model, _ = scripted_function_model([("refund", REFUND, "call_refund")])
    agent = govern(Agent(model, name="support", tools=[_refund(folder)]), runtime, target="crm")
    requests_type = TypeAdapter(DeferredToolRequests)
    history, pending = folder / "messages.json", folder / "deferred.json"
    if phase == "start":
        result = await agent.run("refund o-17")
        assert isinstance(result.output, DeferredToolRequests)
        history.write_bytes(ModelMessagesTypeAdapter.dump_json(result.all_messages()))
        pending.write_bytes(requests_type.dump_json(result.output))
        summary: dict[str, Any] = {"suspended": [p.tool_call_id for p in result.output.approvals]}
    else:
        requests = requests_type.validate_json(pending.read_bytes())
        result = await agent.run(
            message_history=ModelMessagesTypeAdapter.validate_json(history.read_bytes()),
            deferred_tool_results=await resolve_deferred(requests, runtime),
        )
        summary = {
            "final": result.output,
            "interrupted": isinstance(result.output, DeferredToolRequests),
        }
    await runtime.close()
    return summary


# ---------------------------------------------------------------- Google ADK


async def google_adk(phase: str, folder: Path, url: str, session: str) -> dict[str, Any]:
    from google.adk.agents import LlmAgent
    from google.adk.apps import App
    from google.adk.runners import Runner
    from google.adk.sessions.sqlite_session_service import SqliteSessionService
    from google.adk.tools import FunctionTool
    from google.genai import types

    from aegis.adapters.google_adk import (
        AegisPlugin,
        confirmation_responses,
        pending_confirmations,
    )

    runtime = _runtime(folder, url, session)
    agent = LlmAgent(
        name="support",
        model=scripted_llm([("refund", REFUND, "call_refund")]),
        tools=[FunctionTool(_refund(folder))],
    )
    app = App(name="resume", root_agent=agent, plugins=[AegisPlugin(runtime, target="crm")])
    sessions = SqliteSessionService(str(folder / "sessions.db"))
    runner = Runner(app=app, session_service=sessions)
    if phase == "start":
        created = await sessions.create_session(app_name="resume", user_id="u", session_id="s1")
        message = types.Content(role="user", parts=[types.Part(text="refund o-17")])
        events = [
            e
            async for e in runner.run_async(user_id="u", session_id=created.id, new_message=message)
        ]
        summary: dict[str, Any] = {"suspended": [c.id for c in pending_confirmations(events)]}
    else:
        saved = await sessions.get_session(app_name="resume", user_id="u", session_id="s1")
        assert saved is not None
        events = [
            e
            async for e in runner.run_async(
                user_id="u", session_id="s1", new_message=confirmation_responses(saved.events)
            )
        ]
        texts = [p.text for e in events if e.content for p in e.content.parts or [] if p.text]
        after = await sessions.get_session(app_name="resume", user_id="u", session_id="s1")
        assert after is not None
        summary = {
            "final": texts[-1] if texts else None,
            "interrupted": bool(pending_confirmations(after.events)),
        }
    await runner.close()
    await runtime.close()
    return summary


def main() -> None:
    framework, phase, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    url, session = sys.argv[4], sys.argv[5]
    run = {
        "langchain": langchain,
        "openai": openai,
        "pydantic-ai": pydantic_ai,
        "google-adk": google_adk,
    }[framework]
    print(json.dumps(asyncio.run(run(phase, folder, url, session))))


if __name__ == "__main__":
    main()
