"""The one HTTP client of the approval service's API (``aegis serve``, ``/api/v1``).

:class:`ApprovalClient` is what everything that talks to the service uses:
:class:`~aegis.runtime.approval_remote.RemoteApprovalHandler` (ask and wait
in one call), the framework adapters' suspended runs (ask now, collect
later) and ``aegis approvals`` on the command line::

    client = ApprovalClient("http://127.0.0.1:8700", token=token)
    request = await client.create(body)                 # an agent asks
    request = await client.wait(request["id"], 30)      # a long poll
    await client.decide(request["id"], "approve")       # a reviewer decides

Its rules, the same for all three:

- **a refusal is final**: any 4xx answer (a refused token, a malformed
  request, a 404) raises :class:`~aegis.errors.ApprovalServiceError` at once,
  with the service's status, code and message; it is never retried;
- **an outage is ridden out, up to a deadline**: connection errors, 429
  and 502-504 are retried with jittered backoff until ``deadline`` (a time
  of the event loop's clock), then :class:`Unreachable` (status 503) says
  why; without a deadline a call is tried once;
- answers that are not JSON objects are an error (``bad_answer``), so
  nothing half-read is ever taken for an approval.

:meth:`ApprovalClient.mismatch` checks that a request the service returned
is for exactly the action asked about (the digests) and under terms no
weaker than asked (approvers, reviewer groups).

Needs the ``server`` extra (for httpx): ``pip install "aegis-runtime[server]"``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import urllib.parse
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, Self

from aegis.core.action import Action, action_digest
from aegis.core.approval_request import action_from_json, groups_within, request_digest
from aegis.errors import ApprovalServiceError

try:
    import httpx
except ImportError as exc:  # pragma: no cover  # CI installs every extra
    raise ImportError(
        'the approval client needs the server extra: pip install "aegis-runtime[server]"'
    ) from exc

__all__ = ["ApprovalClient", "Unreachable"]

_log = logging.getLogger("aegis.client")

#: statuses worth retrying: the service restarts, its database is busy, or it asks to slow down
RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})


class Unreachable(ApprovalServiceError):
    """The service could not be reached (or stayed unavailable) until the deadline."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=503, code="unreachable")


class ApprovalClient:
    """An HTTP client of the approval API, with one token.

    Args:
        url: the service's base URL, e.g. ``"http://127.0.0.1:8700"``.
        token: the bearer token (an agent's or a reviewer's).
        transport: an httpx transport (``httpx.ASGITransport(app)`` for an
            in-process service, ``httpx.MockTransport`` in tests).
        verify: TLS verification: ``True``, a CA bundle path or an
            ``ssl.SSLContext``.
        timeout: seconds to connect, send and read one ordinary answer.

    A client belongs to the event loop it is first used in; used from
    another loop, it opens a fresh connection pool there.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str | ssl.SSLContext = True,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self._token = token
        self._transport = transport
        self._verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self._http_client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"ApprovalClient({self.url!r})"

    def inbox_link(self, request_id: str) -> str:
        """The inbox page of a request, where a reviewer decides it."""
        return f"{self.url}/requests/{urllib.parse.quote(request_id, safe='')}"

    # -- plumbing -------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._http_client
        if client is None or self._loop is not loop or client.is_closed:
            client = self._http_client = httpx.AsyncClient(
                base_url=self.url,
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "Accept": "application/json",
                },
                transport=self._transport,
                verify=self._verify,
                timeout=httpx.Timeout(self.timeout),
                follow_redirects=False,
            )
            self._loop = loop
        return client

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._http_client is not None:
            await self._http_client.aclose()
            self._http_client = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        deadline: float | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
        read_timeout: float | None = None,
    ) -> dict[str, Any]:
        """One API call; the answer's JSON object.

        Retried while the service is unreachable until ``deadline`` (the
        loop's clock; ``None``: one try).

        Raises:
            ApprovalServiceError: a 4xx (at once) or a 5xx the service meant.
            Unreachable: no usable answer until the deadline.
        """
        loop = asyncio.get_running_loop()
        delay = 0.05
        read = self.timeout if read_timeout is None else read_timeout
        while True:
            try:
                response = await self._http().request(
                    method,
                    path,
                    json=json,
                    params=params,
                    timeout=httpx.Timeout(self.timeout, read=read),
                )
            except httpx.InvalidURL:
                raise
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                pause = delay
            else:
                if response.status_code not in RETRY_STATUSES:
                    return self._json(response)
                why = f"HTTP {response.status_code}"
                pause = _retry_after(response.headers.get("retry-after")) or delay
            remaining = (deadline - loop.time()) if deadline is not None else 0.0
            if remaining <= 0:
                raise Unreachable(f"the approval service at {self.url} did not answer ({why})")
            _log.info("approval service unavailable (%s); retrying in %.2fs", why, pause)
            await asyncio.sleep(min(pause, remaining))
            delay = min(delay * 2, 2.0) * random.uniform(0.8, 1.2)  # jitter, not crypto

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and isinstance(body, dict):
            return body
        found = body.get("error") if isinstance(body, dict) else None
        if not isinstance(found, dict):
            raise ApprovalServiceError(
                f"{response.request.url} answered HTTP {response.status_code} with something "
                "that is not a JSON object of the approval API; is it an Aegis approval service?",
                status=response.status_code if not response.is_success else 502,
                code="bad_answer",
            )
        raise ApprovalServiceError(
            str(found.get("message") or response.reason_phrase),
            status=response.status_code,
            code=str(found.get("code") or "refused"),
        )

    # -- the API --------------------------------------------------------------------

    async def create(
        self, body: dict[str, Any], *, deadline: float | None = None
    ) -> dict[str, Any]:
        """``POST /api/v1/approvals``: ask (agent token); the stored or re-attached request."""
        return await self.call("POST", "/api/v1/approvals", deadline=deadline, json=body)

    async def get(self, request_id: str, *, deadline: float | None = None) -> dict[str, Any]:
        """``GET /api/v1/approvals/{id}``: the request as it stands."""
        return await self.call("GET", _path(request_id), deadline=deadline)

    async def wait(
        self, request_id: str, seconds: float, *, deadline: float | None = None
    ) -> dict[str, Any]:
        """``GET /api/v1/approvals/{id}/wait``: a long poll of up to ``seconds``."""
        return await self.call(
            "GET",
            _path(request_id, "wait"),
            deadline=deadline,
            params={"timeout": f"{seconds:.3f}"},
            read_timeout=seconds + self.timeout,
        )

    async def collect(self, request_id: str, *, deadline: float | None = None) -> dict[str, Any]:
        """``POST /api/v1/approvals/{id}/collect``: use an approval, once."""
        return await self.call("POST", _path(request_id, "collect"), deadline=deadline)

    async def cancel(self, request_id: str, reason: str) -> None:
        """Cancel a request; best effort, a few seconds at most, never raises."""
        loop = asyncio.get_running_loop()
        try:
            await self.call(
                "POST",
                _path(request_id, "cancel"),
                deadline=loop.time() + 5.0,
                json={"reason": reason[:1000]},
            )
        except ApprovalServiceError as exc:
            if exc.status != 409:  # 409: decided or cancelled already, nothing to do
                _log.warning("could not cancel approval request %s: %s", request_id, exc)
        except Exception as exc:
            _log.warning("could not cancel approval request %s: %s", request_id, exc)

    async def decide(
        self,
        request_id: str,
        verdict: str,
        *,
        comment: str | None = None,
        grant_minutes: int | None = None,
    ) -> dict[str, Any]:
        """``POST /api/v1/approvals/{id}/decision`` (reviewer token)."""
        body: dict[str, Any] = {"verdict": verdict}
        if comment:
            body["comment"] = comment
        if grant_minutes is not None:
            body["grant_minutes"] = grant_minutes
        return await self.call("POST", _path(request_id, "decision"), json=body)

    async def list_requests(
        self,
        status: str = "pending",
        *,
        limit: int | None = None,
        before: str | None = None,
        agent: str | None = None,
        risk: str | Sequence[str] | None = None,
        rule: str | None = None,
        sort: str | None = None,
    ) -> dict[str, Any]:
        """``GET /api/v1/approvals``: a page of requests, how many more, and the total.

        The service filters and sorts: ``agent`` keeps only the requests of
        that agent (its token's name), ``risk`` those of these levels
        (``"high"`` or ``["high", "critical"]``), ``rule`` those of that
        rule; ``sort`` is ``newest`` (default), ``expiring`` or ``risk``.
        ``before`` is the ``next`` of the page before, asked with the same
        sort. A value the service does not take is a 422 naming it.
        """
        params: dict[str, Any] = {"status": status}
        if agent:
            params["requester"] = agent
        if risk:
            params["risk"] = risk if isinstance(risk, str) else ",".join(risk)
        if rule:
            params["rule"] = rule
        if sort:
            params["sort"] = sort
        if limit is not None:
            params["limit"] = limit
        if before:
            params["before"] = before
        return await self.call("GET", "/api/v1/approvals", params=params)

    # -- checks ---------------------------------------------------------------------

    @staticmethod
    def mismatch(
        request: dict[str, Any],
        action: Action,
        *,
        approvers: int = 1,
        reviewers: Sequence[str] = (),
    ) -> str | None:
        """Why the service's ``request`` is not the one asked for, or ``None`` if it is.

        It must be for exactly ``action`` (its digests, recomputed here) and
        ask no less than ``approvers`` from within ``reviewers``: a service
        that lowered the terms is not trusted with the answer.
        """
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
        given = request.get("approvers", 1)
        groups = request.get("reviewers") or []
        if (
            isinstance(given, bool)
            or not isinstance(given, int)
            or given < approvers
            or not isinstance(groups, list)
            or not groups_within([str(g) for g in groups], list(reviewers))
        ):
            return (
                f"the service's request asks less than the policy ({given} approver(s) from "
                f"{groups or 'any group'}; the policy asks {approvers} from "
                f"{list(reviewers) or 'any group'})"
            )
        return None


def _path(request_id: str, *rest: str) -> str:
    return "/".join(["/api/v1/approvals", urllib.parse.quote(request_id, safe=""), *rest])


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(seconds, 30.0) if seconds >= 0 else None
