"""Rule conditions: checks on an action's params and on the time of day.

A rule's ``conditions`` mapping is compiled once, when the rule is built,
into plain Python closures; evaluating it is then a few dictionary look-ups
and comparisons. All conditions of a rule must hold.

Param conditions map a param path to a value. A path is a key of the
action's params or a dotted path into nested mappings (``"customer.tier"``):

========================  ==================================================
``param_eq``              the param equals the value
``param_ne``              the param is present and differs from the value
``param_gt``/``_gte``     the param is a number greater (or equal) than it
``param_lt``/``_lte``     the param is a number less (or equal) than it
``param_in``              the param equals one of the values of a list
``param_contains``        the param (a string, list or mapping) contains it
``param_matches``         a regular expression finds a match in the param
                          (linear time: see :mod:`aegis.core._regex`)
``path_under``            the param is a path at or under one of the given
                          absolute directories, after lexical normalisation
``path_not_under``        the param is a path under none of them
========================  ==================================================

Values are compared as the same JSON type: where a param's type differs from
the type of the value a rule names (``force: "true"`` against ``param_eq:
{force: true}``, ``customer_id: "7"`` against ``param_in: {customer_id: [7]}``),
the condition cannot be evaluated and the action is blocked, never let
through as "not equal": a tool that coerces ``"true"`` to ``True`` would run
with the very value the rule names. Integrations that know a tool's input
schema coerce the arguments with it before the policy sees them.

Path conditions normalise each path lexically before comparing: ``.`` and
``..`` segments and repeated separators are resolved (``/srv/public/../secret``
is ``/srv/secret``, ``//srv`` is ``/srv``), and a directory matches itself and
what lies under it, never a sibling that shares its prefix (``/srv/secretary``
is not under ``/srv/secret``). A param that is a list of paths holds
``path_under`` when any element is under a directory, and ``path_not_under``
when any element is outside all of them: one path out of bounds is enough for
a rule that blocks. In a rule that lets actions through (auto or approve), a
list must hold for every element: one that holds for some elements and not
others cannot be evaluated (and is blocked), so that ``auto`` for paths under
``/srv/public`` never lets ``[/srv/public/a, /srv/secret/key]`` through. A
relative path, or anything but a string, cannot be evaluated (the action is
blocked). Symbolic links, case-insensitive file
systems, ``~``, URL encoding and ``file:`` URIs are not resolved: the check is
on the text as the tool will receive it. ``param_matches`` on a path does none
of this: it is a search in the raw text.

Time conditions look at the local time in ``timezone`` (an IANA name such as
``"Europe/Berlin"``; UTC when omitted): ``time_after`` and ``time_before``
(``"HH:MM"``, after inclusive, before exclusive; when after is later than
before the window crosses midnight, so ``22:00``-``06:00`` is the night) and
``weekdays`` (ISO numbers, 1 is Monday, 7 is Sunday).

Missing params never satisfy a condition, ``param_ne`` included: "the
amount is not 0" says nothing about an action without an amount, and a rule
that matched it would be a surprise. Booleans are neither numbers nor equal
to ``0`` and ``1`` here, although Python says ``True == 1``.

A condition that cannot be evaluated for an action (a string compared with a
number, a regular expression run on a list, a NaN amount) raises
:class:`Unevaluable`; the policy turns that into a blocked decision instead
of guessing. A condition that is plainly false wins over one that cannot be
evaluated, whatever their order: the rule does not match.

Size: the condition kinds are one table of small compilers, each beside its
error messages; they share the param lookup and the value checks, and the
truth-table tests read them as one list.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from aegis.core._regex import RegexError, compile_search
from aegis.core.action import FrozenDict, freeze

__all__ = [
    "CONDITION_NAMES",
    "FLOW_CONDITIONS",
    "Check",
    "CompiledConditions",
    "ConditionSpecError",
    "Unevaluable",
    "compile_conditions",
]

#: a compiled condition: ``check(params, now)`` is true when it holds
Check = Callable[[Mapping[str, Any], "datetime | None"], bool]

PARAM_CONDITIONS: Final = (
    "param_eq",
    "param_ne",
    "param_gt",
    "param_gte",
    "param_lt",
    "param_lte",
    "param_in",
    "param_contains",
    "param_matches",
    "path_under",
    "path_not_under",
)
TIME_CONDITIONS: Final = ("time_after", "time_before", "weekdays", "timezone")
#: conditions on the session's history, compiled by :mod:`aegis.core.limits`
FLOW_CONDITIONS: Final = ("after", "not_after")
#: every condition name a rule may use
CONDITION_NAMES: Final = PARAM_CONDITIONS + TIME_CONDITIONS + FLOW_CONDITIONS

MISSING: Final[Any] = object()
_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_NUMBER_TYPES = (int, float, Decimal, Fraction)


class ConditionSpecError(ValueError):
    """A rule's ``conditions`` mapping is invalid.

    ``key`` is the condition at fault (``None`` when the mapping itself is),
    so that a loader can point at its line; the policy turns this into a
    :class:`~aegis.errors.PolicyError`.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


class Unevaluable(Exception):  # a verdict, not a failure: the rule blocks
    """A condition cannot be evaluated for this action; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CompiledConditions:
    """The compiled form of a ``conditions`` mapping.

    ``check(params, now)`` is true when every condition holds and raises
    :class:`Unevaluable` when one cannot be evaluated; ``now`` must be an
    aware datetime when ``needs_clock`` is true and may be ``None`` otherwise.

    ``comparison`` is ``(name, param, number)`` when the conditions are a
    single comparison of a top-level param, such as ``param_gt: {amount:
    500}``, so that a policy can index runs of such rules.
    """

    check: Check
    needs_clock: bool
    comparison: tuple[str, str, Any] | None = None


def compile_conditions(
    spec: Mapping[str, Any], *, blocking: bool = True
) -> CompiledConditions | None:
    """Validate and compile a ``conditions`` mapping; ``None`` when it is empty.

    ``blocking`` says the rule blocks what it matches (or the conditions
    only ever make things stricter, as a flow condition's): a list of paths
    then matches a path condition when any element does. A rule that lets
    actions through (auto or approve) must not be matched by a list whose
    other elements it would not match, so there a list that is partly in
    and partly out cannot be evaluated (and blocks).

    Raises:
        ConditionSpecError: a name is unknown or a value is invalid.
    """
    if not isinstance(spec, Mapping):
        raise ConditionSpecError(
            f"conditions must be a mapping of condition name to value, not {kind_of(spec)}"
        )
    checks: list[Check] = []
    for name, value in spec.items():
        if name in PARAM_CONDITIONS:
            checks.extend(_compile_param_condition(name, value, blocking=blocking))
        elif name not in TIME_CONDITIONS and name not in FLOW_CONDITIONS:
            raise ConditionSpecError(_unknown_name(name), key=str(name))
    time_check = _compile_time_conditions(spec)
    if time_check is not None:
        checks.append(time_check)
    if not checks:
        return None
    comparison = None
    if len(spec) == 1 and len(checks) == 1:
        ((name, value),) = spec.items()
        if name in _OPERATORS and len(value) == 1:
            ((path, bound),) = value.items()
            if "." not in path:
                comparison = (name, path, bound)
    return CompiledConditions(
        _all_of(checks), needs_clock=time_check is not None, comparison=comparison
    )


def _unknown_name(name: object) -> str:
    message = f"unknown condition {name!r}"
    close = difflib.get_close_matches(str(name), CONDITION_NAMES, n=1)
    if close:
        return f"{message}; did you mean {close[0]!r}?"
    return f"{message}; valid conditions are: {', '.join(CONDITION_NAMES)}"


def kind_of(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return f"{type(value).__name__} ({value!r})"


def _all_of(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    checks_tuple = tuple(checks)

    # Kleene AND: a false condition decides even after an unevaluable one,
    # so the outcome does not depend on the order conditions were written.
    def check(params: Mapping[str, Any], now: datetime | None) -> bool:
        problem: Unevaluable | None = None
        for one in checks_tuple:
            try:
                if not one(params, now):
                    return False
            except Unevaluable as exc:
                problem = problem or exc
        if problem is not None:
            raise problem
        return True

    return check


# -- params -------------------------------------------------------------------


def _compile_param_condition(name: str, value: object, *, blocking: bool = True) -> list[Check]:
    if not isinstance(value, Mapping) or not value:
        raise ConditionSpecError(
            f"{name} must map param names to values, e.g. {{{name}: {{amount: 500}}}};"
            f" got {kind_of(value)}",
            key=name,
        )
    checks = []
    for path, expected in value.items():
        if not isinstance(path, str) or not path or "" in path.split("."):
            raise ConditionSpecError(
                f"{name}: {path!r} is not a param path; use a name such as 'amount'"
                " or a dotted path such as 'customer.tier'",
                key=name,
            )
        if name in ("path_under", "path_not_under"):
            checks.append(_compile_path(name, path, expected, blocking=blocking))
        else:
            checks.append(_PARAM_COMPILERS[name](name, path, expected))
    return checks


def lookup(path: str) -> Callable[[Mapping[str, Any]], Any]:
    keys = tuple(path.split("."))

    def get(params: Mapping[str, Any]) -> Any:
        value: Any = params
        for key in keys:
            if type(value) is FrozenDict:  # an Action's params: its dict, without two calls
                value = value._data.get(key, MISSING)
            elif isinstance(value, Mapping):
                value = value.get(key, MISSING)
            else:
                return MISSING
            if value is MISSING:
                break
        return value

    return get


def _same(a: object, b: object) -> bool:
    # True == 1 in Python; a policy that says ``approved: true`` should not
    # accept ``approved: 1``, so booleans only equal booleans.
    return (a is True or a is False) == (b is True or b is False) and a == b


def _json_type(value: object) -> str:
    """The JSON type of a param value, as a rule's type check names it."""
    if value is True or value is False:
        return "boolean"
    if isinstance(value, _NUMBER_TYPES):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, tuple | list | frozenset):
        return "array"
    return type(value).__name__


def _mismatch(name: str, path: str, value: object, expected: str) -> Unevaluable:
    return Unevaluable(
        f"param {path!r} is {kind_of(value)}, not a {expected} like the value of {name}: "
        "a tool may coerce it into the very value the rule names"
    )


def _compile_eq(name: str, path: str, expected: object) -> Check:
    expected = freeze(expected)
    expected_type = _json_type(expected)
    get = lookup(path)
    negate = name == "param_ne"

    def check(params: Mapping[str, Any], now: datetime | None) -> bool:
        value = get(params)
        if value is MISSING:
            return False
        if _same(value, expected):
            return not negate
        if type(value) is not type(expected) and _json_type(value) != expected_type:
            raise _mismatch(name, path, value, expected_type)
        return negate

    return check


def _is_number(value: object) -> bool:
    return isinstance(value, _NUMBER_TYPES) and not isinstance(value, bool)


def _compile_compare(name: str, path: str, bound: object) -> Check:
    if not _is_number(bound) or (isinstance(bound, float) and math.isnan(bound)):
        raise ConditionSpecError(
            f"{name}: the value for {path!r} must be a number, not {kind_of(bound)}", key=name
        )
    op: Callable[[Any, Any], bool] = _OPERATORS[name]
    get = lookup(path)
    key = path if "." not in path else None

    def slow(value: object) -> bool:
        if value is MISSING:
            return False
        if not _is_number(value):
            raise Unevaluable(
                f"param {path!r} is {kind_of(value)}, which cannot be compared with"
                f" the number {bound!r} ({name})"
            )
        if isinstance(value, float | Decimal) and math.isnan(value):
            # NaN compares false with everything: a block rule would let it through
            raise Unevaluable(f"param {path!r} is NaN, which cannot be compared ({name})")
        return op(value, bound)

    if key is not None:
        # The common case (a top-level int) stays on a short path.
        def check(params: Mapping[str, Any], now: datetime | None) -> bool:
            value = params.get(key, MISSING)
            if type(value) is int:
                return op(value, bound)
            return slow(value)

        return check

    def check_nested(params: Mapping[str, Any], now: datetime | None) -> bool:
        return slow(get(params))

    return check_nested


_OPERATORS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "param_gt": operator.gt,
    "param_gte": operator.ge,
    "param_lt": operator.lt,
    "param_lte": operator.le,
}


def _member_test(values: tuple[Any, ...]) -> Callable[[Any], bool]:
    """A fast ``value in values`` that keeps booleans apart from 0 and 1."""
    try:
        plain = frozenset(v for v in values if v is not True and v is not False)
    except TypeError:
        return lambda value: any(_same(value, v) for v in values)
    bools = frozenset(v for v in values if v is True or v is False)

    def contains(value: Any) -> bool:
        if value is True or value is False:
            return value in bools
        try:
            return value in plain
        except TypeError:  # an unhashable param: compare one by one
            return any(_same(value, v) for v in values)

    return contains


def _compile_in(name: str, path: str, expected: object) -> Check:
    if not isinstance(expected, list | tuple):
        raise ConditionSpecError(
            f"{name}: the value for {path!r} must be a list of values, not {kind_of(expected)}",
            key=name,
        )
    values = tuple(freeze(v) for v in expected)
    contains = _member_test(values)
    types = frozenset(_json_type(v) for v in values)
    shown = " or ".join(sorted(types)) or "value"
    get = lookup(path)

    def check(params: Mapping[str, Any], now: datetime | None) -> bool:
        value = get(params)
        if value is MISSING:
            return False
        if contains(value):
            return True
        if types and _json_type(value) not in types:
            raise _mismatch(name, path, value, shown)
        return False

    return check


def _compile_contains(name: str, path: str, expected: object) -> Check:
    expected = freeze(expected)
    get = lookup(path)

    def check(params: Mapping[str, Any], now: datetime | None) -> bool:
        value = get(params)
        if value is MISSING:
            return False
        if isinstance(value, str):
            if not isinstance(expected, str):
                raise Unevaluable(
                    f"param {path!r} is a string, which cannot contain {kind_of(expected)} ({name})"
                )
            return expected in value
        if isinstance(value, Mapping):
            return any(_same(expected, key) for key in value)
        if isinstance(value, tuple | frozenset):
            return any(_same(expected, item) for item in value)
        raise Unevaluable(
            f"param {path!r} is {kind_of(value)}, which cannot contain anything ({name})"
        )

    return check


def _shown(pattern: str, limit: int = 60) -> str:
    # an error names the pattern, but not a pasted page of it
    return repr(pattern if len(pattern) <= limit else pattern[: limit - 3] + "...")


def _compile_matches(name: str, path: str, expected: object) -> Check:
    if not isinstance(expected, str):
        raise ConditionSpecError(
            f"{name}: the value for {path!r} must be a regular expression string,"
            f" not {kind_of(expected)}",
            key=name,
        )
    try:
        search = compile_search(expected)
    except RegexError as exc:
        raise ConditionSpecError(
            f"{name}: {_shown(expected)} for {path!r} cannot be used as a regular"
            f" expression: {exc}",
            key=name,
        ) from exc
    get = lookup(path)

    def check(params: Mapping[str, Any], now: datetime | None) -> bool:
        value = get(params)
        if value is MISSING:
            return False
        if not isinstance(value, str):
            raise Unevaluable(
                f"param {path!r} is {kind_of(value)}, not a string, so {name} cannot apply"
            )
        return search(value)

    return check


def normalize_path(path: str) -> str | None:
    """``path`` resolved lexically (``.``, ``..``, repeated ``/``); ``None`` if it is relative."""
    if not path.startswith("/"):
        return None
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def _compile_path(name: str, path: str, expected: object, *, blocking: bool = True) -> Check:
    roots = expected if isinstance(expected, list | tuple) else [expected]
    normal: list[str] = []
    for root in roots:
        clean = normalize_path(root) if isinstance(root, str) else None
        if clean is None:
            raise ConditionSpecError(
                f"{name}: the value for {path!r} must be an absolute directory such as"
                f" '/srv/secret' (or a list of them), not {kind_of(root)}",
                key=name,
            )
        normal.append(clean)
    if not normal:
        raise ConditionSpecError(f"{name}: the list for {path!r} is empty", key=name)
    prefixes = tuple("/" if d == "/" else d + "/" for d in normal)
    exact = frozenset(normal)
    get = lookup(path)
    want = name == "path_under"

    def under(one: object) -> bool:
        if not isinstance(one, str):
            raise Unevaluable(f"param {path!r} holds {kind_of(one)}, not a path ({name})")
        if "\x00" in one:
            # A server in C reads the path only up to the NUL, before any ".." after it.
            raise Unevaluable(f"param {path!r} holds a NUL character, which ends a path ({name})")
        clean = normalize_path(one)
        if clean is None:
            raise Unevaluable(
                f"param {path!r} is the relative path {one!r}, which cannot be placed ({name})"
            )
        return clean in exact or clean.startswith(prefixes)

    def check(params: Mapping[str, Any], now: datetime | None) -> bool:
        value = get(params)
        if value is MISSING:
            return False
        if isinstance(value, tuple | frozenset):
            held = [under(one) is want for one in value]
            if blocking or all(held) or not any(held):
                # any element: one path out of bounds decides a block rule
                return any(held)
            # A rule that lets actions through, matched by some paths of the
            # list and not by others, would let the others through with them.
            raise Unevaluable(
                f"param {path!r} is a list of paths only some of which are "
                f"{'under' if want else 'outside'} {', '.join(normal)} ({name}); "
                "a rule that lets actions through must hold for every path"
            )
        return under(value) is want

    return check


_PARAM_COMPILERS: Final[dict[str, Callable[[str, str, Any], Check]]] = {
    "param_eq": _compile_eq,
    "param_ne": _compile_eq,
    "param_gt": _compile_compare,
    "param_gte": _compile_compare,
    "param_lt": _compile_compare,
    "param_lte": _compile_compare,
    "param_in": _compile_in,
    "param_contains": _compile_contains,
    "param_matches": _compile_matches,
    "path_under": _compile_path,
    "path_not_under": _compile_path,
}


# -- time ---------------------------------------------------------------------


def _parse_time(name: str, value: object) -> int:
    """Minutes since midnight of an ``"HH:MM"`` string."""
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 18:00 as the base-60 number 1080.
        raise ConditionSpecError(
            f'{name} must be a quoted "HH:MM" string; an unquoted time such as 18:00'
            f' is read by YAML as the number {value}: write "18:00"',
            key=name,
        )
    match = _TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        got = f"not {value!r}" if isinstance(value, str) else f"not {kind_of(value)}"
        raise ConditionSpecError(
            f'{name} must be a time "HH:MM" between "00:00" and "23:59", {got}',
            key=name,
        )
    return int(match[1]) * 60 + int(match[2])


def _parse_weekdays(value: object) -> frozenset[int]:
    days = value if isinstance(value, list | tuple) else None
    if (
        not days
        or any(isinstance(d, bool) or not isinstance(d, int) for d in days)
        or not all(1 <= d <= 7 for d in days)
    ):
        raise ConditionSpecError(
            "weekdays must be a non-empty list of ISO weekday numbers from 1 (Monday)"
            f" to 7 (Sunday), e.g. [1, 2, 3, 4, 5]; got {value!r}",
            key="weekdays",
        )
    return frozenset(days)


def _parse_timezone(value: object) -> Any:
    if not isinstance(value, str) or not value:
        raise ConditionSpecError(
            "timezone must be an IANA time zone name such as 'Europe/Berlin',"
            f" not {kind_of(value)}",
            key="timezone",
        )
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        close = difflib.get_close_matches(value, sorted(available_timezones()), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; use a name such as 'Europe/Berlin'"
        raise ConditionSpecError(f"unknown timezone {value!r}{hint}", key="timezone") from exc


def _compile_time_conditions(spec: Mapping[str, Any]) -> Check | None:
    after = _parse_time("time_after", spec["time_after"]) if "time_after" in spec else None
    before = _parse_time("time_before", spec["time_before"]) if "time_before" in spec else None
    days = _parse_weekdays(spec["weekdays"]) if "weekdays" in spec else None
    zone = _parse_timezone(spec["timezone"]) if "timezone" in spec else UTC
    if after is not None and after == before:
        raise ConditionSpecError(
            "time_after and time_before are equal, so the window is empty;"
            " drop both to match at any time",
            key="time_after",
        )
    if after is None and before is None and days is None:
        return None

    def check(params: Mapping[str, Any], now: datetime | None) -> bool:
        if now is None:
            now = datetime.now(UTC)
        local = now.astimezone(zone)
        if days is not None and local.isoweekday() not in days:
            return False
        minute = local.hour * 60 + local.minute
        if after is not None and before is not None:
            if after < before:
                return after <= minute < before
            return minute >= after or minute < before  # across midnight
        if after is not None:
            return minute >= after
        if before is not None:
            return minute < before
        return True

    return check
