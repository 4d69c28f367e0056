"""Reviewers sign in to the inbox with the company's OpenID provider.

The authorization code flow with PKCE, done with Authlib: the inbox sends
the browser to the provider with a fresh ``state``, ``nonce`` and PKCE
``code_challenge`` (all three kept in a short-lived signed cookie, never
on the server); the provider sends it back to ``/signin/oidc/callback``
with a code, which the server exchanges (with the PKCE verifier and the
client's secret) for an ID token. The ID token counts only when it is
signed by a key of the issuer's JWKS (with an algorithm the issuer
announces; never ``none``, never a shared-secret one), and its ``iss``,
``aud``, ``azp``, ``exp``, ``iat`` and ``nonce`` are right. The person is
then the issuer and the token's ``sub``, with the ``name`` beside it
(:class:`~aegis.core.identity.Identity`), and the groups claim says which
reviewer groups they are in.

Those groups are the provider's word at sign-in, and the inbox trusts that
word for :attr:`OidcSettings.max_age` seconds (``--oidc-max-age``, an hour
by default): then the session ends, and the person signs in again, which
asks the provider again (whose single sign-on usually makes it one click).
So a person the provider takes out of a group decides for it no longer than
that bound. The bound is the inbox's own, not the ID token's ``exp``: that
says how long the token may be accepted, and providers set it anywhere from
five minutes to a day.

Anything missing, malformed or unexpected ends the sign-in with a message
that says what, and nobody signed in: it fails closed.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import secrets
import time
import urllib.parse
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from aegis.core.identity import Identity
from aegis.errors import ConfigurationError

if TYPE_CHECKING:
    from authlib.integrations.httpx_client import AsyncOAuth2Client
    from joserfc.jwk import KeySet

# Authlib and joserfc (the ``oidc`` extra) are imported where a sign-in
# needs them: an inbox without OpenID sign-in, or reading a session, needs
# neither.

__all__ = [
    "CALLBACK_PATH",
    "DEFAULT_MAX_AGE",
    "FLOW_COOKIE",
    "MIN_MAX_AGE",
    "OidcError",
    "OidcSettings",
    "OidcSignIn",
    "OidcUser",
]

_log = logging.getLogger("aegis.server.oidc")

#: where the provider sends the browser back: ``{public url}/signin/oidc/callback``
CALLBACK_PATH: Final = "/signin/oidc/callback"
#: the cookie that carries one sign-in's state, nonce and PKCE verifier
FLOW_COOKIE: Final = "aegis_oidc"
#: seconds a person has at the provider before the sign-in must start over
FLOW_TTL: Final = 600
#: seconds the provider's metadata and keys are kept before being read again
METADATA_TTL: Final = 3600.0
#: seconds of clock difference that ``exp`` and ``iat`` forgive (with the provider), and
#: a session's start (between the inbox's processes)
LEEWAY: Final = 60
#: seconds an OpenID sign-in, and the groups it read, count before the provider is asked again
DEFAULT_MAX_AGE: Final = 3600.0
#: the shortest max age: a person signs in, reads a request and decides within it
MIN_MAX_AGE: Final = 10.0
#: signature algorithms with a public key: the JWKS can vouch only for these
ASYMMETRIC: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class OidcError(Exception):
    """A sign-in that did not succeed; the message is shown to the person."""


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """How the inbox reaches its OpenID provider.

    Args:
        issuer: the provider's issuer URL, exactly as its discovery document
            and its ID tokens say it (``https://id.example.com``);
            ``https`` unless on a loopback address.
        client_id: the inbox's client id at the provider.
        client_secret: its secret; ``None`` for a public client (PKCE alone).
        groups_claim: the ID token claim listing the person's groups.
        scopes: asked for at sign-in; ``openid`` is always among them.
        required_groups: when given, only people in one of these groups
            may sign in at all.
        label: the provider's name on the sign-in button (its host by default).
        max_age: seconds the provider's word on a person (and their groups)
            is trusted: an OpenID session ends this long after sign-in, and
            signing in again asks the provider afresh (:data:`DEFAULT_MAX_AGE`;
            at least :data:`MIN_MAX_AGE`).
    """

    issuer: str
    client_id: str
    client_secret: str | None = None
    groups_claim: str = "groups"
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    required_groups: tuple[str, ...] = ()
    label: str = ""
    max_age: float = 3600.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.issuer)
        if parts.scheme not in {"https", "http"} or not parts.netloc:
            raise ConfigurationError(f"the OpenID issuer {self.issuer!r} is not an http(s) URL")
        if parts.query or parts.fragment:
            raise ConfigurationError(
                f"the OpenID issuer {self.issuer!r} may not hold a query or fragment"
            )
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ConfigurationError(
                f"the OpenID issuer {self.issuer!r} is plain http on another host; "
                "an issuer must be https (http only on a loopback address, for tests)"
            )
        if not self.client_id:
            raise ConfigurationError("an OpenID client id is needed (--oidc-client-id)")
        if not self.groups_claim:
            raise ConfigurationError("the groups claim needs a name")
        age = self.max_age
        if isinstance(age, bool) or not isinstance(age, int | float) or not 0 < age < math.inf:
            raise ConfigurationError(
                f"the OpenID max age (--oidc-max-age) must be a positive number of seconds, "
                f"got {age!r}"
            )
        if age < MIN_MAX_AGE:
            raise ConfigurationError(
                f"the OpenID max age (--oidc-max-age) must be at least {MIN_MAX_AGE:g} seconds, "
                f"got {age:g}: a shorter one ends each session before its first page is read"
            )
        if "openid" not in self.scopes:
            object.__setattr__(self, "scopes", ("openid", *self.scopes))

    def admits(self, groups: Collection[str]) -> bool:
        """Whether a person in ``groups`` may review here (:attr:`required_groups`)."""
        return not self.required_groups or bool(set(groups) & set(self.required_groups))

    @property
    def name(self) -> str:
        """The provider's name for people: the label, or the issuer's host."""
        return self.label or urllib.parse.urlsplit(self.issuer).netloc


@dataclass(frozen=True, slots=True)
class OidcUser:
    """Who signed in: their identity and the groups the provider says they are in."""

    identity: Identity
    groups: tuple[str, ...]

    def to_session(self) -> dict[str, Any]:
        """What the server's session keeps of them."""
        return {
            "kind": "oidc",
            "issuer": self.identity.issuer,
            "subject": self.identity.subject,
            "name": self.identity.name,
            "groups": list(self.groups),
        }

    @classmethod
    def from_session(cls, data: Any) -> OidcUser | None:
        """The user a session's identity names, or ``None`` if it names none."""
        if not isinstance(data, dict) or data.get("kind") != "oidc":
            return None
        fields = (data.get("issuer"), data.get("subject"), data.get("name"))
        groups = data.get("groups")
        if not all(isinstance(f, str) for f in fields) or not isinstance(groups, list):
            return None
        if not fields[0] or not fields[1] or not all(isinstance(g, str) for g in groups):
            return None
        return cls(Identity(str(fields[0]), str(fields[1]), str(fields[2])), tuple(groups))


class OidcSignIn:
    """The authorization code flow with PKCE against one OpenID provider.

    Args:
        settings: the provider and this client.
        key: signs the flow cookie (the inbox's session key).
        redirect_base: the inbox's address as browsers reach it (``--public-url``
            or the bound address); the redirect URI is this and
            :data:`CALLBACK_PATH`. ``None`` takes the address each request came to.
        timeout: seconds for each call to the provider.
        clock: the current time in seconds since the epoch, for ``exp``
            and ``iat`` (``time.time`` by default).
    """

    def __init__(
        self,
        settings: OidcSettings,
        key: str | bytes,
        *,
        redirect_base: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self._flows = URLSafeTimedSerializer(key, salt="aegis.inbox.oidc")
        self._redirect_base = redirect_base.rstrip("/") if redirect_base else None
        self._timeout = timeout
        self._clock = clock or time.time
        self._metadata: tuple[float, dict[str, Any]] | None = None
        self._jwks: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    # -------------------------------------------------------------- the provider

    def _client(self) -> AsyncOAuth2Client:
        from authlib.integrations.httpx_client import AsyncOAuth2Client  # noqa: PLC0415

        secret = self.settings.client_secret
        return AsyncOAuth2Client(
            client_id=self.settings.client_id,
            client_secret=secret,
            token_endpoint_auth_method="client_secret_basic" if secret else "none",
            scope=" ".join(self.settings.scopes),
            code_challenge_method="S256",
            timeout=self._timeout,
            follow_redirects=False,
        )

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with self._client() as client:
                response = await client.request("GET", url, withhold_token=True)
        except Exception as exc:  # any transport failure: the provider cannot be read
            raise OidcError(f"the identity provider's {what} could not be read ({exc})") from exc
        if response.status_code != 200:
            raise OidcError(f"the identity provider's {what} answered HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:
            raise OidcError(f"the identity provider's {what} is not JSON") from exc
        if not isinstance(data, dict):
            raise OidcError(f"the identity provider's {what} is not a JSON object")
        return data

    async def metadata(self, *, fresh: bool = False) -> dict[str, Any]:
        """The issuer's discovery document, checked to be the issuer's own."""
        async with self._lock:
            if not fresh and self._metadata and time.monotonic() < self._metadata[0]:
                return self._metadata[1]
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            data = await self._get_json(url, "discovery document")
            # OpenID Connect Discovery 4.3: the document's issuer is exactly ours.
            if data.get("issuer") != self.settings.issuer:
                raise OidcError(
                    f"the discovery document names issuer {data.get('issuer')!r}, not "
                    f"{self.settings.issuer!r}; --oidc-issuer must be the issuer exactly"
                )
            for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(data.get(field), str):
                    raise OidcError(f"the discovery document has no {field}")
            self._metadata = (time.monotonic() + METADATA_TTL, data)
            return data

    async def _keys(self, *, fresh: bool = False) -> KeySet:
        from joserfc.errors import JoseError  # noqa: PLC0415
        from joserfc.jwk import KeySet  # noqa: PLC0415

        metadata = await self.metadata()
        if fresh or self._jwks is None or time.monotonic() >= self._jwks[0]:
            data = await self._get_json(str(metadata["jwks_uri"]), "key set (JWKS)")
            self._jwks = (time.monotonic() + METADATA_TTL, data)
        try:
            return KeySet.import_key_set(self._jwks[1])  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise OidcError(f"the identity provider's key set cannot be read ({exc})") from exc

    # -------------------------------------------------------------- the flow

    def redirect_uri(self, request: Request) -> str:
        """``{public url or bound address}/signin/oidc/callback``."""
        base = self._redirect_base or str(request.base_url).rstrip("/")
        return base + CALLBACK_PATH

    async def begin(self, request: Request, response_factory: Any, next_page: str) -> Response:
        """Send the browser to the provider; ``response_factory(url)`` makes the redirect."""
        metadata = await self.metadata()
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # RFC 7636: 43 to 128 characters
        redirect_uri = self.redirect_uri(request)
        async with self._client() as client:
            url, _ = client.create_authorization_url(
                str(metadata["authorization_endpoint"]),
                state=state,
                code_verifier=verifier,
                nonce=nonce,
                redirect_uri=redirect_uri,
            )
        response: Response = response_factory(url)
        flow = {"s": state, "n": nonce, "v": verifier, "r": redirect_uri, "next": next_page}
        response.set_cookie(
            FLOW_COOKIE,
            self._flows.dumps(flow),
            max_age=FLOW_TTL,
            httponly=True,
            # Lax, not Strict: the provider's redirect back is a cross-site
            # navigation, and this cookie must come along on it.
            samesite="lax",
            secure=redirect_uri.startswith("https:"),
            path=CALLBACK_PATH,
        )
        return response

    def forget(self, response: Response) -> None:
        """The flow is over (done or failed): its cookie goes."""
        response.delete_cookie(FLOW_COOKIE, path=CALLBACK_PATH)

    def _flow(self, request: Request) -> dict[str, str]:
        raw = request.cookies.get(FLOW_COOKIE)
        if not raw:
            raise OidcError(
                "this sign-in was not started here, or took longer than "
                f"{FLOW_TTL // 60} minutes; please start again"
            )
        try:
            flow = self._flows.loads(raw, max_age=FLOW_TTL)
        except BadSignature:
            raise OidcError("this sign-in expired; please start again") from None
        if not isinstance(flow, dict) or not all(
            isinstance(flow.get(k), str) for k in ("s", "n", "v", "r", "next")
        ):
            raise OidcError("this sign-in's state is damaged; please start again")
        return {k: str(flow[k]) for k in ("s", "n", "v", "r", "next")}

    async def finish(self, request: Request) -> tuple[OidcUser, str]:
        """Check the provider's answer and the ID token; the user and the page to go to.

        Raises:
            OidcError: anything is missing, wrong or unverifiable.
        """
        flow = self._flow(request)
        query = request.query_params
        state = query.get("state") or ""
        if not hmac.compare_digest(state.encode(), flow["s"].encode()):
            raise OidcError("the answer does not belong to this sign-in (state); start again")
        if "iss" in query and query["iss"] != self.settings.issuer:
            # RFC 9207: an answer from another issuer (a mix-up attack)
            raise OidcError(f"the answer comes from issuer {query['iss']!r}, not ours")
        if query.get("error"):
            said = query.get("error_description") or query["error"]
            # the provider's words, shown and logged: printable, and not too many
            said = "".join(c if c.isprintable() else " " for c in said[:300])
            raise OidcError(f"the identity provider refused: {said}")
        code = query.get("code")
        if not code:
            raise OidcError("the identity provider sent no authorization code")
        metadata = await self.metadata()
        async with self._client() as client:
            try:
                token = await client.fetch_token(
                    str(metadata["token_endpoint"]),
                    grant_type="authorization_code",
                    code=code,
                    redirect_uri=flow["r"],
                    code_verifier=flow["v"],
                )
            except Exception as exc:  # Authlib's OAuthError, or the transport's
                raise OidcError(f"the code could not be exchanged for tokens ({exc})") from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise OidcError("the identity provider sent no ID token")
        user = await self.validate_id_token(id_token, flow["n"], token.get("access_token"))
        if not self.settings.admits(user.groups):
            raise OidcError(
                f"{user.identity.display} is in none of the groups allowed to review here "
                f"({', '.join(self.settings.required_groups)})"
            )
        return user, flow["next"]

    async def validate_id_token(
        self, id_token: str, nonce: str, access_token: Any = None
    ) -> OidcUser:
        """The person an ID token names, once its signature and every claim are checked.

        Raises:
            OidcError: a signature that does not verify with the issuer's
                keys, or a wrong ``iss``, ``aud``, ``azp``, ``nonce``,
                ``at_hash``, or an ``exp`` passed (or ``iat`` missing).
        """
        from authlib.oidc.core import CodeIDToken  # noqa: PLC0415
        from joserfc import jwt  # noqa: PLC0415
        from joserfc.errors import JoseError  # noqa: PLC0415
        from joserfc.jws import JWSRegistry  # noqa: PLC0415

        metadata = await self.metadata()
        announced = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [a for a in announced if a in ASYMMETRIC]
        if not algorithms:
            raise OidcError(
                "the identity provider signs ID tokens with no public-key algorithm "
                f"({', '.join(map(str, announced))}); Aegis accepts none of these"
            )
        registry = JWSRegistry(algorithms=algorithms)
        try:
            try:
                decoded = jwt.decode(id_token, await self._keys(), registry=registry)
            except JoseError:
                # Keys rotate: read the key set again once before refusing.
                decoded = jwt.decode(id_token, await self._keys(fresh=True), registry=registry)
        except JoseError as exc:
            raise OidcError(f"the ID token's signature does not verify ({exc.error})") from exc
        except ValueError as exc:
            raise OidcError(f"the ID token is malformed ({exc})") from exc
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": self.settings.issuer},
            "aud": {"essential": True, "value": self.settings.client_id},
            "sub": {"essential": True},
            "exp": {"essential": True},
            "iat": {"essential": True},
        }
        params = {"nonce": nonce, "client_id": self.settings.client_id}
        if isinstance(access_token, str):
            params["access_token"] = access_token
        checked = CodeIDToken(decoded.claims, decoded.header, options, params)
        try:
            checked.validate(now=int(self._clock()), leeway=LEEWAY)
        except JoseError as exc:
            raise OidcError(f"the ID token is not valid here ({exc.error}: {exc})") from exc
        return self._user(dict(checked))

    def _user(self, claims: dict[str, Any]) -> OidcUser:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise OidcError("the ID token names no subject")
        name = next(
            (
                str(claims[k])
                for k in ("name", "preferred_username", "email")
                if isinstance(claims.get(k), str) and claims[k]
            ),
            subject,
        )
        raw = claims.get(self.settings.groups_claim)
        if raw is None:
            groups: tuple[str, ...] = ()
        elif isinstance(raw, str):
            groups = (raw,)
        elif isinstance(raw, list) and all(isinstance(g, str) for g in raw):
            groups = tuple(raw)
        else:
            # Fail closed: groups we cannot read are no groups.
            _log.warning(
                "oidc: claim %r of %s is not a list of names; no groups given",
                self.settings.groups_claim,
                subject,
            )
            groups = ()
        return OidcUser(Identity(self.settings.issuer, subject, name), groups)
