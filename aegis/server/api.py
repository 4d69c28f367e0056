"""The JSON API under ``/api/v1``: thin handlers over the approval service.

Each handler reads the bearer token and the input, calls the service, and
turns the answer into JSON. Every failure is a JSON error with a status code,
``{"error": {"status": 409, "code": "not_pending", "message": "..."}}``,
never an HTML page or a traceback: the service's refusals keep their status
(401, 403, 404, 409, 422), a database that is locked, read-only or
unreachable is a 503 the client may retry, and anything unexpected a 500
whose details go to the server's log only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aegis.core.approval_request import (
    REQUEST_SORTS,
    ListCursor,
    Role,
    Verdict,
    parse_new_request,
)
from aegis.core.filters import SHORT_NAMES
from aegis.core.risk import RiskLevel
from aegis.errors import AegisError, ApprovalServiceError, AuditError
from aegis.server.bounds import DEFAULT_READ_TIMEOUT, read_within
from aegis.server.openapi import openapi_document
from aegis.server.service import ApprovalService, Principal, statuses

__all__ = [
    "MAX_BODY",
    "api_routes",
    "authenticated",
    "error_response",
    "request_sort",
    "risk_levels",
    "unstorable_text",
]

_log = logging.getLogger("aegis.server")

#: the largest request body the API reads, in bytes
MAX_BODY: Final = 64 * 1024

Handler = Callable[[Request], Awaitable[Response]]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


class JSONAnswer(JSONResponse):
    """A JSON answer that stays valid JSON whatever a stored row holds.

    The door refuses non-finite numbers, but a row written before it did
    (or edited by hand) may hold one; it is shown as the string
    ``"Infinity"`` instead of failing the whole list with a 500.
    """

    def render(self, content: Any) -> bytes:
        """Encode ``content``; non-finite floats become strings."""
        try:
            return super().render(content)
        except ValueError:
            return super().render(_finite(content))


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The JSON error every failure of the API answers with."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONAnswer(
        {"error": {"status": status, "code": code, "message": message}},
        status_code=status,
        headers=headers,
    )


async def authenticated(
    request: Request, roles: tuple[Role, ...], doing: str, hint: str = ""
) -> Response | None:
    """``None`` when the request carries a valid bearer token of one of ``roles``.

    Otherwise the API's answer: 401 without a valid token, 403 for a token
    of another role (saying what ``doing`` needs, and ``hint``). For routes
    outside the API's table (``/metrics``).
    """
    try:
        principal = await _principal(request)
        ApprovalService.require_role(principal, roles, doing, hint)
    except ApprovalServiceError as exc:
        return error_response(exc.status, exc.code, exc.message)
    return None


def _guarded(handler: Handler) -> Handler:
    """Turn every exception of ``handler`` into a JSON error response."""

    async def endpoint(request: Request) -> Response:
        try:
            _check_query(request)
            return await handler(request)
        except ApprovalServiceError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except AuditError as exc:  # StoreError too: the database failed, retry later
            _log.warning("store failure on %s %s: %s", request.method, request.url.path, exc)
            return error_response(503, "store_unavailable", str(exc))
        except HTTPException as exc:
            return error_response(exc.status_code, "http_error", str(exc.detail))
        except AegisError as exc:
            return error_response(422, "invalid", str(exc))
        except Exception:
            _log.exception("unexpected error on %s %s", request.method, request.url.path)
            return error_response(
                500, "internal", "the approval service failed unexpectedly; see its log"
            )

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def _service(request: Request) -> ApprovalService:
    service: ApprovalService = request.app.state.service
    return service


async def _principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if header and scheme.lower() != "bearer":
        raise ApprovalServiceError(
            "the Authorization header must be 'Bearer <token>'", status=401, code="unauthorized"
        )
    return await _service(request).authenticate(token.strip() or None)


async def _principal_and_body(request: Request) -> tuple[Principal, Any]:
    """The caller and the request's JSON body, the token checked again once the body is in.

    A refused token is refused before any of the body is read; but a client
    may take up to the read timeout to send it, and a token revoked or
    expired meanwhile must not act (nor, for a reviewer, give a grant that
    outlives the revocation that ended the token's grants).
    """
    await _principal(request)
    body = await _body(request)
    return await _principal(request), body


def read_timeout(request: Request) -> float:
    """Seconds a client has to send a body (``app.state.read_timeout``, else 10)."""
    return float(getattr(request.app.state, "read_timeout", DEFAULT_READ_TIMEOUT))


def _invalid(message: str) -> ApprovalServiceError:
    return ApprovalServiceError(message, status=422, code="invalid")


async def _body(request: Request) -> Any:
    """The request's JSON body, read up to :data:`MAX_BODY` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApprovalServiceError(
            f"the body is larger than {MAX_BODY} bytes", status=413, code="too_large"
        )

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise ApprovalServiceError(
                    f"the body is larger than {MAX_BODY} bytes", status=413, code="too_large"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    # A client sending a byte now and then must not hold the connection forever.
    raw = await read_within(read_timeout(request), read)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise _invalid(f"the body is not valid JSON: {exc}") from None
    try:
        _check_storable(body, "")
    except RecursionError:
        raise _invalid("the body is nested too deeply") from None
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def unstorable_text(text: str) -> str | None:
    """Why ``text`` cannot be stored and shown as it is (``"holds a NUL character"``), or ``None``.

    The API and the inbox refuse such text from a caller, naming the field:
    PostgreSQL cannot keep NUL, and a lone surrogate is not text in UTF-8.
    """
    if "\x00" in text:
        return "holds a NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone surrogate (\\ud800-\\udfff), which is not text"
    return None


def _check_storable(value: Any, where: str) -> None:
    """Refuse what a store cannot keep or a reviewer's list cannot show, naming the field.

    ``1e400`` parses as infinity, which no JSON answer can carry (it would
    blind every list that shows it); a lone surrogate is not text in UTF-8;
    PostgreSQL refuses NUL in text. Each is the sender's mistake: a 422.
    """
    if isinstance(value, str):
        problem = unstorable_text(value)
        if problem:
            raise _invalid(f"{where or 'the body'} {problem}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid(f"{where or 'the body'} is a number too large to keep (not finite)")
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = unstorable_text(key)
            name = f"{where}.{key}" if where else key
            if problem:
                raise _invalid(f"a field name in {where or 'the body'} {problem}")
            _check_storable(item, name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_storable(item, f"{where}[{index}]")


def _check_query(request: Request) -> None:
    """Refuse query and path parameters holding NUL or lone surrogates, naming them."""
    for name, value in (*request.query_params.multi_items(), *request.path_params.items()):
        problem = unstorable_text(str(value))
        if problem:
            raise _invalid(f"{name} {problem}")


def _number(request: Request, name: str, default: float, low: float, high: float) -> float:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise _invalid(f"{name}={text!r} is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise _invalid(f"{name} must be between {low:g} and {high:g}, got {text}")
    return value


# -- handlers ------------------------------------------------------------------


async def create_request(request: Request) -> Response:
    """POST /api/v1/approvals: an agent asks; 201 new, 200 re-attached to a pending twin."""
    principal, body = await _principal_and_body(request)
    try:
        new = parse_new_request(body)
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    stored, created = await _service(request).create(principal, new)
    return JSONAnswer(stored.to_json(), status_code=201 if created else 200)


async def list_requests(request: Request) -> Response:
    """GET /api/v1/approvals?status=&requester=&session=&risk=&rule=&sort=: a page (reviewers).

    The store filters and sorts: ``risk`` is one level or several, comma
    separated; ``sort`` is ``newest`` (the default), ``expiring`` or
    ``risk``. ``total`` counts every request the filters match; ``more``
    how many follow this page, which ``next`` (given as ``before``) lists.
    """
    principal = await _principal(request)
    query = request.query_params
    status = statuses(query.get("status"))
    limit = int(_number(request, "limit", 100, 1, 1000))
    sort = request_sort(query.get("sort"))
    before = _cursor(query.get("before"), sort)
    filters: dict[str, Any] = {
        "requester": query.get("requester") or None,
        "session_id": query.get("session") or None,
        "risk": risk_levels(query.get("risk")),
        "rule": query.get("rule") or None,
    }
    service = _service(request)
    found, more = await service.page_requests(
        principal, status, sort=sort, limit=limit, before=before, **filters
    )
    total = await service.count_requests(principal, status, **filters)
    # Say how many the page leaves out, and where the next page starts.
    following = ListCursor.after(found[-1], sort).text() if more and found else None
    return JSONAnswer(
        {
            "approvals": [r.to_json() for r in found],
            "more": more,
            "next": following,
            "total": total,
        }
    )


def request_sort(text: str | None) -> str:
    """The ``sort`` query parameter: one of :data:`REQUEST_SORTS` (``newest`` when absent)."""
    if text is None or text == "":
        return "newest"
    if text not in REQUEST_SORTS:
        raise _invalid(f"sort={text!r} is not a sort; use one of {', '.join(REQUEST_SORTS)}")
    return text


def risk_levels(text: str | None) -> frozenset[RiskLevel] | None:
    """The ``risk`` query parameter: one level or several, comma separated; ``None`` for any."""
    if text is None or not text.strip():
        return None
    levels = set()
    for word in text.split(","):
        name = word.strip().upper()
        if name not in RiskLevel.__members__:
            raise _invalid(
                f"risk={text!r} is not a risk level; use low, medium, high or critical "
                "(several comma separated)"
            )
        levels.add(RiskLevel[name])
    return frozenset(levels)


def _cursor(text: str | None, sort: str = "newest") -> ListCursor | None:
    """The ``before`` query parameter: a ``next`` value of an earlier page of the same sort."""
    if not text:
        return None
    try:
        return ListCursor.parse(text, sort)
    except ValueError as exc:
        raise _invalid(f"before: {exc}") from None


async def get_request(request: Request) -> Response:
    """GET /api/v1/approvals/{id}: one request (a reviewer, or the agent that asked)."""
    principal = await _principal(request)
    found = await _service(request).get(principal, request.path_params["id"])
    return JSONAnswer(found.to_json())


async def wait_request(request: Request) -> Response:
    """GET /api/v1/approvals/{id}/wait?timeout=S: a long poll of at most 60 s."""
    principal = await _principal(request)
    service = _service(request)
    timeout = _number(request, "timeout", 30.0, 0.0, service.max_wait)
    found = await service.wait(principal, request.path_params["id"], timeout)
    return JSONAnswer(found.to_json())


async def decide_request(request: Request) -> Response:
    """POST /api/v1/approvals/{id}/decision: a reviewer approves or denies."""
    principal, body = await _principal_and_body(request)
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object with a verdict")
    unknown = set(body) - {"verdict", "comment", "grant_minutes"}
    if unknown:
        raise _invalid(f"unknown fields: {', '.join(sorted(unknown))}")
    try:
        verdict = Verdict(str(body.get("verdict")))
    except ValueError:
        raise _invalid('verdict must be "approve" or "deny"') from None
    comment = body.get("comment") or ""
    if not isinstance(comment, str) or len(comment) > 10_000:
        raise _invalid("comment must be text of at most 10000 characters")
    # The service checks the grant's length, as it does for the inbox's form.
    decided = await _service(request).decide(
        principal, request.path_params["id"], verdict, comment, body.get("grant_minutes")
    )
    return JSONAnswer(decided.to_json())


async def collect_request(request: Request) -> Response:
    """POST /api/v1/approvals/{id}/collect: the agent uses its approval, once."""
    principal = await _principal(request)
    collected = await _service(request).collect(principal, request.path_params["id"])
    return JSONAnswer(collected.to_json())


async def cancel_request(request: Request) -> Response:
    """POST /api/v1/approvals/{id}/cancel: the agent gives up waiting."""
    principal, body = await _principal_and_body(request)
    reason = body.get("reason", "") if isinstance(body, dict) else None
    if not isinstance(reason, str) or len(reason) > 1000:
        raise _invalid("the body must be {} or {'reason': text of at most 1000 characters}")
    cancelled = await _service(request).cancel(principal, request.path_params["id"], reason)
    return JSONAnswer(cancelled.to_json())


async def list_grants(request: Request) -> Response:
    """GET /api/v1/grants?all=true: active grants (all with ``all``), newest first."""
    principal = await _principal(request)
    include = request.query_params.get("all", "").lower() in ("1", "true", "yes")
    grants = await _service(request).list_grants(principal, include_inactive=include)
    return JSONAnswer({"grants": [g.to_json() for g in grants]})


async def revoke_grant(request: Request) -> Response:
    """POST /api/v1/grants/{id}/revoke: end a grant now."""
    principal = await _principal(request)
    grant = await _service(request).revoke_grant(principal, request.path_params["id"])
    return JSONAnswer(grant.to_json())


async def audit_records(request: Request) -> Response:
    """GET /api/v1/audit: audit records with the filters of ``aegis audit list``.

    An auditor reads every record; another reviewer the records of the
    requests they may see. ``next_after_id``, given as ``after_id``, goes
    on; it is ``null`` once the trail has no more to look at (a page may be
    short, even empty, and still name a next one).
    """
    principal = await _principal(request)
    filters: dict[str, Any] = {}
    for param, name in SHORT_NAMES.items():
        value = request.query_params.get(param)
        if value:
            filters[name] = value
    limit = int(_number(request, "limit", 100, 1, 1000))
    after = request.query_params.get("after_id")
    if after is not None:
        if not after.isascii() or not after.isdigit() or int(after) >= 2**63:
            raise _invalid("after_id must be a record id (a whole number below 2^63)")
        filters["after_id"] = int(after)
    page = await _service(request).audit_page(principal, filters, limit)
    return JSONAnswer({"records": page.records, "next_after_id": page.next_after_id})


async def verify_audit(request: Request) -> Response:
    """GET /api/v1/audit/verify: check the audit chain (auditors only)."""
    principal = await _principal(request)
    return JSONAnswer(await _service(request).verify_audit(principal))


async def whoami(request: Request) -> Response:
    """GET /api/v1/whoami: the caller's name, role, groups, whether an auditor, and identity."""
    principal = await _principal(request)
    return JSONAnswer(
        {
            "name": principal.name,
            "role": principal.role.value,
            "groups": list(principal.groups),
            "auditor": _service(request).is_auditor(principal),
            "identity": principal.who.to_json(),
        }
    )


async def openapi(request: Request) -> Response:
    """GET /api/v1/openapi.json: this API's OpenAPI 3.1 document."""
    return JSONResponse(openapi_document())


async def healthz(request: Request) -> Response:
    """GET /healthz: 200 when the store answers, 503 otherwise (no token needed)."""
    await _service(request).health()
    return JSONAnswer({"status": "ok"})


def api_routes() -> list[BaseRoute]:
    """The routes of the JSON API and ``/healthz``."""
    prefix = "/api/v1"
    table: list[tuple[str, Handler, list[str]]] = [
        ("/approvals", create_request, ["POST"]),
        ("/approvals", list_requests, ["GET"]),
        ("/approvals/{id}", get_request, ["GET"]),
        ("/approvals/{id}/wait", wait_request, ["GET"]),
        ("/approvals/{id}/decision", decide_request, ["POST"]),
        ("/approvals/{id}/collect", collect_request, ["POST"]),
        ("/approvals/{id}/cancel", cancel_request, ["POST"]),
        ("/grants", list_grants, ["GET"]),
        ("/grants/{id}/revoke", revoke_grant, ["POST"]),
        ("/audit", audit_records, ["GET"]),
        ("/audit/verify", verify_audit, ["GET"]),
        ("/whoami", whoami, ["GET"]),
        ("/openapi.json", openapi, ["GET"]),
    ]
    routes: list[BaseRoute] = [
        Route(prefix + path, _guarded(handler), methods=methods) for path, handler, methods in table
    ]
    routes.append(Route("/healthz", _guarded(healthz), methods=["GET"]))
    return routes
