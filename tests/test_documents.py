"""documents.py: the shapes of records, tasks and hosts, the task state machine, summaries."""

from __future__ import annotations

import datetime
import functools
import re

import pytest

from dirt import documents
from dirt.documents import State
from dirt.errors import InvalidHost, InvalidRecord


def test_ids_are_readable():
    assert documents.record_id("r1") == "record:r1"
    assert documents.task_id("r1", "build", "linux") == "task:r1:build:linux"
    assert documents.host_id("box") == "host:box"


def test_iso_times_round_trip():
    text = documents.now_iso(1_700_000_000.25)
    assert text == "2023-11-14T22:13:20.250Z"
    assert documents.parse_iso(text) == pytest.approx(1_700_000_000.25)


@pytest.mark.parametrize("name", ["r1", "rev-1234", "a.b_c-d", "X" * 128])
def test_valid_names(name):
    assert documents.check_name("record", name) == name


@pytest.mark.parametrize("name", ["", "-lead", "has space", "a/b", "a:b", "x" * 129, None, 3,
                                  "r1\n"])
def test_invalid_names_say_which_kind(name):
    with pytest.raises(InvalidRecord, match="invalid record name"):
        documents.check_name("record", name)


@pytest.mark.parametrize(("value", "words"), [
    ({"d": datetime.date(2024, 1, 1)}, "args.d: 2024-01-01 is a date, not a JSON value"),
    ({"t": datetime.datetime(2024, 1, 1, 12)}, "args.t: 2024-01-01T12:00:00 is a datetime"),
    ({"x": [1, float("nan")]}, "args.x[1]: nan is not a number"),
    ({"x": float("-inf")}, "args.x: -inf is not a number"),
    ({1: "one"}, "args: the key 1 is not a string"),
    ({"n": 2**60}, "args.n: 1152921504606846976 has more digits"),
    ({"s": {1, 2}}, "args.s: a set is not a JSON value"),
    ({"b": b"raw"}, "args.b: a bytes is not a JSON value"),
    ({"u": "\udcff"}, "args.u: not valid UTF-8 text"),
    ({"deep": functools.reduce(lambda inner, _: [inner], range(40), [])},
     "nested more than 32 levels deep"),
])
def test_values_json_cannot_hold_exactly_are_refused(value, words):
    with pytest.raises(InvalidRecord, match=re.escape(words)):
        documents.check_json("args", value)
    with pytest.raises(InvalidRecord, match=re.escape(words.replace("args", "task t: args"))):
        documents.new_task(documents.new_record("r1"), "t", "linux", 0, args=value)


def test_json_values_pass_as_they_are():
    value = {"s": "text", "n": 2**53, "f": 1.5, "b": True, "none": None, "l": [{"a": []}]}
    assert documents.check_json("meta", value) is value
    assert documents.new_record("r1", meta=value)["meta"] == value


@pytest.mark.parametrize("destination", ["-Jevil", "-oProxyCommand", "root@-Jevil", "-u@box",
                                         "box\n"])
def test_an_ssh_destination_is_never_an_option(destination):
    with pytest.raises(InvalidHost, match="invalid --ssh destination"):
        documents.new_host("box", "linux", ssh=destination)
    assert documents.new_host("box", "linux", ssh="ci_1@box-1.example.org")["ssh"]


def test_task_spec_with_and_without_platform_and_key():
    TaskSpec = documents.TaskSpec
    assert documents.parse_task_spec("build") == TaskSpec("build", None, None)
    assert documents.parse_task_spec("build@linux") == TaskSpec("build", "linux", None)
    assert documents.parse_task_spec("build:a") == TaskSpec("build", None, "a")
    assert documents.parse_task_spec("build@linux:a") == TaskSpec("build", "linux", "a")
    assert documents.parse_task_spec("build:*") == TaskSpec("build", None, "*")
    assert str(documents.parse_task_spec("build@linux:a")) == "build@linux:a"
    with pytest.raises(InvalidRecord, match="invalid platform name"):
        documents.parse_task_spec("build@lin ux")
    with pytest.raises(InvalidRecord, match="invalid task name"):
        documents.parse_task_spec("@linux")
    with pytest.raises(InvalidRecord, match="invalid task key name"):
        documents.parse_task_spec("build:a/b")


def test_a_spec_without_key_names_the_task_without_one():
    plain = {"name": "build", "platform": "linux", "key": None}
    keyed = {"name": "build", "platform": "linux", "key": "a"}
    assert documents.parse_task_spec("build").matches(plain)
    assert not documents.parse_task_spec("build").matches(keyed)
    assert documents.parse_task_spec("build:a").matches(keyed)
    assert documents.parse_task_spec("build@linux:*").matches(keyed)
    assert documents.parse_task_spec("build:*").matches(plain)
    assert not documents.parse_task_spec("build@mac:*").matches(keyed)
    assert documents.task_spec(keyed) == "build@linux:a"


def test_a_rerun_keeps_the_earlier_run():
    record = documents.new_record("r1")
    task = documents.new_task(record, "build", "linux", 0)
    task.update(host="h1", started="s", ended="e", duration=1.5, result={"ok": False})
    documents.set_state(task, documents.State.FAILED, "exit 1")
    documents.reset_task(task)
    assert task["state"] == "pending" and task["result"] is None
    (earlier,) = task["earlier"]
    assert earlier["state"] == "failed" and earlier["reason"] == "exit 1"
    assert earlier["host"] == "h1" and earlier["result"] == {"ok": False}


def test_new_record_shape():
    record = documents.new_record("r1", description="d", submitter="me", meta={"rev": "abc"})
    assert record["_id"] == "record:r1"
    assert record["type"] == "record"
    assert record["meta"] == {"rev": "abc"}
    assert record["created"].endswith("Z")
    with pytest.raises(InvalidRecord, match="meta must be a mapping"):
        documents.new_record("r1", meta=["not", "a", "dict"])  # type: ignore[arg-type]


def test_new_task_starts_pending_with_a_history():
    record = documents.new_record("r1", created="2026-01-01T00:00:00.000Z")
    task = documents.new_task(record, "build", "linux", 2, args={"x": 1}, requires=["gpu"])
    assert task["_id"] == "task:r1:build:linux"
    assert task["state"] == "pending"
    assert task["record_created"] == "2026-01-01T00:00:00.000Z"
    assert task["order"] == 2
    assert task["args"] == {"x": 1} and task["requires"] == ["gpu"]
    assert task["attempts"] == []
    assert task["history"] == [{"state": "pending", "at": "2026-01-01T00:00:00.000Z"}]
    with pytest.raises(InvalidRecord, match="args must be a mapping"):
        documents.new_task(record, "build", "linux", 0, args=[1])  # type: ignore[arg-type]


def test_set_state_and_reset_keep_the_trail():
    record = documents.new_record("r1")
    task = documents.new_task(record, "build", "linux", 0)
    documents.set_state(task, State.RUNNING, at="t1")
    task.update(host="box", started="t1", result={"success": True})
    documents.set_state(task, State.SUCCESS, "fine", at="t2")
    assert task["state"] == "success" and task["reason"] == "fine"
    documents.reset_task(task)
    assert task["state"] == "pending"
    assert task["host"] is None and task["result"] is None and task["started"] is None
    assert [h["state"] for h in task["history"]] == ["pending", "running", "success", "pending"]
    assert task["history"][-1]["reason"] == "re-run requested"


def test_state_enum_is_a_string():
    assert State.SUCCESS == "success"
    assert str(State.CANCELLED) == "cancelled"
    assert documents.FINAL.isdisjoint(documents.ACTIVE)
    assert documents.FINAL | documents.ACTIVE == set(State)


def test_new_host_local_and_ssh():
    local = documents.new_host("box", "linux", local=True, slots=2, labels=["gpu", "gpu", "big"])
    assert local["_id"] == "host:box"
    assert local["ssh"] is None and local["local"] == {"python": None}
    assert local["labels"] == ["big", "gpu"]
    assert local["enabled"] is True and local["alive"] is None
    ssh = documents.new_host("far", "linux", ssh="root@127.0.0.2", port=2222, key="/k")
    assert ssh["local"] is None
    assert ssh["ssh"] == {"destination": "root@127.0.0.2", "port": 2222, "key": "/k",
                          "python": "python3"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"platform": ""}, "a platform is required"),
        ({"platform": "lin ux", "local": True}, "invalid platform"),
        ({"local": True, "ssh": "root@h"}, "exactly one of --local and --ssh"),
        ({}, "exactly one of --local and --ssh"),
        ({"ssh": "root@h; rm -rf /"}, "invalid --ssh destination"),
        ({"local": True, "slots": 0}, "--slots must be at least 1"),
        ({"ssh": "h", "port": 70000}, "--port must be between"),
        ({"local": True, "labels": ["bad label"]}, "invalid label"),
        ({"name": "bad name", "local": True}, "invalid host name"),
    ],
)
def test_new_host_refuses_bad_specs(kwargs, message):
    kwargs = {"name": "box", "platform": "linux", **kwargs}
    with pytest.raises(InvalidHost, match=message):
        documents.new_host(kwargs.pop("name"), kwargs.pop("platform"), **kwargs)


def test_host_slots_default_to_cpus_then_one():
    host = documents.new_host("box", "linux", local=True)
    assert documents.host_slots(host) == 1
    host["facts"] = {"cpus": 8}
    assert documents.host_slots(host) == 8
    host["slots"] = 3
    assert documents.host_slots(host) == 3


@pytest.mark.parametrize(
    ("states", "overall"),
    [
        ([], "empty"),
        (["success", "success"], "success"),
        (["success", "failed"], "failed"),
        (["failed", "error"], "error"),
        (["error", "pending"], "pending"),
        (["pending", "running", "success"], "running"),
        (["cancelled", "success"], "cancelled"),
        (["unschedulable", "cancelled"], "unschedulable"),
    ],
)
def test_summarize_counts_and_overall_state(states, overall):
    summary = documents.summarize(states)
    assert summary["state"] == overall
    assert summary["total"] == len(states)
    assert sum(summary["counts"].values()) == len(states)


# -- how an attempt ended ------------------------------------------------------------------------


def test_outcome_of_each_way_an_attempt_ends():
    from dirt.documents import outcome_of

    assert outcome_of("result", {"success": True, "reason": "ok"})[:2] == (State.SUCCESS, "ok")
    assert outcome_of("result", {"success": False, "reason": "2 failed"})[:2] == (
        State.FAILED, "2 failed")
    state, reason, result = outcome_of("result", ["not", "a", "dict"])
    assert state == State.ERROR and "not a dict with a boolean 'success'" in reason
    state, reason, result = outcome_of("error", "Traceback (most recent call last):\n"
                                                "  File ...\nKeyError: 'x'\n")
    assert (state, reason) == (State.ERROR, "KeyError: 'x'")
    assert result["traceback"].startswith("Traceback")
    assert outcome_of("timeout", 5)[:2] == (State.ERROR, "timeout after 5 s")


def test_attempt_id_names_the_claim_not_only_the_number():
    record = documents.new_record("r1")
    task = documents.new_task(record, "build", "linux", 0)
    task["attempts"] = [{"host": "h", "master": "m1", "started": "2026-01-01T00:00:00.000Z"}]
    first = documents.attempt_id(task)
    assert first.startswith("task:r1:build:linux:1:")
    again = dict(task, attempts=[dict(task["attempts"][0], master="m2")])
    assert documents.attempt_id(again) != first


def test_start_attempt_claims_a_copy_without_touching_the_original():
    task = documents.new_task(documents.new_record("r1"), "build", "linux", 0)
    claim = dict(task)
    documents.start_attempt(claim, "h1", "m1", "2026-11-23T08:00:00.000000Z", 1000.0)
    assert claim["state"] == "running" and claim["host"] == "h1"
    assert claim["lease_until"] == 1000.0 and claim["started"] == claim["attempts"][0]["started"]
    assert claim["attempts"] == [{"host": "h1", "master": "m1", "ended": None, "outcome": None,
                                  "reason": "", "started": "2026-11-23T08:00:00.000000Z"}]
    assert [h["state"] for h in claim["history"]] == ["pending", "running"]
    assert task["state"] == "pending" and task["attempts"] == []
    assert [h["state"] for h in task["history"]] == ["pending"]


def test_end_task_closes_the_last_attempt_with_its_duration():
    task = documents.new_task(documents.new_record("r1"), "build", "linux", 0)
    documents.start_attempt(task, "h1", "m1", "2026-11-23T08:00:00.000000Z", 1000.0)
    documents.end_task(task, State.FAILED, "2 tests failed", {"success": False},
                       "2026-11-23T08:00:02.500000Z", note="read back")
    assert task["state"] == "failed" and task["reason"] == "2 tests failed"
    assert task["duration"] == 2.5 and task["lease_until"] is None
    attempt = task["attempts"][-1]
    assert attempt["outcome"] == "failed" and attempt["note"] == "read back"
    assert task["result"] == {"success": False}


@pytest.mark.parametrize(
    ("declared", "stored"),
    [
        ("text/plain", "text/plain"),
        ("text/plain; charset=utf-8", "text/plain; charset=utf-8"),
        ("application/json", "application/json"),
        ("image/png", "image/png"),
        ("application/octet-stream", "application/octet-stream"),
        ("text/html", "text/plain"),
        ("TEXT/HTML; charset=ISO-8859-1", "text/plain; charset=ISO-8859-1"),
        ("text/html; charset=\"utf-8\"\r\nX-Evil: 1", "text/plain; charset=utf-8"),
        ("image/svg+xml", "text/plain"),
        ("application/xhtml+xml", "text/plain"),
        ("application/xml", "text/plain"),
        ("text/javascript", "text/plain"),
        ("application/pdf", "application/octet-stream"),
        ("unknown/unknown", "application/octet-stream"),
        ("", "application/octet-stream"),
        ("image/png; charset=utf-8", "image/png"),
    ],
)
def test_artifacts_are_stored_with_a_type_no_browser_runs(declared, stored):
    assert documents.stored_type(declared) == stored
    assert documents.essence(stored) in documents.SAFE_TYPES


def test_the_declared_type_is_kept_in_the_task_when_the_stored_one_differs():
    task = {"_attachments": {"log.txt": {"content_type": "text/plain", "stub": True}}}
    assert documents.store_artifact_type(task, "report.html", "text/html") == "text/plain"
    assert documents.store_artifact_type(task, "data.json", "application/json") == (
        "application/json")
    assert task["artifact_types"] == {"report.html": "text/html"}
    task["_attachments"].update({"report.html": {"content_type": "text/plain"},
                                 "data.json": {"content_type": "application/json"}})
    assert documents.declared_type(task, "report.html") == "text/html"
    assert documents.declared_type(task, "data.json") == "application/json"
    assert documents.declared_type(task, "log.txt") == "text/plain"
    documents.store_artifact_type(task, "report.html", "text/plain")  # a re-run's new one
    assert task["artifact_types"] == {}


def test_validate_doc_update_knows_the_same_safe_types():
    from dirt import couchapp

    source = (couchapp.FOLDER / "validate_doc_update.js").read_text()
    listed = source.split("var safeTypes = [", 1)[1].split("]", 1)[0]
    assert [t.strip().strip("'") for t in listed.split(",")] == list(documents.SAFE_TYPES)
