"""What a model reads when its tool call did not run: one wording everywhere.

Every integration (LangChain, the OpenAI Agents SDK, the Anthropic SDK,
Pydantic AI, Google ADK, the Claude Agent SDK, CrewAI and the MCP proxy)
answers a refused call with :func:`refusal_text`, so that a model, and a
person reading its transcript, sees the same sentence whatever framework
runs the agent:

- a call the policy blocks: ``blocked by rule NAME: DESCRIPTION (REASON)``,
  the description being the rule's, the reason the decision's own (a limit
  that was exceeded, a condition that could not be evaluated), each left out
  when there is none;
- a call a reviewer (or a failing or silent approver) refused: the denial
  with its comment, then the rule that asked for approval, e.g.
  ``denied by alice: not this one (approval required by rule refunds:
  refunds need a reviewer)``;
- a call that ran and failed: ``tool NAME failed: ERROR``.
"""

from __future__ import annotations

from aegis.core.decision import DEFAULT_RULE, PolicyDecision
from aegis.core.result import Result, ResultStatus

__all__ = ["refusal_text"]

_BLOCKED = "blocked by policy rule "


def refusal_text(
    result: Result, *, policy: object = None, decision: PolicyDecision | None = None
) -> str:
    """The sentence the model reads for ``result``, which did not succeed.

    Args:
        result: the runtime's Result of the call.
        policy: the runtime's policy, whose rules give their descriptions.
        decision: the policy's decision for the call; for a denial it names
            the rule that asked for approval.
    """
    error = result.error or result.status.value
    if result.status is ResultStatus.FAILED:
        return f"tool {result.action.type} failed: {error}"
    if result.status is ResultStatus.BLOCKED:
        return _blocked(error, policy, decision)
    if result.status is ResultStatus.DENIED:
        if error == "denied" or error.startswith("denied: "):
            # A bare no, however it reached the runtime, reads the same.
            error = "denied by the approver" + error.removeprefix("denied")
        if decision is None or not decision.matched_rule:
            return error
        return f"{error} (approval required by {_rule(decision.matched_rule, policy)})"
    return f"not run: {error}"


def _blocked(error: str, policy: object, decision: PolicyDecision | None) -> str:
    if not error.startswith(_BLOCKED):
        return error if error.startswith("blocked") else f"blocked: {error}"
    rest = error[len(_BLOCKED) :]
    name = None
    names: list[object] = [decision.matched_rule] if decision is not None else []
    names += [getattr(rule, "name", None) for rule in _rules(policy)]
    for candidate in names:
        if isinstance(candidate, str) and rest.startswith(repr(candidate)):
            name, rest = candidate, rest[len(repr(candidate)) :]
            break
    if name is None:
        return error  # worded by someone else: passed on as it is
    reason = rest.removeprefix(":").strip().removeprefix("blocked:").strip()
    text = f"blocked by {_rule(name, policy)}"
    return f"{text} ({reason})" if reason else text


def _rule(name: str, policy: object) -> str:
    """``rule NAME: DESCRIPTION`` (or ``the policy's default``)."""
    if name == DEFAULT_RULE:
        return "the policy's default"
    for rule in _rules(policy):
        if getattr(rule, "name", None) == name:
            description = getattr(rule, "description", "")
            if isinstance(description, str) and description:
                return f"rule {name}: {description}"
    return f"rule {name}"


def _rules(policy: object) -> tuple[object, ...]:
    rules = getattr(policy, "rules", None)
    return tuple(rules) if isinstance(rules, tuple | list) else ()
