"""hooks.py: GitHub push webhooks and the generic JSON hook, against the real database.

The push payloads follow the shape of GitHub's documented `push` event (ref, before, after,
created, deleted, forced, base_ref, compare, commits, head_commit, repository, pusher, sender),
and the signatures GitHub's documented X-Hub-Signature-256 (HMAC-SHA256 hex of the raw body).
"""

from __future__ import annotations

import json
import uuid

import pytest

from dirt import client, hooks
from dirt.errors import ConfigError
from dirt.settings import load

SECRET = "It's a Secret to Everybody"
GENERIC = "generic-shared-secret"
SHA = "9d2f1c3b7a8e4f6d0c5b2a1e3f4d5c6b7a8e9f01"

CONFIG = f"""
[hooks]
secret = "{GENERIC}"
github_secret = "{SECRET}"

[[hooks.github]]
repository = "acme/widget"
branch = "main"
tasks = ["echo@linux", {{name = "shell", platform = "linux", args = {{command = "true"}}}}]

[[hooks.github]]
repository = "acme/widget"
branch = "release/*"
record = "widget-{{branch}}-{{sha}}"
tasks = ["echo@linux"]

[[hooks.github]]
repository = "acme/gadget"
branch = "*"
secret = "gadget-only"
tasks = ["echo@linux"]
"""


def push_payload(repo: str = "acme/widget", branch: str = "main", sha: str = SHA,
                 ref: str | None = None, deleted: bool = False) -> dict:
    owner, name = repo.split("/")
    commit = {
        "id": sha, "tree_id": "4b825dc642cb6eb9a060e54bf8d69288fbee4904", "distinct": True,
        "message": "Fix the frobnicator\n\nIt frobbed twice.", "timestamp": "2026-11-20T10:00:00Z",
        "url": f"https://github.com/{repo}/commit/{sha}",
        "author": {"name": "Ada", "email": "ada@example.org", "username": "ada"},
        "committer": {"name": "Ada", "email": "ada@example.org", "username": "ada"},
        "added": [], "removed": [], "modified": ["frob.py"],
    }
    return {
        "ref": ref or f"refs/heads/{branch}",
        "before": "1" * 40,
        "after": "0" * 40 if deleted else sha,
        "created": False, "deleted": deleted, "forced": False, "base_ref": None,
        "compare": f"https://github.com/{repo}/compare/111111111111...{sha[:12]}",
        "commits": [] if deleted else [commit],
        "head_commit": None if deleted else commit,
        "repository": {
            "id": 1234, "node_id": "R_kgDOAAAE0g", "name": name, "full_name": repo,
            "private": False, "owner": {"name": owner, "login": owner, "id": 99},
            "html_url": f"https://github.com/{repo}", "url": f"https://github.com/{repo}",
            "clone_url": f"https://github.com/{repo}.git", "default_branch": "main",
        },
        "pusher": {"name": "ada", "email": "ada@example.org"},
        "sender": {"login": "ada", "id": 7, "type": "User"},
    }


@pytest.fixture
def hub(project):
    path = project.project / "dirt.toml"
    text = path.read_text().replace("[web]\n", '[web]\nurl = "https://dirt.example.org"\n')
    path.write_text(text + CONFIG)
    settings = load(str(project.project), environ={})
    couch = client.connect(settings=settings)
    client.add_host(couch, "local", "linux", local=True)
    return Hub(settings, couch)


class Hub:
    def __init__(self, settings, couch) -> None:
        self.settings = settings
        self.couch = couch
        self.registry = client.Registry(settings.tasks_dir)

    def github(self, payload, event: str = "push", delivery: str | None = None,
               secret: str = SECRET, signature: str | None = None, raw: bytes | None = None):
        body = raw if raw is not None else json.dumps(payload).encode()
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                   "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/044aadd"}
        if signature is not None or secret:
            headers["X-Hub-Signature-256"] = signature or hooks.sign(secret, body)
        return hooks.handle_github(self.settings, self.couch, self.registry, headers, body)

    def generic(self, spec, headers=None, raw: bytes | None = None):
        body = raw if raw is not None else json.dumps(spec).encode()
        return hooks.handle_generic(self.settings, self.couch, self.registry,
                                    headers or {}, body)

    def doc_count(self) -> int:
        return self.couch.info()["doc_count"]

    def records(self) -> list[dict]:
        return self.couch.docs_by_prefix("record:")


def test_signature_matches_githubs_documented_example():
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert hooks.sign("It's a Secret to Everybody", b"Hello, World!") == expected
    assert hooks.signature_ok(SECRET, b"Hello, World!", expected)
    assert not hooks.signature_ok(SECRET, b"Hello, World?", expected)
    assert not hooks.signature_ok("", b"Hello, World!", expected)
    assert not hooks.signature_ok(SECRET, b"Hello, World!", None)
    assert not hooks.signature_ok(SECRET, b"Hello, World!", "sha256=\u00e9")


def test_push_submits_the_configured_tasks(hub):
    status, answer = hub.github(push_payload(), delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert status == 201, answer
    assert answer["record"] == "widget-main-9d2f1c3b7a8e"
    assert answer["tasks"] == ["echo@linux", "shell@linux"]
    assert answer["url"] == "https://dirt.example.org/records/widget-main-9d2f1c3b7a8e"
    record = client.get_record(hub.couch, answer["record"])
    assert record["meta"] == {
        "repository": "https://github.com/acme/widget", "github_repository": "acme/widget",
        "branch": "main", "revision": SHA,
        "compare": "https://github.com/acme/widget/compare/111111111111...9d2f1c3b7a8e",
        "hook_delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    }
    assert record["description"] == "push to main: Fix the frobnicator"
    assert record["submitter"] == "ada"
    tasks = client.record_tasks(hub.couch, answer["record"])
    assert [(t["name"], t["state"]) for t in tasks] == [("echo", "pending"), ("shell", "pending")]
    hook = hub.couch.get("hook:github:72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert (hook["state"], hook["record"], hook["event"]) == ("done", answer["record"], "push")


def test_a_replayed_delivery_creates_nothing_twice(hub):
    first = hub.github(push_payload(), delivery="d-1")
    count = hub.doc_count()
    again = hub.github(push_payload(), delivery="d-1")
    assert again == (200, {"message": "delivery d-1 was handled already", "duplicate": True,
                           "state": "done", "record": first[1]["record"]})
    assert hub.doc_count() == count
    # The same commit in a new delivery (pushed again) is a new record with its own name.
    status, answer = hub.github(push_payload(), delivery="d-2")
    assert status == 201 and answer["record"] == "widget-main-9d2f1c3b7a8e-d-2"


@pytest.mark.parametrize("how", ["missing", "wrong secret", "tampered", "other repo's secret"])
def test_bad_signatures_are_401_and_write_nothing(hub, how):
    before = hub.doc_count()
    body = json.dumps(push_payload()).encode()
    if how == "missing":
        status, answer = hub.github(None, raw=body, secret="")
    elif how == "wrong secret":
        status, answer = hub.github(None, raw=body, secret="guess")
    elif how == "tampered":
        status, answer = hub.github(None, raw=body + b" ", signature=hooks.sign(SECRET, body))
    else:  # acme/gadget's own secret does not open acme/widget
        status, answer = hub.github(None, raw=body, secret="gadget-only")
    assert status == 401
    assert answer == {"error": "missing or wrong x-hub-signature-256 signature"}
    assert hub.doc_count() == before


def test_per_repository_secret(hub):
    status, answer = hub.github(push_payload("acme/gadget", "feature/x"), secret="gadget-only")
    assert status == 201 and answer["record"] == "gadget-feature-x-9d2f1c3b7a8e"
    status, _ = hub.github(push_payload("acme/gadget", "main"), secret=SECRET)
    assert status == 401


def test_branch_globs_and_what_is_ignored(hub):
    status, answer = hub.github(push_payload(branch="release/2.1"))
    assert status == 201 and answer["record"] == "widget-release-2.1-9d2f1c3b7a8e"
    before = hub.doc_count()
    ignored = [
        hub.github(push_payload(branch="feature/y")),
        hub.github(push_payload(ref="refs/tags/v2.1")),
        hub.github(push_payload(deleted=True)),
        hub.github(push_payload("someone/else")),
        hub.github({"zen": "Design for failure.", "hook_id": 1}, event="ping"),
        hub.github({"action": "opened"}, event="issues"),
    ]
    assert [s for s, _ in ignored] == [202, 202, 202, 202, 200, 202]
    assert ignored[0][1]["message"] == (
        "no [[hooks.github]] for acme/widget branch feature/y: nothing submitted")
    assert ignored[4][1] == {"message": "pong"}
    assert hub.doc_count() == before


def test_malformed_deliveries_are_400(hub):
    assert hub.github(None, raw=b"{not json")[0] == 400
    assert hub.github({"hello": "world"})[1] == {
        "error": "not a push event payload (want ref, after, repository.full_name)"}
    status, answer = hub.github(push_payload(), delivery="bad id with spaces")
    assert status == 400 and "invalid delivery id" in answer["error"]


def test_a_refused_record_is_remembered_and_a_redelivery_tries_again(hub):
    config = hub.settings.project / "dirt.toml"
    config.write_text(config.read_text().replace('"echo@linux", {name', '"nosuch@linux", {name'))
    broken = Hub(load(str(hub.settings.project), environ={}), hub.couch)
    status, answer = broken.github(push_payload(), delivery="d-7")
    assert status == 422 and "nosuch" in answer["error"]
    assert hub.records() == []
    hook = hub.couch.get("hook:github:d-7")
    assert hook["state"] == "refused" and "nosuch" in hook["reason"]
    # The configuration is fixed and GitHub redelivers (same delivery id): now it runs.
    status, answer = hub.github(push_payload(), delivery="d-7")
    assert status == 201
    assert hub.couch.get("hook:github:d-7")["tries"] == 2


def test_without_github_hooks_configured(project):
    settings = load(str(project.project), environ={})
    couch = client.connect(settings=settings)
    status, answer = hooks.handle_github(settings, couch, client.Registry(settings.tasks_dir),
                                         {}, b"{}")
    assert status == 404 and "[[hooks.github]]" in answer["error"]
    assert hooks.handle_generic(settings, couch, None, {}, b"{}")[0] == 404


def test_generic_hook_with_signature_or_token(hub):
    spec = {"name": "nightly-1", "description": "nightly", "meta": {"revision": "abc"},
            "tasks": ["echo@linux"]}
    body = json.dumps(spec).encode()
    status, answer = hub.generic(None, raw=body,
                                 headers={"X-Dirt-Signature-256": hooks.sign(GENERIC, body)})
    assert status == 201 and answer["tasks"] == ["echo@linux"]
    record = client.get_record(hub.couch, "nightly-1")
    assert record["submitter"] == "hook" and record["meta"] == {"revision": "abc"}
    status, answer = hub.generic({**spec, "name": "nightly-2"},
                                 headers={"Authorization": f"Bearer {GENERIC}"})
    assert status == 201
    status, answer = hub.generic({**spec, "name": "nightly-2"},
                                 headers={"Authorization": f"Bearer {GENERIC}"})
    assert status == 409 and answer == {"error": "record 'nightly-2' exists already"}


def test_generic_hook_refusals(hub):
    auth = {"Authorization": f"Bearer {GENERIC}"}
    before = hub.doc_count()
    spec = {"name": "n-1", "tasks": ["echo@linux"]}
    assert hub.generic(spec)[0] == 401
    assert hub.generic(spec, headers={"Authorization": "Bearer guess"})[0] == 401
    assert hub.generic(spec, headers={"X-Dirt-Signature-256": "sha256=00"})[0] == 401
    assert hub.generic(None, raw=b"[1, 2", headers=auth)[0] == 400
    assert hub.generic({"tasks": ["echo"]}, headers=auth) == (
        400, {"error": "hook body: a record needs a name"})
    assert hub.generic({"name": "n-1", "color": "red"}, headers=auth)[1]["error"].startswith(
        "hook body: unknown key 'color'")
    assert hub.generic({"name": "bad name!", "tasks": ["echo"]}, headers=auth)[0] == 422
    assert hub.generic({"name": "n-1", "tasks": ["nosuch@linux"]}, headers=auth)[0] == 422
    assert hub.doc_count() == before


def test_generic_hook_delivery_ids_stop_replays(hub):
    headers = {"Authorization": f"Bearer {GENERIC}", "X-Dirt-Delivery": "nightly-2026-11-20"}
    spec = {"name": "nightly-2026-11-20", "tasks": ["echo@linux"]}
    assert hub.generic(spec, headers=headers)[0] == 201
    status, answer = hub.generic(spec, headers=headers)
    assert status == 200 and answer["duplicate"] is True
    assert client.get_record(hub.couch, "nightly-2026-11-20")["meta"] == {
        "hook_delivery": "nightly-2026-11-20"}


def test_hooks_settings_are_checked(tmp_path):
    def config(body: str):
        (tmp_path / "dirt.toml").write_text(body)
        return load(str(tmp_path), environ={})

    with pytest.raises(ConfigError, match="hooks.github\\[0\\].tasks: give the tasks"):
        config('[[hooks.github]]\nrepository = "a/b"\n')
    with pytest.raises(ConfigError, match="repository: want owner/name"):
        config('[[hooks.github]]\nrepository = "b"\ntasks = ["x"]\n')
    with pytest.raises(ConfigError, match="unknown setting hooks.github\\[0\\].branches"):
        config('[[hooks.github]]\nrepository = "a/b"\nbranches = "x"\ntasks = ["x"]\n')
    (tmp_path / "dirt.toml").write_text("")
    settings = load(str(tmp_path), environ={"DIRT_HOOKS_SECRET": "e1",
                                            "DIRT_GITHUB_WEBHOOK_SECRET": "e2"})
    assert (settings.hooks.secret, settings.hooks.github_secret) == ("e1", "e2")
    assert "e1" not in repr(settings)
