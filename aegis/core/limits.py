"""Rules that count and remember: rate limits, budgets and flow conditions, compiled at load.

Three rule keys make a rule look beyond the one action in front of it::

    - name: email_rate
      match: {type: send_email}
      limit: {max: 20, per: 1h, key: [agent]}          # at most 20 per agent per hour
      on_exceed: {approval: block, risk_level: high}   # for the action that would pass it
      approval: auto
    - name: refund_budget
      match: {type: refund}
      budget: {sum: amount, max: 2000, per: 1d, key: [params.customer_id]}
      on_exceed: {approval: approve, risk_level: critical}
      approval: auto
    - name: exfiltration
      match: {type: "send*", target: "external*"}
      conditions:
        after: {type: "read*", target: crm, within: session}
      approval: approve

Everything here is pure: this module parses and validates those keys,
computes an action's *charges* (which counter, how much) and judges counts
that a store reports; counting itself is the runtime's step
(:mod:`aegis.runtime.metering`) against a usage store
(:mod:`aegis.stores.usage`). ``per`` is a sliding window (``30s``, ``5m``,
``1h``, ``1d``); ``key`` groups counts by ``session``, ``agent``, ``type``,
``target`` or ``params.<dotted path>``, and no key counts globally.

Budget amounts are counted exactly, in millionths (:data:`BUDGET_SCALE`):
``0.1 + 0.2`` fits a budget of ``0.3``. An amount with finer digits is
rounded up, so a budget is never exceeded by rounding.

Size: limits, budgets and flow conditions are parsed, compiled and charged by
one set of types (Meter, Charge, FlowSpec, PolicyLimits); the parsing and the
charging share the key and amount rules, which must not drift apart.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from fnmatch import fnmatchcase
from fractions import Fraction
from functools import partial
from typing import Any, Final, Protocol

from aegis.core._enums import coerce_enum
from aegis.core.action import Action, thaw
from aegis.core.conditions import (
    FLOW_CONDITIONS,
    MISSING,
    PARAM_CONDITIONS,
    ConditionSpecError,
    Unevaluable,
    compile_conditions,
    kind_of,
    lookup,
)
from aegis.core.decision import Approval
from aegis.core.risk import RiskLevel

__all__ = [
    "BUDGET_SCALE",
    "FLOW_CONDITIONS",
    "KEY_NAMES",
    "Charge",
    "FlowEvent",
    "FlowSpec",
    "History",
    "LimitSpecError",
    "Meter",
    "OnExceed",
    "PolicyLimits",
    "RecordedHistory",
    "RuleLimits",
    "Subject",
    "budget_units",
    "compile_rule_limits",
    "format_window",
    "parse_window",
]

#: the key names a limit may group by, besides ``params.<path>``
KEY_NAMES: Final = ("session", "agent", "type", "target")
#: budgets count in millionths of the summed param, as exact integers
_SCALE_DIGITS: Final = 6
BUDGET_SCALE: Final = 10**_SCALE_DIGITS
#: the largest amount or maximum a counter holds, in its units
MAX_UNITS: Final = 2**62

LIMIT_KEYS: Final = ("max", "per", "key")
BUDGET_KEYS: Final = ("sum", "max", "per", "key")
ON_EXCEED_KEYS: Final = ("approval", "risk_level")
FLOW_KEYS: Final = ("type", "target", "params", "within")

_WINDOW = re.compile(r"(\d{1,9})\s*(s|m|h|d)")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: the longest window a limit may use: a year
MAX_WINDOW: Final = 366 * 86400
#: counter names a meter keeps, keyed by their key values
_BUCKET_CACHE: Final = 4096


class LimitSpecError(ValueError):
    """A ``limit``, ``budget``, ``on_exceed`` or flow condition is invalid.

    ``key`` names the sub-key at fault (``None`` for the whole value), so that
    a loader can point at its line; the policy turns this into a
    :class:`~aegis.errors.PolicyError`.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        #: the rule key (or flow condition) the error is in, set by compile_rule_limits
        self.where: str | None = None


# -- windows and keys ----------------------------------------------------------


def parse_window(value: object, what: str = "per") -> int:
    """Seconds of a sliding window written ``30s``, ``5m``, ``1h`` or ``1d``.

    Raises:
        LimitSpecError: the value is not such a duration, is zero or longer than a year.
    """
    match = _WINDOW.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise LimitSpecError(
            f"{what} must be a window such as '30s', '5m', '1h' or '1d' (a whole number"
            f" and s, m, h or d), not {kind_of(value)}",
            key=what,
        )
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]]
    if not 0 < seconds <= MAX_WINDOW:
        raise LimitSpecError(
            f"{what} {value!r} must be longer than zero and at most 366d", key=what
        )
    return seconds


def format_window(seconds: float) -> str:
    """``3600`` as ``"1h"``: the largest unit that divides the window."""
    whole = int(seconds)
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _check_path(path: object, what: str, key: str) -> str:
    if not isinstance(path, str) or not path or "" in path.split("."):
        raise LimitSpecError(
            f"{what}: {path!r} is not a param path; use a name such as 'amount' or a"
            " dotted path such as 'customer.id'",
            key=key,
        )
    return path


#: the context of one action that keys may group by
@dataclass(frozen=True, slots=True)
class Subject:
    """Who acts, and in which session: what ``session`` and ``agent`` keys group by."""

    session_id: str
    agent: str | None = None


_KeyPart = Callable[[Action, Subject], Any]


def _key_part(name: object) -> _KeyPart:
    if name == "session":
        return lambda action, subject: subject.session_id
    if name == "agent":
        return lambda action, subject: subject.agent
    if name == "type":
        return lambda action, subject: action.type
    if name == "target":
        return lambda action, subject: action.target
    if isinstance(name, str) and name.startswith("params."):
        path = _check_path(name[len("params.") :], "key", "key")
        get = lookup(path)
        return lambda action, subject: get(action.params)
    raise LimitSpecError(
        f"key {name!r} is not a key a limit can group by; use session, agent, type,"
        " target or params.<path> (e.g. params.customer_id)",
        key="key",
    )


def _parse_key(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple):
        raise LimitSpecError(
            f"key must be a list of names such as [agent] or [params.customer_id], not"
            f" {kind_of(value)}",
            key="key",
        )
    for name in names:
        _key_part(name)
    if len(set(names)) != len(names):
        raise LimitSpecError(f"key {list(names)!r} names a key twice", key="key")
    return tuple(names)


# -- meters --------------------------------------------------------------------


def budget_units(value: object) -> int:
    """A budget amount as an exact count of millionths, rounded up.

    Raises:
        ValueError: the value is not a finite, non-negative number, or is too large.
    """
    # The usual amounts first, a plain float or int in range, without the
    # type tests below (which cost as much as the conversion); the same result.
    if type(value) is float and 0.0 <= value < math.inf:
        scaled = Decimal(repr(value)).scaleb(_SCALE_DIGITS)
        units = int(scaled.to_integral_value(rounding=ROUND_CEILING))
        if units > MAX_UNITS:
            raise ValueError(f"is {value!r}, larger than a budget can count")
        return units
    if type(value) is int and 0 <= value <= MAX_UNITS // BUDGET_SCALE:
        return value * BUDGET_SCALE
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | Fraction):
        raise ValueError(f"is {kind_of(value)}, not a number")
    if isinstance(value, float | Decimal) and not math.isfinite(value):
        raise ValueError(f"is {value!r}, not a finite number")
    if value < 0:
        raise ValueError(f"is negative ({value!r}); a budget only counts amounts of 0 or more")
    if isinstance(value, int):
        units = int(value) * BUDGET_SCALE
    elif isinstance(value, float):
        # The float as its shortest decimal text, which is what the agent
        # wrote: 0.1 counts as one tenth, not 0.1000000000000000055...
        scaled = Decimal(repr(value)).scaleb(_SCALE_DIGITS)  # exact: only the exponent moves
        units = int(scaled.to_integral_value(rounding=ROUND_CEILING))
    else:
        try:
            exact = Fraction(value)
        except (InvalidOperation, ValueError, OverflowError) as exc:
            raise ValueError(f"is {value!r}, not a finite number") from exc
        units = math.ceil(exact * BUDGET_SCALE)
    if units > MAX_UNITS:
        raise ValueError(f"is {value!r}, larger than a budget can count")
    return units


@dataclass(frozen=True, slots=True)
class Charge:
    """What one action adds to one counter, and how far the counter may go.

    ``bucket`` names the counter (rule, meter and key values); ``amount`` and
    ``maximum`` are in the counter's units (1 per action for a limit,
    millionths for a budget); ``window`` is the sliding window in seconds.
    """

    bucket: str
    amount: int
    maximum: int
    window: float


@dataclass(frozen=True, slots=True)
class Meter:
    """A rule's ``limit`` (``kind == "limit"``) or ``budget``, compiled.

    ``maximum`` is as written (a count, or an amount of the summed param);
    ``window`` in seconds; ``key`` the names counts are grouped by.
    """

    rule: str
    kind: str
    maximum: int | float | Decimal
    window: int
    key: tuple[str, ...]
    sum_path: str | None = None
    _parts: tuple[_KeyPart, ...] = field(default=(), repr=False, compare=False)
    _amount: Callable[[Mapping[str, Any]], Any] | None = field(
        default=None, repr=False, compare=False
    )
    _buckets: dict[tuple[Any, ...], Charge] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _units: int = field(default=0, init=False, repr=False, compare=False)
    # keyed by who acts only (session, agent, or no key): the last subject and its counter
    _by_subject: bool = field(default=False, init=False, repr=False, compare=False)
    _recent: tuple[Subject, Charge] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        units = int(self.maximum) if self.kind == "limit" else budget_units(self.maximum)
        object.__setattr__(self, "_units", units)
        by_subject = all(name in ("session", "agent") for name in self.key)
        object.__setattr__(self, "_by_subject", by_subject)

    @property
    def units(self) -> int:
        """The maximum in the counter's units."""
        return self._units

    @property
    def per_subject(self) -> bool:
        """Whether its charge depends only on who acts: a limit keyed by session, agent or none."""
        return self._by_subject and self._amount is None

    def key_values(self, action: Action, subject: Subject) -> tuple[Any, ...]:
        """The values of this meter's key for ``action``.

        Raises:
            Unevaluable: a ``params.`` key is missing from the action.
        """
        values = []
        for name, part in zip(self.key, self._parts, strict=True):
            value = part(action, subject)
            if value is MISSING:
                raise Unevaluable(
                    f"{self.kind} of rule {self.rule!r} is counted per {name}, which this"
                    " action does not have"
                )
            values.append(value)
        return tuple(values)

    def charge(self, action: Action, subject: Subject) -> Charge:
        """What ``action`` adds to its counter.

        Raises:
            Unevaluable: a key param is missing, or the summed param is missing,
                not a number, negative or too large; the action must not run.
        """
        recent = self._recent  # one read: another thread may replace it meanwhile
        if recent is not None and recent[0] is subject:  # the same Subject: the same counter
            if self._amount is None:
                return recent[1]
            return self._budget_charge(action, recent[1], self._amount)
        parts = self._parts
        if len(parts) == 1:  # the usual key: no list to build
            values: tuple[Any, ...] = (parts[0](action, subject),)
        else:
            values = tuple([part(action, subject) for part in parts])
        # Names of counters keyed by plain strings and ints are kept: the JSON
        # costs more than the rest of a check. (Not other types: True == 1
        # as a dict key, and a policy tells booleans from numbers.) One pass
        # over the values for both questions: a missing key is neither.
        cacheable = True
        for value in values:
            if type(value) is not str and type(value) is not int:
                if value is MISSING:
                    self.key_values(action, subject)  # raises, naming the key
                cacheable = False
        unit = self._buckets.get(values) if cacheable else None
        if unit is None:
            bucket = json.dumps(
                [self.rule, self.kind, list(self.key), _same_number(thaw(values))],
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
                default=repr,
            )
            unit = Charge(bucket, 1, self._units, self.window)
            if cacheable:
                if len(self._buckets) >= _BUCKET_CACHE:
                    self._buckets.clear()
                self._buckets[values] = unit
        if self._by_subject:  # (Subject is frozen: the same object names the same counter)
            object.__setattr__(self, "_recent", (subject, unit))
        if self._amount is None:
            return unit  # a limit: one unit per action
        return self._budget_charge(action, unit, self._amount)

    def _budget_charge(
        self, action: Action, unit: Charge, amount_of: Callable[[Mapping[str, Any]], Any]
    ) -> Charge:
        """What ``action`` adds to the budget whose counter is ``unit``'s."""
        raw = amount_of(action.params)
        if raw is MISSING:
            raise Unevaluable(
                f"budget of rule {self.rule!r} sums param {self.sum_path!r}, which this"
                " action does not have"
            )
        try:
            amount = budget_units(raw)
        except ValueError as exc:
            raise Unevaluable(
                f"budget of rule {self.rule!r} sums param {self.sum_path!r}, which {exc}"
            ) from None
        return Charge(unit.bucket, amount, self._units, self.window)

    def describe(self, used_units: int, charge: Charge) -> str:
        """The reason an action exceeds this meter, naming limit, count and window."""
        per = format_window(self.window)
        keyed = f" per {', '.join(self.key)}" if self.key else ""
        if self.kind == "limit":
            return (
                f"limit of rule {self.rule!r} exceeded: {used_units} of {self.maximum} actions"
                f" already in the last {per}{keyed}"
            )
        return (
            f"budget of rule {self.rule!r} exceeded: {_amount_text(used_units)} of"
            f" {self.maximum} {self.sum_path} already in the last {per}{keyed}, and this"
            f" action adds {_amount_text(charge.amount)}"
        )


def _same_number(value: Any) -> Any:
    """``value`` in the one form a counter's name uses, in containers too.

    A counter's name must not depend on how a value was spelled: a budget
    per customer that counted ``customer_id: 7.0`` apart from ``7`` (or
    ``-0.0`` apart from ``0``), or ``"7"`` apart from ``7`` (tools coerce
    one into the other), would let an agent spend it twice. So an integral
    float becomes its int, a string that spells a number becomes that
    number (underscores between digits too: ``"1_000"`` is 1000 to Pydantic),
    and a boolean, or a string Pydantic reads as one (``"yes"``, ``"on"``...),
    becomes ``1`` or ``0``: an integer field takes ``true`` as ``1``.
    """
    kind = type(value)
    if kind is bool:
        return int(value)
    if kind is float:
        return int(value) if value.is_integer() else value
    if kind is str:
        return _spelled(value)
    if isinstance(value, list):
        return [_same_number(v) for v in value]
    if isinstance(value, dict):
        return {k: _same_number(v) for k, v in value.items()}
    return value


_NUMBER_TEXT = re.compile(
    r"\s*[+-]?(\d+(?:_\d+)*\.?(?:\d+(?:_\d+)*)?|\.\d+(?:_\d+)*)([eE][+-]?\d(?:_?\d){0,3})?\s*"
)
#: the strings Pydantic's lax mode reads as a boolean
_TRUE_TEXT = frozenset({"true", "t", "yes", "y", "on"})
_FALSE_TEXT = frozenset({"false", "f", "no", "n", "off"})


def _spelled(text: str) -> Any:
    """The number or boolean a string spells, as tools coerce it; else the string."""
    if _NUMBER_TEXT.fullmatch(text):
        number = Decimal(text.strip())
        if number == number.to_integral_value() and abs(number.adjusted()) < 40:
            return int(number)
        as_float = float(number)
        return as_float if math.isfinite(as_float) else text
    lowered = text.strip().lower()
    if lowered in _TRUE_TEXT:
        return 1
    if lowered in _FALSE_TEXT:
        return 0
    return text


def _amount_text(units: int) -> str:
    value = Fraction(units, BUDGET_SCALE)
    if value.denominator == 1:
        return str(value.numerator)
    return str(Decimal(value.numerator) / Decimal(value.denominator)).rstrip("0")


def _positive_number(value: object, what: str, *, whole: bool) -> Any:
    ok = not isinstance(value, bool) and (
        isinstance(value, int) or (not whole and isinstance(value, float | Decimal))
    )
    if not ok or not value > 0 or (isinstance(value, float) and not math.isfinite(value)):  # type: ignore[operator]
        kind = "a whole number" if whole else "a number"
        raise LimitSpecError(
            f"{what} must be {kind} greater than 0, not {kind_of(value)}", key="max"
        )
    return value


def _known_keys(spec: object, name: str, allowed: Sequence[str], example: str) -> Mapping[Any, Any]:
    """``spec`` if it is a mapping of ``allowed`` keys only; else the error naming the misfit.

    ``name`` is what the policy calls it (``limit``, ``on_exceed``, ``after``);
    ``example`` is a valid one, shown when ``spec`` is not a mapping at all.
    """
    if not isinstance(spec, Mapping):
        raise LimitSpecError(f"{name} must be a mapping such as {example}, not {kind_of(spec)}")
    for key in spec:
        if key not in allowed:
            raise LimitSpecError(
                f"unknown key {key!r} in {name}; valid keys are: {', '.join(allowed)}",
                key=str(key),
            )
    return spec


def compile_meter(rule: str, kind: str, spec: object) -> Meter:
    """Validate and compile a rule's ``limit`` or ``budget`` mapping.

    Raises:
        LimitSpecError: a key is unknown or a value invalid.
    """
    allowed = LIMIT_KEYS if kind == "limit" else BUDGET_KEYS
    example = (
        "{max: 20, per: 1h, key: [agent]}"
        if kind == "limit"
        else "{sum: amount, max: 2000, per: 1d, key: [params.customer_id]}"
    )
    spec = _known_keys(spec, kind, allowed, example)
    for key in allowed:
        if key != "key" and key not in spec:
            raise LimitSpecError(f"{kind} needs {key!r}, e.g. {example}")
    maximum = _positive_number(spec["max"], f"{kind} max", whole=kind == "limit")
    window = parse_window(spec["per"])
    names = _parse_key(spec.get("key"))
    parts = tuple(_key_part(name) for name in names)
    if kind == "limit":
        if maximum > MAX_UNITS:
            raise LimitSpecError(f"limit max {maximum} is larger than a limit can count", "max")
        return Meter(rule, kind, maximum, window, names, _parts=parts)
    path = _check_path(spec["sum"], "budget sum", "sum")
    try:
        budget_units(maximum)
    except ValueError as exc:
        raise LimitSpecError(f"budget max {exc}", key="max") from None
    return Meter(rule, kind, maximum, window, names, path, _parts=parts, _amount=lookup(path))


@dataclass(frozen=True, slots=True)
class OnExceed:
    """What a rule says about the action that would pass one of its meters."""

    approval: Approval = Approval.BLOCK
    risk_level: RiskLevel | None = None  # None: the rule's own


def compile_on_exceed(spec: object) -> OnExceed:
    """Validate a rule's ``on_exceed`` mapping.

    Raises:
        LimitSpecError: a key is unknown or a value invalid.
    """
    spec = _known_keys(spec, "on_exceed", ON_EXCEED_KEYS, "{approval: block, risk_level: high}")
    approval = coerce_enum(
        Approval,
        spec.get("approval", Approval.BLOCK),
        "on_exceed approval",
        partial(LimitSpecError, key="approval"),
    )
    risk = spec.get("risk_level")
    if risk is None:
        return OnExceed(approval, None)
    return OnExceed(
        approval,
        coerce_enum(
            RiskLevel, risk, "on_exceed risk_level", partial(LimitSpecError, key="risk_level")
        ),
    )


# -- flow conditions -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowEvent:
    """An action that was let through to run, as a flow condition sees it.

    ``at`` is seconds since the epoch.
    """

    session_id: str
    type: str
    target: str
    params: Mapping[str, Any]
    at: float


# The slots' own setters, in field order: what flow_event sets (checked once, here)
_FLOW_FIELDS: Final = ("session_id", "type", "target", "params", "at")
if tuple(f.name for f in fields(FlowEvent)) != _FLOW_FIELDS:  # pragma: no cover  # a field moved
    raise ImportError("FlowEvent's fields changed; update flow_event")
_set_session, _set_type, _set_target, _set_params, _set_at = (
    FlowEvent.__dict__[name].__set__ for name in _FLOW_FIELDS
)
_bare = object.__new__


def flow_event(
    session_id: str, kind: str, target: str, params: Mapping[str, Any], at: float
) -> FlowEvent:
    """``FlowEvent(session_id, kind, target, params, at)`` at about half the cost.

    Every action let through builds one, and every event a flow condition
    reads back: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``; this sets them with the slots' own setters.
    """
    event: FlowEvent = _bare(FlowEvent)
    _set_session(event, session_id)
    _set_type(event, kind)
    _set_target(event, target)
    _set_params(event, params)
    _set_at(event, at)
    return event


@dataclass(frozen=True, eq=False)
class FlowSpec:
    """One ``after`` or ``not_after`` condition, compiled.

    ``within`` is ``None`` for the whole session, else a window in seconds.
    Compared by identity: each condition of each rule is its own fact.
    """

    name: str
    type: str
    target: str
    within: int | None
    params: Mapping[str, Any] | None = None
    _type_ok: Callable[[str], object] = field(default=bool, repr=False)
    _target_ok: Callable[[str], object] = field(default=bool, repr=False)
    _params_ok: Callable[..., bool] | None = field(default=None, repr=False)

    @property
    def literal_type(self) -> str | None:
        """The type when it has no glob characters (a store may filter by it)."""
        return self.type if not any(c in self.type for c in "*?[") else None

    @property
    def literal_target(self) -> str | None:
        """The target when it has no glob characters (a store may filter by it)."""
        return self.target if not any(c in self.target for c in "*?[") else None

    def since(self, now: float) -> float | None:
        """The earliest event time this condition looks at (``None``: the session's start)."""
        return None if self.within is None else now - self.within

    def matches(self, event: FlowEvent, now: float) -> bool:
        """Whether ``event`` is an earlier action this condition looks for.

        Raises:
            Unevaluable: its type and target are, but its params cannot be
                judged (``table: [customers]`` against ``param_eq: {table:
                customers}``): it may be the action looked for, as a tool
                coercing the value would have run it.
        """
        if self.within is not None and event.at <= now - self.within:
            return False
        if not (self._type_ok(event.type) and self._target_ok(event.target)):
            return False
        if self._params_ok is None:
            return True
        try:
            return bool(self._params_ok(event.params, None))
        except Unevaluable as exc:
            raise Unevaluable(
                f"{self.name}: an earlier {_shown(event.type)} on {_shown(event.target)}"
                f" of the session: {exc.reason}"
            ) from None

    def could_match(self, action: Action) -> bool:
        """Whether ``action``, once run, could satisfy this condition later."""
        return bool(self._type_ok(action.type) and self._target_ok(action.target))


def _shown(name: str) -> str:
    """An action's type or target in a reason: quoted, and cut when long."""
    return repr(name if len(name) <= 60 else name[:57] + "...")


def _glob(pattern: object, what: str) -> Callable[[str], object]:
    if not isinstance(pattern, str) or not pattern:
        raise LimitSpecError(
            f"{what} must be a glob string such as 'read*' or '*', not {kind_of(pattern)};"
            " quote it in YAML",
            key=what.rsplit(" ", 1)[-1],
        )
    if pattern == "*":
        return lambda value: True
    if not any(c in pattern for c in "*?["):
        return pattern.__eq__
    import fnmatch  # noqa: PLC0415  # only policies with globbed flow conditions need it

    return re.compile(fnmatch.translate(pattern)).match


#: digits an int in a flow condition's params may have: any process prints one this long
#: (Python's int digit limit is 640 at least), so an event keeps it as a number
_FLOW_INT_DIGITS: Final = 600
_FLOW_INT_BOUND: Final = 10**_FLOW_INT_DIGITS


def _huge_int(params: Mapping[str, Any]) -> str | None:
    """Where ``params`` holds an int too long for every process to store as a number.

    A flow event's params are JSON (:func:`~aegis.core.action.canonical_json`'s
    text): an int past the writing process's digit limit is kept as a marked
    hex text (read back as the int), one within it as digits, which a process
    whose limit is lower cannot read back, so an ``after`` could not tell
    whether the action it looks for ran. ``None`` when there is none; else
    what to name in the error.
    """
    stack: list[tuple[str, object]] = [
        (f"{kind}.{path}", value)
        for kind, conditions in params.items()
        if isinstance(conditions, Mapping)
        for path, value in conditions.items()
    ]
    while stack:
        where, value = stack.pop()
        if isinstance(value, int) and not -_FLOW_INT_BOUND < value < _FLOW_INT_BOUND:
            return f"the int of {where}"
        if isinstance(value, Mapping):
            stack.extend((f"{where}.{key}", item) for key, item in value.items())
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend((where, item) for item in value)
    return None


def compile_flow(name: str, spec: object) -> FlowSpec:
    """Validate and compile one ``after`` / ``not_after`` condition.

    Raises:
        LimitSpecError: a key is unknown or a value invalid.
    """
    example = "{type: 'read*', target: crm, within: session}"
    spec = _known_keys(spec, name, FLOW_KEYS, example)
    kind = spec.get("type", "*")
    target = spec.get("target", "*")
    type_ok = _glob(kind, f"{name} type")
    target_ok = _glob(target, f"{name} target")
    within_raw = spec.get("within", "session")
    within = None if within_raw == "session" else parse_window(within_raw, "within")
    params = spec.get("params")
    params_ok = None
    if params is not None:
        if not isinstance(params, Mapping) or not params:
            raise LimitSpecError(
                f"{name} params must be param conditions such as {{param_eq: {{table:"
                f" customers}}}}, not {kind_of(params)}",
                key="params",
            )
        for condition in params:
            if condition not in PARAM_CONDITIONS:
                raise LimitSpecError(
                    f"{name} params: {condition!r} is not a param condition; use one of"
                    f" {', '.join(PARAM_CONDITIONS)}",
                    key="params",
                )
        huge = _huge_int(params)
        if huge is not None:
            raise LimitSpecError(
                f"{name} params: {huge} has more than {_FLOW_INT_DIGITS} digits; an earlier"
                " action's params are kept as JSON, where a process may write an int that"
                " long as text (Python prints no more than its int digit limit), so the"
                " condition could not tell whether the action it looks for ran; compare a"
                " shorter number, or pass the value as text",
                key="params",
            )
        try:
            compiled = compile_conditions(params)
        except ConditionSpecError as exc:
            raise LimitSpecError(f"{name} params: {exc.message}", key="params") from exc
        params_ok = compiled.check if compiled is not None else None
    return FlowSpec(name, kind, target, within, params, type_ok, target_ok, params_ok)


class History(Protocol):
    """What a flow condition asks about the session's past: a pure answer.

    The runtime passes one to :meth:`aegis.core.policy.Policy.evaluate`,
    filled from the store before evaluating.
    """

    def seen(self, spec: FlowSpec, now: datetime) -> bool:
        """Whether an earlier action of the session satisfies ``spec``."""
        ...


class KnownFacts:
    """A :class:`History` of facts looked up beforehand: the specs that hold.

    ``unsure`` maps each spec that no earlier action satisfies for certain,
    but one may (its params could not be judged), to why: asking about it
    raises :class:`Unevaluable`, and the rule blocks, as for any condition
    that cannot be evaluated.
    """

    __slots__ = ("_true", "_unsure")

    def __init__(
        self, true: Iterable[FlowSpec], unsure: Mapping[FlowSpec, str] | None = None
    ) -> None:
        self._true = frozenset(true)
        self._unsure = unsure

    def seen(self, spec: FlowSpec, now: datetime) -> bool:
        """Whether ``spec`` was found satisfied.

        Raises:
            Unevaluable: whether it was is unsure.
        """
        if spec in self._true:
            return True
        unsure = self._unsure
        if unsure and spec in unsure:
            raise Unevaluable(unsure[spec])
        return False


class RecordedHistory:
    """A :class:`History` over a list of events, for tests and ``aegis test``.

    Example::

        history = RecordedHistory([FlowEvent("s1", "read", "crm", {}, at=0.0)])
        policy.evaluate(Action("send", "external"), now=later, history=history)
    """

    __slots__ = ("events", "session_id")

    def __init__(self, events: Iterable[FlowEvent] = (), session_id: str | None = None) -> None:
        self.events = list(events)
        self.session_id = session_id

    def seen(self, spec: FlowSpec, now: datetime) -> bool:
        """Whether one of the events (of the session, when one is set) satisfies ``spec``.

        Raises:
            Unevaluable: none does for certain, and one's params cannot be judged.
        """
        at = now.timestamp()
        problem: Unevaluable | None = None
        session_id = self.session_id
        for event in self.events:
            if event.at > at or (session_id is not None and event.session_id != session_id):
                continue
            try:
                if spec.matches(event, at):
                    return True
            except Unevaluable as exc:
                problem = problem or exc
        if problem is not None:
            raise problem
        return False


# -- a rule's and a policy's stateful parts -------------------------------------


@dataclass(frozen=True, slots=True)
class RuleLimits:
    """The meters, ``on_exceed`` and flow conditions of one rule."""

    rule: str
    meters: tuple[Meter, ...] = ()
    on_exceed: OnExceed = OnExceed()
    flows: tuple[tuple[FlowSpec, bool], ...] = ()  # (spec, negated)

    def flow_check(self) -> Callable[[History | None, datetime], bool]:
        """A check that holds when every flow condition does, given a history."""
        flows = self.flows

        def check(history: History | None, now: datetime) -> bool:
            problem: Unevaluable | None = None
            for spec, negated in flows:
                try:
                    seen = history is not None and history.seen(spec, now)
                except Unevaluable as exc:  # Kleene AND: a false condition still decides
                    problem = problem or exc
                    continue
                if seen is negated:
                    return False
            if problem is not None:
                raise problem
            return True

        return check


class PolicyLimits:
    """A policy's rules with meters or flow conditions, by rule name.

    ``None`` on a policy that has none, so that the runtime skips its step.
    """

    __slots__ = ("_flow_rules", "_fold", "_twins", "by_rule", "flow_horizon", "flow_specs", "folds")

    def __init__(
        self, rules: Sequence[tuple[Any, RuleLimits]], fold: Callable[[str], str] | None = None
    ) -> None:
        #: rule name -> its limits, for rules with meters
        self.by_rule: dict[str, RuleLimits] = {
            limits.rule: limits for _, limits in rules if limits.meters
        }
        # (rule, its flow specs) in rule order; the rule's globs decide relevance
        self._flow_rules = tuple((rule, limits) for rule, limits in rules if limits.flows)
        #: every flow condition of the policy
        self.flow_specs: tuple[FlowSpec, ...] = tuple(
            spec for _, limits in self._flow_rules for spec, _ in limits.flows
        )
        #: how far back (seconds) the policy's flow conditions look at most; ``None`` when
        #: one looks over a whole session (or there are none): no flow event is too old
        self.flow_horizon: float | None = (
            None
            if not self.flow_specs or any(spec.within is None for spec in self.flow_specs)
            else float(max(spec.within or 0 for spec in self.flow_specs))
        )
        # A policy with ``match_case: insensitive`` matches names folded; so
        # must its flow conditions and the type/target keys of its counters,
        # or "READ_customer" on "CRM" would be no read of crm for a flow rule
        # and "BOB" another counter than "bob".
        self._fold = fold
        #: whether names are compared folded (the policy's ``match_case: insensitive``)
        self.folds = fold is not None
        self._twins: dict[FlowSpec, FlowSpec] = {}
        if fold is not None:
            for spec in self.flow_specs:
                kind, target = fold(spec.type), fold(spec.target)
                self._twins[spec] = FlowSpec(
                    spec.name,
                    kind,
                    target,
                    spec.within,
                    spec.params,
                    _glob(kind, f"{spec.name} type"),
                    _glob(target, f"{spec.name} target"),
                    spec._params_ok,
                )

    def flows_of(self, rule: str) -> tuple[tuple[FlowSpec, bool], ...]:
        """The flow conditions of the rule named ``rule``, as (spec, negated)."""
        for policy_rule, limits in self._flow_rules:
            if policy_rule.name == rule:
                return limits.flows
        return ()

    def folded(self, action: Action) -> Action:
        """``action`` with its type and target as this policy compares them."""
        fold = self._fold
        if fold is None:
            return action
        return Action(fold(action.type), fold(action.target), action.params, action.description)

    def flow_specs_for(self, action: Action) -> tuple[FlowSpec, ...]:
        """The flow conditions of the rules whose globs match ``action``."""
        if not self._flow_rules:
            return ()
        fold = self._fold
        if fold is not None:
            kind, target = fold(action.type), fold(action.target)
            return tuple(
                spec
                for rule, limits in self._flow_rules
                if fnmatchcase(kind, fold(rule.match_type))
                and fnmatchcase(target, fold(rule.match_target))
                for spec, _ in limits.flows
            )
        return tuple(
            spec
            for rule, limits in self._flow_rules
            if rule.matches(action)
            for spec, _ in limits.flows
        )

    def remembers(self, action: Action) -> bool:
        """Whether a flow condition could look for ``action`` later, once it ran."""
        if self._fold is not None:
            action = self.folded(action)
            return any(twin.could_match(action) for twin in self._twins.values())
        return any(spec.could_match(action) for spec in self.flow_specs)

    def narrowing(self, spec: FlowSpec) -> tuple[str | None, str | None, bool]:
        """How a store may narrow its search for ``spec``'s events.

        The exact type and target to filter by (``None``: any), and whether
        each event so found must still be asked (:meth:`spec_matches`): no
        when those two and the window decide alone (no glob, no params, no
        case folding), so that any event the filter finds satisfies ``spec``.
        """
        if self._fold is not None:  # events keep their names as run: folded names cannot filter
            return None, None, True
        kind, target = spec.literal_type, spec.literal_target
        return kind, target, kind is None or target is None or spec.params is not None

    def spec_matches(self, spec: FlowSpec, event: FlowEvent, now: float) -> bool:
        """:meth:`FlowSpec.matches`, comparing names as this policy does."""
        fold = self._fold
        if fold is None:
            return spec.matches(event, now)
        folded = FlowEvent(
            event.session_id, fold(event.type), fold(event.target), event.params, event.at
        )
        return self._twins[spec].matches(folded, now)


def compile_rule_limits(
    rule: str,
    *,
    limit: object = None,
    budget: object = None,
    on_exceed: object = None,
    conditions: Mapping[str, Any] | None = None,
) -> RuleLimits | None:
    """Compile a rule's ``limit``, ``budget``, ``on_exceed`` and flow conditions.

    ``None`` when the rule has none of them.

    Raises:
        LimitSpecError: one is invalid; its ``where`` names the rule key
            (``"limit"``, ``"budget"``, ``"on_exceed"``, ``"after"``, ``"not_after"``).
    """
    meters: list[Meter] = []
    flows: list[tuple[FlowSpec, bool]] = []
    where = ""
    try:
        for where, spec in (("limit", limit), ("budget", budget)):
            if spec is not None:
                meters.append(compile_meter(rule, where, spec))
        where = "on_exceed"
        exceed = OnExceed()
        if on_exceed is not None:
            if not meters:
                raise LimitSpecError(
                    "on_exceed needs a limit or a budget in the same rule; add one or"
                    " remove on_exceed"
                )
            exceed = compile_on_exceed(on_exceed)
        for where in FLOW_CONDITIONS:
            if conditions is not None and where in conditions:
                flows.append((compile_flow(where, conditions[where]), where == "not_after"))
    except LimitSpecError as exc:
        exc.where = where
        raise
    if not meters and not flows:
        return None
    return RuleLimits(rule, tuple(meters), exceed, tuple(flows))
