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
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dirt import documents, embedded
from dirt.couch import Couch
from dirt.documents import FINAL, State, now_iso, record_id, set_state, summarize
from dirt.errors import Conflict, InvalidHost, InvalidRecord, NotFound
from dirt.scheduler import parse_requirements
from dirt.settings import Settings, load
from dirt.tasks import Registry

if TYPE_CHECKING:
    from dirt.diagnose import Diagnosis

__all__ = [
    "connect", "registry", "submit", "load_record_file", "wait", "exit_code", "record_status",
    "list_records", "get_record", "record_tasks", "cancel", "rerun", "list_hosts", "add_host",
    "remove_host", "enable_host", "check_host",
]

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
        text = path.read_text()
    except OSError as exc:
        raise InvalidRecord(f"{path}: {exc.strerror}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRecord(
                f"{path}: malformed JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InvalidRecord(f"{path}: malformed YAML: {where}{problem}") from None
    return check_record_spec(data, str(path))


def check_record_spec(data: Any, where: str, need_name: bool = False) -> dict[str, Any]:
    """A record description (what `dirt submit --file` reads, and the JSON hook takes):
    a mapping of name, description, submitter, meta and tasks; InvalidRecord otherwise."""
    if not isinstance(data, dict):
        raise InvalidRecord(f"{where}: a record file holds a mapping (name, meta, tasks, ...)")
    unknown = sorted(set(data) - RECORD_KEYS)
    if unknown:
        raise InvalidRecord(f"{where}: unknown key {unknown[0]!r} (known: {sorted(RECORD_KEYS)})")
    tasks = data.get("tasks") or []
    if not isinstance(tasks, list):
        raise InvalidRecord(f"{where}: tasks must be a list")
    if need_name and not data.get("name"):
        raise InvalidRecord(f"{where}: a record needs a name")
    if data.get("meta") is not None and not isinstance(data["meta"], dict):
        raise InvalidRecord(f"{where}: meta must be a mapping of names to values")
    return data


def _task_entries(tasks: Iterable[str | dict[str, Any]]) -> list[dict[str, Any]]:
    entries = []
    for item in tasks:
        if isinstance(item, str):
            name, platform = documents.parse_task_spec(item)
            entries.append({"name": name, "platform": platform})
        elif isinstance(item, dict):
            unknown = sorted(set(item) - TASK_KEYS)
            if unknown:
                raise InvalidRecord(f"task {item.get('name')!r}: unknown key {unknown[0]!r}")
            if "name" not in item:
                raise InvalidRecord(f"task entry without a name: {item!r}")
            entries.append(dict(item))
        else:
            raise InvalidRecord(f"a task is a name or a mapping, not {item!r}")
    return entries


def known_platforms(couch: Couch) -> list[str]:
    return sorted({h["platform"] for h in list_hosts(couch)})


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
        if not isinstance(requires, list):
            raise InvalidRecord(f"task {module.name}: requires must be a list")
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
                    f"task {module.name}@{platform} is given twice: give each a distinct key"
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
    try:
        couch.insert(record)  # a record that exists is a conflict
    except Conflict:
        raise InvalidRecord(f"record {name!r} exists already") from None
    answers = couch.bulk_docs(task_docs)
    failed = [a for a in answers if a.get("error")]
    if failed:
        raise InvalidRecord(
            f"record {name}: {len(failed)} task documents were refused: "
            f"{failed[0]['id']}: {failed[0].get('reason') or failed[0]['error']}"
        )
    return record, task_docs


# -- reading ------------------------------------------------------------------------------


def get_record(couch: Couch, name: str) -> dict[str, Any]:
    try:
        return couch.get(record_id(name))
    except NotFound:
        raise InvalidRecord(f"no record {name!r}") from None


def record_tasks(couch: Couch, name: str) -> list[dict[str, Any]]:
    """The tasks of a record, in their order, as the tasks_by_record view shows them."""
    rows = couch.view("dirt", "tasks_by_record", startkey=[name], endkey=[name, {}])["rows"]
    return [{"id": row["id"], **row["value"]} for row in rows]


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


def record_status(couch: Couch, name: str) -> dict[str, Any]:
    """One record, its summary and its tasks."""
    record = get_record(couch, name)
    tasks = record_tasks(couch, name)
    return {
        "record": {**public(record), **summarize(t["state"] for t in tasks)},
        "tasks": tasks,
    }


def wait(
    couch: Couch,
    name: str,
    *,
    timeout: float | None = None,
    interval: float = 1.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Wait until every task of a record has ended; returns the final record_status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        status = record_status(couch, name)
        counts = status["record"]["counts"]
        if on_progress and counts != last:
            on_progress(status)
            last = counts
        if all(State(t["state"]) in FINAL for t in status["tasks"]):
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"record {name}: tasks still running after {timeout:g} s")
        time.sleep(interval)


def exit_code(status: dict[str, Any]) -> int:
    """For CI: 0 every task passed, 1 some task failed, 2 some task could not give an answer
    (error, unschedulable, cancelled)."""
    states = {t["state"] for t in status["tasks"]}
    if states & {"error", "unschedulable", "cancelled"}:
        return 2
    if "failed" in states:
        return 1
    return 0


# -- cancel and re-run --------------------------------------------------------------------


def _select(couch: Couch, record: str, task: str | None) -> list[dict[str, Any]]:
    get_record(couch, record)
    docs = couch.docs_by_prefix(f"task:{record}:")
    if task is None:
        return docs
    name, platform = documents.parse_task_spec(task)
    chosen = [d for d in docs if d["name"] == name and platform in (None, d["platform"])]
    if not chosen:
        raise InvalidRecord(f"record {record} has no task {task!r}")
    return chosen


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


def rerun(couch: Couch, record: str, task: str | None = None) -> int:
    """Make the record's ended tasks pending again (earlier attempts are kept)."""

    def change(doc: dict[str, Any]) -> bool:
        if doc["state"] in (State.PENDING.value, State.RUNNING.value):
            return False
        documents.reset_task(doc)
        return True

    return _update_each(couch, _select(couch, record, task), change)


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
