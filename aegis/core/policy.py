"""Declarative policy: which actions run by themselves, which need a human, which never run.

A :class:`Policy` is an ordered list of :class:`PolicyRule`; the first rule
whose ``match_type`` and ``match_target`` globs (case-sensitive ``fnmatch``)
match an action, and whose conditions hold, decides its approval mode and
risk level. When no rule matches, the policy's defaults decide; a policy
that states no defaults blocks such actions (it fails closed).

Example::

    policy = Policy.from_yaml("policy.yaml")
    decision = policy.evaluate(Action("refund", "stripe", {"amount": 900}))
    decision.approval, decision.risk_level, decision.matched_rule

A policy is compiled when it is built: rules are indexed by their literal
type and target and by the literal prefixes of their globs, so evaluating an
action costs a few dictionary look-ups however many rules there are. Rules
keep their first-match-wins order exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aegis.core._enums import coerce_enum
from aegis.core._index import CLOCK, FLOW, RUN, Bucket, CoverIndex, Index
from aegis.core.action import MARK_TEXT, Action, _marked, canonical_default
from aegis.core.conditions import (
    Unevaluable,
)
from aegis.core.decision import (
    DEFAULT_RULE,
    Approval,
    PolicyDecision,
    decision_template,
    make_decision,
)
from aegis.core.limits import History, PolicyLimits
from aegis.core.risk import RiskLevel
from aegis.core.rule import MATCH_CASES, PolicyRule, fold_case, named_rules
from aegis.errors import PolicyError

if TYPE_CHECKING:
    from aegis.core.policy_schema import PolicySpec

__all__ = ["Approval", "Policy", "PolicyDecision", "PolicyRule", "fold_case"]

#: the risk level a rule's decision gets at least when one of its conditions
#: cannot be evaluated: the action was not what the policy's author expected,
#: so it is blocked and stands out in the audit trail
UNEVALUABLE_MIN_RISK: Final = RiskLevel.HIGH


class Policy:
    """An ordered list of rules and the defaults for actions no rule matches.

    Args:
        rules: the rules, first match wins.
        default_risk_level: risk level when no rule matches (``medium``).
        default_approval: approval when no rule matches; ``block`` unless
            stated, so that a forgotten case fails closed.

    Example::

        policy = Policy([PolicyRule("read*", risk_level="low", approval="auto")],
                        default_approval="approve")
        policy.evaluate(Action("read", "crm")).approval  # Approval.AUTO
    """

    __slots__ = (
        "_digest",
        "_fold",
        "_given",
        "_index",
        "_limits",
        "_size",
        "_template",
        "default_approval",
        "default_risk_level",
        "match_case",
        "rules",
    )

    def __init__(
        self,
        rules: Iterable[PolicyRule] = (),
        default_risk_level: RiskLevel | str = RiskLevel.MEDIUM,
        default_approval: Approval | str = Approval.BLOCK,
        *,
        match_case: str | None = None,
    ) -> None:
        given = tuple(rules)
        for rule in given:
            if not isinstance(rule, PolicyRule):
                raise PolicyError(
                    f"a policy's rules must be PolicyRule objects, not {type(rule).__name__}"
                )
        #: the rules as written, unnamed ones without their generated names
        self._given = given
        self.default_risk_level: RiskLevel = coerce_enum(
            RiskLevel, default_risk_level, "default risk_level"
        )
        self.default_approval: Approval = coerce_enum(
            Approval, default_approval, "default approval"
        )
        self.rules: tuple[PolicyRule, ...] = named_rules(given)
        self._size = len(self.rules)
        self._template = decision_template(
            self.default_risk_level, self.default_approval, DEFAULT_RULE
        )
        if match_case not in MATCH_CASES:
            raise PolicyError(f"match_case must be sensitive or insensitive, not {match_case!r}")
        #: ``"insensitive"``, ``"sensitive"``, or ``None`` (not stated: sensitive)
        self.match_case: str | None = match_case
        self._fold = fold_case if match_case == "insensitive" else None
        self._index = Index(self.rules, fold=self._fold)
        self._digest: str | None = None
        stateful = [(rule, rule._rule_limits) for rule in self.rules if rule._rule_limits]
        self._limits = PolicyLimits(stateful, self._fold) if stateful else None

    @property
    def limits(self) -> PolicyLimits | None:
        """The rules that count or remember (limits, budgets, flow conditions), compiled.

        ``None`` when the policy has none, so that the runtime skips its metering step.
        """
        return self._limits

    @property
    def digest(self) -> str:
        """A SHA-256 hex digest of the policy's content, the same in every process.

        It covers the defaults and every rule as :meth:`to_dict` writes them, so two
        policies with the same rules have the same digest whatever file they came
        from, and any change of a rule changes it. The audit trail records it with
        every decision.
        """
        if self._digest is None:
            data = self.to_dict()
            try:
                text = _digest_text(data)
            except ValueError:  # an int past Python's digit limit: as canonical_json writes it
                text = _digest_text(_marked(data))
            else:
                if MARK_TEXT in text:  # a value shaped like a mark, maybe: escaped, as there
                    text = _digest_text(_marked(data))
            self._digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return self._digest

    # -- evaluation -------------------------------------------------------------

    def evaluate(  # noqa: PLR0915  # the hot path stays in one frame for speed
        self, action: Action, *, now: datetime | None = None, history: History | None = None
    ) -> PolicyDecision:
        """Decide on ``action``: the first matching rule wins, else the defaults.

        ``now`` is the time that time conditions look at (an aware datetime;
        a naive one is taken as UTC). Without it the clock is read, and only
        when a rule with a time condition is tried.

        ``history`` answers the ``after`` / ``not_after`` conditions (see
        :mod:`aegis.core.limits`); without it the session counts as having no
        history, so ``after`` never holds and ``not_after`` always does. The
        runtime fills it from its store; limits and budgets are not looked at
        here at all, they are the runtime's step after this one.

        This never raises for a valid action: a condition that cannot be
        evaluated blocks the action (see :data:`UNEVALUABLE_MIN_RISK`).
        """
        kind = action.type
        target = action.target
        if self._fold is not None:  # match_case: insensitive
            kind = self._fold(kind)
            target = self._fold(target)
        index = self._index
        buckets: list[Bucket] = []
        if index.exact:
            bucket = index.exact.get((kind, target))
            if bucket is not None:
                buckets.append(bucket)
        if index.by_type:
            bucket = index.by_type.get(kind)
            if bucket is not None:
                buckets.append(bucket)
        if index.by_target:
            bucket = index.by_target.get(target)
            if bucket is not None:
                buckets.append(bucket)
        for length, table in index.type_prefixes:
            bucket = table.get(kind[:length])
            if bucket is not None:
                buckets.append(bucket)
        for length, table in index.target_prefixes:
            bucket = table.get(target[:length])
            if bucket is not None:
                buckets.append(bucket)
        if index.always:
            buckets.append(index.always)

        # Each bucket is in rule order, so its first match is its earliest;
        # the earliest across buckets is the policy's first match.
        stop = self._size
        found: dict[str, Any] | None = None
        reason = ""
        for bucket in buckets:
            for pos, type_ok, target_ok, check, mode, template in bucket:
                if pos >= stop:
                    break
                if type_ok is not None and not type_ok(kind):
                    continue
                if target_ok is not None and not target_ok(target):
                    continue
                problem = ""
                if check is not None:
                    if now is None:
                        if mode & CLOCK:  # CLOCK or FLOW
                            now = datetime.now(UTC)
                    elif now.tzinfo is None:
                        now = now.replace(tzinfo=UTC)
                    try:
                        if mode >= RUN:  # one comparison for plain rules, as before FLOW
                            if mode == FLOW:
                                if not check(action.params, now, history):
                                    continue
                            else:
                                hit = check(action.params)
                                if hit < 0:
                                    continue
                                pos, template = template[hit]  # noqa: PLW2901  # the run's match
                                if pos >= stop:
                                    break
                        elif not check(action.params, now):
                            continue
                    except Unevaluable as exc:
                        problem = exc.reason
                        if mode == RUN:
                            template = template[0][1]  # noqa: PLW2901  # the run's first rule
                    except Exception as exc:  # evaluate must never raise
                        problem = f"a condition failed on this action's params: {exc!r}"
                        if mode == RUN:
                            template = template[0][1]  # noqa: PLW2901
                found, stop, reason = template, pos, problem
                break
        if found is None:
            return make_decision(self._template, action)
        if reason:
            return self._unevaluable(stop, action, reason)
        return make_decision(found, action)

    def _unevaluable(self, pos: int, action: Action, reason: str) -> PolicyDecision:
        rule = self.rules[pos]
        risk = max(rule.risk_level, UNEVALUABLE_MIN_RISK)
        message = f"blocked: a condition of rule {rule.name!r} cannot be evaluated: {reason}"
        return make_decision(decision_template(risk, Approval.BLOCK, rule.name, message), action)

    # -- combining and inspecting -----------------------------------------------

    def merge(self, other: Policy) -> Policy:
        """A policy with ``other``'s rules after this one's, and this one's defaults.

        Raises:
            PolicyError: a rule name is used in both policies.
        """
        names = {rule.name: rule for rule in self._given if rule.name}
        for rule in other._given:
            first = names.get(rule.name) if rule.name else None
            if first is not None:
                raise PolicyError(
                    f"rule name {rule.name!r} is defined in {first.source or 'the first policy'}"
                    f" and again in {rule.source or 'the second policy'}; rename one of them",
                    rule=rule.name,
                )
        if (self.match_case or "sensitive") != (other.match_case or "sensitive"):
            raise PolicyError(
                f"one policy matches case {self.match_case or 'sensitive'}ly, the other"
                f" {other.match_case or 'sensitive'}ly; state the same match_case in both"
            )
        return Policy(
            self._given + other._given,
            self.default_risk_level,
            self.default_approval,
            match_case=self.match_case or other.match_case,
        )

    def shadowed_rules(self) -> list[tuple[PolicyRule, PolicyRule]]:
        """Rules that can never match, each with the earlier rule that catches all it would.

        The check is conservative: it only reports a rule when an earlier rule
        without conditions has globs that surely match everything it matches.
        """
        shadowed: list[tuple[PolicyRule, PolicyRule]] = []
        seen = CoverIndex()
        fold = self._fold or str
        for position, rule in enumerate(self.rules):
            kind, target = fold(rule.match_type), fold(rule.match_target)
            earlier = seen.first_covering(kind, target)
            if earlier is not None:
                shadowed.append((rule, self.rules[earlier]))
            if not rule.conditions:
                seen.add(position, kind, target)
        return shadowed

    def to_dict(self) -> dict[str, Any]:
        """The policy in the file format, ready for ``yaml.safe_dump``."""
        return {
            "version": "1",
            "defaults": {
                "risk_level": self.default_risk_level.name.lower(),
                "approval": self.default_approval.value,
            },
            **({"match_case": self.match_case} if self.match_case else {}),
            "rules": [rule.to_dict() for rule in self._given],
        }

    # -- loading ----------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Policy:
        """Build a policy from the file format's data (``source`` names it in errors).

        Raises:
            PolicyError: the data is not a valid policy; the message names the
                line when the data came from :func:`Policy.from_yaml`.
        """
        # Imported here: evaluating a policy needs none of the file format's checks.
        from aegis.core.policy_schema import parse_policy  # noqa: PLC0415  # see above

        return cls._of(parse_policy(data, source=source))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Policy:
        """Read a policy file.

        Raises:
            PolicyError: the file is missing, is not valid YAML or not a valid
                policy; the message names the file, the line and the rule.
        """
        # YAML is only needed to load; evaluating a policy should not import it.
        from aegis.core._yaml import load_yaml  # noqa: PLC0415
        from aegis.core.policy_schema import parse_policy  # noqa: PLC0415  # see from_dict

        return cls._of(parse_policy(load_yaml(path), source=str(path)))

    @classmethod
    def from_yaml_files(cls, *paths: str | Path) -> Policy:
        """Read several policy files and merge them in order (the first file's defaults win).

        Raises:
            PolicyError: a file is invalid, or two files use the same rule name.
        """
        if not paths:
            raise PolicyError("no policy files given; pass at least one path")
        policy = cls.from_yaml(paths[0])
        for path in paths[1:]:
            policy = policy.merge(cls.from_yaml(path))
        return policy

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of the policy file format, for editors and linters."""
        from aegis.core.policy_schema import json_schema  # noqa: PLC0415  # see from_dict

        return json_schema()

    @classmethod
    def _of(cls, spec: PolicySpec) -> Policy:
        return cls(
            spec.rules, spec.default_risk_level, spec.default_approval, match_case=spec.match_case
        )

    # -- plumbing ---------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"Policy({len(self.rules)} rules, default_risk_level={self.default_risk_level.name},"
            f" default_approval={self.default_approval.name})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return (self.rules, self.default_risk_level, self.default_approval) == (
            other.rules,
            other.default_risk_level,
            other.default_approval,
        ) and (self.match_case or "sensitive") == (other.match_case or "sensitive")

    __hash__ = None  # type: ignore[assignment]  # equal policies need not hash alike


def _digest_text(data: object) -> str:
    """The text a policy's digest hashes: sorted keys, compact, as written."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=canonical_default
    )
