"""What a reviewer is asked to approve, and the digest that binds the answer to it.

An :class:`ApprovalRequest` is a pure value: the action exactly as the agent
will run it, who asked (the agent token's name), the policy's risk, rule and
reason, how many reviewers it needs and from which groups, and when it
expires. Its ``digest`` is SHA-256 over the canonical JSON of the action and
the requester (:func:`request_digest`), so an approval can never be carried
over to another action, or to the same action asked for by another agent.

Nothing here does I/O or reads the clock: times are passed in.

Size: every value of remote approval (the request, its decisions, grants,
tokens, sessions, the list cursor) with its JSON form and its validation,
in one place, so the service, the stores and the client agree on each.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from aegis.core.action import Action, _unmarked, canonical_json
from aegis.core.explain import Why
from aegis.core.identity import Identity, canonical_issuer
from aegis.core.risk import RiskLevel
from aegis.errors import ConfigurationError

__all__ = [
    "REQUEST_SORTS",
    "ApprovalRequest",
    "Grant",
    "InboxSession",
    "ListCursor",
    "NewRequest",
    "RequestStatus",
    "ReviewerDecision",
    "Role",
    "TokenInfo",
    "Verdict",
    "action_from_json",
    "action_to_json",
    "groups_within",
    "iso",
    "parse_approval_ttl",
    "parse_duration",
    "parse_new_request",
    "parse_time",
    "request_digest",
    "stricter_groups",
]

_UNITS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION: Final = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$")

#: the longest an approval request may stay open: 30 days
MAX_APPROVAL_TTL: Final = 30 * 86400.0

#: the most an agent may put in one request, field by field
MAX_TEXT: Final = 10_000
MAX_ID: Final = 200


def parse_duration(value: float | str) -> float:
    """Seconds from a positive number or a text such as ``"90s"``, ``"30m"``, ``"1h"``, ``"2d"``.

    Raises:
        ConfigurationError: the value is not a positive, finite duration.
    """
    if isinstance(value, bool):
        raise ConfigurationError(
            f"a duration must be a number of seconds or text like '30m', not {value}"
        )
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        found = _DURATION.match(value)
        if found is None:
            raise ConfigurationError(
                f"{value!r} is not a duration; write seconds or a number with s, m, h or d "
                "(e.g. 90s, 30m, 1h, 2d)"
            )
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
    else:
        raise ConfigurationError(
            f"a duration must be a number of seconds or text like '30m', not {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(f"a duration must be positive and finite, got {value!r}")
    return seconds


def parse_approval_ttl(value: float | str) -> float:
    """:func:`parse_duration`, at most :data:`MAX_APPROVAL_TTL` (30 days).

    Raises:
        ConfigurationError: not a positive duration, or longer than 30 days.
    """
    seconds = parse_duration(value)
    if seconds > MAX_APPROVAL_TTL:
        raise ConfigurationError(
            f"{value!r} is longer than 30 days; an approval must not wait that long"
        )
    return seconds


def iso(moment: datetime) -> str:
    """``moment`` as fixed-width ISO 8601 UTC text, so that text order is time order."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: str) -> datetime:
    """The aware datetime of :func:`iso` text (naive text is taken as UTC)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class RequestStatus(StrEnum):
    """Where an approval request stands; only ``pending`` can change."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class Verdict(StrEnum):
    """What one reviewer said."""

    APPROVE = "approve"
    DENY = "deny"


class Role(StrEnum):
    """What a token may do: agents ask, reviewers decide, a metrics token reads ``/metrics``.

    A metrics token is a Prometheus scraper's: it reads the operator's
    dashboards and nothing else (no request, grant or audit record).
    """

    AGENT = "agent"
    REVIEWER = "reviewer"
    METRICS = "metrics"

    @property
    def article(self) -> str:
        """The indefinite article of the role's name, for messages: "an agent token"."""
        return "an" if self.value[:1] in "aeiou" else "a"


def groups_within(groups: tuple[str, ...] | list[str], limit: tuple[str, ...] | list[str]) -> bool:
    """Whether every reviewer allowed by ``groups`` is allowed by ``limit`` too.

    An empty tuple means "any group": it is within only an empty ``limit``.
    """
    if not limit:
        return True
    return bool(groups) and set(groups) <= set(limit)


def stricter_groups(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...] | None:
    """The reviewer groups that satisfy both ``first`` and ``second``; ``None`` if none can.

    A reviewer must be in one of a request's groups; one in a group both
    name satisfies both. Empty means any group, so the other side wins.
    """
    if not first:
        return tuple(second)
    if not second:
        return tuple(first)
    both = tuple(group for group in first if group in set(second))
    return both or None


def request_digest(action: Action, requester: str) -> str:
    """SHA-256 hex over the canonical JSON of ``action`` and ``requester``.

    The same action asked for by the same name always gives the same
    digest, in every process; a change to the type, target, params,
    description or requester gives another.
    """
    text = (
        '{"action":'
        + canonical_json(action)
        + ',"requester":'
        + json.dumps(requester, ensure_ascii=False)
        + "}"
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def action_from_json(data: object) -> Action:
    """Build an :class:`Action` from its JSON object (type, target, params, description).

    Raises:
        ValueError: a field is missing, of the wrong kind or too long; the
            message names it.
    """
    if not isinstance(data, Mapping):
        raise ValueError("action must be an object with type, target, params and description")
    unknown = set(data) - {"type", "target", "params", "description"}
    if unknown:
        raise ValueError(f"action has unknown fields: {', '.join(sorted(map(str, unknown)))}")
    kind, target = data.get("type"), data.get("target")
    params = data.get("params", {})
    description = data.get("description", "")
    for name, value in (("type", kind), ("target", target)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"action.{name} must be non-empty text")
        if len(value) > MAX_ID:
            raise ValueError(f"action.{name} is longer than {MAX_ID} characters")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError("action.params must be an object")
    if description is None:
        description = ""
    if not isinstance(description, str) or len(description) > MAX_TEXT:
        raise ValueError(f"action.description must be text of at most {MAX_TEXT} characters")
    try:
        # canonical JSON's marks (an int too long to print, an escaped
        # mapping) read back as what they stand for: the action written
        return Action(str(kind), str(target), _unmarked(dict(params)), description)
    except TypeError as exc:
        raise ValueError(f"action.params: {exc}") from None


def action_to_json(action: Action) -> dict[str, Any]:
    """The JSON object of ``action``, as the service stores and shows it.

    Values JSON cannot hold are written the way :func:`canonical_json`
    writes them, so the digest of the action rebuilt from this object is
    the digest of ``action``.
    """
    loaded: dict[str, Any] = json.loads(canonical_json(action))
    return {
        "type": loaded["type"],
        "target": loaded["target"],
        "params": loaded["params"],
        "description": loaded["description"],
    }


@dataclass(frozen=True, slots=True)
class NewRequest:
    """What an agent asks for: the body of ``POST /api/v1/approvals``, validated."""

    session_id: str
    action: Action
    risk_level: RiskLevel
    matched_rule: str = ""
    reason: str = ""
    approvers: int = 1
    reviewers: tuple[str, ...] = ()
    approval_ttl: float | None = None
    why: Why | None = None


def _text(body: Mapping[str, Any], key: str, limit: int, *, required: bool = False) -> str:
    value = body.get(key)
    if value is None:
        if required:
            raise ValueError(f"{key} is required")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key} must be text")
    if required and not value:
        raise ValueError(f"{key} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{key} is longer than {limit} characters")
    return value


def parse_new_request(body: object) -> NewRequest:
    """Validate the JSON body of a new approval request.

    Raises:
        ValueError: the body is not a valid request; the message names the field.
    """
    if not isinstance(body, Mapping):
        raise ValueError("the body must be a JSON object")
    allowed = {
        "session_id",
        "action",
        "risk_level",
        "matched_rule",
        "reason",
        "approvers",
        "reviewers",
        "approval_ttl",
        "why",
    }
    unknown = set(body) - allowed
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(map(str, unknown)))}")
    session_id = _text(body, "session_id", MAX_ID, required=True)
    action = action_from_json(body.get("action"))
    risk = body.get("risk_level", "medium")
    if not isinstance(risk, str) or risk.upper() not in RiskLevel.__members__:
        names = ", ".join(level.name.lower() for level in RiskLevel)
        raise ValueError(f"risk_level must be one of {names}")
    approvers = body.get("approvers", 1)
    if isinstance(approvers, bool) or not isinstance(approvers, int) or not 1 <= approvers <= 20:
        raise ValueError("approvers must be a whole number from 1 to 20")
    groups = body.get("reviewers", [])
    if groups is None:
        groups = []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise ValueError("reviewers must be a list of group names")
    ttl = body.get("approval_ttl")
    if ttl is not None:
        try:
            ttl = parse_approval_ttl(ttl)
        except ConfigurationError as exc:
            raise ValueError(f"approval_ttl: {exc}") from None
    why = body.get("why")
    return NewRequest(
        why=None if why is None else Why.from_json(why),
        session_id=session_id,
        action=action,
        risk_level=RiskLevel[risk.upper()],
        matched_rule=_text(body, "matched_rule", MAX_ID),
        reason=_text(body, "reason", MAX_TEXT),
        approvers=approvers,
        reviewers=tuple(groups),
        approval_ttl=ttl,
    )


@dataclass(frozen=True, slots=True)
class ReviewerDecision:
    """One reviewer's verdict on a request.

    ``reviewer`` is the reviewer's :attr:`~aegis.core.identity.Identity.key`
    (a token's name, or a provider's ``issuer#subject``): what makes two
    decisions one person's. ``reviewer_name`` is their name for display.
    """

    reviewer: str
    verdict: Verdict
    comment: str
    at: datetime
    grant_minutes: int | None = None
    reviewer_name: str = ""

    @property
    def identity(self) -> Identity:
        """Who decided: issuer, subject and display name."""
        return Identity.from_key(self.reviewer, self.reviewer_name)

    def to_json(self) -> dict[str, Any]:
        """The decision as the API shows it."""
        who = self.identity
        return {
            "reviewer": self.reviewer,
            "reviewer_name": who.display,
            "reviewer_issuer": who.issuer or None,
            "reviewer_subject": who.subject,
            "verdict": self.verdict.value,
            "comment": self.comment,
            "at": iso(self.at),
            "grant_minutes": self.grant_minutes,
        }


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One approval request and everything decided about it so far.

    ``digest`` binds it to the action and the requester (see
    :func:`request_digest`); ``action_digest`` is the action's own digest,
    which the runtime compares with the action it is about to run.
    ``collected_at`` is set once the agent has collected an approval: it
    cannot be collected twice. ``grant_id`` names the grant that approved
    it without asking (``grant_by`` its reviewers), ``granted`` the grant its
    approval created.
    """

    id: str
    session_id: str
    requester: str
    action: Action
    risk_level: RiskLevel
    matched_rule: str
    reason: str
    approvers: int
    reviewers: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    status: RequestStatus = RequestStatus.PENDING
    digest: str = ""
    action_digest: str = ""
    decisions: tuple[ReviewerDecision, ...] = ()
    status_reason: str = ""
    collected_at: datetime | None = None
    grant_id: str | None = None
    grant_by: tuple[str, ...] = ()
    granted: str | None = None
    why: Why | None = None

    @property
    def approvals(self) -> tuple[ReviewerDecision, ...]:
        """The approving decisions, in order."""
        return tuple(d for d in self.decisions if d.verdict is Verdict.APPROVE)

    def is_expired_at(self, now: datetime) -> bool:
        """Whether a still-pending request is past its expiry at ``now``."""
        return self.status is RequestStatus.PENDING and now >= self.expires_at

    def terms_at_least(
        self, approvers: int, reviewers: tuple[str, ...], expires_at: datetime
    ) -> bool:
        """Whether it asks at least these terms: approvers, groups within, expiry no later."""
        return (
            self.approvers >= approvers
            and groups_within(self.reviewers, reviewers)
            and self.expires_at <= expires_at
        )

    def to_json(self) -> dict[str, Any]:
        """The request as the API shows it."""
        return {
            "id": self.id,
            "status": self.status.value,
            "session_id": self.session_id,
            "requester": self.requester,
            "action": action_to_json(self.action),
            "risk_level": self.risk_level.name.lower(),
            "matched_rule": self.matched_rule,
            "reason": self.reason,
            "approvers": self.approvers,
            "reviewers": list(self.reviewers),
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "digest": self.digest,
            "action_digest": self.action_digest,
            "decisions": [d.to_json() for d in self.decisions],
            "status_reason": self.status_reason,
            "collected_at": None if self.collected_at is None else iso(self.collected_at),
            "grant_id": self.grant_id,
            "grant_by": list(self.grant_by),
            "granted": self.granted,
            "why": None if self.why is None else self.why.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Grant:
    """A reviewer's leave for later actions of one kind in one session to pass unasked.

    It covers actions with the same ``action_type``, ``action_target`` and
    ``matched_rule``, asked for by the same requester in the same session,
    until ``expires_at`` or until it is revoked, and only when its givers met
    the terms of the later request: ``approvers`` and ``reviewers`` are the
    terms of the request it was given on (see :meth:`covers`).
    """

    id: str
    session_id: str
    requester: str
    action_type: str
    action_target: str
    matched_rule: str
    granted_by: tuple[str, ...]
    request_id: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    approvers: int = 0
    reviewers: tuple[str, ...] = ()

    def active_at(self, now: datetime) -> bool:
        """Whether the grant lets actions pass at ``now``."""
        return self.revoked_at is None and now < self.expires_at

    def covers(self, approvers: int, reviewers: tuple[str, ...]) -> bool:
        """Whether its givers met these terms: as many of them, from the groups asked for."""
        return self.approvers >= approvers and groups_within(self.reviewers, reviewers)

    def to_json(self) -> dict[str, Any]:
        """The grant as the API shows it."""
        return {
            "id": self.id,
            "session_id": self.session_id,
            "requester": self.requester,
            "action_type": self.action_type,
            "action_target": self.action_target,
            "matched_rule": self.matched_rule,
            "granted_by": list(self.granted_by),
            "request_id": self.request_id,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": None if self.revoked_at is None else iso(self.revoked_at),
            "approvers": self.approvers,
            "reviewers": list(self.reviewers),
        }


@dataclass(frozen=True, slots=True)
class InboxSession:
    """A browser's session of the inbox, kept by the server.

    The browser's cookie holds a random secret; the store keeps its hash
    (``id_hash``), so the cookie alone names a session and a copied cookie
    stops working the moment the session ends (sign-out, expiry). Who is
    signed in: ``token_hash`` for a token sign-in; ``identity`` for other
    sign-ins (free-form facts, e.g. issuer and subject).
    """

    id_hash: str
    csrf: str
    created_at: datetime
    expires_at: datetime
    token_hash: str | None = None
    identity: Mapping[str, Any] | None = None
    ended_at: datetime | None = None

    def active_at(self, now: datetime) -> bool:
        """Whether the session may be used at ``now``."""
        return self.ended_at is None and now < self.expires_at


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A service token as stored: never the token itself, only its hash elsewhere.

    A reviewer token may be tied to a person of an OpenID provider
    (``oidc_subject`` at ``oidc_issuer``, both required): its decisions are
    then that person's. One with a subject and no issuer is refused at use.

    ``role`` is a plain ``str`` when the stored role is none this version
    knows (a newer version's, or edited by hand): the token is listed with
    it, and refused at use.
    """

    name: str
    role: Role | str
    groups: tuple[str, ...] = ()
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    oidc_issuer: str | None = None
    oidc_subject: str | None = None

    @property
    def known_role(self) -> Role | None:
        """The token's role, or ``None`` when this version of Aegis does not know it."""
        return self.role if isinstance(self.role, Role) else None

    def speaks_for(self, key: str) -> bool:
        """Whether a decision or grant by the identity ``key`` may have come through this token.

        A token tied to no person decides as its name. One tied to a subject
        decides as that person at its issuer, or at any issuer when it names
        none (a token made before the issuer was required): what the person
        did from the inbox is not told apart from it, so it is counted too.
        """
        if self.oidc_subject is None:
            return key == self.name
        who = Identity.from_key(key)
        if who.subject != self.oidc_subject or not who.issuer:
            return False
        return self.oidc_issuer is None or who.issuer == canonical_issuer(self.oidc_issuer)

    def usable_at(self, now: datetime) -> bool:
        """Whether the token may be used at ``now`` (not revoked, not expired)."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def state_at(self, now: datetime) -> str:
        """``"active"``, ``"revoked"`` or ``"expired"``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def to_json(self, now: datetime) -> dict[str, Any]:
        """The token's public facts."""
        return {
            "name": self.name,
            "role": str(self.role),
            "role_known": self.known_role is not None,
            "groups": list(self.groups),
            "created_at": None if self.created_at is None else iso(self.created_at),
            "expires_at": None if self.expires_at is None else iso(self.expires_at),
            "state": self.state_at(now),
            "oidc_issuer": self.oidc_issuer,
            "oidc_subject": self.oidc_subject,
        }


#: the orders a list of requests may be read in: newest first, closest to
#: expiring first, highest risk first (newest first within a risk)
REQUEST_SORTS: Final = ("newest", "expiring", "risk")


@dataclass(frozen=True, slots=True)
class ListCursor:
    """Where a page of a request list ends: its last request's keys in the list's order.

    ``at`` is the request's ``created_at`` for ``newest`` and ``risk``, its
    ``expires_at`` for ``expiring``; ``risk`` counts only for ``risk``. A
    list read on from a cursor is stable while new requests arrive, and
    these keys never change once a request is stored.
    """

    sort: str
    at: datetime
    id: str
    risk: RiskLevel = RiskLevel.LOW

    @classmethod
    def after(cls, request: ApprovalRequest, sort: str = "newest") -> ListCursor:
        """The cursor of the page that ends with ``request``, in the order ``sort``."""
        if sort not in REQUEST_SORTS:
            raise ValueError(f"sort {sort!r} is not one of {', '.join(REQUEST_SORTS)}")
        at = request.expires_at if sort == "expiring" else request.created_at
        return cls(sort, at, request.id, request.risk_level)

    def text(self) -> str:
        """The cursor as a list's ``next`` text (``newest``: ``<created_at>~<id>``, as before)."""
        if self.sort == "expiring":
            return f"expiring~{iso(self.at)}~{self.id}"
        if self.sort == "risk":
            return f"risk~{self.risk.name}~{iso(self.at)}~{self.id}"
        return f"{iso(self.at)}~{self.id}"

    @classmethod
    def parse(cls, text: str, sort: str = "newest") -> ListCursor:
        """The cursor of a ``next`` text of a list in the order ``sort``.

        Raises:
            ValueError: ``text`` is no such cursor, or one of a list in another order.
        """
        parts = text.split("~")
        named = parts[0] if parts and parts[0] in REQUEST_SORTS else "newest"
        if named != sort:
            raise ValueError(
                f"the cursor is of a list sorted by {named}; ask with sort={named} or start over"
            )
        try:
            if sort == "risk" and len(parts) == 4 and parts[1] in RiskLevel.__members__:
                return cls(sort, parse_time(parts[2]), parts[3], RiskLevel[parts[1]])
            if sort == "expiring" and len(parts) == 3 and parts[2]:
                return cls(sort, parse_time(parts[1]), parts[2])
            if sort == "newest" and len(parts) == 2 and parts[1]:
                return cls(sort, parse_time(parts[0]), parts[1])
        except ValueError:
            pass
        raise ValueError("the cursor is not the 'next' value of an earlier page")
