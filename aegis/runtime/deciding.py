"""The decide step: a policy's answer to an action, made well-formed, or a block.

The runtime calls a policy's ``evaluate``; an :class:`~aegis.core.policy.Policy`
answers a proper :class:`~aegis.core.decision.PolicyDecision`, which passes
as it is. Custom and duck-typed policies may answer approvals as strings,
risks as names, or a decision about another action: :func:`checked_decision`
takes only what is unambiguous and blocks the rest with a reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aegis.core.action import Action, canonical_json
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.risk import RiskLevel
from aegis.errors import ConfigurationError

__all__ = ["checked_decision", "policy_evaluate"]


def _approval_of(value: object) -> Approval | None:
    """The :class:`Approval` that ``value`` names (by value, any case), or ``None``."""
    if isinstance(value, Approval):
        return Approval(value.value)  # a member, even of a look-alike subclass
    if isinstance(value, str):
        text = str.__str__(value).strip().lower()
        for member in Approval:
            if member.value == text:
                return member
    return None


def _risk_of(value: object) -> RiskLevel | None:
    """The :class:`RiskLevel` that ``value`` names (a member, 1-4, or a name), or ``None``."""
    if isinstance(value, RiskLevel):
        return RiskLevel(int.__int__(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return RiskLevel._value2member_map_.get(int.__int__(value))  # type: ignore[return-value]
    if isinstance(value, str):
        return RiskLevel.__members__.get(str.__str__(value).strip().upper())
    return None


def checked_decision(decision: object, action: Action) -> PolicyDecision:
    """A policy's answer as a well-formed decision about ``action``; anything unclear blocks.

    Custom and duck-typed policies may return approvals as plain strings,
    risks as names, or a decision about another action; ``decide`` takes
    only what is unambiguous and blocks the rest with a reason.
    """
    approval = _approval_of(getattr(decision, "approval", None))
    risk = _risk_of(getattr(decision, "risk_level", None))
    rule = getattr(decision, "matched_rule", "")
    reason = getattr(decision, "reason", "")
    rule = rule if isinstance(rule, str) else repr(rule)
    reason = reason if isinstance(reason, str) else repr(reason)
    problems = []
    if not hasattr(decision, "approval"):
        problems.append(f"the policy returned {type(decision).__name__}, not a PolicyDecision")
    elif approval is None:
        problems.append(
            f"the policy's approval {getattr(decision, 'approval', None)!r} is none of"
            f" {', '.join(m.value for m in Approval)}"
        )
    if risk is None and hasattr(decision, "approval"):
        problems.append(
            f"the policy's risk level {getattr(decision, 'risk_level', None)!r} is not a RiskLevel"
        )
    other = getattr(decision, "action", None)
    if other is not action and (
        not isinstance(other, Action) or canonical_json(other) != canonical_json(action)
    ):
        problems.append("the policy's decision is about another action")
    if problems or approval is None or risk is None:
        approval, risk = Approval.BLOCK, max(risk or RiskLevel.CRITICAL, RiskLevel.HIGH)
        reason = "; ".join([*problems, reason] if reason else problems) + "; blocked"
    if isinstance(decision, PolicyDecision):
        return dataclasses.replace(
            decision,
            action=action,
            risk_level=risk,
            approval=approval,
            matched_rule=rule,
            reason=reason,
        )
    return PolicyDecision(action, risk, approval, rule, reason)


def policy_evaluate(policy: object) -> Callable[[Action], PolicyDecision]:
    evaluate = getattr(policy, "evaluate", None)
    if callable(evaluate) and not isinstance(policy, type):
        return evaluate  # type: ignore[no-any-return]  # duck-typed policies welcome
    hint = ""
    if isinstance(policy, str) or hasattr(policy, "__fspath__"):
        hint = f"; to load a file use policy=Policy.from_yaml({str(policy)!r})"
    raise ConfigurationError(
        f"policy must be an aegis Policy (with an evaluate() method), got "
        f"{type(policy).__name__}{hint}"
    )
