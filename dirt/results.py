"""Results: what a running task's host says (its pid, log lines, artifacts, how it ended)
becomes the task document's outcome, written by the master's next write.

A part of the master (`Master` mixes it in): it works on the master's state, `tasks`, `runs`,
`hosts`, `dirty`, and calls its `end_attempt`, `still_ours` and `fence`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dirt.couch import inline_attachment
from dirt.documents import end_task, now_iso, outcome_of, store_artifact_type
from dirt.errors import Malformed
from dirt.logbuffer import LogBuffer
from dirt.shapes import Artifact, Ended, Log, Started, parse_message

if TYPE_CHECKING:
    from dirt.health import HostState

log = logging.getLogger("dirt.master")
MAX_ARTIFACT_BYTES = 16 * 1024 * 1024


@dataclass
class Run:
    """One task this master is running on a host."""

    task_id: str
    host: str
    attempt: int
    timeout: float
    log: LogBuffer
    started: float  # time.monotonic()
    channel: Any = None
    pid: int | None = None
    artifacts: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    artifact_bytes: int = 0
    last_write: float = 0.0
    fenced: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.attempt)


class Results:
    """Turns what a task's host says into the task's outcome."""

    # the master's state this part works on (set in Master.__init__)
    tasks: dict[str, dict[str, Any]]
    runs: dict[str, Run]
    hosts: dict[str, HostState]
    dirty: set[str]

    def task_message(self, key: tuple[str, int], message: Any) -> None:
        """What a task's host said, read into its shape here; a malformed message ends the
        task `error` with what was wrong (and its process), never the master."""
        run = self.runs.get(key[0])
        if run is None or run.key != key or run.fenced:
            return  # a fenced attempt: what it says no longer counts
        try:
            said = parse_message(message)
        except Malformed as exc:
            log.warning("task %s: %s from %s", run.task_id, exc, run.host,
                        extra={"task": run.task_id, "host": run.host})
            self.fence(run, str(exc))
            self.finish(run, "error", f"{exc} (from the task or its host)")
            return
        if isinstance(said, Started):
            run.pid = said.pid
        elif isinstance(said, Log):
            run.log.add(said.text)
        elif isinstance(said, Artifact):
            self.add_artifact(run, said)
        elif isinstance(said, Ended):
            if said.kind == "lost" and run.host in self.hosts:
                host = self.hosts[run.host]
                host.next_check = 0.0  # is the host still there? ask now
                if said.payload.startswith("connection"):
                    host.ready = False  # no new task there until the check says it is back
            self.finish(run, said.kind, said.payload)

    def add_artifact(self, run: Run, artifact: Artifact) -> None:
        name, data = artifact.name, artifact.data
        if name == "log.txt" or run.artifact_bytes + len(data) > MAX_ARTIFACT_BYTES:
            run.log.add(f"[dirt: artifact {name!r} refused: reserved name or over 16 MB total]")
            return
        run.artifacts[name] = (artifact.content_type, data)
        run.artifact_bytes += len(data)

    def finish(self, run: Run, kind: str, payload: Any) -> None:
        """An attempt ended: turn what the host said into the task's outcome."""
        self.runs.pop(run.task_id, None)
        doc = self.tasks.get(run.task_id)
        if doc is None or not self.still_ours(doc, run):
            return
        self.attach_outputs(doc, run)
        if kind == "released":
            self.end_attempt(doc, "released", str(payload))
            return
        if kind == "lost":
            log.warning("task %s: attempt %d on %s lost: %s", run.task_id, run.attempt,
                        run.host, payload, extra={"task": run.task_id, "host": run.host})
            self.end_attempt(doc, "lost", str(payload))
            return
        self.record_outcome(doc, kind, payload, duration=time.monotonic() - run.started)

    def record_outcome(self, doc: dict[str, Any], kind: str, payload: Any,
                       duration: float | None, note: str = "") -> None:
        """The task's final state, reason and result from how its last attempt ended."""
        state, reason, result = outcome_of(kind, payload)
        end_task(doc, state, reason, result, now_iso(), duration, note)
        host = doc["attempts"][-1].get("host")
        log.info("task %s: %s on %s%s", doc["_id"], state.value, host,
                 f": {reason}" if reason else "", extra={"task": doc["_id"], "host": host})
        self.dirty.add(doc["_id"])

    def attach_outputs(self, doc: dict[str, Any], run: Run) -> None:
        attachments = dict(doc.get("_attachments") or {})
        text = run.log.render()
        if text or "log.txt" in attachments:  # a silent task stores no log (cheaper writes)
            attachments["log.txt"] = inline_attachment(text, "text/plain; charset=utf-8")
        for name, (declared, data) in run.artifacts.items():
            stored = store_artifact_type(doc, name, declared)  # never HTML on the db's origin
            attachments[name] = inline_attachment(data, stored)
        if attachments:
            doc["_attachments"] = attachments
        run.log.dirty = False
