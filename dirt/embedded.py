"""The embedded CouchDB-compatible server: PouchDB Server, installed once with npm (pinned).

Used when no CouchDB URL is configured. Its LevelDB data lives under the project's state folder
(`.dirt/couch`), or under the user's dirt home outside a project. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dirt.couch import Couch, wait_until_up
from dirt.errors import DatabaseUnavailable, EmbeddedServerError
from dirt.settings import Settings

log = logging.getLogger("dirt.embedded")

NPM_FILES = Path(__file__).parent / "npm"
VERSION = json.loads((NPM_FILES / "package.json").read_text())["dependencies"]["pouchdb-server"]


@dataclass(frozen=True)
class Status:
    running: bool
    url: str | None
    pid: int | None
    data_dir: Path


def install_dir(settings: Settings) -> Path:
    return settings.home / f"pouchdb-server-{VERSION}"


def executable(settings: Settings) -> Path:
    return install_dir(settings) / "node_modules" / "pouchdb-server" / "bin" / "pouchdb-server"


def data_dir(settings: Settings) -> Path:
    return settings.state_dir / "couch"


def install(settings: Settings) -> Path:
    """Install the pinned PouchDB Server with npm, once per user; returns its executable."""
    target = executable(settings)
    if target.is_file():
        return target
    if not shutil.which("node") or not shutil.which("npm"):
        raise EmbeddedServerError(
            "the embedded server needs node and npm (apt-get install nodejs npm), "
            "or set DIRT_COUCHDB_URL to a CouchDB server"
        )
    folder = install_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(NPM_FILES / name, folder / name)
    log.info("installing pouchdb-server %s into %s", VERSION, folder)
    done = subprocess.run(
        ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not target.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EmbeddedServerError(f"npm could not install pouchdb-server {VERSION}: {last}")
    return target


def _state_file(settings: Settings) -> Path:
    return data_dir(settings) / "server.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port(preferred: int | None = None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as node binds
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise EmbeddedServerError("no free port on 127.0.0.1")


def status(settings: Settings) -> Status:
    folder = data_dir(settings)
    try:
        state = json.loads(_state_file(settings).read_text())
    except (OSError, ValueError):
        return Status(False, None, None, folder)
    if not state.get("pid") or not _alive(state["pid"]):
        return Status(False, None, None, folder)
    try:
        Couch(state["url"], "_users").ping()
    except DatabaseUnavailable:
        return Status(False, state["url"], state["pid"], folder)
    return Status(True, state["url"], state["pid"], folder)


def command(program: Path, folder: Path, port: int) -> list[str]:
    """The server's command line, on 127.0.0.1:`port` with its data and config.json in
    `folder`. A new config.json logs warnings and errors, not every request (that log grew
    by two lines a request, forever, and cost a third of a millisecond a request); set
    `"level": "info"` in its "log" section to see requests again."""
    config = folder / "config.json"
    if not config.exists():
        config.write_text(json.dumps({"log": {"file": str(folder / "log.txt"),
                                              "level": "warning"}}))
    return ["node", "--unhandled-rejections=warn", str(program), "-o", "127.0.0.1",
            "-p", str(port), "-d", f"{folder}/", "-c", str(config)]


def start(settings: Settings, port: int | None = None) -> Status:
    """Start the server unless it runs; returns its status (with its URL)."""
    current = status(settings)
    if current.running:
        return current
    program = install(settings)
    folder = data_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        previous = json.loads(_state_file(settings).read_text()).get("port")
    except (OSError, ValueError):
        previous = None
    port = _free_port(port or previous)
    with open(folder / "server.log", "ab") as out:
        process = subprocess.Popen(
            command(program, folder, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=folder,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(Couch(url, "_users"), time.monotonic() + 30)
    except DatabaseUnavailable:
        process.kill()
        tail = (folder / "server.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise EmbeddedServerError(
            f"the embedded server did not start on {url}: {' / '.join(tail) or 'no output'}"
        ) from None
    _state_file(settings).write_text(json.dumps({"pid": process.pid, "port": port, "url": url}))
    log.info("embedded server %s started (pid %d)", url, process.pid)
    return Status(True, url, process.pid, folder)


def stop(settings: Settings, timeout: float = 10.0) -> bool:
    """Stop the server if it runs; True when it was running."""
    current = status(settings)
    if current.pid is None:
        return False
    os.kill(current.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(current.pid) and time.monotonic() < deadline:
        _reap(current.pid)
        time.sleep(0.05)
    if _alive(current.pid):
        os.kill(current.pid, signal.SIGKILL)
    _reap(current.pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def server_url(settings: Settings, start_server: bool = True) -> str:
    """The CouchDB URL to use: the configured one, else the embedded server (started)."""
    if settings.couch_url:
        return settings.couch_url
    current = status(settings)
    if current.running:
        return current.url  # type: ignore[return-value]
    if not start_server:
        raise DatabaseUnavailable(
            "the embedded server is not running: start it with `dirt couch start`"
        )
    return start(settings).url  # type: ignore[return-value]


def connect(settings: Settings, start_server: bool = True) -> Couch:
    """A client for the project's database; checks that the server answers."""
    couch = Couch(server_url(settings, start_server), settings.database)
    couch.ping()
    return couch
