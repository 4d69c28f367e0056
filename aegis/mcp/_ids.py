"""JSON-RPC id bookkeeping of one relayed connection, apart from governance.

The proxy speaks to two peers under two id spaces, as the official SDK's
sessions keep their request ids apart from what their handlers do:

- toward the **server**, every request goes out under a fresh integer id of
  the proxy's own, so a client's id never reaches the server and two
  clients' ids can never collide there; the reply comes back to the future
  waiting under that id, and the client's id is known again;
- toward the **client**, the server's own requests (sampling, elicitation,
  roots) and the proxy's own (the approval link) go out under fresh
  integer ids too, and the client's answers are routed back by them;
- a progress token names the client request it reports on, while that
  request is in flight.

Nothing here decides anything: :class:`~aegis.mcp.proxy.ProxySession`
governs, and asks this table only where a message belongs.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aegis.mcp._jsonrpc import Message, RequestId

__all__ = ["MAX_CLIENT_PENDING", "IdTable", "id_key"]

#: the server's own requests waiting for the client's answer at most; past
#: it the server's next request is answered with an error at once (a client
#: that never answers must not make the table grow for ever)
MAX_CLIENT_PENDING = 256


def id_key(request_id: RequestId) -> tuple[type, RequestId]:
    """A JSON-RPC id as a dictionary key: 1 and "1" are different ids."""
    return (type(request_id), request_id)


class IdTable:
    """Where each message of one relayed connection belongs, by its JSON-RPC id."""

    __slots__ = (
        "_client_ids",
        "_own",
        "_pending",
        "_progress",
        "_relayed",
        "_relayed_ids",
        "_server_ids",
    )

    def __init__(self) -> None:
        # server-side id -> (future of its reply, the client's id)
        self._pending: dict[int, tuple[asyncio.Future[Message], RequestId]] = {}
        self._server_ids = itertools.count(1)
        # id the client sees -> the server's id, for the server's own requests
        self._relayed: dict[int, RequestId] = {}
        # the server's id -> the id the client sees, to name it in the server's cancel
        self._relayed_ids: dict[tuple[type, RequestId], int] = {}
        # ids of the proxy's own requests to the client, oldest first
        self._own: dict[int, None] = {}
        self._client_ids = itertools.count(1)
        # progress token -> the client request it reports on
        self._progress: dict[tuple[type, Any], RequestId] = {}

    # -------------------------------------------------------------- toward the server

    def open(
        self, client_id: RequestId, token: tuple[type, Any] | None
    ) -> tuple[int, asyncio.Future[Message]]:
        """A fresh server-side id for the client's request ``client_id``, and its reply's future."""
        server_id = next(self._server_ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[server_id] = (future, client_id)
        if token is not None:
            self._progress[token] = client_id
        return server_id, future

    def close(self, server_id: int, token: tuple[type, Any] | None) -> None:
        """Forget ``server_id`` (answered, timed out or cancelled)."""
        self._pending.pop(server_id, None)
        if token is not None:
            self._progress.pop(token, None)

    def answered(self, reply: Message) -> bool:
        """Hand the server's ``reply`` to the request waiting for it; ``False`` if none waits."""
        server_id = reply["id"]
        pending = self._pending.get(server_id) if type(server_id) is int else None
        if pending is None:
            return False
        if not pending[0].done():
            pending[0].set_result(reply)
        return True

    def fail(self, server_id: RequestId, exc: BaseException) -> bool:
        """Fail the request waiting under ``server_id``; ``False`` if none waits."""
        pending = self._pending.get(server_id) if type(server_id) is int else None
        if pending is None:
            return False
        if not pending[0].done():
            pending[0].set_exception(exc)
        return True

    def fail_all(self, exc: BaseException) -> None:
        """Fail every request waiting for the server (it is gone)."""
        for future, _ in list(self._pending.values()):
            if not future.done():
                future.set_exception(exc)

    def progress_of(self, token: object) -> RequestId | None:
        """The client request a progress ``token`` reports on, while it is in flight."""
        if not isinstance(token, str | int):
            return None
        return self._progress.get((type(token), token))

    def only_request(self) -> RequestId | None:
        """The client's id of the one request waiting for the server, if exactly one is."""
        if len(self._pending) == 1:
            return next(iter(self._pending.values()))[1]
        return None

    # -------------------------------------------------------------- toward the client

    def relay(self, server_id: RequestId) -> int | None:
        """A fresh id for the client, standing for the server's own request ``server_id``.

        ``None`` when :data:`MAX_CLIENT_PENDING` of the server's requests
        already wait for the client: the request is to be refused.
        """
        if len(self._relayed) >= MAX_CLIENT_PENDING:
            return None
        client_id = next(self._client_ids)
        self._relayed[client_id] = server_id
        self._relayed_ids[id_key(server_id)] = client_id
        return client_id

    @property
    def waiting_for_client(self) -> int:
        """How many of the server's requests wait for the client's answer."""
        return len(self._relayed)

    def withdrawn(self, server_id: object) -> int | None:
        """The client's id of the server's request ``server_id``, which the server cancelled.

        The request is forgotten (the client answers no cancelled request);
        ``None`` when no such request waits for the client.
        """
        if not isinstance(server_id, str | int) or isinstance(server_id, bool):
            return None
        client_id = self._relayed_ids.pop(id_key(server_id), None)
        if client_id is not None:
            self._relayed.pop(client_id, None)
        return client_id

    def own(self) -> int:
        """A fresh id for the proxy's own request to the client.

        Only the newest :data:`MAX_CLIENT_PENDING` are remembered: an answer
        to an older one (a courtesy the proxy does not wait for) is dropped.
        """
        client_id = next(self._client_ids)
        self._own[client_id] = None
        if len(self._own) > MAX_CLIENT_PENDING:
            del self._own[next(iter(self._own))]
        return client_id

    def client_answered(self, response_id: RequestId) -> tuple[str, RequestId | None]:
        """Where the client's answer to ``response_id`` goes.

        ``("own", None)`` for an answer to the proxy's own request,
        ``("server", id)`` for one to the server's request ``id``, and
        ``("unknown", None)`` for anything else.
        """
        if type(response_id) is not int:
            return "unknown", None
        if response_id in self._own:
            del self._own[response_id]
            return "own", None
        server_id = self._relayed.pop(response_id, None)
        if server_id is None:
            return "unknown", None
        key = id_key(server_id)
        if self._relayed_ids.get(key) == response_id:
            del self._relayed_ids[key]
        return "server", server_id
