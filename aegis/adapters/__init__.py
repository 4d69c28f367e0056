"""How actions reach the world, and how agent frameworks reach the gate.

- :mod:`aegis.adapters.base`: :class:`~aegis.adapters.base.BaseExecutor`,
  the executor interface, and
  :class:`~aegis.adapters.base.ToolCallExecutor` for a runtime that only
  governs a framework's tool calls.
- :mod:`aegis.adapters.langchain`: LangChain v1 agents and LangGraph
  (``pip install "aegis-runtime[langchain]"``).
- :mod:`aegis.adapters.openai_agents`: the OpenAI Agents SDK
  (``[openai-agents]``).
- :mod:`aegis.adapters.anthropic`: the Anthropic SDK's tool runner and
  hand-written tool loops (``[anthropic]``).
- :mod:`aegis.adapters.pydantic_ai`: Pydantic AI agents and toolsets, with
  approvals as deferred tool calls (``[pydantic-ai]``).
- :mod:`aegis.adapters.claude_agent_sdk`: the Claude Agent SDK's
  ``PreToolUse`` hooks and ``can_use_tool`` (``[claude-agent-sdk]``).
- :mod:`aegis.adapters.google_adk`: an ADK plugin with tool confirmations
  (``[google-adk]``, in an environment of its own).
- :mod:`aegis.adapters.crewai`: CrewAI's tool-call hooks (``[crewai]``, in
  an environment of its own).

Each integration only translates a tool call into an
:class:`~aegis.core.action.Action` and a :class:`~aegis.core.result.Result`
back into the framework's reply; what auto, approve and block mean is
decided once, by :meth:`~aegis.runtime.engine.Runtime.run_one`, and what the
model reads when a call is refused is worded once, by
:mod:`aegis.runtime.refusal`.
"""
