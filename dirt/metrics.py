"""Prometheus metrics: what one master does, and what the database holds.

    metrics = MasterMetrics()                   # a master Listener
    Master(couch, settings, listeners=[metrics])
    server = metrics.serve(9300)                # `dirt serve --metrics-port=9300`

    body, content_type = database_metrics(couch)   # for the web app's GET /metrics

The master's metrics live in its own registry (several masters are scraped as several
instances); the database's are computed from views on each scrape, and raise
DatabaseUnavailable when the database does not answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dirt.couch import Couch
from dirt.documents import State
from dirt.errors import DirtError
from dirt.master import Listener, Master

NOTIFICATION_KINDS = ("email", "webhook", "github")  # notify.Target.kind: counted from 0
# Seconds: from a pending task's start on a host (dispatch), and for a task's run.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)


class MasterMetrics(Listener):
    """A master Listener that counts and times what the master does."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.next_depth = 0.0
        r = self.registry
        self.dispatch_latency = Histogram(
            "dirt_master_dispatch_latency_seconds",
            "Seconds from a task becoming pending to its start on a host.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.task_duration = Histogram(
            "dirt_master_task_duration_seconds", "Seconds a task ran on its host, by task.",
            ["task"], buckets=DURATION_BUCKETS, registry=r)
        self.tasks_ended = Counter(
            "dirt_master_tasks_ended", "Tasks this master ended, by task and final state.",
            ["task", "state"], registry=r)
        self.database_errors = Counter(
            "dirt_master_database_errors", "Reads and writes that failed: database down.",
            registry=r)
        self.queue_depth = Gauge(
            "dirt_master_queue_depth", "Pending tasks in this master's scope.", registry=r)
        self.running = Gauge(
            "dirt_master_running_tasks", "Tasks this master runs now.", registry=r)
        self.hosts_ready = Gauge(
            "dirt_master_hosts_ready", "Hosts this master has checked and can use.", registry=r)
        self.notifications_sent = Counter(
            "dirt_notifications_sent", "Notifications this master's notifier sent, by kind.",
            ["kind"], registry=r)
        self.notifications_failed = Counter(
            "dirt_notifications_failed",
            "Notifications that failed after their last attempt, by kind.", ["kind"], registry=r)
        for kind in NOTIFICATION_KINDS:
            self.notifications_sent.labels(kind)
            self.notifications_failed.labels(kind)

    def task_started(self, doc: dict[str, Any], waited: float) -> None:
        self.dispatch_latency.observe(waited)

    def task_ended(self, doc: dict[str, Any]) -> None:
        self.tasks_ended.labels(doc["name"], doc["state"]).inc()
        if isinstance(doc.get("duration"), int | float):
            self.task_duration.labels(doc["name"]).observe(doc["duration"])

    def database_error(self, error: Exception) -> None:
        self.database_errors.inc()

    def loop_done(self, master: Master) -> None:
        now = time.monotonic()
        if not master.runs or now >= self.next_depth:  # counting walks the queue: 1/s at most
            self.queue_depth.set(master.queue_depth())
            self.next_depth = now + 1.0
        self.running.set(len(master.runs))
        self.hosts_ready.set(sum(1 for state in master.hosts.values() if state.ready))

    def notified(self, outcome: dict[str, Any]) -> None:
        """A notification's outcome (documents.notification_entry), from the notifier's
        threads."""
        counter = self.notifications_sent if outcome["ok"] else self.notifications_failed
        counter.labels(outcome["kind"]).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve these metrics over HTTP (any path; Prometheus asks for /metrics)."""
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise DirtError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        return MetricsServer(server, thread, f"http://{host}:{port}/metrics")


@dataclass
class MetricsServer:
    server: Any
    thread: threading.Thread
    url: str

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class DatabaseCollector(Collector):
    """Gauges read from the database's views on each scrape: tasks by state, hosts by health,
    records."""

    def __init__(self, couch: Couch) -> None:
        self.couch = couch

    def collect(self) -> Iterator[Metric]:
        rows = self.couch.view("dirt", "state_counts", group=True)["rows"]
        counts = {row["key"]: row["value"] for row in rows}
        tasks = GaugeMetricFamily("dirt_tasks", "Tasks in the database, by state.",
                                  labels=["state"])
        for state in State:
            tasks.add_metric([state.value], counts.get(state.value, 0))
        yield tasks
        health = {"alive": 0, "down": 0, "unchecked": 0, "disabled": 0}
        for row in self.couch.view("dirt", "hosts")["rows"]:
            health[host_health(row["value"])] += 1
        hosts = GaugeMetricFamily("dirt_hosts", "Registered hosts, by health.", labels=["state"])
        for health_state, count in health.items():
            hosts.add_metric([health_state], count)
        yield hosts
        yield GaugeMetricFamily("dirt_hosts_alive", "Enabled hosts that answer.",
                                value=health["alive"])
        total = self.couch.view("dirt", "records_by_time", limit=0)["total_rows"]
        yield GaugeMetricFamily("dirt_records", "Records in the database.", value=total)


def host_health(host: dict[str, Any]) -> str:
    """alive, down, unchecked (neither a master nor `dirt hosts check` has checked it yet) or
    disabled."""
    if not host.get("enabled"):
        return "disabled"
    alive = host.get("alive")
    return "alive" if alive is True else "down" if alive is False else "unchecked"


def database_metrics(couch: Couch) -> tuple[bytes, str]:
    """The database's gauges in Prometheus' text format, and its content type."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(couch))
    return generate_latest(registry), CONTENT_TYPE_LATEST
