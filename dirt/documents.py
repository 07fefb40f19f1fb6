"""The shapes of dirt's documents (record, task, host), the task state machine, and summaries.

Every part of dirt (CLI, master, web) builds and reads documents through this module; the
CouchApp's validate_doc_update checks the same shapes on the server.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from dirt.errors import InvalidHost, InvalidRecord

# \Z, not $: Python's $ also matches before a trailing newline ("k\n" would pass)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# an ssh destination, [user@]host: neither part may start with '-' (ssh would read an option)
SSH_RE = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9._-]*@)?[A-Za-z0-9:][A-Za-z0-9._:-]*\Z")


class State(StrEnum):
    """The life of a task: pending -> running -> success | failed | error."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"  # the code under test failed
    ERROR = "error"  # dirt or the task itself crashed, timed out, or ran out of attempts
    UNSCHEDULABLE = "unschedulable"  # no host can ever run it (reason says why)
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


FINAL = frozenset({State.SUCCESS, State.FAILED, State.ERROR, State.UNSCHEDULABLE, State.CANCELLED})
ACTIVE = frozenset({State.PENDING, State.RUNNING})
# The order in which a record's overall state is decided: the first present wins.
OVERALL_ORDER = [
    State.RUNNING,
    State.PENDING,
    State.ERROR,
    State.FAILED,
    State.UNSCHEDULABLE,
    State.CANCELLED,
    State.SUCCESS,
]


def now_iso(ts: float | None = None) -> str:
    moment = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- ids ----------------------------------------------------------------------------------------


def record_id(name: str) -> str:
    return f"record:{name}"


def task_id(record: str, task: str, platform: str, key: str | None = None) -> str:
    """`task:<record>:<task>:<platform>`, plus `:<key>` when one record runs a task module
    several times on one platform (one per input of a data set, say)."""
    base = f"task:{record}:{task}:{platform}"
    return f"{base}:{key}" if key else base


def host_id(name: str) -> str:
    return f"host:{name}"


def hook_id(source: str, delivery: str) -> str:
    """`hook:<source>:<delivery>`: one webhook delivery (source github or generic)."""
    return f"hook:{source}:{delivery}"


# -- records and tasks --------------------------------------------------------------------------


def check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidRecord(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-' (max 128)"
        )
    return name


# What a document's free-form values (a record's meta, a task's args) may hold.
MAX_DEPTH = 32
MAX_VALUES = 100_000
MAX_SAFE_INT = 2**53  # beyond it a JSON number loses digits in JavaScript (PouchDB, views)


def check_json(where: str, value: Any) -> Any:
    """`value` as it is, when JSON holds it exactly: mappings with string keys, lists,
    strings, booleans, null, finite numbers. What YAML also makes (a date, NaN, a set) or
    what would lose digits, nest without end or expand without end (aliases) is refused
    with InvalidRecord naming where it is."""
    stack, seen = [(where, value, 0)], 0
    while stack:
        path, item, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise InvalidRecord(f"{where}: more than {MAX_VALUES} values")
        if depth > MAX_DEPTH:
            raise InvalidRecord(f"{path}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise InvalidRecord(f"{path}: the key {key!r} is not a string (quote it)")
                stack.append((f"{path}.{key}", inner, depth + 1))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", inner, depth + 1) for i, inner in enumerate(item))
        else:
            _check_scalar(path, item)
    return value


def _check_scalar(path: str, item: Any) -> None:
    if item is None or isinstance(item, bool):
        return
    if isinstance(item, str):
        check_text(path, item)
    elif isinstance(item, int):
        if abs(item) > MAX_SAFE_INT:
            raise InvalidRecord(f"{path}: {item} has more digits than a JSON number keeps "
                                "(quote it)")
    elif isinstance(item, float):
        if not math.isfinite(item):
            raise InvalidRecord(f"{path}: {item!r} is not a number JSON can hold")
    elif isinstance(item, date):  # YAML reads 2024-01-01 as a date
        raise InvalidRecord(f"{path}: {item.isoformat()} is a {type(item).__name__}, not a "
                            f"JSON value: quote it ('{item.isoformat()}')")
    else:
        raise InvalidRecord(f"{path}: a {type(item).__name__} is not a JSON value")


def check_text(where: str, text: Any) -> str:
    """A string that is valid Unicode (a file name or argument that was not UTF-8 arrives
    with lone surrogates, which no database stores)."""
    if not isinstance(text, str):
        raise InvalidRecord(f"{where} must be a string, not {type(text).__name__} {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecord(f"{where}: not valid UTF-8 text: {text!r}") from None
    return text


ANY_KEY = "*"


@dataclass(frozen=True)
class TaskSpec:
    """What names tasks of a record: `name[@platform][:key]`, the same in every command, the
    API and the page URLs. A part left out: any platform; no key means the task without one,
    and `:*` every key."""

    name: str
    platform: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        return self.name + (f"@{self.platform}" if self.platform else "") + (
            f":{self.key}" if self.key else "")

    def matches(self, task: dict[str, Any]) -> bool:
        return (task.get("name") == self.name
                and self.platform in (None, task.get("platform"))
                and (self.key == ANY_KEY or (task.get("key") or None) == self.key))


def parse_task_spec(spec: str) -> TaskSpec:
    """`name`, `name@platform`, `name:key`, `name@platform:key` (`:*`: every key)."""
    if not isinstance(spec, str):
        raise InvalidRecord(f"a task is named name[@platform][:key], not {spec!r}")
    rest, colon, key = spec.partition(":")
    name, _, platform = rest.partition("@")
    check_name("task", name)
    if platform:
        check_name("platform", platform)
    if colon and key != ANY_KEY:
        check_name("task key", key)
    return TaskSpec(name, platform or None, key if colon else None)


def task_spec(task: dict[str, Any]) -> str:
    """A task's full spec, `name@platform[:key]`: how it is named everywhere."""
    return str(TaskSpec(task["name"], task["platform"], task.get("key") or None))


def new_record(
    name: str,
    *,
    description: str = "",
    submitter: str = "",
    meta: dict[str, Any] | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    check_name("record", name)
    if meta is not None and not isinstance(meta, dict):
        raise InvalidRecord("record meta must be a mapping of names to values")
    return {
        "_id": record_id(name),
        "type": "record",
        "name": name,
        "created": created or now_iso(),
        "description": check_text("record description", str(description or "")),
        "submitter": check_text("record submitter", str(submitter or "")),
        "meta": check_json("meta", dict(meta or {})),
    }


def new_task(
    record: dict[str, Any],
    name: str,
    platform: str,
    order: int,
    *,
    args: dict[str, Any] | None = None,
    requires: list[str] | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    check_name("task", name)
    check_name("platform", platform)
    if key is not None:
        check_name("task key", key)
    if args is not None and not isinstance(args, dict):
        raise InvalidRecord(f"task {name}: args must be a mapping")
    check_json(f"task {name}: args", args or {})
    return {
        "_id": task_id(record["name"], name, platform, key),
        "type": "task",
        "key": key,
        "record": record["name"],
        "record_created": record["created"],
        "order": order,
        "name": name,
        "platform": platform,
        "requires": list(requires or []),
        "args": dict(args or {}),
        "state": State.PENDING.value,
        "attempts": [],
        "host": None,
        "lease_until": None,
        "created": record["created"],
        "started": None,
        "ended": None,
        "duration": None,
        "reason": "",
        "result": None,
        "history": [{"state": State.PENDING.value, "at": record["created"]}],
    }


def set_state(task: dict[str, Any], state: State, reason: str = "", at: str | None = None) -> None:
    """Move a task document to `state`, keeping a timestamped trail of every change."""
    at = at or now_iso()
    task["state"] = state.value
    task["reason"] = reason
    task.setdefault("history", []).append({"state": state.value, "at": at, "reason": reason})


def start_attempt(task: dict[str, Any], host: str, master: str, at: str,
                  lease_until: float) -> None:
    """Claim `task` for `host`: a new attempt, state running, a lease. New lists, so a
    shallow copy of a document can be changed without touching the original."""
    task["attempts"] = [*task.get("attempts", []), {
        "host": host, "master": master, "started": at, "ended": None,
        "outcome": None, "reason": "",
    }]
    task["history"] = list(task.get("history", []))
    task.update(host=host, started=at, ended=None, duration=None, lease_until=lease_until)
    set_state(task, State.RUNNING, "", at)


def end_task(task: dict[str, Any], state: State, reason: str, result: dict[str, Any] | None,
             at: str, duration: float | None = None, note: str = "") -> None:
    """The task's final state, reason and result, from how its last attempt ended."""
    attempt = task["attempts"][-1]
    attempt.update(ended=at, outcome=state.value, reason=reason)
    if note:
        attempt["note"] = note
    if duration is None and attempt.get("started"):
        duration = parse_iso(at) - parse_iso(attempt["started"])
    task.update(ended=at, lease_until=None, result=result,
                duration=round(duration, 3) if duration is not None else None)
    set_state(task, state, reason, at)


def end_error(task: dict[str, Any], reason: str, at: str | None = None) -> None:
    """End a task `error` with `reason` whatever state it is in (dirt could not go on with
    it: its document is malformed, or the database refused it). An attempt that ran, or had
    its outcome refused, ends `error` too."""
    at = at or now_iso()
    result = {"success": False, "reason": reason}
    attempts = task.get("attempts") or []
    if attempts and task.get("state") != State.PENDING.value:
        attempts[-1].update(ended=attempts[-1].get("ended") or at, outcome=State.ERROR.value,
                            reason=reason)
    task.update(ended=at, lease_until=None, result=result)
    set_state(task, State.ERROR, reason, at)


def rev_gen(doc: dict[str, Any]) -> int:
    """The generation of a document's `_rev` (0 for one never written): which of two
    copies is newer."""
    rev = doc.get("_rev") or "0-"
    return int(rev.split("-", 1)[0])


def attempt_id(task: dict[str, Any]) -> str:
    """What names the task's last attempt everywhere, also across databases and re-created
    records: its number, the master that claimed it and when (hosts keep outcomes by it)."""
    attempts = task.get("attempts") or []
    last = attempts[-1] if attempts else {}
    return f"{task['_id']}:{len(attempts)}:{last.get('master')}:{last.get('started')}"


EARLIER_KEPT = 20  # ended runs a task keeps across re-runs


def reset_task(task: dict[str, Any], reason: str = "re-run requested") -> None:
    """Make a task pending again for a re-run. Its ended run (state, reason, result, host,
    times) moves to `earlier`, newest last, so a re-run never hides what the task did before;
    its attempts are kept too."""
    if task.get("state") in FINAL:
        run = {k: task.get(k) for k in ("state", "reason", "result", "host", "started",
                                         "ended", "duration")}
        run.update(attempts=len(task.get("attempts") or []), rerun_at=now_iso())
        task["earlier"] = [*(task.get("earlier") or []), run][-EARLIER_KEPT:]
    for key in ("host", "lease_until", "started", "ended", "duration", "result"):
        task[key] = None
    set_state(task, State.PENDING, reason)


def task_row(task: dict[str, Any]) -> dict[str, Any]:
    """A task as tables and `dirt status --json` show it (the tasks_by_record view's shape,
    plus its id and spec)."""
    return {
        "id": task["_id"], "name": task["name"], "key": task.get("key") or None,
        "spec": task_spec(task), "platform": task["platform"], "state": task["state"],
        "host": task.get("host"), "duration": task.get("duration"),
        "reason": task.get("reason") or "", "attempts": len(task.get("attempts") or []),
        "started": task.get("started"), "ended": task.get("ended"),
    }


# Tables list what needs a look first: failed and error tasks, then the rest in task order.
ATTENTION = (State.FAILED.value, State.ERROR.value)


def attention_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: row["state"] not in ATTENTION)


# -- artifacts ----------------------------------------------------------------------------------

# Content types a browser shows without running anything in them. The database serves a task's
# files from its own origin, where a script could read and write everything (the CouchApp links
# them), so an artifact of any other type is stored as text/plain (text a browser could run:
# HTML, SVG, XML, scripts) or application/octet-stream (anything else, a download), and the type
# the task declared is kept in the task's `artifact_types`. validate_doc_update refuses other
# types for every writer (tests/test_documents.py checks that its list is this one).
SAFE_TYPES = ("text/plain", "application/json", "application/octet-stream", "image/png",
              "image/jpeg", "image/gif", "image/webp")
SCRIPTABLE_TEXT = ("/xml", "+xml", "/javascript", "/ecmascript", "/xslt")
CHARSET_RE = re.compile(r"charset=\"?([A-Za-z0-9._:-]{1,40})\"?", re.IGNORECASE)
MAX_TYPE_CHARS = 200


def essence(content_type: str) -> str:
    """A content type without its parameters, in lower case: "text/html"."""
    return content_type.partition(";")[0].strip().lower()


def stored_type(declared: str) -> str:
    """The content type an artifact declared as `declared` is stored with: one of SAFE_TYPES
    (with its charset, if it named one), so that opened from the database it never runs."""
    kind = essence(declared)
    if kind not in SAFE_TYPES:
        text = kind.startswith("text/") or kind.endswith(SCRIPTABLE_TEXT)
        kind = "text/plain" if text else "application/octet-stream"
    charset = CHARSET_RE.search(declared.partition(";")[2])
    if charset and kind in ("text/plain", "application/json"):
        return f"{kind}; charset={charset.group(1)}"
    return kind


def store_artifact_type(task: dict[str, Any], name: str, declared: str) -> str:
    """The content type to store artifact `name` with; the declared one is kept in the task's
    `artifact_types` when it differs (and forgotten when a new artifact of that name does not)."""
    declared = str(declared)[:MAX_TYPE_CHARS]
    stored = stored_type(declared)
    kept = {k: v for k, v in (task.get("artifact_types") or {}).items() if k != name}
    if essence(stored) != essence(declared):
        kept[name] = declared
    if kept or "artifact_types" in task:
        task["artifact_types"] = kept
    return stored


def declared_type(task: dict[str, Any], name: str) -> str:
    """The content type the task declared for its file `name` (the database may serve a safer
    one)."""
    declared = (task.get("artifact_types") or {}).get(name)
    return declared or ((task.get("_attachments") or {}).get(name) or {}).get("content_type") or ""


# -- hosts --------------------------------------------------------------------------------------


def new_host(
    name: str,
    platform: str,
    *,
    local: bool = False,
    ssh: str | None = None,
    port: int | None = None,
    key: str | None = None,
    python: str | None = None,
    slots: int | None = None,
    labels: Iterable[str] = (),
) -> dict[str, Any]:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidHost(f"invalid host name {name!r}: use letters, digits, '.', '_' and '-'")
    if not platform:
        raise InvalidHost(f"host {name}: a platform is required (--platform=<p>)")
    if not isinstance(platform, str) or not NAME_RE.match(platform):
        raise InvalidHost(f"host {name}: invalid platform {platform!r}")
    if local == bool(ssh):
        raise InvalidHost(f"host {name}: give exactly one of --local and --ssh=<user@host>")
    if ssh and not SSH_RE.match(ssh):
        raise InvalidHost(f"host {name}: invalid --ssh destination {ssh!r}, want user@host "
                          "(letters, digits, '.', '_', '-', neither part starting with '-')")
    if slots is not None and slots < 1:
        raise InvalidHost(f"host {name}: --slots must be at least 1")
    if port is not None and not 0 < port < 65536:
        raise InvalidHost(f"host {name}: --port must be between 1 and 65535")
    for label in labels:
        if not LABEL_RE.match(label):
            raise InvalidHost(f"host {name}: invalid label {label!r}")
    return {
        "_id": host_id(name),
        "type": "host",
        "name": name,
        "platform": platform,
        "labels": sorted(set(labels)),
        "ssh": None
        if local
        else {"destination": ssh, "port": port, "key": key, "python": python or "python3"},
        "local": {"python": python} if local else None,
        "slots": slots,
        "enabled": True,
        "alive": None,
        "last_seen": None,
        "reason": "",
        "facts": {},
        "created": now_iso(),
    }


def effective_slots(host: dict[str, Any]) -> tuple[int | None, str]:
    """How many tasks a host runs at once, and where that number comes from: its `slots`
    ("slots"), else the CPU count its last check found ("cpus"), else (None, "unknown")
    until a check has found it."""
    if host.get("slots"):
        return int(host["slots"]), "slots"
    cpus = (host.get("facts") or {}).get("cpus")
    if isinstance(cpus, int) and cpus >= 1:
        return cpus, "cpus"
    return None, "unknown"


def host_slots(host: dict[str, Any]) -> int:
    """How many tasks a host runs at once: its `slots`, else its CPU count, else 1."""
    return effective_slots(host)[0] or 1


def set_health(host: dict[str, Any], facts: dict[str, Any] | None, reason: str = "",
               at: str | None = None) -> None:
    """Keep on a host document how a check of it went: alive, with the facts it reported
    and when it was last seen; or not alive, with the reason (its last facts stay)."""
    if facts is not None:
        host.update(alive=True, reason="", facts=dict(facts), last_seen=at or now_iso())
    else:
        host.update(alive=False, reason=reason or "host does not answer")


def facts_text(facts: dict[str, Any]) -> str:
    """A host's facts in a few words: `linux x86_64, Python 3.11.2, 4 CPUs`."""
    if not facts:
        return ""
    parts = [" ".join(str(facts[k]) for k in ("os", "arch") if facts.get(k)),
             f"Python {facts['python']}" if facts.get("python") else "",
             f"{facts['cpus']} CPUs" if facts.get("cpus") else ""]
    return ", ".join(p for p in parts if p)


# -- webhook deliveries and notifications -------------------------------------------------------

HOOK_SOURCES = ("github", "generic")
HOOK_STATES = ("accepted", "done", "refused")  # accepted: a record is being submitted for it


def new_hook(source: str, delivery: str, event: str, **details: Any) -> dict[str, Any]:
    """The document that remembers a webhook delivery, so a replay submits nothing twice."""
    if source not in HOOK_SOURCES:
        raise InvalidRecord(f"unknown hook source {source!r}")
    check_name("delivery id", delivery)
    at = now_iso()
    return {
        "_id": hook_id(source, delivery),
        "type": "hook",
        "source": source,
        "delivery": delivery,
        "event": event,
        "state": "accepted",
        "record": None,
        "reason": "",
        "received": at,
        "updated": at,
        **details,
    }


def notification_entry(
    kind: str, target: str, event: str, ok: bool, attempts: int, error: str = ""
) -> dict[str, Any]:
    """One line of a record's `notifications`: what was sent (or failed) and where to. The
    target never carries credentials."""
    return {"kind": kind, "target": target, "event": event, "ok": ok, "attempts": attempts,
            "error": error, "at": now_iso()}


def notifications_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The notification outcomes kept on a record document, oldest first, each in the shape of
    notification_entry whatever else the document holds (it is read from the database)."""
    entries = record.get("notifications")
    if not isinstance(entries, list):
        return []
    return [{"kind": str(e.get("kind") or ""), "target": str(e.get("target") or ""),
             "event": str(e.get("event") or ""), "ok": e.get("ok") is True,
             "attempts": e["attempts"] if isinstance(e.get("attempts"), int) else 0,
             "error": str(e.get("error") or ""), "at": str(e.get("at") or "")}
            for e in entries if isinstance(e, dict)]


# -- summaries ----------------------------------------------------------------------------------


def overall_state(counts: dict[str, int]) -> str:
    """A record's state from its tasks' counts by state."""
    for state in OVERALL_ORDER:
        if counts.get(state.value):
            return state.value
    return "empty"


def summarize(states: Iterable[str]) -> dict[str, Any]:
    counts = Counter(states)
    return {"counts": dict(counts), "total": sum(counts.values()), "state": overall_state(counts)}


def outcome_of(kind: str, payload: Any) -> tuple[State, str, dict[str, Any]]:
    """The state, reason and stored result for how an attempt ended."""
    if kind == "timeout":
        reason = f"timeout after {payload:g} s" if isinstance(payload, int | float) else payload
        return State.ERROR, reason, {"success": False, "reason": reason}
    if kind == "error":
        text = str(payload).rstrip()
        last = text.splitlines()[-1] if text else "task crashed"
        return State.ERROR, last, {"success": False, "reason": last, "traceback": text}
    if not isinstance(payload, dict) or not isinstance(payload.get("success"), bool):
        reason = (
            f"task returned {type(payload).__name__} {str(payload)[:80]!r}, "
            "not a dict with a boolean 'success'"
        )
        return State.ERROR, reason, {"success": False, "reason": reason}
    reason = str(payload.get("reason") or "")
    return (State.SUCCESS if payload["success"] else State.FAILED), reason, payload
