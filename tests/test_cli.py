"""The `dirt` command end to end, as a user runs it: a real subprocess, a real database.

Bad input is refused with one line on stderr that names the problem, a non-zero exit, and
nothing written: every such test compares the database before and after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import DIRT, free_port, run_dirt

from dirt import scaffold
from dirt.couch import Couch

COMMANDS = ["create", "couch", "hosts", "tasks", "submit", "status", "cancel", "rerun",
            "serve", "web"]


def db_of(settings) -> Couch:
    return Couch(settings.couch_url, settings.database)


def snapshot(couch: Couch) -> dict:
    """Every document's id and rev, and the update sequence: any write changes it."""
    docs = {row["id"]: row["value"]["rev"] for row in couch.all_docs()}
    return {"docs": docs, "update_seq": couch.info()["update_seq"]}


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """The command failed with exactly one line on stderr naming the problem."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, done.stdout
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def farm(couch_server, tmp_path_factory):
    """A project with a local linux host; the bad-input tests below must not change it."""
    database = f"test-{uuid.uuid4().hex[:12]}"
    settings = scaffold.create(tmp_path_factory.mktemp("farm") / "proj", database,
                               couch_server.url, environ={})
    run_dirt("hosts", "add", "local", "--platform=linux", "--local", "--slots=2",
             project=settings, check=True)
    run_dirt("submit", "taken", "echo", project=settings, check=True)
    yield settings
    db_of(settings).drop()


@pytest.fixture
def unchanged(farm):
    """Asserts, after the test, that the farm's database was not written."""
    couch = db_of(farm)
    before = snapshot(couch)
    yield farm
    assert snapshot(couch) == before


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- help -----------------------------------------------------------------------------------


def test_help_lists_every_command():
    done = run_dirt("--help", check=True)
    assert done.stdout.startswith("dirt: a CouchDB-backed test farm.")
    for command in COMMANDS:
        assert f"  dirt {command} " in done.stdout
        assert f"\n  {command} " in done.stdout  # and a line saying what it does
    assert done.stderr == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command):
    done = run_dirt(command, "--help", check=True)
    assert done.stdout.startswith("Usage:")
    assert f"dirt {command}" in done.stdout.splitlines()[0] + done.stdout.splitlines()[1]
    assert len(done.stdout.splitlines()) >= 3  # usage and a description


def test_version():
    done = run_dirt("--version", check=True)
    assert done.stdout.strip().startswith("dirt ")


def test_unknown_command_shows_usage():
    done = run_dirt("frobnicate")
    assert done.returncode != 0
    assert "Usage:" in done.stderr


# -- the whole flow -----------------------------------------------------------------------------


def test_create_hosts_tasks_submit_serve_status(couch_server, tmp_path):
    folder = tmp_path / "myfarm"
    database = f"test-{uuid.uuid4().hex[:12]}"
    created = run_dirt("create", str(folder), f"--db={database}",
                       f"--couch={couch_server.url}", check=True)
    assert f"created project {folder}" in created.stdout
    assert (folder / "dirt.toml").is_file() and (folder / "tasks" / "echo.py").is_file()
    couch = Couch(couch_server.url, database)
    try:
        assert couch.get("_design/dirt")["views"]

        class Project:
            project = folder

        def dirt(*args, **kw):
            return run_dirt(*args, project=Project, check=True, **kw)

        added = dirt("hosts", "add", "local", "--platform=linux", "--local", "--slots=2")
        assert added.stdout.strip() == "host local added (linux, local)"
        hosts = json.loads(dirt("hosts", "list", "--json").stdout)
        assert [(h["name"], h["platform"], h["slots"]) for h in hosts] == [("local", "linux", 2)]

        tasks = json.loads(dirt("tasks", "--json").stdout)
        assert {t["name"] for t in tasks} >= {"echo", "sleep", "shell"}
        assert next(t for t in tasks if t["name"] == "sleep")["timeout"] == 600

        submitted = dirt("submit", "r1", "echo", "sleep@linux", "--meta=rev=abc123",
                         "--description=first record")
        assert submitted.stdout.strip() == (
            "record r1: 2 tasks submitted (echo@linux, sleep@linux)")
        pending = json.loads(dirt("status", "r1", "--json").stdout)
        assert pending["record"]["state"] == "pending"
        assert pending["record"]["meta"] == {"rev": "abc123"}

        dirt("serve", "--drain", timeout=60)
        status = json.loads(dirt("status", "r1", "--json").stdout)
        assert status["record"]["state"] == "success"
        assert status["record"]["counts"] == {"success": 2}
        assert [(t["name"], t["state"], t["host"], t["attempts"]) for t in status["tasks"]] == [
            ("echo", "success", "local", 1), ("sleep", "success", "local", 1)]
        log = couch.get_attachment("task:r1:echo:linux", "log.txt").decode()
        assert "record r1 on platform linux" in log and "hello from dirt" in log

        listing = json.loads(dirt("status", "--json").stdout)["records"]
        assert [(r["name"], r["state"], r["total"]) for r in listing] == [("r1", "success", 2)]
        table = dirt("status").stdout
        assert table.splitlines()[1].split()[0] == "r1"

        rerun = dirt("rerun", "r1", "echo")
        assert rerun.stdout.strip() == "record r1: 1 tasks pending again"
        assert couch.get("task:r1:echo:linux")["state"] == "pending"
        dirt("serve", "--drain", timeout=60)
        echo = couch.get("task:r1:echo:linux")
        assert echo["state"] == "success"
        assert [a["outcome"] for a in echo["attempts"]] == ["success", "success"]

        dirt("submit", "r2", "sleep", "echo")
        cancelled = dirt("cancel", "r2", "sleep")
        assert cancelled.stdout.strip() == "record r2: 1 tasks cancelled"
        assert dirt("cancel", "r2").stdout.strip() == "record r2: 1 tasks cancelled"
        status = json.loads(dirt("status", "r2", "--json").stdout)
        assert {t["name"]: t["state"] for t in status["tasks"]} == {
            "sleep": "cancelled", "echo": "cancelled"}
        dirt("serve", "--drain", timeout=60)  # nothing left to run: returns at once
        assert couch.get("task:r2:sleep:linux")["attempts"] == []

        assert dirt("hosts", "disable", "local").stdout.strip() == "host local disabled"
        assert couch.get("host:local")["enabled"] is False
        assert dirt("hosts", "enable", "local").stdout.strip() == "host local enabled"
        assert dirt("hosts", "remove", "local").stdout.strip() == "host local removed"
        assert couch.get_or_none("host:local") is None
    finally:
        couch.drop()


def test_submit_from_json_and_yaml_files(project, dirt, tmp_path):
    dirt("hosts", "add", "local", "--platform=linux", "--local", project=project, check=True)
    as_json = tmp_path / "r1.json"
    as_json.write_text(json.dumps({
        "description": "from JSON", "submitter": "ci", "meta": {"branch": "main"},
        "tasks": ["echo", {"name": "shell", "platform": "linux",
                           "args": {"command": "echo hi"}, "requires": ["python>=3.8"]}],
    }))
    dirt("submit", "r1", f"--file={as_json}", project=project, check=True)
    as_yaml = tmp_path / "r2.yaml"
    as_yaml.write_text("description: from YAML\nmeta:\n  revision: 42\ntasks:\n"
                       "  - name: echo\n    args: {message: hi there}\n")
    dirt("submit", "r2", f"--file={as_yaml}", "--meta=extra=1", project=project, check=True)

    couch = db_of(project)
    r1 = couch.get("record:r1")
    assert (r1["description"], r1["submitter"], r1["meta"]) == ("from JSON", "ci",
                                                                {"branch": "main"})
    shell = couch.get("task:r1:shell:linux")
    assert shell["args"] == {"command": "echo hi"}
    assert shell["requires"] == ["python>=3.8"]
    assert shell["order"] == 1
    r2 = couch.get("record:r2")
    assert r2["meta"] == {"revision": 42, "extra": "1"}
    assert couch.get("task:r2:echo:linux")["args"] == {"message": "hi there"}

    dirt("serve", "--drain", project=project, check=True, timeout=60)
    assert couch.get("task:r1:shell:linux")["state"] == "success"
    assert couch.get("task:r2:echo:linux")["result"]["reason"] == "hi there"


def dirt_environ(extra: dict | None = None) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    environ["DIRT_HOME"] = os.environ.get("DIRT_HOME", str(Path.home() / ".local/share/dirt"))
    return {**environ, **(extra or {})}


def test_submit_wait_against_a_running_master(project, dirt, tmp_path):
    """`dirt serve` runs in the background as a user would leave it; `submit --wait` exits
    0 when every task passed and 1 when one failed; SIGTERM stops the master cleanly."""
    dirt("hosts", "add", "local", "--platform=linux", "--local", project=project, check=True)
    failing = tmp_path / "bad.json"
    failing.write_text(json.dumps({"tasks": ["echo", {"name": "shell",
                                                      "args": {"command": "exit 3"}}]}))
    with open(tmp_path / "serve.log", "wb") as out:
        serve = subprocess.Popen([DIRT, "serve"], cwd=project.project, env=dirt_environ(),
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        ok = dirt("submit", "good", "echo", "--wait", project=project, timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "record good: success" in ok.stdout
        bad = dirt("submit", "bad", f"--file={failing}", "--wait", project=project, timeout=60)
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "record bad: failed" in bad.stdout
        assert "exit code 3" in bad.stdout
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


# -- bad input: one line, non-zero, nothing written -----------------------------------------------


def test_unknown_task(unchanged, dirt):
    done = dirt("submit", "r-new", "echo", "nosuchtask", project=unchanged)
    refused(done, "unknown task 'nosuchtask'", "registered: echo")


def test_unknown_platform(unchanged, dirt):
    done = dirt("submit", "r-new", "echo@windows", project=unchanged)
    refused(done, "unknown platform 'windows'")


def test_record_that_exists(unchanged, dirt):
    done = dirt("submit", "taken", "echo", project=unchanged)
    refused(done, "record 'taken' exists already")


def test_malformed_json_file(unchanged, dirt, tmp_path):
    path = tmp_path / "record.json"
    path.write_text('{"tasks": ["echo",]}')
    done = dirt("submit", "r-new", f"--file={path}", project=unchanged)
    refused(done, str(path), "malformed JSON", "line 1")


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_malformed_yaml_file(unchanged, dirt, tmp_path, suffix):
    path = tmp_path / f"record{suffix}"
    path.write_text("tasks:\n  - echo\n  - [unclosed\nmeta: {a: 1\n")
    done = dirt("submit", "r-new", f"--file={path}", project=unchanged)
    refused(done, str(path), "malformed YAML", "line ")


def test_record_file_with_unknown_key(unchanged, dirt, tmp_path):
    path = tmp_path / "record.yaml"
    path.write_text("taks: [echo]\n")
    refused(dirt("submit", "r-new", f"--file={path}", project=unchanged), "unknown key 'taks'")


def test_missing_record_file(unchanged, dirt, tmp_path):
    done = dirt("submit", "r-new", f"--file={tmp_path / 'nope.json'}", project=unchanged)
    refused(done, "nope.json", "No such file")


@pytest.mark.parametrize("name", ["bad name", "a/b", "a:b"])
def test_invalid_record_name(unchanged, dirt, name):
    refused(dirt("submit", name, "echo", project=unchanged), "invalid record name")


def test_bad_meta(unchanged, dirt):
    refused(dirt("submit", "r-new", "echo", "--meta=novalue", project=unchanged),
            "--meta takes key=value")


def test_host_without_platform(unchanged, dirt):
    refused(dirt("hosts", "add", "box", "--local", project=unchanged),
            "host box: a platform is required")


def test_host_both_local_and_ssh(unchanged, dirt):
    done = dirt("hosts", "add", "box", "--platform=linux", "--local", "--ssh=root@127.0.0.2",
                project=unchanged)
    refused(done, "host box", "exactly one of --local and --ssh")


def test_host_neither_local_nor_ssh(unchanged, dirt):
    refused(dirt("hosts", "add", "box", "--platform=linux", project=unchanged),
            "exactly one of --local and --ssh")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--ssh=root@127.0.0.2", "--port=ssh"], ["whole numbers"]),
        (["--local", "--slots=0"], ["--slots must be at least 1"]),
        (["--ssh=root@127.0.0.2", "--key=/nonexistent/id_ed25519"], ["key file", "does not"]),
        (["--local", "--label=no good"], ["invalid label"]),
    ],
)
def test_other_bad_host_specs(unchanged, dirt, args, words):
    refused(dirt("hosts", "add", "box", "--platform=linux", *args, project=unchanged), *words)


def test_host_that_exists(unchanged, dirt):
    refused(dirt("hosts", "add", "local", "--platform=linux", "--local", project=unchanged),
            "host 'local' exists already")


def test_unknown_host_and_record(unchanged, dirt):
    refused(dirt("hosts", "disable", "ghost", project=unchanged), "no host 'ghost'")
    refused(dirt("cancel", "ghost", project=unchanged), "no record 'ghost'")
    refused(dirt("rerun", "taken", "sleep", project=unchanged), "has no task 'sleep'")


@pytest.mark.parametrize(
    "command",
    [["submit", "r-new", "echo"], ["hosts", "add", "b", "--platform=linux", "--local"],
     ["status"], ["cancel", "taken"]],
)
def test_database_that_does_not_answer(unchanged, dirt, command):
    port = free_port()
    url = f"http://admin:s3cret@127.0.0.1:{port}"
    done = dirt(*command, project=unchanged, env={"DIRT_COUCHDB_URL": url})
    line = refused(done, f"http://127.0.0.1:{port}", "does not answer")
    assert "s3cret" not in done.stderr and "admin" not in line


@pytest.mark.parametrize("command", [["submit", "r-new", "echo"], ["tasks"], ["serve"]])
def test_project_folder_that_is_not_a_project(unchanged, dirt, tmp_path, command):
    plain = tmp_path / "plain"
    plain.mkdir()
    done = dirt(*command, f"--project={plain}", project=unchanged)
    refused(done, f"{plain} is not a dirt project")


def test_a_broken_dirt_toml(couch_server, dirt, tmp_path):
    folder = tmp_path / "broken"
    scaffold.write_files(folder, "dirt", couch_server.url)
    (folder / "dirt.toml").write_text("[couchdb\nurl = 'x'\n")
    done = dirt("status", f"--project={folder}")
    refused(done, f"{folder / 'dirt.toml'}: ")


def test_outside_any_project(dirt, tmp_path):
    done = run_dirt("tasks", env={"DIRT_PROJECT": ""}, project=None)
    refused(done, "not in a dirt project")


def test_create_into_a_non_empty_folder(couch_server, dirt, tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    database = f"test-{uuid.uuid4().hex[:12]}"
    done = dirt("create", str(folder), f"--db={database}", f"--couch={couch_server.url}")
    refused(done, f"{folder} exists and is not empty")
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert (folder / "keep.txt").read_text() == "mine"
    assert not Couch(couch_server.url, database).exists()


def test_create_with_a_database_that_does_not_answer(dirt, tmp_path):
    folder = tmp_path / "new"
    port = free_port()
    done = dirt("create", str(folder), f"--couch=http://u:pw@127.0.0.1:{port}")
    line = refused(done, f"http://127.0.0.1:{port}", "does not answer")
    assert "pw" not in line
    assert not folder.exists()


def test_create_with_a_bad_database_name(couch_server, dirt, tmp_path):
    folder = tmp_path / "new"
    done = dirt("create", str(folder), "--db=Has Caps", f"--couch={couch_server.url}")
    refused(done, "invalid database name 'Has Caps'")
    assert not folder.exists()
