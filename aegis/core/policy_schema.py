"""The policy file format: validation with file:line messages, and its JSON Schema.

::

    version: "1"                       # optional; "1" is the only version
    match_case: insensitive            # optional; sensitive (exact) when absent
    defaults:                          # optional; medium / block when absent
      risk_level: medium
      approval: approve
    rules:                             # optional; first match wins
      - name: big_refunds              # optional, unique; else rule_<position>
        description: free text         # optional
        match: {type: refund, target: "*"}   # globs, "*" when omitted
        conditions: {param_gt: {amount: 500}}  # optional, see aegis.core.conditions
        risk_level: critical           # optional, medium when omitted
        approval: block                # optional, approve when omitted
        approvers: 2                   # optional: distinct reviewers needed (1)
        reviewers: [finance]           # optional: reviewer groups admitted (all)
        approval_ttl: 30m              # optional: how long a request stays open
        limit: {max: 20, per: 1h, key: [agent]}     # optional, see aegis.core.limits
        budget: {sum: amount, max: 2000, per: 1d}   # optional
        on_exceed: {approval: block, risk_level: high}  # optional, with limit/budget

Unknown keys are errors at every level, so that a typo cannot silently turn
a rule off.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from aegis.core._enums import coerce_enum
from aegis.core._yaml import line_of
from aegis.core.conditions import FLOW_CONDITIONS, ConditionSpecError, kind_of
from aegis.core.decision import Approval
from aegis.core.limits import LimitSpecError
from aegis.core.risk import RiskLevel
from aegis.core.rule import (
    MATCH_CASES,
    DuplicateRuleName,
    PolicyRule,
    check_approvers,
    check_reviewers,
    check_ttl,
    named_rules,
)
from aegis.errors import PolicyError

__all__ = ["PolicySpec", "json_schema", "parse_policy"]


class PolicySpec(NamedTuple):
    """What a valid policy file says: the arguments of :class:`~aegis.core.policy.Policy`."""

    rules: tuple[PolicyRule, ...]
    default_risk_level: RiskLevel
    default_approval: Approval
    match_case: str | None


TOP_KEYS: Final = ("version", "defaults", "match_case", "rules")
DEFAULTS_KEYS: Final = ("risk_level", "approval")
RULE_KEYS: Final = (
    "name",
    "description",
    "match",
    "conditions",
    "risk_level",
    "approval",
    "approvers",
    "reviewers",
    "approval_ttl",
)
#: the keys of rules that count (aegis.core.limits)
LIMIT_RULE_KEYS: Final = ("limit", "budget", "on_exceed")
MATCH_KEYS: Final = ("type", "target")


class _Place:
    """Where in the document we are, to put file, line and rule in errors."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.rule: str | None = None

    def error(self, message: str, mapping: object = None, key: object = None) -> PolicyError:
        return PolicyError(message, path=self.source, line=line_of(mapping, key), rule=self.rule)

    def rule_source(self, mapping: object) -> str | None:
        line = line_of(mapping)
        if self.source is None:
            return None
        return f"{self.source}:{line}" if line is not None else self.source


def _check_keys(
    mapping: Mapping[Any, Any], allowed: tuple[str, ...], what: str, place: _Place
) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = (
                f"did you mean {close[0]!r}?" if close else f"valid keys are: {', '.join(allowed)}"
            )
            raise place.error(f"unknown key {key!r} in {what}; {hint}", mapping, key)


def _mapping(
    value: object, what: str, place: _Place, parent: object, key: str
) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise place.error(f"{what} must be a mapping, not {kind_of(value)}", parent, key)
    return value


def parse_policy(data: object, *, source: str | None = None) -> PolicySpec:
    """Validate file-format data; what it says, for :class:`~aegis.core.policy.Policy`.

    Mappings read by the loader in :mod:`aegis.core._yaml` carry line numbers,
    which every error message then names.

    Raises:
        PolicyError: the data is not a valid policy.
    """
    place = _Place(source)
    try:
        return _parse(data, place)
    except RecursionError as exc:
        # from_dict takes any data; a list nested thousands deep must not escape as a crash
        raise PolicyError(
            "the policy is nested too deeply; a policy needs only a few levels", path=source
        ) from exc


def _parse(data: object, place: _Place) -> PolicySpec:
    if data is None:
        raise place.error("the policy is empty; it needs at least 'rules' (and usually 'defaults')")
    if not isinstance(data, Mapping):
        raise place.error(
            f"a policy must be a mapping with the keys {', '.join(TOP_KEYS)}, not {kind_of(data)}",
            data,
        )
    _check_keys(data, TOP_KEYS, "the policy", place)
    version = data.get("version", "1")
    # Compared by exact type first: Decimal("sNaN") raises on ==, True == 1.
    if not (type(version) in (str, int) and version in ("1", 1)):
        raise place.error(
            f'unsupported policy version {data["version"]!r}; this Aegis reads version "1"',
            data,
            "version",
        )
    match_case = data.get("match_case")
    if match_case not in MATCH_CASES:
        raise place.error(
            f"match_case must be sensitive (the default: 'Delete' is not 'delete') or"
            f" insensitive (names compared after Unicode NFKC and case folding), not"
            f" {kind_of(match_case)}",
            data,
            "match_case",
        )
    defaults = _mapping(data.get("defaults"), "defaults", place, data, "defaults")
    _check_keys(defaults, DEFAULTS_KEYS, "defaults", place)
    risk = _enum(
        RiskLevel, defaults.get("risk_level", RiskLevel.MEDIUM), "risk_level", place, defaults
    )
    approval = _enum(
        Approval, defaults.get("approval", Approval.BLOCK), "approval", place, defaults
    )

    raw_rules = data.get("rules")
    if raw_rules is None:
        raw_rules = []
    if not isinstance(raw_rules, list | tuple):
        raise place.error(f"rules must be a list of rules, not {kind_of(raw_rules)}", data, "rules")
    rules = [_parse_rule(raw, position, place, data) for position, raw in enumerate(raw_rules, 1)]
    place.rule = None
    try:
        named_rules(tuple(rules))
    except DuplicateRuleName as exc:
        # only the raw rules know the lines to point at
        first, second = raw_rules[exc.first], raw_rules[exc.second]
        line = line_of(first, "name")
        where = f" (first on line {line})" if line is not None else ""
        place.rule = exc.rule
        raise place.error(
            f"rule name {exc.rule!r} is used twice{where}; rule names must be unique",
            second,
            "name",
        ) from exc
    return PolicySpec(tuple(rules), risk, approval, match_case)


def _limit_place(
    raw: Mapping[Any, Any], conditions: Mapping[Any, Any], exc: LimitSpecError
) -> tuple[object, object]:
    """The mapping and key a limit error is about, for its line number."""
    where = exc.where or ""
    holder = conditions if where in FLOW_CONDITIONS else raw
    inner = holder.get(where)
    if isinstance(inner, Mapping) and exc.key is not None and exc.key in inner:
        return inner, exc.key
    return holder, where


def _enum(enum: Any, value: object, key: str, place: _Place, mapping: object) -> Any:
    try:
        return coerce_enum(enum, value, key)
    except PolicyError as exc:
        raise place.error(exc.message, mapping, key) from None


def _parse_rule(raw: object, position: int, place: _Place, parent: object) -> PolicyRule:
    place.rule = f"rule_{position}"
    if not isinstance(raw, Mapping):
        raise place.error(
            f"rule {position} must be a mapping with keys such as match, risk_level and"
            f" approval, not {kind_of(raw)}",
            parent,
            "rules",
        )
    name = raw.get("name", "")
    if name is None:
        name = ""
    if not isinstance(name, str):
        raise place.error(f"a rule name must be a string, not {kind_of(name)}", raw, "name")
    if name:
        place.rule = name
    _check_keys(raw, RULE_KEYS + LIMIT_RULE_KEYS, "a rule", place)
    match = _mapping(raw.get("match"), "match", place, raw, "match")
    _check_keys(match, MATCH_KEYS, "match", place)
    for key in MATCH_KEYS:
        value = match.get(key, "*")
        if not isinstance(value, str) or not value:
            raise place.error(
                f"match {key} must be a glob string such as 'read*' or '*', not {kind_of(value)};"
                " quote it in YAML",
                match,
                key,
            )
    conditions = _mapping(raw.get("conditions"), "conditions", place, raw, "conditions")
    description = raw.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise place.error(
            f"description must be text, not {kind_of(description)}", raw, "description"
        )
    risk = _enum(RiskLevel, raw.get("risk_level", RiskLevel.MEDIUM), "risk_level", place, raw)
    approval = _enum(Approval, raw.get("approval", Approval.APPROVE), "approval", place, raw)
    approval_keys = _approval_keys(raw, place)
    try:
        return PolicyRule(
            match.get("type", "*"),
            match.get("target", "*"),
            risk,
            approval,
            name,
            conditions,
            description=description,
            source=place.rule_source(raw),
            **approval_keys,
            **{key: raw[key] for key in LIMIT_RULE_KEYS if raw.get(key) is not None},
        )
    except PolicyError as exc:  # PolicyRule compiles the conditions
        cause = exc.__cause__
        if isinstance(cause, ConditionSpecError):
            raise place.error(exc.message, conditions, cause.key) from exc
        if isinstance(cause, LimitSpecError):
            raise place.error(exc.message, *_limit_place(raw, conditions, cause)) from exc
        raise place.error(exc.message, raw) from exc


def _approval_keys(raw: Mapping[Any, Any], place: _Place) -> dict[str, Any]:
    """The rule's approval keys, each checked here so that errors name its line."""
    checks = {
        "approvers": check_approvers,
        "reviewers": check_reviewers,
        "approval_ttl": check_ttl,
    }
    keys: dict[str, Any] = {}
    for key, check in checks.items():
        if key in raw:
            value = raw[key]
            if key == "reviewers" and (value is None or not isinstance(value, list | tuple)):
                raise place.error(
                    f"reviewers must be a list of group names like [finance], not {kind_of(value)}",
                    raw,
                    key,
                )
            try:
                keys[key] = check(value)
            except PolicyError as exc:
                raise place.error(exc.message, raw, key) from None
    return keys


# -- JSON Schema -------------------------------------------------------------------


def _enum_schema(enum: Any, description: str) -> dict[str, Any]:
    return {"type": "string", "enum": [m.name.lower() for m in enum], "description": description}


def _params_schema(value: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": value,
        "description": description,
    }


_TIME: Final = {"type": "string", "pattern": r"^([01]?[0-9]|2[0-3]):[0-5][0-9]$"}
_NUMBER: Final = {"type": "number"}
_DIRECTORY: Final = {"type": "string", "pattern": "^/"}
_DIRECTORIES: Final = {"anyOf": [_DIRECTORY, {"type": "array", "items": _DIRECTORY, "minItems": 1}]}


_WINDOW_SCHEMA: Final = {
    "type": "string",
    "pattern": r"^\s*[0-9]{1,9}\s*[smhd]\s*$",
    "description": "a sliding window: 30s, 5m, 1h, 1d",
}
_KEY_SCHEMA: Final = {
    "type": "array",
    "uniqueItems": True,
    "items": {
        "anyOf": [
            {"enum": ["session", "agent", "type", "target"]},
            {"type": "string", "pattern": r"^params\.[^.]+(\.[^.]+)*$"},
        ]
    },
    "description": "what counts are grouped by; none counts globally",
}


def _limit_schemas() -> dict[str, Any]:
    """The rule keys of aegis.core.limits: limit, budget, on_exceed."""
    return {
        "limit": {
            "type": "object",
            "additionalProperties": False,
            "required": ["max", "per"],
            "properties": {
                "max": {"type": "integer", "minimum": 1},
                "per": _WINDOW_SCHEMA,
                "key": _KEY_SCHEMA,
            },
            "description": "at most max actions matched by this rule per window",
        },
        "budget": {
            "type": "object",
            "additionalProperties": False,
            "required": ["sum", "max", "per"],
            "properties": {
                "sum": {"type": "string", "minLength": 1, "description": "param path summed"},
                "max": {"type": "number", "exclusiveMinimum": 0},
                "per": _WINDOW_SCHEMA,
                "key": _KEY_SCHEMA,
            },
            "description": "the summed param stays at most max per window",
        },
        "on_exceed": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "approval": {**_enum_schema(Approval, "for the action past the limit")},
                "risk_level": _enum_schema(RiskLevel, "risk of the action past the limit"),
            },
            "description": "what the action that would pass a limit gets; block by default",
        },
    }


def _flow_schemas(conditions: dict[str, Any]) -> dict[str, Any]:
    """The flow conditions after / not_after, whose params use the param conditions."""
    params = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {name: conditions[name] for name in conditions if name.startswith("param")},
    }
    flow = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "type": {"type": "string", "minLength": 1, "default": "*"},
            "target": {"type": "string", "minLength": 1, "default": "*"},
            "params": params,
            "within": {
                "anyOf": [{"const": "session"}, _WINDOW_SCHEMA],
                "default": "session",
            },
        },
    }
    return {
        "after": {**flow, "description": "an earlier action of this session ran"},
        "not_after": {**flow, "description": "no earlier action of this session ran"},
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the policy file format."""
    conditions = {
        "param_eq": _params_schema({}, "param path -> value it must equal"),
        "param_ne": _params_schema(
            {}, "param path -> value it must differ from (present params only)"
        ),
        "param_gt": _params_schema(_NUMBER, "param path -> number it must exceed"),
        "param_gte": _params_schema(_NUMBER, "param path -> number it must reach"),
        "param_lt": _params_schema(_NUMBER, "param path -> number it must stay below"),
        "param_lte": _params_schema(_NUMBER, "param path -> number it must not exceed"),
        "param_in": _params_schema({"type": "array"}, "param path -> list of allowed values"),
        "param_contains": _params_schema(
            {}, "param path -> value the string/list/mapping contains"
        ),
        "param_matches": _params_schema(
            {"type": "string", "format": "regex"}, "param path -> regular expression (search)"
        ),
        "path_under": _params_schema(
            _DIRECTORIES, "param path -> absolute directory (or list): the path is at or under one"
        ),
        "path_not_under": _params_schema(
            _DIRECTORIES, "param path -> absolute directory (or list): the path is under none"
        ),
        "time_after": {**_TIME, "description": 'local time "HH:MM" from which the rule applies'},
        "time_before": {**_TIME, "description": 'local time "HH:MM" until which the rule applies'},
        "weekdays": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 7},
            "minItems": 1,
            "description": "ISO weekdays, 1 = Monday ... 7 = Sunday",
        },
        "timezone": {"type": "string", "description": "IANA time zone name; UTC by default"},
    }
    conditions.update(_flow_schemas(conditions))
    rule = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "description": "unique name reported as matched_rule"},
            "description": {"type": "string"},
            "match": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "type": {"type": "string", "minLength": 1, "default": "*"},
                    "target": {"type": "string", "minLength": 1, "default": "*"},
                },
                "description": "case-sensitive fnmatch globs on the action's type and target",
            },
            "conditions": {
                "type": "object",
                "additionalProperties": False,
                "properties": conditions,
                "description": "all must hold for the rule to match",
            },
            "risk_level": {
                **_enum_schema(RiskLevel, "risk when the rule matches"),
                "default": "medium",
            },
            "approval": {**_enum_schema(Approval, "what must happen first"), "default": "approve"},
            "approvers": {
                "type": "integer",
                "minimum": 1,
                "maximum": 20,
                "default": 1,
                "description": "distinct reviewers who must approve; one deny denies",
            },
            "reviewers": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "description": "reviewer groups admitted to decide; any reviewer when omitted",
            },
            "approval_ttl": {
                "oneOf": [
                    {"type": "number", "exclusiveMinimum": 0},
                    {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*[smhd]?\s*$"},
                ],
                "description": "how long an approval request stays open: seconds, 30s, 5m, 1h, 1d",
            },
            **_limit_schemas(),
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Aegis policy",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "version": {"enum": ["1", 1], "description": "file format version"},
            "match_case": {
                "enum": ["sensitive", "insensitive"],
                "default": "sensitive",
                "description": "how globs compare names: exactly, or after NFKC and case folding",
            },
            "defaults": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "risk_level": {
                        **_enum_schema(RiskLevel, "risk when no rule matches"),
                        "default": "medium",
                    },
                    "approval": {
                        **_enum_schema(Approval, "approval when no rule matches"),
                        "default": "block",
                    },
                },
            },
            "rules": {"type": "array", "items": rule, "description": "first match wins"},
        },
    }
