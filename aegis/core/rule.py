"""One rule of a policy, and the checks its fields share with the policy file's parser.

:class:`PolicyRule` is what a rule says (the globs it matches, its
conditions and limits, the approval and risk it gives) and checks what it is
given; :func:`named_rules` names unnamed rules and refuses duplicates. Both
:mod:`aegis.core.policy` (which builds a :class:`~aegis.core.policy.Policy`
of rules) and :mod:`aegis.core.policy_schema` (which reads the file format
and points at lines) use them, so that neither imports the other.
"""

from __future__ import annotations

import fnmatch
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from aegis.core._enums import coerce_enum
from aegis.core.action import Action, freeze, thaw
from aegis.core.approval_request import parse_approval_ttl
from aegis.core.conditions import CompiledConditions, ConditionSpecError, compile_conditions
from aegis.core.decision import Approval
from aegis.core.limits import LimitSpecError, RuleLimits, compile_rule_limits
from aegis.core.risk import RiskLevel
from aegis.errors import ConfigurationError, PolicyError

__all__ = [
    "MATCH_CASES",
    "DuplicateRuleName",
    "PolicyRule",
    "check_approvers",
    "check_reviewers",
    "check_ttl",
    "fold_case",
    "named_rules",
]


def check_pattern(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(
            f"{what} must be a glob string such as 'read*' or '*', not {type(value).__name__}"
            f" ({value!r}); quote it in YAML"
        )
    if not value:
        raise PolicyError(f"{what} must not be empty; use '*' to match anything")
    return value


@dataclass(frozen=True, init=False)
class PolicyRule:
    """One rule: which actions it matches, and what the policy then says.

    Args:
        match_type: glob on the action's type (``"read*"``); ``"*"`` matches all.
        match_target: glob on the action's target; ``"*"`` matches all.
        risk_level: a :class:`RiskLevel` or its name (``"high"``).
        approval: an :class:`Approval` or its value (``"block"``).
        name: unique name reported as ``matched_rule``; a policy names
            unnamed rules ``rule_<position>``, counting from 1.
        conditions: extra checks on params and time, see
            :mod:`aegis.core.conditions`; all must hold.
        description: free text for people reading the policy.
        source: where the rule was read (``"policy.yaml:12"``), if from a file.
        approvers: how many distinct reviewers must approve (default 1).
        reviewers: the reviewer groups admitted to decide; empty admits any
            reviewer.
        approval_ttl: how long an approval request stays open, in seconds
            or as a duration such as ``"30m"``; the service's default when
            ``None``.

    A rule that omits them asks for approval (``approve``) at ``medium`` risk.
    Everything is validated and compiled here: a bad value raises
    :class:`~aegis.errors.PolicyError`.

    Example::

        PolicyRule("refund", "stripe", "high", "approve", name="refunds",
                   conditions={"param_gt": {"amount": 500}})
    """

    match_type: str
    match_target: str
    risk_level: RiskLevel
    approval: Approval
    name: str
    conditions: Mapping[str, Any]
    description: str = field(kw_only=True)
    source: str | None = field(kw_only=True, compare=False)
    approvers: int = field(kw_only=True, default=1)
    reviewers: tuple[str, ...] = field(kw_only=True, default=())
    approval_ttl: float | None = field(kw_only=True, default=None)
    limit: Mapping[str, Any] | None = field(kw_only=True, default=None)
    budget: Mapping[str, Any] | None = field(kw_only=True, default=None)
    on_exceed: Mapping[str, Any] | None = field(kw_only=True, default=None)

    def __init__(  # noqa: PLR0917  # positional order is the documented API
        self,
        match_type: str = "*",
        match_target: str = "*",
        risk_level: RiskLevel | str = RiskLevel.MEDIUM,
        approval: Approval | str = Approval.APPROVE,
        name: str = "",
        conditions: Mapping[str, Any] | None = None,
        *,
        description: str = "",
        source: str | None = None,
        approvers: int = 1,
        reviewers: Iterable[str] = (),
        approval_ttl: float | str | None = None,
        limit: Mapping[str, Any] | None = None,
        budget: Mapping[str, Any] | None = None,
        on_exceed: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise PolicyError(f"a rule name must be a string, not {type(name).__name__}")
        if conditions is None:
            conditions = {}
        try:
            values = {
                "match_type": check_pattern(match_type, "match type"),
                "match_target": check_pattern(match_target, "match target"),
                "risk_level": coerce_enum(RiskLevel, risk_level, "risk_level"),
                "approval": coerce_enum(Approval, approval, "approval"),
                "name": name,
                "description": str(description),
                "source": source,
                "approvers": check_approvers(approvers),
                "reviewers": check_reviewers(reviewers),
                "approval_ttl": check_ttl(approval_ttl),
            }
            # Compiled as given, so that errors name the keys as written (a
            # loader then finds their lines); the checks keep frozen copies.
            compiled = compile_conditions(conditions, blocking=values["approval"] is Approval.BLOCK)
            values["conditions"] = freeze(conditions)
            limits = compile_rule_limits(
                name, limit=limit, budget=budget, on_exceed=on_exceed, conditions=conditions
            )
            values["limit"] = freeze(limit)
            values["budget"] = freeze(budget)
            values["on_exceed"] = freeze(on_exceed)
        except LimitSpecError as exc:
            raise PolicyError(exc.message, rule=name or None) from exc
        except ConditionSpecError as exc:
            raise PolicyError(exc.message, rule=name or None) from exc
        except PolicyError as exc:
            raise PolicyError(exc.message, rule=name or None) from exc
        except TypeError as exc:  # freeze: not plain data (a YAML date, say)
            hint = " (in YAML, quote such a value)" if "not plain JSON" in str(exc) else ""
            raise PolicyError(f"conditions: {exc}{hint}", rule=name or None) from exc
        fields = self.__dict__
        fields.update(values)
        fields["_compiled"] = compiled
        fields["_limits"] = limits

    @property
    def _compiled_conditions(self) -> CompiledConditions | None:
        """The rule's conditions compiled for evaluation (``None`` without conditions)."""
        compiled: CompiledConditions | None = self.__dict__["_compiled"]
        return compiled

    @property
    def _rule_limits(self) -> RuleLimits | None:
        """The rule's meters and flow conditions compiled (``None`` without them)."""
        limits: RuleLimits | None = self.__dict__["_limits"]
        return limits

    def matches(self, action: Action) -> bool:
        """Whether the globs match ``action`` (conditions are not checked)."""
        return fnmatch.fnmatchcase(action.type, self.match_type) and fnmatch.fnmatchcase(
            action.target, self.match_target
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule in the policy file format."""
        data: dict[str, Any] = {}
        if self.name:
            data["name"] = self.name
        if self.description:
            data["description"] = self.description
        data["match"] = {"type": self.match_type, "target": self.match_target}
        if self.conditions:
            data["conditions"] = thaw(self.conditions)
        data["risk_level"] = self.risk_level.name.lower()
        data["approval"] = self.approval.value
        if self.approvers != 1:
            data["approvers"] = self.approvers
        if self.reviewers:
            data["reviewers"] = list(self.reviewers)
        if self.approval_ttl is not None:
            data["approval_ttl"] = self.approval_ttl
        for key in ("limit", "budget", "on_exceed"):
            value = getattr(self, key)
            if value is not None:
                data[key] = thaw(value)
        return data


def check_approvers(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 20:
        raise PolicyError(
            f"approvers must be a whole number of distinct reviewers from 1 to 20, got {value!r}"
        )
    return value


def check_reviewers(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise PolicyError(
            f"reviewers must be a list of reviewer group names such as [finance], got {value!r}"
        )
    groups = tuple(value)
    for group in groups:
        if not isinstance(group, str) or not group.strip():
            raise PolicyError(f"reviewers: a group name must be non-empty text, got {group!r}")
    return groups


def check_ttl(value: object) -> float | None:
    if value is None:
        return None
    try:
        return parse_approval_ttl(value)  # type: ignore[arg-type]  # checked there
    except ConfigurationError as exc:
        raise PolicyError(f"approval_ttl: {exc}") from None


class DuplicateRuleName(PolicyError):
    """Two rules of one policy have the same name; ``first`` and ``second`` are their indexes.

    Internal: a loader catches it to point at the lines of both rules.
    """

    def __init__(self, rules: tuple[PolicyRule, ...], first: int, second: int) -> None:
        self.first = first
        self.second = second
        one, two = rules[first], rules[second]
        where = ""
        if one.source or two.source:
            where = f" (at {_where(one, '?')} and {_where(two, '?')})"
        super().__init__(
            f"rule name {two.name!r} is used twice{where}; rule names must be unique",
            rule=two.name,
        )


#: the values of a policy's ``match_case`` (``None``: not stated, sensitive)
MATCH_CASES: Final = (None, "sensitive", "insensitive")


def fold_case(text: str) -> str:
    """``text`` as ``match_case: insensitive`` compares it: NFKC, then case-folded."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _where(rule: PolicyRule, fallback: str) -> str:
    return rule.source or fallback


def named_rules(rules: tuple[PolicyRule, ...]) -> tuple[PolicyRule, ...]:
    """Give unnamed rules ``rule_<position>``; refuse duplicate names."""
    taken: dict[str, int] = {}
    for pos, rule in enumerate(rules):
        if not rule.name:
            continue
        first = taken.get(rule.name)
        if first is not None:
            raise DuplicateRuleName(rules, first, pos)
        taken[rule.name] = pos
    named = []
    for pos, rule in enumerate(rules, 1):
        if not rule.name:
            name = f"rule_{pos}"
            while name in taken:
                name += "_"
            taken[name] = pos
            rule = replace(rule, name=name)  # noqa: PLW2901  # the copy replaces it
        named.append(rule)
    return tuple(named)
