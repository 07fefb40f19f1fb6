"""--log-format=json|text: JSON lines with time, level, logger, message, and the record, task
and host a message is about; checked on a real `dirt serve --drain`."""

from __future__ import annotations

import io
import json
import logging

from conftest import run_dirt

from dirt import client
from dirt.logs import JsonFormatter, setup


def test_json_lines_carry_the_task_record_and_host():
    formatter = JsonFormatter()
    record = logging.LogRecord("dirt.master", logging.INFO, __file__, 1,
                               "task %s: started on %s", ("task:rev-1:echo:linux", "h1"), None)
    record.task, record.host = "task:rev-1:echo:linux", "h1"
    line = json.loads(formatter.format(record))
    assert set(line) == {"time", "level", "logger", "message", "record", "task", "host"}
    assert line["message"] == "task task:rev-1:echo:linux: started on h1"
    assert (line["level"], line["logger"], line["record"]) == ("info", "dirt.master", "rev-1")
    assert line["time"].endswith("Z") and line["time"][10] == "T"
    plain = logging.LogRecord("dirt.couch", logging.WARNING, __file__, 1, "down", (), None)
    assert set(json.loads(formatter.format(plain))) == {"time", "level", "logger", "message"}
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        failed = logging.LogRecord("dirt.x", logging.ERROR, __file__, 1, "oops", (),
                                   sys.exc_info())
    assert "RuntimeError: boom" in json.loads(formatter.format(failed))["exception"]


def test_setup_refuses_an_unknown_format():
    stream = io.StringIO()
    try:
        setup(logging.INFO, "xml", stream)
    except ValueError as exc:
        assert str(exc) == "--log-format is text or json, not 'xml'"
    else:
        raise AssertionError("xml was accepted")


def test_dirt_serve_logs_json_lines(project):
    couch = client.connect(settings=project)
    client.add_host(couch, "local", "linux", local=True)
    client.submit(couch, client.Registry(project.tasks_dir), "rev-1", ["echo@linux"])
    done = run_dirt("--log-format=json", "serve", "--drain", project=project, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(li) for li in lines)
    started = [li for li in lines if "started on" in li["message"]]
    assert started == [{**started[0], "record": "rev-1", "task": "task:rev-1:echo:linux",
                        "host": "local", "logger": "dirt.master", "level": "info"}]
    ended = [li for li in lines if li["message"].startswith("task task:rev-1:echo:linux: success")]
    assert ended[0]["host"] == "local" and ended[0]["record"] == "rev-1"
    alive = [li for li in lines if li.get("host") == "local" and "alive" in li["message"]]
    assert alive and "task" not in alive[0]


def test_text_is_the_default_and_bad_formats_are_refused(project):
    couch = client.connect(settings=project)
    client.add_host(couch, "local", "linux", local=True)
    done = run_dirt("serve", "--drain", project=project, check=True)
    assert " dirt.master INFO master " in done.stderr
    bad = run_dirt("--log-format=xml", "status", project=project)
    assert bad.returncode == 4
    assert bad.stderr.strip() == "dirt: error: --log-format is text or json, not 'xml'"
