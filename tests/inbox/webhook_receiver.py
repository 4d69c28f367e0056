"""A real HTTP receiver on a loopback port for the notification tests.

It records every POST (path, headers, raw body) and answers each with the
next behaviour of a script: a status code, or ``"hang"`` (hold the
connection without answering until the receiver stops).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Delivery:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class Receiver:
    """A threaded HTTP server answering POSTs by script; use as a context manager."""

    def __init__(
        self,
        script: Iterable[int | str] = (),
        default: int | str = 200,
        *,
        stale_keep_alive: bool = False,
    ) -> None:
        self.script = list(script)
        self.default = default
        self.deliveries: list[Delivery] = []
        self._lock = threading.Condition()
        self._stop = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            # HTTP/1.1: connections stay open unless closed; with stale_keep_alive the
            # receiver promises keep-alive, then hangs up (as idle-timeout proxies do)
            protocol_version = "HTTP/1.1" if stale_keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    behaviour = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.deliveries.append(
                        Delivery(self.path, dict(self.headers.items()), body, time.monotonic())
                    )
                    receiver._lock.notify_all()
                if behaviour == "hang":
                    receiver._stop.wait(30)
                    return
                self.send_response(int(behaviour))
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                if stale_keep_alive:
                    self.wfile.flush()
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Wait until ``count`` deliveries arrived; return them all (fail on timeout)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} deliveries within {timeout}s, got {len(self.deliveries)}"
                    )
                self._lock.wait(left)
            return list(self.deliveries)
