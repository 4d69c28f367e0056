"""An HTTP/1.1 server on a free loopback port whose answers are raw bytes a test scripts.

It parses each request itself (request line, headers, a content-length
body) and hands it to the test's ``answer(request, connection)``, which
writes whatever bytes it likes on the real socket: a broken chunk, a body
that never ends, a header no server should send. ``answer`` returns
whether the connection stays open for another request. Every request is
kept, with the number of the TCP connection it came on, so a test can see
which connections the client reused.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    """One request as the server read it."""

    method: str
    headers: dict[str, str]
    body: bytes
    connection: int
    message: Any = field(init=False)

    def __post_init__(self) -> None:
        self.message = json.loads(self.body) if self.body else None

    @property
    def rpc_method(self) -> str | None:
        """The JSON-RPC method of a POSTed message, if it names one."""
        return self.message.get("method") if isinstance(self.message, dict) else None


Answer = Callable[[Request, socket.socket], bool]


def response(
    status: int = 200,
    body: bytes = b"",
    kind: str | None = "application/json",
    headers: dict[str, str] | None = None,
) -> bytes:
    """A whole HTTP/1.1 response with a content-length."""
    head = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
    if kind is not None:
        head.append(f"content-type: {kind}")
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def reply(request: Request, result: Any = None) -> bytes:
    """The JSON body answering ``request`` with ``result`` (``{}`` by default)."""
    message = {"jsonrpc": "2.0", "id": request.message["id"], "result": result or {}}
    return response(body=json.dumps(message).encode())


def polite(request: Request, connection: socket.socket) -> bool:
    """Answer as a good server would: 202 to notifications, ``{}`` to requests, 405 to GET."""
    if request.method != "POST":
        connection.sendall(response(405, kind=None))
    elif isinstance(request.message, dict) and "id" in request.message:
        connection.sendall(reply(request))
    else:
        connection.sendall(response(202, kind=None))
    return True


class ScriptedServer:
    """The server, listening on 127.0.0.1 until :meth:`close`."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[Request] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/mcp"
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def connections(self) -> int:
        """How many TCP connections clients opened."""
        return len(self._connections)

    def posted(self, method: str) -> list[Request]:
        """The POSTs of JSON-RPC ``method``."""
        return [r for r in self.requests if r.rpc_method == method]

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                number = len(self._connections)
                self._connections.append(connection)
            threading.Thread(target=self._serve, args=(connection, number), daemon=True).start()

    def _serve(self, connection: socket.socket, number: int) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = connection.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                size = int(headers.get("content-length", "0"))
                while len(buffer) < size:
                    data = connection.recv(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:size], buffer[size:]
                request = Request(lines[0].split(" ")[0], headers, body, number)
                self.requests.append(request)
                if not self.answer(request, connection) or self._stopping:
                    connection.close()
                    return

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._stopping = True
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()


@contextlib.contextmanager
def scripted(answer: Answer) -> Iterator[ScriptedServer]:
    """A :class:`ScriptedServer` for the length of a test."""
    server = ScriptedServer(answer)
    try:
        yield server
    finally:
        server.close()
