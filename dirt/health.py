"""The master's hosts: their health checks (in threads, reported through the event queue),
what the scheduler sees of them, and what happens when one is lost.

A part of the master (`Master` mixes it in): it works on the master's state, `hosts`, `runs`,
`events`, `dirty_hosts`, and calls its `finish` and `manages`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dirt.diagnose import check_ssh, explain
from dirt.documents import host_slots, now_iso, rev_gen
from dirt.errors import DirtError, HostUnreachable
from dirt.remote import Gateway, gateway_spec
from dirt.scheduler import HostView

if TYPE_CHECKING:
    import execnet

    from dirt.couch import Couch
    from dirt.results import Run
    from dirt.settings import MasterSettings, Settings

log = logging.getLogger("dirt.master")


@dataclass
class HostState:
    """What one master knows of one host: its document and its gateway."""

    doc: dict[str, Any]
    gateway: Gateway | None = None
    ready: bool = False  # this master's last check of the host succeeded
    checked: bool = False  # this master has checked the host at least once
    checking: bool = False
    next_check: float = 0.0
    # attempts that ended here and whose results are written: told with the next task
    forget: list[str] = field(default_factory=list)


class HostHealth:
    """Checks hosts and keeps the master's picture of them."""

    # the master's state this part works on (set in Master.__init__)
    settings: Settings
    config: MasterSettings
    group: execnet.Group
    couch: Couch
    hosts: dict[str, HostState]
    runs: dict[str, Run]
    events: queue.Queue
    dirty_hosts: set[str]

    def update_host(self, doc: dict[str, Any]) -> None:
        name = doc["name"]
        state = self.hosts.get(name)
        if state is None:
            self.hosts[name] = HostState(doc=doc)
            return
        if rev_gen(state.doc) >= rev_gen(doc):
            return
        old_spec = gateway_spec(state.doc)
        state.doc = doc
        if state.gateway and (not doc.get("enabled") or gateway_spec(doc) != old_spec):
            if not any(run.host == name for run in self.runs.values()):
                state.gateway.close()
                state.gateway = None
        if doc.get("enabled") and doc.get("alive") is not True:
            state.next_check = 0.0

    def check_hosts(self, now: float) -> None:
        """Start a health check (in a thread) for each host whose check is due."""
        for name, state in self.hosts.items():
            doc = state.doc
            if not self.manages(doc) or not doc.get("enabled") or state.checking:
                continue
            if now < state.next_check:
                continue
            state.checking = True
            if state.gateway is None:
                state.gateway = Gateway(name, self.spec_for(doc), self.group)
            threading.Thread(
                target=self._check_host, args=(doc, state.gateway), daemon=True
            ).start()

    def spec_for(self, doc: dict[str, Any]) -> str:
        return gateway_spec(doc, self.settings.state_dir / "known_hosts")

    def _check_host(self, doc: dict[str, Any], gateway: Gateway) -> None:
        """Thread: ask the host for its facts; if it does not answer, find out why."""
        known_hosts = self.settings.state_dir / "known_hosts"
        try:
            if doc.get("ssh") and not gateway.is_open():
                # walk the SSH steps first: a clear cause, and no half-made execnet bootstrap
                check_ssh(doc["ssh"], known_hosts)
            facts = gateway.facts()
            self.events.put(("host", doc["name"], facts, None))
        except HostUnreachable as exc:
            reason = explain(doc, known_hosts, exc)  # which SSH step fails, if one does
            if not reason.startswith(f"host {doc['name']}"):
                reason = f"host {doc['name']}: {reason}"
            self.events.put(("host", doc["name"], None, reason))

    def host_checked(self, name: str, facts: dict | None, error: str | None) -> None:
        state = self.hosts.get(name)
        if state is None:
            return
        state.checking = False
        state.checked = True
        state.next_check = time.time() + self.config.health_interval
        doc = state.doc
        was_alive = doc.get("alive")
        state.ready = facts is not None
        if facts is not None:
            if was_alive is not True:
                log.info("host %s: alive (%s, Python %s)", name, facts["os"], facts["python"],
                         extra={"host": name})
            changed = doc.get("alive") is not True or doc.get("facts") != facts
            doc.update(alive=True, reason="", facts=facts)
            last = doc.get("last_seen_ts") or 0
            if changed or time.time() - last > max(60.0, self.config.health_interval * 6):
                doc["last_seen"] = now_iso()
                doc["last_seen_ts"] = time.time()
                self.dirty_hosts.add(name)
            return
        log.warning("host %s: not alive: %s", name, error, extra={"host": name})
        if was_alive is not False or doc.get("reason") != error:
            doc.update(alive=False, reason=error)
            self.dirty_hosts.add(name)
        self.host_lost(name, error or "host does not answer")

    def host_lost(self, name: str, reason: str) -> None:
        """A host stopped answering: end its gateway and every attempt running there."""
        state = self.hosts.get(name)
        if state and state.gateway:
            state.gateway.kill()
        for run in [r for r in self.runs.values() if r.host == name]:
            self.finish(run, "lost", reason)

    def host_views(self, managed_only: bool) -> list[HostView]:
        busy: dict[str, int] = {}
        for run in self.runs.values():
            busy[run.host] = busy.get(run.host, 0) + 1
        views = []
        for name, state in self.hosts.items():
            doc = state.doc
            if managed_only and not self.manages(doc):
                continue
            views.append(
                HostView(
                    name=name,
                    platform=doc["platform"],
                    slots=host_slots(doc),
                    labels=tuple(doc.get("labels") or ()),
                    facts=doc.get("facts") or {},
                    enabled=bool(doc.get("enabled")),
                    alive=state.ready,
                    running=busy.get(name, 0),
                )
            )
        return views

    def refresh_host(self, name: str) -> None:
        try:
            doc = self.couch.get(f"host:{name}")
        except DirtError:
            return
        state = self.hosts.get(name)
        if state:
            keep = {k: state.doc.get(k) for k in ("alive", "reason", "facts", "last_seen")}
            state.doc = {**doc, **keep}
            self.dirty_hosts.add(name)
