"""The audit trail's query filters, defined once for every store and the CLI. Pure.

:meth:`Filters.of` validates and normalises what a caller passes
(``risk_level="high"``, ``since=datetime(...)``) into the values records
store; :attr:`Filters.items` lists the active ones as ``(field, operator,
value)`` for a SQL store to render with its own placeholders, and
:meth:`Filters.matches` applies them to one record in memory.

Which records a query sees is the *view*: ``"actions"`` (the default)
shows one entry per action, its final record, or its start record while it
has none (an action that was interrupted or is still running);
``"records"`` shows every record of the chain, starts included, as export
and verification need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal, TypedDict, Unpack

from aegis.core.record import AuditRecord, isoformat
from aegis.core.result import ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import ConfigurationError

__all__ = ["FILTER_FIELDS", "NO_FILTERS", "SHORT_NAMES", "FilterArgs", "Filters", "View"]

#: which records a query sees (see the module docstring)
View = Literal["actions", "records"]

#: the record fields a filter can match exactly, in the order items lists them
FILTER_FIELDS: Final[tuple[str, ...]] = (
    "session_id",
    "action_type",
    "action_target",
    "risk_level",
    "result_status",
)


#: each filter's short name, as ``aegis audit list --type``, the API's
#: ``?type=`` and the inbox's audit page spell it, and the keyword it stands for
SHORT_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "session": "session_id",
        "type": "action_type",
        "target": "action_target",
        "risk": "risk_level",
        "status": "result_status",
        "since": "since",
        "until": "until",
    }
)


class FilterArgs(TypedDict, total=False):
    """The keyword filters every audit reader takes beside ``session_id``, as callers pass them.

    ``get_log``, ``iter_log`` and ``count`` take them as ``**filters``, so that
    they are written here once; :meth:`Filters.of` checks and normalises them.
    """

    action_type: str | None
    action_target: str | None
    risk_level: RiskLevel | str | int | None
    result_status: ResultStatus | str | None
    since: datetime | str | None
    until: datetime | str | None
    view: View


def _as_utc_iso(value: datetime | str, name: str) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ConfigurationError(
                f"{name}={value!r} is not an ISO 8601 date or time; "
                "use e.g. '2024-05-01' or '2024-05-01T12:00:00+00:00'"
            ) from exc
    if not isinstance(value, datetime):
        raise ConfigurationError(
            f"{name} must be a datetime or an ISO 8601 string, not {type(value).__name__}"
        )
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
        raise ConfigurationError(
            f"risk_level={value!r} is not a risk level; use one of {names}"
        ) from None


def _status_value(value: ResultStatus | str) -> str:
    try:
        return ResultStatus(value.lower() if isinstance(value, str) else value).value
    except ValueError:
        names = ", ".join(s.value for s in ResultStatus)
        raise ConfigurationError(
            f"result_status={value!r} is not a result status; use one of {names}"
        ) from None


@dataclass(frozen=True, slots=True)
class Filters:
    """Record filters, normalised to the values records store.

    Build them with :meth:`of`; every field ``None`` means no filter.
    """

    session_id: str | None = None
    action_type: str | None = None
    action_target: str | None = None
    risk_level: str | None = None
    result_status: str | None = None
    since: str | None = None
    until: str | None = None
    view: View = "actions"

    @classmethod
    def of(cls, session_id: str | None = None, **filters: Unpack[FilterArgs]) -> Filters:
        """Validate and normalise filter arguments.

        Raises:
            ConfigurationError: a keyword that is no filter, or a value no
                record could hold (an unknown risk level or status, a time
                that is not ISO 8601, a view other than the two); the
                message names the filter and the values it takes.
        """
        unknown = set(filters) - set(FilterArgs.__annotations__)
        if unknown:
            raise ConfigurationError(
                f"unknown filter {sorted(unknown)[0]!r}; the filters are session_id,"
                f" {', '.join(FilterArgs.__annotations__)}"
            )
        action_type = filters.get("action_type")
        action_target = filters.get("action_target")
        risk_level = filters.get("risk_level")
        result_status = filters.get("result_status")
        since = filters.get("since")
        until = filters.get("until")
        view = filters.get("view", "actions")
        if view not in ("actions", "records"):
            raise ConfigurationError(f"view={view!r}; use 'actions' or 'records'")
        return cls(
            session_id=session_id,
            action_type=action_type,
            action_target=action_target,
            risk_level=None if risk_level is None else _risk_name(risk_level),
            result_status=None if result_status is None else _status_value(result_status),
            since=None if since is None else _as_utc_iso(since, "since"),
            until=None if until is None else _as_utc_iso(until, "until"),
            view=view,
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

    def matches(self, record: AuditRecord | Mapping[str, Any]) -> bool:
        """Whether ``record`` passes every field filter (the view is the store's part)."""
        is_record = isinstance(record, AuditRecord)
        for name, op, value in self.items:
            field = getattr(record, name) if is_record else record.get(name)  # type: ignore[union-attr]  # a Mapping
            if op == "=":
                if field != value:
                    return False
            elif not isinstance(field, str) or (field < value if op == ">=" else field > value):
                return False
        return True


#: no filter: every action (the default of every query)
NO_FILTERS: Final = Filters()
