"""Fixtures that start real parts: a PouchDB Server on a free loopback port (once per session),
a fresh database per test, dirt projects, and the `dirt` command as a user runs it.

If a real part cannot start, the tests fail loudly: nothing is skipped in silence.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from dirt import couchapp, embedded, scaffold
from dirt.couch import Couch, wait_until_up
from dirt.settings import load

DIRT = str(Path(sys.executable).parent / "dirt")


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class CouchServer:
    """A PouchDB Server process with LevelDB data in a temporary folder."""

    def __init__(self, data: Path, port: int | None = None) -> None:
        self.data = data
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        program = embedded.install(load(environ=dict(os.environ), cwd=self.data))
        self.data.mkdir(parents=True, exist_ok=True)
        with open(self.data / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                embedded.command(program, self.data, self.port),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.data,
            )
        wait_until_up(Couch(self.url, "_users"), time.monotonic() + 30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


@pytest.fixture(scope="session")
def couch_server(tmp_path_factory):
    server = CouchServer(tmp_path_factory.mktemp("couch"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def couch(couch_server) -> Couch:
    """A fresh database with dirt's design document."""
    db = Couch(couch_server.url, f"test-{uuid.uuid4().hex[:12]}")
    db.create()
    couchapp.push(db)
    yield db
    try:
        db.drop()
    except Exception:
        pass


@pytest.fixture
def project(tmp_path, couch_server, monkeypatch):
    """A dirt project (made by `dirt create`'s code) on the test server, with its own database."""
    database = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.delenv("DIRT_COUCHDB_URL", raising=False)
    monkeypatch.delenv("DIRT_PROJECT", raising=False)
    settings = scaffold.create(tmp_path / "proj", database, couch_server.url, environ={})
    yield settings
    try:
        Couch(couch_server.url, database).drop()
    except Exception:
        pass


def run_dirt(*args: str, project=None, env: dict | None = None, timeout: float = 120,
             check: bool = False) -> subprocess.CompletedProcess:
    """Run the `dirt` command as a user would."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    environ["DIRT_HOME"] = os.environ.get("DIRT_HOME", str(Path.home() / ".local/share/dirt"))
    environ.update(env or {})
    cwd = str(project.project) if project is not None else tempfile.gettempdir()
    done = subprocess.run([DIRT, *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"dirt {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture
def dirt():
    return run_dirt


def pytest_sessionstart(session):
    if not shutil.which("node"):
        raise pytest.UsageError("node is needed for the test database server (run bin/test)")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real private sshd on 127.0.0.2 (key-only login as root). If it cannot start, the
    tests that use it fail: they are never skipped."""
    from sshd import Sshd, SshdError

    server = Sshd(tmp_path_factory.mktemp("sshd"))
    try:
        server.start()
    except SshdError as exc:
        pytest.fail(f"the test sshd cannot start: {exc}", pytrace=False)
    yield server
    server.stop()
