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
from dirt.documents import now_iso, rev_gen
from dirt.errors import DirtError, HostUnreachable, Malformed
from dirt.remote import Gateway, gateway_spec
from dirt.scheduler import HostView
from dirt.shapes import Host, parse_facts, parse_host, slot_count

if TYPE_CHECKING:
    import execnet

    from dirt.couch import Couch
    from dirt.results import Run
    from dirt.settings import MasterSettings, Settings

log = logging.getLogger("dirt.master")


@dataclass
class HostState:
    """What one master knows of one host: its document, read into its shape (None when the
    document is malformed: `problem` says how, and the host is not used), and its gateway."""

    name: str
    doc: dict[str, Any]
    host: Host | None = None
    problem: str = ""
    facts: dict[str, Any] = field(default_factory=dict)  # the last known, checked facts
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
        """A host document from the feed or at start, read into its shape here, once."""
        name = doc["_id"].removeprefix("host:")
        state = self.hosts.get(name)
        if state is not None and rev_gen(state.doc) >= rev_gen(doc):
            return
        if state is None:
            state = self.hosts[name] = HostState(name=name, doc=doc)
        old_spec = gateway_spec(state.host) if state.host else None
        state.doc = doc
        try:
            state.host, state.problem = parse_host(doc), ""
            state.facts = state.host.facts
        except Malformed as exc:
            state.host, state.problem = None, f"host {name}: {exc}"
            self.unusable(state)
        host = state.host
        if state.gateway and (host is None or not host.enabled or gateway_spec(host) != old_spec):
            if not any(run.host == name for run in self.runs.values()):
                state.gateway.close()
                state.gateway = None
        if host and host.enabled and doc.get("alive") is not True:
            state.next_check = 0.0

    def unusable(self, state: HostState) -> None:
        """A malformed host document: the host runs no new task, and its document says why
        (once: the same reason is not written again)."""
        state.ready = False
        if not self.manages(state):
            return
        if state.doc.get("alive") is not False or state.doc.get("reason") != state.problem:
            log.error("%s; not used until it is fixed", state.problem, extra={"host": state.name})
            state.doc.update(alive=False, reason=state.problem)
            self.dirty_hosts.add(state.name)

    def check_hosts(self, now: float) -> None:
        """Start a health check (in a thread) for each host whose check is due."""
        for name, state in self.hosts.items():
            host = state.host
            if host is None or not host.enabled or not self.manages(state) or state.checking:
                continue
            if now < state.next_check:
                continue
            state.checking = True
            if state.gateway is None:
                state.gateway = Gateway(name, self.spec_for(host), self.group)
            threading.Thread(
                target=self._check_host, args=(state.doc, state.gateway), daemon=True
            ).start()

    def spec_for(self, host: Host) -> str:
        return gateway_spec(host, self.settings.state_dir / "known_hosts")

    def _check_host(self, doc: dict[str, Any], gateway: Gateway) -> None:
        """Thread: ask the host for its facts; if it does not answer, find out why. Always
        reports (a check that never reports would never be made again)."""
        known_hosts = self.settings.state_dir / "known_hosts"
        name = gateway.name
        try:
            if doc.get("ssh") and not gateway.is_open():
                # walk the SSH steps first: a clear cause, and no half-made execnet bootstrap
                check_ssh(doc["ssh"], known_hosts)
            facts = gateway.facts()
            self.events.put(("host", name, facts, None))
        except HostUnreachable as exc:
            reason = explain(doc, known_hosts, exc)  # which SSH step fails, if one does
            if not reason.startswith(f"host {name}"):
                reason = f"host {name}: {reason}"
            self.events.put(("host", name, None, reason))
        except Exception as exc:  # noqa: BLE001 - a host's fault, told as one
            log.exception("host %s: checking it failed", name, extra={"host": name})
            self.events.put(("host", name, None, f"host {name}: checking it failed: {exc!r}"))

    def host_checked(self, name: str, facts: dict | None, error: str | None) -> None:
        state = self.hosts.get(name)
        if state is None:
            return
        state.checking = False
        state.checked = True
        state.next_check = time.time() + self.config.health_interval
        if state.host is None:
            return  # its document turned malformed while it was checked: not used
        if facts is not None:
            try:
                facts = parse_facts(facts)
            except Malformed as exc:
                facts, error = None, f"host {name}: {exc}"
        doc = state.doc
        was_alive = doc.get("alive")
        state.ready = facts is not None
        if facts is not None:
            state.facts = facts
            if was_alive is not True:
                log.info("host %s: alive (%s, Python %s)", name, facts.get("os"),
                         facts.get("python"), extra={"host": name})
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
            host = state.host
            if host is None or (managed_only and not self.manages(state)):
                continue  # a malformed host counts as no host until its document is fixed
            views.append(
                HostView(
                    name=name,
                    platform=host.platform,
                    slots=slot_count(host.slots, state.facts),
                    labels=host.labels,
                    facts=state.facts,
                    enabled=host.enabled,
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
