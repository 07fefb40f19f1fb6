"""What a CI gate and a user rely on every day, against a real master (`dirt serve`), a real
database and a local host: waiting never passes work that has not run, exit codes a script can
act on, keyed tasks reachable by one spec syntax, re-runs that keep the earlier result, and a
task's log and artifacts from the terminal.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import DIRT, free_port, run_dirt
from farm import MasterProcess, wait_for
from test_cli import db_of, refused

from dirt import cli, client
from dirt.documents import new_record
from dirt.errors import WaitTimeout

# A task that logs, waits for its gate file (when it has one), attaches what args.attach
# names, and ends as args.end says: pass, fail or raise (an error).
GATE_TASK = '''"""Log, wait for args.gate to exist, attach args.attach, end as args.end says."""

import os
import time


def execute(ctx):
    ctx.log("line 1 of " + ctx.args.get("id", "?"))
    gate = ctx.args.get("gate")
    while gate and not os.path.exists(gate):
        time.sleep(0.02)
    for name, text in (ctx.args.get("attach") or {}).items():
        ctx.attach(name, text, "application/xml" if name.endswith(".xml") else "text/plain")
    ctx.log("line 2")
    end = ctx.args.get("end", "pass")
    if end == "raise":
        raise RuntimeError("the task crashed")
    return {"success": end == "pass", "reason": "ended " + end}
'''


@pytest.fixture(scope="module")
def farm(couch_server, tmp_path_factory):
    """A project with the gate task, two local hosts and `dirt serve` running."""
    from dirt import scaffold

    folder = tmp_path_factory.mktemp("everyday")
    settings = scaffold.create(folder / "proj", f"test-{uuid.uuid4().hex[:12]}",
                               couch_server.url, environ={})
    (settings.project / "tasks" / "gate.py").write_text(GATE_TASK)
    run_dirt("hosts", "add", "h1", "--platform=linux", "--local", "--slots=4",
             project=settings, check=True)
    master = MasterProcess(settings.project, folder / "serve.log")
    yield settings
    assert master.terminate() == 0
    assert "Traceback" not in master.log()
    db_of(settings).drop()


def written(couch) -> dict:
    """The ids and revisions of records and tasks: what a refused command must not change
    (the running master writes its hosts' health meanwhile)."""
    return {row["id"]: row["value"]["rev"] for row in couch.all_docs()
            if row["id"].startswith(("record:", "task:"))}


def dirt(farm, *args: str, **kw) -> subprocess.CompletedProcess:
    return run_dirt(*args, project=farm, timeout=kw.pop("timeout", 120), **kw)


def submit_file(farm, tmp_path: Path, name: str, tasks: list, *extra: str, **kw):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"tasks": tasks}))
    return dirt(farm, "submit", name, f"--file={path}", *extra, **kw)


def gate(tmp_path: Path, key: str | None = None, **args) -> dict:
    """A gate task entry whose gate file is tmp_path/<key>.open."""
    task = {"name": "gate", "platform": "linux",
            "args": {"id": key or "gate", "gate": str(tmp_path / f"{key or 'gate'}.open"),
                     **args}}
    return {**task, "key": key} if key else task


def open_gate(tmp_path: Path, key: str | None = None) -> None:
    (tmp_path / f"{key or 'gate'}.open").write_text("")


# -- 1. waiting never reports success for work that has not run --------------------------------


def test_a_hundred_submit_waits_of_a_failing_task_each_exit_1(farm, tmp_path, capsys):
    """The record knows its tasks: `--wait` right after the submit can no longer read an
    empty task list as "passed" (it did in 3 of 15 runs)."""
    failing = tmp_path / "fails.json"
    failing.write_text(json.dumps({"tasks": [{"name": "gate", "platform": "linux",
                                              "args": {"end": "fail"}}]}))
    codes = []
    for i in range(100):
        codes.append(cli.main(["--project", str(farm.project), "submit", f"hundred-{i}",
                               f"--file={failing}", "--wait", "--timeout=120"]))
        assert f"record hundred-{i}: failed (1 tasks)" in capsys.readouterr().out
    assert codes == [1] * 100


def test_wait_never_passes_a_record_whose_tasks_are_not_all_there(farm):
    """A record cut off before its tasks were written, or with no tasks at all, has no
    verdict: waiting runs out of time (exit 3), it never reads as passed."""
    couch = db_of(farm)
    lacking = new_record("cut-off")
    lacking["tasks"] = ["task:cut-off:gate:linux"]
    couch.put(lacking)
    empty = new_record("no-tasks")
    couch.put(empty)
    for name in ("cut-off", "no-tasks"):
        status = client.record_status(couch, name)
        assert client.exit_code(status) == 3
        with pytest.raises(WaitTimeout):
            client.wait(couch, name, timeout=0.3, interval=0.1)
    done = dirt(farm, "wait", "cut-off", "--timeout=0.5")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "task:cut-off:gate:linux  missing" in done.stdout
    assert "1 of its tasks are not in the database" in done.stderr


def test_wait_rides_out_a_database_that_goes_away(farm, tmp_path):
    """`dirt wait` through a proxy that stops answering for a while: it keeps asking with a
    backoff and ends with the verdict once the database is back."""
    from httpd import TcpProxy

    submit_file(farm, tmp_path, "blip", [gate(tmp_path, "blip")], check=True)
    proxy = TcpProxy(farm.couch_url)
    waiting = subprocess.Popen([DIRT, "wait", "blip", "--timeout=120"], cwd=farm.project,
                               env=environ({"DIRT_COUCHDB_URL": proxy.url}),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_until(waiting, "blip: 1 running", 60)
        proxy.pause()
        wait_for(lambda: proxy.refused >= 2, 60, "the wait to ask twice while it is away")
        assert waiting.poll() is None  # still waiting, not dead
        open_gate(tmp_path, "blip")
        proxy.resume()
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, out + err
        assert "trying again" in err and "Traceback" not in err
    finally:
        if waiting.poll() is None:
            waiting.kill()
        waiting.communicate()
        proxy.close()


def environ(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    env["DIRT_HOME"] = os.environ.get("DIRT_HOME", str(Path.home() / ".local/share/dirt"))
    return {**env, **extra}


# -- 2. exit codes -----------------------------------------------------------------------------


def test_exit_codes_a_ci_script_can_act_on(farm, tmp_path):
    couch = db_of(farm)
    before = written(couch)
    assert refused(dirt(farm, "submit", "x-new", "nosuchtask"), "unknown task").startswith(
        "dirt: error")
    assert dirt(farm, "submit", "x-new", "nosuchtask").returncode == 4
    assert dirt(farm, "status", "--limit=many").returncode == 4
    assert dirt(farm, "status", "a", "b").returncode == 4  # not a usage docopt knows
    assert dirt(farm, "cancel", "no-such-record").returncode == 4
    assert written(couch) == before  # nothing written

    away = dirt(farm, "status", env={"DIRT_COUCHDB_URL": f"http://127.0.0.1:{free_port()}"})
    assert away.returncode == 3
    refused(away, "does not answer")

    assert submit_file(farm, tmp_path, "x-pass", [gate(tmp_path, end="pass")]).returncode == 0
    assert submit_file(farm, tmp_path, "x-fail", [gate(tmp_path, end="fail")]).returncode == 0
    assert submit_file(farm, tmp_path, "x-error", [gate(tmp_path, end="raise")]).returncode == 0
    assert submit_file(farm, tmp_path, "x-cancel", [gate(tmp_path, "never")]).returncode == 0
    timed_out = dirt(farm, "wait", "x-pass", "--timeout=0.5")
    assert timed_out.returncode == 3, timed_out.stdout + timed_out.stderr
    assert "tasks have not ended (gate@linux)" in timed_out.stderr
    assert dirt(farm, "cancel", "x-cancel").returncode == 0
    open_gate(tmp_path)
    verdicts = {name: dirt(farm, "wait", name, "--timeout=60").returncode
                for name in ("x-pass", "x-fail", "x-error", "x-cancel")}
    assert verdicts == {"x-pass": 0, "x-fail": 1, "x-error": 2, "x-cancel": 2}


def test_status_into_a_closed_pipe_ends_quietly(farm):
    """`dirt status | head`: the reader is gone before dirt writes; no traceback."""
    reading = subprocess.Popen([DIRT, "status"], cwd=farm.project, env=environ({}),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reading.stdout.close()
    with reading.stderr:
        err = reading.stderr.read().decode()
    assert reading.wait(60) == 141
    assert err == ""


def test_the_client_example_in_the_docs_exits_with_its_codes(farm, tmp_path):
    """docs/client.md's CI script, run as written: 0 the first time, and a one-line error
    with 4 (not a traceback) when its record name exists already."""
    text = (Path(__file__).parents[1] / "docs" / "client.md").read_text()
    script = tmp_path / "ci.py"
    script.write_text(text.split("```python\n", 1)[1].split("```", 1)[0])
    env = environ({"DIRT_PROJECT": str(farm.project), "GITHUB_SHA": uuid.uuid4().hex})
    run = [str(Path(DIRT).parent / "python"), str(script)]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 4
    assert again.stderr.strip().count("\n") == 0 and "exists" in again.stderr


# -- 3. keyed tasks ----------------------------------------------------------------------------


def test_keyed_tasks_are_named_by_one_spec_everywhere(farm, tmp_path):
    done = submit_file(farm, tmp_path, "keyed", [gate(tmp_path, "a"), gate(tmp_path, "b")])
    assert "2 tasks submitted (gate@linux:a, gate@linux:b)" in done.stdout
    couch = db_of(farm)
    vague = refused(dirt(farm, "cancel", "keyed", "gate"), "has no task 'gate'")
    assert "gate@linux:a, gate@linux:b" in vague and "gate:*" in vague
    assert dirt(farm, "cancel", "keyed", "gate").returncode == 4
    assert {t["state"] for t in client.record_tasks(couch, "keyed")} <= {"pending", "running"}

    assert "1 tasks cancelled" in dirt(farm, "cancel", "keyed", "gate:a", check=True).stdout
    open_gate(tmp_path, "b")
    assert dirt(farm, "wait", "keyed", "--timeout=60").returncode == 2  # a was cancelled
    states = {t["spec"]: t["state"] for t in client.record_tasks(couch, "keyed")}
    assert states == {"gate@linux:a": "cancelled", "gate@linux:b": "success"}

    status = dirt(farm, "status", "keyed", check=True).stdout
    assert "gate@linux:a  cancelled" in status and "gate@linux:b  success" in status
    as_json = json.loads(dirt(farm, "status", "keyed", "--json", check=True).stdout)
    assert [(t["key"], t["spec"]) for t in as_json["tasks"]] == [
        ("a", "gate@linux:a"), ("b", "gate@linux:b")]

    for spec in ("gate@linux:a", "gate:a"):
        assert "1 tasks pending again" in dirt(farm, "rerun", "keyed", spec, check=True).stdout
        open_gate(tmp_path, "a")
        assert dirt(farm, "wait", "keyed", "--timeout=60").returncode == 0
    assert "2 tasks pending again" in dirt(farm, "rerun", "keyed", "gate:*", check=True).stdout
    assert dirt(farm, "wait", "keyed", "--timeout=60").returncode == 0
    assert "line 1 of b" in dirt(farm, "log", "keyed", "gate:b", check=True).stdout


# -- 4. re-running -----------------------------------------------------------------------------


def test_rerun_failed_keeps_the_earlier_result_and_rerun_as_makes_a_new_record(farm, tmp_path):
    tasks = [gate(tmp_path, "ok"), gate(tmp_path, "bad", end="fail"), gate(tmp_path, "stop")]
    submit_file(farm, tmp_path, "mixed", tasks, check=True)
    dirt(farm, "cancel", "mixed", "gate:stop", check=True)
    open_gate(tmp_path, "ok")
    open_gate(tmp_path, "bad")
    assert dirt(farm, "wait", "mixed", "--timeout=60").returncode == 2
    status = dirt(farm, "status", "mixed", check=True).stdout.splitlines()
    assert status[2].split()[:2] == ["gate@linux:bad", "failed"]  # what needs a look comes first

    again = dirt(farm, "rerun", "mixed", "--failed", check=True)
    assert "2 tasks pending again" in again.stdout  # the failed one and the cancelled one
    open_gate(tmp_path, "stop")
    assert dirt(farm, "wait", "mixed", "--timeout=60").returncode == 1
    couch = db_of(farm)
    bad = couch.get("task:mixed:gate:linux:bad")
    assert [(run["state"], run["reason"]) for run in bad["earlier"]] == [("failed", "ended fail")]
    assert "earlier" not in couch.get("task:mixed:gate:linux:ok")  # it passed: not run again

    copy = dirt(farm, "rerun", "mixed", "--as=mixed-2", check=True)
    assert "record mixed-2: 3 tasks submitted" in copy.stdout and "re-run of mixed" in copy.stdout
    assert couch.get("record:mixed-2")["meta"]["rerun_of"] == "mixed"
    assert couch.get("task:mixed-2:gate:linux:bad")["args"] == bad["args"]
    assert dirt(farm, "wait", "mixed-2", "--timeout=60").returncode == 1
    before = written(couch)
    refused(dirt(farm, "rerun", "mixed", "--as=mixed-2"), "mixed-2", "exists")
    assert written(couch) == before
    only_failed = dirt(farm, "rerun", "mixed", "--failed", "--as=mixed-3", check=True)
    assert "1 tasks submitted (gate@linux:bad)" in only_failed.stdout


# -- 5. logs and artifacts from the terminal ---------------------------------------------------


def read_until(process: subprocess.Popen, text: str, timeout: float) -> str:
    """What the process writes to stdout until `text` shows up."""
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while text not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"no {text!r} in {seen!r} after {timeout} s")
            chunk = os.read(process.stdout.fileno(), 65536).decode()
            if not chunk:
                raise AssertionError(f"output ended without {text!r}: {seen!r}")
            seen += chunk
    return seen


def test_log_follow_follows_a_running_task_to_its_end(farm, tmp_path):
    submit_file(farm, tmp_path, "followed", [gate(tmp_path, "f", end="fail")], check=True)
    following = subprocess.Popen([DIRT, "log", "followed", "gate:f", "--follow"],
                                 cwd=farm.project, env=environ({}), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
    try:
        seen = read_until(following, "line 1 of f", 60)
        assert following.poll() is None  # the task runs on: so does the follower
        open_gate(tmp_path, "f")
        seen += read_until(following, "line 2", 60)
        assert following.wait(60) == 1  # the task failed
        with following.stderr:
            assert "gate@linux:f failed" in following.stderr.read().decode()
    finally:
        if following.poll() is None:
            following.kill()
        following.communicate()  # and close its pipes
    assert seen.count("line 1 of f") == 1  # each part of the log once


def test_artifacts_list_get_and_refuse_a_hostile_name(farm, tmp_path):
    attach = {"report.xml": "<testsuite/>", "notes.txt": "hello"}
    tasks = [{"name": "gate", "platform": "linux", "key": k, "args": {"attach": attach}}
             for k in ("x", "y")]
    submit_file(farm, tmp_path, "arts", tasks, check=True)
    assert dirt(farm, "wait", "arts", "--timeout=60").returncode == 0
    listing = dirt(farm, "artifacts", "arts", check=True).stdout
    assert "gate@linux:x  notes.txt" in listing and "gate@linux:y  report.xml" in listing
    files = json.loads(dirt(farm, "artifacts", "arts", "gate:y", "--json", check=True).stdout)
    assert [(f["task"], f["name"]) for f in files] == [("gate@linux:y", "notes.txt"),
                                                       ("gate@linux:y", "report.xml")]

    out = tmp_path / "out"
    dirt(farm, "artifacts", "arts", "gate:x", "--get=report.xml", f"--output={out}", check=True)
    assert (out / "report.xml").read_text() == "<testsuite/>"
    dirt(farm, "artifacts", "arts", "--get=*.xml", "-o", str(out / "all"), check=True)
    assert sorted(p.relative_to(out / "all").as_posix() for p in (out / "all").rglob("*.xml")) \
        == ["gate@linux:x/report.xml", "gate@linux:y/report.xml"]
    piped = dirt(farm, "artifacts", "arts", "gate:y", "--get=notes.txt", "-o", "-", check=True)
    assert piped.stdout == "hello"
    refused(dirt(farm, "artifacts", "arts", "--get=nothing.bin"), "no artifact named",
            "notes.txt, report.xml")

    hostile = [{"name": "gate", "platform": "linux", "args": {"attach": {"../evil.txt": "x"}}}]
    submit_file(farm, tmp_path, "hostile", hostile, check=True)
    assert dirt(farm, "wait", "hostile", "--timeout=60").returncode == 0
    inside = tmp_path / "inside"
    done = dirt(farm, "artifacts", "hostile", "--get=*", f"--output={inside}")
    assert done.returncode == 4
    refused(done, "not a safe file name")
    assert not (tmp_path / "evil.txt").exists() and not inside.exists()
