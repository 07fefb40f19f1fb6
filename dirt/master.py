"""The master: follows the database, claims pending tasks by `_rev`, runs them on hosts.

    start: push design doc; load hosts; load pending/running tasks (views); open gateways
    loop:  read changes -> update queue and hosts
           expire leases (host lost, timeout) -> requeue or error
           for each free slot on a live host: claim the oldest pending task that fits
           dispatch claimed tasks on their host's gateway
           as results come back: write result, log, attachments (retrying on a DB outage)

CouchDB is the only state: everything the master holds in memory can be rebuilt from the
database, so it may be killed at any moment. Only the loop thread writes documents; gateway,
changes and health threads talk to it through one event queue.

The loop, the changes, claiming, dispatching and writing are here; the master's other parts
are mixed in from their own modules: health.py (its hosts), leases.py (renewing, expiring and
taking over leases) and results.py (what a task's host says, turned into its outcome).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from typing import Any

import execnet

from dirt import couchapp
from dirt.couch import INDEX_TIMEOUT, Couch
from dirt.documents import (
    ACTIVE,
    State,
    attempt_id,
    end_error,
    now_iso,
    rev_gen,
    set_state,
    start_attempt,
)
from dirt.errors import DatabaseError, DatabaseUnavailable, DirtError, HostUnreachable, Malformed
from dirt.health import HostHealth, HostState
from dirt.leases import Leases
from dirt.logbuffer import LogBuffer
from dirt.pending import SKIP, PendingQueue
from dirt.remote import Job
from dirt.results import Results, Run
from dirt.scheduler import PendingTask, assign, unschedulable_reason
from dirt.settings import Settings
from dirt.shapes import parse_task, plain, repaired, task_state
from dirt.tasks import Registry

log = logging.getLogger("dirt.master")
PENDING, RUNNING = State.PENDING.value, State.RUNNING.value  # compared on every pass
MAX_PAUSE = 5.0  # seconds between passes while passes keep failing
REFUSED = "the database refused the task's document"


class Listener:
    """Hooks on what the master does (metrics, notifications). Called from the loop thread:
    a listener must return at once and hand slow work (sending mail) to a thread of its own."""

    def task_started(self, doc: dict[str, Any], waited: float) -> None:
        """A task started on its host, `waited` seconds after it became pending."""

    def task_ended(self, doc: dict[str, Any]) -> None:
        """A task's final state was written (success, failed, error, unschedulable)."""

    def database_error(self, error: Exception) -> None:
        """A read or write failed because the database did not answer."""

    def loop_done(self, master: Master) -> None:
        """One pass of the loop ended (for gauges: master.queue_depth(), master.runs)."""


class Master(HostHealth, Leases, Results):
    """One master process over one database."""

    def __init__(
        self,
        couch: Couch,
        settings: Settings,
        registry: Registry | None = None,
        *,
        platforms: list[str] | None = None,
        host_names: list[str] | None = None,
        listeners: list[Listener] | None = None,
    ) -> None:
        self.couch = couch
        self.listeners = list(listeners or [])
        self.settings = settings
        self.config = settings.master
        self.registry = registry or Registry(settings.tasks_dir)
        self.platforms = set(platforms) if platforms else None
        self.host_names = set(host_names) if host_names else None
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.events: queue.Queue = queue.Queue()
        self.group = execnet.Group()
        self.tasks: dict[str, dict[str, Any]] = {}  # active task documents, latest known rev
        self.hosts: dict[str, HostState] = {}
        self.runs: dict[str, Run] = {}
        self.dirty: set[str] = set()  # task ids whose document must be written
        self.stale: set[str] = set()  # lost a claim: wait for the newer rev from the feed
        self.dirty_hosts: set[str] = set()
        self.write_backoff = 0.0
        self.next_write = 0.0
        self.last_write = 0.0
        self.deferred = False  # a write waits for batch_seconds to pass
        self.last_lease_check = float("-inf")
        self.seq: str | int = 0
        self.checkpointed: str | int | None = None
        self.next_checkpoint = 0.0
        self.stop_requested = threading.Event()
        self.force_stop = threading.Event()
        self.stop_deadline: float | None = None
        self.signals: list[int] = []  # received; the loop logs them (see request_stop)
        self.signals_told = 0
        self.feed_stop = threading.Event()
        self.feed_thread: threading.Thread | None = None
        self.records: dict[str, dict[str, Any]] = {}  # record documents, as tasks see them
        self.schedulable: set[str] = set()  # pending tasks some host can run (see below)
        self.unchecked: set[str] = set()  # pending tasks not yet checked for being schedulable
        self.queue = PendingQueue()  # pending tasks in fair order
        self.pending_views: dict[str, tuple[str | None, PendingTask]] = {}  # by rev
        self.recovering: set[str] = set()  # lease ran out: asking the host for a kept result
        self.host_waits: dict[str, float] = {}  # lease ran out, host not answering: since
        self.farm_seen: Any = None
        self.failures = 0  # passes in a row that raised
        self.refusing: set[str] = set()  # refused once: being written ended error

    # -- start ----------------------------------------------------------------------------

    @property
    def checkpoint_name(self) -> str:
        scope = ",".join(sorted(self.platforms or [])) + "/" + ",".join(
            sorted(self.host_names or [])
        )
        return "dirt-master-" + (scope.strip("/,") or "all").replace("/", "-")

    def start(self) -> None:
        """Push the design document, load hosts and active tasks, follow the changes feed."""
        couchapp.push(self.couch)
        couchapp.warm(self.couch)
        checkpoint = self.couch.get_local(self.checkpoint_name) or {}
        self.seq = checkpoint.get("seq") or self.couch.info()["update_seq"]
        for doc in self.couch.docs_by_prefix("host:"):
            self.update_host(doc)
        for state in (State.PENDING, State.RUNNING):
            rows = self.couch.view(
                "dirt",
                "tasks_by_state",
                startkey=[state.value],
                endkey=[state.value, {}],
                include_docs=True,
                reduce=False,
                read_timeout=INDEX_TIMEOUT,
            )["rows"]
            for row in rows:
                self.update_task(row["doc"])
        log.info(
            "master %s: %d hosts, %d active tasks, following changes since %s",
            self.id, len(self.hosts), len(self.tasks), str(self.seq)[:20],
        )
        self.feed_thread = threading.Thread(target=self.follow_changes, daemon=True)
        self.feed_thread.start()

    def in_scope(self, task: dict[str, Any]) -> bool:
        return self.platforms is None or _platform_in(task.get("platform"), self.platforms)

    def manages(self, host: HostState) -> bool:
        if self.host_names is not None and host.name not in self.host_names:
            return False
        platform = host.host.platform if host.host else host.doc.get("platform")
        return self.platforms is None or _platform_in(platform, self.platforms)

    # -- the loop -------------------------------------------------------------------------

    def loop_once(self, now: float | None = None, wait: float | None = None) -> None:
        """One pass of the loop; `now` (time.time()) lets tests move the clock."""
        self.read_events(self.next_wait() if wait is None else wait)
        now = time.time() if now is None else now
        self.check_hosts(now)
        self.expire_leases(now)
        self.mark_unschedulable()
        self.renew_runs(now)
        self.dispatch(self.write(now), now)
        self.save_checkpoint(now)
        self.tell("loop_done", self)

    def next_wait(self) -> float:
        """How long the next pass may wait for events: a tick, or less when a write is due."""
        if not (self.deferred or self.dirty or self.dirty_hosts):
            return self.config.tick_seconds
        due = max(self.last_write + self.config.batch_seconds, self.next_write)
        return max(0.0, min(self.config.tick_seconds, due - time.monotonic()))

    def tell(self, hook: str, *args: Any) -> None:
        """Call a hook on every listener; a failing listener is logged, never fatal."""
        for listener in self.listeners:
            try:
                getattr(listener, hook)(*args)
            except Exception:
                log.exception("master: listener %r failed in %s", listener, hook)

    def queue_depth(self) -> int:
        """Pending tasks in this master's scope."""
        return sum(1 for doc in self.tasks.values()
                   if doc["state"] == PENDING and self.in_scope(doc))

    def run(self, drain: bool = False) -> int:
        """Drive loop_once until stopped (or, with drain, until nothing is left to do)."""
        self.install_signal_handlers()
        try:
            self.start_with_retry()
            while True:
                self.loop_once_safely()
                self.tell_signals()
                released = self.stop_if_asked()
                if released is not None or (drain and self.idle()):
                    break
            self.flush_writes()
            if released is not None:
                self.tell_stopped(released)
        finally:
            self.teardown()
        return 0

    def stop_if_asked(self) -> int | None:
        """After a signal, put what still runs back to pending: at once after a second one,
        else once it ended or the grace period is over. How many were put back, or None to go
        on."""
        if self.force_stop.is_set():
            return self.release_all("master stopped at once")
        if not self.stop_requested.is_set():
            return None
        if self.runs and time.time() <= (self.stop_deadline or 0):
            return None
        if self.runs:
            log.info("master: the grace period is over: releasing %s",
                     running_tasks(len(self.runs)))
        return self.release_all("master stopped before the task ended")

    def loop_once_safely(self) -> None:
        """A pass that meets a database fault logs it, and one that raises anything else logs
        its traceback; either way the master goes on after a pause that doubles while passes
        keep failing, up to MAX_PAUSE. Nothing a document or a host sends ends the master."""
        try:
            self.loop_once()
            self.failures = 0
            return
        except DirtError as exc:
            pause = self.pause_after_failure()
            log.warning("master: %s; going on in %.1f s", exc, pause)
        except Exception:
            pause = self.pause_after_failure()
            log.exception("master: a pass failed; going on in %.1f s", pause)
        self.stop_requested.wait(pause)

    def pause_after_failure(self) -> float:
        self.failures = min(self.failures + 1, 32)
        return min(max(self.config.tick_seconds, 0.05) * 2 ** (self.failures - 1), MAX_PAUSE)

    def start_with_retry(self) -> None:
        delay = 0.5
        while True:
            try:
                self.start()
                return
            except DatabaseUnavailable as exc:
                if self.stop_requested.is_set():
                    raise
                log.warning("master: %s; retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def idle(self) -> bool:
        """Nothing pending or running in this master's scope, and nothing left to write."""
        active = [t for t in self.tasks.values() if t["state"] in ACTIVE and self.in_scope(t)]
        return not active and not self.runs and not self.dirty and not self.dirty_hosts

    # -- signals --------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def request_stop(self, signum: int, frame: Any) -> None:
        """First signal: a warm stop (no new tasks, a grace period). Second: stop at once.
        Handlers only set flags (logging in one is unsafe): the loop tells what came."""
        self.signals.append(signum)
        self.stop_requested.set()
        self.stop_deadline = time.time() + self.config.grace_seconds
        signal.signal(signal.SIGTERM, self.request_force_stop)
        signal.signal(signal.SIGINT, self.request_force_stop)

    def request_force_stop(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)
        self.force_stop.set()

    def tell_signals(self) -> None:
        """Log each signal the handlers took, by name, and what it does to running tasks."""
        while self.signals_told < len(self.signals):
            name = signal.Signals(self.signals[self.signals_told]).name
            self.signals_told += 1
            running = running_tasks(len(self.runs))
            if self.signals_told > 1:
                log.info("master: got %s again: stopping at once, releasing %s", name, running)
            elif self.runs:
                log.info("master: got %s: stopping; taking no new tasks, letting %s finish "
                         "for up to %g s (a second signal releases them at once)", name,
                         running, self.config.grace_seconds)
            else:
                log.info("master: got %s: stopping (no task is running)", name)

    def tell_stopped(self, released: int) -> None:
        """After a stop: how many running tasks went back to pending, and whether that is
        written."""
        if not released:
            log.info("master: stopped; no running task was left to release")
        elif self.dirty:
            log.warning("master: stopped; released %s, but the database did not take every "
                        "write: their leases run out and another master takes them over",
                        running_tasks(released))
        else:
            log.info("master: stopped; released %s back to pending", running_tasks(released))

    # -- changes and events ---------------------------------------------------------------

    def follow_changes(self) -> None:
        """Thread: the continuous changes feed into the event queue, resumed after outages."""
        delay = 0.5
        since = self.seq
        while not self.feed_stop.is_set():
            try:
                for change in self.couch.follow(since=since, include_docs=True):
                    delay = 0.5
                    if "last_seq" in change:
                        break
                    since = change.get("seq", since)
                    self.events.put(("change", change))
                    if self.feed_stop.is_set():
                        return
            except DirtError as exc:
                if self.feed_stop.is_set():
                    return
                log.warning("master: changes feed: %s; retrying in %.1f s", exc, delay)
                self.feed_stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def read_events(self, wait: float) -> None:
        """Apply every queued event; wait up to `wait` seconds for the first."""
        try:
            event = self.events.get(timeout=wait) if wait > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            self.apply_event(event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    def apply_event(self, event: tuple) -> None:
        kind = event[0]
        if kind == "change":
            change = event[1]
            self.seq = change.get("seq", self.seq)
            doc = change.get("doc")
            if doc is None or change.get("deleted"):
                self.forget(change["id"])
            elif doc.get("type") == "task":
                self.update_task(doc)
            elif doc.get("type") == "host":
                self.update_host(doc)
            elif doc.get("type") == "record":
                self.remember_record(doc)
        elif kind == "host":
            self.host_checked(event[1], event[2], event[3])
        elif kind == "recovered":
            self.recovered(event[1], event[2], event[3])
        else:
            key, message = event
            self.task_message(key, message)

    def forget(self, doc_id: str) -> None:
        self.tasks.pop(doc_id, None)
        if doc_id.startswith("host:"):
            name = doc_id[5:]
            state = self.hosts.pop(name, None)
            if state and state.gateway:
                state.gateway.close()

    def update_task(self, doc: dict[str, Any]) -> None:
        """A task document from the feed or a view: keep it if it is newer than ours. It is
        read into its shape here, once: a malformed one is set aside (set_aside)."""
        task_id = doc["_id"]
        known = self.tasks.get(task_id)
        if known is not None and rev_gen(known) >= rev_gen(doc):
            return
        self.stale.discard(task_id)
        try:
            task = parse_task(doc)
        except Malformed as exc:
            self.set_aside(doc, exc)
            return
        run = self.runs.get(task_id)
        if run and not self.still_ours(doc, run):
            # cancelled, or taken over after our lease ran out: end our attempt, write nothing
            self.fence(run, f"task changed elsewhere: now {task.state}")
            self.runs.pop(task_id, None)
            self.dirty.discard(task_id)
        if task.state in ACTIVE or task_id in self.runs:
            self.tasks[task_id] = doc
            if task.state == State.PENDING:  # what the scheduler sees: read once, here
                self.pending_views[task_id] = (task.rev, task.pending_task())
            self.queued(doc)
        else:
            self.tasks.pop(task_id, None)
            self.dirty.discard(task_id)

    def set_aside(self, doc: dict[str, Any], error: Malformed) -> None:
        """A malformed task document: whatever this master did with the task stops, and an
        active one in its scope ends `error` with the reason (written with the wrong fields
        at their defaults). One that cannot be written so (its name or platform is wrong) is
        only logged; the database's validate_doc_update keeps those out."""
        task_id = doc["_id"]
        run = self.runs.pop(task_id, None)
        if run:
            self.fence(run, str(error))
        self.tasks.pop(task_id, None)
        self.dirty.discard(task_id)
        if task_state(doc) not in ACTIVE or not self.in_scope(doc):
            return
        fixed = repaired(doc, error)
        if fixed is None:
            log.error("task %s: %s; left as it is", task_id, error, extra={"task": task_id})
            return
        log.error("task %s: %s; ended error", task_id, error, extra={"task": task_id})
        end_error(fixed, str(error))
        self.tasks[task_id] = fixed
        self.dirty.add(task_id)

    def still_ours(self, doc: dict[str, Any], run: Run) -> bool:
        attempts = doc.get("attempts") or []
        return (
            doc.get("state") == State.RUNNING.value
            and len(attempts) == run.attempt
            and attempts[-1].get("master") == self.id
        )

    # -- claiming and dispatching ---------------------------------------------------------

    def pending(self) -> list[PendingTask]:
        """The pending tasks this master may claim now (known rev, nothing left to write).
        A walk over every task: the loop uses the queue (see claimable) instead."""
        tasks = (self.claimable(task_id) for task_id in self.tasks)
        return [task for task in tasks if isinstance(task, PendingTask)]

    def view(self, doc: dict[str, Any]) -> PendingTask:
        """What the scheduler sees of a task document, made once per revision."""
        cached = self.pending_views.get(doc["_id"])
        if cached is None or cached[0] != doc.get("_rev"):
            if len(self.pending_views) > 2 * len(self.tasks) + 1000:
                self.pending_views = {k: v for k, v in self.pending_views.items()
                                      if k in self.tasks}
            cached = (doc.get("_rev"), parse_task(doc).pending_task())
            self.pending_views[doc["_id"]] = cached
        return cached[1]

    def claimable(self, task_id: str) -> PendingTask | object | None:
        """For the queue's walk: the task to offer, SKIP (pending, but its claim was lost or
        it has a write to make first), or None (no longer pending here: drop it)."""
        doc = self.tasks.get(task_id)
        if doc is None or doc["state"] != PENDING or not self.in_scope(doc):
            return None
        if task_id in self.stale or task_id in self.dirty:
            return SKIP
        return self.view(doc)

    def queued(self, doc: dict[str, Any]) -> None:
        """A task document is pending now: into the queue, and checked for being
        schedulable on the next pass."""
        if doc["state"] == PENDING and self.in_scope(doc):
            self.queue.add(self.view(doc))
            if doc["_id"] not in self.schedulable:
                self.unchecked.add(doc["_id"])

    def mark_unschedulable(self) -> None:
        """Pending tasks that no host can ever run end `unschedulable`, with the reason.

        A task found schedulable is not looked at again until the hosts or the registered
        task names change: a pass checks the tasks that became pending since the last one."""
        every_host = self.host_views(managed_only=False)
        registered = set(self.registry.names())
        farm = (sorted(registered), [(h.name, h.platform, h.enabled, h.labels,
                                      sorted(h.facts.items())) for h in every_host])
        if farm != self.farm_seen:
            self.farm_seen = farm
            self.schedulable.clear()
            self.unchecked = {task_id for task_id, doc in self.tasks.items()
                              if doc["state"] == PENDING}
        for task_id in list(self.unchecked):
            task = self.claimable(task_id)
            if task is SKIP:
                continue  # looked at once its write is made or its newer revision is here
            self.unchecked.discard(task_id)
            if task is None or task_id in self.schedulable:
                continue
            assert isinstance(task, PendingTask)
            try:
                reason = unschedulable_reason(task, every_host, task.name in registered)
            except DirtError as exc:
                reason = str(exc)
            if not reason:
                self.schedulable.add(task.id)
            else:
                doc = self.tasks[task.id]
                doc["ended"] = now_iso()
                set_state(doc, State.UNSCHEDULABLE, reason)
                log.info("task %s: unschedulable: %s", task.id, reason, extra={"task": task.id})
                self.dirty.add(task.id)

    def claims(self, now: float) -> list[dict[str, Any]]:
        """Task documents that claim pending tasks for free slots, to be written with the
        `_rev` read (see claimed()). The queue is walked in fair order only as far as the
        free slots reach."""
        if self.stop_requested.is_set():
            return []
        hosts = self.host_views(managed_only=True)
        platforms = {h.platform for h in hosts if h.free > 0}
        if not platforms:
            return []
        pairs = assign(self.queue.in_order(platforms, self.claimable), hosts, ordered=True)
        if not pairs:
            return []
        at = now_iso(now)
        claims = []
        for task_id, host in pairs:
            doc = dict(self.tasks[task_id])
            start_attempt(doc, host, self.id, at, now + self.config.lease_seconds)
            claims.append(doc)
        return claims

    def claimed(self, claims: list[dict[str, Any]], answers: list[dict[str, Any]]
                ) -> list[dict[str, Any]]:
        """The claims this master won; a conflict means another master (or a user) wrote the
        task first, and it is left alone."""
        won = []
        for doc, answer in zip(claims, answers, strict=True):
            if answer.get("error") == "conflict":
                log.debug("task %s: claim lost (%s)", doc["_id"], answer["error"])
                self.stale.add(doc["_id"])
                continue
            if answer.get("error"):
                self.tasks[doc["_id"]] = doc
                self.refused(doc, answer)
                continue
            self.tasks[doc["_id"]] = doc
            won.append(doc)
        return won

    def dispatch(self, claimed: list[dict[str, Any]], now: float) -> None:
        """Start each claimed task on its host's gateway."""
        for doc in claimed:
            module = self.registry.find(doc["name"])
            run = Run(
                task_id=doc["_id"],
                host=doc["host"],
                attempt=len(doc["attempts"]),
                timeout=(module.timeout if module and module.timeout else None)
                or self.config.default_timeout,
                log=LogBuffer(self.config.log_limit_bytes),
                started=time.monotonic(),
                last_write=now,
            )
            self.runs[run.task_id] = run
            if module is None:
                self.finish(run, "error", f"task {doc['name']!r} is no longer registered")
                continue
            host = self.hosts[doc["host"]]
            gateway = host.gateway
            job = Job(
                task_id=doc["_id"],
                task=doc["name"],
                platform=doc["platform"],
                source=module.source,
                record=plain(self.record_of(doc)),
                args=plain(doc.get("args") or {}),
                timeout=run.timeout,
                attempt=run.attempt,
                reuse=module.reuse,
                attempt_id=attempt_id(doc),
                forget=host.forget,
            )
            host.forget = []
            try:
                if gateway is None:
                    raise HostUnreachable(f"host {doc['host']}: no gateway")
                run.channel = gateway.start(job, self.events, run.key)
            except HostUnreachable as exc:
                self.finish(run, "released", str(exc))  # it never started: no attempt used
                self.host_checked(doc["host"], None, str(exc))
                continue
            log.info("task %s: started on %s", doc["_id"], doc["host"],
                     extra={"task": doc["_id"], "host": doc["host"]})
            self.tell("task_started", doc, parse_task(doc).waited())

    def record_of(self, task: dict[str, Any]) -> dict[str, Any]:
        """The record document a task belongs to, as the task module sees it."""
        name = task["record"]
        if name not in self.records:  # records come with the changes feed: rarely needed
            try:
                self.remember_record(self.couch.get(f"record:{name}"))
            except DirtError:
                return {"name": name}
        return self.records[name]

    def remember_record(self, doc: dict[str, Any]) -> None:
        if not isinstance(doc.get("name"), str):
            return  # validate_doc_update keeps such records out; a task sees {"name": ...}
        if len(self.records) >= 10_000:
            self.records.pop(next(iter(self.records)))  # the oldest first
        self.records[doc["name"]] = {k: v for k, v in doc.items() if not k.startswith("_")}

    def write(self, now: float, claim: bool = True) -> list[dict[str, Any]]:
        """One _bulk_docs per pass: results, lease renewals, host changes and new claims.
        Returns the claims won, to dispatch.

        While tasks run, a write waits until `batch_seconds` after the previous one, so that
        many results and claims share one request (the database's cost is mostly per
        request); an idle farm's first write goes at once. On an outage everything is kept
        and retried with backoff (nothing is dropped)."""
        clock = time.monotonic()
        if clock < self.next_write:
            return []
        self.deferred = bool(self.runs) and clock < self.last_write + self.config.batch_seconds
        if self.deferred:
            return []
        docs = [self.tasks[i] for i in sorted(self.dirty) if i in self.tasks]
        host_docs = [self.hosts[n].doc for n in sorted(self.dirty_hosts) if n in self.hosts]
        claims = self.claims(now) if claim else []
        if not docs and not host_docs and not claims:
            return []
        try:
            answers = self.send(docs + host_docs + claims)
        except DirtError as exc:
            self.back_off(f"{len(docs) + len(host_docs)} writes held: {exc}", exc)
            return []
        self.last_write = clock  # from its start: a slow write is not followed by a wait
        self.write_backoff = 0.0
        for doc, answer in zip(docs, answers, strict=False):
            self.written(doc, answer)
        for doc, answer in zip(host_docs, answers[len(docs):], strict=False):
            name = doc["_id"].removeprefix("host:")
            self.dirty_hosts.discard(name)
            if answer.get("error") == "conflict":
                self.refresh_host(name)
            elif answer.get("error"):
                log.error("host %s: write refused: %s", name, one_line(answer),
                          extra={"host": name})
        return self.claimed(claims, answers[len(docs) + len(host_docs):])

    def send(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One _bulk_docs. A request the database refuses as a whole (one document it cannot
        take spoils it) is sent again one document at a time, so that the others are written
        and the one refused is answered `refused`, never holding back the rest. DirtError
        when the database does not answer, or fails every document alone."""
        try:
            return self.couch.bulk_docs(docs)
        except (DatabaseError, DatabaseUnavailable) as exc:
            if not refused_whole(exc):
                raise
            log.warning("master: the database refused a write of %d documents (%s); writing "
                        "them one at a time", len(docs), one_line(str(exc)))
        answers, failed = [], None
        for doc in docs:
            try:
                answers += self.couch.bulk_docs([doc])
            except (DatabaseError, DatabaseUnavailable) as exc:
                if not refused_whole(exc):
                    raise
                failed = exc if isinstance(exc, DatabaseUnavailable) else failed
                answers.append({"id": doc.get("_id"), "error": "refused",
                                "reason": one_line(str(exc))})
        if failed is not None and all(answer.get("error") for answer in answers):
            raise failed  # a server error for every document: the server, not a document
        return answers

    def back_off(self, what: str, error: Exception | None = None) -> None:
        """The database does not answer: claim and write nothing for a while (capped
        exponential backoff); running tasks go on and their results are held."""
        if error is not None:
            self.tell("database_error", error)
        self.write_backoff = min(max(self.write_backoff * 2, 0.5), 10.0)
        self.next_write = time.monotonic() + self.write_backoff
        log.warning("master: %s; retrying in %.1f s", what, self.write_backoff)

    def written(self, doc: dict[str, Any], answer: dict[str, Any]) -> None:
        task_id = doc["_id"]
        if not answer.get("error"):
            # Inline attachments keep their data: a stub needs the server's digest (PouchDB
            # finds stubs by digest), and the next write of a running task rewrites the log.
            self.dirty.discard(task_id)
            self.refusing.discard(task_id)
            if doc["state"] not in ACTIVE and task_id not in self.runs:
                self.tasks.pop(task_id, None)
                self.forget_outcome(doc)
                self.tell("task_ended", doc)
            return
        if answer["error"] != "conflict":
            self.refused(doc, answer)
            return
        self.merge_conflict(doc)

    def refused(self, doc: dict[str, Any], answer: dict[str, Any]) -> None:
        """The database refused a task's document (not a conflict: as it is, it is never
        taken). The task ends `error` with the database's reason, written again without the
        artifacts this master added; refused once more, it is let go here, and the database
        keeps its last revision."""
        task_id = doc["_id"]
        reason = f"{REFUSED}: {one_line(answer)}"
        log.error("task %s: %s", task_id, reason, extra={"task": task_id})
        run = self.runs.pop(task_id, None)
        if run:
            self.fence(run, REFUSED)
        if task_id in self.refusing:
            self.refusing.discard(task_id)
            self.dirty.discard(task_id)
            self.tasks.pop(task_id, None)
            log.error("task %s: refused again; left as the database has it", task_id,
                      extra={"task": task_id})
            return
        self.refusing.add(task_id)
        kept = {name: attachment for name, attachment in (doc.get("_attachments") or {}).items()
                if name == "log.txt" or attachment.get("stub")}
        doc.pop("_attachments", None)
        if kept:
            doc["_attachments"] = kept
        end_error(doc, reason)
        self.dirty.add(task_id)

    def forget_outcome(self, doc: dict[str, Any]) -> None:
        """The task's result is in the database: its host no longer needs to keep how the
        attempt ended (remote_runner.keep_result). Told with the next task sent there, so it
        costs no message of its own; what is never told is let go after a week."""
        attempts = doc.get("attempts") or []
        state = self.hosts.get(attempts[-1].get("host")) if attempts else None
        if state is not None:
            state.forget.append(attempt_id(doc))
            del state.forget[:-1000]

    def merge_conflict(self, mine: dict[str, Any]) -> None:
        """Somebody else wrote a task we were writing: if it is still ours, write ours over
        the new rev; if not (cancelled, taken over), fence our attempt and let theirs stand."""
        task_id = mine["_id"]
        try:
            theirs = self.couch.get(task_id)
        except DirtError:
            return  # kept dirty: tried again on the next write
        run = self.runs.get(task_id)
        try:
            attempts = parse_task(theirs).attempts
        except Malformed:
            attempts = ()  # not ours: update_task below sets it aside
        ours = (
            theirs.get("state") == State.RUNNING.value
            and len(attempts) == len(mine.get("attempts") or [])
            and attempts
            and attempts[-1].master == self.id
        )
        if ours:
            mine["_rev"] = theirs["_rev"]
            return  # stays dirty, written on the next pass
        log.info("task %s: changed elsewhere (%s); our attempt is dropped", task_id,
                 theirs.get("state"), extra={"task": task_id})
        self.dirty.discard(task_id)
        if run:
            self.fence(run, f"task changed elsewhere: now {theirs.get('state')}")
            self.runs.pop(task_id, None)
        self.tasks.pop(task_id, None)
        self.update_task(theirs)

    def flush_writes(self, deadline: float = 30.0) -> None:
        """Before exiting: write what is held, for a while if the database is down."""
        end = time.monotonic() + deadline
        while (self.dirty or self.dirty_hosts) and time.monotonic() < end:
            self.next_write = self.last_write = 0.0
            self.write(time.time(), claim=False)
            if self.dirty or self.dirty_hosts:
                time.sleep(0.5)

    def save_checkpoint(self, now: float) -> None:
        if now < self.next_checkpoint or self.seq == self.checkpointed:
            return
        self.next_checkpoint = now + 5.0
        try:
            self.couch.put_local(self.checkpoint_name, {"seq": self.seq, "master": self.id})
            self.checkpointed = self.seq
        except DirtError as exc:
            log.debug("master: checkpoint not saved: %s", exc)

    def teardown(self) -> None:
        self.feed_stop.set()
        for run in list(self.runs.values()):
            self.fence(run, "master exiting")
        for state in self.hosts.values():
            if state.gateway:
                state.gateway.shutdown()
        try:
            self.group.terminate(timeout=2.0)
        except Exception:
            pass


def _platform_in(platform: Any, platforms: set[str]) -> bool:
    return isinstance(platform, str) and platform in platforms


def running_tasks(count: int) -> str:
    return f"{count} running task{'' if count == 1 else 's'}"


def refused_whole(error: DirtError) -> bool:
    """Whether the database answered a write request by refusing it as a whole: a client
    error for its body (one document it cannot take), or a server error. Not one for the
    credentials (401, 403) or a database that is gone (404)."""
    status = getattr(error, "status", None)
    return status is not None and (status >= 500 or status in (400, 413, 415, 422))


def one_line(what: Any, limit: int = 200) -> str:
    """A database answer or error as one capped line for a reason."""
    if isinstance(what, dict):
        what = f"{what.get('error')}: {what.get('reason') or ''}".rstrip(": ")
    text = " ".join(str(what).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


__all__ = ["Master", "Listener"]
