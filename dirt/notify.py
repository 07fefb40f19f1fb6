"""Notifications when a record ends: mail over SMTP, JSON webhooks, GitHub commit statuses
(those also when the record starts: pending).

The master calls a `Notifier` (a master Listener) as tasks start and end; the notifier only
queues the record's name, so the master never waits. Its own thread does the rest: it reads
the record's tasks and, when all have ended (or, for a pending commit status, the first has
started), claims the notification on the record document by writing it with the `_rev` it
read, so that of several masters exactly one sends. A small pool of threads sends, trying again
with capped exponential backoff; what was sent and what kept failing is written to the record's
`notifications` list (and told to `on_outcome`: `dirt serve --metrics-port` counts them).

The notifier also reads the changes feed (from a `_local` checkpoint), so records ended by
someone else (a user cancelling, another master) are noticed, and nothing that ended while no
master ran is missed.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import smtplib
import socket
import ssl
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from dirt import __version__, github
from dirt.couch import Couch
from dirt.documents import FINAL, State, notification_entry, now_iso, record_id, summarize
from dirt.errors import Conflict, DirtError, NotFound, NotificationFailed
from dirt.hooks import sign
from dirt.master import Listener
from dirt.settings import EmailSettings, Settings, WebhookSettings

log = logging.getLogger("dirt.notify")

CHECKPOINT = "dirt-notifier"
KEEP_NOTIFICATIONS = 100  # entries kept on a record document, newest last


@dataclass(frozen=True)
class Message:
    """What a notification says about a record."""

    phase: str  # started | ended
    record: dict[str, Any]  # name, description, submitter, created, meta
    summary: dict[str, Any]  # counts, total, state
    tasks: list[dict[str, Any]]
    url: str

    @property
    def name(self) -> str:
        return self.record["name"]

    def payload(self) -> dict[str, Any]:
        """The JSON a webhook receives."""
        return {"event": f"record.{self.phase}", "url": self.url,
                "record": {**self.record, **self.summary}, "tasks": self.tasks}

    def subject(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.summary["counts"].items()))
        return f"[dirt] {self.name}: {self.summary['state']} ({counts})"

    def text(self) -> str:
        lines = [f"Record {self.name} ended: {self.summary['state']}", ""]
        width = max(len(t["task"]) for t in self.tasks) if self.tasks else 0
        for task in self.tasks:
            reason = f"  {task['reason']}" if task.get("reason") else ""
            lines.append(f"  {task['task'].ljust(width)}  {task['state']:<13}{reason}".rstrip())
        meta = self.record.get("meta") or {}
        if meta:
            lines += ["", *(f"{k}: {v}" for k, v in sorted(meta.items()))]
        lines += ["", self.url, ""]
        return "\n".join(lines)


# -- targets ------------------------------------------------------------------------------


class Target(ABC):
    """Somewhere a notification goes. `name` is safe to store and show (no credentials)."""

    kind = ""
    name = ""

    @abstractmethod
    def wants(self, message: Message) -> bool:
        """Does this target want to hear about this message (its `on` rule)?"""

    @abstractmethod
    def send(self, message: Message, timeout: float) -> None:
        """Send once; NotificationFailed when it did not work."""


def _on(rule: str, message: Message) -> bool:
    return message.phase == "ended" and (rule == "always" or message.summary["state"] != "success")


class Email(Target):
    kind = "email"

    def __init__(self, config: EmailSettings) -> None:
        self.config = config
        self.name = ", ".join(config.to)

    def wants(self, message: Message) -> bool:
        return _on(self.config.on, message)

    def send(self, message: Message, timeout: float) -> None:
        config = self.config
        mail = EmailMessage()
        mail["Subject"] = message.subject()
        mail["From"] = config.sender
        mail["To"] = ", ".join(config.to)
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = make_msgid(domain=config.sender.rpartition("@")[2] or None)
        mail["X-Dirt-Record"] = message.name
        mail.set_content(message.text())
        try:
            if config.security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    config.smtp_host, config.smtp_port, timeout=timeout,
                    context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=timeout)
            with smtp:
                if config.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if config.username:
                    smtp.login(config.username, config.password)
                smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            raise NotificationFailed(f"SMTP: recipients refused: {exc.recipients}", True) from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode(errors="replace") if isinstance(
                exc.smtp_error, bytes) else str(exc.smtp_error)
            raise NotificationFailed(f"SMTP: {exc.smtp_code} {text}", exc.smtp_code >= 500) \
                from None
        except (OSError, smtplib.SMTPException) as exc:
            raise NotificationFailed(
                f"SMTP server {config.smtp_host}:{config.smtp_port}: {type(exc).__name__}: {exc}"
            ) from None


class Webhook(Target):
    kind = "webhook"

    def __init__(self, config: WebhookSettings) -> None:
        self.config = config
        parts = urlsplit(config.url)
        # Chat webhooks carry their token in the path: show the host only.
        self.name = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")

    def wants(self, message: Message) -> bool:
        return _on(self.config.on, message)

    def send(self, message: Message, timeout: float) -> None:
        body = json.dumps(message.payload()).encode()
        headers = {"Content-Type": "application/json", "User-Agent": f"dirt/{__version__}",
                   "X-Dirt-Event": f"record.{message.phase}"}
        if self.config.secret:
            headers["X-Dirt-Signature-256"] = sign(self.config.secret, body)
        try:
            response = requests.post(self.config.url, data=body, headers=headers,
                                     timeout=timeout)
        except requests.RequestException as exc:
            raise NotificationFailed(f"{self.name} does not answer ({type(exc).__name__})") \
                from None
        code = response.status_code
        if code >= 300:
            permanent = 400 <= code < 500 and code not in (408, 429)
            raise NotificationFailed(f"{self.name} answered {code} {response.reason}", permanent)


class GitHubStatus(Target):
    kind = "github"

    def __init__(self, settings: Settings, commit: tuple[str, str]) -> None:
        self.settings = settings.github
        self.name = f"{commit[0]}@{commit[1][:12]}"

    def wants(self, message: Message) -> bool:
        return True

    def send(self, message: Message, timeout: float) -> None:
        status = github.status_for(self.settings, message.record, message.summary,
                                   message.phase == "ended", message.url)
        if status is not None:
            github.post_status(self.settings, status, timeout)


def targets_for(settings: Settings, record: dict[str, Any], message: Message) -> list[Target]:
    """Where a message about `record` goes, as dirt.toml asks."""
    found: list[Target] = []
    if settings.notify.email is not None:
        found.append(Email(settings.notify.email))
    found += [Webhook(hook) for hook in settings.notify.webhooks]
    commit = github.commit_of(record)
    if commit and settings.github.token:
        found.append(GitHubStatus(settings, commit))
    return [t for t in found if t.wants(message)]


def enabled(settings: Settings) -> bool:
    """Whether dirt.toml asks for any notification at all."""
    return bool(settings.notify.email or settings.notify.webhooks or settings.github.token)


# -- what a record's tasks say ------------------------------------------------------------


def phase_of(tasks: list[dict[str, Any]]) -> str | None:
    """ended: every task is final; started: some task runs; else None (nothing to say)."""
    states = [State(t["state"]) for t in tasks]
    if states and all(s in FINAL for s in states):
        return "ended"
    if State.RUNNING in states:
        return "started"
    return None


def progress(tasks: list[dict[str, Any]]) -> int:
    """A number that grows with every write of any of the record's tasks (the sum of their
    revision generations): a claim made on a later reading wins over an earlier one."""
    return sum(int(str(t.get("_rev", "0-")).split("-", 1)[0]) for t in tasks)


def task_line(task: dict[str, Any]) -> dict[str, Any]:
    label = f"{task['name']}@{task['platform']}" + (f":{task['key']}" if task.get("key") else "")
    return {"task": label, "name": task["name"], "platform": task["platform"],
            "key": task.get("key"), "state": task["state"], "reason": task.get("reason") or "",
            "host": task.get("host"), "duration": task.get("duration")}


# -- the notifier -------------------------------------------------------------------------


class Notifier(Listener):
    """Sends what dirt.toml asks for when records start and end, off the master's thread."""

    def __init__(self, couch: Couch, settings: Settings, *, poll_seconds: float = 2.0,
                 workers: int = 4,
                 on_outcome: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.couch = couch
        self.on_outcome = on_outcome  # told each outcome, from a pool thread (metrics)
        self.settings = settings
        self.config = settings.notify
        self.poll_seconds = poll_seconds
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.events: queue.Queue[str] = queue.Queue()
        self.retry: set[str] = set()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dirt-notify")
        self.sending: set[Future] = set()
        self.lock = threading.Lock()
        self.seq: str | int | None = None

    # Listener hooks: called on the master's loop thread, so they only queue.

    def task_started(self, doc: dict[str, Any], waited: float) -> None:
        self.events.put(doc["record"])

    def task_ended(self, doc: dict[str, Any]) -> None:
        self.events.put(doc["record"])

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        """Find the place in the changes feed to read from, and start the notifier's thread
        (with the database down, the thread finds the place once it answers)."""
        try:
            self.seq = self.first_seq()
        except DirtError as exc:
            log.warning("notifier: %s; starting anyway", exc)
        self.thread = threading.Thread(target=self.run, name="dirt-notifier", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Handle what is queued, finish what is being sent (no more waits between tries),
        save the checkpoint."""
        self.stopping.set()
        self.events.put("")  # wakes the thread up
        if self.thread is not None:
            self.thread.join(timeout)
        with self.lock:
            pending = list(self.sending)
        for future in pending:
            try:
                future.result(timeout)
            except Exception as exc:  # a send still hanging after the timeout
                log.warning("notifier: a notification did not finish: %r", exc)
        self.pool.shutdown(wait=False)
        self.save_checkpoint()

    def run(self) -> None:
        next_poll = 0.0
        while not self.stopping.is_set():
            names = set()
            try:
                names.add(self.events.get(timeout=max(0.0, next_poll - time.monotonic())))
                names |= self.drain()
            except queue.Empty:
                pass
            if time.monotonic() >= next_poll:
                names |= self.changed_records()
                next_poll = time.monotonic() + self.poll_seconds
            self.check_all(names - {""})
        self.check_all((self.drain() | self.changed_records()) - {""})

    def first_seq(self) -> str | int:
        """Where the last notifier stopped (the checkpoint), else the database's now."""
        checkpoint = self.couch.get_local(CHECKPOINT) or {}
        return checkpoint.get("seq") or self.couch.info()["update_seq"]

    def drain(self) -> set[str]:
        names = set()
        while True:
            try:
                names.add(self.events.get_nowait())
            except queue.Empty:
                return names

    def changed_records(self) -> set[str]:
        """Records whose tasks changed since the last look (whoever wrote them), and those
        whose check failed before."""
        names = set(self.retry)
        self.retry.clear()
        try:
            if self.seq is None:
                self.seq = self.first_seq()
            while True:
                answer = self.couch.changes(since=self.seq, include_docs=True, limit=500)
                for change in answer["results"]:
                    doc = change.get("doc") or {}
                    if doc.get("type") == "task" and doc.get("state") != State.PENDING.value:
                        names.add(doc["record"])
                self.seq = answer["last_seq"]
                if len(answer["results"]) < 500:
                    return names
        except DirtError as exc:
            log.warning("notifier: changes feed: %s", exc)
            return names

    def save_checkpoint(self) -> None:
        if self.seq is None:
            return
        try:
            self.couch.put_local(CHECKPOINT, {"seq": self.seq, "notifier": self.id})
        except DirtError as exc:
            log.debug("notifier: checkpoint not saved: %s", exc)

    def check_all(self, names: set[str]) -> None:
        for name in sorted(names):
            try:
                self.check(name)
            except DirtError as exc:
                log.warning("record %s: notification deferred: %s", name, exc,
                            extra={"record": name})
                self.retry.add(name)
            except Exception:  # a bug: logged, and the notifier goes on
                log.exception("record %s: notification failed", name, extra={"record": name})
        if names:
            self.save_checkpoint()

    def check(self, name: str) -> None:
        """If the record just started or ended and somebody should hear of it, claim the
        notification and hand the sends to the pool."""
        try:
            record = self.couch.get(record_id(name))
        except NotFound:
            return
        tasks = self.couch.docs_by_prefix(f"task:{name}:")
        phase = phase_of(tasks)
        if phase is None:
            return
        tasks.sort(key=lambda t: (t.get("order", 0), t["_id"]))
        message = Message(
            phase=phase,
            record={k: record.get(k) for k in ("name", "created", "description", "submitter",
                                               "meta")},
            summary=summarize(t["state"] for t in tasks),
            tasks=[task_line(t) for t in tasks],
            url=f"{self.settings.web.base_url}/records/{quote(name, safe='')}",
        )
        targets = targets_for(self.settings, record, message)
        if not targets or not self.claim(record, phase, progress(tasks)):
            return
        log.info("record %s: %s: notifying %s", name, phase,
                 ", ".join(f"{t.kind} {t.name}" for t in targets), extra={"record": name})
        future = self.pool.submit(self.deliver_all, message, targets)
        with self.lock:
            self.sending.add(future)
        future.add_done_callback(self._sent)

    def _sent(self, future: Future) -> None:
        with self.lock:
            self.sending.discard(future)

    def claim(self, record: dict[str, Any], phase: str, mark: int) -> bool:
        """Write `notify` on the record with the `_rev` read: a conflict means somebody else
        wrote it first (another master's notifier): read it again and decide again."""
        for _ in range(10):
            claimed = record.get("notify") or {}
            if claimed.get("mark", -1) >= mark or (
                phase == "started" and claimed.get("phase") == "started"
            ):
                return False
            record["notify"] = {"phase": phase, "mark": mark, "by": self.id, "at": now_iso()}
            try:
                self.couch.put(record)
                return True
            except Conflict:
                record = self.couch.get(record["_id"])
        return False

    # -- sending (pool threads) ---------------------------------------------------------

    def deliver_all(self, message: Message, targets: list[Target]) -> None:
        entries = [self.deliver(target, message) for target in targets]
        for entry in entries:
            self.tell(entry)
        self.remember(message.name, entries)

    def tell(self, entry: dict[str, Any]) -> None:
        if self.on_outcome is None:
            return
        try:
            self.on_outcome(entry)
        except Exception:  # a bug in a listener: logged, never fatal
            log.exception("notifier: telling an outcome failed")

    def deliver(self, target: Target, message: Message) -> dict[str, Any]:
        """Send, trying again with capped exponential backoff; the outcome as an entry."""
        config = self.config
        delay, error, attempt = config.backoff_seconds, "", 0
        for attempt in range(1, max(1, config.attempts) + 1):
            try:
                target.send(message, config.timeout_seconds)
                return notification_entry(target.kind, target.name, message.phase, True, attempt)
            except NotificationFailed as exc:
                error = str(exc)
                if exc.permanent:
                    break
            except Exception as exc:  # a bug in a sender: recorded, never fatal
                log.exception("record %s: %s %s failed", message.name, target.kind, target.name)
                error = f"{type(exc).__name__}: {exc}"
            if attempt < config.attempts:
                if self.stopping.wait(delay):
                    error += " (stopped before trying again)"
                    break
                delay = min(delay * 2, config.max_backoff_seconds)
        log.warning("record %s: %s to %s failed after %d attempts: %s", message.name,
                    target.kind, target.name, attempt, error, extra={"record": message.name})
        return notification_entry(target.kind, target.name, message.phase, False, attempt, error)

    def remember(self, name: str, entries: list[dict[str, Any]]) -> None:
        """Append the outcomes to the record's `notifications` (a conflict: read, add again)."""
        for _ in range(10):
            try:
                record = self.couch.get(record_id(name))
                record["notifications"] = [*(record.get("notifications") or []),
                                           *entries][-KEEP_NOTIFICATIONS:]
                self.couch.put(record)
                return
            except Conflict:
                continue
            except DirtError as exc:
                log.warning("record %s: notification outcome not written: %s", name, exc,
                            extra={"record": name})
                return
