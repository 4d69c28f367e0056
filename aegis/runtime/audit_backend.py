"""What every audit backend offers, and the pieces they share.

An audit backend keeps one record per governed action with its final
outcome. :class:`AuditBackend` is the interface the runtime, the integrations
and the command line use; :class:`~aegis.runtime.audit.AuditLogger` (SQLite)
and :class:`~aegis.runtime.audit_logging.LoggingAuditLogger` implement it.

A record is a plain ``dict`` with the keys in :data:`RECORD_FIELDS`.
``action_params`` and ``result_data`` are JSON values; anything JSON cannot
represent is stored as its ``repr`` so that auditing never fails on data.

The chain hash of a record (:func:`record_hash`) is the SHA-256 of a
compact JSON array of every field except ``hash``, in the order of
:data:`HASHED_FIELDS` (objects inside with sorted keys, and the length of
the params text before it), then an object of the non-null
:data:`EXTENSION_FIELDS`. It can be recomputed from an exported JSONL
line::

    rec = json.loads(line)
    assert record_hash(rec) == rec["hash"]
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from aegis.core.decision import Approval, PolicyDecision
from aegis.core.record import ContextValue, isoformat
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AuditError

# The interface a backend implements, and what a reader of its records needs.
# The helpers below them (Filters, RecordReader, dump_json, ...) are shared
# by the backends in this package and may change without notice.
__all__ = [
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "RECORD_FIELDS",
    "AuditBackend",
    "Subscriber",
    "record_hash",
]

logger = logging.getLogger("aegis.audit")

#: ``prev_hash`` of the first record of a chain
GENESIS_HASH = "0" * 64

#: the keys of every record, in storage order
RECORD_FIELDS: tuple[str, ...] = (
    "id",
    "session_id",
    "timestamp",
    "action_type",
    "action_target",
    "action_params",
    "action_desc",
    "risk_level",
    "approval",
    "matched_rule",
    "reason",
    "human_decision",
    "result_status",
    "result_data",
    "result_error",
    "started_at",
    "completed_at",
    "context",
    "decided_at",
    "policy_digest",
    "prev_hash",
    "hash",
)

#: the fields added after the first schema, hashed as one trailing JSON object
#: of those that are not null (so records written before them still verify)
EXTENSION_FIELDS: tuple[str, ...] = ("context", "decided_at", "policy_digest")

#: a callable that receives each new record after it is stored
Subscriber = Callable[[dict[str, Any]], object]


@runtime_checkable
class AuditBackend(Protocol):
    """Where the runtime writes one record per action.

    ``record_start`` is called right before the executor runs and ``record``
    once the action has its final outcome (success, failure, blocked, denied
    or skipped). Both return only once the write is durable.
    """

    def log(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        result: Result | None = None,
        human_decision: str | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int:
        """Write one finished record synchronously and return its id."""
        ...

    async def record_start(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        human_decision: str | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int | None:
        """Note that an action is about to run; return a token for :meth:`record`."""
        ...

    async def record(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        result: Result,
        human_decision: str | None = None,
        start_token: int | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int:
        """Write the final record of an action, clearing its start marker; return its id.

        ``context``, ``decided_at`` and ``policy_digest`` come from the
        decide step (see :class:`~aegis.core.record.DecisionStamp`).
        """
        ...

    def get_log(
        self,
        session_id: str | None = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
        risk_level: RiskLevel | str | int | None = None,
        result_status: ResultStatus | str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        after_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Return the records that match every given filter, oldest first."""
        ...

    def count(
        self,
        session_id: str | None = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
        risk_level: RiskLevel | str | int | None = None,
        result_status: ResultStatus | str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> int:
        """Return how many records match every given filter."""
        ...

    def export_jsonl(self, path: str | Path, session_id: str | None = None) -> int:
        """Write the records as UTF-8 JSON lines to ``path``; return how many."""
        ...

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback`` with each new record once it is stored."""
        ...

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop calling ``callback``."""
        ...

    def close(self) -> None:
        """Release resources; calling it again does nothing."""
        ...


def _json_default(value: object) -> object:
    # Called by json for anything it cannot encode: keep what we can, never fail.
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=dump_json)
    return repr(value)


def dump_json(value: Any) -> str:
    """Serialise ``value`` canonically: sorted keys, compact, UTF-8 text.

    Values JSON cannot hold become their ``repr``; a value that still cannot
    be encoded (a cycle, a key that is not a string) is stored as a whole as
    its ``repr``, so that this never raises.
    """
    try:
        return _encode(value)
    except ValueError:
        # NaN or an infinity: valid Python, invalid JSON. Write those floats
        # as strings ("nan", "inf") and keep the rest of the value.
        try:
            return _encode(_finite(value))
        except (TypeError, ValueError, RecursionError):
            pass
    except (TypeError, RecursionError):
        pass
    return json.dumps(_safe_repr(value), ensure_ascii=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# Built once: json.dumps with options builds a new encoder on every call.
_encode = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,  # NaN is not JSON: dump_json writes such floats as strings
    default=_json_default,
).encode

#: compact JSON with keys in the order given, for text that is not hashed (an
#: export line, a start marker); anything JSON cannot hold, such as a BLOB in a
#: hand-edited row, becomes its ``repr`` rather than fail
encode_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=repr).encode


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # a broken __repr__ must not lose the audit record
        return f"<unrepresentable {type(value).__name__}>"


#: the fields a record's hash covers, in the order they are hashed: every
#: field but ``hash``, the two JSON values last
HASHED_FIELDS: tuple[str, ...] = (
    "id",
    "session_id",
    "timestamp",
    "action_type",
    "action_target",
    "action_desc",
    "risk_level",
    "approval",
    "matched_rule",
    "reason",
    "human_decision",
    "result_status",
    "result_error",
    "started_at",
    "completed_at",
    "prev_hash",
    "action_params",
    "result_data",
)


def _extension_text(context: str | None, decided_at: str | None, digest: str | None) -> str:
    # The canonical JSON of the non-null extension fields, keys sorted;
    # ``context`` is canonical JSON text already and nests verbatim.
    parts = []
    if context is not None and context != "null":
        parts.append(f'"context":{context}')
    if decided_at is not None:
        parts.append(f'"decided_at":{_encode(decided_at)}')
    if digest is not None:
        parts.append(f'"policy_digest":{_encode(digest)}')
    return f",{{{','.join(parts)}}}" if parts else ""


def hash_row(row: Sequence[Any]) -> str:
    """Hash a stored row (columns in :data:`RECORD_FIELDS` order, up to ``prev_hash``).

    The two JSON columns are stored as canonical JSON text, and canonical
    JSON nests a value's text verbatim, so splicing them after the encoded
    scalars gives the same bytes as :func:`record_hash` without parsing or
    serialising them again (a property test holds the two equal). This runs
    for every write and every verified record, so the scalars go through
    the C encoder in one call.
    """
    scalars = _encode(
        [
            row[0], row[1], row[2], row[3], row[4], row[6], row[7], row[8],
            row[9], row[10], row[11], row[12], row[14], row[15], row[16], row[20],
        ]
    )  # fmt: skip
    params = row[5]
    extension = _extension_text(row[17], row[18], row[19])
    text = f"{scalars[:-1]},{len(params)},{params},{row[13]}{extension}]"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def record_hash(record: Mapping[str, Any]) -> str:
    """Return the chain hash of ``record``.

    It is the SHA-256 of a compact JSON array: the values of
    :data:`HASHED_FIELDS` but the last two (a missing field counts as
    ``null``), then the length of the canonical JSON text of
    ``action_params``, that text, and the canonical JSON of ``result_data``
    (objects with sorted keys). The length, in Unicode code points, pins
    where the params end, so no text can move between the two JSON values
    unnoticed. Last comes an object of the :data:`EXTENSION_FIELDS` that are
    not null, left out when all are.
    """
    params = _encode(record.get("action_params"))
    scalars = _encode([record.get(name) for name in HASHED_FIELDS[:-2]])
    extension = {name: record[name] for name in EXTENSION_FIELDS if record.get(name) is not None}
    tail = f",{_encode(extension)}" if extension else ""
    text = f"{scalars[:-1]},{len(params)},{params},{_encode(record.get('result_data'))}{tail}]"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def status_without_result(decision: PolicyDecision, human_decision: str | None) -> str | None:
    """Return the status of a record logged without a :class:`Result`.

    A blocked decision is ``"blocked"``, a human ``"denied..."`` is
    ``"denied"``; otherwise nothing ran that Aegis knows of, so ``None``.
    """
    if decision.approval is Approval.BLOCK:
        return ResultStatus.BLOCKED.value
    if human_decision is not None and human_decision.startswith("denied"):
        return ResultStatus.DENIED.value
    return None


#: the values of one record, in :data:`RECORD_FIELDS` order minus ``id``,
#: ``prev_hash`` and ``hash``; the JSON fields are canonical JSON text
RecordValues = tuple[
    str, str, str, str, str, str, str, str, str, str, str | None, str | None,
    str, str | None, str | None, str | None, str | None, str | None, str | None,
]  # fmt: skip


def record_values(
    session_id: str,
    decision: PolicyDecision,
    result: Result | None,
    human_decision: str | None,
    timestamp: str | None = None,
    *,
    params_json: str | None = None,
    context: Mapping[str, ContextValue] | None = None,
    decided_at: str | None = None,
    policy_digest: str | None = None,
) -> RecordValues:
    """Flatten a decision and its result into the stored values of a record.

    ``params_json``, when the caller has it already, is the params' text.
    """
    action = decision.action
    if timestamp is None:
        timestamp = datetime.now(UTC).isoformat(timespec="microseconds")
    if result is None:
        status = status_without_result(decision, human_decision)
        data_json = "null"
        error = None
        started = completed = None
    else:
        status = result.status.value
        data = result.data
        data_json = "null" if data is None else dump_json(data)
        error = result.error
        if error is not None and not isinstance(error, str):  # set after construction
            error = str(error)
        started = isoformat(result.started_at)
        completed = None if result.completed_at is None else isoformat(result.completed_at)
    params = action.params
    return (
        session_id,
        timestamp,
        action.type,
        action.target,
        params_json if params_json is not None else dump_json(params) if params else "{}",
        action.description,
        decision.risk_level.name,
        decision.approval.value,
        decision.matched_rule,
        decision.reason,
        human_decision,
        status,
        data_json,
        error,
        started,
        completed,
        None if not context else dump_json(context),
        decided_at,
        policy_digest,
    )


def _as_utc_iso(value: datetime | str, name: str) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(
                f"{name}={value!r} is not an ISO 8601 date or time; "
                "use e.g. '2024-05-01' or '2024-05-01T12:00:00+00:00'"
            ) from exc
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime or an ISO 8601 string, not {type(value)}")
    return isoformat(value)


def _risk_name(value: RiskLevel | str | int) -> str:
    try:
        if isinstance(value, RiskLevel):
            return value.name
        if isinstance(value, str):
            return RiskLevel[value.strip().upper()].name
        return RiskLevel(value).name
    except (KeyError, ValueError):
        names = ", ".join(level.name for level in RiskLevel)
        raise ValueError(f"risk_level={value!r} is not a risk level; use one of {names}") from None


def _status_value(value: ResultStatus | str) -> str:
    try:
        return ResultStatus(value.lower() if isinstance(value, str) else value).value
    except ValueError:
        names = ", ".join(s.value for s in ResultStatus)
        raise ValueError(
            f"result_status={value!r} is not a result status; use one of {names}"
        ) from None


@dataclass(frozen=True, slots=True)
class Filters:
    """Record filters, normalised to the values records store.

    Build them with :meth:`of`; :meth:`matches` checks a record dict, and
    :attr:`items` lists ``(column, operator, value)`` for SQL backends.
    """

    session_id: str | None = None
    action_type: str | None = None
    action_target: str | None = None
    risk_level: str | None = None
    result_status: str | None = None
    since: str | None = None
    until: str | None = None

    @classmethod
    def of(
        cls,
        session_id: str | None = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
        risk_level: RiskLevel | str | int | None = None,
        result_status: ResultStatus | str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> Filters:
        """Validate and normalise filter arguments; raise ``ValueError`` on a bad one."""
        return cls(
            session_id=session_id,
            action_type=action_type,
            action_target=action_target,
            risk_level=None if risk_level is None else _risk_name(risk_level),
            result_status=None if result_status is None else _status_value(result_status),
            since=None if since is None else _as_utc_iso(since, "since"),
            until=None if until is None else _as_utc_iso(until, "until"),
        )

    @property
    def items(self) -> list[tuple[str, str, str]]:
        """The active filters as ``(field, operator, value)``; times bound ``timestamp``."""
        out = [
            (name, "=", value)
            for name, value in (
                ("session_id", self.session_id),
                ("action_type", self.action_type),
                ("action_target", self.action_target),
                ("risk_level", self.risk_level),
                ("result_status", self.result_status),
            )
            if value is not None
        ]
        if self.since is not None:
            out.append(("timestamp", ">=", self.since))
        if self.until is not None:
            out.append(("timestamp", "<=", self.until))
        return out

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` passes every active filter."""
        for name, op, value in self.items:
            field = record.get(name)
            if op == "=":
                if field != value:
                    return False
            elif field is None or (field < value if op == ">=" else field > value):
                return False
        return True


class RecordReader:
    """The filtered reads of an audit backend, built on two methods of a subclass.

    A subclass implements :meth:`_select` (and may override :meth:`_count`
    and :meth:`export_jsonl` with faster versions); the public signatures
    are spelled out here once.
    """

    def _select(
        self, filters: Filters, after_id: int | None, limit: int | None
    ) -> Iterator[dict[str, Any]]:
        """Yield the records matching ``filters`` with an id above ``after_id``, oldest first."""
        raise NotImplementedError

    def _count(self, filters: Filters) -> int:
        """Return how many records match ``filters``."""
        return sum(1 for _ in self._select(filters, None, None))

    def iter_log(
        self,
        session_id: str | None = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
        risk_level: RiskLevel | str | int | None = None,
        result_status: ResultStatus | str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        after_id: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield the records that match every given filter, oldest first.

        Filters are exact matches; ``since``/``until`` bound the record's
        ``timestamp`` (inclusive; a naive datetime means UTC). ``limit`` caps
        how many are yielded and ``after_id`` skips the records up to that id.
        """
        filters = Filters.of(
            session_id,
            action_type=action_type,
            action_target=action_target,
            risk_level=risk_level,
            result_status=result_status,
            since=since,
            until=until,
        )
        yield from self._select(filters, after_id, limit)

    def get_log(
        self,
        session_id: str | None = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
        risk_level: RiskLevel | str | int | None = None,
        result_status: ResultStatus | str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        after_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Return the records that match every given filter, oldest first (see :meth:`iter_log`)."""
        return list(
            self.iter_log(
                session_id,
                action_type=action_type,
                action_target=action_target,
                risk_level=risk_level,
                result_status=result_status,
                since=since,
                until=until,
                limit=limit,
                after_id=after_id,
            )
        )

    def count(
        self,
        session_id: str | None = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
        risk_level: RiskLevel | str | int | None = None,
        result_status: ResultStatus | str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> int:
        """Return how many records match every given filter."""
        return self._count(
            Filters.of(
                session_id,
                action_type=action_type,
                action_target=action_target,
                risk_level=risk_level,
                result_status=result_status,
                since=since,
                until=until,
            )
        )

    def export_jsonl(self, path: str | Path, session_id: str | None = None) -> int:
        """Write the records (of one session, if given) as UTF-8 JSON lines; return how many."""
        return write_jsonl(path, self.iter_log(session_id))


class SubscriberList:
    """Callbacks to notify of new records; a failing callback is logged, not raised."""

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: tuple[Subscriber, ...] = ()

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def add(self, callback: Subscriber) -> None:
        """Add ``callback``; it must accept one record dict."""
        if not callable(callback):
            raise TypeError(f"an audit subscriber must be callable, not {type(callback).__name__}")
        # Replacing the tuple keeps notify() safe if a callback unsubscribes itself.
        self._callbacks = (*self._callbacks, callback)

    def remove(self, callback: Subscriber) -> None:
        """Remove ``callback``; removing one that is not subscribed does nothing."""
        callbacks = list(self._callbacks)
        if callback in callbacks:
            callbacks.remove(callback)
            self._callbacks = tuple(callbacks)

    def notify(self, record: dict[str, Any]) -> None:
        """Call every subscriber with ``record``; log and swallow their exceptions."""
        for callback in self._callbacks:
            try:
                callback(record)
            except Exception:
                # The record is already stored; a broken listener must not
                # turn a governed action into a failure.
                logger.exception(
                    "audit subscriber %r failed on record %s", callback, record.get("id")
                )


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any] | str]) -> int:
    """Write ``records`` (dicts, or lines of JSON already) to ``path``; return how many."""
    written = 0
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as out:
            for record in records:
                line = (
                    record
                    if isinstance(record, str)
                    else json.dumps(record, ensure_ascii=False, default=_json_default)
                )
                out.write(line)
                out.write("\n")
                written += 1
    except OSError as exc:
        raise AuditError(
            f"cannot export the audit log to {str(path)!r}: {exc.strerror or exc}; "
            "check that the folder exists and is writable"
        ) from exc
    return written
