"""What the pages and the API read from the database, through the design document's views.

Every read is bounded: records are paged by startkey (a cursor), never loaded all at once, so a
database with 100,000 tasks answers as fast as one with ten. States and summaries come from
dirt.documents and dirt.client, as the CLI shows them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dirt import client, documents
from dirt.couch import Couch
from dirt.documents import State, summarize
from dirt.errors import InvalidRecord, NotFound
from dirt.shapes import readable_host, readable_task
from dirt.web import history

BATCH = 100  # records read per view query while filtering
SCAN_LIMIT = 1000  # records looked at for one filtered page before it is returned part-full
HISTORY_BATCH = 200


class Missing(LookupError):
    """A record, task or file that is not in the database (a 404)."""


# -- records ------------------------------------------------------------------------------


@dataclass
class RecordsPage:
    records: list[dict[str, Any]]
    older: str | None  # cursor of the next (older) page
    newer: str | None  # cursor of the previous (newer) page
    scanned: int = 0
    partial: bool = False  # the scan limit was reached before the page filled
    counts: dict[str, int] = field(default_factory=dict)


def make_cursor(created: str, doc_id: str) -> str:
    return json.dumps([created, doc_id], separators=(",", ":"))


def parse_cursor(text: str | None) -> tuple[str, str] | None:
    """A cursor from a URL; a malformed one is treated as none (the newest page)."""
    if not text:
        return None
    try:
        created, doc_id = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not isinstance(created, str) or not isinstance(doc_id, str):
        return None
    return created, doc_id


def summary_of(counts: dict[str, int]) -> dict[str, Any]:
    """A record's summary (counts, total, overall state) from its counts by state."""
    return summarize(state for state, n in counts.items() for _ in range(n))


def matches(record: dict[str, Any], state: str | None, text: str | None) -> bool:
    """Whether a record (with its summary) passes the page's filters."""
    if state and record["state"] != state:
        return False
    if text:
        needle = text.casefold()
        haystack = [record["name"], record.get("description") or "", record.get("submitter") or ""]
        haystack += [str(v) for v in (record.get("meta") or {}).values()]
        return any(needle in str(item).casefold() for item in haystack)
    return True


def rows_after(
    couch: Couch, view: str, start: tuple[Any, str] | None, descending: bool, limit: int,
    **params: Any,
) -> list[dict[str, Any]]:
    """Up to `limit` rows of a view that come after the row (key, id) `start`, exclusive.

    Rows with the same key are told apart by their document id here, not with
    `startkey_docid`, which PouchDB Server ignores: the rows of a tied key that were seen
    already are skipped (and passed with `skip` should a batch hold nothing else)."""
    out: list[dict[str, Any]] = []
    skip = 0
    while True:
        query = {"descending": descending, "limit": limit + 1, **params}
        if start is not None:
            query.update(startkey=start[0], skip=skip)
        rows = couch.view("dirt", view, **query)["rows"]
        for row in rows:
            if start is not None and row["key"] == start[0] and (
                row["id"] >= start[1] if descending else row["id"] <= start[1]
            ):
                continue
            out.append(row)
        if len(out) >= limit or len(rows) <= limit:
            return out[:limit]
        skip += len(rows)


def _record_rows(
    couch: Couch, start: tuple[str, str] | None, descending: bool, limit: int
) -> list[dict[str, Any]]:
    """Rows of records_by_time after `start` (exclusive) in the given direction."""
    return rows_after(couch, "records_by_time", start, descending, limit)


def _with_summaries(couch: Couch, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = [row["value"]["name"] for row in rows]
    counts = client.record_counts(couch, names)
    return [
        {"created": row["key"], "_cursor": make_cursor(row["key"], row["id"]), **row["value"],
         **summary_of(counts[row["value"]["name"]])}
        for row in rows
    ]


def _scan(
    couch: Couch, start: tuple[str, str] | None, descending: bool, limit: int,
    state: str | None, text: str | None,
) -> tuple[list[dict[str, Any]], tuple[str, str] | None, bool, int]:
    """Read records from `start` until `limit` pass the filters or SCAN_LIMIT were read.

    Returns the records, the position of the last one read, whether the scan stopped early
    and how many were read."""
    filtering = bool(state or text)
    batch = BATCH if filtering else limit
    found: list[dict[str, Any]] = []
    scanned = 0
    position = start
    while True:
        rows = _record_rows(couch, position, descending, batch)
        for record, row in zip(_with_summaries(couch, rows), rows, strict=True):
            scanned += 1
            position = (row["key"], row["id"])
            if matches(record, state, text):
                found.append(record)
                if len(found) == limit:
                    return found, position, False, scanned
        if len(rows) < batch:
            return found, None, False, scanned
        if scanned >= SCAN_LIMIT:
            return found, position, True, scanned


def list_records(
    couch: Couch,
    *,
    limit: int = 25,
    older: str | None = None,
    newer: str | None = None,
    state: str | None = None,
    text: str | None = None,
) -> RecordsPage:
    """One page of records, newest first, with their summaries; `older`/`newer` are cursors
    from an earlier page."""
    newer_start = parse_cursor(newer)
    if newer_start and not older:
        found, position, partial, scanned = _scan(couch, newer_start, False, limit, state, text)
        if len(found) == limit and _more(couch, position, False, state, text):
            found.reverse()
            return RecordsPage(
                found, older=found[-1]["_cursor"], newer=found[0]["_cursor"], scanned=scanned,
                partial=partial,
            )
        return list_records(couch, limit=limit, state=state, text=text)  # back at the newest
    start = parse_cursor(older)
    found, position, partial, scanned = _scan(couch, start, True, limit, state, text)
    has_older = partial or (position is not None and _more(couch, position, True, state, text))
    return RecordsPage(
        found,
        older=(make_cursor(*position) if has_older and position else None),
        newer=(found[0]["_cursor"] if start and found else older if start else None),
        scanned=scanned,
        partial=partial,
    )


def _more(
    couch: Couch, position: tuple[str, str] | None, descending: bool,
    state: str | None, text: str | None,
) -> bool:
    """Whether any record lies beyond `position` (for filtered pages: may lie; we look at
    one more record only, so a filtered "older" link can lead to an empty page)."""
    if position is None:
        return False
    return bool(_record_rows(couch, position, descending, 1))


def state_counts(couch: Couch) -> dict[str, int]:
    """Tasks by state over the whole database (one grouped reduce)."""
    rows = couch.view("dirt", "state_counts", group=True)["rows"]
    return {row["key"]: row["value"] for row in rows}


def update_seq(couch: Couch) -> str:
    """The database's update sequence: cheap, and it changes with every write."""
    return str(couch.info()["update_seq"])


# -- one record ---------------------------------------------------------------------------


@contextmanager
def found() -> Iterator[None]:
    """What dirt.client cannot find (a record, a task a spec names, a file) is a 404 here;
    its message names the candidates."""
    try:
        yield
    except InvalidRecord as exc:
        raise Missing(str(exc)) from None


def record(couch: Couch, name: str) -> dict[str, Any]:
    """A record, its summary, the tasks it lacks (`missing`) and its tasks (each with its
    files)."""
    with found():
        doc, docs = client.record_docs(couch, name)
    status = client.status_of(doc, docs)
    for row, task_doc in zip(status["tasks"], docs, strict=True):
        row["files"] = client.files_of(task_doc)
    status["record"]["notifications"] = documents.notifications_of(doc)
    return status


# -- one task -----------------------------------------------------------------------------


def task(couch: Couch, record_name: str, spec: str) -> dict[str, Any]:
    """The one task `spec` names, as the page and API show it: without attachment stubs,
    with its spec, files and whether it ended."""
    with found():
        doc = client.get_task(couch, record_name, spec)
    shown = {k: v for k, v in readable_task(doc).items() if k not in ("_attachments", "_rev")}
    shown.update(key=doc.get("key") or None, spec=documents.task_spec(doc),
                 files=client.files_of(doc), final=State(doc["state"]) in documents.FINAL)
    return shown


def task_file(couch: Couch, record_name: str, spec: str, name: str) -> tuple[bytes, dict[str, Any]]:
    """One file of a task: its bytes and its entry in the task's files (content type,
    length)."""
    shown = task(couch, record_name, spec)
    info = next((f for f in shown["files"] if f["name"] == name), None)
    if info is None:
        raise Missing(f"task {shown['spec']} of {record_name} has no file {name!r}")
    try:
        return couch.get_attachment(shown["_id"], name), info
    except NotFound:
        raise Missing(f"task {shown['spec']} of {record_name} has no file {name!r}") from None


def task_log(couch: Couch, record_name: str, spec: str, offset: int = 0) -> dict[str, Any]:
    """The log from `offset` on (client.task_log: a log that got shorter comes back whole,
    with `reset` set)."""
    with found():
        return client.task_log(couch, record_name, spec, offset)


# -- hosts --------------------------------------------------------------------------------


def hosts(couch: Couch) -> list[dict[str, Any]]:
    """Every host with its slots, what it runs now and whether it is alive."""
    running: dict[str, list[dict[str, Any]]] = {}
    for row in couch.view("dirt", "tasks_running")["rows"]:
        task = row["value"]
        running.setdefault(row["key"], []).append({**task, "spec": documents.task_spec(task)})
    out = []
    for doc in map(readable_host, client.list_hosts(couch)):
        now = sorted(running.get(doc["name"], []), key=lambda t: t.get("started") or "")
        out.append({
            "name": doc["name"],
            "platform": doc.get("platform"),
            "labels": doc.get("labels") or [],
            "where": "local" if doc.get("local") is not None else (
                (doc.get("ssh") or {}).get("destination") or ""),
            "slots": documents.host_slots(doc),
            "slots_used": len(now),
            "enabled": bool(doc.get("enabled")),
            "alive": doc.get("alive"),
            "reason": doc.get("reason") or "",
            "last_seen": doc.get("last_seen"),
            "facts": doc.get("facts") or {},
            "running": now,
        })
    return out


# -- history of a task name ---------------------------------------------------------------


def history_run(created: Any, value: dict[str, Any]) -> history.Run:
    """A row of tasks_by_name as the history shows it; a value of the wrong type (a task
    document written by hand) is shown as unknown."""
    task = readable_task({"record_created": created, **value})
    return history.Run(
        record=str(task["record"]), created=task["record_created"],
        platform=str(task["platform"]), key=value.get("key") if isinstance(
            value.get("key"), str) else None, state=task["state"], duration=task["duration"],
        host=task["host"], reason=task["reason"],
    )


def task_history(couch: Couch, name: str, records: int = 30) -> history.History:
    """The task `name` over the last `records` records that ran it, read newest first from
    tasks_by_name in batches until that many records are seen."""
    runs: list[history.Run] = []
    seen: set[str] = set()
    start: tuple[Any, str] | None = None
    while True:
        rows = rows_after(couch, "tasks_by_name", start, True, HISTORY_BATCH,
                          endkey=[name], **({} if start else {"startkey": [name, {}]}))
        for row in rows:
            value = row["value"]
            if value["record"] not in seen and len(seen) == records:
                return history.build(name, runs)
            seen.add(value["record"])
            runs.append(history_run(row["key"][1], value))
        if len(rows) < HISTORY_BATCH:
            return history.build(name, runs)
        start = (rows[-1]["key"], rows[-1]["id"])
