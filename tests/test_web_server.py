"""`dirt web` on its production server (waitress): the real command in a subprocess over a real
database, and `dirt.web.server` in this process with WSGI apps that answer when told to.

Every wait polls a condition until a deadline; nothing sleeps a fixed time and hopes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import DIRT, run_dirt

from dirt import documents
from dirt.couch import Couch
from dirt.errors import PortInUse
from dirt.web import server

URL_LINE = re.compile(r"^dirt web page at (http://127\.0\.0\.1:(\d+)/)$", re.MULTILINE)


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    """The first true value of `condition()`, polled until `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.05)
    return value


class DirtWeb:
    """`dirt web --port=0` started as a user starts it; `url` is the one it printed."""

    def __init__(self, project, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
        env["DIRT_HOME"] = os.environ.get("DIRT_HOME", str(Path.home() / ".local/share/dirt"))
        self.out, self.err = tmp_path / "web.out", tmp_path / "web.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(
                [DIRT, "web", "--host=127.0.0.1", "--port=0"],
                cwd=project.project,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.url = wait_for(self.printed_url, 60, "dirt web printing its URL")

    def printed_url(self) -> str | None:
        found = URL_LINE.search(self.out.read_text())
        assert found or self.process.poll() is None, f"dirt web exited: {self.err.read_text()}"
        return found and found.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def dirt_web(project, tmp_path) -> Iterator[DirtWeb]:
    couch = Couch(project.couch_url, project.database)
    couch.put(documents.new_record("r1", description="served by waitress", submitter="ci"))
    web = DirtWeb(project, tmp_path)
    yield web
    web.stop()


def port_is_free(port: int) -> bool:
    """Whether a new server could listen on the port (as `dirt web` binds: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# -- the command ----------------------------------------------------------------------------


def test_dirt_web_serves_pages_through_waitress_on_the_port_it_prints(dirt_web):
    port = int(URL_LINE.search(dirt_web.out.read_text()).group(2))
    assert port != 0  # --port=0: the port the system chose, not the one asked for
    page = requests.get(dirt_web.url, timeout=10)
    assert page.status_code == 200 and "served by waitress" in page.text
    assert page.headers["Server"] == "waitress"
    api = requests.get(f"{dirt_web.url}api/v1/records/r1", timeout=10)
    assert api.headers["Server"] == "waitress" and api.json()["record"]["name"] == "r1"


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_dirt_web_with_exit_0(dirt_web, number):
    port = int(URL_LINE.search(dirt_web.out.read_text()).group(2))
    assert requests.get(dirt_web.url, timeout=10).status_code == 200
    dirt_web.process.send_signal(number)
    assert dirt_web.process.wait(30) == 0, dirt_web.err.read_text()
    assert "Traceback" not in dirt_web.err.read_text()
    assert port_is_free(port)


@pytest.mark.parametrize("reuse", [False, True], ids=["plain", "SO_REUSEADDR"])
def test_a_port_in_use_is_refused_in_one_line_before_any_url(project, reuse):
    with socket.socket() as other:  # another program's server, listening on the port
        if reuse:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        done = run_dirt("web", "--host=127.0.0.1", f"--port={port}", project=project, timeout=60)
    assert done.returncode != 0
    assert "http://" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0] and "[web] port" in lines[0]


# -- dirt.web.server in this process ----------------------------------------------------------


class Gate:
    """A WSGI app whose /slow requests answer only once `release` is set; others at once."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        if environ["PATH_INFO"] == "/slow":
            self.started.set()
            assert self.release.wait(30)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"answered {environ['PATH_INFO']}".encode()]


def serve_while(app: Any, threads: int, scenario: Callable[[server.Server, str], None]) -> None:
    """Serve `app` in this (the main) thread while `scenario(srv, url)` runs in another; the
    scenario ends the server with a signal, as a user would. Its failures fail the test."""
    sock = server.bind("127.0.0.1", 0)
    srv = server.Server(app, sock, threads)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            scenario(srv, server.url("127.0.0.1", sock))
        except Exception as exc:  # reported by the main thread, once the server ended
            failures.append(exc)
            if not srv.stopping:
                os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=run)
    thread.start()
    srv.run()
    thread.join(30)
    if failures:
        raise failures[0]


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(work()))
    thread.start()
    return thread, results


def test_requests_are_answered_in_parallel():
    gate = Gate()

    def scenario(srv: server.Server, url: str) -> None:
        slow, answers = in_thread(lambda: requests.get(f"{url}slow", timeout=30).text)
        assert gate.started.wait(30)
        assert requests.get(f"{url}fast", timeout=10).text == "answered /fast"
        gate.release.set()
        slow.join(30)
        assert answers == ["answered /slow"]
        os.kill(os.getpid(), signal.SIGTERM)

    serve_while(gate, 2, scenario)


def test_a_request_in_flight_is_answered_after_the_stop_signal():
    """SIGTERM closes the listening socket at once; the request being answered still gets
    its whole answer, then the server ends."""
    gate = Gate()
    port: list[int] = []

    def scenario(srv: server.Server, url: str) -> None:
        port.append(int(url.rsplit(":", 1)[1].strip("/")))
        slow, answers = in_thread(lambda: requests.get(f"{url}slow", timeout=30).text)
        assert gate.started.wait(30)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(lambda: refuses_connections(port[0]), 10, "the listening socket closing")
        gate.release.set()
        slow.join(30)
        assert answers == ["answered /slow"]

    serve_while(gate, 2, scenario)
    assert port_is_free(port[0])


def test_bind_refuses_a_port_in_use_by_name():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(PortInUse, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "):
            server.bind("127.0.0.1", port)
