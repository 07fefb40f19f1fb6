"""Replication of a project's database to or from another CouchDB, through `_replicator`
documents, so that the server keeps replicating across restarts (of itself and of dirt).

    start(couch, "https://user:pw@backup.example.org/farm", continuous=True)   # push
    start(couch, "https://mirror.example.org/farm", pull=True)                 # pull
    listing(couch); cancel(couch, "dirt-push-3f9c2a1b7e")

Only the documented CouchDB 3.x API is used: a `_replicator` document with `source` and
`target` URLs; its live state comes from `_scheduler/docs` where the server has it, else from
the document's own `_replication_state`. URLs are shown without their credentials.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from dirt.couch import Couch, safe_url
from dirt.documents import now_iso
from dirt.errors import BAD_INPUT, Conflict, DatabaseError, DirtError, NotFound

REPLICATOR = "_replicator"
ID_PREFIX = "dirt-"


class ReplicationError(DirtError, ValueError):
    """A replication cannot be set up as asked, or there is no such replication."""

    exit_status = BAD_INPUT


@dataclass(frozen=True)
class Replication:
    """One replication of the project's database, as a user sees it (no credentials)."""

    id: str
    direction: str  # push | pull
    remote: str
    continuous: bool
    state: str  # triggered, running, completed, error, crashing, pending, ...
    reason: str
    created: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def replicator(couch: Couch) -> Couch:
    """The server's `_replicator` database, created when it is missing (PouchDB Server)."""
    db = Couch(couch.url, REPLICATOR)
    try:
        db.info()
    except NotFound:
        try:
            db.create()
        except DatabaseError as exc:
            raise ReplicationError(
                f"the server has no {REPLICATOR} database and refused to create it: {exc}"
            ) from None
    return db


def remote_db_url(couch: Couch, url: str) -> str:
    """The remote database URL; a bare server URL means the same database name there."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReplicationError(f"not a CouchDB URL: {safe_url(url)!r} (want http(s)://host/db)")
    if parts.path.strip("/"):
        return url.rstrip("/")
    return f"{url.rstrip('/')}/{quote(couch.database, safe='')}"


def replication_id(direction: str, remote: str) -> str:
    """A stable, short id for one direction to one remote database (same for any password)."""
    digest = hashlib.sha256(safe_url(remote).encode()).hexdigest()[:10]
    return f"{ID_PREFIX}{direction}-{digest}"


def start(couch: Couch, url: str, *, continuous: bool = False, pull: bool = False) -> Replication:
    """Write the `_replicator` document that replicates the project's database to `url`
    (or from it, with `pull`). A one-shot replication that is done or failed is replaced;
    a running one with the same direction and remote is refused."""
    remote = remote_db_url(couch, url)
    direction = "pull" if pull else "push"
    local = couch.db_url
    doc: dict[str, Any] = {
        "_id": replication_id(direction, remote),
        "source": remote if pull else local,
        "target": local if pull else remote,
        "continuous": continuous,
        "create_target": not pull,
        "dirt": {"direction": direction, "database": couch.database, "created": now_iso()},
    }
    db = replicator(couch)
    current = db.get_or_none(doc["_id"])
    if current is not None:
        existing = describe(db, current)
        if existing.state not in ("completed", "error", "failed"):
            raise ReplicationError(
                f"replication {existing.id} ({direction} {existing.remote}) exists already: "
                f"`dirt replicate --cancel {existing.id}` first"
            )
        db.delete(current["_id"], current["_rev"])
    try:
        db.put(doc)
    except Conflict:
        raise ReplicationError(f"replication {doc['_id']}: created elsewhere just now") from None
    return describe(db, doc)


def listing(couch: Couch) -> list[Replication]:
    """The replications of this project's database, to or from anywhere."""
    db = replicator(couch)
    local = safe_url(couch.db_url)
    out = []
    for row in db.all_docs(include_docs=True):
        doc = row.get("doc") or {}
        if row["id"].startswith("_design/"):
            continue
        if local in (safe_url(_url(doc.get("source"))), safe_url(_url(doc.get("target")))):
            out.append(describe(db, doc))
    return out


def cancel(couch: Couch, replication: str) -> Replication:
    """Delete the `_replicator` document: the server stops replicating."""
    db = replicator(couch)
    for _ in range(5):
        doc = db.get_or_none(replication)
        if doc is None or replication.startswith("_design/"):
            raise ReplicationError(f"no replication {replication!r} (see `dirt replicate --list`)")
        try:
            db.delete(doc["_id"], doc["_rev"])
            return describe(db, doc)
        except Conflict:
            continue  # the server wrote its state into the document: read it again
    raise ReplicationError(f"replication {replication}: kept changing while being cancelled")


def describe(db: Couch, doc: dict[str, Any]) -> Replication:
    """What a `_replicator` document says, with its live state, credentials removed."""
    local = db.url
    source, target = _url(doc.get("source")), _url(doc.get("target"))
    info = doc.get("dirt") or {}
    direction = info.get("direction") or ("push" if source.startswith(local) else "pull")
    remote = target if direction == "push" else source
    state, reason = _scheduler_state(db, doc["_id"])
    if state is None:
        state = doc.get("_replication_state") or "pending"
        reason = doc.get("_replication_state_reason") or ""
    return Replication(
        id=doc["_id"],
        direction=direction,
        remote=safe_url(remote),
        continuous=bool(doc.get("continuous")),
        state=state,
        reason=_without_credentials(str(reason), [source, target]),
        created=info.get("created", ""),
    )


def _scheduler_state(db: Couch, doc_id: str) -> tuple[str | None, str]:
    """CouchDB 3 keeps a replication's live state in `_scheduler/docs` (PouchDB Server has
    none: the state is then in the document)."""
    try:
        answer = db.request(
            "GET", f"_scheduler/docs/{REPLICATOR}/{quote(doc_id, safe='')}", server=True
        )
    except DatabaseError:
        return None, ""
    if not isinstance(answer, dict) or "state" not in answer:
        return None, ""
    info = answer.get("info") or {}
    reason = info.get("error", "") if isinstance(info, dict) else str(info)
    return str(answer["state"]), str(reason or "")


def _url(endpoint: Any) -> str:
    """A replication endpoint is a URL, or an object with one (`{"url": ...}`)."""
    if isinstance(endpoint, dict):
        return str(endpoint.get("url") or "")
    return str(endpoint or "")


def _without_credentials(text: str, urls: list[str]) -> str:
    for url in urls:
        if url and url != safe_url(url):
            text = text.replace(url, safe_url(url))
        parts = urlsplit(url)
        if parts.password:
            text = text.replace(parts.password, "***")
    return text
