"""Nothing a document or a task sends takes the master down or holds it up: malformed task
and host documents, malformed messages from a task, artifact names CouchDB cannot take, and
documents the database refuses. Each runs a real `dirt serve` (tests/farm.py) with local
hosts, and checks that the rest of the farm goes on and that the bad thing ends with a reason.
"""

from __future__ import annotations

import contextlib
import signal
import textwrap
import time

from farm import MasterProcess, all_final, make_farm, submit, task_docs, wait_for

from dirt import client, documents
from dirt.couch import Couch
from dirt.master import Master
from dirt.settings import Settings
from dirt.tasks import Registry
from dirt.web import create_app


@contextlib.contextmanager
def unchecked(couch: Couch):
    """Writes made with the design document's validate_doc_update away, as documents from
    before it checked them, or replicated in from another farm, are: the master reads what
    a database holds, not only what today's rules let in."""
    design = couch.get("_design/dirt")
    rule = design.pop("validate_doc_update")
    couch.put(design)
    try:
        yield
    finally:
        design["validate_doc_update"] = rule
        couch.put(design)


def put_record(couch: Couch, name: str) -> dict:
    record = documents.new_record(name)
    couch.put(record)
    return record


def put_task(
    couch: Couch, record: dict, key: str | None, runs_file, platform: str = "linux", **fields
) -> str:
    """A runlog task document written straight into the database, as a careless user or an
    older tool might, with `fields` set to whatever they hold."""
    doc = documents.new_task(
        record, "runlog", platform, 0, key=key, args={"id": key or platform, "file": str(runs_file)}
    )
    doc.update(fields)
    with unchecked(couch):
        couch.put(doc)
    return doc["_id"]


def put_host(couch: Couch, name: str, **fields) -> None:
    doc = documents.new_host(name, "linux", local=True)
    doc.update(fields)
    with unchecked(couch):
        couch.put(doc)


def add_task(settings, name: str, source: str) -> None:
    (settings.tasks_dir / f"{name}.py").write_text(textwrap.dedent(source))


def host_doc(couch: Couch, name: str) -> dict:
    return couch.get(f"host:{name}")


def state_of(couch: Couch, task_id: str) -> tuple[str, str]:
    doc = couch.get(task_id)
    return doc["state"], doc["reason"]


def assert_never_failed_a_pass(master: MasterProcess) -> None:
    """Nothing reached the master's last line of defence (loop_once_safely): each bad thing
    was read at its boundary."""
    assert "a pass failed" not in master.log(), master.log()
    assert "Traceback" not in master.log(), master.log()


# -- documents ------------------------------------------------------------------------------


def test_malformed_documents_are_set_aside_at_start_and_from_the_feed(tmp_path, couch_server):
    settings, couch = make_farm(tmp_path, couch_server.url, hosts=1, slots=2)
    runs_file = tmp_path / "runs.txt"
    record = put_record(couch, "careless")
    bad = {
        put_task(couch, record, "nested", runs_file, requires=[["docker"]]): "requires",
        put_task(couch, record, "ints", runs_file, attempts=[1]): "attempts",
        put_task(couch, record, "number", runs_file, record_created=5): "record_created",
    }
    fine = put_task(couch, record, "string", runs_file)  # its record_created is a string
    put_host(couch, "bad-ssh", local=None, ssh="root@x")
    put_host(couch, "bad-facts", facts="x")
    put_host(couch, "bad-labels", labels=5)
    good = submit(settings, couch, 2, runs_file)

    master = MasterProcess(settings.project, tmp_path / "m1.log")
    try:
        wait_for(lambda: all_final(couch), 60, "every task to end")
        assert couch.get(fine)["state"] == "success"
        assert {d["state"] for d in task_docs(couch) if d["record"] == good} == {"success"}
        for task_id, field in bad.items():
            state, reason = state_of(couch, task_id)
            assert state == "error", (task_id, state, reason)
            assert reason.startswith(f"malformed document: {field}"), reason
        for name, field in (("bad-ssh", "ssh"), ("bad-facts", "facts"), ("bad-labels", "labels")):
            doc = wait_for(
                lambda n=name: host_doc(couch, n)["alive"] is False and host_doc(couch, n),
                30,
                f"host {name} marked not usable",
            )
            assert doc["reason"].startswith(f"host {name}: malformed document: {field}")

        # the same, arriving through the changes feed of the running master
        later = put_record(couch, "later")
        order = put_task(couch, later, "order", runs_file, order="first")
        lease = put_task(
            couch,
            later,
            "lease",
            runs_file,
            state="running",
            host="h0",
            lease_until="soon",
            attempts=[{"host": "h0"}],
        )
        put_host(
            couch, "bad-port", local=None, ssh={"destination": "root@x", "port": "22; rm -rf /"}
        )
        then = submit(settings, couch, 2, runs_file)
        wait_for(lambda: all_final(couch), 60, "the later tasks to end")
        assert state_of(couch, order)[1].startswith("malformed document: order "), order
        assert state_of(couch, lease)[1].startswith("malformed document: lease_until "), lease
        assert {d["state"] for d in task_docs(couch) if d["record"] == then} == {"success"}
        wait_for(lambda: host_doc(couch, "bad-port")["alive"] is False, 30, "bad-port marked")
        assert "ssh.port must be a whole number" in host_doc(couch, "bad-port")["reason"]
        assert master.process.poll() is None, master.log()
    finally:
        assert master.terminate() == 0, master.log()
    assert_never_failed_a_pass(master)

    # and at every restart: the malformed hosts stay, nothing else is left to do
    again = MasterProcess(settings.project, tmp_path / "m2.log", "--drain")
    assert again.wait(60) == 0, again.log()
    assert_never_failed_a_pass(again)


def test_pages_the_api_and_the_cli_show_malformed_documents(tmp_path, project, dirt):
    couch = Couch(project.couch_url, project.database)
    record = put_record(couch, "odd")
    runs_file = tmp_path / "runs.txt"
    put_task(
        couch,
        record,
        None,
        runs_file,
        state="success",
        attempts=[1, "x"],
        duration="long",
        started=5,
        ended=["x"],
        history=[3],
        reason=7,
        result="yes",
    )
    put_task(
        couch,
        record,
        None,
        runs_file,
        "mac",
        requires=[["docker"]],
        host=["h"],
        _attachments={"report.txt": {"content_type": "text/plain", "data": "aGk="}},
    )
    put_host(couch, "weird", facts="x", labels=5, slots="many", last_seen=12, reason=["x"])
    put_host(couch, "weird-ssh", local=None, ssh="root@x", platform="linux")
    settings = Settings(project=None, couch_url=couch.url, database=couch.database, home=tmp_path)
    web = create_app(settings, couch).test_client()
    urls = [
        "/",
        "/records/odd",
        "/hosts",
        "/history/runlog",
        "/records/odd/tasks/runlog@linux",
        "/records/odd/tasks/runlog@mac",
        "/records/odd/tasks/runlog@mac/files/report.txt",
        "/api/v1/records",
        "/api/v1/records/odd",
        "/api/v1/hosts",
        "/api/v1/history/runlog",
        "/api/v1/records/odd/tasks/runlog@linux",
        "/api/v1/records/odd/tasks/runlog@mac",
        "/api/v1/records/odd/tasks/runlog@linux/log",
    ]
    for url in urls:
        answer = web.get(url)
        assert answer.status_code == 200, (url, answer.status_code, answer.text[-2000:])
    for args in (
        ["status", "odd"],
        ["status", "odd", "--json"],
        ["hosts", "list"],
        ["hosts", "list", "--json"],
        ["status"],
    ):
        done = dirt(*args, project=project)
        assert done.returncode == 0, (args, done.returncode, done.stderr)
        assert "malformed" not in done.stderr and not done.stderr.strip(), (args, done.stderr)


# -- what a task says -----------------------------------------------------------------------

FD3 = """
import os
import subprocess


def execute(ctx):
    if ctx.args.get("child"):  # a process the task started, writing to the task's fd 3
        subprocess.run(["sh", "-c", "echo '%s' > /proc/$PPID/fd/3" % ctx.args["line"]],
                       check=True)
    else:
        os.write(3, ctx.args["line"].encode() + b"\\n")
    return {"success": True, "reason": "wrote " + ctx.args["line"]}
"""

BAD_LINES = {
    '["attach"]': "attach takes 3 values",
    "5": "unknown kind 5",
    '{"kind": "log"}': "unknown kind {'kind': 'log'}",
    "[]": "want [kind, ...]",
    '["result"]': "result takes 1 values",
    '["log", 5]': "log: must be text",
    '["started", "x"]': "started: must be a whole number",
    '["timeout", "soon"]': "timeout: must be a number",
    '["attach", "x", "aGk=", "text/html\\r\\nX-Evil: 1"]': "content type must be like",
}


def test_malformed_messages_from_a_task_end_it_error_and_the_master_goes_on(tmp_path, couch_server):
    settings, couch = make_farm(tmp_path, couch_server.url, hosts=1, slots=4)
    add_task(settings, "fd3", FD3)
    runs_file = tmp_path / "runs.txt"
    tasks = [
        {"name": "fd3", "platform": "linux", "key": f"k{i}", "args": {"line": line}}
        for i, line in enumerate(BAD_LINES)
    ]
    tasks.append(
        {
            "name": "fd3",
            "platform": "linux",
            "key": "child",
            "args": {"line": '["attach","x","not base64!","text/plain"]', "child": 1},
        }
    )
    client.submit(couch, Registry(settings.tasks_dir), "hostile", tasks)
    good = submit(settings, couch, 4, runs_file)
    master = MasterProcess(settings.project, tmp_path / "master.log")
    try:
        wait_for(lambda: all_final(couch), 90, "every task to end")
        docs = {d["_id"]: d for d in task_docs(couch)}
        for i, (line, why) in enumerate(BAD_LINES.items()):
            doc = docs[f"task:hostile:fd3:linux:k{i}"]
            assert doc["state"] == "error", (line, doc["state"], doc["reason"])
            assert doc["reason"].startswith("malformed message: "), (line, doc["reason"])
            assert why in doc["reason"], (line, doc["reason"])
            assert [a["outcome"] for a in doc["attempts"]] == ["error"], doc["attempts"]
        child = docs["task:hostile:fd3:linux:child"]
        assert child["state"] == "error"
        assert "attach: data is not base64: 'not base64!'" in child["reason"], child["reason"]
        assert {d["state"] for d in docs.values() if d["record"] == good} == {"success"}
        assert master.process.poll() is None, master.log()
    finally:
        assert master.terminate() == 0, master.log()
    assert_never_failed_a_pass(master)


NAMES = """
import os


def execute(ctx):
    ctx.attach("_coverage.xml", "<coverage/>")
    ctx.attach(b"caf\\xe9.txt", b"a latin-1 name")
    ctx.attach(os.fsdecode(b"na\\xefve 100%.bin"), b"\\x00\\x01")
    ctx.attach("r\\u00e9sum\\u00e9.html", "<p>kept as it is</p>", "text/html")
    return {"success": True, "reason": "attached", "files": os.listdir(".") + [
        os.fsdecode(b"caf\\xe9.txt")]}
"""


def test_any_artifact_name_is_stored_and_holds_back_no_other_task(tmp_path, couch_server):
    """A leading '_' (CouchDB reserves it: the whole batched write was refused, forever) and
    names that are not UTF-8 (the task was lost three times) are stored encoded."""
    settings, couch = make_farm(tmp_path, couch_server.url, hosts=1, slots=4)
    add_task(settings, "names", NAMES)
    runs_file = tmp_path / "runs.txt"
    master = MasterProcess(settings.project, tmp_path / "master.log")
    try:
        client.submit(couch, Registry(settings.tasks_dir), "named", ["names@linux"])
        good = submit(settings, couch, 6, runs_file, seconds=0.3)
        wait_for(lambda: all_final(couch) and len(task_docs(couch)) == 7, 60, "every task to end")
        docs = {d["_id"]: d for d in task_docs(couch)}
        doc = docs["task:named:names:linux"]
        assert doc["state"] == "success", doc["reason"]
        assert [a["outcome"] for a in doc["attempts"]] == ["success"]
        assert doc["result"]["files"] == ["caf\ufffd.txt"]
        stored = {name: couch.get_attachment(doc["_id"], name) for name in doc["_attachments"]}
        assert stored == {
            "%5Fcoverage.xml": b"<coverage/>",
            "caf%E9.txt": b"a latin-1 name",
            "na%EFve 100%25.bin": b"\x00\x01",
            "r\u00e9sum\u00e9.html": b"<p>kept as it is</p>",
        }
        assert {d["state"] for d in docs.values() if d["record"] == good} == {"success"}
    finally:
        assert master.terminate() == 0, master.log()
    assert_never_failed_a_pass(master)


REFUSED = """
def execute(ctx):
    ctx.attach("report.txt", "what the task found")
    return {"success": True, "reason": "done", "verdict": ctx.args["verdict"]}
"""

# a rule of the database's own: its validate_doc_update refuses some results
REFUSE_RULE = """function (newDoc) {
  if (newDoc.type === 'task' && newDoc.result && newDoc.result.verdict === 'refuse me') {
    throw({forbidden: 'results may not say refuse me'});
  }
}"""


def test_a_document_the_database_refuses_ends_its_task_error_and_holds_back_nothing(
    tmp_path, couch_server
):
    settings, couch = make_farm(tmp_path, couch_server.url, hosts=1, slots=4)
    couch.put({"_id": "_design/house-rules", "validate_doc_update": REFUSE_RULE})
    add_task(settings, "refused", REFUSED)
    runs_file = tmp_path / "runs.txt"
    client.submit(
        couch,
        Registry(settings.tasks_dir),
        "judged",
        [
            {"name": "refused", "platform": "linux", "key": "no", "args": {"verdict": "refuse me"}},
            {"name": "refused", "platform": "linux", "key": "ok", "args": {"verdict": "fine"}},
        ],
    )
    good = submit(settings, couch, 4, runs_file)
    master = MasterProcess(settings.project, tmp_path / "master.log")
    try:
        wait_for(lambda: all_final(couch), 60, "every task to end")
        docs = {d["_id"]: d for d in task_docs(couch)}
        no = docs["task:judged:refused:linux:no"]
        assert no["state"] == "error"
        assert no["reason"] == (
            "the database refused the task's document: forbidden: results may not say refuse me"
        ), no["reason"]
        assert [a["outcome"] for a in no["attempts"]] == ["error"]
        assert "report.txt" not in (no.get("_attachments") or {})
        assert docs["task:judged:refused:linux:ok"]["state"] == "success"
        assert {d["state"] for d in docs.values() if d["record"] == good} == {"success"}
    finally:
        assert master.terminate() == 0, master.log()
    assert_never_failed_a_pass(master)


def test_a_write_refused_as_a_whole_is_written_one_document_at_a_time(project):
    """A document the database refuses so that it refuses the whole _bulk_docs (PouchDB
    Server does so for an attachment name with a leading '_', or data that is not base64:
    no task can send those any more) spoils no other write: the others are written, and its
    task ends `error`."""
    couch = Couch(project.couch_url, project.database)
    client.add_host(couch, "h0", "linux", local=True)
    (project.tasks_dir / "runlog.py").write_text("def execute(ctx):\n    return {}\n")
    client.submit(
        couch,
        Registry(project.tasks_dir),
        "r",
        [{"name": "runlog", "platform": "linux", "key": k} for k in ("a", "b")],
    )
    master = Master(couch, project)
    try:
        master.start()
        master.read_events(2.0)
        spoiled, fine = (master.tasks[f"task:r:runlog:linux:{k}"] for k in ("a", "b"))
        spoiled["_attachments"] = {"_reserved": {"content_type": "text/plain", "data": "aGk="}}
        fine["args"] = {"changed": True}
        master.dirty |= {spoiled["_id"], fine["_id"]}
        master.write(time.time(), claim=False)
        assert couch.get(fine["_id"])["args"] == {"changed": True}
        master.write(time.time(), claim=False)
        doc = couch.get(spoiled["_id"])
        assert doc["state"] == "error"
        assert doc["reason"].startswith("the database refused the task's document: refused: ")
        assert "_attachments" not in doc
    finally:
        master.teardown()


def test_an_unexpected_exception_in_a_pass_is_logged_and_the_master_goes_on(project, caplog):
    couch = Couch(project.couch_url, project.database)
    client.add_host(couch, "h0", "linux", local=True)
    (project.tasks_dir / "hello.py").write_text(
        "def execute(ctx):\n    return {'success': True, 'reason': 'hello'}\n"
    )
    client.submit(couch, Registry(project.tasks_dir), "r", ["hello@linux"])

    class Unlucky(Master):
        """A master whose first passes meet a bug (any exception dirt did not foresee)."""

        failing = 3

        def mark_unschedulable(self) -> None:
            if self.failing:
                self.failing -= 1
                raise RuntimeError("a bug nobody foresaw")
            super().mark_unschedulable()

    master = Unlucky(couch, project)
    started = time.monotonic()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert master.run(drain=True) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert couch.get("task:r:hello:linux")["state"] == "success"
    failures = [r for r in caplog.records if "a pass failed" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.exc_info and "a bug nobody foresaw" in str(r.exc_info[1]) for r in failures)
    pauses = [float(r.getMessage().split("going on in ")[1].split()[0]) for r in failures]
    assert pauses == sorted(pauses) and pauses[-1] > pauses[0], pauses  # backs off
    assert time.monotonic() - started < 60


def test_over_an_ssh_host_too(tmp_path, couch_server, sshd):
    """The same messages and names from a task on a host reached over a real sshd."""
    settings, couch = make_farm(tmp_path, couch_server.url, hosts=0)
    client.add_host(
        couch, "box", "linux", ssh=sshd.destination, port=sshd.port, key=str(sshd.key), slots=2
    )
    add_task(settings, "fd3", FD3)
    add_task(settings, "names", NAMES)
    client.submit(
        couch,
        Registry(settings.tasks_dir),
        "remote",
        [
            "names@linux",
            {
                "name": "fd3",
                "platform": "linux",
                "args": {"line": '["attach","x","not base64!","text/plain"]', "child": 1},
            },
        ],
    )
    master = MasterProcess(settings.project, tmp_path / "master.log")
    try:
        wait_for(lambda: all_final(couch), 90, "both tasks to end")
        names = couch.get("task:remote:names:linux")
        assert names["state"] == "success", names["reason"]
        assert "%5Fcoverage.xml" in names["_attachments"]
        assert "caf%E9.txt" in names["_attachments"]
        fd3 = couch.get("task:remote:fd3:linux")
        assert fd3["state"] == "error"
        assert "attach: data is not base64" in fd3["reason"], fd3["reason"]
        assert host_doc(couch, "box")["alive"] is True
    finally:
        assert master.terminate() == 0, master.log()
    assert_never_failed_a_pass(master)
