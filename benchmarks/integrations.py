"""What governing a framework's tool call costs: each integration, bare vs governed.

Each row times the same tool call twice, without Aegis and through the
integration (decide, record the start, run the tool, record the outcome in
a durable, hash-chained SQLite trail), and prints the cost per call and the
added microseconds. The end-to-end rows run a whole scripted agent turn
(model call, tool call, model call) under each framework, so the added cost
is seen against what the framework itself costs.

Usage::

    python benchmarks/integrations.py            # about a minute
    python benchmarks/integrations.py --quick    # a few seconds

Needs the langchain, openai-agents and anthropic extras.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "adapters"))

# The frameworks and the tests' scripted models, once the paths above are set.
from adapters_support import (  # noqa: E402
    ScriptedModel,
    function_call,
    output_text,
    scripted_chat_model,
)
from agents import Agent, Runner, function_tool, set_tracing_disabled  # noqa: E402
from anthropic.lib.tools import beta_async_tool, beta_tool  # noqa: E402
from langchain.agents import create_agent  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402

from aegis import Policy, Runtime, ToolCallExecutor  # noqa: E402
from aegis.adapters.anthropic import governed  # noqa: E402
from aegis.adapters.langchain import AegisMiddleware, govern_tools  # noqa: E402
from aegis.adapters.openai_agents import govern  # noqa: E402
from aegis.runtime.audit import AuditLogger  # noqa: E402

POLICY = {
    "version": "1",
    "defaults": {"approval": "block", "risk_level": "high"},
    "rules": [{"name": "reads", "match": {"type": "lookup"}, "approval": "auto"}],
}


def lookup(customer_id: int) -> str:
    """Look a customer up."""
    return f"customer {customer_id}"


def _runtime(folder: Path, name: str) -> Runtime:
    return Runtime(
        executor=ToolCallExecutor(),
        policy=Policy.from_dict(POLICY),
        audit_logger=AuditLogger(str(folder / f"{name}.db")),
    )


ROUNDS = 7


def _pair_sync(bare: Callable[[], Any], governed: Callable[[], Any], n: int) -> tuple[float, float]:
    """Median µs per call of each, timed in alternating batches so drift hits both alike."""
    bare()
    governed()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(ROUNDS):
        for fn, out in ((bare, times[0]), (governed, times[1])):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            out.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times[0]), statistics.median(times[1])


async def _pair_async(
    bare: Callable[[], Awaitable[Any]], governed: Callable[[], Awaitable[Any]], n: int
) -> tuple[float, float]:
    """:func:`_pair_sync` for coroutines."""
    await bare()
    await governed()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(ROUNDS):
        for fn, out in ((bare, times[0]), (governed, times[1])):
            start = time.perf_counter()
            for _ in range(n):
                await fn()
            out.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times[0]), statistics.median(times[1])


async def measure(n: int, folder: Path) -> list[tuple[str, float, float]]:
    """(row, bare µs/call, governed µs/call) for every path."""
    set_tracing_disabled(True)
    rows: list[tuple[str, float, float]] = []
    args = {"customer_id": 7}

    # LangChain BaseTool, async and sync (the sync path crosses to the runtime's loop)
    bare = tool(lookup)
    [wrapped] = govern_tools([bare], _runtime(folder, "lc"))
    rows.append(
        (
            "langchain tool.ainvoke",
            *await _pair_async(lambda: bare.ainvoke(args), lambda: wrapped.ainvoke(args), n),
        )
    )
    rows.append(
        (
            "langchain tool.invoke (sync)",
            *_pair_sync(lambda: bare.invoke(args), lambda: wrapped.invoke(args), n),
        )
    )

    # Anthropic tool runner tools
    sync_bare = beta_tool(lookup)
    sync_governed = governed(sync_bare, _runtime(folder, "an"))
    rows.append(
        (
            "anthropic @beta_tool call (sync)",
            *_pair_sync(lambda: sync_bare.call(args), lambda: sync_governed.call(args), n),
        )
    )

    async def alookup(customer_id: int) -> str:
        """Look a customer up."""
        return f"customer {customer_id}"

    async_bare = beta_async_tool(alookup, name="lookup")
    async_governed = governed(async_bare, _runtime(folder, "an_async"))
    rows.append(
        (
            "anthropic @beta_async_tool call",
            *await _pair_async(lambda: async_bare.call(args), lambda: async_governed.call(args), n),
        )
    )

    # Whole agent turns: model, tool, model.
    turns = max(n // 20, 5)

    def lc_agent(middleware: list[Any]) -> Callable[[], Awaitable[Any]]:
        async def turn() -> Any:
            model = scripted_chat_model([("lookup", args, "c1")])
            agent = create_agent(
                model, tools=[tool(lookup)], middleware=middleware, checkpointer=InMemorySaver()
            )
            return await agent.ainvoke(
                {"messages": [("user", "go")]}, {"configurable": {"thread_id": "t"}}
            )

        return turn

    lc_runtime = _runtime(folder, "lc_agent")
    rows.append(
        (
            "langchain create_agent turn",
            *await _pair_async(lc_agent([]), lc_agent([AegisMiddleware(lc_runtime)]), turns),
        )
    )

    oa_runtime = _runtime(folder, "oa_agent")

    def oa_turn(governed_run: bool) -> Callable[[], Awaitable[Any]]:
        async def turn() -> Any:
            model = ScriptedModel([[function_call("lookup", args, "c1")], [output_text("ok")]])
            agent = Agent(name="support", model=model, tools=[function_tool(lookup)])
            if governed_run:
                agent = govern(agent, oa_runtime)
            return await Runner.run(agent, "go")

        return turn

    rows.append(
        (
            "openai-agents Runner.run turn",
            *await _pair_async(oa_turn(False), oa_turn(True), turns),
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, rougher numbers")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    options = parser.parse_args()
    n = 100 if options.quick else 1000
    with tempfile.TemporaryDirectory() as folder:
        rows = asyncio.run(measure(n, Path(folder)))
    if options.json:
        print(json.dumps([{"path": r, "bare_us": b, "governed_us": g} for r, b, g in rows]))
        return
    print(f"{'path':36} {'bare µs':>10} {'governed µs':>12} {'added µs':>10} {'ratio':>7}")
    for row, bare, governed_us in rows:
        print(
            f"{row:36} {bare:10.1f} {governed_us:12.1f} {governed_us - bare:10.1f} "
            f"{governed_us / bare:7.2f}"
        )


if __name__ == "__main__":
    main()
