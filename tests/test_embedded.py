"""`dirt couch`: the embedded server a project without a configured URL starts for itself."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest
from conftest import free_port, run_dirt

from dirt import scaffold
from dirt.couch import Couch

CONFIGURED = "http://admin:s3cret@127.0.0.1:{port}"


class Project:
    def __init__(self, folder):
        self.project = folder


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def embedded_project(tmp_path):
    """A project with no CouchDB URL: `dirt couch` manages its own server."""
    folder = tmp_path / "proj"
    project = Project(folder)
    try:
        created = run_dirt("create", str(folder), timeout=90, check=True)
        assert "(database dirt at http://127.0.0.1:" in created.stdout
        run_dirt("couch", "stop", project=project, check=True)
        yield project
    finally:
        stop_embedded(project)


def stop_embedded(project: Project) -> None:
    """Stop the project's embedded server, by its PID if `dirt couch stop` did not."""
    folder = project.project
    state = folder / ".dirt" / "couch" / "server.json"
    if (folder / "dirt.toml").exists():
        run_dirt("couch", "stop", project=project)
    if state.exists():
        pid = json.loads(state.read_text())["pid"]
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_start_status_url_stop(embedded_project):
    def dirt(*args):
        return run_dirt("couch", *args, project=embedded_project, timeout=90)

    stopped = dirt("status")
    assert stopped.returncode == 1
    assert stopped.stdout.startswith("not running (data ")
    assert "not running" in dirt("url").stderr

    started = dirt("start")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("embedded server running at http://127.0.0.1:")
    state = json.loads((embedded_project.project / ".dirt/couch/server.json").read_text())
    assert pid_alive(state["pid"])

    url = dirt("url")
    assert url.returncode == 0
    assert url.stdout.strip() == state["url"]
    assert "version" in Couch(state["url"], "_users").ping()
    status = dirt("status")
    assert status.returncode == 0
    assert status.stdout.startswith(f"running at {state['url']} (pid {state['pid']}")
    again = dirt("start")
    assert f"(pid {state['pid']}," in again.stdout  # already running: the same server

    run_dirt("hosts", "add", "local", "--platform=linux", "--local",
             project=embedded_project, check=True)

    began = time.monotonic()
    assert dirt("stop").stdout.strip() == "embedded server stopped"
    assert time.monotonic() - began < 8
    assert not pid_alive(state["pid"])
    assert dirt("status").returncode == 1
    assert dirt("stop").stdout.strip() == "it was not running"

    # the data is kept: a command that needs the database starts the server again
    hosts = run_dirt("hosts", "list", "--json", project=embedded_project, check=True)
    assert [h["name"] for h in json.loads(hosts.stdout)] == ["local"]
    assert dirt("status").returncode == 0

    # its log keeps warnings and errors, not a line for every request
    folder = embedded_project.project / ".dirt" / "couch"
    config = json.loads((folder / "config.json").read_text())
    assert config["log"] == {"file": str(folder / "log.txt"), "level": "warning"}
    logged = (folder / "log.txt").read_text() if (folder / "log.txt").exists() else ""
    assert "_all_docs" not in logged and "GET" not in logged


def test_configured_url_is_used_and_never_started(tmp_path):
    folder = tmp_path / "proj"
    scaffold.write_files(folder, "dirt", "")  # no URL in dirt.toml: the environment gives it
    embedded_project = Project(folder)
    port = free_port()
    url = CONFIGURED.format(port=port)
    env = {"DIRT_COUCHDB_URL": url}

    def dirt(*args):
        return run_dirt("couch", *args, project=embedded_project, env=env)

    shown = dirt("url")
    assert shown.returncode == 0
    assert shown.stdout.strip() == f"http://127.0.0.1:{port}"
    assert "s3cret" not in shown.stdout + shown.stderr
    start = dirt("start")
    assert start.returncode == 0
    assert start.stdout.strip() == (
        f"dirt uses the configured server http://127.0.0.1:{port}; it does not start or stop it")
    assert not (embedded_project.project / ".dirt" / "couch").exists()
    status = dirt("status")
    assert status.returncode != 0
    assert status.stderr.strip() == (
        f"dirt: error: CouchDB at http://127.0.0.1:{port} does not answer (ConnectionError)")


def test_configured_url_in_dirt_toml(couch_server, tmp_path):
    folder = tmp_path / "proj"
    database = f"test-{uuid.uuid4().hex[:12]}"
    scaffold.write_files(folder, database, couch_server.url)
    project = Project(folder)
    status = run_dirt("couch", "status", project=project)
    assert status.returncode == 0
    assert status.stdout.strip() == f"configured server {couch_server.url}: answering"
    assert run_dirt("couch", "url", project=project).stdout.strip() == couch_server.url
    assert not (folder / ".dirt" / "couch").exists()
