"""The web pages in a real Chromium (Playwright), over a real master running real tasks on a
local host: records, a record, a running task's log growing, a state change arriving without a
reload, write actions behind the token, hosts, history, and the CouchApp served by the database.

Screenshots of each page land in $DIRT_SCREENSHOTS (docs/screenshots to refresh the README's). If
Chromium cannot start, this fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import DIRT
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect, sync_playwright
from werkzeug.serving import make_server

from dirt import client, documents
from dirt.couch import Couch
from dirt.settings import WebSettings
from dirt.tasks import Registry
from dirt.web import create_app

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The README's screenshots are refreshed with DIRT_SCREENSHOTS=docs/screenshots bin/test;
# otherwise they go to a temporary folder, so a test run leaves the checkout as it was.
SHOTS = Path(os.environ.get("DIRT_SCREENSHOTS") or tempfile.mkdtemp(prefix="dirt-shots-"))
TOKEN = "browser-token"
TIMEOUT_MS = 30_000

REPORT_TASK = '''"""Log a few lines and attach a report: a task with artifacts."""


def execute(ctx):
    for i in range(3):
        ctx.log(f"checking part {i}")
    ctx.attach("report.html", "<h1>report</h1><script>alert(1)</script>", "text/html")
    ctx.attach("summary.json", '{"checked": 3}', "application/json")
    return {"success": True, "reason": "3 parts checked", "checked": 3}
'''


# Text a task attaches that is markup: the page must show it as text, and run nothing.
HOSTILE_TEXT = "<script>alert(1)</script></pre><img src=x onerror=alert(2)>"
HOSTILE_TASK = f'''"""Attach text files that hold markup, as a test report may quote it."""


def execute(ctx):
    ctx.attach("evil.txt", {HOSTILE_TEXT!r}, "text/plain")
    ctx.attach("report.xml", "<testsuite><script>alert(3)</script></testsuite>",
               "application/xml")
    return {{"success": True, "reason": "attached"}}
'''


@pytest.fixture
def farm(project, tmp_path):
    """A project with a local host, a master (`dirt serve`) and the web app on a free port."""
    couch = Couch(project.couch_url, project.database)
    client.add_host(couch, "local", "linux", local=True, slots=3, labels=["x86_64", "docker"])
    (project.project / "tasks" / "report.py").write_text(REPORT_TASK)
    (project.project / "tasks" / "hostile.py").write_text(HOSTILE_TASK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    env["DIRT_HOME"] = os.environ.get("DIRT_HOME", str(Path.home() / ".local/share/dirt"))
    with open(tmp_path / "master.log", "wb") as log:
        master = subprocess.Popen([DIRT, "serve"], cwd=project.project, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    settings = project.with_(web=WebSettings(token=TOKEN))
    app = create_app(settings, couch, POLL_MS=500, LOG_POLL_MS=400, TOTALS_SECONDS=0)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield couch, Registry(project.tasks_dir), f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        master.terminate()
        try:
            master.wait(30)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()


def submit_history(couch: Couch, registry: Registry) -> None:
    """Five nightly records whose `shell` test flips between pass and fail (flaky)."""
    for i, code in enumerate([0, 1, 0, 0, 1]):
        client.submit(couch, registry, f"nightly-{i}", [
            {"name": "shell", "platform": "linux",
             "args": {"command": f"echo run {i}; sleep 0.{i + 2}; exit {code}"}},
            "echo",
        ], description=f"nightly build {i}", submitter="ci")
    for i in range(5):
        client.wait(couch, f"nightly-{i}", timeout=90, interval=0.3)


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@contextmanager
def chromium_page() -> Iterator[tuple[Page, list[str]]]:
    """A page in a fresh headless Chromium, and the script errors it reports."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True,
                                    timeout=TIMEOUT_MS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            browser.close()


def test_pages_in_a_real_browser(farm, couch_server):
    couch, registry, base = farm
    submit_history(couch, registry)

    with chromium_page() as (page, errors):
        # submitted once the browser is up (a cold start can take seconds): the page
        # must find the sleep task still running
        client.submit(couch, registry, "rev-1234", [
            "echo", "report", {"name": "sleep", "platform": "linux", "args": {"seconds": 7}},
        ], description="Nightly build of <main> — escaped, not markup", submitter="alice",
            meta={"revision": "1a2b3c4", "branch": "main"})

        # Records: newest first, with the record just submitted
        page.goto(base + "/")
        rows = page.locator("table.records tbody tr")
        expect(rows.first.locator("td.name a")).to_have_text("rev-1234")
        expect(rows).to_have_count(6)
        expect(page.locator("text=Nightly build of <main>")).to_be_visible()

        # Follow the record; keep it open in this tab to watch a state change arrive
        page.click("text=rev-1234")
        expect(page.locator("h1")).to_have_text("rev-1234")
        sleep_row = page.locator("table.tasks tr", has=page.locator("a", has_text="sleep"))
        expect(sleep_row.locator(".badge")).to_have_text("running")
        page.evaluate("window.stillHere = true")

        # The task's log grows in a second tab, without a reload
        task_page = page.context.new_page()
        task_page.goto(base + "/records/rev-1234/tasks/sleep@linux")
        task_page.evaluate("window.stillHere = true")
        log = task_page.locator("#log")
        expect(log).to_contain_text("slept 1 of 7")
        first = log.inner_text()
        shown = max(int(n) for n in re.findall(r"slept (\d) of 7", first))
        assert shown < 6, f"the page opened too late to see the log grow: {first!r}"
        expect(log).to_contain_text(f"slept {shown + 1} of 7")  # a line it did not have
        assert log.inner_text().startswith(first)
        shot(task_page, "task-running")
        # the task runs its 7 s first (more than expect's own 5 s)
        expect(task_page.locator("#live .summary .badge")).to_have_text(
            "success", timeout=TIMEOUT_MS)
        expect(log).to_contain_text("slept 6 of 7")
        expect(task_page.locator("#log-state")).to_contain_text("ended: success")
        assert task_page.evaluate("window.stillHere") is True

        # ... and the record tab saw the state change without a reload
        expect(sleep_row.locator(".badge")).to_have_text("success")
        expect(page.locator("#live .summary .badge").first).to_have_text("success")
        assert page.evaluate("window.stillHere") is True
        shot(page, "record")

        # A finished task with a result and artifacts
        page.click("table.tasks >> text=report")
        expect(page.locator("#live .summary .badge")).to_have_text("success")
        expect(page.locator("ul.files")).to_contain_text("report.html")
        expect(page.locator("#log")).to_contain_text("checking part 2")
        shot(page, "task")

        # Write actions: unlock with the token, then cancel a running record's tasks
        client.submit(couch, registry, "long-1", [
            {"name": "sleep", "platform": "linux", "args": {"seconds": 120}}, "echo@linux",
        ], description="a long job to cancel", submitter="bob")
        page.goto(base + "/records/long-1")
        expect(page.locator("table.tasks tr", has_text="sleep").locator(".badge")
               ).to_have_text("running")
        page.click("text=Cancel pending and running")
        expect(page.locator("#message")).to_contain_text("Enter the write token")
        page.fill("#token-form input[name=token]", "wrong")
        page.click("#token-form button")
        expect(page.locator("#message")).to_contain_text("refused")
        page.fill("#token-form input[name=token]", TOKEN)
        page.click("#token-form button")
        expect(page.locator("#token-state")).to_be_visible()

        # Hosts, while the long task runs there
        page.goto(base + "/hosts")
        expect(page.locator("table.hosts")).to_contain_text("alive")
        expect(page.locator("table.hosts")).to_contain_text("long-1 / sleep")
        shot(page, "hosts")

        page.goto(base + "/records/long-1")
        page.click("text=Cancel pending and running")
        expect(page.locator("#message")).to_contain_text("cancelled 1 task of long-1")
        expect(page.locator("table.tasks tr", has_text="sleep").locator(".badge")
               ).to_have_text("cancelled")

        # History of a task name: flaky flagged, charts drawn
        page.goto(base + "/history/shell")
        expect(page.locator(".flaky-note")).to_contain_text("shell@linux")
        expect(page.locator("svg.grid-chart rect")).to_have_count(5)
        expect(page.locator("svg.trend-chart polyline")).to_have_count(1)
        shot(page, "history")

        page.goto(base + "/")
        expect(page.locator("table.records tbody tr").first).to_contain_text("long-1")
        shot(page, "records")
        assert not errors, errors

        # The CouchApp, straight from the database: no Flask involved
        app_url = f"{couch_server.url}/{couch.database}/_design/dirt/index.html"
        page.goto(app_url)
        first_row = page.locator("table.records tbody tr").first
        expect(first_row).to_contain_text("long-1")
        expect(page.locator("table.records")).to_contain_text("rev-1234")
        expect(page.locator("p.totals")).to_contain_text("success")
        shot(page, "couchapp")
        page.click("text=rev-1234")
        expect(page.locator("table.tasks")).to_contain_text("sleep")
        expect(page.locator("table.tasks")).to_contain_text("report.html")
        expect(page.locator("text=Nightly build of <main>")).to_be_visible()
        shot(page, "couchapp-record")
        assert not errors, errors


def test_keyed_tasks_rerun_and_text_files_in_a_real_browser(farm, couch_server):
    """Two keys of one module as rows of their own; re-run failed and re-run as a new record
    from the page with the token, the earlier run kept; text files shown, and run nothing."""
    couch, registry, base = farm
    client.submit(couch, registry, "data-7", [
        {"name": "shell", "platform": "linux", "key": key, "args": {"command": f"exit {code}"}}
        for key, code in (("a", 1), ("b", 0))] + ["hostile"], submitter="carol")
    client.wait(couch, "data-7", timeout=90, interval=0.3)

    with chromium_page() as (page, errors):
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

        # the failed key first, each key a row and a URL of its own
        page.goto(base + "/records/data-7")
        names = page.locator("table.tasks tbody td.name > a:first-child")
        expect(names).to_have_text(["shell:a", "shell:b", "hostile"])
        assert [names.nth(i).get_attribute("href") for i in range(3)] == [
            f"/records/data-7/tasks/{spec}"
            for spec in ("shell@linux:a", "shell@linux:b", "hostile@linux")]
        expect(page.locator("table.tasks tbody tr").first.locator(".badge")
               ).to_have_text("failed")

        # unlock, then re-run the failed task: the master runs it again
        page.fill("#token-form input[name=token]", TOKEN)
        page.click("#token-form button")
        expect(page.locator("#token-state")).to_be_visible()
        shot(page, "record-keyed")
        page.click("text=Re-run failed")
        expect(page.locator("#message")).to_contain_text("re-ran 1 task of data-7")
        client.wait(couch, "data-7", timeout=90, interval=0.3)
        assert len(couch.get("task:data-7:shell:linux:a")["attempts"]) == 2

        # its page keeps the earlier run
        page.click("text=shell:a")
        expect(page.locator("h1")).to_contain_text("shell @linux:a")
        earlier = page.locator("table.earlier tbody tr")
        expect(earlier).to_have_count(1)
        expect(earlier).to_contain_text("exit code 1")
        expect(earlier.locator(".badge")).to_have_text("failed")
        shot(page, "task-earlier-runs")

        # re-run the failed task as a new record: the page goes there
        page.goto(base + "/records/data-7")
        page.fill("form.rerun-as input[name=as]", "data-8")
        page.check("form.rerun-as input[name=failed]")
        page.click("text=Re-run as new record")
        expect(page).to_have_url(base + "/records/data-8")
        expect(page.locator("h1")).to_have_text("data-8")
        expect(page.locator("table.tasks tbody td.name > a:first-child")).to_have_text(
            ["shell:a"])
        expect(page.locator("dl.facts")).to_contain_text("rerun_of")
        assert client.get_record(couch, "data-8")["meta"]["rerun_of"] == "data-7"

        # text files: shown inline as text in a sandboxed frame; nothing in them runs
        page.goto(base + "/records/data-7/tasks/hostile@linux")
        page.click("details.text-file summary >> text=evil.txt")
        frame = page.frame_locator("details.text-file iframe").first
        expect(frame.locator("pre")).to_have_text(HOSTILE_TEXT)
        expect(frame.locator("img, script")).to_have_count(0)
        page.goto(base + "/records/data-7/tasks/hostile@linux/view/report.xml")
        page.wait_for_load_state("load")
        expect(page.locator("pre")).to_have_text(
            "<testsuite><script>alert(3)</script></testsuite>")
        page.goto(base + "/records/data-7/tasks/hostile@linux/view/evil.txt")
        page.wait_for_load_state("load")  # a broken image's onerror fires before this
        expect(page.locator("pre")).to_have_text(HOSTILE_TEXT)
        expect(page.locator("img")).to_have_count(0)
        shot(page, "text-file")
        assert dialogs == [] and not errors, (dialogs, errors)

        # the CouchApp names the keys too
        page.goto(f"{couch_server.url}/{couch.database}/_design/dirt/index.html"
                  "#record/data-7")
        expect(page.locator("table.tasks td.name")).to_have_text(
            ["shell:a", "shell:b", "hostile"])


def test_couchapp_pages_through_records(couch, couch_server):
    """The CouchApp on its own: 30 records, 25 a page, the ten oldest created at the same
    moment (so the page boundary falls among them)."""
    docs = []
    for i in range(30):
        created = f"2026-01-01T00:00:{max(i, 9):02d}.000Z"  # r00..r09 share a moment
        record = documents.new_record(f"r{i:02d}", created=created, description=f"<b>{i}</b>")
        docs += [record, documents.new_task(record, "build", "linux", 0)]
    couch.bulk_docs(docs)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True,
                                    timeout=TIMEOUT_MS)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{couch_server.url}/{couch.database}/_design/dirt/index.html")
            rows = page.locator("table.records tbody tr td.name > a")
            expect(rows).to_have_count(25)
            first = rows.all_inner_texts()
            page.click("text=older →")
            expect(rows).to_have_count(5)
            second = rows.all_inner_texts()
            assert sorted(first + second) == [f"r{i:02d}" for i in range(30)]
            expect(page.locator("text=<b>3</b>")).to_be_visible()
            page.click("text=← newer")
            expect(rows).to_have_count(25)
            assert rows.all_inner_texts() == first
        finally:
            browser.close()


# Artifacts whose scripts say so if a browser ever runs them, and where; the last one's type
# is one that Chromium sniffs (and then runs as HTML).
SAY = "<script>console.log('SCRIPT RAN: %s at ' + location.origin)</script>"
SCRIPTED = {
    "page.html": ("<h1>page</h1>" + SAY % "page.html", "text/html"),
    "upper.htm": (SAY % "upper.htm", "TEXT/HTML; charset=utf-8"),
    "chart.svg": ('<svg xmlns="http://www.w3.org/2000/svg">' + SAY % "chart.svg" + "</svg>",
                  "image/svg+xml"),
    "page.xhtml": ('<html xmlns="http://www.w3.org/1999/xhtml"><body>' + SAY % "page.xhtml"
                   + "</body></html>", "application/xhtml+xml"),
    "sniffed.bin": ("<html>" + SAY % "sniffed.bin" + "</html>", "unknown/unknown"),
}
SCRIPTED_TASK = f'''"""Attach pages and drawings with scripts in them."""

ARTIFACTS = {SCRIPTED!r}


def execute(ctx):
    for name, (text, content_type) in ARTIFACTS.items():
        ctx.attach(name, text, content_type)
    return {{"success": True, "reason": "attached"}}
'''


def open_like_a_link(page, url: str) -> None:
    """Open `url` in the tab, as a user opening a link (or a link sent to them) does; a
    download instead of a page is fine."""
    try:
        page.goto(url)
    except PlaywrightError as exc:
        if "Download is starting" not in exc.message:
            raise
    page.evaluate("1")  # a round trip: the console messages of what loaded have arrived


def test_scripts_in_html_and_svg_artifacts_never_run(farm, couch_server):
    """Neither from the database's origin (the CouchApp's links, where a script could write
    everything) nor from dirt web's."""
    couch, registry, base = farm
    (registry.folder / "scripted.py").write_text(SCRIPTED_TASK)
    client.submit(couch, registry, "scripted", ["scripted@linux"])
    done = client.wait(couch, "scripted", timeout=90, interval=0.3)
    assert done["record"]["state"] == "success", done
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True,
                                    timeout=TIMEOUT_MS)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            ran: list[str] = []
            page.on("console", lambda message: ran.append(message.text))
            page.on("dialog", lambda dialog: (ran.append(dialog.message), dialog.dismiss()))
            for listing in (f"{couch_server.url}/{couch.database}/_design/dirt/"
                            "index.html#record/scripted", f"{base}/records/scripted"):
                page.goto(listing)
                links = page.locator("td.files a")
                expect(links).to_have_count(len(SCRIPTED))
                hrefs = links.evaluate_all("links => links.map(a => [a.textContent, a.href])")
                assert sorted(name for name, _ in hrefs) == sorted(SCRIPTED)
                for _, href in hrefs:
                    open_like_a_link(page, href)
            assert not [text for text in ran if "SCRIPT RAN" in text]
        finally:
            browser.close()


def test_chromium_starts():
    """The browser tests need a working Chromium: a missing one is a failure, not a skip."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    started = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True,
                                    timeout=TIMEOUT_MS)
        try:
            page = browser.new_page()
            page.set_content("<p>ok</p>")
            assert page.inner_text("p") == "ok"
        finally:
            browser.close()
    assert time.monotonic() - started < 60
