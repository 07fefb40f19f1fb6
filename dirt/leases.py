"""Leases: a running task's document says until when its master answers for it. Ours are
renewed while the task runs; one nobody renews (its master stopped) is taken over: the host
is asked how the attempt ended, and the task is requeued, or ended `error` once it has used
its attempts. A lost attempt is fenced: its remote process is ended.

A part of the master (`Master` mixes it in): it works on the master's state, `tasks`, `runs`,
`hosts`, `dirty`, `events`, and calls its `queued`, `record_outcome`, `still_ours`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from dirt.couch import inline_attachment
from dirt.documents import State, attempt_id, now_iso, set_state
from dirt.errors import HostUnreachable, Malformed
from dirt.remote import Gateway
from dirt.results import Run
from dirt.shapes import Ended, parse_ending

if TYPE_CHECKING:
    from dirt.health import HostState
    from dirt.settings import MasterSettings

log = logging.getLogger("dirt.master")
RUNNING = State.RUNNING.value
# How long a master taking over an expired lease waits for a host that does not answer: more
# than ssh's keepalive (ServerAliveInterval 5 x ServerAliveCountMax 3 = 15 s, remote.py), after
# which a task process whose connection is gone has ended itself.
HOST_GRACE_SECONDS = 20.0


class Leases:
    """Renews, expires and takes over the leases of running tasks."""

    # the master's state this part works on (set in Master.__init__)
    config: MasterSettings
    tasks: dict[str, dict[str, Any]]
    runs: dict[str, Run]
    hosts: dict[str, HostState]
    dirty: set[str]
    stale: set[str]
    events: queue.Queue
    recovering: set[str]
    host_waits: dict[str, float]
    last_lease_check: float

    def expire_leases(self, now: float) -> None:
        """Running tasks nobody renews (a master died) are lost attempts; ours past their
        deadline (the host hangs) are ended. Looked at twice a second, not every pass: a
        lease is seconds long, and the walk is over every active task."""
        if self.last_lease_check <= now < self.last_lease_check + 0.5:
            return
        self.last_lease_check = now
        for task_id in list(self.host_waits):
            if self.tasks.get(task_id, {}).get("state") != RUNNING:
                del self.host_waits[task_id]  # taken care of meanwhile
        for task_id, doc in list(self.tasks.items()):
            if doc["state"] != RUNNING or task_id in self.runs:
                continue
            if not self.in_scope(doc) or task_id in self.stale:
                continue
            if (doc.get("lease_until") or 0) < now and task_id not in self.recovering:
                self.recover(doc, now)
        for run in list(self.runs.values()):
            if time.monotonic() - run.started > run.timeout + 30:
                self.fence(run, "no answer from the host after the timeout")
                reason = f"timeout after {run.timeout:g} s (the host did not end it)"
                self.finish(run, "timeout", reason)

    def recover(self, doc: dict[str, Any], now: float) -> None:
        """A lease ran out: the master running the task stopped. If the task ended on its host
        before that master wrote the result, the host kept it: record it rather than run the
        task again. Otherwise the attempt is lost. A host that does not answer is waited for
        HOST_GRACE_SECONDS: in that time it comes back (and is asked), or the task's process,
        if it still runs there, has ended itself (its connection is gone), so the task never
        runs on two hosts at once."""
        lost = "lease expired: the master running it stopped"
        attempts = doc.get("attempts") or []
        state = self.hosts.get(attempts[-1].get("host")) if attempts else None
        ours = state is not None and state.host is not None and state.host.enabled \
            and self.manages(state)
        if ours and not state.checked:
            return  # this master has not reached the host yet: ask once it has
        reachable = ours and state.ready and state.gateway
        if ours and not reachable:
            since = self.host_waits.setdefault(doc["_id"], now)
            if now - since < HOST_GRACE_SECONDS:
                return
            lost += f"; its host did not answer for {HOST_GRACE_SECONDS:g} s"
        self.host_waits.pop(doc["_id"], None)
        if not reachable:
            self.end_attempt(doc, "lost", lost)
            return
        self.recovering.add(doc["_id"])
        threading.Thread(target=self._collect,
                         args=(state.gateway, doc["_id"], len(attempts), attempt_id(doc)),
                         daemon=True).start()

    def _collect(self, gateway: Gateway, task_id: str, attempt: int, key: str) -> None:
        """Thread: ask the host how the attempt ended."""
        try:
            kept = gateway.collect(key)
        except HostUnreachable:
            kept = None
        self.events.put(("recovered", task_id, attempt, kept))

    def recovered(self, task_id: str, attempt: int, kept: Any) -> None:
        """What the host kept of the attempt (remote_runner.collect), as it answered."""
        self.recovering.discard(task_id)
        doc = self.tasks.get(task_id)
        if doc is None or doc["state"] != State.RUNNING.value or task_id in self.runs \
                or len(doc.get("attempts") or []) != attempt:
            return  # changed meanwhile: the feed brought what happened
        lost = "lease expired: the master running it stopped"
        try:
            ending = parse_ending(kept) if kept else None
        except Malformed as exc:
            ending = Ended("lost", f"what its host kept is unusable: {exc}")
        if ending is None or ending.kind == "lost":
            self.end_attempt(doc, "lost", lost if not ending else f"{lost}; {ending.payload}")
            return
        host = doc["attempts"][-1].get("host")
        log.info("task %s: its attempt %d ended on %s before its master stopped: recorded, "
                 "not run again", task_id, attempt, host, extra={"task": task_id, "host": host})
        self.record_outcome(doc, kind=ending.kind, payload=ending.payload, duration=None,
                            note="result kept by the host after its master stopped")

    def end_attempt(self, doc: dict[str, Any], outcome: str, reason: str) -> None:
        """Close the last attempt of `doc` and requeue it, or end it `error` when it has
        used up its attempts."""
        at = now_iso()
        attempts = doc.setdefault("attempts", [])
        if attempts and attempts[-1].get("ended") is None:
            attempts[-1].update(ended=at, outcome=outcome, reason=reason)
        doc["lease_until"] = None
        lost = [a for a in attempts if a.get("outcome") == "lost"]
        if outcome == "lost" and len(lost) >= self.config.max_attempts:
            reasons = "; ".join(a.get("reason", "") for a in lost)
            doc.update(ended=at)
            set_state(doc, State.ERROR, f"lost {len(lost)} times: {reasons}", at)
        elif outcome in ("lost", "released"):
            doc.update(host=None, started=None)
            set_state(doc, State.PENDING, f"requeued: {reason}", at)
            self.queued(doc)
        self.dirty.add(doc["_id"])

    def renew_runs(self, now: float) -> None:
        """Renew the leases of running tasks, streaming their logs in the same write."""
        renew_every = self.config.lease_seconds / 3
        for run in self.runs.values():
            doc = self.tasks.get(run.task_id)
            if doc is None or run.task_id in self.dirty:
                continue
            due_log = run.log.dirty and now - run.last_write >= self.config.log_flush_seconds
            if due_log or now - run.last_write >= renew_every:
                doc["lease_until"] = now + self.config.lease_seconds
                doc["attempts"][-1]["pid"] = run.pid
                if run.log.dirty:
                    doc["_attachments"] = dict(doc.get("_attachments") or {})
                    doc["_attachments"]["log.txt"] = inline_attachment(
                        run.log.render(), "text/plain; charset=utf-8"
                    )
                    run.log.dirty = False
                run.last_write = now
                self.dirty.add(run.task_id)

    def fence(self, run: Run, reason: str) -> None:
        """End an attempt's remote process; nothing it says afterwards counts."""
        if run.fenced:
            return
        run.fenced = True
        log.info("task %s: ending its process on %s: %s", run.task_id, run.host, reason,
                 extra={"task": run.task_id, "host": run.host})
        try:
            if run.channel is not None:
                run.channel.send("kill")
        except Exception:  # the channel is already gone: so is the process
            pass

    def release_all(self, reason: str) -> int:
        """On shutdown: end what still runs and put it back to pending for another master.
        Returns how many tasks were put back."""
        released = 0
        for run in list(self.runs.values()):
            self.fence(run, reason)
            self.runs.pop(run.task_id, None)
            doc = self.tasks.get(run.task_id)
            if doc is not None and self.still_ours(doc, run):
                self.attach_outputs(doc, run)
                self.end_attempt(doc, "released", reason)
                released += 1
        return released
