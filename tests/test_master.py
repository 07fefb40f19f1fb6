"""The master in-process against the real database, running tasks on a local popen host.

Each test writes task modules into a project, registers hosts and submits records through
dirt.client, then drives `Master.loop_once()` in a bounded loop, as `dirt serve --drain` does.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from textwrap import dedent

import pytest

from dirt import client, documents, remote_runner
from dirt.couch import Couch
from dirt.documents import FINAL
from dirt.master import Master
from dirt.settings import MasterSettings


class Farm:
    """A project, its database, and masters that are torn down after the test."""

    def __init__(self, settings) -> None:
        self.settings = settings.with_(master=MasterSettings(
            tick_seconds=0.05, log_flush_seconds=0.2, health_interval=5.0))
        self.couch = Couch(self.settings.couch_url, self.settings.database)
        self.masters: list[Master] = []

    def task(self, name: str, source: str) -> Path:
        path = self.settings.tasks_dir / f"{name}.py"
        path.write_text(dedent(source))
        return path

    def host(self, name: str = "local", platform: str = "linux", **spec) -> dict:
        return client.add_host(self.couch, name, platform, local=True, **spec)

    def submit(self, record: str, *tasks) -> list[dict]:
        registry = client.Registry(self.settings.tasks_dir)
        return client.submit(self.couch, registry, record, list(tasks))[1]

    def master(self) -> Master:
        master = Master(self.couch, self.settings)
        self.masters.append(master)
        master.start()
        return master

    def doc(self, task_id: str) -> dict:
        return self.couch.get(task_id)

    def run_until(self, master: Master, done, timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            master.loop_once(wait=0.05)
            if done():
                return
        raise AssertionError(f"not done after {timeout} s: {what or done}")

    def drain(self, master: Master, timeout: float = 30.0) -> None:
        self.run_until(master, master.idle, timeout, "the master never became idle")

    def close(self) -> None:
        for master in self.masters:
            master.teardown()


@pytest.fixture
def farm(project):
    farm = Farm(project)
    yield farm
    farm.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear in {timeout} s")


# -- outcomes -----------------------------------------------------------------------------------


def test_success_with_log_and_result(farm):
    farm.host()
    farm.task("greet", '''
        def execute(ctx):
            ctx.log("record " + ctx.record["name"] + " rev " + ctx.record["meta"]["rev"])
            print("printed output is logged too")
            return {"success": True, "reason": "greeted " + ctx.args["who"], "data": {"n": 1}}
    ''')
    client.submit(farm.couch, client.Registry(farm.settings.tasks_dir), "r1",
                  [{"name": "greet", "args": {"who": "world"}}], meta={"rev": "abc"})
    master = farm.master()
    farm.drain(master)
    doc = farm.doc("task:r1:greet:linux")
    assert doc["state"] == "success"
    assert doc["reason"] == "greeted world"
    assert doc["result"] == {"success": True, "reason": "greeted world", "data": {"n": 1}}
    assert doc["host"] == "local"
    assert doc["duration"] > 0 and doc["ended"] >= doc["started"]
    assert doc["lease_until"] is None
    assert [(a["host"], a["outcome"]) for a in doc["attempts"]] == [("local", "success")]
    assert [h["state"] for h in doc["history"]] == ["pending", "running", "success"]
    log = farm.couch.get_attachment(doc["_id"], "log.txt").decode()
    assert "record r1 rev abc" in log
    assert "printed output is logged too" in log
    host = farm.couch.get("host:local")
    assert host["alive"] is True and host["facts"]["python"]


def test_a_record_submitted_while_the_master_runs_comes_through_the_feed(farm):
    farm.host()
    master = farm.master()
    farm.drain(master)  # nothing to do yet
    farm.submit("late", "echo")
    farm.run_until(master, lambda: farm.doc("task:late:echo:linux")["state"] == "success",
                   timeout=20, what="the late record's task to succeed")
    farm.drain(master)
    assert master.idle()


def test_failed_is_the_code_under_test(farm):
    farm.host()
    farm.task("check", '''
        def execute(ctx):
            return {"success": False, "reason": "2 of 10 tests failed"}
    ''')
    farm.submit("r1", "check")
    farm.drain(farm.master())
    doc = farm.doc("task:r1:check:linux")
    assert (doc["state"], doc["reason"]) == ("failed", "2 of 10 tests failed")
    assert doc["attempts"][-1]["outcome"] == "failed"


def test_an_exception_is_an_error_with_the_traceback(farm):
    farm.host()
    farm.task("crash", '''
        def helper(value):
            raise ValueError("bad value %r" % value)


        def execute(ctx):
            helper(42)
    ''')
    farm.submit("r1", "crash")
    farm.drain(farm.master())
    doc = farm.doc("task:r1:crash:linux")
    assert doc["state"] == "error"
    assert doc["reason"] == "ValueError: bad value 42"
    traceback = doc["result"]["traceback"]
    assert traceback.startswith("Traceback (most recent call last):")
    assert 'File "tasks/crash.py", line 7, in execute' in traceback
    assert 'raise ValueError("bad value %r" % value)' in traceback
    assert doc["result"]["success"] is False


@pytest.mark.parametrize(
    ("returned", "shown"),
    [("42", "int '42'"), ("{'ok': True}", "dict"), ("{'success': 'yes'}", "dict"),
     ("None", "NoneType")],
)
def test_a_result_that_is_not_a_dict_with_success(farm, returned, shown):
    farm.host()
    farm.task("odd", f"def execute(ctx):\n    return {returned}\n")
    farm.submit("r1", "odd")
    farm.drain(farm.master())
    doc = farm.doc("task:r1:odd:linux")
    assert doc["state"] == "error"
    assert doc["reason"].startswith(f"task returned {shown}")
    assert doc["reason"].endswith("not a dict with a boolean 'success'")


@pytest.mark.parametrize("value", ["object()", "float('nan')", "float('inf')"])
def test_a_result_that_is_not_json_is_an_error(farm, value):
    # NaN would pass json.dumps' defaults, and then no write of the master would go through
    farm.host()
    farm.task("odd", f"def execute(ctx):\n    return {{'success': True, 'x': {value}}}\n")
    farm.submit("r1", "odd")
    farm.drain(farm.master())
    doc = farm.doc("task:r1:odd:linux")
    assert doc["state"] == "error"
    assert "not JSON" in doc["reason"]


def test_timeout_ends_the_task_process(farm, tmp_path):
    farm.host()
    pid_file = tmp_path / "pid"
    farm.task("slow", f'''
        import os, time
        TIMEOUT = 1


        def execute(ctx):
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            ctx.log("going to sleep")
            time.sleep(60)
            return {{"success": True}}
    ''')
    farm.submit("r1", "slow")
    master = farm.master()
    started = time.monotonic()
    farm.drain(master, timeout=20)
    assert time.monotonic() - started < 15
    doc = farm.doc("task:r1:slow:linux")
    assert (doc["state"], doc["reason"]) == ("error", "timeout after 1 s")
    assert doc["attempts"][-1]["outcome"] == "error"
    assert "going to sleep" in farm.couch.get_attachment(doc["_id"], "log.txt").decode()
    assert not alive(int(pid_file.read_text()))


def test_reuse_process_runs_a_modules_tasks_in_kept_workers(farm):
    farm.host()
    farm.task("chunk", '''
        import os
        REUSE_PROCESS = 3


        def execute(ctx):
            print("chunk", ctx.args["n"])
            if ctx.args["n"] == 4:
                raise ValueError("bad chunk")
            return {"success": True, "reason": str(os.getpid())}
    ''')
    farm.submit("r1", *[{"name": "chunk", "key": f"c{n}", "args": {"n": n}} for n in range(7)])
    farm.drain(farm.master())
    docs = [farm.doc(f"task:r1:chunk:linux:c{n}") for n in range(7)]
    assert [d["state"] for d in docs] == ["success"] * 4 + ["error"] + ["success"] * 2
    assert "ValueError: bad chunk" in docs[4]["reason"]
    pids = [d["reason"] for d in docs if d["state"] == "success"]
    assert len(set(pids)) == 3  # one slot: runs 0-2, 3-5 (4 failed in it), 6
    for n, doc in enumerate(docs):
        assert farm.couch.get_attachment(doc["_id"], "log.txt").decode().strip() == f"chunk {n}"


# -- unschedulable ------------------------------------------------------------------------------


def test_unregistered_task_is_unschedulable(farm):
    farm.host()
    path = farm.task("gone", "def execute(ctx):\n    return {'success': True}\n")
    farm.submit("r1", "gone")
    path.unlink()  # the module went away after the record was submitted
    farm.drain(farm.master())
    doc = farm.doc("task:r1:gone:linux")
    assert doc["state"] == "unschedulable"
    assert doc["reason"] == "task 'gone' is not registered in the project's tasks/ folder"
    assert doc["attempts"] == []


def test_platform_without_an_enabled_host_is_unschedulable(farm):
    farm.host()
    farm.submit("r1", "echo")
    client.enable_host(farm.couch, "local", False)
    farm.drain(farm.master())
    doc = farm.doc("task:r1:echo:linux")
    assert doc["state"] == "unschedulable"
    assert doc["reason"] == "no enabled host has platform 'linux'"
    assert doc["attempts"] == []


def test_disabling_the_host_while_the_master_runs(farm):
    farm.host()
    master = farm.master()
    farm.run_until(master, lambda: master.hosts["local"].doc.get("alive") is True,
                   what="the host to be checked alive")
    client.enable_host(farm.couch, "local", False)
    farm.run_until(master, lambda: not master.hosts["local"].doc["enabled"],
                   what="the master to see the host disabled")
    farm.submit("r1", "echo")
    farm.run_until(master, lambda: farm.doc("task:r1:echo:linux")["state"] != "pending",
                   timeout=10, what="the task to leave pending")
    doc = farm.doc("task:r1:echo:linux")
    assert (doc["state"], doc["reason"]) == (
        "unschedulable", "no enabled host has platform 'linux'")


def test_requires_labels(farm):
    farm.host("plain")
    farm.host("gpubox", labels=["gpu"])
    farm.submit("r1", {"name": "echo", "requires": ["gpu"]},
                {"name": "sleep", "requires": ["tpu"]})
    farm.drain(farm.master())
    echo = farm.doc("task:r1:echo:linux")
    assert (echo["state"], echo["host"]) == ("success", "gpubox")
    sleep = farm.doc("task:r1:sleep:linux")
    assert sleep["state"] == "unschedulable"
    assert sleep["reason"] == "no enabled host of platform 'linux' meets: tpu"


def test_requires_facts_the_host_reports(farm):
    farm.host()
    farm.submit("r1", {"name": "echo", "requires": ["python>=3.8", "os==linux"]},
                {"name": "sleep", "requires": ["python<3"]})
    farm.drain(farm.master())
    assert farm.doc("task:r1:echo:linux")["state"] == "success"
    sleep = farm.doc("task:r1:sleep:linux")
    assert (sleep["state"], sleep["reason"]) == (
        "unschedulable", "no enabled host of platform 'linux' meets: python<3")


# -- slots and fairness -------------------------------------------------------------------------

SPAN = '''
    import time


    def execute(ctx):
        with open(ctx.args["file"], "a") as out:
            out.write("start %s %r\\n" % (ctx.args["tag"], time.time()))
        time.sleep(ctx.args.get("seconds", 0.4))
        with open(ctx.args["file"], "a") as out:
            out.write("end %s %r\\n" % (ctx.args["tag"], time.time()))
        return {"success": True}
'''


def spans(path: Path) -> list[tuple[float, str, str]]:
    events = []
    for line in path.read_text().splitlines():
        kind, tag, at = line.split()
        events.append((float(at), kind, tag))
    return sorted(events)


def test_a_pass_reads_the_queue_only_as_far_as_the_free_slots_reach(farm):
    # a record with many inputs: a pass looks at the tasks it can start, not at all of them
    farm.host(slots=2)
    farm.task("short", '''
        import time


        def execute(ctx):
            time.sleep(0.1)
            return {"success": True}
    ''')
    farm.submit("r1", *[{"name": "short", "key": f"k{n}"} for n in range(500)])
    master = farm.master()
    farm.run_until(master, lambda: len(master.runs) == 2, what="two tasks running")
    looked: list[str] = []
    claimable = master.claimable
    master.claimable = lambda task_id: looked.append(task_id) or claimable(task_id)
    farm.run_until(master, lambda: master.queue_depth() <= 488, what="ten more tasks run")
    assert master.queue_depth() >= 480
    # about two looks per task started (its claim, then its entry dropped once running):
    # walking the whole queue on a pass with a free slot would be 480 looks at once
    assert len(looked) < 100


def test_slots_are_never_exceeded(farm, tmp_path):
    farm.host(slots=2)
    farm.task("span", SPAN)
    record_file = tmp_path / "spans"
    for i in range(5):
        farm.submit(f"r{i}", {"name": "span", "args": {"file": str(record_file), "tag": f"r{i}"}})
    master = farm.master()
    most = 0

    def count_running():
        nonlocal most
        running = sum(1 for r in master.runs.values() if r.host == "local")
        most = max(most, running)
        return master.idle()

    farm.run_until(master, count_running, timeout=40)
    assert most == 2
    events = spans(record_file)
    assert sorted(tag for _, kind, tag in events if kind == "end") == [f"r{i}" for i in range(5)]
    running = peak = 0
    for _, kind, _tag in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2


def test_fair_oldest_record_first_then_task_order(farm, tmp_path):
    farm.host(slots=1)
    farm.task("span_a", SPAN)
    farm.task("span_b", SPAN)
    record_file = tmp_path / "spans"

    def entry(name, tag):
        return {"name": name, "args": {"file": str(record_file), "tag": tag, "seconds": 0.05}}

    farm.submit("zeta", entry("span_b", "zeta/b"), entry("span_a", "zeta/a"))
    time.sleep(0.01)
    farm.submit("alpha", entry("span_b", "alpha/b"), entry("span_a", "alpha/a"))
    farm.drain(farm.master())
    starts = [tag for _, kind, tag in spans(record_file) if kind == "start"]
    assert starts == ["zeta/b", "zeta/a", "alpha/b", "alpha/a"]


# -- logs and artifacts -------------------------------------------------------------------------


def test_log_is_streamed_while_the_task_runs(farm, tmp_path):
    farm.host()
    go = tmp_path / "go"
    farm.task("chatty", f'''
        import os, time


        def execute(ctx):
            ctx.log("first line")
            deadline = time.time() + 30
            while not os.path.exists({str(go)!r}) and time.time() < deadline:
                time.sleep(0.05)
            ctx.log("last line")
            return {{"success": True}}
    ''')
    farm.submit("r1", "chatty")
    master = farm.master()

    def streamed():
        doc = farm.couch.get_or_none("task:r1:chatty:linux")
        if not doc or "log.txt" not in doc.get("_attachments", {}):
            return False
        log = farm.couch.get_attachment(doc["_id"], "log.txt").decode()
        return doc["state"] == "running" and "first line" in log

    farm.run_until(master, streamed, timeout=20, what="the log while running")
    assert b"last line" not in farm.couch.get_attachment("task:r1:chatty:linux", "log.txt")
    go.write_text("go")
    farm.drain(master)
    doc = farm.doc("task:r1:chatty:linux")
    assert doc["state"] == "success"
    log = farm.couch.get_attachment(doc["_id"], "log.txt").decode()
    assert log.index("first line") < log.index("last line")


def test_attached_artifacts_are_stored(farm):
    farm.host()
    farm.task("report", '''
        def execute(ctx):
            ctx.attach("report.xml", b"<testsuite tests='3'/>", "application/xml")
            ctx.attach("notes.txt", "all good\\n")
            ctx.attach("blob.bin", bytes(range(256)))
            ctx.attach("log.txt", "not allowed: the log's own name")
            return {"success": True}
    ''')
    farm.submit("r1", "report")
    farm.drain(farm.master())
    doc = farm.doc("task:r1:report:linux")
    assert doc["state"] == "success"
    attachments = doc["_attachments"]
    assert set(attachments) == {"log.txt", "report.xml", "notes.txt", "blob.bin"}
    assert attachments["report.xml"]["content_type"] == "text/plain"  # XML may hold script
    assert doc["artifact_types"] == {"report.xml": "application/xml"}
    listed = {f["name"]: f["content_type"] for f in client.artifacts(farm.couch, "r1")}
    assert listed["report.xml"] == "application/xml"  # as the task declared it
    assert attachments["notes.txt"]["content_type"].startswith("text/plain")
    get = farm.couch.get_attachment
    assert get(doc["_id"], "report.xml") == b"<testsuite tests='3'/>"
    assert get(doc["_id"], "notes.txt") == b"all good\n"
    assert get(doc["_id"], "blob.bin") == bytes(range(256))
    assert "artifact 'log.txt' refused" in get(doc["_id"], "log.txt").decode()


# -- cancel -------------------------------------------------------------------------------------

def test_cancel_ends_the_running_process(farm, tmp_path):
    farm.settings = farm.settings.with_(
        master=replace(farm.settings.master, lease_seconds=1.5))  # renewals every 0.5 s
    farm.host()
    pid_file = tmp_path / "pid"
    farm.task("forever", f'''
        import os, time


        def execute(ctx):
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(120)
            return {{"success": True}}
    ''')
    farm.submit("r1", "forever")
    master = farm.master()
    farm.run_until(master, pid_file.exists, timeout=20, what="the task to start")
    pid = int(wait_for_file(pid_file))
    assert alive(pid)
    assert farm.doc("task:r1:forever:linux")["state"] == "running"

    assert client.cancel(farm.couch, "r1") == 1
    farm.run_until(master, lambda: not alive(pid), timeout=15, what="the process to end")
    cancelled = farm.doc("task:r1:forever:linux")
    assert cancelled["state"] == "cancelled"
    ended = time.monotonic()
    while time.monotonic() - ended < 2:
        master.loop_once(wait=0.05)
    doc = farm.doc("task:r1:forever:linux")
    assert doc["_rev"] == cancelled["_rev"], f"the master wrote over the cancelled task: {doc}"
    assert master.idle(), f"the master still holds the cancelled run: {master.runs}"
    final = [h["state"] for h in doc["history"] if h["state"] in FINAL]
    assert final == ["cancelled"]
    assert len(doc["attempts"]) == 1
    assert doc["attempts"][0]["outcome"] in (None, "cancelled")


def test_the_host_lets_kept_outcomes_go_once_their_results_are_written(farm):
    def kept(task_id: str) -> Path:
        name = remote_runner.result_name(documents.attempt_id(farm.doc(task_id)))
        return Path(remote_runner.RESULTS) / remote_runner.day() / name

    farm.host()
    master = farm.master()
    outcomes = []
    for n in range(3):  # one after another: each next task tells the host what was written
        (task,) = farm.submit(f"r{n}", "echo")
        farm.run_until(master, lambda t=task: farm.doc(t["_id"])["state"] == "success",
                       what=f"task {n} to succeed")
        farm.drain(master)
        outcomes.append(kept(task["_id"]))
        assert outcomes[-1].exists()  # kept on the host, in case its master dies now
    deadline = time.monotonic() + 10
    while outcomes[1].exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # let go after the third task ran
    assert not outcomes[0].exists() and not outcomes[1].exists()
    assert outcomes[2].exists()  # its result is written too: let go with the next task
