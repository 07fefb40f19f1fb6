"""A real HTTP server on a free loopback port, in a thread, that records every request and
answers with what the test's `respond` function says. For the webhook, GitHub API and metrics
tests; stopped by its handle (`close()`), never by name.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


Respond = Callable[[Request], tuple[int, Any]]


class Recorder:
    """`requests` holds what arrived; `respond(request) -> (status, json_body)`."""

    def __init__(self, respond: Respond | None = None) -> None:
        self.requests: list[Request] = []
        self.respond = respond or (lambda request: (200, {}))
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request("POST", self.path, dict(self.headers.items()),
                                  self.rfile.read(length))
                recorder.requests.append(request)
                status, body = recorder.respond(request)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.requests)} requests arrived, not {count}")
            time.sleep(0.02)
        return self.requests


class TcpProxy:
    """A TCP proxy on a free loopback port to the server at `target` (http://host:port), for a
    database that goes away and comes back: `pause()` closes every connection, open and new
    (counted in `refused`), until `resume()`."""

    def __init__(self, target: str) -> None:
        parsed = urlsplit(target)
        self.target = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.paused = False
        self.refused = 0
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def pause(self) -> None:
        with self.lock:
            self.paused = True
            for sock in self.open:
                sock.close()
            self.open.clear()

    def resume(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.pause()
        self.listener.close()
        self.thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self.lock:
                if self.paused:
                    self.refused += 1
                    conn.close()
                    continue
                upstream = socket.create_connection(self.target)
                self.open.update((conn, upstream))
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with self.lock:
                    self.open.discard(sock)
                sock.close()
