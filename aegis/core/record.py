"""The audit record: what the trail stores about one step of one action. Pure.

Every store (memory, SQLite, PostgreSQL) keeps the same records, built here
and hashed by :mod:`aegis.core.chain`, so that verification and export are
written once. A record is an :class:`AuditRecord`, a named tuple whose
fields are the columns of :data:`RECORD_FIELDS`; the three JSON fields
(``action_params``, ``result_data``, ``context``) hold canonical JSON *text*
(sorted keys, compact, UTF-8), so a record goes from the runtime to a
database row and back without being encoded twice.

Two kinds of record make one action's history (:class:`RecordKind`):

* a ``start`` record, written and committed before the executor runs: the
  action, the decision, the human decision, no result;
* a ``final`` record with the outcome; when the action reached the executor,
  ``start_id`` names its start record. Blocked, denied and skipped actions
  have a final record only.

An action whose start has no final record was interrupted (the process was
killed mid-action) or is still running. Records of the first schema, written
before kinds existed, have ``kind`` ``None`` and count as final.

A store receives a :class:`RecordDraft` (every field but ``id``,
``prev_hash`` and ``hash``) from :func:`start_draft` or :func:`final_draft`
and seals it into the chain with :func:`aegis.core.chain.seal`.

Values that JSON cannot hold never lose a record (:func:`storable_json`):
they are stored as readable text, and what cannot even be turned into text
(an int past Python's 4,300-digit limit, an object whose ``__repr__``
raises, a lone surrogate) becomes a marker string ``"<unstorable ...>"`` /
``"<unrepresentable ...>"`` while the rest of the value is kept. Nothing
stored nests deeper than :data:`MAX_JSON_DEPTH` (deeper parts become a
marker), so a stored field that does can only be a hand edit: reading it
raises one :class:`~aegis.errors.AuditError` naming the record, never a
``RecursionError`` from deep inside a decoder.

Size: the record's fields, its canonical JSON, its drafts and the checks of
stored values are one contract with the hash chain (core/chain.py); split, a
field could change in one place and not the other.
"""

from __future__ import annotations

import json
import math
import re
import time
from asyncio import CancelledError
from collections.abc import Mapping
from datetime import UTC, date, datetime
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import aegis.core.action as _action
from aegis.core.action import FrozenDict
from aegis.core.decision import Approval
from aegis.core.result import ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AuditError, ConfigurationError

if TYPE_CHECKING:
    from aegis.core.decision import PolicyDecision
    from aegis.core.result import Result

__all__ = [
    "JSON_FIELDS",
    "RECORD_FIELDS",
    "AuditRecord",
    "ContextValue",
    "DecisionStamp",
    "RecordDraft",
    "RecordKind",
    "check_context",
    "decision_stamp",
    "export_line",
    "final_draft",
    "finish_draft",
    "from_dict",
    "isoformat",
    "load_json",
    "start_draft",
    "storable_json",
    "storable_text",
    "to_dict",
]


class RecordKind(StrEnum):
    """What a record says about its action."""

    START = "start"  # the action is about to reach the executor
    FINAL = "final"  # the action's outcome


#: the fields stored as canonical JSON text
JSON_FIELDS: Final[tuple[str, ...]] = ("action_params", "result_data", "context")


class RecordDraft(NamedTuple):
    """A record before it joins the chain: every field but id, prev_hash and hash."""

    kind: str | None
    session_id: str
    timestamp: str
    action_type: str
    action_target: str
    action_params: str  # canonical JSON text of an object
    action_desc: str
    risk_level: str
    approval: str
    matched_rule: str
    reason: str
    human_decision: str | None
    result_status: str | None
    result_data: str  # canonical JSON text ("null" when there is none)
    result_error: str | None
    started_at: str | None
    completed_at: str | None
    context: str | None  # canonical JSON text of an object, or None
    decided_at: str | None
    policy_digest: str | None
    start_id: int | None


class AuditRecord(NamedTuple):
    """One stored record, fields by name, JSON fields as canonical text.

    A record read back from a hand-edited database may hold values of other
    types in any field; :func:`aegis.core.chain.verify_chain` reports them
    rather than fail, and :func:`to_dict` shows them as they are.
    """

    id: int
    kind: str | None
    session_id: str
    timestamp: str
    action_type: str
    action_target: str
    action_params: str
    action_desc: str
    risk_level: str
    approval: str
    matched_rule: str
    reason: str
    human_decision: str | None
    result_status: str | None
    result_data: str
    result_error: str | None
    started_at: str | None
    completed_at: str | None
    context: str | None
    decided_at: str | None
    policy_digest: str | None
    start_id: int | None
    prev_hash: str
    hash: str


#: the fields of every record, in storage (and column) order
RECORD_FIELDS: Final[tuple[str, ...]] = AuditRecord._fields


# ----------------------------------------------------------------- times


def isoformat(moment: datetime) -> str:
    """Return ``moment`` as a fixed-width ISO 8601 UTC string (naive means UTC).

    The fixed width keeps string comparison in time order, which the
    ``since``/``until`` filters rely on.
    """
    global _clock  # noqa: PLW0603  # one tuple, replaced whole: thread-safe
    if moment.tzinfo is UTC:
        # Every record stamps two or three times of its second: format the
        # date and time of that second once, then only the microseconds.
        # Speed (benchmarks/calls.py --instructions, every kind): the second
        # is known by its fields, a third of the cost of moment.timestamp().
        second, minute, hour, day, month, year, prefix = _clock
        if (
            moment.second == second
            and moment.minute == minute
            and moment.hour == hour
            and moment.day == day
            and moment.month == month
            and moment.year == year
        ):
            fraction = moment.microsecond
            return f"{prefix}.{_DIGITS[fraction // 1000]}{_DIGITS[fraction % 1000]}+00:00"
        text = moment.isoformat(timespec="microseconds")
        _clock = (
            moment.second,
            moment.minute,
            moment.hour,
            moment.day,
            moment.month,
            moment.year,
            text[:19],
        )
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def _format(moment: datetime, second: int) -> str:
    global _second  # noqa: PLW0603  # one (second, text) pair, replaced whole: thread-safe
    text = moment.isoformat(timespec="microseconds")
    if 0 <= second < _EXACT:
        _second = (second, text[:19])
    return text


# _now caches the seconds from 1970 to 2106 (a clock set outside is formatted each time).
_EXACT: Final = 1 << 32
# the last second _now formatted, and its "YYYY-MM-DDTHH:MM:SS"
_second: tuple[int, str] = (-1, "")
# the second, minute, hour, day, month and year isoformat formatted last, and their text
_clock: tuple[int, int, int, int, int, int, str] = (-1, -1, -1, -1, -1, -1, "")
# Speed (benchmarks/calls.py --instructions, every kind: five times per
# action): microseconds as two three-digit texts, a third of a :06d format.
_DIGITS: Final = tuple(f"{n:03d}" for n in range(1000))


def _now() -> str:
    micros = time.time_ns() // 1000
    second, fraction = divmod(micros, 1_000_000)
    cached, prefix = _second
    if second == cached:
        return f"{prefix}.{_DIGITS[fraction // 1000]}{_DIGITS[fraction % 1000]}+00:00"
    return _format(datetime.fromtimestamp(second, UTC).replace(microsecond=fraction), second)


# ----------------------------------------------------------------- JSON


#: what a value's own code (a ``__repr__``, a mapping's ``items``) may raise that is its
#: failure: an exception, and a CancelledError or GeneratorExit it raised itself (a plain
#: call is never cancelled or closed from outside). Anything else (Ctrl-C, sys.exit())
#: means "stop" and goes on; the audit backends record it first (see AuditLogger.record).
OWN_FAILURES: Final = (Exception, CancelledError, GeneratorExit)


def safe_repr(value: object) -> str:
    """``repr(value)``, or a marker naming its type when that raises (see :data:`OWN_FAILURES`)."""
    try:
        text = repr(value)
    except OWN_FAILURES:  # a broken __repr__ must not lose the audit record
        return f"<unrepresentable {type(value).__name__}>"
    return text if isinstance(text, str) else f"<unrepresentable {type(value).__name__}>"


def _json_default(value: object) -> object:
    # Called by json for anything it cannot encode: keep what we can, never fail.
    if isinstance(value, Mapping):  # an Action's FrozenDict params, which are no dict
        return dict(value.items())
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=storable_json)
    return safe_repr(value)


# Built once: json.dumps with options builds a new encoder on every call.
_encode: Final = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,  # NaN is not JSON: storable_json writes such floats as strings
    default=_json_default,
).encode


_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
# _encode's options, for values without containers (see storable_json)
_flat_encoder: Any = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None, _json_default, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )
)
# float too: the flat encoder refuses NaN and the infinities (allow_nan off),
# which then take the general path, as with _encode
_FLAT_TYPES: Final = frozenset({str, int, float, bool, type(None)})


def storable_text(text: str) -> str:
    """``text``, or a marker when it cannot be stored as UTF-8 (a lone surrogate).

    The marker keeps the text readable with the surrogates escaped:
    ``"<unstorable str: 'ab\\udc80'>"``.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"<unstorable str: {text!a}>"
    return text


def _unstorable_int(value: int) -> str:
    # Hex has no digit limit (the limit is on decimal conversions).
    return f"<unstorable int: {hex(value)}>"


#: no stored JSON field nests deeper than this (arrays and objects), far beyond
#: any tool call (an action's params stop at 100); deeper parts become a marker
MAX_JSON_DEPTH: Final = 200

# the tokens that decide nesting: a whole string (brackets inside do not count), or a bracket
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _scan_depth(text: str, limit: int) -> int:
    depth = deepest = 0
    for match in _STRUCTURE.finditer(text):
        first = match.group()[0]
        if first in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif first in "]}":
            depth -= 1
    return deepest


def too_deep(text: str) -> bool:
    """Whether JSON ``text`` nests deeper than :data:`MAX_JSON_DEPTH` (only a hand edit does)."""
    return text.count("[") + text.count("{") > MAX_JSON_DEPTH and (
        _scan_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH
    )


def _sanitize(value: Any, depth: int, seen: set[int]) -> Any:
    """``value`` with every part JSON or storage cannot hold replaced by text."""
    kind = type(value)
    if kind is str:
        return storable_text(value)
    if value is None or kind is bool:
        return value
    if kind is int:
        try:
            json.dumps(value)
        except ValueError:
            return _unstorable_int(value)
        return value
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if depth >= MAX_JSON_DEPTH:
        return "<unstorable: nested too deeply>"
    if isinstance(value, Mapping | list | tuple):
        if id(value) in seen:
            return "<unstorable: refers to itself>"
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {
                    (storable_text(k) if type(k) is str else _key_text(k)): _sanitize(
                        v, depth + 1, seen
                    )
                    for k, v in value.items()
                }
            return [_sanitize(v, depth + 1, seen) for v in value]
        finally:
            seen.discard(id(value))
    try:
        converted = _json_default(value)
    except OWN_FAILURES:
        return f"<unrepresentable {type(value).__name__}>"
    if isinstance(converted, str):
        return storable_text(converted)
    return _sanitize(converted, depth + 1, seen)


def _key_text(key: object) -> str:
    if isinstance(key, str):
        return storable_text(str.__str__(key))
    if type(key) in (int, float, bool) or key is None:
        return storable_text(str(_sanitize(key, 0, set())))
    return storable_text(safe_repr(key))


def storable_json(value: Any) -> str:
    """Serialise ``value`` canonically (sorted keys, compact, UTF-8); never raises.

    Values JSON cannot hold become readable text (a datetime its ISO form, a
    set a sorted list, other objects their ``repr``; NaN and infinities
    ``"nan"``, ``"inf"``). A value that cannot be encoded as a whole (a
    cycle, a key that is not a string) is stored whole as its ``repr``, and
    when even that fails every part that cannot be stored becomes a marker
    string while the rest is kept (see the module docstring). The text never
    holds a lone surrogate, so every database can store it.
    """
    cached = _action.PARAMS_TEXT
    if cached[0] is value:  # an action's params just encoded: the same text (see PARAMS_TEXT)
        return cached[1]
    data = value._data if type(value) is FrozenDict else value if type(value) is dict else None
    if data is not None and _flat_encoder is not None:
        # An action's params are mostly a flat object of text and numbers:
        # no container inside, hence no cycle to watch for, so the C encoder
        # built once gives the text _encode would, without its per-call setup.
        for key, item in data.items():
            if type(key) is not str or type(item) not in _FLAT_TYPES:
                break
        else:
            try:
                text = "".join(_flat_encoder(data, 0))
            except ValueError:
                pass  # NaN, or an int past the digit limit: the general path below fixes it
            else:
                return text if text.isascii() else _utf8_safe(text, value)
    try:
        text = _encode(value)
        if too_deep(text):  # stored as written, it could not be read back
            return _encode(_sanitize(value, 0, set()))
    except ValueError:
        pass  # NaN, an infinity, or an int past the digit limit: fix the parts
    except (TypeError, RecursionError):
        whole = safe_repr(value)
        if not whole.startswith("<unrepresentable "):
            return _encode(storable_text(whole))
    except OWN_FAILURES:  # a hostile object's hook: fix the parts below
        pass
    else:
        return text if text.isascii() else _utf8_safe(text, value)
    try:
        return _encode(_sanitize(value, 0, set()))
    except OWN_FAILURES:  # pragma: no cover  # _sanitize yields plain JSON only
        return _encode(f"<unrepresentable {type(value).__name__}>")


def _utf8_safe(text: str, value: Any) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _encode(_sanitize(value, 0, set()))
    return text


def load_json(stored: object) -> Any:
    """The value of a stored JSON field; what is not JSON comes back as it is.

    A hand-edited column may hold anything: :func:`aegis.core.chain.verify_chain`
    reports the edit, and reading the trail must not fail on it, with one
    exception: JSON nested deeper than :data:`MAX_JSON_DEPTH` raises
    :class:`~aegis.errors.AuditError` (decoding it would exhaust the stack;
    :func:`to_dict` names the record).
    """
    if isinstance(stored, str):
        if too_deep(stored):
            raise AuditError(_too_deep_text())
        try:
            return json.loads(stored)
        except ValueError:
            return stored
    return stored if stored is None or isinstance(stored, int | float) else safe_repr(stored)


# ----------------------------------------------------------------- context and stamps

#: a value of an audit ``context``: a JSON scalar
ContextValue = str | int | float | bool | None

#: ints wider than this lose precision in most JSON readers: pass them as text
_MAX_INT_BITS = 64


def check_context(context: Mapping[str, ContextValue] | None) -> dict[str, ContextValue] | None:
    """Return ``context`` as a plain dict of JSON scalars, or ``None`` for no context.

    Keys must be ``str`` and values exactly ``str``, ``int``, ``float``
    (finite), ``bool`` or ``None``: the context is stored and hashed as
    given, so a value that could print differently later is refused.

    Raises:
        ConfigurationError: ``context`` is not such a mapping; the message
            names the offending key.
    """
    if context is None:
        return None
    if not isinstance(context, Mapping):
        raise ConfigurationError(
            f"context must be a mapping of str to JSON scalars, got {type(context).__name__}; "
            'e.g. context={"tool_call_id": "call_1"}'
        )
    out: dict[str, ContextValue] = {}
    for key, value in context.items():
        if type(key) is not str:
            raise ConfigurationError(f"context keys must be str, got {type(key).__name__} {key!r}")
        kind = type(value)
        if kind is float and not math.isfinite(value):  # type: ignore[arg-type]  # float checked
            raise ConfigurationError(
                f"context[{key!r}] is {value!r}, which is not JSON; use a finite number or a string"
            )
        if kind is int and value.bit_length() > _MAX_INT_BITS:  # type: ignore[union-attr]  # int checked
            raise ConfigurationError(
                f"context[{key!r}] is an int wider than {_MAX_INT_BITS} bits; pass it as text"
            )
        if kind not in (str, int, float, bool, type(None)):
            raise ConfigurationError(
                f"context[{key!r}] is a {kind.__name__}; context values must be exactly "
                "str, int, float, bool or None (convert it first)"
            )
        out[key] = value
    return out or None


class DecisionStamp(NamedTuple):
    """When and under which policy an action was decided, and the caller's context.

    ``decided_at`` is an ISO 8601 UTC time (see :func:`isoformat`);
    ``policy_digest`` is the deciding policy's ``digest`` when it has one;
    ``context`` is a checked context (see :func:`check_context`). A named
    tuple, immutable and cheap: the runtime makes one per action.
    """

    decided_at: str
    policy_digest: str | None = None
    context: Mapping[str, ContextValue] | None = None

    @classmethod
    def now(
        cls, policy: object = None, context: Mapping[str, ContextValue] | None = None
    ) -> DecisionStamp:
        """A stamp for a decision taken now by ``policy`` with a checked ``context``."""
        digest = getattr(policy, "digest", None)
        # tuple.__new__ (benchmarks/calls.py: one stamp per action): the named
        # tuple's own __new__ is a Python call
        return _new_tuple(cls, (_now(), digest if isinstance(digest, str) else None, context))


def decision_stamp(
    context: Mapping[str, ContextValue] | None, decided_at: str | None, policy_digest: str | None
) -> DecisionStamp | None:
    """The stamp of an audit backend's ``context``, ``decided_at`` and ``policy_digest``.

    ``None`` when none of them is given (a record of a caller that keeps no
    stamp).
    """
    if context is None and decided_at is None and policy_digest is None:
        return None
    # tuple.__new__ (benchmarks/calls.py: once or twice per action): the named
    # tuple's own __new__ is a Python call
    return _new_tuple(DecisionStamp, (decided_at or "", policy_digest, context))


# ----------------------------------------------------------------- drafts


def _text(value: object) -> str:
    # Fields an Action or a decision guarantees to be str, made safe to store.
    if type(value) is str:
        return value if value.isascii() else storable_text(value)
    return storable_text(safe_repr(value) if not isinstance(value, str) else str.__str__(value))


def _error_text(error: object) -> str:
    # A Result's error is text, unless changed after it was built: then its str(),
    # or a marker when that raises, never a lost record.
    if type(error) is str:
        return error if error.isascii() else storable_text(error)
    try:
        text = str(error)
    except OWN_FAILURES:
        return f"<unrepresentable {type(error).__name__}>"
    return _text(text)


def _decision_fields(
    decision: PolicyDecision, params_json: str | None
) -> tuple[str, str, str, str, str, str, str, str]:
    action = decision.action
    params = action.params
    if params_json is None:
        params_json = storable_json(params) if params else "{}"
    risk = decision.risk_level
    approval = decision.approval
    kind, target, desc = action.type, action.target, action.description
    rule, reason = decision.matched_rule, decision.reason
    # Speed (benchmarks/calls.py, every kind): a member's name and value are
    # plain attributes (the enum properties are Python calls), and five
    # fields of plain ASCII text, what a policy's decision nearly always
    # holds, are checked together rather than by a call each.
    level: object = risk._name_ if type(risk) is RiskLevel else getattr(risk, "name", risk)
    mode: object = (
        approval._value_ if type(approval) is Approval else getattr(approval, "value", approval)
    )
    if (
        type(kind) is str
        and type(target) is str
        and type(desc) is str
        and type(rule) is str
        and type(reason) is str
        and type(level) is str
        and type(mode) is str
        and (kind + target + desc + rule + reason + level + mode).isascii()
    ):
        return kind, target, params_json, desc, level, mode, rule, reason
    return (
        _text(kind),
        _text(target),
        params_json,
        _text(desc),
        _text(level),
        _text(mode),
        _text(rule),
        _text(reason),
    )


def start_draft(
    session_id: str,
    decision: PolicyDecision,
    *,
    human_decision: str | None = None,
    stamp: DecisionStamp | None = None,
    params_json: str | None = None,
    timestamp: str | None = None,
) -> RecordDraft:
    """The start record of an action about to reach the executor.

    ``params_json``, when the caller has it already, is the canonical JSON
    text of the action's params (see :func:`storable_json`).
    """
    return _draft(
        _START,
        session_id,
        decision,
        None,
        human_decision,
        stamp,
        None,
        params_json,
        timestamp,
    )


# Speed (benchmarks/calls.py --instructions): on Python 3.11 a member read off
# an enum class goes through the metaclass's __getattr__ hook; read it once.
_START: Final = RecordKind.START


def final_draft(  # one field of the record each
    session_id: str,
    decision: PolicyDecision,
    result: Result | None,
    *,
    human_decision: str | None = None,
    stamp: DecisionStamp | None = None,
    start_id: int | None = None,
    params_json: str | None = None,
    timestamp: str | None = None,
) -> RecordDraft:
    """The final record of an action: its outcome, linked to its start record if any.

    Without a ``result`` nothing is known to have run: the status is
    ``None`` and the result fields are empty (a caller that knows better
    passes a Result).
    """
    return _draft(
        RecordKind.FINAL,
        session_id,
        decision,
        result,
        human_decision,
        stamp,
        start_id,
        params_json,
        timestamp,
    )


def _draft(  # noqa: PLR0917  # one field of the record each, two callers
    kind: RecordKind,
    session_id: str,
    decision: PolicyDecision,
    result: Result | None,
    human_decision: str | None,
    stamp: DecisionStamp | None,
    start_id: int | None,
    params_json: str | None,
    timestamp: str | None,
) -> RecordDraft:
    """A start (no result yet) or final record of ``decision``'s action."""
    kind_type, target, params, desc, risk, approval, rule, reason = _decision_fields(
        decision, params_json
    )
    if stamp is None:
        context = decided_at = digest = None
    else:
        given = stamp.context
        context = storable_json(given) if given else None
        decided_at, digest = stamp.decided_at, stamp.policy_digest
    if result is None:
        status = error = started = completed = None
        data_json = "null"
    else:
        status = _status_text(result.status)
        data = result.data
        data_json = "null" if data is None else storable_json(data)
        error = None if result.error is None else _error_text(result.error)
        started = _time(result.started_at)
        completed = _time(result.completed_at)
    # tuple.__new__: the named tuple's __new__ is a Python call of 21 arguments
    return _new_tuple(
        RecordDraft,
        (
            kind._value_,
            session_id if type(session_id) is str and session_id.isascii() else _text(session_id),
            timestamp or _now(),
            kind_type,
            target,
            params,
            desc,
            risk,
            approval,
            rule,
            reason,
            None if human_decision is None else _text(human_decision),
            status,
            data_json,
            error,
            started,
            completed,
            context,
            decided_at,
            digest,
            start_id,
        ),
    )


def _status_text(status: object) -> str:
    if type(status) is ResultStatus:
        return status._value_
    return _text(getattr(status, "value", status))


_new_tuple: Final = tuple.__new__


def finish_draft(
    start: RecordDraft,
    start_id: int,
    result: Result,
    *,
    human_decision: str | None = None,
    timestamp: str | None = None,
) -> RecordDraft:
    """The final record of the action whose start record is ``start`` (id ``start_id``).

    The action, decision and stamp fields are the start's, already encoded:
    the same as :func:`final_draft` gives for the same decision, without the
    work (an action is encoded once on the way through the gate).
    """
    data = result.data
    error = result.error
    status = result.status
    started = result.started_at
    completed = result.completed_at
    # Built positionally: _replace costs more than the rest of this function;
    # and with tuple.__new__, not the named tuple's Python-level __new__.
    # Speed (benchmarks/calls.py --instructions, every kind): what the runtime
    # gives (a ResultStatus, datetimes) is read without a call to _status_text
    # and _time each.
    return _new_tuple(
        RecordDraft,
        (
            _FINAL,
            start[1],
            timestamp or _now(),
            *start[3:11],
            None if human_decision is None else _text(human_decision),
            status._value_ if type(status) is ResultStatus else _status_text(status),
            "null" if data is None else storable_json(data),
            None if error is None else _error_text(error),
            isoformat(started) if type(started) is datetime else _time(started),
            isoformat(completed) if type(completed) is datetime else _time(completed),
            *start[17:20],
            start_id,
        ),
    )


_FINAL: Final = RecordKind.FINAL.value


def _time(moment: object) -> str | None:
    if moment is None:
        return None
    if isinstance(moment, datetime):
        return isoformat(moment)
    return _text(safe_repr(moment))


# ----------------------------------------------------------------- reading and export


def to_dict(record: AuditRecord) -> dict[str, Any]:
    """The public form of a record: a dict keyed by :data:`RECORD_FIELDS`, JSON decoded."""
    out = record._asdict()
    try:
        out["action_params"] = load_json(record.action_params)
        out["result_data"] = load_json(record.result_data)
        out["context"] = None if record.context is None else load_json(record.context)
    except AuditError:
        raise _unreadable(record) from None
    return out


def _too_deep_text() -> str:
    return (
        f"a JSON field nests more than {MAX_JSON_DEPTH} levels deep, which Aegis never "
        "writes: the database was edited by hand or is damaged"
    )


def _unreadable(record: AuditRecord) -> AuditError:
    """The error of a record with a field nested too deeply to read."""
    fields = [
        name
        for name in ("action_params", "result_data", "context")
        if isinstance(getattr(record, name), str) and too_deep(getattr(record, name))
    ]
    named = " and ".join(fields) or "a JSON field"
    return AuditError(
        f"cannot read audit record {record.id}: {named} "
        + ("nest" if len(fields) > 1 else "nests")
        + f" more than {MAX_JSON_DEPTH} levels deep, which Aegis never writes: the database "
        "was edited by hand or is damaged; `aegis audit verify` names the first record "
        "that does not fit"
    )


def from_dict(record: Mapping[str, Any]) -> AuditRecord:
    """A record from its public form (as :func:`to_dict` or an exported line gives it).

    A missing field counts as ``None``. The JSON fields are encoded
    canonically again, so the record hashes as it did when it was stored.
    """
    values: list[Any] = [record.get(name) for name in RECORD_FIELDS]
    values[6] = _canonical(record.get("action_params"))
    values[14] = _canonical(record.get("result_data"))
    context = record.get("context")
    values[18] = None if context is None else _canonical(context)
    return AuditRecord(*values)


def _canonical(value: Any) -> str:
    try:
        return _encode(value)
    except (ValueError, TypeError, RecursionError):
        return storable_json(value)


#: what an exported line of an action with no outcome (its start record) ends with
UNFINISHED_MARK: Final = ',"unfinished":true}'


def export_line(record: AuditRecord, *, unfinished: bool = False) -> str:
    """One exported JSON line of ``record``: every field, the JSON fields nested.

    The stored JSON text nests verbatim, so exporting costs no decoding; a
    field a hand edit left as something that is not JSON is exported as a
    string (and verify reports the edit). ``unfinished`` adds
    ``"unfinished": true`` (not a field of the record, so the line still
    rehashes): the line stands for an action that has no outcome.
    """
    head = _compact({name: record[i] for i, name in _SCALARS})
    for stored in (record.action_params, record.result_data, record.context):
        if isinstance(stored, str) and too_deep(stored):
            raise _unreadable(record)
    return (
        f'{head[:-1]},"action_params":{_json_text(record.action_params)},'
        f'"result_data":{_json_text(record.result_data)},'
        f'"context":{"null" if record.context is None else _json_text(record.context)}'
        + (UNFINISHED_MARK if unfinished else "}")
    )


#: compact JSON with keys in the order given, for text that is not hashed;
#: anything JSON cannot hold (a BLOB in a hand-edited row) becomes its repr
_compact: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=safe_repr
).encode

_SCALARS: Final = tuple(
    (i, name) for i, name in enumerate(RECORD_FIELDS) if name not in JSON_FIELDS
)


def _json_text(stored: object) -> str:
    if isinstance(stored, str):
        try:
            json.loads(stored, parse_constant=_refuse)
        except ValueError:
            pass
        else:
            return stored
    return _compact(stored if isinstance(stored, str) else safe_repr(stored))


def _refuse(constant: str) -> Any:
    # NaN and Infinity are Python's JSON extensions, not JSON.
    raise ValueError(f"{constant} is not JSON")
