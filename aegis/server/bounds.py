"""Bounds on what one client can hold: time to send a request, Host names, open long polls.

- :func:`bounded_protocol` closes a connection whose request head (the
  request line and headers) has not fully arrived ``head_timeout`` seconds
  after the connection opened or the previous response ended; uvicorn
  alone waits forever for a client that sends one byte a minute. Bodies
  are bounded where they are read (:func:`read_within`).
- :class:`LoopbackHosts` refuses requests whose ``Host`` is not a loopback
  name (or the public URL's host) when the service listens on loopback
  only: a web page on another site cannot reach it through DNS
  rebinding, where a name the attacker controls resolves to 127.0.0.1.
- :class:`PollSlots` bounds the long polls one token may hold open at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from aegis.errors import ApprovalServiceError

__all__ = [
    "DEFAULT_READ_TIMEOUT",
    "LoopbackHosts",
    "PollSlots",
    "bounded_protocol",
    "read_within",
]

#: seconds a client has to send a request's head, and then its body
DEFAULT_READ_TIMEOUT: Final = 10.0

T = TypeVar("T")


def bounded_protocol(head_timeout: float = DEFAULT_READ_TIMEOUT) -> type[Any]:
    """uvicorn's HTTP/1.1 protocol with a deadline for each request head (``Config(http=...)``).

    The clock starts when the connection opens and again when a response
    ends; it stops when a request's head is complete. At the deadline the
    connection is closed.
    """
    # Imported here: only `aegis serve` runs uvicorn; the service and the
    # polls' bound are used without it (tests, the CLI's grant revocation).
    from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: PLC0415

    class BoundedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_cycle: Any = None
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._head_cycle = self.cycle
            self._head_timer = self.loop.call_later(head_timeout, self._head_expired)

        def _disarm(self) -> None:
            timer = getattr(self, "_head_timer", None)
            if timer is not None:
                timer.cancel()
                self._head_timer = None

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_timer is not None and self.cycle is not self._head_cycle:
                self._disarm()  # a new request's head is complete

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (
                self.cycle is None or self.cycle.response_complete
            ):
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _head_expired(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return BoundedH11Protocol


async def read_within(
    seconds: float, read: Callable[[], Awaitable[T]], what: str = "the request body"
) -> T:
    """``await read()``, or a 408 when it takes longer than ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            return await read()
    except TimeoutError:
        raise ApprovalServiceError(
            f"{what} did not arrive within {seconds:g}s", status=408, code="too_slow"
        ) from None


#: names of the loopback interface a browser may send as Host
_LOOPBACK_NAMES: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def _host_name(value: str) -> str:
    """The host of a ``Host`` header, without port; brackets of IPv6 removed; lowercase."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class LoopbackHosts:
    """Refuse (421) requests naming a Host other than loopback or the public URL's.

    Args:
        app: the ASGI app behind.
        public_url: the address reviewers use (behind a proxy); its host is allowed.
        extra: more host names to allow.
    """

    def __init__(self, app: ASGIApp, *, public_url: str | None = None, extra: Iterable[str] = ()):
        self.app = app
        allowed = set(_LOOPBACK_NAMES) | {name.lower() for name in extra}
        if public_url:
            host = urllib.parse.urlsplit(public_url).hostname
            if host:
                allowed.add(host.lower())
        self.allowed = frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass requests for an allowed Host on; answer others with 421."""
        if scope["type"] in ("http", "websocket"):
            raw = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if _host_name(raw) not in self.allowed:
                body = (
                    b'{"error": {"status": 421, "code": "foreign_host", "message": '
                    b'"this service answers only for its own address (Host header)"}}'
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 421,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class PollSlots:
    """At most ``per_token`` long polls open at once for one token.

    A poll that finds no free slot is refused with a 429 at once, so that
    one client cannot make the service hold hundreds of waits (each
    re-reading the store) and slow everybody's decisions down.
    """

    def __init__(self, per_token: int = 16) -> None:
        self.per_token = per_token
        self._open: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, who: str) -> AsyncIterator[None]:
        """Hold one of ``who``'s slots while the block runs."""
        count = self._open.get(who, 0)
        if count >= self.per_token:
            raise ApprovalServiceError(
                f"{who} already holds {count} open waits, the most one token may; "
                "wait for one to finish",
                status=429,
                code="too_many_waits",
            )
        self._open[who] = count + 1
        try:
            yield
        finally:
            left = self._open[who] - 1
            if left:
                self._open[who] = left
            else:
                del self._open[who]
