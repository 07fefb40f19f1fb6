"""The results web page and its JSON API (dirt/web), on a real database through Flask's test
client; data is written with dirt.documents and dirt.client as the master and CLI write it."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import requests
from conftest import DIRT, free_port
from farm import MasterProcess, make_farm

from dirt import client, couchapp, documents
from dirt.couch import Couch, inline_attachment
from dirt.documents import State, set_state
from dirt.settings import Settings, WebSettings
from dirt.tasks import Registry
from dirt.web import create_app
from dirt.web import format as fmt
from dirt.web import history as hist

TOKEN = "s3cret-token"


def settings_for(couch: Couch, token: str = "", project: Settings | None = None) -> Settings:
    base = project or Settings(project=None, couch_url=couch.url, database=couch.database,
                               home=Path("/nonexistent"))
    return base.with_(web=WebSettings(token=token))


@pytest.fixture
def web(couch):
    """A read-only app (no token) over a fresh database."""
    return create_app(settings_for(couch), couch).test_client()


@pytest.fixture
def writable(couch):
    return create_app(settings_for(couch, TOKEN), couch).test_client()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def add_record(couch: Couch, name: str, states: dict[str, str] | None = None, *,
               created: str | None = None, description: str = "", submitter: str = "ci",
               meta: dict | None = None) -> dict:
    """A record with one task per (task@platform[:key] -> state), written as the master
    would."""
    record = documents.new_record(name, description=description, submitter=submitter,
                                  meta=meta, created=created)
    couch.put(record)
    docs = []
    for order, (text, state) in enumerate((states or {}).items()):
        spec = documents.parse_task_spec(text)
        doc = documents.new_task(record, spec.name, spec.platform, order, key=spec.key)
        finish(doc, state)
        docs.append(doc)
    couch.bulk_docs(docs)
    return record


def put_artifact(couch: Couch, task_id: str, name: str, body: bytes, declared: str) -> None:
    """A task's artifact stored as the master stores it (a type no browser runs, the declared
    one kept in the task)."""
    doc = couch.get(task_id)
    stored = documents.store_artifact_type(doc, name, declared)
    doc.setdefault("_attachments", {})[name] = inline_attachment(body, stored)
    couch.put(doc)


def finish(doc: dict, state: str, host: str = "h1", duration: float = 1.5) -> None:
    if state == "pending":
        return
    doc["attempts"].append({"host": host, "master": "m1", "started": doc["created"],
                            "ended": None, "outcome": None, "reason": ""})
    doc.update(host=host, started=doc["created"])
    if state == "running":
        set_state(doc, State.RUNNING)
        return
    reason = "" if state == "success" else f"it {state}"
    doc["attempts"][-1].update(ended=documents.now_iso(), outcome=state, reason=reason)
    doc.update(ended=documents.now_iso(), duration=duration,
               result={"success": state == "success", "reason": reason})
    set_state(doc, State(state), reason)


def created_at(i: int) -> str:
    return f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}.000Z"


def text_of(response) -> str:
    return response.get_data(as_text=True)


# -- records --------------------------------------------------------------------------------


def test_records_page_lists_newest_first_with_summaries(couch, web):
    add_record(couch, "old", {"build@linux": "success"}, created=created_at(1))
    add_record(couch, "new", {"build@linux": "failed", "test@linux": "running"},
               created=created_at(2), submitter="alice")
    page = text_of(web.get("/"))
    assert page.index(">new<") < page.index(">old<")
    assert "alice" in page
    assert 'class="badge s-running">running' in page  # overall state of "new"
    assert 'class="s-failed"' in page and "1 failed" in page  # the summary bar
    assert "<time" in page


def test_record_description_is_escaped_everywhere(couch, web):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    add_record(couch, "evil", {"build@linux": "failed"}, description=evil, submitter=evil,
               meta={"branch": evil})
    for url in ("/", "/records/evil", "/records/evil/tasks/build@linux", "/history/build",
                "/?q=script"):
        page = text_of(web.get(url))
        assert "<script>alert" not in page and "<img src=x" not in page, url
    assert "&lt;script&gt;alert" in text_of(web.get("/records/evil"))
    answer = web.get("/")
    assert "script-src 'self'" in answer.headers["Content-Security-Policy"]


def test_records_are_paged_with_cursors_both_ways(couch, couch_server):
    for i in range(23):
        add_record(couch, f"r{i:02d}", {"build@linux": "success"}, created=created_at(i))
    app = create_app(settings_for(couch), couch, PAGE_SIZE=10)
    web = app.test_client()
    seen, url, pages = [], "/api/v1/records", 0
    while url:
        data = web.get(url).get_json()
        seen += [r["name"] for r in data["records"]]
        url, pages = data["older"], pages + 1
    assert seen == [f"r{i:02d}" for i in reversed(range(23))]
    assert pages == 3
    # HTML: older, older, then newer leads back
    first = text_of(web.get("/"))
    assert ">r22<" in first and ">r12<" not in first and "newer" not in first
    older = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = text_of(web.get(older))
    assert ">r12<" in second and ">r03<" in second and ">r13<" not in second
    newer = re.search(r'href="([^"]+)" rel="prev"', second).group(1).replace("&amp;", "&")
    back = text_of(web.get(newer))
    assert ">r22<" in back and ">r13<" in back and ">r12<" not in back
    assert web.get("/api/v1/records?limit=5").get_json()["records"][0]["name"] == "r22"
    assert web.get("/?older=garbage").status_code == 200  # a bad cursor is the first page


def test_paging_tells_records_created_at_the_same_moment_apart(couch, couch_server):
    for name in "abcdefg":
        add_record(couch, name, {"build@linux": "success"}, created=created_at(5))
    add_record(couch, "newest", {"build@linux": "success"}, created=created_at(6))
    web = create_app(settings_for(couch), couch, PAGE_SIZE=2).test_client()
    pages, url = [], "/api/v1/records"
    while url:
        data = web.get(url).get_json()
        pages.append([r["name"] for r in data["records"]])
        url = data["older"]
    assert sum(pages, []) == ["newest", "g", "f", "e", "d", "c", "b", "a"]
    back = web.get(f"/api/v1/records?newer={data['newer_cursor']}").get_json()
    assert [r["name"] for r in back["records"]] == pages[-2]


def test_records_filter_by_state_and_text(couch, web):
    add_record(couch, "green", {"build@linux": "success"}, description="nightly build",
               created=created_at(1))
    add_record(couch, "red", {"build@linux": "failed"}, meta={"branch": "feature-x"},
               created=created_at(2))
    add_record(couch, "busy", {"build@linux": "success", "t@linux": "running"},
               created=created_at(3))
    names = lambda q: [r["name"] for r in web.get(f"/api/v1/records?{q}").get_json()["records"]]  # noqa: E731
    assert names("state=failed") == ["red"]
    assert names("state=running") == ["busy"]
    assert names("q=NIGHTLY") == ["green"]
    assert names("q=feature") == ["red"]
    assert names("q=feature&state=success") == []
    page = text_of(web.get("/?state=failed"))
    assert ">red<" in page and ">green<" not in page
    assert web.get("/api/v1/records?state=bogus").status_code == 400


def test_filtered_pages_scan_in_batches(couch, couch_server):
    for i in range(30):
        add_record(couch, f"r{i:02d}", {"b@linux": "failed" if i % 10 == 0 else "success"},
                   created=created_at(i))
    web = create_app(settings_for(couch), couch, PAGE_SIZE=2).test_client()
    first = web.get("/api/v1/records?state=failed").get_json()
    assert [r["name"] for r in first["records"]] == ["r20", "r10"]
    second = web.get(first["older"]).get_json()
    assert [r["name"] for r in second["records"]] == ["r00"]
    assert second["older"] is None


# -- a record and its tasks -----------------------------------------------------------------


def test_record_page_shows_tasks_and_their_files(couch, web):
    add_record(couch, "r1", {"build@linux": "success", "test@mac": "failed"},
               description="the first", meta={"revision": "abc123"})
    doc = couch.get("task:r1:build:linux")
    couch.put_attachment(doc["_id"], doc["_rev"], "log.txt", b"line 1\n", "text/plain")
    put_artifact(couch, doc["_id"], "report.html", b"<b>hi</b>", "text/html")
    page = text_of(web.get("/records/r1"))
    for text in ("the first", "abc123", "build", "test", "linux", "mac", "h1", "1.5 s",
                 "it failed", "/records/r1/tasks/build@linux/files/log.txt",
                 "/records/r1/tasks/build@linux/files/report.html", "/history/build"):
        assert text in page, text
    assert "data-post" not in page  # no write buttons on a read-only site
    data = web.get("/api/v1/records/r1").get_json()
    assert data["record"]["state"] == "failed"
    assert data["record"]["counts"] == {"success": 1, "failed": 1}
    build = data["tasks"][0]
    assert build["name"] == "build" and build["attempts"] == 1
    assert [f["name"] for f in build["files"]] == ["log.txt", "report.html"]
    assert build["files"][1]["content_type"] == "text/html"  # as declared, stored as text


def test_record_page_has_write_buttons_only_with_a_token(couch, writable):
    add_record(couch, "r1", {"build@linux": "success", "test@linux": "pending"})
    page = text_of(writable.get("/records/r1"))
    assert 'data-post="/api/v1/records/r1/cancel"' in page
    assert 'data-post="/api/v1/records/r1/tasks/build@linux/rerun"' in page
    assert 'data-post="/api/v1/records/r1/tasks/test@linux/cancel"' in page
    assert 'id="token-form"' in page
    assert TOKEN not in page


def test_task_page_offers_the_action_that_fits_its_state(couch, writable):
    add_record(couch, "r1", {"build@linux": "running", "test@linux": "failed"})
    running = text_of(writable.get("/records/r1/tasks/build@linux"))
    assert "/api/v1/records/r1/tasks/build@linux/cancel" in running
    assert "/api/v1/records/r1/tasks/build@linux/rerun" not in running
    ended = text_of(writable.get("/records/r1/tasks/test@linux"))
    assert "/api/v1/records/r1/tasks/test@linux/rerun" in ended
    assert "/cancel" not in ended.split("</header>")[1]


def test_missing_record_and_task_are_404(web):
    assert web.get("/records/nope").status_code == 404
    assert "no record &#39;nope&#39;" in text_of(web.get("/records/nope"))
    answer = web.get("/api/v1/records/nope")
    assert answer.status_code == 404 and answer.get_json() == {"error": "no record 'nope'"}
    assert web.get("/records/nope/tasks/a@b").status_code == 404
    assert web.get("/api/v1/records/nope/tasks/a@b/log").status_code == 404
    assert web.get("/no/such/page").status_code == 404


def test_fragment_is_the_live_part_only(couch, web):
    add_record(couch, "r1", {"build@linux": "running"})
    full = text_of(web.get("/records/r1"))
    part = web.get("/records/r1", headers={"X-Dirt-Fragment": "1"})
    assert "<html" in full and "<html" not in text_of(part)
    assert "badge s-running" in text_of(part)
    assert part.headers["Vary"] == "X-Dirt-Fragment"
    assert web.get("/api/v1/seq").get_json()["update_seq"]


# -- a task ---------------------------------------------------------------------------------


def test_task_page_shows_result_attempts_log_and_files(couch, web):
    add_record(couch, "r1", {"build@linux": "error"})
    doc = couch.get("task:r1:build:linux")
    finish(doc, "error", host="h2")  # a second attempt
    doc["result"].update(traceback="Traceback: ZeroDivisionError <boom>", data={"tests": 12})
    couch.put(doc)
    couch.put_attachment(doc["_id"], doc["_rev"], "log.txt", b"hello\n<b>log</b>\n", "text/plain")
    put_artifact(couch, doc["_id"], "out.svg", b"<svg onload=alert(1)/>", "image/svg+xml")
    page = text_of(web.get("/records/r1/tasks/build@linux"))
    for text in ("ZeroDivisionError &lt;boom&gt;", "h1", "h2", "it error", "&lt;b&gt;log",
                 "out.svg", '"tests": 12', 'data-follow="0"', "State changes"):
        assert text in page, text
    assert page.count("<tr><td>") == 2  # two attempts
    task = web.get("/api/v1/records/r1/tasks/build@linux").get_json()
    assert task["state"] == "error" and len(task["attempts"]) == 2 and task["final"]
    assert "_attachments" not in task and [f["name"] for f in task["files"]] == [
        "log.txt", "out.svg"]
    assert task["files"][1]["content_type"] == "image/svg+xml"


def test_files_are_served_so_they_cannot_run_in_the_page(couch, web):
    add_record(couch, "r1", {"build@linux": "success"})
    doc = couch.get("task:r1:build:linux")
    couch.put_attachment(doc["_id"], doc["_rev"], "log.txt", b"log line\n", "text/plain")
    put_artifact(couch, doc["_id"], "x.html", b"<script>1</script>", "text/html")
    put_artifact(couch, doc["_id"], "x.svg", b"<svg/>", "image/svg+xml")
    base = "/records/r1/tasks/build@linux/files/"
    log = web.get(base + "log.txt")
    assert log.data == b"log line\n" and log.mimetype == "text/plain"
    assert log.headers["Content-Disposition"].startswith("inline")
    html = web.get(base + "x.html")
    assert html.mimetype == "text/plain" and "sandbox" in html.headers["Content-Security-Policy"]
    svg = web.get(base + "x.svg")
    assert svg.mimetype == "application/octet-stream"
    assert svg.headers["Content-Disposition"].startswith("attachment")
    assert web.get(base + "nope.txt").status_code == 404


def test_log_api_returns_what_was_added_since_an_offset(couch, web):
    add_record(couch, "r1", {"build@linux": "running"})
    url = "/api/v1/records/r1/tasks/build@linux/log"
    empty = web.get(url).get_json()
    assert empty == {"text": "", "offset": 0, "size": 0, "reset": False, "state": "running",
                     "final": False, "spec": "build@linux"}
    doc = couch.get("task:r1:build:linux")
    rev = couch.put_attachment(doc["_id"], doc["_rev"], "log.txt", b"one\n", "text/plain")
    first = web.get(url).get_json()
    assert first["text"] == "one\n" and first["size"] == 4
    couch.put_attachment(doc["_id"], rev, "log.txt", b"one\ntwo\n", "text/plain")
    more = web.get(f"{url}?offset=4").get_json()
    assert more["text"] == "two\n" and more["size"] == 8 and not more["reset"]
    shorter = web.get(f"{url}?offset=100").get_json()
    assert shorter["reset"] and shorter["text"] == "one\ntwo\n"
    page = text_of(web.get("/records/r1/tasks/build@linux"))
    assert 'data-follow="1"' in page and 'data-offset="8"' in page


# -- keyed tasks ----------------------------------------------------------------------------

INPUTS_TASK = '''"""Process one input (args.input): log it and attach what came of it."""


def execute(ctx):
    name = ctx.args["input"]
    ctx.log(f"processing input {name}")
    ctx.attach("result.txt", f"result of {name}", "text/plain")
    ctx.attach("../escape.txt", "a name that reaches out of its folder", "text/plain")
    return {"success": name != "b", "reason": f"input {name}"}
'''


def test_keyed_tasks_of_one_module_have_their_own_rows_pages_logs_and_files(tmp_path,
                                                                           couch_server):
    """One record runs a module once per input on a real farm (a master running real tasks
    on a local host): each key is a row, a URL, a log and files of its own."""
    settings, couch = make_farm(tmp_path, couch_server.url, hosts=1)
    (settings.project / "tasks" / "inputs.py").write_text(INPUTS_TASK)
    client.submit(couch, Registry(settings.tasks_dir), "data-1", [
        {"name": "inputs", "platform": "linux", "key": key, "args": {"input": key}}
        for key in ("a", "b")])
    master = MasterProcess(settings.project, tmp_path / "master.log", "--drain")
    assert master.wait(120) == 0, master.log()
    web = create_app(settings_for(couch, project=settings), couch).test_client()

    page = text_of(web.get("/records/data-1"))
    rows = re.findall(r'<td class="name"><a href="([^"]+)"', page)
    assert rows == ["/records/data-1/tasks/inputs@linux:b",  # failed, so first
                    "/records/data-1/tasks/inputs@linux:a"]
    assert 'inputs<span class="task-key">:b</span>' in page
    for key, other in (("a", "b"), ("b", "a")):
        url = f"/records/data-1/tasks/inputs@linux:{key}"
        task_page = web.get(url)
        assert task_page.status_code == 200
        assert f"processing input {key}" in text_of(task_page)
        assert f"processing input {other}" not in text_of(task_page)
        assert web.get(f"{url}/files/result.txt").data == f"result of {key}".encode()
        log = web.get(f"/api/v1{url}/log").get_json()
        assert log["spec"] == f"inputs@linux:{key}" and f"input {key}" in log["text"]
        api = web.get(f"/api/v1{url}").get_json()
        assert (api["key"], api["spec"], api["state"]) == (
            key, f"inputs@linux:{key}", "success" if key == "a" else "failed")
    tasks = web.get("/api/v1/records/data-1").get_json()["tasks"]
    assert [(t["key"], t["spec"]) for t in tasks] == [
        ("a", "inputs@linux:a"), ("b", "inputs@linux:b")]
    assert tasks[0]["url"] == "/api/v1/records/data-1/tasks/inputs@linux:a"
    assert {f["name"]: f["url"] for f in tasks[0]["files"]}["result.txt"] == (
        "/records/data-1/tasks/inputs@linux:a/files/result.txt")

    # all of the record's files in one zip, each under its task's spec
    answer = web.get("/records/data-1/artifacts.zip")
    assert answer.status_code == 200 and answer.mimetype == "application/zip"
    assert 'filename=data-1.zip' in answer.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(answer.data)) as archive:
        assert sorted(archive.namelist()) == [
            "LEFT-OUT.txt", "inputs@linux:a/log.txt", "inputs@linux:a/result.txt",
            "inputs@linux:b/log.txt", "inputs@linux:b/result.txt"]
        assert archive.read("inputs@linux:b/result.txt") == b"result of b"
        assert b"processing input a" in archive.read("inputs@linux:a/log.txt")
        left_out = archive.read("LEFT-OUT.txt").decode()
    assert "inputs@linux:a: '../escape.txt' is not a safe file name" in left_out
    assert 'href="/records/data-1/artifacts.zip"' in page


def test_a_spec_naming_several_tasks_or_none_is_404_naming_the_candidates(couch, web):
    add_record(couch, "r1", {"runlog@linux:t0": "success", "runlog@linux:t1": "failed"})
    several = web.get("/api/v1/records/r1/tasks/runlog:*")
    assert several.status_code == 404
    assert several.get_json()["error"] == (
        "record r1: runlog:* names 2 tasks, give one of runlog@linux:t0, runlog@linux:t1")
    none = web.get("/records/r1/tasks/runlog@linux")
    assert none.status_code == 404
    assert "it has runlog@linux:t0, runlog@linux:t1 (runlog:* names every key)" in text_of(none)
    assert web.get("/api/v1/records/r1/tasks/runlog@linux:t2/log").status_code == 404
    assert web.get("/records/r1/tasks/bad name").status_code == 404
    # task:r1:runlog:linux:t0 is also the id record "r1:runlog" would give linux@t0: no such
    assert web.get("/records/r1:runlog/tasks/linux@t0").status_code == 404
    one = web.get("/api/v1/records/r1/tasks/runlog:t1").get_json()  # the one with that key
    assert one["spec"] == "runlog@linux:t1" and one["log"].endswith("/runlog@linux:t1/log")


def test_cancel_and_rerun_one_key_through_the_api(couch, writable):
    add_record(couch, "r1", {"runlog@linux:t0": "pending", "runlog@linux:t1": "running",
                             "runlog@linux:t2": "failed"})
    before = couch.get("task:r1:runlog:linux:t1")["_rev"]
    answer = writable.post("/api/v1/records/r1/tasks/runlog@linux:t0/cancel", headers=auth())
    assert answer.get_json()["changed"] == 1
    assert couch.get("task:r1:runlog:linux:t0")["state"] == "cancelled"
    assert couch.get("task:r1:runlog:linux:t1")["_rev"] == before  # untouched
    again = writable.post("/api/v1/records/r1/tasks/runlog@linux:t0/rerun", headers=auth())
    assert again.get_json()["changed"] == 1
    assert [couch.get(f"task:r1:runlog:linux:t{i}")["state"] for i in range(3)] == [
        "pending", "running", "failed"]
    by_body = writable.post("/api/v1/records/r1/rerun", json={"task": "runlog:t2"},
                            headers=auth())
    assert by_body.get_json()["changed"] == 1
    assert couch.get("task:r1:runlog:linux:t2")["state"] == "pending"
    assert couch.get("task:r1:runlog:linux:t1")["_rev"] == before
    several = writable.post("/api/v1/records/r1/tasks/runlog:*/cancel", headers=auth())
    assert several.status_code == 404 and "names 3 tasks" in several.get_json()["error"]
    assert couch.get("task:r1:runlog:linux:t1")["_rev"] == before


def test_old_task_urls_redirect_to_the_spec_urls(couch, writable):
    add_record(couch, "r1", {"build@linux": "running"})
    for old, new in [
        ("/records/r1/tasks/build/linux", "/records/r1/tasks/build@linux"),
        ("/records/r1/tasks/build/linux/files/log.txt",
         "/records/r1/tasks/build@linux/files/log.txt"),
        ("/api/v1/records/r1/tasks/build/linux", "/api/v1/records/r1/tasks/build@linux"),
        ("/api/v1/records/r1/tasks/build/linux/log?offset=4",
         "/api/v1/records/r1/tasks/build@linux/log?offset=4"),
    ]:
        answer = writable.get(old)
        assert answer.status_code == 308 and answer.headers["Location"] == new, old
    assert writable.get("/records/r1/tasks/build/linux", follow_redirects=True).status_code == 200
    moved = writable.post("/api/v1/records/r1/tasks/build/linux/cancel", headers=auth())
    assert moved.status_code == 308
    assert moved.headers["Location"] == "/api/v1/records/r1/tasks/build@linux/cancel"
    done = writable.post("/api/v1/records/r1/tasks/build/linux/cancel", headers=auth(),
                         follow_redirects=True)
    assert done.get_json()["changed"] == 1  # the POST and its token went on to the new URL
    assert writable.get("/records/r1/tasks/bu ild/linux").status_code == 404


def test_record_page_lists_failed_tasks_first_and_the_tasks_it_lacks(couch, web):
    add_record(couch, "r1", {"a@linux": "success", "b@linux": "failed", "c@linux": "running",
                             "d@linux": "error"})
    record = couch.get("record:r1")
    record["tasks"] = [f"task:r1:{n}:linux" for n in "abcde"]  # e was never written
    couch.put(record)
    page = text_of(web.get("/records/r1"))
    names = re.findall(r'<td class="name"><a href="/records/r1/tasks/(\w)@linux"', page)
    assert names == ["b", "d", "a", "c"]
    assert "1 task this record was submitted with is not in the database" in page
    assert "task:r1:e:linux" in page and 'badge s-missing">missing' in page
    assert web.get("/api/v1/records/r1").get_json()["record"]["missing"] == ["task:r1:e:linux"]


# -- hosts ----------------------------------------------------------------------------------


def test_hosts_page_shows_slots_state_and_running_tasks(couch, web):
    alive = documents.new_host("h1", "linux", local=True, slots=2, labels=["gpu", "big"])
    alive.update(alive=True, last_seen=documents.now_iso(),
                 facts={"os": "Linux", "arch": "x86_64", "python": "3.11.2", "cpus": 2})
    dead = documents.new_host("h2", "mac", ssh="me@mac1", slots=1)
    dead.update(alive=False, reason="host mac1: connection refused <port 22>")
    couch.bulk_docs([alive, dead])
    add_record(couch, "r1", {"build@linux": "running", "test@linux": "success",
                             "shard@linux:eu": "running"})
    page = text_of(web.get("/hosts"))
    for text in ("h1", "h2", "gpu", "big", "2 / 2", "0 / 1", "alive", "not alive",
                 "connection refused &lt;port 22&gt;", "/records/r1/tasks/build@linux",
                 "me@mac1", "Python 3.11.2", "idle", "r1 / shard@linux:eu",
                 'href="/records/r1/tasks/shard@linux:eu"'):
        assert text in page, text
    hosts = {h["name"]: h for h in web.get("/api/v1/hosts").get_json()["hosts"]}
    running = hosts["h1"]["running"]
    assert hosts["h1"]["slots_used"] == 2 and running[0]["name"] == "build"
    assert {t["spec"]: t["key"] for t in running} == {"build@linux": None,
                                                      "shard@linux:eu": "eu"}
    assert hosts["h2"]["alive"] is False and hosts["h2"]["running"] == []


# -- history --------------------------------------------------------------------------------


def test_history_flags_a_task_that_flips_as_flaky(couch, web):
    outcomes = ["success", "failed", "success", "success", "failed"]
    for i, state in enumerate(outcomes):
        add_record(couch, f"n{i}", {"test@linux": state, "test@mac": "success",
                                    "other@linux": "failed"}, created=created_at(i))
    data = web.get("/api/v1/history/test").get_json()
    assert [r["name"] for r in data["records"]] == ["n0", "n1", "n2", "n3", "n4"]
    assert data["flaky"] == ["linux"]
    linux = data["platforms"][0]
    assert linux["platform"] == "linux" and linux["flips"] == 3
    assert [r["state"] for r in linux["runs"]] == outcomes
    page = text_of(web.get("/history/test"))
    assert "Flaky:" in page and "test@linux" in page and "<svg" in page
    assert "<polyline" in page and page.count('class="s-failed"') >= 2
    last_two = web.get("/api/v1/history/test?records=2").get_json()
    assert [r["name"] for r in last_two["records"]] == ["n3", "n4"]
    assert last_two["flaky"] == []
    assert "No record has run" in text_of(web.get("/history/nothing"))


def test_history_has_a_series_per_platform_and_key(couch, web):
    for i, states in enumerate([("success", "failed"), ("success", "success")]):
        add_record(couch, f"k{i}", {"part@linux:a": states[0], "part@linux:b": states[1],
                                    "part@mac": "success"}, created=created_at(i))
    data = web.get("/api/v1/history/part").get_json()
    assert [(p["platform"], p["key"], p["spec"]) for p in data["platforms"]] == [
        ("linux", "a", "part@linux:a"), ("linux", "b", "part@linux:b"), ("mac", None, "part@mac")]
    assert [r["state"] for r in data["platforms"][1]["runs"]] == ["failed", "success"]
    page = text_of(web.get("/history/part"))
    for text in (">linux:a<", ">linux:b<", 'href="/records/k0/tasks/part@linux:b"',
                 'href="/records/k1/tasks/part@mac"'):
        assert text in page, text


def test_history_reads_in_batches(couch, monkeypatch):
    from dirt.web import queries

    monkeypatch.setattr(queries, "HISTORY_BATCH", 3)
    for i in range(8):
        add_record(couch, f"b{i}", {"t@linux": "success", "t@mac": "failed"},
                   created=created_at(i))
    result = queries.task_history(couch, "t", records=5)
    assert [name for name, _ in result.records] == ["b3", "b4", "b5", "b6", "b7"]
    assert all(r is not None for p in result.series for r in p.runs)
    # records created at the same moment are neither lost nor counted twice across batches
    for name in ("tie-a", "tie-b", "tie-c"):
        add_record(couch, name, {"t@linux": "failed", "t@mac": "success"},
                   created=created_at(9))
    result = queries.task_history(couch, "t", records=6)
    assert sorted(name for name, _ in result.records) == [
        "b5", "b6", "b7", "tie-a", "tie-b", "tie-c"]
    assert all(r is not None for p in result.series for r in p.runs)


def test_flips_and_flaky_are_pure():
    assert hist.flips([]) == 0
    assert hist.flips(["success", "success", "failed"]) == 1
    assert hist.flips(["success", "error", "failed", "cancelled", "success"]) == 2
    assert not hist.is_flaky(["success", "failed", "failed"])  # a regression is not flaky
    assert hist.is_flaky(["failed", "success", "failed"])
    assert hist.is_flaky(["failed", "success"], threshold=1)
    runs = [hist.Run("b", "2", "linux", "failed", 2.0), hist.Run("a", "1", "linux", "success"),
            hist.Run("b", "2", "mac", "success", 1.0)]
    history = hist.build("t", runs)
    assert history.records == [("a", "1"), ("b", "2")]
    mac = history.series[1]
    assert mac.label == "mac" and mac.runs[0] is None and mac.runs[1].state == "success"
    assert history.series[0].pass_rate == 0.5
    assert hist.trend_points([None, 2.0, 1.0], width=100, height=50) == [(50.0, 0.0), (100.0, 25.0)]
    assert hist.trend_points([None], 10, 10) == []


def test_format_helpers():
    assert fmt.age("2026-01-01T00:00:00.000Z", now=documents.parse_iso(
        "2026-01-01T02:30:00Z")) == "2 h ago"
    assert fmt.age(None) == "" and fmt.age("garbage") == ""
    assert fmt.duration(None) == "" and fmt.duration(0.42) == "0.4 s"
    assert fmt.duration(125) == "2 min 5 s" and fmt.duration(7300) == "2 h 1 min"
    assert fmt.size(1500) == "1.5 kB"
    assert fmt.bar({"failed": 1, "success": 3}, ["success", "failed"]) == [
        ("success", 3, 0.0, 75.0), ("failed", 1, 75.0, 25.0)]


# -- write actions --------------------------------------------------------------------------


WRITES = [
    ("/api/v1/records/r1/cancel", {}),
    ("/api/v1/records/r1/rerun", {}),
    ("/api/v1/records/r1/tasks/build@linux/cancel", {}),
    ("/api/v1/records/r1/tasks/build@linux/rerun", {}),
    ("/api/v1/records", {"name": "r2", "tasks": ["echo@linux"]}),
]


@pytest.mark.parametrize(("url", "body"), WRITES)
def test_writes_are_refused_without_a_configured_token(couch, web, url, body):
    add_record(couch, "r1", {"build@linux": "pending"})
    answer = web.post(url, json=body, headers=auth("anything"))
    assert answer.status_code == 403
    assert "write actions are disabled" in answer.get_json()["error"]
    assert couch.get("task:r1:build:linux")["state"] == "pending"


@pytest.mark.parametrize(("url", "body"), WRITES)
def test_writes_need_the_right_token(couch, writable, url, body):
    add_record(couch, "r1", {"build@linux": "pending"})
    missing = writable.post(url, json=body)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in missing.get_json()["error"]
    wrong = writable.post(url, json=body, headers=auth("wrong"))
    assert wrong.status_code == 403 and wrong.get_json() == {"error": "wrong token"}
    basic = writable.post(url, json=body, headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    assert couch.get("task:r1:build:linux")["state"] == "pending"
    assert couch.get_or_none("record:r2") is None


def test_cancel_and_rerun_with_the_token(couch, writable):
    add_record(couch, "r1", {"build@linux": "pending", "test@linux": "running",
                             "lint@linux": "success"})
    answer = writable.post("/api/v1/records/r1/cancel", headers=auth())
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["changed"] == 2
    assert answer.get_json()["record"]["counts"] == {"cancelled": 2, "success": 1}
    one = writable.post("/api/v1/records/r1/tasks/build@linux/rerun", headers=auth())
    assert one.get_json()["changed"] == 1
    assert couch.get("task:r1:build:linux")["state"] == "pending"
    again = writable.post("/api/v1/records/r1/rerun", json={"task": "lint"}, headers=auth())
    assert again.get_json()["changed"] == 1
    assert writable.get("/api/v1/token", headers=auth()).get_json() == {"writes": True}
    assert writable.post("/api/v1/records/nope/cancel", headers=auth()).status_code == 404


def test_a_write_from_another_origin_is_refused(couch, writable):
    add_record(couch, "r1", {"build@linux": "pending"})
    answer = writable.post("/api/v1/records/r1/cancel", headers={
        **auth(), "Origin": "http://evil.example"})
    assert answer.status_code == 403 and "cross-origin" in answer.get_json()["error"]
    same = writable.post("/api/v1/records/r1/cancel", headers={
        **auth(), "Origin": "http://localhost"})
    assert same.status_code == 200
    assert writable.get("/api/v1/records/r1/cancel").status_code == 405


def test_submit_takes_the_json_of_a_record_file(project):
    couch = Couch(project.couch_url, project.database)
    client.add_host(couch, "local", "linux", local=True)
    app = create_app(settings_for(couch, TOKEN, project=project), couch)
    web = app.test_client()
    spec = {"name": "rev-1", "description": "from the API", "submitter": "ci-bot",
            "meta": {"branch": "main"},
            "tasks": ["echo", {"name": "sleep", "platform": "linux", "args": {"seconds": 0}}]}
    answer = web.post("/api/v1/records", json=spec, headers=auth())
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["tasks"] == ["echo@linux", "sleep@linux"]
    assert answer.headers["Location"].endswith("/api/v1/records/rev-1")
    status = client.record_status(couch, "rev-1")
    assert status["record"]["submitter"] == "ci-bot" and status["record"]["meta"] == {
        "branch": "main"}
    assert len(status["tasks"]) == 2
    for bad, message in [
        ({**spec, "name": "rev-2", "tasks": ["nope"]}, "nope"),
        ({**spec}, "exists already"),
        ({**spec, "name": "rev-3", "colour": "red"}, "unknown key 'colour'"),
        ({"tasks": ["echo"]}, "needs a name"),
        ([1, 2], "holds a mapping"),
    ]:
        refused = web.post("/api/v1/records", json=bad, headers=auth())
        assert refused.status_code == 400, (bad, refused.get_json())
        assert message in refused.get_json()["error"]
    garbage = web.post("/api/v1/records", data="{not json", headers={
        **auth(), "Content-Type": "application/json"})
    assert garbage.status_code == 400
    assert couch.get_or_none("record:rev-2") is None


def submitted_and_ended(couch: Couch, project: Settings, states: dict[str, str]) -> None:
    """Record r1 submitted as the CLI does (echo tasks, one per key), its tasks ended with
    `states` (key -> state) as the master would end them."""
    client.add_host(couch, "local", "linux", local=True)
    client.submit(couch, client.registry(settings=project), "r1",
                  [{"name": "echo", "key": key, "args": {"message": key}} for key in states],
                  meta={"branch": "main"})
    for key, state in states.items():
        doc = couch.get(f"task:r1:echo:linux:{key}")
        finish(doc, state)
        couch.put(doc)


def test_rerun_failed_and_rerun_as_a_new_record_through_the_api(project):
    couch = Couch(project.couch_url, project.database)
    submitted_and_ended(couch, project, {"a": "success", "b": "failed", "c": "error"})
    web = create_app(settings_for(couch, TOKEN, project=project), couch).test_client()
    revs = {doc["_id"]: doc["_rev"] for doc in couch.docs_by_prefix("task:r1:")}
    for bad, message in [
        ({"as": "bad name"}, "invalid record name 'bad name'"),
        ({"as": "r1"}, "record 'r1' exists already"),
        ({"as": 7}, "as must be a new record name, not 7"),
        ({"failed": "yes"}, 'failed must be true or false, not "yes"'),
        ({"colour": "red"}, "unknown key 'colour' (known: task, failed, as)"),
        ([1], "the request body must be an object"),
        ({"as": "r9", "task": "nope"}, "record r1 has no task 'nope'"),
    ]:
        refused = web.post("/api/v1/records/r1/rerun", json=bad, headers=auth())
        assert refused.status_code == 400, (bad, refused.get_json())
        error = refused.get_json()["error"]
        assert message in error and "\n" not in error, (bad, error)
    assert {doc["_id"]: doc["_rev"] for doc in couch.docs_by_prefix("task:r1:")} == revs
    assert [r["name"] for r in client.list_records(couch)] == ["r1"]  # nothing written

    failed = web.post("/api/v1/records/r1/rerun", json={"failed": True}, headers=auth())
    assert failed.status_code == 200 and failed.get_json()["changed"] == 2
    assert [couch.get(f"task:r1:echo:linux:{k}")["state"] for k in "abc"] == [
        "success", "pending", "pending"]

    again = web.post("/api/v1/records/r1/rerun", json={"as": "r2"}, headers=auth())
    assert again.status_code == 201, again.get_json()
    assert again.get_json()["page"] == "/records/r2"
    assert again.get_json()["tasks"] == ["echo@linux:a", "echo@linux:b", "echo@linux:c"]
    assert again.headers["Location"] == "/api/v1/records/r2"
    assert client.get_record(couch, "r2")["meta"] == {"branch": "main", "rerun_of": "r1"}
    only_b = web.post("/api/v1/records/r1/rerun", json={"as": "r3", "task": "echo:b"},
                      headers=auth())
    assert only_b.get_json()["tasks"] == ["echo@linux:b"]


def test_record_page_offers_rerun_failed_and_rerun_as_with_a_token(couch, web, writable):
    add_record(couch, "r1", {"build@linux": "failed"})
    page = text_of(writable.get("/records/r1"))
    assert 'data-post="/api/v1/records/r1/rerun" data-body="{&#34;failed&#34;: true}"' in page
    assert '<form class="rerun-as" data-post="/api/v1/records/r1/rerun"' in page
    assert 'name="as"' in page and "Re-run as new record" in page
    read_only = text_of(web.get("/records/r1"))
    assert "Re-run failed" not in read_only and "rerun-as" not in read_only


def test_task_page_shows_earlier_runs_newest_first(couch, web):
    add_record(couch, "r1", {"build@linux": "failed"})
    client.rerun(couch, "r1")
    doc = couch.get("task:r1:build:linux")
    finish(doc, "error", host="h2", duration=75)
    couch.put(doc)
    client.rerun(couch, "r1")
    page = text_of(web.get("/records/r1/tasks/build@linux"))
    assert "Earlier runs" in page
    earlier = page.split("Earlier runs")[1].split("</table>")[0]
    assert earlier.index("it error") < earlier.index("it failed")  # newest first
    for text in ("h1", "h2", "1 min 15 s", "1.5 s", 'badge s-failed', 'badge s-error'):
        assert text in earlier, text
    assert 'badge s-pending">pending' in page  # the run now
    assert web.get("/api/v1/records/r1/tasks/build@linux").get_json()["earlier"][0][
        "state"] == "failed"


# -- text files inline, and all files as a zip ----------------------------------------------

HOSTILE = b'<script>alert(1)</script></pre><img src=x onerror=alert(2)>\n'


def attach(couch: Couch, doc_id: str, files: dict[str, tuple[bytes, str]]) -> None:
    for name, (body, content_type) in files.items():
        put_artifact(couch, doc_id, name, body, content_type)


def test_text_files_are_shown_escaped_in_a_view_where_nothing_runs(couch, couch_server):
    add_record(couch, "r1", {"build@linux": "success"})
    attach(couch, "task:r1:build:linux", {
        "log.txt": (b"log\n", "text/plain"), "evil.txt": (HOSTILE, "text/plain"),
        "junit.xml": (b"<testsuite tests='3'/>" + b"x" * 100, "application/octet-stream"),
        "page.html": (HOSTILE, "text/html"), "logo.png": (b"\x89PNG", "image/png")})
    web = create_app(settings_for(couch), couch, VIEW_BYTES=50).test_client()
    base = "/records/r1/tasks/build@linux"
    view = web.get(f"{base}/view/evil.txt")
    assert view.status_code == 200 and view.mimetype == "text/html"
    body = text_of(view)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;/pre&gt;&lt;img" in body
    assert "<script>" not in body and "<img" not in body
    csp = view.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox ") and "default-src 'none'" in csp
    assert "script-src" not in csp  # none: default-src 'none' covers it
    assert view.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert f'href="{base}/files/evil.txt?download=1"' in body
    xml = text_of(web.get(f"{base}/view/junit.xml"))  # text by its name
    assert "&lt;testsuite tests=&#39;3&#39;/&gt;" in xml
    assert "The first 50 B of 122 B" in xml and "x" * 29 not in xml
    assert web.get(f"{base}/view/logo.png").status_code == 404
    assert web.get(f"{base}/view/nope.txt").status_code == 404
    download = web.get(f"{base}/files/evil.txt?download=1")
    assert download.headers["Content-Disposition"].startswith("attachment")
    assert download.mimetype == "application/octet-stream" and download.data == HOSTILE

    page = text_of(web.get(base))
    frames = re.findall(r'<iframe sandbox="allow-downloads" loading="lazy" title="([^"]+)"', page)
    assert frames == ["evil.txt", "junit.xml", "page.html"]  # not the log, not the image
    assert f'src="{base}/view/evil.txt?framed=1"' in page


def test_zip_of_a_record_leaves_out_unsafe_names_and_what_passes_its_limit(couch):
    add_record(couch, "r1", {"build@linux": "success", "test@linux:k1": "failed"})
    attach(couch, "task:r1:build:linux", {
        "log.txt": (b"build log\n", "text/plain"), "out/report.txt": (b"r" * 10, "text/plain"),
        "../up.txt": (b"u", "text/plain"), "big.bin": (b"b" * 500, "application/octet-stream")})
    attach(couch, "task:r1:test:linux:k1", {"log.txt": (b"test log\n", "text/plain")})
    web = create_app(settings_for(couch), couch, ZIP_BYTES=100).test_client()
    answer = web.get("/records/r1/artifacts.zip")
    with zipfile.ZipFile(io.BytesIO(answer.data)) as archive:
        assert sorted(archive.namelist()) == [
            "LEFT-OUT.txt", "build@linux/log.txt", "build@linux/out/report.txt",
            "test@linux:k1/log.txt"]
        assert archive.read("test@linux:k1/log.txt") == b"test log\n"
        left_out = archive.read("LEFT-OUT.txt").decode().splitlines()
    assert left_out == ["build@linux: '../up.txt' is not a safe file name",
                        "build@linux/big.bin: 500 B would pass the 100 B one download may hold"]
    assert web.get("/records/nope/artifacts.zip").status_code == 404


# -- the database goes away -----------------------------------------------------------------


def test_a_database_that_does_not_answer_gives_503_without_credentials():
    port = free_port()
    couch = Couch(f"http://admin:pa55word@127.0.0.1:{port}", "dirt")
    web = create_app(settings_for(couch), couch).test_client()
    for url in ("/", "/records/r1", "/records/r1/tasks/a@b", "/hosts", "/history/a",
                "/api/v1/records", "/api/v1/seq", "/api/v1/hosts"):
        answer = web.get(url)
        assert answer.status_code == 503, url
        body = text_of(answer)
        assert "pa55word" not in body and "admin:" not in body, url
        assert "Traceback" not in body
    page = text_of(web.get("/"))
    assert "The database is unavailable: CouchDB at http://127.0.0.1:" in page
    assert web.get("/api/v1/records").get_json()["error"].startswith("The database is unavailable")


def test_no_page_shows_database_credentials(couch_server, couch):
    secret = Couch(couch_server.url.replace("http://", "http://someone:hunter2@"), couch.database)
    add_record(couch, "r1", {"build@linux": "success"})
    web = create_app(settings_for(secret), secret).test_client()
    page = text_of(web.get("/records/r1"))
    assert "hunter2" not in page and couch_server.url in page


# -- the CouchApp ---------------------------------------------------------------------------


def test_couchapp_page_is_served_by_the_database(couch, couch_server):
    add_record(couch, "r1", {"build@linux": "success"})
    base = f"{couch_server.url}/{couch.database}/_design/dirt"
    page = requests.get(f"{base}/index.html", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert 'src="app.js"' in page.text and 'href="dirt.css"' in page.text
    for name in ("app.js", "dirt.css"):
        assert requests.get(f"{base}/{name}", timeout=10).status_code == 200
    # the relative view URLs the page uses
    rows = requests.get(f"{base}/_view/records_by_time?descending=true&limit=26",
                        timeout=10).json()["rows"]
    assert rows[0]["value"]["name"] == "r1"


def test_couchapp_decides_overall_state_in_the_same_order():
    script = (couchapp.FOLDER / "_attachments" / "app.js").read_text()
    order = json.loads(re.search(r"var ORDER = (\[.*?\]);", script).group(1).replace("'", '"'))
    assert order == [s.value for s in documents.OVERALL_ORDER]


def test_api_index_lists_the_endpoints(web):
    data = web.get("/api/v1/").get_json()
    assert data["records"] == "/api/v1/records" and data["writes_enabled"] is False


def test_dirt_web_serves_the_pages(project):
    """`dirt web` as a user runs it: the command builds the app from the project's settings."""
    couch = Couch(project.couch_url, project.database)
    add_record(couch, "r1", {"build@linux": "success"})
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    env["DIRT_HOME"] = os.environ.get("DIRT_HOME", str(Path.home() / ".local/share/dirt"))
    server = subprocess.Popen([DIRT, "web", f"--port={port}"], cwd=project.project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except requests.ConnectionError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "dirt web did not answer in 30 s"
                time.sleep(0.2)
        assert answer.status_code == 200 and ">r1<" in answer.text
        api = requests.get(f"http://127.0.0.1:{port}/api/v1/records/r1", timeout=5).json()
        assert api["record"]["state"] == "success"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()
