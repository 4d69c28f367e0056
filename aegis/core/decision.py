"""What the policy says about one action: approval mode, risk and why."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aegis.core.action import Action
from aegis.core.risk import RiskLevel

__all__ = ["DEFAULT_RULE", "Approval", "PolicyDecision"]

#: ``matched_rule`` of a decision that came from the policy's defaults
DEFAULT_RULE = "<default>"


class Approval(StrEnum):
    """What must happen before an action may run."""

    AUTO = "auto"  # run without asking
    APPROVE = "approve"  # ask a human first
    BLOCK = "block"  # never run


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The policy's verdict on one action.

    ``matched_rule`` names the rule that decided (``"<default>"`` when none
    matched); ``reason`` explains decisions that need it, such as a condition
    that could not be evaluated.
    """

    action: Action
    risk_level: RiskLevel
    approval: Approval
    matched_rule: str = ""
    reason: str = ""

    @property
    def is_allowed(self) -> bool:
        """Whether the policy lets the action run at all (it is not blocked)."""
        return self.approval is not Approval.BLOCK
