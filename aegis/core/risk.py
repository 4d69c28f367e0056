"""How much harm an action can do, ordered so that levels compare."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["RiskLevel"]


class RiskLevel(IntEnum):
    """Risk of an action, from LOW (read-only) to CRITICAL (irreversible).

    Levels are integers so that handlers can compare them::

        decision.risk_level <= RiskLevel.MEDIUM
    """

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4
