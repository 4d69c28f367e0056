"""Shared pieces of the runtime tests: a table-driven stand-in for the policy."""

from __future__ import annotations

from aegis.core.action import Action
from aegis.core.decision import DEFAULT_RULE, Approval, PolicyDecision
from aegis.core.risk import RiskLevel

#: action type -> (approval, risk) used by :class:`TablePolicy` unless overridden
DEFAULT_TABLE: dict[str, tuple[Approval, RiskLevel]] = {
    "read": (Approval.AUTO, RiskLevel.LOW),
    "update": (Approval.APPROVE, RiskLevel.MEDIUM),
    "refund": (Approval.APPROVE, RiskLevel.HIGH),
    "delete": (Approval.BLOCK, RiskLevel.CRITICAL),
}


class TablePolicy:
    """Decides by action type from a table; unknown types are auto/low.

    Engine tests use it so that they check the runtime, not the policy engine.
    """

    def __init__(self, table: dict[str, tuple[Approval, RiskLevel]] | None = None) -> None:
        self.table = DEFAULT_TABLE if table is None else table
        self.evaluated: list[Action] = []

    def evaluate(self, action: Action) -> PolicyDecision:
        self.evaluated.append(action)
        approval, risk = self.table.get(action.type, (Approval.AUTO, RiskLevel.LOW))
        rule = DEFAULT_RULE if action.type not in self.table else f"{action.type}_rule"
        return PolicyDecision(action, risk, approval, matched_rule=rule)
