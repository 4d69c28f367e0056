"""Notifications: tell people that an agent is waiting, without ever making it wait longer.

``aegis serve --webhook URL`` and ``--slack-webhook URL`` turn every approval
event (``approval.requested``, ``approval.decided``, ``approval.expired``,
``approval.cancelled``, and ``approval.withdrawn`` when a revocation takes
back an approval of a pending request) into an HTTP POST. Each receiver has its own queue
and delivery thread: :meth:`Notifications.publish` only appends the event to
the queues and returns, so a receiver that is slow, down or hanging delays
nothing but its own deliveries, never a request, a decision or another
receiver.

A webhook delivery is a JSON document::

    {"id": "evt_…", "type": "approval.requested", "created_at": "2026-…Z",
     "link": "https://aegis.example.com/requests/apr_…", "request": {…}}

with these headers:

``X-Aegis-Event``
    the event type;
``X-Aegis-Delivery``
    the event id, the same on every retry (deduplicate on it);
``X-Aegis-Signature``
    ``t=<unix seconds>,v2=<hex>``, where ``<hex>`` is HMAC-SHA256, keyed with
    the webhook secret, of the bytes ``<unix seconds>.<delivery id>.``
    followed by the raw request body: the delivery id receivers deduplicate
    on is signed too, so a replay cannot pass as a new delivery.

How a receiver verifies a delivery (what :func:`verify_signature` does):

1. read the raw body bytes, before any JSON parsing;
2. split the header on ``,`` into ``t`` and ``v2`` (ignore other keys);
3. compute HMAC-SHA256 with the shared secret over
   ``t + "." + X-Aegis-Delivery + "." + body`` and compare it with ``v2``
   in constant time (``hmac.compare_digest``);
4. refuse it when ``t`` is more than five minutes from the receiver's clock,
   so that a captured delivery cannot be replayed later; remember the
   ``X-Aegis-Delivery`` ids seen in that window to refuse a replay within it.

Every attempt is signed afresh with the time it is sent, so a retry an hour
later still verifies. A delivery is retried with exponential backoff (and
``Retry-After`` when the receiver sends one) on connection errors, timeouts,
``408``, ``429`` and ``5xx``; any other ``4xx`` is final. A delivery that
cannot be made is logged on the ``aegis.server.notify`` logger and dropped:
notifications are a courtesy, the approval service and its audit trail are
the record.

Slack: an incoming webhook receives a Block Kit message with the action,
risk, rule, agent and a button to the request page. Incoming webhooks cannot
edit a message once posted, so a decision, expiry or cancellation is posted
as a new message in the same channel saying who decided and the verdict.

Size: notifications are one subscriber of the service with its channels
(webhook, Slack) and their retry and signing; the channels share the receiver's
queue and the message builders.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import http.client
import json
import logging
import random
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from aegis.errors import ConfigurationError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from aegis.server.service import ApprovalEvent, ApprovalService

__all__ = [
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "DeliveryStats",
    "Notification",
    "Notifications",
    "sign_payload",
    "slack_message",
    "verify_signature",
]

logger = logging.getLogger("aegis.server.notify")

EVENT_TYPES: Final = (
    "approval.requested",
    "approval.decided",
    "approval.expired",
    "approval.cancelled",
    "approval.withdrawn",
)

SIGNATURE_HEADER: Final = "X-Aegis-Signature"

#: seconds queued events get to go out when the server stops
SHUTDOWN_DRAIN: Final = 2.0

#: how far a signature's timestamp may be from the receiver's clock
DEFAULT_TOLERANCE: Final = 300.0

#: statuses worth another attempt; every other 4xx means the receiver refuses it for good
_RETRY_STATUSES: Final = frozenset({408, 425, 429})

_USER_AGENT: Final = "aegis-notify/1"

#: bytes of a receiver's answer read (and ignored); the rest closes the connection
_MAX_ANSWER: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Notification:
    """One thing that happened to an approval request, as receivers get it.

    Args:
        type: one of :data:`EVENT_TYPES`.
        request: the request as the JSON API shows it (id, status, action,
            risk_level, matched_rule, requester, decisions, ...).
        link: the request's page in the inbox, or ``None`` without a public URL.
        reviewer: for ``approval.decided``, who just gave a verdict (with a
            two-person rule the request may still be pending after it).
        id: unique per event and stable across retries; receivers deduplicate on it.
        created_at: when the event happened (ISO 8601, UTC).
    """

    type: str
    request: Mapping[str, Any]
    link: str | None = None
    reviewer: str | None = None
    id: str = field(default_factory=lambda: f"evt_{secrets.token_hex(12)}")
    created_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds")
    )

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ConfigurationError(
                f"unknown approval event type {self.type!r}; "
                f"expected one of {', '.join(EVENT_TYPES)}"
            )

    def to_json(self) -> dict[str, Any]:
        """The webhook body as a JSON-ready dict."""
        return {
            "id": self.id,
            "type": self.type,
            "created_at": self.created_at,
            "link": self.link,
            "reviewer": self.reviewer,
            "request": dict(self.request),
        }


# ------------------------------------------------------------------ signatures


def _mac(secret: str | bytes, timestamp: str, delivery: str, body: bytes) -> str:
    key = secret.encode("utf-8", "surrogateescape") if isinstance(secret, str) else secret
    signed = timestamp.encode("ascii") + b"." + delivery.encode("ascii") + b"." + body
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def sign_payload(
    secret: str | bytes, body: bytes, delivery: str, *, timestamp: int | None = None
) -> str:
    """The ``X-Aegis-Signature`` value: ``t=<unix seconds>,v2=<hex HMAC-SHA256>``.

    The MAC covers the time, the delivery id (``X-Aegis-Delivery``, what
    receivers deduplicate on) and the body, so none can be changed alone.

    Example::

        sign_payload("s3cret", b'{"id": "evt_1"}', "evt_1", timestamp=1700000000)
        # 't=1700000000,v2=…'
    """
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return f"t={stamp},v2={_mac(secret, stamp, delivery, body)}"


def verify_signature(
    secret: str | bytes,
    body: bytes,
    header: str | None,
    delivery: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether ``header`` is a valid, fresh ``X-Aegis-Signature`` of ``delivery`` and ``body``.

    For receivers (and tests): ``body`` must be the raw bytes as received,
    ``delivery`` the ``X-Aegis-Delivery`` header. Anything malformed (a
    missing header or delivery id, non-ASCII or non-text values, a body
    that is not bytes), a wrong MAC, or a timestamp more than ``tolerance``
    seconds from ``now`` (default: the current time) is ``False``, never an
    exception.
    """
    if not isinstance(header, str) or not header.isascii():
        return False
    if not isinstance(delivery, str) or not delivery or not delivery.isascii():
        return False
    if not isinstance(body, bytes | bytearray | memoryview):
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    stamps = parts.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit() or len(stamps[0]) > 12:
        return False
    current = time.time() if now is None else now
    if abs(current - int(stamps[0])) > tolerance:
        return False
    try:
        expected = _mac(secret, stamps[0], delivery, bytes(body)).encode("ascii")
    except (TypeError, ValueError):  # a secret that is neither text nor bytes
        return False
    # any one v2 may match: lets a sender sign with an old and a new secret while rotating
    return any(hmac.compare_digest(expected, given.encode()) for given in parts.get("v2", []))


# ------------------------------------------------------------------ Slack


_RISK_EMOJI: Final = {
    "LOW": ":large_green_circle:",
    "MEDIUM": ":large_yellow_circle:",
    "HIGH": ":red_circle:",
    "CRITICAL": ":rotating_light:",
}

_SLACK_TEXT_LIMIT: Final = 2900  # a section's text may hold 3000 characters


def _slack_escape(value: object, limit: int = 300) -> str:
    # An agent wrote these words: Slack's three control characters are
    # escaped so that no <!channel>, <@user> or <url|label> can be formed.
    text = "" if value is None else str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _decision_summary(request: Mapping[str, Any]) -> tuple[str, str]:
    """(who, verdict) of a finished request, for the decided message."""
    decisions = request.get("decisions") or []
    status = str(request.get("status") or "")
    verdicts = [d for d in decisions if isinstance(d, Mapping)]
    deny = [d for d in verdicts if d.get("verdict") == "deny"]
    chosen = deny or verdicts
    who = ", ".join(str(d.get("reviewer_name") or d.get("reviewer") or "?") for d in chosen)
    comment = next((str(d["comment"]) for d in reversed(chosen) if d.get("comment")), "")
    verdict = {"approved": "Approved", "denied": "Denied"}.get(status, status.capitalize())
    return who, f"{verdict}{': ' + comment if comment else ''}"


def _slack_details(request: Mapping[str, Any], action: Mapping[str, Any]) -> str:
    """Why a person is asked (as the inbox says it) and the agent's words, marked as its own."""
    reason = request.get("reason")
    description = action.get("description")
    why = request.get("why")
    why = why if isinstance(why, Mapping) else {}
    conditions = [c for c in why.get("conditions") or [] if isinstance(c, str)]
    details = [
        f"*Why:* {_slack_escape(why.get('description'), 1000)}" if why.get("description") else "",
        # a condition names the agent's values: escaped like the rest it wrote
        "*Matched:* " + "; ".join(_slack_escape(c, 300) for c in conditions[:10])
        if conditions
        else "",
        f"*Reason:* {_slack_escape(reason, 1000)}" if reason else "",
        # the agent's claim, quoted and labelled as such, never as a fact of ours
        f"*Agent wrote:* \u201c{_slack_escape(description, 1000)}\u201d" if description else "",
    ]
    return "\n".join(d for d in details if d)


def _approvals(request: Mapping[str, Any]) -> int:
    """How many approvals a request's JSON holds."""
    return sum(
        1
        for d in request.get("decisions") or []
        if isinstance(d, Mapping) and d.get("verdict") == "approve"
    )


def slack_message(event: Notification) -> dict[str, Any]:
    """The Block Kit message an incoming Slack webhook receives for ``event``."""
    request = event.request
    raw_action = request.get("action")
    action: Mapping[str, Any] = raw_action if isinstance(raw_action, Mapping) else {}
    what = f"{_slack_escape(action.get('type'), 80)} on {_slack_escape(action.get('target'), 80)}"
    risk = str(request.get("risk_level") or "").upper()
    rule = _slack_escape(request.get("matched_rule") or "(no rule)", 120)
    agent = _slack_escape(request.get("requester") or "?", 80)
    request_id = _slack_escape(request.get("id"), 80)

    granted = event.type == "approval.requested" and request.get("status") != "pending"
    if granted:
        # filed already approved: a reviewer's grant covers it, nobody needs to act
        grant = _slack_escape(request.get("grant_id") or "a grant", 80)
        title = f"Approved by {grant}"
        text = f"{title}: {what} (risk {risk or '?'}, rule {rule})"
    elif event.type == "approval.requested":
        title = "Approval needed"
        text = f"Approval needed: {what} (risk {risk or '?'}, rule {rule})"
    elif event.type == "approval.decided" and request.get("status") == "pending":
        # one yes of several needed: say so, and that it still waits
        who = _slack_escape(event.reviewer or "a reviewer", 80)
        title = (
            f"Approved by {who}, {_approvals(request)} of {request.get('approvers', '?')} needed"
        )
        text = f"{title}: {what}"
    elif event.type == "approval.decided":
        who, verdict = _decision_summary(request)
        title = f"{verdict.split(':', 1)[0]} by {_slack_escape(who, 120)}"
        text = f"{title}: {what}"
        if ":" in verdict:
            text += f" ({_slack_escape(verdict.split(':', 1)[1].strip())})"
    elif event.type == "approval.withdrawn":
        # a revoked token's or person's approval stops counting: the request waits again
        who = _slack_escape(event.reviewer or "a reviewer", 80)
        title = (
            f"Approval by {who} withdrawn (revoked), "
            f"{_approvals(request)} of {request.get('approvers', '?')} left"
        )
        text = f"{title}: {what}"
    elif event.type == "approval.expired":
        title = "Expired without a decision"
        text = f"{title}: {what}"
    else:
        title = "Cancelled: the agent stopped waiting"
        text = f"{title}: {what}"

    fields = [
        {"type": "mrkdwn", "text": f"*Action*\n{what}"},
        {"type": "mrkdwn", "text": f"*Risk*\n{_RISK_EMOJI.get(risk, '')} {risk or '?'}".strip()},
        {"type": "mrkdwn", "text": f"*Rule*\n{rule}"},
        {"type": "mrkdwn", "text": f"*Agent*\n{agent}"},
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "fields": fields},
    ]
    detail_text = _slack_details(request, action)
    if detail_text:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": detail_text[:_SLACK_TEXT_LIMIT]}}
        )
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Request {request_id}"}]}
    )
    if event.link:
        asking = event.type == "approval.requested" and not granted
        label = "Review request" if asking else "Open request"
        button: dict[str, Any] = {
            "type": "button",
            "text": {"type": "plain_text", "text": label},
            "url": event.link,
            "action_id": "aegis_open_request",
        }
        if asking:
            button["style"] = "primary"
        blocks.append({"type": "actions", "elements": [button]})
    return {"text": text, "blocks": blocks}


# ------------------------------------------------------------------ delivery


@dataclass(slots=True)
class DeliveryStats:
    """Counters of one receiver's deliveries, for logs, health and tests."""

    delivered: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0


Render = Callable[[Notification], tuple[bytes, dict[str, str]]]


def _display_url(url: str) -> str:
    # Webhook URLs carry secrets in their path (Slack's always do): log the host only.
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}/…"


def _check_url(url: str, option: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigurationError(f"{option} {url!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018  # raises on a port that is not a number
    except ValueError as exc:  # urllib's own parse
        raise ConfigurationError(f"{option} {url!r}: {exc}") from None
    return url


class _Receiver(threading.Thread):
    """One receiver's queue and the thread that delivers it, oldest event first.

    Plain ``http.client`` on a kept-alive connection: a delivery costs the
    process a fraction of what an async client would, which matters because
    this thread shares the interpreter with the service it must not slow.
    """

    def __init__(self, kind: str, url: str, render: Render, owner: Notifications) -> None:
        super().__init__(name=f"aegis-notify-{kind}", daemon=True)
        self.kind = kind
        self.url = url
        self.render = render
        self.owner = owner
        self.stats = DeliveryStats()
        self.shown = f"{kind} {_display_url(url)}"
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        self._queue: collections.deque[Notification] = collections.deque()
        self._wake = threading.Condition()
        self._stop_at: float | None = None  # monotonic deadline once closing
        self._connection: http.client.HTTPConnection | None = None

    # ---------------------------------------------------------- the caller's side

    def put(self, event: Notification) -> None:
        with self._wake:
            if len(self._queue) >= self.owner.max_queue:
                dropped = self._queue.popleft()
                self.stats.dropped += 1
                if self.stats.dropped in (1, 10) or self.stats.dropped % 1000 == 0:
                    # one line now and then, not one per event: a dead receiver is no log flood
                    logger.warning(
                        "notifications: %s is %d events behind; dropped %d so far (the latest %s)",
                        self.shown,
                        self.owner.max_queue,
                        self.stats.dropped,
                        dropped.id,
                    )
            self._queue.append(event)
            self._wake.notify()

    def stop(self, deadline: float) -> None:
        with self._wake:
            self._stop_at = deadline
            self._wake.notify()

    # ---------------------------------------------------------- the thread

    def _stopped(self) -> bool:
        return self._stop_at is not None and time.monotonic() >= self._stop_at

    def _next(self) -> Notification | None:
        with self._wake:
            while not self._queue:
                if self._stop_at is not None:
                    return None
                self._wake.wait()
            if self._stopped():
                return None
            return self._queue.popleft()

    def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless closing cuts it short; ``False`` when it did."""
        end = time.monotonic() + seconds
        with self._wake:
            while True:
                limit = end if self._stop_at is None else min(end, self._stop_at)
                left = limit - time.monotonic()
                if left <= 0:
                    return not self._stopped()
                self._wake.wait(left)

    def run(self) -> None:
        try:
            while (event := self._next()) is not None:
                try:
                    self._deliver(event)
                except Exception:  # a bug must not end the thread; the event is logged and dropped
                    self.stats.failed += 1
                    logger.exception(
                        "notifications: could not deliver %s to %s", event.id, self.shown
                    )
        finally:
            self._disconnect()
            left = len(self._queue)
            if left:
                logger.warning(
                    "notifications: stopped with %d event(s) undelivered to %s", left, self.shown
                )

    def _deliver(self, event: Notification) -> None:
        owner = self.owner
        problem = ""
        for attempt in range(1, owner.attempts + 1):
            body, headers = self.render(event)  # signed afresh: the timestamp is this attempt's
            status, retry_after, problem = self._post(body, headers)
            if status is not None and 200 <= status < 300:
                self.stats.delivered += 1
                return
            if status is not None and status < 500 and status not in _RETRY_STATUSES:
                break  # the receiver refuses it for good
            if attempt == owner.attempts:
                break
            self.stats.retried += 1
            delay = min(owner.max_backoff, owner.backoff * 2 ** (attempt - 1))
            # jitter, so that receivers coming back are not stampeded by every sender at once
            delay *= 0.5 + random.random() / 2
            if retry_after is not None:
                delay = min(owner.max_backoff, max(delay, retry_after))
            logger.info(
                "notifications: %s attempt %d for %s failed (%s); retrying in %.1fs",
                self.shown,
                attempt,
                event.id,
                problem,
                delay,
            )
            if not self._pause(delay):
                problem += "; stopped before the next attempt"
                break
        self.stats.failed += 1
        logger.warning(
            "notifications: gave up delivering %s %s to %s: %s",
            event.type,
            event.id,
            self.shown,
            problem,
        )

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            timeout = self.owner.timeout
            if self._https:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=ssl.create_default_context()
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=timeout
                )
        return self._connection

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int | None, float | None, str]:
        """One attempt: ``(status, retry_after, problem)``; ``status`` is ``None`` on no answer."""
        for fresh in (False, True):
            reused = self._connection is not None
            connection = self._connect()
            try:
                connection.request("POST", self._target, body=body, headers=headers)
                response = connection.getresponse()
                response.read(_MAX_ANSWER)  # what is left unread closes the connection
                if not response.isclosed():
                    self._disconnect()
            except TimeoutError:
                self._disconnect()
                return None, None, f"no answer within {self.owner.timeout:g}s"
            except (OSError, http.client.HTTPException) as exc:
                self._disconnect()
                if reused and not fresh:
                    continue  # a kept-alive connection the receiver had closed: once more, anew
                return (
                    None,
                    None,
                    f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                )
            if response.will_close:
                self._disconnect()
            status = response.status
            return status, _retry_after(response.getheader("Retry-After")), f"HTTP {status}"
        return None, None, "no connection"  # pragma: no cover - the loop always returns


class Notifications:
    """Deliver approval events to webhooks and Slack, in the background.

    Each receiver has its own queue and thread; :meth:`publish` only appends
    to the queues, so it costs the caller microseconds whatever the receivers do.

    Args:
        webhooks: URLs that receive every event as signed JSON.
        secret: the HMAC key for ``X-Aegis-Signature``; required with ``webhooks``.
        slack_webhooks: Slack incoming-webhook URLs.
        public_url: the inbox's address as reviewers reach it (for links),
            e.g. ``https://aegis.example.com``; ``None`` sends no links.
        timeout: seconds to connect, and seconds each read or write may wait.
        attempts: how many times a delivery is tried before it is dropped.
        backoff: the first retry's delay in seconds; it doubles each time,
            with jitter, up to ``max_backoff``.
        max_queue: events waiting per receiver; past it the oldest is dropped.

    Example::

        notifications = Notifications(["https://hooks.example.com/aegis"], secret="s3cret",
                                      public_url="https://aegis.example.com")
        notifications.start()
        notifications.publish("approval.requested", request)   # returns at once
        notifications.close()
    """

    def __init__(
        self,
        webhooks: Sequence[str] = (),
        *,
        secret: str | None = None,
        slack_webhooks: Sequence[str] = (),
        public_url: str | None = None,
        timeout: float = 10.0,
        attempts: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        max_queue: int = 1000,
    ) -> None:
        if webhooks and not secret:
            raise ConfigurationError(
                "--webhook needs AEGIS_WEBHOOK_SECRET (or --webhook-secret-file PATH): "
                "receivers must be able to check that an event came from this server"
            )
        if attempts < 1:
            raise ConfigurationError(f"attempts must be at least 1, not {attempts}")
        if timeout <= 0 or backoff < 0 or max_backoff < backoff or max_queue < 1:
            raise ConfigurationError("timeout, backoff, max_backoff and max_queue must be positive")
        self._secret = secret or ""
        self._public_url = public_url.rstrip("/") if public_url else None
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_queue = max_queue
        self._receivers = [
            _Receiver("webhook", _check_url(url, "--webhook"), self._render_webhook, self)
            for url in webhooks
        ] + [
            _Receiver("slack", _check_url(url, "--slack-webhook"), self._render_slack, self)
            for url in slack_webhooks
        ]
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    # -------------------------------------------------------------- public

    @property
    def enabled(self) -> bool:
        """Whether there is any receiver at all."""
        return bool(self._receivers)

    @property
    def stats(self) -> list[tuple[str, DeliveryStats]]:
        """Delivery counters per receiver, in order: ``("webhook http://host/…", stats)``."""
        return [(receiver.shown, receiver.stats) for receiver in self._receivers]

    def link(self, request_id: str) -> str | None:
        """The inbox page of a request, or ``None`` without a public URL."""
        if self._public_url is None:
            return None
        return f"{self._public_url}/requests/{urllib.parse.quote(request_id, safe='')}"

    def start(self) -> None:
        """Start the delivery threads (once); a no-op without receivers."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            for receiver in self._receivers:
                receiver.start()

    def publish(
        self, event_type: str, request: Mapping[str, Any], *, reviewer: str | None = None
    ) -> Notification | None:
        """Queue ``event_type`` about ``request`` for every receiver and return at once.

        Safe from any thread. Returns the event (``None`` when there is no
        receiver, or after :meth:`close`). Never raises for a receiver's sake.
        """
        if not self._receivers or self._closed:
            return None
        if not self._started:
            self.start()
        request_id = str(request.get("id", ""))
        event = Notification(
            event_type, dict(request), link=self.link(request_id), reviewer=reviewer
        )
        for receiver in self._receivers:
            receiver.put(event)
        return event

    def attach(self, service: ApprovalService) -> Callable[[], None]:
        """Publish the service's request events from now on; return the function that stops it.

        Collections and grant revocations are not notified: nobody needs to act on them.
        """

        def forward(event: ApprovalEvent) -> None:
            if event.kind in EVENT_TYPES and event.request is not None:
                self.publish(event.kind, event.request.to_json(), reviewer=event.reviewer)

        return service.subscribe(forward)

    async def startup(self, app: Starlette) -> asyncio.Task[None] | None:
        """A ``create_app(on_startup=[...])`` hook: start, attach to the app's service.

        The task it returns lives as long as the app; cancelled at shutdown,
        it detaches and gives queued events a few seconds to go out.
        """
        if not self.enabled:
            return None
        self.start()
        detach = self.attach(app.state.service)

        async def live() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                detach()
                await asyncio.to_thread(self.close, SHUTDOWN_DRAIN)

        return asyncio.create_task(live(), name="aegis-notify")

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then stop."""
        with self._lock:
            self._closed = True
            started = self._started
        if not started:
            return
        deadline = time.monotonic() + max(0.0, timeout)
        for receiver in self._receivers:
            receiver.stop(deadline)
        for receiver in self._receivers:
            # A delivery still in flight at the deadline is left to its socket
            # timeout on its daemon thread, which then ends: closing never waits
            # longer than asked, however many receivers hang.
            receiver.join(max(0.0, deadline - time.monotonic()))

    # -------------------------------------------------------------- bodies

    def _render_webhook(self, event: Notification) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(event.to_json(), separators=(",", ":"), ensure_ascii=False).encode()
        return body, {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            "X-Aegis-Event": event.type,
            "X-Aegis-Delivery": event.id,
            SIGNATURE_HEADER: sign_payload(self._secret, body, event.id),
        }

    def _render_slack(self, event: Notification) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(slack_message(event), ensure_ascii=False).encode()
        return body, {"Content-Type": "application/json", "User-Agent": _USER_AGENT}


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the exponential delay is good enough
    return seconds if seconds >= 0 else None
