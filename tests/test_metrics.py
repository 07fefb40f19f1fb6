"""metrics.py: the master's metrics scraped over HTTP (in-process and from `dirt serve
--metrics-port`), the database's gauges for the web, and database errors counted during a real
outage. Every scrape is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import time
import uuid
from textwrap import dedent

import pytest
import requests
from conftest import CouchServer, free_port
from farm import MasterProcess, wait_for
from httpd import Recorder
from prometheus_client.parser import text_string_to_metric_families

from dirt import client, scaffold
from dirt.couch import Couch
from dirt.documents import FINAL, State
from dirt.errors import DirtError
from dirt.master import Master
from dirt.metrics import MasterMetrics, database_metrics
from dirt.settings import MasterSettings

FAIL_TASK = '''def execute(ctx):
    return {"success": False, "reason": "no"}
'''
FAST = MasterSettings(tick_seconds=0.05, log_flush_seconds=0.2, health_interval=5.0)


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(response.text)


def all_final(couch: Couch) -> bool:
    docs = couch.docs_by_prefix("task:")
    return bool(docs) and all(State(d["state"]) in FINAL for d in docs)


def run_until(master: Master, done, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        try:
            master.loop_once(wait=0.05)
        except DirtError:
            time.sleep(0.05)


def test_master_metrics_over_http(project):
    settings = project.with_(master=FAST)
    couch = client.connect(settings=settings)
    (settings.tasks_dir / "fail.py").write_text(FAIL_TASK)
    registry = client.Registry(settings.tasks_dir)
    client.add_host(couch, "local", "linux", local=True)
    client.submit(couch, registry, "r1", ["echo@linux", "fail@linux"])
    metrics = MasterMetrics()
    server = metrics.serve(free_port())
    master = Master(couch, settings, registry, listeners=[metrics])
    try:
        master.start()
        run_until(master, master.idle)
        master.loop_once(wait=0)
        got = scrape(server.url)
    finally:
        master.teardown()
        server.close()
    assert got[("dirt_master_dispatch_latency_seconds_count", ())] == 2
    assert got[("dirt_master_dispatch_latency_seconds_sum", ())] > 0
    assert got[("dirt_master_task_duration_seconds_count", (("task", "echo"),))] == 1
    assert got[("dirt_master_task_duration_seconds_count", (("task", "fail"),))] == 1
    assert got[("dirt_master_tasks_ended_total", (("state", "success"), ("task", "echo")))] == 1
    assert got[("dirt_master_tasks_ended_total", (("state", "failed"), ("task", "fail")))] == 1
    assert got[("dirt_master_database_errors_total", ())] == 0
    assert got[("dirt_master_queue_depth", ())] == 0
    assert got[("dirt_master_running_tasks", ())] == 0
    assert got[("dirt_master_hosts_ready", ())] == 1


def test_dirt_serve_metrics_port(project):
    (project.tasks_dir / "fail.py").write_text(FAIL_TASK)
    couch = client.connect(settings=project)
    client.add_host(couch, "local", "linux", local=True)
    client.submit(couch, client.Registry(project.tasks_dir), "r1",
                  ["echo@linux", "fail@linux", {"name": "sleep", "platform": "linux",
                                                "args": {"seconds": 0.5}}])
    port = free_port()
    master = MasterProcess(project.project, project.project / "serve.log",
                           f"--metrics-port={port}")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(lambda: all_final(couch), 60, "the tasks to end")
        wait_for(lambda: scrape(url)[("dirt_master_tasks_ended_total",
                                      (("state", "success"), ("task", "sleep")))] == 1,
                 10, "the metrics to count the last task")
        got = scrape(url)
    finally:
        assert master.terminate(30) == 0, master.log()
    assert got[("dirt_master_dispatch_latency_seconds_count", ())] == 3
    assert got[("dirt_master_task_duration_seconds_count", (("task", "sleep"),))] == 1
    assert got[("dirt_master_task_duration_seconds_sum", (("task", "sleep"),))] >= 0.5
    assert got[("dirt_master_queue_depth", ())] == 0
    assert f"metrics at {url}" in master.log()
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=2)  # stopped with the master


def test_dirt_serve_counts_sent_and_failed_notifications(project):
    """A webhook to a real receiver is sent; one to a closed loopback port fails after its
    attempts: `dirt serve --metrics-port` counts each by kind."""
    receiver = Recorder()
    closed = free_port()
    with open(project.project / "dirt.toml", "a") as toml:
        toml.write(dedent(f"""
            [notify]
            attempts = 2
            backoff_seconds = 0.1
            timeout_seconds = 5

            [[notify.webhook]]
            url = "{receiver.url}/hooks/ok"

            [[notify.webhook]]
            url = "http://127.0.0.1:{closed}/hooks/gone"
            """))
    couch = client.connect(settings=project)
    client.add_host(couch, "local", "linux", local=True)
    client.submit(couch, client.Registry(project.tasks_dir), "r1", ["echo@linux"])
    port = free_port()
    master = MasterProcess(project.project, project.project / "serve.log",
                           f"--metrics-port={port}")
    url = f"http://127.0.0.1:{port}/metrics"
    failed = ("dirt_notifications_failed_total", (("kind", "webhook"),))
    sent = ("dirt_notifications_sent_total", (("kind", "webhook"),))

    def both_counted() -> dict | None:
        got = scrape(url)
        return got if got[failed] and got[sent] else None

    try:
        got = wait_for(both_counted, 60, "the sent and the failed notification to be counted")
    finally:
        assert master.terminate(30) == 0, master.log()
        receiver.close()
    assert got[failed] == 1 and got[sent] == 1
    assert got[("dirt_notifications_sent_total", (("kind", "email"),))] == 0
    assert got[("dirt_notifications_failed_total", (("kind", "email"),))] == 0
    assert [r.path for r in receiver.requests] == ["/hooks/ok"]
    outcomes = client.get_record(couch, "r1")["notifications"]
    assert [(n["target"], n["ok"], n["attempts"]) for n in outcomes] == [
        (receiver.url, True, 1), (f"http://127.0.0.1:{closed}", False, 2)]


def test_database_metrics_for_the_web(project):
    couch = client.connect(settings=project)
    registry = client.Registry(project.tasks_dir)
    client.add_host(couch, "a", "linux", local=True)
    client.add_host(couch, "b", "linux", local=True)
    client.enable_host(couch, "b", False)
    client.submit(couch, registry, "r1", ["echo@linux", "sleep@linux"])
    client.submit(couch, registry, "r2", ["echo@linux"])
    client.cancel(couch, "r1", "sleep")
    host = couch.get("host:a")
    couch.put({**host, "alive": True})
    body, content_type = database_metrics(couch)
    assert content_type.startswith("text/plain; version=")
    got = parse(body.decode())
    assert got[("dirt_tasks", (("state", "pending"),))] == 2
    assert got[("dirt_tasks", (("state", "cancelled"),))] == 1
    assert got[("dirt_tasks", (("state", "running"),))] == 0
    assert got[("dirt_hosts", (("state", "alive"),))] == 1
    assert got[("dirt_hosts", (("state", "disabled"),))] == 1
    assert got[("dirt_hosts_alive", ())] == 1
    assert got[("dirt_records", ())] == 2


@pytest.fixture
def own_server(tmp_path):
    server = CouchServer(tmp_path / "couch")
    server.start()
    yield server
    server.stop()


def test_database_errors_are_counted_during_an_outage(own_server, tmp_path):
    database = f"m-{uuid.uuid4().hex[:8]}"
    settings = scaffold.create(tmp_path / "proj", database, own_server.url, environ={})
    settings = settings.with_(master=FAST)
    couch = client.connect(settings=settings)
    registry = client.Registry(settings.tasks_dir)
    client.add_host(couch, "local", "linux", local=True)
    client.submit(couch, registry, "r1",
                  [{"name": "sleep", "platform": "linux", "args": {"seconds": 1.5}}])
    metrics = MasterMetrics()
    master = Master(couch, settings, registry, listeners=[metrics])
    errors = ("dirt_master_database_errors_total", ())
    try:
        master.start()
        run_until(master, lambda: master.runs)
        own_server.stop()
        run_until(master, lambda: parse(generate(metrics))[errors] > 0)
        own_server.start()
        run_until(master, master.idle)
    finally:
        master.teardown()
    assert couch.get("task:r1:sleep:linux")["state"] == "success"
    assert parse(generate(metrics))[errors] >= 1


def generate(metrics: MasterMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()
