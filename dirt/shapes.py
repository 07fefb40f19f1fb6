"""Typed shapes of what crosses into the master: task and host documents read from the
database, the facts a host reports, and what a host says about a task it runs.

The database and the hosts are outside the master's trust (design.md). Each document or
message is parsed once, where it comes in, into one of these frozen shapes; what does not
parse raises `Malformed`, naming every field that is wrong, and the master sets that one thing
aside (a task ends `error`, a host is not used) and goes on. Behind this boundary the master's
decisions read typed fields (a task's attempts, lease and requirements; a host's platform,
labels and SSH destination) and never meet a list where a string should be.

The documents themselves stay the master's to change and write back (documents.py builds
them); a shape is what the master may rely on about the revision it read.
"""

from __future__ import annotations

import base64
import binascii
import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dirt.documents import LABEL_RE, NAME_RE, State, parse_iso
from dirt.errors import Malformed
from dirt.scheduler import FACTS, PendingTask

MAX_REASON = 300  # characters of a value shown in a reason
MAX_ARTIFACT_NAME = 1000
CONTENT_TYPE_RE = re.compile(r"[A-Za-z0-9][\w.+-]{0,63}/[\w.+-]{1,127}(;[ -~]{0,200})?")
SSH_DESTINATION_RE = re.compile(r"([A-Za-z0-9._-]+@)?[A-Za-z0-9._:-]+")
PATH_RE = re.compile(r"[^\s\x00-\x1f\x7f]+")  # one word, no control characters
# a host's python is a command (it may be `env VAR=1 python3`): one line, printable
COMMAND_RE = re.compile(r"[^\x00-\x1f\x7f]+")


def shown(value: Any) -> str:
    """A value as a reason quotes it: repr, one line, capped."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- fields -------------------------------------------------------------------------------
# Each reads one field of a document (missing: None) and returns it typed, or raises
# _Wrong with what is wrong; parse() below collects them per document.


class _Wrong(Exception):
    pass


def _name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise _Wrong(f"must be a name (letters, digits, '.', '_', '-'), not {shown(value)}")
    return value


def _optional_name(value: Any) -> str | None:
    return None if value is None else _name(value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Wrong(f"must be a string, not {shown(value)}")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _time(value: Any) -> str | None:
    """An ISO time (`2024-05-01T12:00:00.000Z`), or None."""
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        parse_iso(value)
    except ValueError:
        raise _Wrong(f"must be an ISO time, not {shown(value)}") from None
    return value


def _integer(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Wrong(f"must be a whole number, not {shown(value)}")
    return value


def _optional_number(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _Wrong(f"must be a number, not {shown(value)}")
    return float(value)


def _mapping(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Wrong(f"must be an object, not {shown(value)}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Wrong(f"must be a list of strings, not {shown(value)}")
    return tuple(value)


def _labels(value: Any) -> tuple[str, ...]:
    labels = _strings(value)
    bad = [label for label in labels if not LABEL_RE.fullmatch(label)]
    if bad:
        raise _Wrong(f"holds an invalid label {shown(bad[0])}")
    return labels


def _list_of(item: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def read(value: Any) -> tuple[Any, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise _Wrong(f"must be a list, not {shown(value)}")
        out = []
        for i, entry in enumerate(value):
            try:
                out.append(item(entry))
            except _Wrong as exc:
                raise _Wrong(_at(f"[{i}]", str(exc))) from None
        return tuple(out)

    return read


def _object(
    fields: dict[str, Callable[[Any], Any]], build: Callable[..., Any]
) -> Callable[[Any], Any]:
    """A nested object whose `fields` are read like a document's."""

    def read(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Wrong(f"must be an object, not {shown(value)}")
        read_fields, wrong = _read(value, fields)
        if wrong:
            raise _Wrong("; ".join(_at(f".{name}", why) for name, why in wrong.items()))
        return build(**read_fields)

    return read


def _read(
    doc: dict[str, Any], fields: dict[str, Callable[[Any], Any]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Every field of `doc` read; the fields that are wrong, with why."""
    values, wrong = {}, {}
    for name, read in fields.items():
        try:
            values[name] = read(doc.get(name))
        except _Wrong as exc:
            wrong[name] = str(exc)
    return values, wrong


def _at(where: str, why: str) -> str:
    """`requires must be ...`, `ssh.port must be ...`, `attempts[0].host must be ...`."""
    return where + ("" if why[:1] in (".", "[") else " ") + why


def _malformed(what: str, wrong: dict[str, str]) -> Malformed:
    reason = "; ".join(_at(name, why) for name, why in wrong.items())
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 3] + "..."
    return Malformed(f"malformed {what}: {reason}", tuple(wrong))


# -- tasks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One run of a task on a host (documents.start_attempt)."""

    host: str | None = None
    master: str | None = None
    started: str | None = None
    ended: str | None = None
    outcome: str | None = None
    reason: str = ""


ATTEMPT_FIELDS: dict[str, Callable[[Any], Any]] = {
    "host": _optional_name,
    "master": _optional_text,
    "started": _time,
    "ended": _time,
    "outcome": _optional_text,
    "reason": _text,
}


@dataclass(frozen=True)
class Change:
    """One line of a task's history: the state it moved to, and when."""

    state: str
    at: str | None = None


@dataclass(frozen=True)
class Task:
    """A task document as the master reads it."""

    id: str
    rev: str | None
    record: str
    name: str
    platform: str
    key: str | None
    state: State
    record_created: str
    order: int
    requires: tuple[str, ...]
    args: dict[str, Any]
    attempts: tuple[Attempt, ...]
    history: tuple[Change, ...]
    lease_until: float | None
    started: str | None

    @property
    def last_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def pending_task(self) -> PendingTask:
        """What the scheduler sees of it."""
        return PendingTask(
            id=self.id,
            record_created=self.record_created,
            record=self.record,
            order=self.order,
            name=self.name,
            platform=self.platform,
            requires=self.requires,
            avoid=tuple(a.host for a in self.attempts if a.outcome == "lost" and a.host),
        )

    def waited(self) -> float:
        """Seconds from when it last became pending to when it started."""
        pending = [c.at for c in self.history if c.state == State.PENDING.value and c.at]
        if not pending or not self.started:
            return 0.0
        return max(0.0, parse_iso(self.started) - parse_iso(pending[-1]))


def _state(value: Any) -> State:
    try:
        return State(value)
    except (ValueError, TypeError):
        raise _Wrong(f"must be one of {', '.join(State)}, not {shown(value)}") from None


# The fields a task document must have right, and what a set-aside task gets instead of a
# wrong one (see repaired()); the ones without a default name the document itself.
TASK_FIELDS: dict[str, Callable[[Any], Any]] = {
    "record": _name,
    "name": _name,
    "platform": _name,
    "key": _optional_name,
    "state": _state,
    "record_created": _text,
    "order": _integer,
    "requires": _strings,
    "args": _mapping,
    "attempts": _list_of(_object(ATTEMPT_FIELDS, Attempt)),
    "history": _list_of(_object({"state": _text, "at": _time}, Change)),
    "lease_until": _optional_number,
    "started": _time,
}
TASK_DEFAULTS: dict[str, Any] = {
    "record_created": "",
    "order": 0,
    "requires": [],
    "args": {},
    "attempts": [],
    "history": [],
    "lease_until": None,
    "started": None,
}


def parse_task(doc: dict[str, Any]) -> Task:
    """The task document `doc` as the master reads it; Malformed names every wrong field."""
    values, wrong = _read(doc, TASK_FIELDS)
    if wrong:
        raise _malformed("document", wrong)
    return Task(id=doc["_id"], rev=doc.get("_rev"), **values)


def repaired(doc: dict[str, Any], error: Malformed) -> dict[str, Any] | None:
    """A copy of a malformed task document with each wrong field at its default, to be
    written ended `error`; None when a wrong field is one that names the task."""
    if any(name not in TASK_DEFAULTS for name in error.fields):
        return None
    fixed = dict(doc)
    for name in error.fields:
        fixed[name] = copy.deepcopy(TASK_DEFAULTS[name])
    return fixed


def task_state(doc: dict[str, Any]) -> State | None:
    """The state of a task document, or None when it has none dirt knows."""
    try:
        return State(doc.get("state"))
    except ValueError:
        return None


# -- hosts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ssh:
    """How an SSH host is reached (documents.new_host)."""

    destination: str
    port: int | None = None
    key: str | None = None
    python: str | None = None


def _destination(value: Any) -> str:
    if (
        not isinstance(value, str)
        or value.startswith("-")
        or not SSH_DESTINATION_RE.fullmatch(value)
    ):
        raise _Wrong(f"must be user@host, not {shown(value)}")
    return value


def _port(value: Any) -> int | None:
    if value is None:
        return None
    port = _integer(value)
    if not 0 < port < 65536:
        raise _Wrong(f"must be between 1 and 65535, not {shown(value)}")
    return port


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[Any], str | None]:
    def read(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _Wrong(f"must be {what}, not {shown(value)}")
        return value

    return read


SSH_FIELDS: dict[str, Callable[[Any], Any]] = {
    "destination": _destination,
    "port": _port,
    "key": _matching(PATH_RE, "a path without spaces"),
    "python": _matching(COMMAND_RE, "a command on one line"),
}


def _optional(read: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else read(value)


def _slots(value: Any) -> int | None:
    if value is None:
        return None
    slots = _integer(value)
    if slots < 1:
        raise _Wrong(f"must be at least 1, not {shown(value)}")
    return slots


def _flag(value: Any) -> bool:
    if value is not None and not isinstance(value, bool):
        raise _Wrong(f"must be true or false, not {shown(value)}")
    return bool(value)


def parse_facts(value: Any) -> dict[str, str | int | float | None]:
    """What a host reported about itself (remote.FACTS_SOURCE): the known facts, each a
    string or a number. Malformed otherwise: facts come from a host, outside our trust."""
    try:
        return _facts(value)
    except _Wrong as exc:
        raise Malformed(f"malformed facts: {exc}") from None


def _facts(value: Any) -> dict[str, str | int | float | None]:
    facts = _mapping(value)
    out: dict[str, Any] = {}
    for name in FACTS:
        fact = facts.get(name)
        if fact is not None and (not isinstance(fact, str | int | float) or isinstance(fact, bool)):
            raise _Wrong(f"{name} must be a string or a number, not {shown(fact)}")
        out[name] = fact
    return {name: fact for name, fact in out.items() if fact is not None}


@dataclass(frozen=True)
class Host:
    """A host document as the master reads it."""

    name: str
    platform: str
    labels: tuple[str, ...]
    ssh: Ssh | None
    local: dict[str, Any] | None
    slots: int | None
    enabled: bool
    facts: dict[str, Any]
    last_seen_ts: float | None

    @property
    def slot_count(self) -> int:
        return slot_count(self.slots, self.facts)


def slot_count(slots: int | None, facts: dict[str, Any]) -> int:
    """How many tasks a host runs at once: its slots, else its CPU count, else 1."""
    cpus = facts.get("cpus")
    return slots or (cpus if isinstance(cpus, int) and cpus > 0 else 1)


HOST_FIELDS: dict[str, Callable[[Any], Any]] = {
    "name": _name,
    "platform": _name,
    "labels": _labels,
    "ssh": _optional(_object(SSH_FIELDS, Ssh)),
    "local": _optional(
        _object(
            {"python": _matching(COMMAND_RE, "a command on one line")},
            lambda python: {"python": python},
        )
    ),
    "slots": _slots,
    "enabled": _flag,
    "facts": _facts,
    "last_seen_ts": _optional_number,
}


def parse_host(doc: dict[str, Any]) -> Host:
    """The host document `doc` as the master reads it; Malformed names every wrong field."""
    values, wrong = _read(doc, HOST_FIELDS)
    if not wrong and (values["ssh"] is None) == (values["local"] is None):
        wrong["ssh"] = "or local: a host is reached one way, by ssh or locally"
    if wrong:
        raise _malformed("document", wrong)
    return Host(**values)


# -- documents as pages show them ---------------------------------------------------------

SHOWN_TASK: dict[str, Callable[[Any], Any]] = {
    **TASK_FIELDS,
    "host": _optional_text,
    "ended": _time,
    "created": _time,
    "duration": _optional_number,
    "reason": _text,
    "result": _optional(_mapping),
}
SHOWN_TASK_DEFAULTS: dict[str, Any] = {
    **TASK_DEFAULTS,
    "state": State.ERROR.value,
    "key": None,
    "host": None,
    "ended": None,
    "created": None,
    "duration": None,
    "reason": "",
    "result": None,
}
SHOWN_HOST: dict[str, Callable[[Any], Any]] = {
    **HOST_FIELDS,
    "alive": _optional(_flag),
    "reason": _text,
    "last_seen": _time,
}
SHOWN_HOST_DEFAULTS: dict[str, Any] = {
    "labels": [],
    "ssh": None,
    "local": None,
    "slots": None,
    "enabled": False,
    "facts": {},
    "last_seen_ts": None,
    "alive": False,
    "reason": "",
    "last_seen": None,
}


def readable_task(doc: dict[str, Any]) -> dict[str, Any]:
    """A task document as pages, the API and the CLI show it: itself when well formed, else
    a copy with each wrong field at a harmless default and `malformed` saying what was wrong
    (the master ends such a task `error` when it is active)."""
    return _readable(doc, SHOWN_TASK, SHOWN_TASK_DEFAULTS)


def readable_host(doc: dict[str, Any]) -> dict[str, Any]:
    """A host document as pages and the CLI show it (see readable_task)."""
    return _readable(doc, SHOWN_HOST, SHOWN_HOST_DEFAULTS)


def _readable(
    doc: dict[str, Any], fields: dict[str, Callable[[Any], Any]], defaults: dict[str, Any]
) -> dict[str, Any]:
    _, wrong = _read(doc, fields)
    if not wrong:
        return doc
    shown = dict(doc)
    for name in wrong:
        # a wrong name is still shown, as text: the document's id names it anyway
        shown[name] = copy.deepcopy(defaults[name]) if name in defaults else str(doc.get(name))
    shown["malformed"] = str(_malformed("document", wrong))
    return shown


# -- what a host says about a task --------------------------------------------------------


@dataclass(frozen=True)
class Started:
    pid: int


@dataclass(frozen=True)
class Log:
    text: str


@dataclass(frozen=True)
class Artifact:
    name: str  # encoded: see artifact_name()
    data: bytes
    content_type: str


@dataclass(frozen=True)
class Ended:
    """How the attempt ended: result (what execute returned), error (a traceback), timeout
    (seconds), lost (why)."""

    kind: str
    payload: Any


Message = Started | Log | Artifact | Ended
ARITY = {"started": 2, "log": 2, "attach": 4, "result": 2, "error": 2, "timeout": 2, "lost": 2}


def parse_message(message: Any) -> Message:
    """A message from a host's runner (remote_runner.py), checked field by field."""
    if not isinstance(message, tuple | list) or not message:
        raise Malformed(f"malformed message: want [kind, ...], not {shown(message)}")
    kind = message[0]
    if not isinstance(kind, str) or kind not in ARITY:
        raise Malformed(f"malformed message: unknown kind {shown(kind)}")
    if len(message) != ARITY[kind]:
        raise Malformed(
            f"malformed message: {kind} takes {ARITY[kind] - 1} values, not {shown(list(message))}"
        )
    try:
        return _MESSAGES[kind](*message[1:])
    except _Wrong as exc:
        raise Malformed(f"malformed message: {kind}: {exc}") from None


def _started(pid: Any) -> Started:
    pid = _integer(pid)
    if pid < 0:
        raise _Wrong(f"pid must not be negative, not {pid}")
    return Started(pid)


def _attach(name: Any, data: Any, content_type: Any) -> Artifact:
    if not isinstance(data, str):
        raise _Wrong(f"data must be base64 text, not {shown(data)}")
    try:
        body = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _Wrong(f"data is not base64: {shown(data)}") from None
    if not isinstance(content_type, str) or not CONTENT_TYPE_RE.fullmatch(content_type):
        raise _Wrong(f"content type must be like text/plain, not {shown(content_type)}")
    return Artifact(artifact_name(name), body, content_type)


def _text_of(value: Any) -> str:
    if not isinstance(value, str | bytes):
        raise _Wrong(f"must be text, not {shown(value)}")
    return plain(value)


def _seconds(value: Any) -> float:
    seconds = _optional_number(value)
    if seconds is None:
        raise _Wrong("timeout must be a number of seconds, not None")
    return seconds


_MESSAGES: dict[str, Callable[..., Message]] = {
    "started": _started,
    "log": lambda text: Log(_text_of(text)),
    "attach": _attach,
    "result": lambda payload: Ended("result", plain(payload)),
    "error": lambda text: Ended("error", _text_of(text)),
    "timeout": lambda seconds: Ended("timeout", _seconds(seconds)),
    "lost": lambda reason: Ended("lost", _text_of(reason)),
}


def parse_ending(message: Any) -> Ended:
    """How an attempt ended, as a host kept it (remote_runner.collect)."""
    ended = parse_message(message)
    if not isinstance(ended, Ended):
        raise Malformed(f"malformed outcome: {shown(message)}")
    return ended


def plain(value: Any) -> Any:
    """A value from a host as JSON can store it: text that is not UTF-8 (bytes, lone
    surrogates) with its bad parts replaced, numbers finite, containers as lists and objects
    with string keys. What JSON has no type for becomes its repr."""
    if isinstance(value, str):
        return value if _is_utf8(value) else _replace_surrogates(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {
            plain(k) if isinstance(k, str | bytes) else repr(k): plain(v) for k, v in value.items()
        }
    return repr(value)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _replace_surrogates(text: str) -> str:
    return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def artifact_name(raw: Any) -> str:
    """The attachment name an artifact is stored under, for any file name: bytes that are not
    UTF-8, '%', control characters and a leading '_' (CouchDB reserves it) are written %XX;
    everything else is kept, so `report.html` stays `report.html` and `_cov.xml` is
    `%5Fcov.xml`."""
    if isinstance(raw, str):
        data = (
            raw.encode("utf-8", "surrogateescape")
            if all(
                ord(ch) < 0xD800 or ord(ch) > 0xDFFF or 0xDC80 <= ord(ch) <= 0xDCFF for ch in raw
            )
            else raw.encode("utf-8", "surrogatepass")
        )
    elif isinstance(raw, bytes):
        data = raw
    else:
        raise _Wrong(f"name must be text, not {shown(raw)}")
    if not data:
        raise _Wrong("name is empty")
    out = []
    for i, ch in enumerate(data.decode("utf-8", "surrogateescape")):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"%{code - 0xDC00:02X}")
        elif ch == "%" or code < 0x20 or 0x7F <= code < 0xA0 or (i == 0 and ch == "_"):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    name = "".join(out)
    if len(name) > MAX_ARTIFACT_NAME:
        raise _Wrong(f"name is longer than {MAX_ARTIFACT_NAME} characters")
    return name


__all__ = [
    "Attempt",
    "Task",
    "Host",
    "Ssh",
    "Started",
    "Log",
    "Artifact",
    "Ended",
    "Message",
    "parse_task",
    "parse_host",
    "parse_facts",
    "parse_message",
    "parse_ending",
    "repaired",
    "task_state",
    "artifact_name",
    "plain",
    "readable_task",
    "readable_host",
]
