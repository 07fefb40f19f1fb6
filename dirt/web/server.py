"""`dirt web`'s HTTP server: waitress, on a socket bound before anything is printed.

    with server.bind("127.0.0.1", 8080) as sock:   # PortInUse here, before any URL is shown
        print(server.url("127.0.0.1", sock))
        server.serve(app, sock, threads=8)          # until SIGTERM or Ctrl-C

waitress is a maintained, pure-Python production WSGI server with a pool of worker threads;
docs/web.md says why it was chosen and how to run it behind a reverse proxy with TLS.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import time
from types import FrameType
from typing import Any

from waitress import wasyncore
from waitress.server import BaseWSGIServer, create_server

from dirt.errors import ConfigError, PortInUse

log = logging.getLogger("dirt.web.server")

BACKLOG = 1024  # connections the kernel queues while the server is busy (waitress's default)
TICK_SECONDS = 0.2  # how long one pass of the loop waits for sockets before it checks for a stop
GRACE_SECONDS = 5.0  # on stop: how long the requests being answered may take to finish
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on host:port; PortInUse when another program listens there."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not 0 <= port <= 65535:
        raise ConfigError(f"cannot listen on {where}: a port is a number from 0 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):  # Windows: no other program may share it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:  # POSIX: only lingering closed connections may share it, never a listener
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", None)):
            raise PortInUse(
                f"cannot listen on {where}: another program uses that port "
                "(choose another with --port or [web] port in dirt.toml)"
            ) from None
        raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from None
    return sock


def url(host: str, sock: socket.socket) -> str:
    """The address of the page served on `sock`, with the port it is really bound to."""
    port = sock.getsockname()[1]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(app: Any, sock: socket.socket, threads: int, max_body: int | None = None) -> None:
    """Serve the WSGI `app` on the bound `sock` until SIGTERM or SIGINT (main thread only);
    a request announcing a body over `max_body` bytes is refused (413) after its headers."""
    Server(app, sock, threads, max_body).run()


class Server:
    """waitress driven one pass at a time, so that a stop signal only has to set a flag."""

    def __init__(self, app: Any, sock: socket.socket, threads: int,
                 max_body: int | None = None) -> None:
        self.map: dict[int, Any] = {}
        limits = {} if max_body is None else {"max_request_body_size": max_body + 1}  # ">="
        server = create_server(app, map=self.map, sockets=[sock], threads=threads, **limits)
        assert isinstance(server, BaseWSGIServer)  # one socket: one server
        self.waitress = server
        self.stopping = False

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; a second one while closing acts at once."""
        previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
        for number in STOP_SIGNALS:
            signal.signal(number, self.request_stop)
        try:
            while not self.stopping:
                self.loop_once()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self.close()

    def loop_once(self) -> None:
        """Accept, read and write what is ready within TICK_SECONDS; worker threads answer."""
        wasyncore.loop(
            timeout=TICK_SECONDS,
            map=self.map,
            count=1,
            use_poll=self.waitress.adj.asyncore_use_poll,
        )

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def busy(self) -> bool:
        """Whether a request is being answered, or an answer is not sent yet."""
        tasks = self.waitress.task_dispatcher
        return bool(tasks.active_count or tasks.queue) or any(
            channel.writable() for channel in list(self.map.values())
        )

    def close(self) -> None:
        """Stop accepting, let the requests being answered finish and their answers go out
        (for GRACE_SECONDS at most), then close every connection."""
        # The listening socket only: waitress's own close() also closes the trigger with which
        # worker threads wake this loop when an answer is ready.
        wasyncore.dispatcher.close(self.waitress)
        deadline = time.monotonic() + GRACE_SECONDS
        while self.busy() and time.monotonic() < deadline:
            self.loop_once()
        self.waitress.task_dispatcher.shutdown(timeout=1)
        wasyncore.close_all(self.map)
        log.info("web: stopped")
