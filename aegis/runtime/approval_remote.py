"""Ask the approval service (``aegis serve``) and wait for reviewers.

:class:`RemoteApprovalHandler` opens an approval request for each action the
policy marks ``approve``, waits for the reviewers with long polls, and
answers an :class:`~aegis.core.outcome.ApprovalOutcome` naming them::

    handler = RemoteApprovalHandler("http://127.0.0.1:8700", token=token, timeout=900)
    async with Runtime(executor=crm, policy=policy, approval_handler=handler) as rt:
        result = await rt.run_one(Action("refund", "billing", {"amount": 900}))

It fails closed everywhere: a denial, an expiry, a cancellation, a service
that refuses the token, an answer for another action (a digest that does not
match), an approval used already, or no answer within ``timeout`` all deny.
A service restart or a dropped connection is ridden out: the handler retries
with backoff on the same request id until its ``timeout``. When it gives up,
it cancels the request on the service, so a late click approves nothing.

Needs the ``server`` extra (for httpx): ``pip install "aegis-runtime[server]"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import uuid
from types import TracebackType
from typing import Any, Final, Self

from aegis.core.action import Action, action_digest
from aegis.core.approval_request import action_from_json, action_to_json, request_digest
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

#: statuses worth retrying: the service restarts, or its database is busy
_RETRY: Final = frozenset({502, 503, 504})
#: the longest long poll the service grants
_MAX_POLL: Final = 60.0
#: the shortest time between two long polls
_MIN_POLL: Final = 0.05


class _GaveUp(Exception):
    """The handler's own timeout passed while the service could not be reached."""


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
        self._token = token
        self._transport = transport
        self._verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._fallback_session = uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"RemoteApprovalHandler({self.url!r}, timeout={self.timeout:g})"

    def bind_session(self, session_id: str) -> None:
        """Use ``session_id`` unless one was given; the Runtime calls this."""
        if self.session_id is None:
            self.session_id = session_id

    # -- the HTTP client ----------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._client.is_closed:
            # A client belongs to one event loop; a handler may outlive several.
            self._client = httpx.AsyncClient(
                base_url=self.url,
                headers={"Authorization": f"Bearer {self._token}"},
                transport=self._transport,
                verify=self._verify,
                timeout=httpx.Timeout(10.0),
                follow_redirects=False,
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client (cancellations still in flight finish first)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        deadline: float,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        read_timeout: float = 10.0,
    ) -> httpx.Response:
        """One call, retried with backoff while the service is unreachable, until ``deadline``."""
        loop = asyncio.get_running_loop()
        delay = 0.05
        while True:
            try:
                response = await self._http().request(
                    method,
                    path,
                    json=json,
                    params=params,
                    timeout=httpx.Timeout(10.0, read=read_timeout),
                )
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code not in _RETRY:
                    return response
                why = f"HTTP {response.status_code}"
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _GaveUp(f"the approval service at {self.url} did not answer ({why})")
            _log.info("approval service unreachable (%s); retrying in %.2fs", why, delay)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0) * random.uniform(0.8, 1.2)  # jitter, not crypto

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ApprovalServiceError(
                f"the approval service answered HTTP {response.status_code} with something "
                "that is not a JSON object",
                status=502,
                code="bad_answer",
            )
        if response.is_success:
            return body
        found = body.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        raise ApprovalServiceError(
            f"the approval service refused: {error.get('message') or response.reason_phrase}",
            status=response.status_code,
            code=str(error.get("code") or "refused"),
        )

    # -- asking -------------------------------------------------------------------

    def _request_body(self, decision: PolicyDecision) -> dict[str, Any]:
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
        return body

    async def request_approval(self, decision: PolicyDecision) -> ApprovalOutcome:
        """Open a request for ``decision.action`` and wait for the reviewers' verdict."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        action = decision.action
        body = self._request_body(decision)
        request_id: str | None = None
        try:
            try:
                request = self._json(
                    await self._send("POST", "/api/v1/approvals", deadline, json=body)
                )
                request_id = str(request.get("id"))
                problem = self._mismatch(request, action)
                if problem is not None:
                    await self._cancel(request_id, f"refused by the agent: {problem}")
                    return ApprovalOutcome(False, reason=problem, request_id=request_id)
                while request.get("status") == "pending":
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise _GaveUp(f"no decision within {self.timeout:g}s")
                    wait = min(self.poll, remaining)
                    asked_at = loop.time()
                    response = await self._send(
                        "GET",
                        f"/api/v1/approvals/{request_id}/wait",
                        deadline,
                        params={"timeout": f"{wait:.3f}"},
                        read_timeout=wait + 10.0,
                    )
                    request = self._json(response)
                    pending = request.get("status") == "pending"
                    if pending and loop.time() - asked_at < _MIN_POLL:
                        # A service that answers "pending" at once must not make us spin.
                        await asyncio.sleep(_MIN_POLL)
                return await self._settle(request, action, deadline)
            except _GaveUp as exc:
                reason = str(exc)
                if request_id is not None:
                    reason += "; request cancelled"
                    await self._cancel(request_id, f"the agent stopped waiting: {exc}")
                return ApprovalOutcome(False, reason=reason, request_id=request_id)
            except Exception as exc:
                # The runtime denies (the handler failed); a reviewer's late
                # yes must not leave an approval that nobody waits for.
                if request_id is not None:
                    await self._cancel(request_id, f"the agent stopped waiting: {exc}")
                raise
        except asyncio.CancelledError:
            if request_id is not None:
                # Our caller gave up (the runtime's approval_timeout, a shutdown):
                # cancel on the service in the background, it must not approve later.
                task = loop.create_task(self._cancel(request_id, "the agent stopped waiting"))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            raise

    def _mismatch(self, request: dict[str, Any], action: Action) -> str | None:
        """Why the service's request is not for ``action``, or ``None`` if it is."""
        local = action_digest(action)
        try:
            theirs = action_from_json(request.get("action"))
        except ValueError as exc:
            return f"the service returned an unreadable action ({exc})"
        requester = request.get("requester")
        if (
            request.get("action_digest") != local
            or action_digest(theirs) != local
            or not isinstance(requester, str)
            or request.get("digest") != request_digest(action, requester)
        ):
            return "the service's request is for a different action (digest mismatch)"
        return None

    async def _settle(
        self, request: dict[str, Any], action: Action, deadline: float
    ) -> ApprovalOutcome:
        """The outcome of a request that is no longer pending."""
        request_id = str(request.get("id"))
        status = request.get("status")
        decisions = [d for d in request.get("decisions") or [] if isinstance(d, dict)]
        if status == "approved":
            try:
                request = self._json(
                    await self._send(
                        "POST", f"/api/v1/approvals/{request_id}/collect", deadline + 5.0
                    )
                )
            except ApprovalServiceError as exc:
                return ApprovalOutcome(
                    False, reason=f"the approval could not be used: {exc}", request_id=request_id
                )
            problem = self._mismatch(request, action)
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

    async def _cancel(self, request_id: str, reason: str) -> None:
        """Cancel a request on the service; best effort, a few seconds at most."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            response = await self._send(
                "POST",
                f"/api/v1/approvals/{request_id}/cancel",
                loop.time() + 5.0,
                json={"reason": reason[:1000]},
            )
            if not response.is_success and response.status_code != 409:
                _log.warning(
                    "could not cancel approval request %s: HTTP %s",
                    request_id,
                    response.status_code,
                )
