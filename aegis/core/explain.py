"""Why a decision was made, in words a reviewer reads at a glance.

A reviewer asked to approve ``refund on billing`` needs more than the rule's
name: what the rule is for (its ``description``), which of its conditions
held and on which values (``amount 1,299 > 500``), and for a limit or a flow
rule the count, window or earlier action that triggered it (the decision's
``reason``). :func:`why` gathers the three; it is pure, and it runs only
when a person is about to be asked, never on the per-action path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aegis.core.action import Action
from aegis.core.decision import DEFAULT_RULE

if TYPE_CHECKING:
    from aegis.core.decision import PolicyDecision
    from aegis.core.policy import Policy, PolicyRule

__all__ = ["Why", "matched_conditions", "safe_why", "why"]

#: how much of one value a condition line shows
VALUE_WIDTH: Final = 60
#: the most a request's ``why`` may carry, field by field
MAX_RULE: Final = 200
MAX_WHY: Final = 10_000
MAX_CONDITIONS: Final = 100

_SYMBOLS: Final = {
    "param_eq": "==",
    "param_ne": "!=",
    "param_gt": ">",
    "param_gte": ">=",
    "param_lt": "<",
    "param_lte": "<=",
}
_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class Why:
    """Why an action needs what its decision says.

    ``rule`` names the rule (``"<default>"`` for the policy's defaults);
    ``description`` is the rule's own text; ``conditions`` lists each of its
    conditions with the value that made it hold; ``reason`` is the
    decision's reason (a limit's count and window, a flow rule's earlier
    action, a condition that could not be evaluated).
    """

    rule: str
    description: str = ""
    conditions: tuple[str, ...] = ()
    reason: str = ""

    def text(self) -> str:
        """One line: description, the conditions that held, then the reason."""
        parts = [self.description] if self.description else []
        if self.conditions:
            parts.append("; ".join(self.conditions))
        if self.reason:
            parts.append(self.reason)
        return " - ".join(parts) if parts else f"rule {self.rule!r} matched"

    def to_json(self) -> dict[str, Any]:
        """The fields as plain JSON values."""
        return {
            "rule": self.rule,
            "description": self.description,
            "conditions": list(self.conditions),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: object) -> Why:
        """A :class:`Why` from :meth:`to_json`'s object, checked field by field.

        Raises:
            ValueError: not such an object, a field of the wrong kind or too
                long; the message names the field.
        """
        if not isinstance(data, Mapping):
            raise ValueError("why must be an object with rule, description, conditions, reason")
        unknown = set(data) - {"rule", "description", "conditions", "reason"}
        if unknown:
            raise ValueError(f"why has unknown fields: {', '.join(sorted(map(str, unknown)))}")
        texts: dict[str, str] = {}
        for name, limit in (("rule", MAX_RULE), ("description", MAX_WHY), ("reason", MAX_WHY)):
            value = data.get(name, "")
            if value is None:
                value = ""
            if not isinstance(value, str) or len(value) > limit:
                raise ValueError(f"why.{name} must be text of at most {limit} characters")
            texts[name] = value
        conditions = data.get("conditions") or []
        if (
            not isinstance(conditions, list)
            or len(conditions) > MAX_CONDITIONS
            or not all(isinstance(c, str) and len(c) <= MAX_WHY for c in conditions)
        ):
            raise ValueError(
                f"why.conditions must be a list of at most {MAX_CONDITIONS} texts "
                f"of at most {MAX_WHY} characters"
            )
        return cls(
            texts["rule"],
            description=texts["description"],
            conditions=tuple(conditions),
            reason=texts["reason"],
        )


def why(policy: Policy, decision: PolicyDecision, *, now: datetime | None = None) -> Why:
    """Explain ``decision`` (made by ``policy``): its rule's description and conditions.

    A rule name the policy does not know (a decision from another policy, or
    the defaults) gives just the name and the reason.
    """
    if decision.matched_rule == DEFAULT_RULE:
        return Why(
            DEFAULT_RULE,
            description="no rule of the policy matches this action; its defaults apply",
            reason=decision.reason,
        )
    rule = _rule_named(policy, decision.matched_rule)
    if rule is None:
        return Why(decision.matched_rule, reason=decision.reason)
    return Why(
        rule.name,
        description=rule.description or "",
        conditions=matched_conditions(rule.conditions, decision.action, now=now),
        reason=decision.reason,
    )


def safe_why(policy: object, decision: PolicyDecision) -> Why:
    """:func:`why`, or just the rule and reason when ``policy`` cannot explain it.

    Explaining must never stand between a person and the question: a
    policy object of another kind, or a condition this module cannot
    render, gives the plain facts of the decision instead.
    """
    try:
        return why(policy, decision)  # type: ignore[arg-type]  # duck-typed policies welcome
    except Exception:  # the question is asked either way
        return Why(decision.matched_rule, reason=decision.reason)


def _rule_named(policy: Policy, name: str) -> PolicyRule | None:
    for rule in policy.rules:
        if rule.name == name:
            return rule
    return None


def matched_conditions(
    conditions: Mapping[str, Any], action: Action, *, now: datetime | None = None
) -> tuple[str, ...]:
    """One line per condition, naming the value it was tested on.

    ``{"param_gt": {"amount": 500}}`` on an action with ``amount: 1299``
    gives ``("amount 1,299 > 500",)``. Conditions this module does not know
    are shown as written.
    """
    lines: list[str] = []
    for name, spec in conditions.items():
        if name in _SYMBOLS or name in ("param_in", "param_contains", "param_matches"):
            lines.extend(_param_lines(name, spec, action.params))
        elif name in ("time_after", "time_before", "timezone"):
            continue  # one line for the window, below
        elif name == "weekdays":
            lines.append(f"weekday {_clock(conditions, now).isoweekday()} in {_value(spec)}")
        elif name in ("after", "not_after"):
            lines.append(f"{name.replace('_', ' ')} {_value(spec)} in this session")
        else:
            lines.append(f"{name} {_short(spec)}")
    if "time_after" in conditions or "time_before" in conditions:
        local = _clock(conditions, now)
        zone = conditions.get("timezone", "UTC")
        start = conditions.get("time_after", "00:00")
        end = conditions.get("time_before", "24:00")
        lines.append(f"time {local:%H:%M} ({zone}) within {start}-{end}")
    return tuple(lines)


def _param_lines(name: str, spec: object, params: Mapping[str, Any]) -> list[str]:
    if not isinstance(spec, Mapping):
        return [f"{name} {_short(spec)}"]
    lines = []
    for path, expected in spec.items():
        value = _lookup(params, str(path))
        shown = "(missing)" if value is _MISSING else _value(value)
        if name in _SYMBOLS:
            lines.append(f"{path} {shown} {_SYMBOLS[name]} {_value(expected)}")
        elif name == "param_in":
            lines.append(f"{path} {shown} in {_value(expected)}")
        elif name == "param_contains":
            lines.append(f"{path} {shown} contains {_value(expected)}")
        else:
            lines.append(f"{path} {shown} matches {_value(expected)}")
    return lines


def _lookup(params: Mapping[str, Any], path: str) -> object:
    value: object = params
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _clock(conditions: Mapping[str, Any], now: datetime | None) -> datetime:
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    zone = conditions.get("timezone")
    if isinstance(zone, str):
        try:
            return moment.astimezone(ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            return moment
    return moment


def _value(value: object) -> str:
    """A value as a reviewer reads it: thousands separated, strings quoted, long ones cut."""
    if isinstance(value, bool) or value is None:
        text = "true" if value is True else "false" if value is False else "null"
    elif isinstance(value, int | float):
        text = f"{value:,}"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{key}: {_value(item)}" for key, item in value.items()) + "}"
    elif isinstance(value, Sequence | set | frozenset):
        text = "[" + ", ".join(_value(v) for v in list(value)[:10]) + "]"
        if len(value) > 10:
            text = text[:-1] + f", ... {len(value) - 10} more]"
    else:
        text = _short(value)
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"


def _short(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"
