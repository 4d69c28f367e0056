"""The approval inbox: the web pages reviewers live in, served by ``aegis serve`` at ``/``.

Server-rendered HTML (Jinja2 with autoescape), plain CSS and one small
script served as a file, so that the Content-Security-Policy can forbid
inline script altogether: whatever an agent wrote (type, target, params,
description, reason) is text on these pages, never markup.

Sign-in takes a reviewer token once and answers with a session cookie
(:mod:`aegis.server.sessions`: signed, HttpOnly, ``SameSite=Strict``,
expiring); the token itself is never stored in the browser. Every request
re-checks that the token behind the session is still valid, so revoking a
token signs its sessions out. Every form carries a CSRF token bound to the
session, and state-changing requests must come from the inbox's own origin.

Pages: Pending (live through server-sent events), a request with Approve
and Deny, History, and Audit (records, the chain's verification, grants).

Size: the inbox is one Starlette app of server-rendered pages over one service;
its handlers share the session, the CSRF check and the rendering helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import jinja2
import markupsafe
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles

from aegis.core._text import counted
from aegis.core.approval_request import (
    REQUEST_SORTS,
    ApprovalRequest,
    ListCursor,
    RequestStatus,
    Role,
    Verdict,
    iso,
)
from aegis.core.filters import SHORT_NAMES
from aegis.core.result import ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import ApprovalServiceError, AuditError, ConfigurationError
from aegis.server.api import request_sort, risk_levels, unstorable_text
from aegis.server.oidc import CALLBACK_PATH, LEEWAY, OidcError, OidcSignIn, OidcUser
from aegis.server.service import (
    AUDIT_SCAN,
    MAX_GRANT_MINUTES,
    ApprovalEvent,
    ApprovalService,
    Principal,
    grant_refusal,
)
from aegis.server.sessions import BrowserSessions, Session
from aegis.stores.approvals import hash_token

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "Inbox",
    "Reviewer",
    "human_duration",
    "params_summary",
    "params_tree",
    "security_headers",
    "visible_controls",
]

HERE: Final = Path(__file__).resolve().parent

_log = logging.getLogger("aegis.server.inbox")

Handler = Callable[[Request], Awaitable[Response]]


#: seconds between keep-alive comments on a quiet event stream
KEEPALIVE: Final = 15.0
#: seconds after which a live list reads its page again, changed or not
FULL_READ: Final = 30.0
MAX_COMMENT: Final = 2000
HISTORY_STATUSES: Final = ("all", "approved", "denied", "expired", "cancelled")
#: pending requests on one page of the inbox
PENDING_PAGE: Final = 500
#: how many pending requests each way the inbox looks through for the next to decide
NEXT_SCAN: Final = 100
#: how many recent requests History filters by agent and reviewer
HISTORY_SCAN: Final = 1000
AUDIT_FILTERS: Final = (*SHORT_NAMES, "after")

#: no inline script or style, nothing from elsewhere, no framing, forms post only here
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


def security_headers(*, secure: bool = False) -> dict[str, str]:
    """The headers every inbox page carries (HSTS only when served over TLS)."""
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cache-Control": "no-store",
    }
    if secure:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers


@dataclass(frozen=True, slots=True)
class Reviewer:
    """Who is signed in: the principal, and the session that says so."""

    principal: Principal
    session: Session
    #: the latest a grant this reviewer gives may last: the end of the provider's
    #: word on their groups (an OpenID sign-in's start + --oidc-max-age); ``None``
    #: for a token's session
    grant_until: datetime | None = None


# ------------------------------------------------------------------ formatting


#: characters that change how text is drawn instead of being drawn: C0 controls
#: but tab and newlines, DEL, C1 controls, and the bidirectional controls (an
#: override draws ``invoice_\u202efdp.exe`` as ``invoice_exe.pdf``)
_CONTROLS: Final = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]"
)


def visible_controls(value: Any) -> Any:
    """Text with each control character shown as ``⟨U+202E⟩``; other values as they are.

    Every value a template prints passes here before it is escaped, so
    whatever an agent wrote is drawn as written, never reordered.
    """
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return _CONTROLS.sub(lambda found: f"\u27e8U+{ord(found.group()):04X}\u27e9", value)
    return value


def _form_minutes(text: str) -> int | str:
    """A form field's whole number of minutes, or the text itself when it is none."""
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), and few
    # of them: int() of thousands of digits raises rather than answer.
    if text.isascii() and text.isdecimal() and len(text) <= 9:
        return int(text)
    return text


def _parse_iso(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """``"3m 05s"``, ``"2h 07m"``, ``"1d 4h"``: the clocks the script keeps ticking."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _short_time(text: Any) -> str:
    moment = _parse_iso(text)
    if moment is None:
        return str(text or "")
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _compact_time(text: Any) -> str:
    moment = _parse_iso(text)
    if moment is None:
        return str(text or "")
    return moment.astimezone(UTC).strftime("%m-%d %H:%M:%S")


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


# ------------------------------------------------------------------ the inbox


class Inbox:
    """The inbox's routes over an :class:`~aegis.server.service.ApprovalService`.

    Args:
        service: the approval service the JSON API uses too; the inbox asks
            it everything, so the same rules hold on both.
        session_key: the key that signs session cookies. Give the same key
            to every ``aegis serve`` process of one deployment (and across
            restarts) to keep reviewers signed in; a random key per process
            when ``None``.
        session_ttl: seconds a session lasts after sign-in.
        public_url: the inbox's address as reviewers' browsers see it, when a
            proxy in front terminates TLS (``https://aegis.example.com``):
            forms posted from that origin are accepted, and with ``https``
            the cookies are marked ``Secure``.
        poll_interval: seconds between the live list's looks at the store,
            which catch what other processes changed; this process's own
            events wake it at once.
    """

    def __init__(
        self,
        service: ApprovalService,
        *,
        session_key: str | bytes | None = None,
        session_ttl: float = 8 * 3600,
        public_url: str | None = None,
        poll_interval: float = 2.0,
        history_limit: int = 200,
        audit_limit: int = 100,
        oidc: OidcSignIn | None = None,
        token_signin: bool = True,
    ) -> None:
        if oidc is None and not token_signin:
            raise ConfigurationError(
                "with token sign-in off, the inbox needs OpenID sign-in (oidc=)"
            )
        self.service = service
        self.oidc = oidc
        self.token_signin = token_signin
        self.sessions = BrowserSessions(
            service.store,
            session_key,
            ttl=session_ttl,
            public_url=public_url,
            clock=service.clock,
        )
        self._poll_interval = poll_interval
        self._history_limit = history_limit
        self._audit_limit = audit_limit
        self._wakers: set[asyncio.Event] = set()
        self._static_versions: dict[str, str] = {}
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every template is HTML: escape everything, always
            finalize=visible_controls,  # and show controls, never let them act
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["shorttime"] = _short_time
        self._env.filters["compacttime"] = _compact_time
        self._env.filters["counted"] = counted
        self._unsubscribe = service.subscribe(self._on_event)

    # -------------------------------------------------------------- wiring

    def routes(self) -> list[BaseRoute]:
        """The inbox's routes, to put beside the JSON API in one Starlette app."""
        table: list[tuple[str, Handler, str, str]] = [
            ("/", self.pending, "GET", "inbox_pending"),
            ("/signin", self.signin_form, "GET", "inbox_signin_form"),
            ("/signin", self.signin, "POST", "inbox_signin"),
            ("/signout", self.signout, "POST", "inbox_signout"),
            ("/signin/oidc", self.oidc_begin, "GET", "inbox_oidc_begin"),
            (CALLBACK_PATH, self.oidc_callback, "GET", "inbox_oidc_callback"),
            ("/requests/{request_id}", self.request_page, "GET", "inbox_request"),
            ("/requests/{request_id}/decision", self.decide, "POST", "inbox_decide"),
            ("/history", self.history, "GET", "inbox_history"),
            ("/audit", self.audit, "GET", "inbox_audit"),
            ("/grants/{grant_id}/revoke", self.revoke_grant, "POST", "inbox_revoke_grant"),
            ("/inbox/events", self.events, "GET", "inbox_events"),
            ("/inbox/pending-rows", self.pending_rows, "GET", "inbox_pending_rows"),
        ]
        routes: list[BaseRoute] = [
            Route(path, self._guarded(handler), methods=[method], name=name)
            for path, handler, method, name in table
        ]
        routes.append(Mount("/static", StaticFiles(directory=HERE / "static"), name="static"))
        # last: any other address a browser opens gets a page, not the API's JSON
        routes.append(Route("/{path:path}", self._guarded(self.not_found), methods=["GET"]))
        return routes

    def _guarded(self, handler: Handler) -> Handler:
        """``handler`` with a failing store answered by a page that says so, never a traceback."""

        async def endpoint(request: Request) -> Response:
            try:
                refused = await self._unstorable(request)
                return refused if refused is not None else await handler(request)
            except AuditError as exc:  # StoreError too: the database is down or locked
                _log.warning(
                    "inbox: store failure on %s %s: %s", request.method, request.url.path, exc
                )
                return self._error(
                    request, None, 503, "The store is not answering", f"{exc} Try again shortly."
                )

        endpoint.__name__ = getattr(handler, "__name__", "endpoint")
        endpoint.__doc__ = handler.__doc__
        return endpoint

    async def _unstorable(self, request: Request) -> Response | None:
        """A 400 page when a query or path parameter holds text no store can keep.

        Such a filter or link is the sender's mistake and is said to be:
        PostgreSQL would refuse it as a failure (a 503 saying the store is
        down), SQLite would look for it. The JSON API refuses it alike.
        """
        for name, value in (*request.query_params.multi_items(), *request.path_params.items()):
            problem = unstorable_text(str(value))
            if problem:
                reviewer = await self.reviewer(request)
                return self._error(request, reviewer, 400, "Not understood", f"{name} {problem}.")
        return None

    def close(self) -> None:
        """Stop listening to the service's events."""
        self._unsubscribe()

    def _on_event(self, event: ApprovalEvent) -> None:
        # Called in the event loop by the service: wake every live list.
        for waker in self._wakers:
            waker.set()

    # -------------------------------------------------------------- sessions

    async def reviewer(self, request: Request) -> Reviewer | None:
        """The signed-in reviewer, if the session is valid and its token still is."""
        session = await self.sessions.read(request)
        if session is None:
            return None
        if session.token_hash is None:
            return self._oidc_reviewer(session)
        if not self.token_signin:
            return None  # a token session from before token sign-in was switched off
        # The session names the token by its hash, as the store keeps it: the
        # token itself never reaches the browser again after sign-in.
        info = await asyncio.to_thread(self.service.store.token_by_hash, session.token_hash)
        if info is None or info.role is not Role.REVIEWER:
            return None
        if not info.usable_at(self.service.clock()):
            return None
        try:
            principal = self.service.principal_of(info)
        except ApprovalServiceError:
            return None  # tied to a subject at an issuer this service no longer names
        # A decision is recorded only while the session (signed out?) and the token hold.
        return Reviewer(dataclasses.replace(principal, session=session.id_hash), session)

    def _oidc_reviewer(self, session: Session) -> Reviewer | None:
        """The reviewer of a session started by OpenID sign-in, while this inbox offers it.

        Only within the max age of the sign-in: the groups are the provider's
        word of then, and after it the person signs in again, which asks the
        provider for their groups of now. Checked here, not only by the
        session's end, so that a max age lowered at a restart holds for the
        sessions already started; so do the groups required to sign in. A
        session may seem to start a little in the future (up to
        :data:`~aegis.server.oidc.LEEWAY`): another process of the
        deployment started it by a clock a little ahead. Refusing it would
        not end it any sooner (this clock finds it younger all its life),
        only sign the person out until this clock catches up.
        """
        user = OidcUser.from_session(session.identity)
        if user is None or self.oidc is None:
            return None
        if user.identity.issuer != self.oidc.settings.issuer:
            return None  # signed in at an issuer this inbox no longer trusts
        now = self.service.clock()
        age = (now - session.created_at).total_seconds()
        if not -LEEWAY <= age < self.oidc.settings.max_age:
            return None  # the provider's word on the groups is too old: ask it again
        if not self.oidc.settings.admits(user.groups):
            return None  # --oidc-require-group, given at a restart, holds for sessions too
        who = user.identity
        # A grant given now keeps approving after this session: it may not
        # outlast the provider's word on the groups it was given for either.
        # Counted from this clock's now at the latest: a session said to start
        # in the future (a host whose clock runs ahead) gains its grants no time.
        start = min(session.created_at, now)
        until = start + timedelta(seconds=self.oidc.settings.max_age)
        principal = Principal(who.display, Role.REVIEWER, user.groups, who, session=session.id_hash)
        return Reviewer(principal, session, grant_until=until)

    # -------------------------------------------------------------- rendering

    def _static(self, name: str) -> str:
        version = self._static_versions.get(name)
        if version is None:
            digest = hashlib.sha256((HERE / "static" / name).read_bytes()).hexdigest()
            version = self._static_versions[name] = digest[:10]
        return f"/static/{name}?v={version}"

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        *,
        status_code: int = 200,
        reviewer: Reviewer | None = None,
        flashes: Sequence[tuple[str, str]] = (),
        fragment: bool = False,
    ) -> HTMLResponse:
        """Render ``template`` with the inbox's common context and security headers.

        A ``fragment`` (the live list's rows) leaves the flash message for the
        page it was meant for: another tab may be fetching rows meanwhile.
        """

        def url(name: str, **params: str) -> str:
            return str(request.app.url_path_for(name, **params))

        # The script's own look at a page (is this request still pending?) must
        # not take the message meant for the page the reviewer goes to next.
        fragment = fragment or request.headers.get("x-inbox-peek") == "1"
        shown = [*([] if fragment else self.sessions.flashes(request)), *flashes]
        html = self._env.get_template(template).render(
            {
                "title": "Inbox",
                "page": "",
                "reviewer": reviewer.principal if reviewer else None,
                "csrf": reviewer.session.csrf if reviewer else "",
                "pending_count": None,
                "flashes": shown,
                "url": url,
                "static": self._static,
                **context,
            }
        )
        response = HTMLResponse(html, status_code=status_code, headers=_headers(request))
        if not fragment:
            self.sessions.drop_flashes(request, response)
        return response

    def _redirect(
        self, request: Request, target: str, flash: tuple[str, str] | None = None
    ) -> RedirectResponse:
        response = RedirectResponse(target, status_code=303, headers=_headers(request))
        if flash is not None:
            self.sessions.flash(request, response, *flash)
        return response

    def _to_signin(self, request: Request) -> Response:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET" or here == "/":
            return self._redirect(request, "/signin")
        return self._redirect(request, "/signin?" + urllib.parse.urlencode({"next": here}))

    def _error(
        self, request: Request, reviewer: Reviewer | None, status: int, title: str, message: str
    ) -> HTMLResponse:
        return self.render(
            request,
            "error.html",
            {"title": title, "message": message},
            status_code=status,
            reviewer=reviewer,
        )

    def _forged(self, request: Request, reviewer: Reviewer) -> HTMLResponse:
        return self._error(
            request, reviewer, 403, "Refused", "That form was not sent from this page; reload it."
        )

    async def not_found(self, request: Request) -> Response:
        """A page the inbox does not have, opened in a browser: say so, with the way back.

        The API's paths, a method the path does not take, and clients that do
        not ask for HTML keep the app's JSON answers (404, 405).
        """
        path = request.url.path
        for route in request.app.router.routes:
            if route.matches(request.scope)[0] is Match.PARTIAL:
                raise HTTPException(405)
        if (
            path == "/api"
            or path.startswith("/api/")
            or "text/html" not in request.headers.get("accept", "")
        ):
            raise HTTPException(404)
        reviewer = await self.reviewer(request)
        return self._error(
            request, reviewer, 404, "Not here", "The inbox has no page at this address."
        )

    # -------------------------------------------------------------- sign in and out

    async def signin_form(self, request: Request) -> Response:
        """The sign-in page, with a nonce its form must echo (against login CSRF)."""
        if await self.reviewer(request) is not None:
            return self._redirect(request, _safe_next(request.query_params.get("next")) or "/")
        nonce = secrets.token_urlsafe(24)
        response = self.render(
            request,
            "signin.html",
            {
                "title": "Sign in",
                "page": "signin",
                "csrf": nonce,
                "next": _safe_next(request.query_params.get("next")),
                "token_signin": self.token_signin,
                "oidc_name": self.oidc.settings.name if self.oidc else None,
            },
        )
        self.sessions.set_nonce(request, response, nonce)
        return response

    async def signin(self, request: Request) -> Response:
        """Check a reviewer token and start a session."""
        if not self.token_signin:
            return self._redirect(
                request, "/signin", ("error", "Token sign-in is off here; use the button below.")
            )
        form = await self.sessions.form(request, self.sessions.nonce(request))
        if form is None:
            return self._redirect(
                request, "/signin", ("error", "The sign-in form expired; please try again.")
            )
        token = str(form.get("token") or "").strip()
        next_page = _safe_next(str(form.get("next") or ""))
        back = "/signin" + (f"?{urllib.parse.urlencode({'next': next_page})}" if next_page else "")
        try:
            principal = await self.service.authenticate(token)
        except ApprovalServiceError as exc:
            return self._redirect(request, back, ("error", f"Not signed in: {exc.message}."))
        if principal.role is not Role.REVIEWER:
            return self._redirect(
                request,
                back,
                (
                    "error",
                    f"{principal.name} has {principal.role.article} {principal.role.value}"
                    " token; sign in with a reviewer token.",
                ),
            )
        response = self._redirect(request, next_page or "/")
        await self.sessions.start(request, response, token_hash=hash_token(token))
        self.sessions.drop_nonce(response)
        return response

    async def signout(self, request: Request) -> Response:
        """End the session: a POST with the CSRF token, so no link or other site can."""
        reviewer = await self.reviewer(request)
        if (
            reviewer is not None
            and await self.sessions.form(request, reviewer.session.csrf) is None
        ):
            return self._forged(request, reviewer)
        response = self._redirect(request, "/signin", ("ok", "Signed out."))
        # Ended on the server too: a copy of the cookie is worth nothing now.
        await self.sessions.end(request, response)
        return response

    async def oidc_begin(self, request: Request) -> Response:
        """Send the browser to the OpenID provider (authorization code flow with PKCE)."""
        if self.oidc is None:
            return self._error(request, None, 404, "Not here", "This inbox has no OpenID sign-in.")
        next_page = _safe_next(request.query_params.get("next"))
        try:
            return await self.oidc.begin(
                request,
                lambda url: RedirectResponse(url, status_code=302, headers=_headers(request)),
                next_page,
            )
        except OidcError as exc:
            _log.warning("inbox: OpenID sign-in could not start: %s", exc)
            return self._redirect(request, "/signin", ("error", f"Not signed in: {exc}."))

    async def oidc_callback(self, request: Request) -> Response:
        """The provider's answer: check it all, then start a session for the person."""
        if self.oidc is None:
            return self._error(request, None, 404, "Not here", "This inbox has no OpenID sign-in.")
        try:
            user, next_page = await self.oidc.finish(request)
        except OidcError as exc:
            _log.warning("inbox: OpenID sign-in refused: %s", exc)
            # Said on this page: a redirect's message (a SameSite=Strict cookie)
            # would not survive the provider's cross-site navigation.
            refused = self._error(request, None, 400, "Not signed in", f"{exc}.")
            self.oidc.forget(refused)
            return refused
        # A page of ours, not a redirect, leads on: the browser came here from
        # the provider's site, and a redirect would carry that cross-site
        # navigation on, without the SameSite=Strict session cookie set here.
        target = _safe_next(next_page) or "/"
        response = self.render(
            request,
            "signed_in.html",
            {"title": "Signed in", "page": "signin", "target": target, "who": user.identity},
        )
        try:
            await self.sessions.start(
                request, response, identity=user.to_session(), ttl=self.oidc.settings.max_age
            )
        except ApprovalServiceError as exc:
            # Revoked by an operator (`aegis reviewer revoke`): the provider's
            # yes does not undo it. Said on this page, as a refusal above is.
            _log.warning("inbox: OpenID sign-in of %s refused: %s", user.identity, exc.message)
            # The person reads it: whom they are here, not the operator's command.
            said = (
                f"Your access to this inbox (as {user.identity.key}) was revoked; an "
                "administrator must reinstate it before you can sign in again."
                if exc.code == "revoked"
                else f"{exc.message}."
            )
            refused = self._error(request, None, exc.status, "Not signed in", said)
            self.oidc.forget(refused)
            return refused
        self.oidc.forget(response)
        _log.info("inbox: %s signed in (groups: %s)", user.identity, ", ".join(user.groups) or "-")
        return response

    # -------------------------------------------------------------- pending

    async def _pending_page(
        self,
        reviewer: Reviewer,
        shown: Mapping[str, str],
        before: ListCursor | None = None,
        *,
        limit: int | None = None,
    ) -> tuple[list[ApprovalRequest], int]:
        """A page of pending requests as ``shown`` filters and sorts them, and how many follow.

        The store filters and sorts, so the page and the counts cover every
        pending request, not the newest few hundred. Only what this
        reviewer's groups may decide: the rest is someone else's work.
        """
        requests, more = await self.service.page_requests(
            reviewer.principal,
            RequestStatus.PENDING,
            sort=shown["sort"],
            limit=PENDING_PAGE if limit is None else limit,
            before=before,
            **_store_filters(shown, reviewer),
        )
        now = self.service.clock()
        return [r for r in requests if not r.is_expired_at(now)], more

    async def _pending_counts(
        self, reviewer: Reviewer, shown: Mapping[str, str]
    ) -> tuple[int, int]:
        """How many are pending for this reviewer, and how many of them match ``shown``."""
        everything = {"groups": reviewer.principal.groups}
        total = await self.service.count_requests(
            reviewer.principal, RequestStatus.PENDING, **everything
        )
        if not _filtered(shown):
            return total, total
        matching = await self.service.count_requests(
            reviewer.principal, RequestStatus.PENDING, **_store_filters(shown, reviewer)
        )
        return total, matching

    async def pending(self, request: Request) -> Response:
        """Pending requests, newest first or as sorted and filtered; the script keeps it live."""
        reviewer = await self.reviewer(request)
        if reviewer is None:
            return self._to_signin(request)
        shown, problems = _pending_filters(request.query_params)
        before = None
        if request.query_params.get("before"):
            try:
                before = ListCursor.parse(request.query_params["before"], shown["sort"])
            except ValueError as exc:
                problems.append(f"The page link is out of date ({exc}); showing the first page.")
        page, more = await self._pending_page(reviewer, shown, before)
        total, matching = await self._pending_counts(reviewer, shown)
        query = _list_query(shown)
        following = ListCursor.after(page[-1], shown["sort"]).text() if more and page else None
        now = self.service.clock()
        return self.render(
            request,
            "pending.html",
            {
                "title": "Pending",
                "page": "pending",
                "pending": [_request_view(r, now) for r in page],
                # the true counts, not the page's: the hidden ones may be closest to expiring
                "pending_total": total,
                "pending_count": total,
                "matching": matching,
                "on_page": len(page),
                "shown": shown,
                "filtered": _filtered(shown),
                "query": query,
                "sorts": REQUEST_SORTS,
                "risks": [level.name.lower() for level in reversed(RiskLevel)],
                # A flood must not push requests out of sight without a word.
                "more": more,
                "older": "/?" + urllib.parse.urlencode({**_list_params(shown), "before": following})
                if following
                else None,
                "paged": before is not None,
            },
            reviewer=reviewer,
            flashes=[("error", problem) for problem in problems],
            status_code=400 if problems else 200,
        )

    async def pending_rows(self, request: Request) -> Response:
        """The pending list's rows alone (its first page, as filtered), for the live update."""
        reviewer = await self.reviewer(request)
        if reviewer is None:
            return Response(status_code=401, headers=_headers(request))
        shown, _ = _pending_filters(request.query_params)
        page, _more = await self._pending_page(reviewer, shown)
        total, matching = await self._pending_counts(reviewer, shown)
        now = self.service.clock()
        response = self.render(
            request,
            "_pending_rows.html",
            {"pending": [_request_view(r, now) for r in page], "query": _list_query(shown)},
            reviewer=reviewer,
            fragment=True,
        )
        # the badge shows the true count; the summary how many match the filters
        response.headers["X-Pending-Total"] = str(total)
        response.headers["X-Pending-Matching"] = str(matching)
        return response

    async def events(self, request: Request) -> Response:
        """Server-sent events: ``pending`` whenever the pending requests change.

        Its data: the ids of the list as the page filters and sorts it (the
        script fetches rows only when they differ from the ones it shows),
        how many approvals each has (one withdrawn by a revocation leaves
        the ids as they were), the count of all pending, and with
        ``?request=ID`` (a request's page) that request's state: its status
        and who approved it so far, so the page sees an approval withdrawn.
        """
        reviewer = await self.reviewer(request)
        if reviewer is None:
            return Response(status_code=401, headers=_headers(request))
        shown, _ = _pending_filters(request.query_params)
        watched = request.query_params.get("request", "")
        waker = asyncio.Event()
        self._wakers.add(waker)

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                last: dict[str, Any] | None = None
                stamp: str | None = None
                quiet = since_read = 0.0
                woken = True
                while not await request.is_disconnected():
                    current = await self.reviewer(request)
                    if current is None:
                        yield "event: signout\ndata: {}\n\n"
                        return
                    # The page is read again only when something may have changed:
                    # this process said so (woken), the pending requests' stamp
                    # moved (another process), or a while passed (a safety net: the
                    # stamp sees every change of the pending requests and approvals).
                    seen = await self.service.pending_stamp(self._poll_interval / 2)
                    if woken or seen != stamp or since_read >= FULL_READ:
                        stamp, since_read = seen, 0.0
                        page, _ = await self._pending_page(current, shown)
                        # the rows as filtered, and the badge's count of all pending
                        total = await self.service.count_requests(
                            current.principal,
                            RequestStatus.PENDING,
                            groups=current.principal.groups,
                        )
                        ids: dict[str, Any] = {
                            "ids": [item.id for item in page],
                            "approvals": [len(item.approvals) for item in page],
                            "total": total,
                        }
                        if watched:
                            ids["request"] = await self._request_state(current, watched)
                        if ids != last:
                            # the first event too: the page may be older than this
                            # stream, and the script refreshes only if rows or count differ
                            yield f"event: pending\ndata: {json.dumps(ids)}\n\n"
                            quiet = 0.0
                        last = ids
                    if quiet >= KEEPALIVE:
                        yield ": keep-alive\n\n"
                        quiet = 0.0
                    started = time.monotonic()
                    woken = False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waker.wait(), self._poll_interval)
                        woken = True
                    waker.clear()
                    waited = time.monotonic() - started
                    quiet += waited
                    since_read += waited
            finally:
                self._wakers.discard(waker)

        headers = _headers(request)
        headers["X-Accel-Buffering"] = "no"  # a proxy in front must not hold events back
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def _request_state(self, reviewer: Reviewer, request_id: str) -> dict[str, Any] | None:
        """What a request's open page needs to know is still so: status, who approved it."""
        try:
            found = await self.service.get(reviewer.principal, request_id)
        except ApprovalServiceError:
            return None  # gone, or not this reviewer's to see: the page keeps what it has
        now = self.service.clock()
        outcome = request_outcome(found, now)
        return {
            "id": found.id,
            "status": str(outcome["status"]) if outcome else found.status.value,
            "approved_by": [d.reviewer for d in found.approvals],
            "approvers": found.approvers,
        }

    # -------------------------------------------------------------- one request

    async def request_page(self, request: Request) -> Response:
        """One request with everything a reviewer needs to decide it."""
        reviewer = await self.reviewer(request)
        if reviewer is None:
            return self._to_signin(request)
        return await self._show_request(request, reviewer, request.path_params["request_id"])

    async def _show_request(
        self,
        request: Request,
        reviewer: Reviewer,
        request_id: str,
        *,
        flashes: Sequence[tuple[str, str]] = (),
        status_code: int = 200,
    ) -> Response:
        try:
            found = await self.service.get(reviewer.principal, request_id)
        except ApprovalServiceError as exc:
            return self._error(request, reviewer, exc.status, "Not available", exc.message)
        now = self.service.clock()
        view = _request_view(found, now)
        outcome = request_outcome(found, now)
        refusal = ApprovalService.refusal(reviewer.principal, found)
        # decided (or not for this reviewer): on to the next one of the list it came from
        shown, _ = _pending_filters(request.query_params)
        following = (
            await self._next_pending(reviewer, found, shown)
            if refusal is not None or outcome is not None
            else None
        )
        return self.render(
            request,
            "request.html",
            {
                "title": f"{found.action.type} on {found.action.target}",
                "page": "request",
                "req": view,
                "params": params_tree(view["action"]["params"]),
                "params_json": _pretty_json(view["action"]["params"]),
                "max_grant_minutes": MAX_GRANT_MINUTES,
                "grant_until": _grant_until_note(reviewer),
                "refusal": f"You cannot decide this: {refusal}." if refusal else None,
                "outcome": outcome,
                "next_request": following,
                "query": _list_query(shown),
                "filtered": _filtered(shown),
            },
            reviewer=reviewer,
            flashes=flashes,
            status_code=status_code,
        )

    async def decide(self, request: Request) -> Response:
        """Approve or deny from the request page's form."""
        reviewer = await self.reviewer(request)
        if reviewer is None:
            return self._to_signin(request)
        request_id = request.path_params["request_id"]
        form = await self.sessions.form(request, reviewer.session.csrf)
        if form is None:
            return self._forged(request, reviewer)
        # The form may take the read timeout to arrive: the token or sign-in
        # it came under must still hold once it is in (a revoked token's
        # grants end with it; one given after must not outlive it).
        reviewer = await self.reviewer(request)
        if reviewer is None:
            return self._to_signin(request)
        verdict_text = form.get("verdict")
        comment = str(form.get("comment") or "").strip()
        grant_text = str(form.get("grant_minutes") or "").strip()
        problem = ""
        grant: int | None = None
        if verdict_text not in {"approve", "deny"}:
            problem = "Choose Approve or Deny."
        elif len(comment) > MAX_COMMENT:
            problem = f"The comment is longer than {MAX_COMMENT} characters."
        elif unstorable_text(comment):
            problem = f"The comment {unstorable_text(comment)}; nothing was decided."
        elif grant_text and grant_text != "0":
            # The service's rule of grant lengths (decide() enforces it), asked
            # first so that a person reads it in words, whichever button was
            # pressed; a deny grants nothing, so its valid grant is ignored.
            minutes = _form_minutes(grant_text)
            if grant_refusal(Verdict.APPROVE, minutes) is not None:
                problem = f"Grant minutes must be a whole number from 1 to {MAX_GRANT_MINUTES}."
            elif verdict_text == "approve" and isinstance(minutes, int):
                grant = minutes
        if problem:
            return await self._show_request(
                request, reviewer, request_id, flashes=[("error", problem)], status_code=422
            )
        verdict = Verdict(str(verdict_text))
        if verdict is Verdict.APPROVE and form.get("confirm") != "yes":
            try:
                risky = await self.service.get(reviewer.principal, request_id)
            except ApprovalServiceError:
                risky = None
            if (
                risky is not None
                and risky.risk_level >= RiskLevel.HIGH
                and risky.status is RequestStatus.PENDING
                and not risky.is_expired_at(self.service.clock())
                and ApprovalService.refusal(reviewer.principal, risky) is None
            ):
                return await self._show_request(
                    request,
                    reviewer,
                    request_id,
                    flashes=[
                        (
                            "error",
                            f"This is a {risky.risk_level.name} risk action: tick "
                            "\u201cI have checked\u201d to confirm, then approve. "
                            "Nothing was changed.",
                        )
                    ],
                    status_code=422,
                )
        try:
            decided = await self.service.decide(
                reviewer.principal,
                request_id,
                verdict,
                comment,
                grant,
                grant_until=reviewer.grant_until,
            )
        except ApprovalServiceError as exc:
            return await self._show_request(
                request,
                reviewer,
                request_id,
                flashes=[("error", f"Not recorded: {exc.message}.")],
                status_code=exc.status,
            )
        # On to the next request of the list the reviewer came from, saying
        # what was just decided; back to the list when none is left.
        shown, _ = _pending_filters(request.query_params)
        query = _list_query(shown)
        suffix = f"?{query}" if query else ""
        notice = _decided_notice(decided, verdict)
        if grant is not None:
            notice += _shortened_grant(decided, reviewer, grant)
        following = await self._next_pending(reviewer, decided, shown)
        if following is not None:
            return self._redirect(
                request,
                f"/requests/{urllib.parse.quote(following, safe='')}{suffix}",
                ("ok", f"{notice} Showing the next pending request."),
            )
        nothing = "Nothing else is pending" + (
            " that matches the filters" if _filtered(shown) else ""
        )
        return self._redirect(request, f"/{suffix}", ("ok", f"{notice} {nothing}."))

    async def _next_pending(
        self, reviewer: Reviewer, done: ApprovalRequest, shown: Mapping[str, str]
    ) -> str | None:
        """The pending request to go on to after ``done``, in the list as ``shown`` orders it.

        The first this reviewer may decide after ``done``'s place in the
        list, else the first from the top; ``None`` when none is left.
        Looks at most :data:`NEXT_SCAN` requests each way.
        """
        now = self.service.clock()
        for before in (ListCursor.after(done, shown["sort"]), None):
            page, _ = await self._pending_page(reviewer, shown, before, limit=NEXT_SCAN)
            for item in page:
                if (
                    item.id != done.id
                    and not item.is_expired_at(now)
                    and ApprovalService.refusal(reviewer.principal, item) is None
                ):
                    return item.id
        return None

    # -------------------------------------------------------------- history and audit

    async def history(self, request: Request) -> Response:
        """Finished requests: who decided, the verdict, the comment, when."""
        reviewer = await self.reviewer(request)
        if reviewer is None:
            return self._to_signin(request)
        query = request.query_params
        status = query.get("status", "all")
        if status not in HISTORY_STATUSES:
            status = "all"
        agent = query.get("agent", "").strip()
        by = query.get("reviewer", "").strip()
        found = await self.service.list_requests(
            reviewer.principal,
            None if status == "all" else RequestStatus(status),
            limit=HISTORY_SCAN,
        )
        now = self.service.clock()
        rows = []
        for item in found:
            if item.status is RequestStatus.PENDING:
                continue
            if agent and item.requester != agent:
                continue
            if by and all(by not in {d.reviewer, d.identity.display} for d in item.decisions):
                continue
            view = _request_view(item, now)
            view["who"] = ", ".join(
                f"{d.identity} {'approved' if d.verdict is Verdict.APPROVE else 'denied'}"
                for d in item.decisions
            )
            comments = [f"{d.identity.display}: {d.comment}" for d in item.decisions if d.comment]
            view["comment"] = "; ".join(comments) or item.status_reason
            view["finished_at"] = (
                iso(max(d.at for d in item.decisions)) if item.decisions else view["expires_at"]
            )
            rows.append(view)
        return self.render(
            request,
            "history.html",
            {
                "title": "History",
                "page": "history",
                "items": rows[: self._history_limit],
                "truncated": len(rows) > self._history_limit,
                "filters": {"status": status, "agent": agent, "reviewer": by},
            },
            reviewer=reviewer,
        )

    async def audit(self, request: Request) -> Response:
        """The audit trail with the filters of ``aegis audit list``, its verification, grants.

        An auditor sees every record and the chain's verification; another
        reviewer the records of the requests they may see, and no
        verification (it counts every group's records).
        """
        reviewer = await self.reviewer(request)
        if reviewer is None:
            return self._to_signin(request)
        query = request.query_params
        shown = {name: query.get(name, "").strip() for name in AUDIT_FILTERS}
        flashes: list[tuple[str, str]] = []
        auditor = self.service.is_auditor(reviewer.principal)
        verify: dict[str, Any] | None = None
        if auditor:
            try:
                verify = await self.service.verify_audit(reviewer.principal)
            except ApprovalServiceError as exc:
                verify = {"ok": False, "reason": exc.message}
        # Unfiltered, the page opens on the newest records; with filters or a
        # page number, it reads forward like `aegis audit list`.
        newest = not any(shown.values())
        records: list[dict[str, Any]] = []
        following: int | None = None
        try:
            if newest:
                page = await self.service.audit_newest(reviewer.principal, self._audit_limit)
            else:
                filters = _audit_filters(shown)
                page = await self.service.audit_page(
                    reviewer.principal, filters, limit=self._audit_limit
                )
            records, following = page.records, page.next_after_id
        except ValueError as exc:
            flashes.append(("error", str(exc)))
        except ApprovalServiceError as exc:
            flashes.append(("error", exc.message))
        grants = await self.service.list_grants(reviewer.principal)
        next_page = None
        if following is not None:
            params = {k: v for k, v in shown.items() if v and k != "after"}
            params["after"] = str(following)
            next_page = "/audit?" + urllib.parse.urlencode(params)
        return self.render(
            request,
            "audit.html",
            {
                "title": "Audit",
                "page": "audit",
                "records": records,
                "next_page": next_page,
                "newest": newest,
                "filters": shown,
                "verify": verify,
                "auditor": auditor,
                "scan": AUDIT_SCAN,
                "grants": [g.to_json() for g in grants],
            },
            reviewer=reviewer,
            flashes=flashes,
        )

    async def revoke_grant(self, request: Request) -> Response:
        """Revoke a grant from the audit page."""
        reviewer = await self.reviewer(request)
        if reviewer is None:
            return self._to_signin(request)
        if await self.sessions.form(request, reviewer.session.csrf) is None:
            return self._forged(request, reviewer)
        grant_id = request.path_params["grant_id"]
        try:
            await self.service.revoke_grant(reviewer.principal, grant_id)
        except ApprovalServiceError as exc:
            return self._redirect(request, "/audit#grants", ("error", exc.message))
        return self._redirect(request, "/audit#grants", ("ok", f"Grant {grant_id} revoked."))


# ------------------------------------------------------------------ helpers


def _headers(request: Request) -> dict[str, str]:
    return security_headers(secure=request.url.scheme == "https")


#: how much of an agent-written type or target a notice after a decision repeats
NOTICE_TEXT: Final = 60


def _clip(text: str, size: int = NOTICE_TEXT) -> str:
    return text if len(text) <= size else text[: size - 1] + "\u2026"


def _decided_notice(decided: ApprovalRequest, verdict: Verdict) -> str:
    """``Decided: approved apr_… (refund on billing).`` and what follows from it."""
    what = f"{decided.id} ({_clip(decided.action.type)} on {_clip(decided.action.target)})"
    if verdict is Verdict.DENY:
        return f"Decided: denied {what}. The agent has been told."
    if decided.status is RequestStatus.APPROVED:
        message = f"Decided: approved {what}. The agent may go ahead."
        if decided.granted:
            message += f" Grant {decided.granted} also covers the same actions for a while."
        return message
    return (
        f"Decided: approved {what}; your approval is recorded ({len(decided.approvals)} of "
        f"{decided.approvers}), it needs another reviewer."
    )


def _grant_until_note(reviewer: Reviewer) -> str | None:
    """What the request page says of grants to a reviewer signed in with OpenID."""
    if reviewer.grant_until is None:
        return None
    return (
        "You signed in with OpenID: a grant you give ends by "
        f"{reviewer.grant_until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC at the latest, when "
        "this sign-in reaches its max age (the provider is then asked for your groups "
        "again). A longer grant is shortened."
    )


def _shortened_grant(decided: ApprovalRequest, reviewer: Reviewer, asked: int) -> str:
    """`` Your grant was shortened …`` when the service recorded fewer minutes than asked."""
    key = reviewer.principal.who.key
    given = [d.grant_minutes for d in decided.approvals if d.reviewer == key]
    if not given or given[0] is None or given[0] >= asked:
        return ""
    return (
        f" Your grant was shortened from {asked} to {given[0]} minutes: it may not outlast "
        "your OpenID sign-in's max age, after which the provider is asked for your groups again."
    )


#: how many params a row's summary names, and how much of each value it shows
SUMMARY_KEYS: Final = 3
SUMMARY_VALUE: Final = 40


def _summary_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, int | float):
        text = f"{value:,}"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "{" + counted(len(value), "key") + "}"
    elif isinstance(value, list):
        text = f"[{counted(len(value), 'item')}]"
    else:
        text = str(value)
    return text if len(text) <= SUMMARY_VALUE else text[: SUMMARY_VALUE - 1] + "…"


#: the list's query parameters, in the order its links carry them
LIST_PARAMS: Final = ("sort", "risk", "agent", "rule")


def _pending_filters(query: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The Pending list's sort and filters from a query, and what was wrong with it.

    A value the list cannot take is dropped with a message naming it, the
    same check the JSON API makes (there a 422).
    """
    problems: list[str] = []
    shown = {
        "sort": "newest",
        "risk": "",
        "agent": query.get("agent", "").strip()[:200],
        "rule": query.get("rule", "").strip()[:200],
    }
    try:
        shown["sort"] = request_sort(query.get("sort"))
    except ApprovalServiceError as exc:
        problems.append(f"{exc.message}; showing newest first.")
    try:
        levels = risk_levels(query.get("risk"))
    except ApprovalServiceError as exc:
        problems.append(f"{exc.message}; showing every risk.")
    else:
        if levels:
            shown["risk"] = ",".join(level.name.lower() for level in sorted(levels, reverse=True))
    return shown, problems


def _filtered(shown: Mapping[str, str]) -> bool:
    return any(shown[name] for name in ("risk", "agent", "rule"))


def _list_params(shown: Mapping[str, str]) -> dict[str, str]:
    """The query parameters that bring the list back as ``shown`` (defaults left out)."""
    return {
        name: shown[name]
        for name in LIST_PARAMS
        if shown[name] and not (name == "sort" and shown[name] == "newest")
    }


def _list_query(shown: Mapping[str, str]) -> str:
    return urllib.parse.urlencode(_list_params(shown))


def _store_filters(shown: Mapping[str, str], reviewer: Reviewer) -> dict[str, Any]:
    """The store's filters of ``shown``, for the requests this reviewer's groups may decide."""
    return {
        "risk": frozenset(RiskLevel[name.upper()] for name in shown["risk"].split(","))
        if shown["risk"]
        else None,
        "requester": shown["agent"] or None,
        "rule": shown["rule"] or None,
        "groups": reviewer.principal.groups,
    }


#: how many keys or items of one object or list show before "N more ... expand"
PARAMS_ITEMS: Final = 25
#: how many characters of one string show before "N more characters ... expand"
PARAMS_TEXT: Final = 600
#: how deep the tree nests before a value shows as JSON text (wrapped alike)
PARAMS_DEPTH: Final = 6


def _text_node(kind: str, text: str) -> dict[str, Any]:
    if len(text) <= PARAMS_TEXT:
        return {"kind": kind, "text": text, "rest": ""}
    return {"kind": kind, "text": text[:PARAMS_TEXT], "rest": text[PARAMS_TEXT:]}


def params_tree(value: Any, depth: int = 0) -> dict[str, Any]:
    """The params as a tree the request page draws as nested key/value lists.

    An object or list shows its first :data:`PARAMS_ITEMS` entries and keeps
    the rest behind a cue naming how many; a string its first
    :data:`PARAMS_TEXT` characters, likewise; below :data:`PARAMS_DEPTH`
    levels a value is its JSON text. Nothing is left out: every value is on
    the page, some behind an "expand". The template escapes every key and
    value, as it does all an agent wrote.
    """
    if isinstance(value, Mapping | list) and value and depth >= PARAMS_DEPTH:
        return _text_node("json", json.dumps(value, ensure_ascii=False, default=str))
    if isinstance(value, Mapping):
        entries = [(str(key), params_tree(item, depth + 1)) for key, item in value.items()]
        return _container("map", entries)
    if isinstance(value, list):
        entries = [(str(index), params_tree(item, depth + 1)) for index, item in enumerate(value)]
        return _container("list", entries)
    if isinstance(value, str):
        return _text_node("str" if value else "empty", value or '""')
    if isinstance(value, bool) or value is None:
        return {"kind": "lit", "text": json.dumps(value), "rest": ""}
    if isinstance(value, int | float):
        return {"kind": "num", "text": json.dumps(value), "rest": ""}
    return _text_node("str", str(value))


def _container(kind: str, entries: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return {
        "kind": kind,
        "size": len(entries),
        "shown": entries[:PARAMS_ITEMS],
        "hidden": entries[PARAMS_ITEMS:],
    }


def params_summary(params: Any) -> str:
    """The first few params as ``key: value`` pairs, to tell one request from the next."""
    pairs, more = _summary_pairs(params)
    parts = [f"{key}: {value}" for key, value in pairs]
    if more:
        parts.append(f"+{more} more")
    return " · ".join(parts)


def _summary_pairs(params: Any) -> tuple[list[tuple[str, str]], int]:
    """The first few params as (key, shortened value), and how many more there are.

    The list's rows draw each key and value apart, so a right-to-left value
    keeps its own direction and its neighbours theirs.
    """
    if not isinstance(params, Mapping) or not params:
        return [], 0
    keys = list(params)
    pairs = [(str(key), _summary_value(params[key])) for key in keys[:SUMMARY_KEYS]]
    return pairs, max(0, len(keys) - SUMMARY_KEYS)


def why_summary(item: ApprovalRequest) -> str:
    """One line of why a person is asked.

    The conditions that held and the decision's reason (a limit's count and
    window), else the rule's description.
    """
    why = item.why
    if why is not None:
        parts = [*why.conditions, why.reason] if why.reason else list(why.conditions)
        if parts:
            return "; ".join(parts)
        if why.description:
            return why.description
    return item.reason


def _request_view(item: ApprovalRequest, now: datetime) -> dict[str, Any]:
    """What the templates show of a request: its JSON plus clocks and the risk's name."""
    view = item.to_json()
    view["risk"] = item.risk_level.name
    view["summary"] = params_summary(view["action"]["params"])
    view["summary_pairs"], view["summary_more"] = _summary_pairs(view["action"]["params"])
    view["why_line"] = why_summary(item)
    view["waiting"] = human_duration((now - item.created_at).total_seconds())
    left = (item.expires_at - now).total_seconds()
    view["time_left"] = human_duration(left) if left > 0 else "expired"
    view["urgent"] = left < 300
    # epoch milliseconds for the script's clocks (Date.parse is unsure of microseconds)
    view["approved"] = len(item.approvals)
    view["created_ms"] = int(item.created_at.timestamp() * 1000)
    view["expires_ms"] = int(item.expires_at.timestamp() * 1000)
    return view


def request_outcome(item: ApprovalRequest, now: datetime) -> dict[str, str | None] | None:
    """What became of a request nobody can decide any more, or ``None`` while it is open.

    The request page shows it in place of the form, as one sentence:
    ``says`` (the status and who decided, or why it ended), ``at`` (when,
    ISO; ``None`` when the store keeps no time for it), then ``then`` (what
    followed, or ``None``). A pending request past its expiry has expired,
    though the sweeper may not have marked it yet.
    """
    status = item.status
    if status is RequestStatus.PENDING:
        if not item.is_expired_at(now):
            return None
        status = RequestStatus.EXPIRED
    word = status.value.capitalize()
    if status is RequestStatus.EXPIRED:
        given = len(item.approvals)
        then = "without a decision"
        if given:
            then = f"with {given} of the {item.approvers} approvals it needed"
        then += "; the agent was refused"
        return {"status": status.value, "says": word, "at": iso(item.expires_at), "then": then}
    verdict = _VERDICTS.get(status)
    deciding = [d for d in item.decisions if d.verdict is verdict]
    if not deciding:  # cancelled, or approved by a grant: the store says why
        says = f"{word}: {item.status_reason}" if item.status_reason else word
        return {"status": status.value, "says": says, "at": None, "then": None}
    names = ", ".join(d.identity.display for d in deciding)
    return {
        "status": status.value,
        "says": f"{word} by {names}",
        "at": iso(deciding[-1].at),
        "then": None,
    }


#: the reviewers' verdict that ends a request in each final status
_VERDICTS: Final = {RequestStatus.APPROVED: Verdict.APPROVE, RequestStatus.DENIED: Verdict.DENY}


def _audit_filters(shown: Mapping[str, str]) -> dict[str, Any]:
    """The audit query of the page's fields, checked as ``aegis audit list`` checks them."""
    filters: dict[str, Any] = {}
    for field, keyword in SHORT_NAMES.items():
        if shown.get(field) and field not in {"since", "until"}:  # times: read below
            filters[keyword] = shown[field]
    if shown.get("risk") and shown["risk"].upper() not in RiskLevel.__members__:
        raise ValueError(f"risk {shown['risk']!r} is not low, medium, high or critical")
    if shown.get("status") and shown["status"] not in {s.value for s in ResultStatus}:
        raise ValueError(f"status {shown['status']!r} is not a result status")
    for field in ("since", "until"):
        if shown.get(field):
            try:
                moment = datetime.fromisoformat(shown[field])
            except ValueError:
                raise ValueError(
                    f"{field} {shown[field]!r} is not an ISO 8601 time, e.g. 2026-01-31T09:00"
                ) from None
            filters[field] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if shown.get("after"):
        after = shown["after"]
        if not after.isascii() or not after.isdigit() or int(after) >= 2**63:
            raise ValueError("after must be a record id")
        filters["after_id"] = int(shown["after"])
    return filters


def _safe_next(value: str | None) -> str:
    """A local path to return to after sign-in; anything else becomes ``""``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return ""
    parts = urllib.parse.urlsplit(value)
    return "" if parts.scheme or parts.netloc else value
