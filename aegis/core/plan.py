"""An ordered list of policy decisions, made before anything runs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import overload

from aegis.core.decision import Approval, PolicyDecision

__all__ = ["ExecutionPlan"]


@dataclass(frozen=True)
class ExecutionPlan:
    """The decisions for a list of actions, in the order they will run.

    Example::

        plan = runtime.plan([Action("read", "crm"), Action("delete", "crm")])
        print(plan.summary())
        if plan.has_blocked: ...
    """

    decisions: tuple[PolicyDecision, ...]

    def __init__(self, decisions: Iterable[PolicyDecision] = ()) -> None:
        object.__setattr__(self, "decisions", tuple(decisions))

    @property
    def has_blocked(self) -> bool:
        """Whether the policy blocks at least one action."""
        return any(d.approval is Approval.BLOCK for d in self.decisions)

    @property
    def requires_approval(self) -> bool:
        """Whether at least one action needs a human's approval."""
        return any(d.approval is Approval.APPROVE for d in self.decisions)

    @property
    def auto_only(self) -> bool:
        """Whether every action runs without asking anyone."""
        return all(d.approval is Approval.AUTO for d in self.decisions)

    def summary(self) -> str:
        """One readable line per action: position, verdict, action, risk and rule."""
        width = len(str(len(self.decisions)))
        lines = []
        for i, d in enumerate(self.decisions, 1):
            verdict = d.approval.name
            line = (
                f"{i:>{width}}. [{verdict:<7}] {d.action}"
                f"  (risk={d.risk_level.name}, rule={d.matched_rule})"
            )
            if d.reason:
                line += f"  reason: {d.reason}"
            lines.append(line)
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.decisions)

    def __iter__(self) -> Iterator[PolicyDecision]:
        return iter(self.decisions)

    @overload
    def __getitem__(self, index: int) -> PolicyDecision: ...
    @overload
    def __getitem__(self, index: slice) -> ExecutionPlan: ...
    def __getitem__(self, index: int | slice) -> PolicyDecision | ExecutionPlan:
        if isinstance(index, slice):
            return ExecutionPlan(self.decisions[index])
        return self.decisions[index]
