"""What the policy says about one action: approval mode, risk and why."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aegis.core.action import Action
from aegis.core.risk import RiskLevel

if TYPE_CHECKING:
    from aegis.core.explain import Why

__all__ = ["DEFAULT_RULE", "Approval", "PolicyDecision"]

#: ``matched_rule`` of a decision that came from the policy's defaults
DEFAULT_RULE = "<default>"


class Approval(StrEnum):
    """What must happen before an action may run."""

    AUTO = "auto"  # run without asking
    APPROVE = "approve"  # ask a human first
    BLOCK = "block"  # never run


# Not slots: a policy builds one decision per evaluation, and filling an
# instance ``__dict__`` from a per-rule template (see ``make_decision``) costs
# less than half of the generated frozen ``__init__``.
@dataclass(frozen=True)
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
    #: distinct reviewers an ``approve`` decision needs (a rule's ``approvers``)
    approvers: int = 1
    #: reviewer groups admitted to decide (a rule's ``reviewers``); empty admits all
    reviewers: tuple[str, ...] = ()
    #: seconds a remote approval request stays open (a rule's ``approval_ttl``)
    approval_ttl: float | None = None
    #: why a person is asked (see :func:`aegis.core.explain.why`); set only on the
    #: copy an approval handler receives, never on the per-action path
    why: Why | None = None

    @property
    def is_allowed(self) -> bool:
        """Whether the policy lets the action run at all (it is not blocked)."""
        return self.approval is not Approval.BLOCK


def decision_template(
    risk_level: RiskLevel,
    approval: Approval,
    matched_rule: str,
    reason: str = "",
    *,
    approvers: int = 1,
    reviewers: tuple[str, ...] = (),
    approval_ttl: float | None = None,
) -> dict[str, Any]:
    """The field values of a decision, less its action, for :func:`make_decision`."""
    return {
        "action": None,
        "risk_level": risk_level,
        "approval": approval,
        "matched_rule": matched_rule,
        "reason": reason,
        "approvers": approvers,
        "reviewers": reviewers,
        "approval_ttl": approval_ttl,
    }


_new = object.__new__


def make_decision(template: dict[str, Any], action: Action) -> PolicyDecision:
    """Build a decision from a :func:`decision_template` without the frozen ``__init__``."""
    decision: PolicyDecision = _new(PolicyDecision)
    fields = decision.__dict__
    fields.update(template)
    fields["action"] = action
    return decision
