"""What every request to `dirt web` passes before a page or the API sees it
(dirt/web/guards.py): a Host header that names this server (no DNS rebinding), a body no
larger than [web] max_body_bytes (refused before it is read), and JSON in the body of a write.

The real command (waitress) over a real database, driven with plain HTTP as a browser, a
script or an attacker would; the app's own cap also through Flask's test client (any WSGI
server). Every wait has a deadline.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from test_web_server import DirtWeb

from dirt import documents
from dirt.couch import Couch
from dirt.settings import Settings, WebSettings
from dirt.web import create_app

TOKEN = "guard-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def configure_web(project: Settings, lines: str) -> None:
    """Add `lines` to the [web] table of the project's dirt.toml."""
    config = project.project / "dirt.toml"
    config.write_text(config.read_text().replace("[web]\n", f"[web]\n{lines}\n", 1))


def add_record(couch: Couch, name: str, *tasks: str) -> None:
    record = documents.new_record(name)
    couch.put(record)
    couch.bulk_docs([documents.new_task(record, t, "linux", i) for i, t in enumerate(tasks)])


def states(couch: Couch, record: str) -> dict[str, str]:
    return {d["name"]: d["state"] for d in couch.docs_by_prefix(f"task:{record}:")}


@pytest.fixture
def farm(project, tmp_path):
    """A record with two pending tasks, and `dirt web` with a token, as a user starts it."""
    couch = Couch(project.couch_url, project.database)
    add_record(couch, "r1", "build", "test")
    configure_web(project, f'token = "{TOKEN}"')
    web = DirtWeb(project, tmp_path)
    yield couch, web.url
    web.stop()


# -- write requests carry JSON --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("api/v1/records/r1/cancel", "task=build%40linux", "application/x-www-form-urlencoded"),
        ("api/v1/records/r1/rerun", "task=build%40linux", "application/x-www-form-urlencoded"),
        ("api/v1/records/r1/cancel", "build@linux", "text/plain"),
        ("api/v1/records/r1/tasks/build/linux/cancel", "x=1", "application/x-www-form-urlencoded"),
        ("api/v1/records", "name=r2&tasks=echo", "application/x-www-form-urlencoded"),
    ],
    ids=["cancel-form", "rerun-form", "cancel-text", "task-cancel-form", "submit-form"],
)
def test_a_write_whose_body_is_not_json_is_refused_with_415(farm, path, body, content_type):
    couch, url = farm
    answer = requests.post(
        url + path, data=body, timeout=10, headers={**AUTH, "Content-Type": content_type}
    )
    assert answer.status_code == 415, answer.text
    error = answer.json()["error"]
    assert "JSON" in error and content_type in error and "\n" not in error
    assert states(couch, "r1") == {"build": "pending", "test": "pending"}
    assert couch.get_or_none("record:r2") is None


BAD_SELECTIONS = [
    ('{"task": "build@linux"', "not valid JSON"),
    ('["build@linux"]', 'an object like {"task": "name@platform"}'),
    ('{"tsk": "build@linux"}', "unknown key 'tsk'"),
    ('{"task": 5}', "task must be a task spec"),
    ('{"task": ""}', "task must be a task spec"),
    ('{"task": null}', "task must be a task spec"),
]


def test_a_json_body_that_selects_no_task_is_refused_not_read_as_every_task(farm):
    couch, url = farm
    for body, message in BAD_SELECTIONS:
        answer = requests.post(
            f"{url}api/v1/records/r1/cancel",
            data=body,
            timeout=10,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert answer.status_code == 400, (body, answer.text)
        error = answer.json()["error"]
        assert message in error and "\n" not in error, (body, error)
        assert states(couch, "r1") == {"build": "pending", "test": "pending"}, body
    one = requests.post(
        f"{url}api/v1/records/r1/cancel", json={"task": "build@linux"}, headers=AUTH, timeout=10
    )
    assert one.status_code == 200 and one.json()["changed"] == 1
    assert states(couch, "r1") == {"build": "cancelled", "test": "pending"}
    every = requests.post(f"{url}api/v1/records/r1/cancel", headers=AUTH, timeout=10)
    assert every.status_code == 200 and every.json()["changed"] == 1
    assert states(couch, "r1") == {"build": "cancelled", "test": "cancelled"}


# -- bodies are capped ------------------------------------------------------------------------


def answer_to_headers_only(url: str, path: str, length: int) -> bytes:
    """Send the headers of a POST announcing `length` bytes and 1 KB of its body, then read
    what the server answers (it must not wait for the rest)."""
    where = urlsplit(url)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    answer = b""
    deadline = time.monotonic() + 20
    with socket.create_connection((where.hostname, where.port), timeout=20) as sock:
        sock.sendall(request + b"{" * 1024)
        while b"\r\n\r\n" not in answer:
            assert time.monotonic() < deadline, f"no answer within 20 s, only {answer!r}"
            try:
                part = sock.recv(65536)
            except TimeoutError:
                raise AssertionError("the server waited for the whole body") from None
            if not part:
                break
            answer += part
    return answer


def test_a_400_mb_post_to_a_hook_is_refused_after_its_headers(farm):
    _, url = farm
    for path in ("/api/v1/hooks/generic", "/api/v1/hooks/github", "/api/v1/records"):
        answer = answer_to_headers_only(url, path, 400_000_000)
        assert answer.startswith(b"HTTP/1.1 413 "), (path, answer[:200])


def test_the_app_caps_bodies_under_any_wsgi_server(couch):
    settings = Settings(
        project=None,
        couch_url=couch.url,
        database=couch.database,
        home=Path("/nonexistent"),
        web=WebSettings(token=TOKEN, max_body_bytes=1000),
    )
    web = create_app(settings, couch).test_client()
    for path in ("/api/v1/hooks/generic", "/api/v1/hooks/github", "/api/v1/records"):
        answer = web.post(
            path, data=b"{" * 1001, headers={**AUTH, "Content-Type": "application/json"}
        )
        assert answer.status_code == 413, (path, answer.get_data())
        error = answer.get_json()["error"]
        assert "1001 bytes" in error and "[web] max_body_bytes" in error
    fits = web.post(
        "/api/v1/records", data=b"{" * 1000, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert fits.status_code == 400 and "max_body_bytes" not in fits.get_json()["error"]


# -- the Host header names this server ----------------------------------------------------------


def test_a_host_header_not_in_the_allowed_names_is_refused(farm):
    """DNS rebinding: a page of evil.example, whose name now points at 127.0.0.1, asks this
    server with its own name in Host."""
    _, url = farm
    port = urlsplit(url).port
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}"):
        for path in ("api/v1/records/r1", "", "records/r1"):
            answer = requests.get(url + path, headers={"Host": host}, timeout=10)
            assert answer.status_code == 400, (host, path)
            assert "allowed_hosts" in answer.text
        hook = requests.post(
            f"{url}api/v1/hooks/generic",
            data="{}",
            timeout=10,
            headers={"Host": host, "Content-Type": "application/json"},
        )
        assert hook.status_code == 400 and "allowed_hosts" in hook.json()["error"]
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "localhost",
        f"[::1]:{port}",
        f"LOCALHOST.:{port}",
    ):
        answer = requests.get(f"{url}api/v1/records/r1", headers={"Host": host}, timeout=10)
        assert answer.status_code == 200, (host, answer.text)


def test_the_names_of_a_proxy_are_allowed_by_the_settings(project, tmp_path):
    couch = Couch(project.couch_url, project.database)
    add_record(couch, "r1", "build")
    configure_web(
        project, 'allowed_hosts = ["farm.example.org"]\nurl = "https://ci.example.org/dirt"'
    )
    web = DirtWeb(project, tmp_path)
    try:
        for host, status in [
            ("farm.example.org", 200),
            ("Farm.Example.org:443", 200),
            ("ci.example.org", 200),
            ("evil.example", 400),
            ("farm.example.org.evil.example", 400),
        ]:
            answer = requests.get(f"{web.url}api/v1/records/r1", headers={"Host": host}, timeout=10)
            assert answer.status_code == status, (host, answer.text)
    finally:
        web.stop()
