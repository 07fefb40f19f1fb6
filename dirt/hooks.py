"""Records submitted by webhooks: GitHub push events, and a generic JSON hook.

The web app's routes hand over the request's headers and raw body and send back what these
functions return, a status code and a JSON body:

    status, answer = hooks.handle_github(settings, couch, registry, request.headers, request.data)
    status, answer = hooks.handle_generic(settings, couch, registry, request.headers, request.data)

A delivery is checked before anything is read from it: GitHub's `X-Hub-Signature-256` (the
HMAC-SHA256 of the raw body under the webhook's secret), or for the generic hook the same
signature in `X-Dirt-Signature-256` or `Authorization: Bearer <secret>`. A bad or missing one
is 401 and writes nothing. Each delivery id (`X-GitHub-Delivery`, or the generic hook's
optional `X-Dirt-Delivery`) is remembered in a `hook:<source>:<delivery>` document, claimed
before the record is submitted, so a replayed delivery submits nothing twice.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from dirt import client, documents
from dirt.couch import Couch
from dirt.documents import parse_iso, record_id
from dirt.errors import Conflict, DatabaseUnavailable, DirtError, InvalidRecord
from dirt.settings import GitHubHook, Settings
from dirt.tasks import Registry

GITHUB_SIGNATURE = "x-hub-signature-256"
DIRT_SIGNATURE = "x-dirt-signature-256"
STALE_CLAIM_SECONDS = 300.0  # a delivery claimed but never finished (crash) may be redone
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
COMMIT_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")  # SHA-1 or SHA-256 repositories


class HookError(DirtError):
    """A delivery that is refused; `status` is the HTTP status the route answers with."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class BadSignature(HookError):
    status = 401


class Duplicate(DirtError):
    """The delivery was handled (or is being handled) already."""

    def __init__(self, hook: dict[str, Any]) -> None:
        super().__init__(f"delivery {hook['delivery']} was handled already")
        self.hook = hook


Answer = tuple[int, dict[str, Any]]


# -- signatures ---------------------------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of body>`, as GitHub sends in X-Hub-Signature-256."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of `body` under `secret`, compared in constant time.
    An empty secret never matches: an unconfigured hook accepts nothing."""
    if not secret or not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


def token_ok(secret: str, header: str | None) -> bool:
    """`Authorization: Bearer <secret>`, compared in constant time."""
    if not secret or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(secret.encode(), header[7:].strip().encode())


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HookError(f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise HookError("the body is nested too deeply") from None


# -- the two hooks ------------------------------------------------------------------------


def handle_github(
    settings: Settings,
    couch: Couch,
    registry: Registry,
    headers: Mapping[str, str],
    body: bytes,
) -> Answer:
    """A GitHub webhook delivery: a push to a configured repository and branch submits a
    record with that entry's tasks. ping answers pong; other events are ignored (202)."""
    return _answer(lambda: _github(settings, couch, registry, _lower(headers), body))


def handle_generic(
    settings: Settings,
    couch: Couch,
    registry: Registry,
    headers: Mapping[str, str],
    body: bytes,
) -> Answer:
    """A generic JSON hook: the body is a record as `dirt submit --file` reads it, with its
    `name`; signed with [hooks] secret (X-Dirt-Signature-256) or carrying it as a bearer
    token."""
    return _answer(lambda: _generic(settings, couch, registry, _lower(headers), body))


def _answer(handle: Any) -> Answer:
    try:
        return handle()
    except Duplicate as dup:
        hook = dup.hook
        return 200, {"message": str(dup), "duplicate": True, "state": hook["state"],
                     "record": hook.get("record")}
    except HookError as exc:
        return exc.status, {"error": str(exc)}
    except InvalidRecord as exc:
        return 422, {"error": str(exc)}
    except DatabaseUnavailable as exc:
        return 503, {"error": str(exc)}


def _github(
    settings: Settings, couch: Couch, registry: Registry, headers: dict[str, str], body: bytes
) -> Answer:
    config = settings.hooks
    if not config.github:
        raise HookError("no GitHub hooks configured ([[hooks.github]] in dirt.toml)", 404)
    signature = headers.get(GITHUB_SIGNATURE)
    trusted = [e for e in config.github
               if signature_ok(e.secret or config.github_secret, body, signature)]
    if not trusted:
        raise BadSignature(f"missing or wrong {GITHUB_SIGNATURE} signature")
    event = headers.get("x-github-event", "")
    if event == "ping":
        return 200, {"message": "pong"}
    if event != "push":
        return 202, {"message": f"event {event!r} ignored: dirt acts on push events"}
    delivery = headers.get("x-github-delivery", "")
    payload = _json(body)
    push = PushEvent.parse(payload)
    if push.branch is None or push.deleted:
        return 202, {"message": f"{push.ref} ignored: dirt acts on pushes of branches"}
    mine = [e for e in config.github if e.repository.lower() == push.repository.lower()]
    if mine and not any(e in trusted for e in mine):
        raise BadSignature(f"missing or wrong {GITHUB_SIGNATURE} signature")  # another's secret
    entry = next((e for e in mine if e in trusted and fnmatch.fnmatchcase(push.branch, e.branch)),
                 None)
    if entry is None:
        return 202, {"message": f"no [[hooks.github]] for {push.repository} branch "
                                f"{push.branch}: nothing submitted"}
    hook = claim(couch, "github", delivery, event, repository=push.repository, ref=push.ref,
                 revision=push.after)
    name = unique_name(couch, record_name(entry, push, delivery), delivery)
    return _submit(settings, couch, registry, hook, name, list(entry.tasks),
                   description=push.description, submitter=push.pusher, meta=push.meta(delivery))


def _generic(
    settings: Settings, couch: Couch, registry: Registry, headers: dict[str, str], body: bytes
) -> Answer:
    secret = settings.hooks.secret
    if not secret:
        raise HookError("the generic hook is off: set [hooks] secret in dirt.toml", 404)
    if not (signature_ok(secret, body, headers.get(DIRT_SIGNATURE))
            or token_ok(secret, headers.get("authorization"))):
        raise BadSignature(f"missing or wrong {DIRT_SIGNATURE} signature or bearer token")
    try:
        spec = client.check_record_spec(_json(body), "hook body", need_name=True)
    except InvalidRecord as exc:
        raise HookError(str(exc)) from None
    documents.check_name("record", spec["name"])
    delivery = headers.get("x-dirt-delivery")
    hook = claim(couch, "generic", delivery, "record") if delivery else None
    if couch.get_or_none(record_id(spec["name"])) is not None:
        if hook:
            finish(couch, hook, "refused", reason="the record exists already")
        raise HookError(f"record {spec['name']!r} exists already", 409)
    meta = dict(spec.get("meta") or {})
    if delivery:
        meta["hook_delivery"] = delivery
    return _submit(settings, couch, registry, hook, spec["name"], spec.get("tasks") or [],
                   description=spec.get("description") or "",
                   submitter=spec.get("submitter") or "hook", meta=meta)


def _submit(
    settings: Settings,
    couch: Couch,
    registry: Registry,
    hook: dict[str, Any] | None,
    name: str,
    tasks: list[Any],
    **record: Any,
) -> Answer:
    """Submit the record; the delivery's document says how it went."""
    try:
        doc, task_docs = client.submit(couch, registry, name, tasks, **record)
    except InvalidRecord as exc:
        if hook:
            finish(couch, hook, "refused", reason=str(exc))
        raise
    if hook:
        finish(couch, hook, "done", record=name)
    return 201, {
        "message": f"record {name}: {len(task_docs)} tasks submitted",
        "record": name,
        "tasks": [f"{t['name']}@{t['platform']}" for t in task_docs],
        "url": f"{settings.web.base_url}/records/{quote(name, safe='')}",
    }


# -- deliveries -----------------------------------------------------------------------------


def claim(couch: Couch, source: str, delivery: str | None, event: str,
          **details: Any) -> dict[str, Any]:
    """Create the delivery's document; Duplicate when it exists, unless an earlier try was
    refused or abandoned (GitHub redelivers with the same id: that one is tried again)."""
    if not delivery:
        raise HookError("a delivery id is needed (X-GitHub-Delivery)")
    try:
        doc = documents.new_hook(source, delivery, event, **details)
    except InvalidRecord:
        raise HookError(f"invalid delivery id {delivery[:80]!r}") from None
    for _ in range(5):
        try:
            couch.put(doc)
            return doc
        except Conflict:
            current = couch.get(doc["_id"])
        if current["state"] == "done" or (
            current["state"] == "accepted"
            and time.time() - parse_iso(current["updated"]) < STALE_CLAIM_SECONDS
        ):
            raise Duplicate(current)
        doc["_rev"] = current["_rev"]
        doc["tries"] = int(current.get("tries") or 1) + 1
    raise HookError(f"delivery {delivery}: claimed elsewhere at the same time", 409)


def finish(couch: Couch, hook: dict[str, Any], state: str, record: str | None = None,
           reason: str = "") -> None:
    """Record how a claimed delivery ended (done with its record, or refused and why)."""
    for _ in range(5):
        hook.update(state=state, record=record, reason=reason, updated=documents.now_iso())
        try:
            couch.put(hook)
            return
        except Conflict:
            hook = {**couch.get(hook["_id"])}


# -- GitHub push events ---------------------------------------------------------------------


class PushEvent:
    """What dirt reads from a push event's payload (GitHub's documented `push` shape)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        repository = payload["repository"]
        self.repository: str = _field(repository, "full_name", "repository.full_name")
        self.html_url: str = _field(repository, "html_url", "repository.html_url", "")
        self.ref: str = _field(payload, "ref", "ref")
        self.after: str = _field(payload, "after", "after")
        if not COMMIT_RE.match(self.after.lower()):
            raise HookError(f"not a push event payload: after {self.after[:80]!r} is not a "
                            "commit id")
        self.deleted = bool(payload.get("deleted"))
        self.compare = _field(payload, "compare", "compare", "")
        prefix = "refs/heads/"
        self.branch = self.ref[len(prefix):] if self.ref.startswith(prefix) else None
        head = payload.get("head_commit") or {}
        self.message = _field(head, "message", "head_commit.message", "").strip()
        pusher = payload.get("pusher") or {}
        sender = payload.get("sender") or {}
        self.pusher = str(pusher.get("name") or sender.get("login") or "github")

    @classmethod
    def parse(cls, payload: Any) -> PushEvent:
        """The event, or HookError (400) naming what the payload lacks or holds wrongly."""
        try:
            return cls(payload)
        except (KeyError, TypeError, AttributeError):
            raise HookError(
                "not a push event payload (want ref, after, repository.full_name)"
            ) from None

    @property
    def description(self) -> str:
        first = self.message.splitlines()[0] if self.message else ""
        return f"push to {self.branch}: {first}"[:200]

    def meta(self, delivery: str) -> dict[str, Any]:
        """The record's meta; github_repository and revision drive commit statuses."""
        return {
            "repository": self.html_url,
            "github_repository": self.repository,
            "branch": self.branch,
            "revision": self.after,
            "compare": self.compare,
            "hook_delivery": delivery,
        }


def _field(mapping: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    """A string of a push payload; HookError (400) when it is missing (and has no default)
    or is not a string: GitHub's payloads are checked as any other input."""
    value = mapping.get(key) if default is not None else mapping[key]
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise HookError(f"not a push event payload: {where} is {type(value).__name__} "
                        f"{str(value)[:80]!r}, not a string")
    return value


def record_name(entry: GitHubHook, push: PushEvent, delivery: str) -> str:
    """The record's name from the entry's template: {owner}, {repo}, {branch}, {sha} (the
    first 12 characters), {delivery}; characters a name cannot hold become '-'."""
    owner, _, repo = push.repository.partition("/")
    fields = {"owner": owner, "repo": repo, "branch": push.branch or "", "sha": push.after[:12],
              "delivery": delivery}
    try:
        name = entry.record.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise HookError(f"hooks.github record template {entry.record!r}: {exc}", 500) from None
    return UNSAFE.sub("-", name).strip("-.")[:100] or f"push-{push.after[:12]}"


def unique_name(couch: Couch, name: str, delivery: str) -> str:
    """`name`, or `name-<delivery>` when a record of that name exists (the same commit
    pushed again)."""
    if couch.get_or_none(record_id(name)) is None:
        return name
    return f"{name}-{UNSAFE.sub('-', delivery)[:12]}".strip("-")
