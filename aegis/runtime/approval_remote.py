"""Ask the approval service (``aegis serve``) and wait for reviewers.

:class:`RemoteApprovalHandler` opens an approval request for each action the
policy marks ``approve``, waits for the reviewers with long polls, and
answers an :class:`~aegis.core.outcome.ApprovalOutcome` naming them::

    handler = RemoteApprovalHandler("http://127.0.0.1:8700", token=token, timeout=900)
    async with Runtime(executor=crm, policy=policy, approval_handler=handler) as rt:
        result = await rt.run_one(Action("refund", "billing", {"amount": 900}))

When a request is filed it says so once (on stderr, or to ``announce``):
the request id and the inbox page where a reviewer decides it.

It fails closed everywhere, and fast where waiting cannot help: a service
that refuses (a token it does not know, a request it calls malformed: any
4xx) or cannot be reached when asking (``unreachable_after`` seconds) denies
at once with the reason. A denial, an expiry, a cancellation, an answer for
another action (a digest that does not match) or under weaker terms than
the policy's, an approval used already, or no answer within ``timeout``
all deny. While waiting, a service restart or a dropped connection is
ridden out: the handler retries with backoff on the same request id until
its ``timeout``. When it gives up, it cancels the request on the service,
so a late click approves nothing.

All HTTP goes through :class:`~aegis.client.ApprovalClient`, the one client
of the approval API. Needs the ``server`` extra (for httpx):
``pip install "aegis-runtime[server]"``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self

from aegis.client import ApprovalClient, Unreachable
from aegis.core.action import action_digest
from aegis.core.approval_request import action_from_json, action_to_json
from aegis.core.decision import PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.errors import ApprovalServiceError, ConfigurationError
from aegis.runtime.approval import ApprovalHandler

try:
    import httpx
except ImportError as exc:  # pragma: no cover  # CI installs every extra
    raise ImportError(
        'RemoteApprovalHandler needs the server extra: pip install "aegis-runtime[server]"'
    ) from exc

__all__ = ["RemoteApprovalHandler"]

_log = logging.getLogger("aegis.runtime.approval_remote")

#: the longest long poll the service grants
_MAX_POLL: Final = 60.0
#: the shortest time between two long polls
_MIN_POLL: Final = 0.05


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class RemoteApprovalHandler(ApprovalHandler):
    """An approval handler that asks reviewers through the approval service.

    Args:
        url: the service's base URL, e.g. ``"http://127.0.0.1:8700"``.
        token: an ``agent`` token (``aegis token create NAME --role agent``);
            ``$AEGIS_TOKEN`` when omitted.
        timeout: seconds to wait for a decision before giving up (denied,
            and the request cancelled on the service).
        session_id: the session requests are filed under; a Runtime that
            adopts the handler sets its own when this is ``None``. The
            same session and action re-attach to a pending request, so an
            agent restarted with its session id picks up where it was.
        poll: seconds of each long poll (at most 60).
        transport: an httpx transport, e.g. ``httpx.ASGITransport(app)``
            to talk to an in-process service in tests.
        verify: TLS verification: ``True`` (the system's CAs), a CA bundle
            path (for a service with its own certificate), or an
            ``ssl.SSLContext``. Never turn it off for a real service.
        announce: called once per filed request with a line naming the
            request id and its inbox page; stderr by default, ``None`` for
            silence (it is logged at INFO on ``aegis.runtime.approval_remote``
            either way), ``logging.getLogger(...).warning`` to log it.
        unreachable_after: seconds to keep trying to file a request while
            the service cannot be reached, before denying with the reason.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 900.0,
        session_id: str | None = None,
        poll: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str | ssl.SSLContext = True,
        announce: Callable[[str], object] | None = _to_stderr,
        unreachable_after: float = 5.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"url must be the service's http:// or https:// address, got {url!r}"
            )
        token = token if token is not None else os.environ.get("AEGIS_TOKEN")
        if not token:
            raise ConfigurationError(
                "RemoteApprovalHandler needs an agent token: pass token=... or set AEGIS_TOKEN "
                "(create one with `aegis token create NAME --role agent`)"
            )
        if not timeout > 0:
            raise ConfigurationError(
                f"timeout must be a positive number of seconds, got {timeout!r}"
            )
        if not 0 < poll <= _MAX_POLL:
            raise ConfigurationError(
                f"poll must be between 0 and {_MAX_POLL:g} seconds, got {poll!r}"
            )
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.session_id = session_id
        self.poll = float(poll)
        self.announce = announce
        self.unreachable_after = float(unreachable_after)
        self.client = ApprovalClient(self.url, token=token, transport=transport, verify=verify)
        self._background: set[asyncio.Task[Any]] = set()
        self._fallback_session = uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"RemoteApprovalHandler({self.url!r}, timeout={self.timeout:g})"

    def bind_session(self, session_id: str) -> None:
        """Use ``session_id`` unless one was given; the Runtime calls this."""
        if self.session_id is None:
            self.session_id = session_id

    async def aclose(self) -> None:
        """Close the HTTP client (cancellations still in flight finish first)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- asking -------------------------------------------------------------------

    def request_body(self, decision: PolicyDecision) -> dict[str, Any]:
        """The body of ``POST /api/v1/approvals`` asking about ``decision``."""
        body: dict[str, Any] = {
            "session_id": self.session_id or self._fallback_session,
            "action": action_to_json(decision.action),
            "risk_level": decision.risk_level.name.lower(),
            "matched_rule": decision.matched_rule,
            "reason": decision.reason,
            "approvers": getattr(decision, "approvers", 1),
            "reviewers": list(getattr(decision, "reviewers", ())),
        }
        ttl = getattr(decision, "approval_ttl", None)
        if ttl is not None:
            body["approval_ttl"] = ttl
        why = getattr(decision, "why", None)
        if why is not None:
            body["why"] = why.to_json()
        return body

    def mismatch(self, request: dict[str, Any], decision: PolicyDecision) -> str | None:
        """Why the service's request is not the one ``decision`` asks for, or ``None``."""
        return self.client.mismatch(
            request,
            decision.action,
            approvers=getattr(decision, "approvers", 1),
            reviewers=tuple(getattr(decision, "reviewers", ())),
        )

    async def file(self, decision: PolicyDecision, deadline: float) -> dict[str, Any]:
        """File (or re-attach to) the request for ``decision``; checked and announced.

        Raises:
            ApprovalServiceError: refused (4xx), unreachable for
                ``unreachable_after`` seconds (:class:`~aegis.client.Unreachable`),
                or an answer for another action or weaker terms (502; the
                request is cancelled).
        """
        loop = asyncio.get_running_loop()
        soon = min(deadline, loop.time() + self.unreachable_after)
        request = await self.client.create(self.request_body(decision), deadline=soon)
        request_id = str(request.get("id"))
        problem = self.mismatch(request, decision)
        if problem is not None:
            await self.client.cancel(request_id, f"refused by the agent: {problem}")
            raise ApprovalServiceError(problem, status=502, code="mismatch")
        action = decision.action
        line = (
            f"aegis: approval needed for {action.type} -> {action.target}: request "
            f"{request_id}, decide at {self.client.inbox_link(request_id)}"
        )
        _log.info("%s", line)
        if self.announce is not None:
            try:
                self.announce(line)
            except Exception:
                _log.exception("the announce callback failed")
        return request

    async def request_approval(self, decision: PolicyDecision) -> ApprovalOutcome:
        """Open a request for ``decision.action`` and wait for the reviewers' verdict."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            request = await self.file(decision, deadline)
        except ApprovalServiceError as exc:
            # Waiting cannot help: say why, at once.
            why = (
                str(exc)
                if isinstance(exc, Unreachable) or exc.code == "mismatch"
                else f"the approval service refused ({exc.status} {exc.code}): {exc}"
            )
            _log.error("approval not asked for %s: %s", decision.action.type, why)
            return ApprovalOutcome(False, reason=why)
        request_id = str(request.get("id"))
        try:
            return await self.follow(request, decision, deadline)
        except asyncio.CancelledError:
            # Our caller gave up (the runtime's approval_timeout, a shutdown):
            # cancel on the service in the background, it must not approve later.
            task = loop.create_task(self.client.cancel(request_id, "the agent stopped waiting"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise

    async def follow(
        self, request: dict[str, Any], decision: PolicyDecision, deadline: float
    ) -> ApprovalOutcome:
        """Wait until ``request`` is decided (or ``deadline``) and settle it.

        Giving up cancels the request on the service; so does any failure,
        since a reviewer's late yes must not leave an approval nobody waits for.
        """
        loop = asyncio.get_running_loop()
        request_id = str(request.get("id"))
        try:
            while request.get("status") == "pending":
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise Unreachable(f"no decision within {self.timeout:g}s")
                wait = min(self.poll, remaining)
                asked_at = loop.time()
                request = await self.client.wait(request_id, wait, deadline=deadline)
                if request.get("status") == "pending" and loop.time() - asked_at < _MIN_POLL:
                    # A service that answers "pending" at once must not make us spin.
                    await asyncio.sleep(_MIN_POLL)
            return await self._settle(request, decision, deadline)
        except Unreachable as exc:
            await self.client.cancel(request_id, f"the agent stopped waiting: {exc}")
            return ApprovalOutcome(False, reason=f"{exc}; request cancelled", request_id=request_id)
        except Exception as exc:
            await self.client.cancel(request_id, f"the agent stopped waiting: {exc}")
            raise

    async def _settle(
        self, request: dict[str, Any], decision: PolicyDecision, deadline: float
    ) -> ApprovalOutcome:
        """The outcome of a request that is no longer pending."""
        request_id = str(request.get("id"))
        status = request.get("status")
        decisions = [d for d in request.get("decisions") or [] if isinstance(d, dict)]
        if status == "approved":
            try:
                request = await self.client.collect(request_id, deadline=deadline + 5.0)
            except ApprovalServiceError as exc:
                return ApprovalOutcome(
                    False, reason=f"the approval could not be used: {exc}", request_id=request_id
                )
            problem = self.mismatch(request, decision)
            if problem is not None or request.get("status") != "approved":
                return ApprovalOutcome(
                    False, reason=problem or "the approval was withdrawn", request_id=request_id
                )
            approvals = [d for d in decisions if d.get("verdict") == "approve"]
            grant = request.get("grant_id")
            reviewers = (
                tuple(str(n) for n in request.get("grant_by") or ())
                if grant
                else tuple(str(d.get("reviewer")) for d in approvals)
            )
            comments = [str(d["comment"]) for d in approvals if d.get("comment")]
            return ApprovalOutcome(
                True,
                reviewers=reviewers,
                comment="; ".join(comments) or None,
                request_id=request_id,
                grant=str(grant) if grant else None,
                digest=action_digest(action_from_json(request.get("action"))),
            )
        if status == "denied":
            deniers = [d for d in decisions if d.get("verdict") == "deny"]
            return ApprovalOutcome(
                False,
                reviewers=tuple(str(d.get("reviewer")) for d in deniers),
                comment="; ".join(str(d["comment"]) for d in deniers if d.get("comment")) or None,
                request_id=request_id,
            )
        if status == "expired":
            return ApprovalOutcome(
                False, reason="the request expired without a decision", request_id=request_id
            )
        why = request.get("status_reason") or status
        return ApprovalOutcome(
            False, reason=f"the request was {status}: {why}", request_id=request_id
        )
