"""How a browser proves who it is to the inbox, and that a form came from the inbox.

Three signed cookies, all HttpOnly and ``SameSite=Strict`` (and ``Secure``
whenever the inbox is reached over TLS, directly or through a proxy):

- the **session**: a random secret naming a session the server keeps
  (:class:`~aegis.core.approval_request.InboxSession`, in the approval
  store, under the secret's hash). The server's row says who signed in
  (the token's hash, or another sign-in's identity), the session's CSRF
  token and when it ends. Signing out ends the row, so a copied cookie is
  worthless from then on, in every service process; and nobody can make a
  session from what the store holds (a token's hash), they would need the
  secret of a session the server created;
- the **sign-in nonce**: the sign-in form echoes it, so another site cannot
  sign a browser in under someone else's token;
- a one-shot **message** shown by the next page after a redirect (in a
  cookie, not the address, so that no link can put words on an inbox page).

A posted form counts only when its ``csrf`` field matches the session's
token, its Origin (or Referer) is the inbox's own, and it is small.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from aegis.core.approval_request import InboxSession
from aegis.errors import ConfigurationError
from aegis.stores.approvals import ApprovalStore

__all__ = ["MAX_FORM", "BrowserSessions", "Session"]

SESSION_COOKIE: Final = "aegis_session"
SIGNIN_COOKIE: Final = "aegis_signin"
FLASH_COOKIE: Final = "aegis_flash"

#: seconds the sign-in form stays valid
SIGNIN_TTL: Final = 900
#: seconds a one-shot message waits for the page it was meant for
FLASH_TTL: Final = 60
#: bytes a posted form may have; the inbox's forms are small
MAX_FORM: Final = 64 * 1024

#: a valid session of the store: who, its CSRF token, when it ends
Session = InboxSession


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BrowserSessions:
    """The inbox's sessions (kept by the server), signed cookies and checks on posted forms.

    Args:
        store: keeps the sessions (the approval store, shared by every
            service process of a deployment).
        key: signs every cookie; the same key in every process (and across
            restarts) keeps reviewers signed in. Random when ``None``.
        ttl: seconds a session lasts after sign-in.
        public_url: the inbox's address as browsers see it when a proxy in
            front terminates TLS: forms from its origin are accepted too,
            and with ``https`` the cookies are ``Secure``.
        clock: the current aware time.
    """

    def __init__(
        self,
        store: ApprovalStore,
        key: str | bytes | None = None,
        *,
        ttl: float,
        public_url: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        key = key if key else secrets.token_bytes(32)
        self.store = store
        self._sessions = URLSafeTimedSerializer(key, salt="aegis.inbox.session.v2")
        self._nonces = URLSafeTimedSerializer(key, salt="aegis.inbox.signin")
        self._flashes = URLSafeTimedSerializer(key, salt="aegis.inbox.flash")
        self.ttl = int(ttl)
        self.clock = clock
        public = urllib.parse.urlsplit(public_url) if public_url else None
        self._public_origin = (public.scheme, public.netloc) if public else None

    # ---------------------------------------------------------------- the session

    def _secret(self, request: Request) -> str | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            secret = self._sessions.loads(raw, max_age=self.ttl)
        except BadSignature:  # SignatureExpired is one too
            return None
        return secret if isinstance(secret, str) and secret else None

    async def read(self, request: Request) -> Session | None:
        """The server's session named by the request's cookie, if it is signed and active."""
        secret = self._secret(request)
        if secret is None:
            return None
        session = await asyncio.to_thread(self.store.get_session, _hash(secret))
        if session is None or not session.active_at(self.clock()):
            return None
        return session

    async def start(
        self,
        request: Request,
        response: Response,
        *,
        token_hash: str | None = None,
        identity: Mapping[str, Any] | None = None,
        ttl: float | None = None,
    ) -> Session:
        """Start a session on the server for a token (by its hash) or an identity.

        The browser gets a cookie naming it; any session the browser had
        before is ended (a fresh session at each sign-in). ``ttl`` shortens
        this session's life below the inbox's (an OpenID sign-in's max age).
        """
        if (token_hash is None) == (identity is None):
            raise ConfigurationError("a session is for a token_hash or an identity, one of them")
        old = self._secret(request)
        if old is not None:
            await asyncio.to_thread(self.store.end_session, _hash(old), self.clock())
        secret = secrets.token_urlsafe(32)
        now = self.clock()
        life = self.ttl if ttl is None else max(1, min(self.ttl, int(ttl)))
        session = InboxSession(
            id_hash=_hash(secret),
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            expires_at=now + timedelta(seconds=life),
            token_hash=token_hash,
            identity=dict(identity) if identity is not None else None,
        )
        await asyncio.to_thread(self.store.create_session, session)
        value = self._sessions.dumps(secret)
        self._set(request, response, SESSION_COOKIE, value, age=life, path="/")
        return session

    async def end(self, request: Request, response: Response) -> None:
        """End the browser's session on the server and forget its cookie."""
        secret = self._secret(request)
        if secret is not None:
            await asyncio.to_thread(self.store.end_session, _hash(secret), self.clock())
        response.delete_cookie(SESSION_COOKIE, path="/")

    # ---------------------------------------------------------------- sign-in nonce

    def set_nonce(self, request: Request, response: Response, nonce: str) -> None:
        """Set the sign-in form's nonce as a cookie that the posted form must match."""
        value = self._nonces.dumps(nonce)
        self._set(request, response, SIGNIN_COOKIE, value, age=SIGNIN_TTL, path="/signin")

    def nonce(self, request: Request) -> str:
        """The sign-in nonce of the request's cookie, or ``""``."""
        raw = request.cookies.get(SIGNIN_COOKIE)
        if not raw:
            return ""
        try:
            return str(self._nonces.loads(raw, max_age=SIGNIN_TTL))
        except BadSignature:
            return ""

    def drop_nonce(self, response: Response) -> None:
        """The sign-in is done: the nonce is used up."""
        response.delete_cookie(SIGNIN_COOKIE, path="/signin")

    # ---------------------------------------------------------------- messages

    def flash(self, request: Request, response: Response, kind: str, text: str) -> None:
        """Leave ``text`` for the next page (``kind`` is ok, error or info)."""
        value = self._flashes.dumps([kind, text])
        self._set(request, response, FLASH_COOKIE, value, age=FLASH_TTL, path="/")

    def flashes(self, request: Request) -> list[tuple[str, str]]:
        """The message left for this page, if any."""
        raw = request.cookies.get(FLASH_COOKIE)
        if not raw:
            return []
        try:
            data = self._flashes.loads(raw, max_age=FLASH_TTL)
        except BadSignature:
            return []
        if isinstance(data, list) and len(data) == 2 and all(isinstance(x, str) for x in data):
            return [(data[0], data[1])]
        return []

    def drop_flashes(self, request: Request, response: Response) -> None:
        """The message was shown: do not show it again."""
        if request.cookies.get(FLASH_COOKIE):
            response.delete_cookie(FLASH_COOKIE, path="/")

    # ---------------------------------------------------------------- forms

    def secure(self, request: Request) -> bool:
        """Whether cookies get ``Secure``: served over TLS, here or by a proxy in front."""
        return request.url.scheme == "https" or (
            self._public_origin is not None and self._public_origin[0] == "https"
        )

    def same_origin(self, request: Request) -> bool:
        """Whether a post comes from the inbox's own pages (by Origin, else Referer)."""
        # SameSite=Strict keeps the cookies off cross-site posts already; this
        # also refuses a post whose Origin (or Referer) names another site.
        # Browsers send "Origin: null" from sandboxed or privacy-stripped
        # contexts: refused too; the pages' Referrer-Policy keeps ours real.
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin is None:
            return True  # not a browser: no browser omits both on a form post
        parts = urllib.parse.urlsplit(origin)
        given = (parts.scheme, parts.netloc)
        return given in {(request.url.scheme, request.url.netloc), self._public_origin}

    async def form(self, request: Request, csrf: str) -> FormData | None:
        """The posted form when it is from the inbox and carries ``csrf``; else ``None``."""
        if not csrf or not self.same_origin(request):
            return None
        declared = request.headers.get("content-length", "")
        if not declared.isdigit() or int(declared) > MAX_FORM:
            return None  # a browser always says how long a form is
        seconds = float(getattr(request.app.state, "read_timeout", 10.0))
        try:
            async with asyncio.timeout(seconds):  # a form sent a byte at a time is refused
                form = await request.form(max_files=0, max_fields=20, max_part_size=MAX_FORM)
        except Exception:  # a malformed or too slow form is refused like a forged one
            return None
        given = form.get("csrf")
        if not isinstance(given, str) or not hmac.compare_digest(given, csrf):
            return None
        return form

    def _set(
        self,
        request: Request,
        response: Response,
        name: str,
        value: str,
        *,
        age: int,
        path: str,
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=age,
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
            path=path,
        )
