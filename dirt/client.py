"""What a user does with a farm, as Python calls: submit records, read their status, wait,
cancel, re-run, manage hosts. The CLI and CI scripts call these; so may anyone.

    from dirt import client
    couch = client.connect(project="path/to/project")
    client.submit(couch, client.registry(project="path/to/project"), "rev-1234",
                  ["build@linux", "test@linux"], meta={"revision": "1234"})
    status = client.wait(couch, "rev-1234", timeout=3600)
    sys.exit(client.exit_code(status))

The names in `__all__` are the stable API (docs/client.md): their arguments keep working
across releases; new arguments are keyword-only with defaults.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dirt import documents, embedded
from dirt.couch import Couch
from dirt.documents import (
    ACTIVE,
    ANY_KEY,
    FINAL,
    State,
    TaskSpec,
    declared_type,
    now_iso,
    record_id,
    set_state,
    summarize,
    task_row,
    task_spec,
)
from dirt.errors import (
    NOT_DONE,
    Conflict,
    DatabaseError,
    DatabaseUnavailable,
    DirtError,
    InvalidHost,
    InvalidRecord,
    NotFound,
    WaitTimeout,
)
from dirt.scheduler import parse_requirements
from dirt.settings import Settings, load
from dirt.shapes import readable_task
from dirt.tasks import Registry

if TYPE_CHECKING:
    from dirt.diagnose import Diagnosis

__all__ = [
    "connect", "registry", "submit", "load_record_file", "wait", "exit_code", "record_status",
    "list_records", "get_record", "record_tasks", "cancel", "rerun", "rerun_as", "list_hosts",
    "add_host", "remove_host", "enable_host", "check_host", "task_log", "artifacts",
    "get_artifact",
]

log = logging.getLogger("dirt.client")

RECORD_KEYS = {"name", "description", "submitter", "meta", "tasks"}
TASK_KEYS = {"name", "platform", "args", "requires", "key"}


def connect(project: str | None = None, settings: Settings | None = None) -> Couch:
    """The project's database, starting the embedded server when none is configured."""
    return embedded.connect(settings or load(project))


def registry(project: str | None = None, settings: Settings | None = None) -> Registry:
    """The project's task modules (its tasks/ folder): what a record may name."""
    return Registry((settings or load(project)).tasks_dir)


# -- submitting ---------------------------------------------------------------------------


def load_record_file(path: str | Path) -> dict[str, Any]:
    """Read a record description (JSON or YAML); InvalidRecord names what is malformed."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InvalidRecord(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InvalidRecord(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                            f"offset {exc.start})") from None
    try:
        data = _parse(path, text)
    except RecursionError:
        raise InvalidRecord(f"{path}: nested too deeply") from None
    return check_record_spec(data, str(path))


def _parse(path: Path, text: str) -> Any:
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRecord(
                f"{path}: malformed JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidRecord(f"{path}: malformed YAML: {where}{problem}") from None


def check_record_spec(data: Any, where: str, need_name: bool = False) -> dict[str, Any]:
    """A record description (what `dirt submit --file` reads, and the JSON hook takes):
    a mapping of name, description, submitter, meta and tasks, each of its shape (meta and
    args hold JSON values only: no YAML dates, no NaN); InvalidRecord otherwise."""
    if not isinstance(data, dict):
        raise InvalidRecord(f"{where}: a record file holds a mapping (name, meta, tasks, ...)")
    unknown = sorted(set(data) - RECORD_KEYS, key=str)
    if unknown:
        raise InvalidRecord(f"{where}: unknown key {unknown[0]!r} (known: {sorted(RECORD_KEYS)})")
    tasks = data.get("tasks") or []
    if not isinstance(tasks, list):
        raise InvalidRecord(f"{where}: tasks must be a list")
    if need_name and not data.get("name"):
        raise InvalidRecord(f"{where}: a record needs a name")
    for key in ("name", "description", "submitter"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InvalidRecord(f"{where}: {key} must be a string, not "
                                f"{type(data[key]).__name__} {data[key]!r} (quote it)")
    if data.get("meta") is not None and not isinstance(data["meta"], dict):
        raise InvalidRecord(f"{where}: meta must be a mapping of names to values")
    documents.check_json(f"{where}: meta", data.get("meta") or {})
    for index, task in enumerate(tasks):
        check_task_entry(task, f"{where}: tasks[{index}]")
    return data


TASK_FIELDS = {"name": "task", "platform": "platform", "key": "task key"}


def check_task_entry(item: Any, where: str) -> None:
    """One task of a record: a spec `name[@platform][:key]`, or a mapping of name, platform,
    key (names), args (a mapping of JSON values) and requires (a list of strings)."""
    if isinstance(item, str):
        if documents.parse_task_spec(item).key == ANY_KEY:
            raise InvalidRecord(f"task {item}: {ANY_KEY!r} selects tasks, it is not a key")
        return
    if not isinstance(item, dict):
        raise InvalidRecord(f"{where}: a task is a name or a mapping, not {item!r}")
    unknown = sorted(set(item) - TASK_KEYS, key=str)
    if unknown:
        raise InvalidRecord(f"task {item.get('name')!r}: unknown key {unknown[0]!r}")
    if "name" not in item:
        raise InvalidRecord(f"{where}: task entry without a name: {item!r}")
    for field, kind in TASK_FIELDS.items():
        if field == "name" or item.get(field) is not None:
            try:
                documents.check_name(kind, item[field])
            except InvalidRecord as exc:
                raise InvalidRecord(f"{where}: {exc}") from None
    where = f"{where} ({item['name']})"
    args = item.get("args")
    if args is not None and not isinstance(args, dict):
        raise InvalidRecord(f"{where}: args must be a mapping")
    documents.check_json(f"{where}: args", args or {})
    requires = item.get("requires")
    if requires is not None and not (
        isinstance(requires, list) and all(isinstance(r, str) for r in requires)
    ):
        raise InvalidRecord(f"{where}: requires must be a list of strings "
                            f"(labels or e.g. python>=3.11), not {requires!r}")


def _task_entries(tasks: Iterable[str | dict[str, Any]]) -> list[dict[str, Any]]:
    entries = []
    for index, item in enumerate(tasks):
        check_task_entry(item, f"tasks[{index}]")
        if isinstance(item, str):
            spec = documents.parse_task_spec(item)
            entries.append({"name": spec.name, "platform": spec.platform, "key": spec.key})
        else:
            entries.append(dict(item))
    return entries


def known_platforms(couch: Couch) -> list[str]:
    platforms = (host.get("platform") for host in list_hosts(couch))
    return sorted({p for p in platforms if isinstance(p, str) and documents.NAME_RE.fullmatch(p)})


def plan_tasks(
    registry: Registry,
    record: dict[str, Any],
    tasks: Iterable[str | dict[str, Any]],
    platforms: list[str],
) -> list[dict[str, Any]]:
    """The task documents for a record, checked: registered names, known platforms,
    well-formed requirements, no task twice."""
    docs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in _task_entries(tasks):
        module = registry.get(entry["name"])
        wanted = [entry["platform"]] if entry.get("platform") else list(
            module.platforms or platforms
        )
        if not wanted:
            raise InvalidRecord(
                f"task {module.name}: no platform given and no hosts registered: "
                f"use {module.name}@<platform> or add a host"
            )
        requires = entry.get("requires") or []
        parse_requirements(requires)
        for platform in wanted:
            documents.check_name("platform", platform)
            if module.platforms is not None and platform not in module.platforms:
                raise InvalidRecord(
                    f"task {module.name} does not run on {platform!r} "
                    f"(its PLATFORMS: {', '.join(module.platforms)})"
                )
            if platform not in platforms:
                raise InvalidRecord(
                    f"unknown platform {platform!r}: no host has it "
                    f"(known: {', '.join(platforms) or 'none, add a host first'})"
                )
            doc = documents.new_task(
                record, module.name, platform, len(docs),
                args=entry.get("args"), requires=requires, key=entry.get("key"),
            )
            if doc["_id"] in seen:
                raise InvalidRecord(
                    f"task {task_spec(doc)} is given twice: give each a distinct key"
                )
            seen.add(doc["_id"])
            docs.append(doc)
    if not docs:
        raise InvalidRecord(f"record {record['name']}: no tasks given")
    return docs


def submit(
    couch: Couch,
    registry: Registry,
    name: str,
    tasks: Iterable[str | dict[str, Any]],
    *,
    description: str = "",
    submitter: str = "",
    meta: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Create a record and one task document per task and platform.

    Everything is checked before anything is written: an unknown task, an unknown platform,
    a malformed requirement or an existing record raises InvalidRecord and writes nothing.
    """
    record = documents.new_record(name, description=description, submitter=submitter, meta=meta)
    task_docs = plan_tasks(registry, record, tasks, known_platforms(couch))
    record["tasks"] = [doc["_id"] for doc in task_docs]  # what waiting waits for
    try:
        couch.insert(record)  # a record that exists is a conflict
    except Conflict:
        raise InvalidRecord(f"record {name!r} exists already") from None
    try:
        answers = couch.bulk_docs(task_docs)
    except DirtError as exc:  # refused whole (too large) or cut off: some may be written
        _undo(couch, record, task_docs, exc)
        if isinstance(exc, DatabaseError) and exc.status in (400, 413):
            raise InvalidRecord(f"record {name}: the database refused its tasks: {exc}; "
                                "nothing was kept") from None
        raise
    failed = [a for a in answers if a.get("error")]
    if failed:
        refused = InvalidRecord(
            f"record {name}: {len(failed)} task documents were refused: "
            f"{failed[0]['id']}: {failed[0].get('reason') or failed[0]['error']}"
        )
        _undo(couch, record, task_docs, refused)
        raise refused
    return record, task_docs


def _undo(couch: Couch, record: dict[str, Any], task_docs: list[dict[str, Any]],
          cause: DirtError) -> None:
    """Take back a submission refused or cut off halfway: its record and whichever of its
    tasks the database holds (read back: a write whose answer was lost may have been
    applied). When that fails too, say that the record is left without all its tasks."""
    ids = [record["_id"], *(doc["_id"] for doc in task_docs)]
    try:
        written = couch.revs(ids)
        answers = couch.bulk_docs([{"_id": doc_id, "_rev": rev, "_deleted": True}
                                   for doc_id, rev in written.items()])
        left = [a for a in answers if a.get("error")]
        if left:
            raise DatabaseError(f"{left[0].get('id')}: {left[0].get('reason') or left[0]['error']}")
    except DirtError as exc:
        raise DatabaseUnavailable(
            f"{cause}; and record {record['name']} could not be taken back ({exc}): it lacks "
            f"tasks, `dirt status {record['name']}` lists them missing"
        ) from None


# -- reading ------------------------------------------------------------------------------


def get_record(couch: Couch, name: str) -> dict[str, Any]:
    try:
        return couch.get(record_id(name))
    except NotFound:
        raise InvalidRecord(f"no record {name!r}") from None


def record_docs(couch: Couch, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A record's document and its task documents in their order. Read from the database's
    primary index (`_all_docs`), which every write updates at once: a view may answer from
    an index a moment old, and a record's tasks must never look fewer than they are."""
    record = get_record(couch, name)
    docs = couch.docs_by_prefix(f"task:{name}:")
    docs.sort(key=lambda doc: (readable_task(doc)["order"], doc["_id"]))
    return record, docs


def record_tasks(couch: Couch, name: str) -> list[dict[str, Any]]:
    """The tasks of a record, in their order, as `dirt status <record>` shows them."""
    return [task_row(doc) for doc in record_docs(couch, name)[1]]


def missing_tasks(record: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """Ids of the tasks the record was submitted with that are not in the database (its
    submission was cut off). A record from before records listed their tasks has none."""
    present = {doc["_id"] for doc in docs}
    return [task_id for task_id in record.get("tasks") or [] if task_id not in present]


def record_counts(couch: Couch, names: list[str]) -> dict[str, dict[str, int]]:
    """Counts of tasks by state for each record, in one grouped reduce query."""
    if not names:
        return {}
    keys = [[name, state.value] for name in names for state in State]
    rows = couch.view("dirt", "record_states", keys=keys, group=True)["rows"]
    counts: dict[str, dict[str, int]] = {name: {} for name in names}
    for row in rows:
        if row.get("value"):
            counts[row["key"][0]][row["key"][1]] = row["value"]
    return counts


def public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("name", "created", "description", "submitter", "meta")}


def list_records(couch: Couch, limit: int = 50, skip: int = 0) -> list[dict[str, Any]]:
    """The newest records with their summaries (counts by state, overall state)."""
    rows = couch.view(
        "dirt", "records_by_time", descending=True, limit=limit, skip=skip
    )["rows"]
    names = [row["value"]["name"] for row in rows]
    counts = record_counts(couch, names)
    out = []
    for row in rows:
        name = row["value"]["name"]
        summary = summarize([s for s, n in counts[name].items() for _ in range(n)])
        out.append({"created": row["key"], **row["value"], **summary})
    return out


def status_of(record: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    """A record's status from its documents: its summary, its tasks, and `missing`, the
    tasks it was submitted with that are not in the database."""
    tasks = [task_row(readable_task(doc)) for doc in docs]
    summary = summarize(t["state"] for t in tasks)
    return {
        "record": {**public(record), **summary, "missing": missing_tasks(record, docs)},
        "tasks": tasks,
    }


def record_status(couch: Couch, name: str) -> dict[str, Any]:
    """One record, its summary and its tasks."""
    return status_of(*record_docs(couch, name))


def finished(status: dict[str, Any]) -> bool:
    """Every task of the record is seen in a final state: none missing, and at least one."""
    tasks = status["tasks"]
    return (bool(tasks) and not status["record"].get("missing")
            and all(State(t["state"]) in FINAL for t in tasks))


def wait(
    couch: Couch,
    name: str,
    *,
    timeout: float | None = None,
    interval: float = 1.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Wait until every task the record was submitted with is seen in a final state; returns
    the final record_status. A database that does not answer is tried again with a capped
    backoff until `timeout`; WaitTimeout (a TimeoutError) when the time runs out."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    pause, outage = min(0.1, interval), 0.5  # checks start often, then every `interval`
    while True:
        try:
            status = record_status(couch, name)
        except DatabaseUnavailable as exc:
            if deadline is not None and time.monotonic() + outage > deadline:
                raise
            log.warning("record %s: %s; trying again in %.1f s", name, exc, outage)
            time.sleep(outage)
            outage = min(outage * 2, 10.0)
            continue
        outage = 0.5
        seen = (status["record"]["counts"], len(status["record"]["missing"]))
        if on_progress and seen != last:
            on_progress(status)
            last = seen
        if finished(status):
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"record {name}: {not_ended(status)} after {timeout:g} s")
        time.sleep(pause)
        pause = min(pause * 2, interval)


def not_ended(status: dict[str, Any]) -> str:
    """What keeps a record from being finished, in a few words."""
    missing = status["record"]["missing"]
    if missing:
        return f"{len(missing)} of its tasks are not in the database ({missing[0]}, ...)"
    if not status["tasks"]:
        return "it has no tasks"
    active = [t["spec"] for t in status["tasks"] if State(t["state"]) not in FINAL]
    return f"{len(active)} tasks have not ended ({', '.join(active[:3])}" + (
        ", ...)" if len(active) > 3 else ")")


PASSED, SOME_FAILED, NO_ANSWER = 0, 1, 2


def exit_code(status: dict[str, Any]) -> int:
    """For CI (docs/cli.md): 0 every task passed, 1 some task failed, 2 some task could not
    give an answer (error, unschedulable, cancelled), 3 there is no verdict (tasks missing or
    not ended, or no tasks at all): a record is never "passed" on tasks nobody saw."""
    if not finished(status):
        return NOT_DONE
    states = {t["state"] for t in status["tasks"]}
    if states & {"error", "unschedulable", "cancelled"}:
        return NO_ANSWER
    if "failed" in states:
        return SOME_FAILED
    return PASSED


# -- cancel and re-run --------------------------------------------------------------------


def _select(couch: Couch, record: str, task: str | None) -> list[dict[str, Any]]:
    """The record's tasks that `task` (a spec, docs/records.md) names; all when None."""
    docs = record_docs(couch, record)[1]
    if task is None:
        return docs
    spec = documents.parse_task_spec(task)
    chosen = [doc for doc in docs if spec.matches(doc)]
    if not chosen:
        raise InvalidRecord(f"record {record} has no task {task!r}{_others(spec, docs)}")
    return chosen


def _others(spec: TaskSpec, docs: list[dict[str, Any]]) -> str:
    """The tasks a spec that matched none may have meant, for its error message."""
    near = [task_spec(doc) for doc in docs if doc["name"] == spec.name]
    if not near:
        return ""
    return f"; it has {', '.join(near[:5])}" + (", ..." if len(near) > 5 else "") + (
        f" ({spec.name}:* names every key)" if spec.key is None else "")


def get_task(couch: Couch, record: str, task: str) -> dict[str, Any]:
    """The one task of the record that `task` names; InvalidRecord when it names none or
    several (the message lists them)."""
    spec = documents.parse_task_spec(task)
    if spec.platform and spec.key != ANY_KEY:  # names one id: read that document alone
        doc = couch.get_or_none(documents.task_id(record, spec.name, spec.platform, spec.key))
        if doc is not None and doc.get("record") == record and spec.matches(doc):
            return doc
    chosen = _select(couch, record, task)
    if len(chosen) > 1:
        raise InvalidRecord(
            f"record {record}: {task} names {len(chosen)} tasks, give one of "
            + ", ".join(task_spec(doc) for doc in chosen[:5]) + (", ..." if len(chosen) > 5 else "")
        )
    return chosen[0]


def _update_each(
    couch: Couch, docs: list[dict[str, Any]], change: Callable[[dict[str, Any]], bool]
) -> int:
    """Apply `change` to each document and write it; on a conflict re-read and try again."""
    changed = 0
    for doc in docs:
        for _ in range(10):
            if not change(doc):
                break
            try:
                couch.put(doc)
                changed += 1
                break
            except Conflict:
                doc = couch.get(doc["_id"])
    return changed


def cancel(couch: Couch, record: str, task: str | None = None) -> int:
    """Cancel the record's pending and running tasks (a running one is ended on its host)."""

    def change(doc: dict[str, Any]) -> bool:
        if doc["state"] not in (State.PENDING.value, State.RUNNING.value):
            return False
        doc.update(ended=now_iso(), lease_until=None)
        set_state(doc, State.CANCELLED, "cancelled by user")
        return True

    return _update_each(couch, _select(couch, record, task), change)


# What `rerun --failed` picks: the tasks that ended without passing.
NOT_PASSED = frozenset({State.FAILED, State.ERROR, State.CANCELLED, State.UNSCHEDULABLE})


def rerun(couch: Couch, record: str, task: str | None = None, *, failed: bool = False) -> int:
    """Make the record's ended tasks pending again, or with `failed` only those that did not
    pass. Each keeps its earlier run in `earlier` and its attempts."""

    def change(doc: dict[str, Any]) -> bool:
        state = State(doc["state"])
        if state in ACTIVE or (failed and state not in NOT_PASSED):
            return False
        documents.reset_task(doc)
        return True

    return _update_each(couch, _select(couch, record, task), change)


def rerun_as(
    couch: Couch,
    registry: Registry,
    record: str,
    new: str,
    task: str | None = None,
    *,
    failed: bool = False,
    submitter: str = "",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Submit the record's tasks (those `task` names, or with `failed` those that did not
    pass) again as the new record `new`: same names, platforms, keys, args and requirements,
    so the history keeps both. The new record's meta says `rerun_of`."""
    old, docs = record_docs(couch, record)
    chosen = _select(couch, record, task) if task else docs
    if failed:
        chosen = [doc for doc in chosen if State(doc["state"]) in NOT_PASSED]
        if not chosen:
            raise InvalidRecord(f"record {record} has no failed, error, cancelled or "
                                "unschedulable task to run again")
    entries = [{"name": d["name"], "platform": d["platform"], "key": d.get("key") or None,
                "args": d.get("args") or {}, "requires": d.get("requires") or []}
               for d in chosen]
    return submit(
        couch, registry, new, entries, description=old.get("description") or "",
        submitter=submitter or old.get("submitter") or "",
        meta={**(old.get("meta") or {}), "rerun_of": record},
    )


# -- logs and artifacts -------------------------------------------------------------------

LOG = "log.txt"


def task_log(couch: Couch, record: str, task: str, offset: int = 0) -> dict[str, Any]:
    """The task's log from byte `offset` on: `text`, `offset` (where the text starts), `size`
    (the log's size now), `reset` (the log got shorter since `offset`, rewritten with its
    middle cut out or a new attempt begun: `text` is all of it), `state` and `final`."""
    doc = get_task(couch, record, task)
    body = _attachment(couch, doc, LOG) if LOG in (doc.get("_attachments") or {}) else b""
    reset = not 0 <= offset <= len(body)
    start = 0 if reset else offset
    return {
        "text": body[start:].decode("utf-8", "replace"), "offset": start, "size": len(body),
        "reset": reset, "state": doc["state"], "final": State(doc["state"]) in FINAL,
        "spec": task_spec(doc),
    }


def follow_log(
    couch: Couch, record: str, task: str, *, interval: float = 1.0
) -> Iterator[dict[str, Any]]:
    """The task's log as it grows: each item a task_log answer with text not seen before
    (or all of it again, `reset`), until the task has ended and its whole log was given (the
    master writes a task's final state and its log in one write). A database that does not
    answer is asked again with a capped backoff."""
    offset, pause, outage = 0, min(0.2, interval), 0.5
    while True:
        try:
            part = task_log(couch, record, task, offset)
        except DatabaseUnavailable as exc:
            log.warning("task %s of %s: %s; trying again in %.1f s", task, record, exc, outage)
            time.sleep(outage)
            outage = min(outage * 2, 10.0)
            continue
        outage = 0.5
        if part["text"] or part["reset"] or part["final"]:
            yield part
        offset = part["size"]
        if part["final"]:
            return
        pause = 0.2 if part["text"] else min(pause * 2, interval)
        time.sleep(pause)


def safe_path(name: str) -> Path:
    """An artifact's name as a relative path to write it under, refused when it could reach
    out of the folder (a name is whatever the task said)."""
    path = Path(name)
    if (not name or "\\" in name or "\0" in name or path.is_absolute()
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise InvalidRecord(f"artifact name {name!r} is not a safe file name; not written")
    return path


def files_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A task document's files (its log and artifacts) as a list, the log first."""
    attachments = doc.get("_attachments") or {}
    return [
        {"task": task_spec(doc), "name": name,
         "content_type": declared_type(doc, name),
         "length": attachments[name].get("length") or 0}
        for name in sorted(attachments, key=lambda n: (n != LOG, n))
    ]


def artifacts(couch: Couch, record: str, task: str | None = None) -> list[dict[str, Any]]:
    """The files of the record's tasks (or of those `task` names), each with its task's spec,
    name, content type and length; logs are left out (`dirt log` shows them)."""
    return [f for doc in _select(couch, record, task) for f in files_of(doc) if f["name"] != LOG]


def get_artifact(couch: Couch, record: str, task: str, name: str) -> bytes:
    """One file of one task, its bytes."""
    doc = get_task(couch, record, task)
    if name not in (doc.get("_attachments") or {}):
        raise InvalidRecord(f"task {task_spec(doc)} of {record} has no file {name!r}")
    return _attachment(couch, doc, name)


def _attachment(couch: Couch, doc: dict[str, Any], name: str) -> bytes:
    try:
        return couch.get_attachment(doc["_id"], name)
    except NotFound:  # removed since the document was read
        return b""


# -- hosts --------------------------------------------------------------------------------


def list_hosts(couch: Couch) -> list[dict[str, Any]]:
    return couch.docs_by_prefix("host:")


def add_host(couch: Couch, name: str, platform: str, **spec: Any) -> dict[str, Any]:
    """Register a host; InvalidHost when the spec is malformed or the name is taken."""
    key = spec.get("key")
    if key:
        path = Path(key).expanduser()
        if not path.is_file():
            raise InvalidHost(f"host {name}: key file {key} does not exist")
        spec["key"] = str(path.resolve())
    doc = documents.new_host(name, platform, **spec)
    try:
        couch.put(doc)
    except Conflict:
        raise InvalidHost(f"host {name!r} exists already") from None
    return doc


def get_host(couch: Couch, name: str) -> dict[str, Any]:
    try:
        return couch.get(documents.host_id(name))
    except NotFound:
        raise InvalidHost(f"no host {name!r}") from None


def remove_host(couch: Couch, name: str) -> None:
    doc = get_host(couch, name)
    couch.delete(doc["_id"], doc["_rev"])


def enable_host(couch: Couch, name: str, enabled: bool) -> dict[str, Any]:
    def change(doc: dict[str, Any]) -> bool:
        if doc.get("enabled") == enabled:
            return False
        doc["enabled"] = enabled
        return True

    _update_each(couch, [get_host(couch, name)], change)
    return get_host(couch, name)


def check_host(couch: Couch, name: str, known_hosts: Path) -> Diagnosis:
    """Connect to a host as the master would (`dirt hosts check`) and keep what was found on
    its document: alive with its facts and last_seen, or not alive with the reason."""
    from dirt.diagnose import check_host as diagnose  # paramiko: only when checking

    host = get_host(couch, name)
    diagnosis = diagnose(host, known_hosts)
    at = now_iso()

    def change(doc: dict[str, Any]) -> bool:
        documents.set_health(doc, diagnosis.facts if diagnosis.ok else None,
                             diagnosis.message, at)
        return True

    _update_each(couch, [host], change)  # a write made meanwhile: read again, keep both
    return diagnosis
