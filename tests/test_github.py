"""github.py: commit statuses posted to a real local HTTP server that checks each request as
GitHub documents `POST /repos/{owner}/{repo}/statuses/{sha}`: the headers (Bearer token,
application/vnd.github+json, X-GitHub-Api-Version), a JSON body of state, target_url,
description and context, 201 Created on success and GitHub's error answers otherwise.
"""

from __future__ import annotations

import re
import time

import pytest
from httpd import Recorder

from dirt import client, github
from dirt.errors import NotificationFailed
from dirt.master import Master
from dirt.notify import Notifier
from dirt.settings import GitHubSettings, MasterSettings, WebSettings, load

TOKEN = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
PATH = re.compile(r"^/api/v3/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/statuses/[0-9a-f]{40}$")
FAIL_TASK = '''def execute(ctx):
    return {"success": False, "reason": "1 test failed"}
'''


def github_api(request):
    """What GitHub answers, for the parts of the statuses API that dirt uses."""
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        return 401, {"message": "Bad credentials",
                     "documentation_url": "https://docs.github.com/rest"}
    match = PATH.match(request.path)
    if not match:
        return 404, {"message": "Not Found"}
    body = request.json()
    valid = (
        request.headers.get("Accept") == "application/vnd.github+json"
        and request.headers.get("X-GitHub-Api-Version") == "2022-11-28"
        and request.headers.get("Content-Type") == "application/json"
        and request.headers.get("User-Agent", "").startswith("dirt/")
        and set(body) <= {"state", "target_url", "description", "context"}
        and body.get("state") in ("error", "failure", "pending", "success")
        and len(body.get("description") or "") <= 140
    )
    if not valid:
        return 422, {"message": "Validation Failed"}
    return 201, {"url": f"https://api.example.org{request.path}", "id": 1,
                 "node_id": "MDY6U3RhdHVzMQ==", **body,
                 "created_at": "2026-11-20T10:00:00Z", "updated_at": "2026-11-20T10:00:00Z"}


@pytest.fixture
def api():
    server = Recorder(github_api)
    yield server
    server.close()


def settings_for(api: Recorder, token: str = TOKEN) -> GitHubSettings:
    return GitHubSettings(token=token, api_url=f"{api.url}/api/v3", context="dirt/linux")


def status(state: str = "success", description: str = "2 tasks passed") -> github.CommitStatus:
    return github.CommitStatus(repository="acme/widget", sha=SHA, state=state,
                               description=description,
                               target_url="https://dirt.example.org/records/pr-1",
                               context="dirt/linux")


def test_post_status_as_documented(api):
    github.post_status(settings_for(api), status(description="x" * 300))
    (request,) = api.requests
    assert request.method == "POST"
    assert request.path == f"/api/v3/repos/acme/widget/statuses/{SHA}"
    assert request.json() == {"state": "success",
                              "target_url": "https://dirt.example.org/records/pr-1",
                              "description": "x" * 140, "context": "dirt/linux"}


def test_failures_say_whether_to_try_again(api):
    with pytest.raises(NotificationFailed, match="GitHub API: 401 Bad credentials") as bad:
        github.post_status(settings_for(api, token="wrong"), status())
    assert bad.value.permanent
    for code, message, permanent in [(500, "Server Error", False), (429, "slow down", False),
                                     (403, "API rate limit exceeded for 127.0.0.1", False),
                                     (422, "Validation Failed", True)]:
        api.respond = lambda request, c=code, m=message: (c, {"message": m})
        with pytest.raises(NotificationFailed) as failed:
            github.post_status(settings_for(api), status())
        assert str(failed.value) == f"GitHub API: {code} {message}"
        assert failed.value.permanent is permanent
    api.close()
    with pytest.raises(NotificationFailed, match="GitHub API does not answer"):
        github.post_status(settings_for(api), status())


def test_which_records_name_a_commit():
    def record(**meta):
        return {"name": "r", "meta": meta}

    assert github.commit_of(record(github_repository="acme/widget", revision=SHA)) == (
        "acme/widget", SHA)
    assert github.commit_of(record(github_repository="acme/widget", revision=SHA.upper())) == (
        "acme/widget", SHA)
    assert github.commit_of(record(github_repository="acme/widget", revision="6dcb09b")) is None
    assert github.commit_of(record(github_repository="widget", revision=SHA)) is None
    assert github.commit_of(record(revision=SHA)) is None
    summary = {"state": "failed", "counts": {"success": 3, "failed": 1}, "total": 4}
    assert github.state_of(summary, ended=True) == "failure"
    assert github.describe(summary, ended=True) == "3 of 4 tasks passed, 1 failed"
    running = {"state": "running", "counts": {"success": 1, "running": 3}, "total": 4}
    assert github.state_of(running, ended=False) == "pending"
    assert github.describe(running, ended=False) == "running: 1 of 4 tasks done"
    for state, expected in [("success", "success"), ("error", "error"),
                            ("cancelled", "error"), ("unschedulable", "error")]:
        assert github.state_of({"state": state}, ended=True) == expected


def test_statuses_follow_a_record_from_start_to_end(project, api):
    settings = project.with_(
        master=MasterSettings(tick_seconds=0.05, log_flush_seconds=0.2, health_interval=5.0),
        web=WebSettings(url="https://dirt.example.org/"),
        github=settings_for(api),
    )
    couch = client.connect(settings=settings)
    (settings.tasks_dir / "fail.py").write_text(FAIL_TASK)
    registry = client.Registry(settings.tasks_dir)
    client.add_host(couch, "local", "linux", local=True)
    meta = {"github_repository": "acme/widget", "revision": SHA}
    client.submit(couch, registry, "pr-1", [
        {"name": "sleep", "platform": "linux", "args": {"seconds": 1.5}}], meta=meta)
    client.submit(couch, registry, "pr-2", ["fail@linux"],
                  meta={**meta, "revision": "f" * 40})
    client.submit(couch, registry, "no-commit", ["echo@linux"], meta={"revision": SHA})
    notifier = Notifier(couch, settings, poll_seconds=0.1)
    notifier.start()
    master = Master(couch, settings, registry, listeners=[notifier])
    try:
        master.start()
        deadline = time.monotonic() + 60
        while not master.idle() or len(api.requests) < 3:
            assert time.monotonic() < deadline, [r.json() for r in api.requests]
            master.loop_once(wait=0.05)
        time.sleep(0.5)
    finally:
        master.teardown()
        notifier.stop()
    first = [r.json() for r in api.requests if SHA in r.path]
    assert first == [
        {"state": "pending", "target_url": "https://dirt.example.org/records/pr-1",
         "description": "running: 0 of 1 tasks done", "context": "dirt/linux"},
        {"state": "success", "target_url": "https://dirt.example.org/records/pr-1",
         "description": "1 task passed", "context": "dirt/linux"},
    ]
    second = [r.json() for r in api.requests if "f" * 40 in r.path]
    assert second[-1]["state"] == "failure"
    assert second[-1]["description"] == "0 of 1 tasks passed, 1 failed"
    assert len(api.requests) == len(first) + len(second)  # nothing for no-commit
    outcomes = client.get_record(couch, "pr-1")["notifications"]
    assert [(n["kind"], n["target"], n["event"], n["ok"]) for n in outcomes] == [
        ("github", "acme/widget@6dcb09b5b578", "started", True),
        ("github", "acme/widget@6dcb09b5b578", "ended", True)]


def test_github_settings(tmp_path):
    (tmp_path / "dirt.toml").write_text(
        '[github]\napi_url = "https://ghe.example.org/api/v3/"\ncontext = "ci/dirt"\n')
    settings = load(str(tmp_path), environ={"DIRT_GITHUB_TOKEN": TOKEN})
    assert settings.github.api_url == "https://ghe.example.org/api/v3"
    assert settings.github.token == TOKEN and TOKEN not in repr(settings)
    assert settings.github.context == "ci/dirt"
