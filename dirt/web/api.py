"""The JSON API under /api/v1/: what the pages show, as data, plus the write actions
(cancel, re-run, submit) behind the bearer token."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, jsonify, request, url_for

from dirt import client
from dirt.documents import State, task_spec
from dirt.errors import InvalidRecord, UsageError
from dirt.tasks import Registry
from dirt.web import queries
from dirt.web.auth import token_required

bp = Blueprint("api", __name__)


def couch() -> Any:
    return current_app.extensions["dirt"]["couch"]


def int_arg(name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        raise InvalidRecord(f"{name} must be a whole number") from None
    return max(low, min(high, value))


def state_arg() -> str | None:
    state = request.args.get("state") or None
    if state and state not in {s.value for s in State} | {"empty"}:
        raise InvalidRecord(f"unknown state {state!r} (known: {', '.join(s.value for s in State)})")
    return state


@bp.get("/")
def index() -> Any:
    """The endpoints, so the API explains itself."""
    return jsonify(
        records=url_for(".records"),
        record=url_for(".record", name="NAME"),
        task=url_for(".task", record="NAME", spec="TASK@PLATFORM:KEY"),
        log=url_for(".task_log", record="NAME", spec="TASK@PLATFORM:KEY"),
        hosts=url_for(".hosts"),
        history=url_for(".history", name="TASK"),
        seq=url_for(".seq"),
        writes_enabled=bool(current_app.config["DIRT_TOKEN"]),
    )


@bp.get("/seq")
def seq() -> Any:
    """The database's update sequence: pages poll this and reload their data when it moves."""
    return jsonify(update_seq=queries.update_seq(couch()))


# -- records ------------------------------------------------------------------------------


def record_json(record: dict[str, Any]) -> dict[str, Any]:
    shown = {k: v for k, v in record.items() if not k.startswith("_")}
    return {**shown, "url": url_for(".record", name=record["name"])}


@bp.get("/records")
def records() -> Any:
    limit = int_arg("limit", current_app.config["PAGE_SIZE"], 1, 200)
    text = request.args.get("q") or None
    state = state_arg()
    page = queries.list_records(
        couch(), limit=limit, older=request.args.get("older"), newer=request.args.get("newer"),
        state=state, text=text,
    )

    def link(**cursor: str | None) -> str | None:
        if not any(cursor.values()):
            return None
        return url_for(".records", limit=limit, state=state, q=text, **cursor)

    return jsonify(
        records=[record_json(r) for r in page.records],
        older=link(older=page.older),
        newer=link(newer=page.newer),
        older_cursor=page.older,
        newer_cursor=page.newer,
        partial=page.partial,
        scanned=page.scanned,
    )


@bp.get("/records/<name>")
def record(name: str) -> Any:
    status = queries.record(couch(), name)
    return jsonify(
        record=record_json(status["record"]),
        tasks=[task_row_json(name, t) for t in status["tasks"]],
    )


def task_row_json(record_name: str, task: dict[str, Any]) -> dict[str, Any]:
    return {
        **task,
        "url": url_for(".task", record=record_name, spec=task["spec"]),
        "files": [file_json(record_name, f) for f in task.get("files", [])],
    }


def file_json(record_name: str, file: dict[str, Any]) -> dict[str, Any]:
    return {
        **file,
        "url": url_for("pages.task_file", record=record_name, spec=file["task"],
                       file=file["name"]),
    }


@bp.get("/records/<record>/tasks/<spec>")
def task(record: str, spec: str) -> Any:
    doc = queries.task(couch(), record, spec)
    doc["files"] = [file_json(record, f) for f in doc["files"]]
    doc["log"] = url_for(".task_log", record=record, spec=doc["spec"])
    return jsonify(doc)


@bp.get("/records/<record>/tasks/<spec>/log")
def task_log(record: str, spec: str) -> Any:
    offset = int_arg("offset", 0, -1, 1 << 40)
    return jsonify(queries.task_log(couch(), record, spec, offset))


# -- hosts and history --------------------------------------------------------------------


@bp.get("/hosts")
def hosts() -> Any:
    return jsonify(hosts=queries.hosts(couch()))


@bp.get("/history/<name>")
def history(name: str) -> Any:
    records = int_arg("records", 30, 1, 500)
    return jsonify(queries.task_history(couch(), name, records).to_json())


# -- write actions ------------------------------------------------------------------------


@bp.get("/token")
@token_required
def token() -> Any:
    """200 when the bearer token is right: the page checks a token before keeping it."""
    return jsonify(writes=True)


# What the body of a write action on a record may hold, and the type of each value.
# What the body of a write action on a record may hold: each key, its type, what it takes.
ACTION_KEYS = {
    "task": (str, "a task spec like name@platform[:key]"),
    "failed": (bool, "true or false"),
    "as": (str, "a new record name"),
}


def action_body(*allowed: str) -> dict[str, Any]:
    """The JSON body of a write action (may be empty): an object of `allowed` keys with
    values of their type; UsageError (a 400, nothing written) otherwise, never read as "every
    task"."""
    if not request.get_data(cache=True):
        return {}
    try:
        body = json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UsageError('the request body must be an object like {"task": "name@platform"}')
    for key, value in body.items():
        if key not in allowed:
            raise UsageError(f"the request body has an unknown key {key!r} "
                             f"(known: {', '.join(allowed)})")
        kind, what = ACTION_KEYS[key]
        if not isinstance(value, kind) or value == "":
            raise UsageError(f"{key} must be {what}, not {json.dumps(value)}")
    return body


def existing_record(name: str) -> None:
    """404 for a record that does not exist."""
    with queries.found():
        client.get_record(couch(), name)


def record_changed(name: str, action: str, changed: int) -> Any:
    status = queries.record(couch(), name)
    return jsonify(
        message=f"{action} {changed} task{'s' if changed != 1 else ''} of {name}",
        changed=changed,
        record=record_json(status["record"]),
    )


@bp.post("/records/<name>/cancel")
@token_required
def cancel(name: str) -> Any:
    body = action_body("task")
    existing_record(name)
    return record_changed(name, "cancelled", client.cancel(couch(), name, body.get("task")))


@bp.post("/records/<name>/rerun")
@token_required
def rerun(name: str) -> Any:
    """Re-run the record's ended tasks (`task`: those a spec names; `failed`: those that did
    not pass), or with `as` submit them again as a new record of that name."""
    body = action_body("task", "failed", "as")
    existing_record(name)
    if "as" in body:
        settings = current_app.extensions["dirt"]["settings"]
        record, tasks = client.rerun_as(couch(), Registry(settings.tasks_dir), name, body["as"],
                                        body.get("task"), failed=body.get("failed", False))
        return created(record, tasks, f"record {record['name']}: {len(tasks)} tasks of "
                                      f"{name} submitted again")
    changed = client.rerun(couch(), name, body.get("task"), failed=body.get("failed", False))
    return record_changed(name, "re-ran", changed)


@bp.post("/records/<record>/tasks/<spec>/cancel")
@token_required
def cancel_task(record: str, spec: str) -> Any:
    doc = queries.task(couch(), record, spec)
    return record_changed(record, "cancelled", client.cancel(couch(), record, doc["spec"]))


@bp.post("/records/<record>/tasks/<spec>/rerun")
@token_required
def rerun_task(record: str, spec: str) -> Any:
    doc = queries.task(couch(), record, spec)
    return record_changed(record, "re-ran", client.rerun(couch(), record, doc["spec"]))


def json_body() -> Any:
    """The request's JSON body, None when it is none or not JSON; InvalidRecord (400) for
    one nested deeper than the JSON parser goes."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        raise InvalidRecord("the request body is nested too deeply") from None


@bp.post("/records")
@token_required
def submit() -> Any:
    spec = client.check_record_spec(json_body(), "the request body", need_name=True)
    settings = current_app.extensions["dirt"]["settings"]
    record, tasks = client.submit(
        couch(),
        Registry(settings.tasks_dir),
        spec["name"],
        spec.get("tasks") or [],
        description=spec.get("description") or "",
        submitter=spec.get("submitter") or "web",
        meta=spec.get("meta") or {},
    )
    return created(record, tasks, f"record {record['name']}: {len(tasks)} tasks submitted")


def created(record: dict[str, Any], tasks: list[dict[str, Any]], message: str) -> Any:
    """201 for a new record: its JSON, its tasks' specs, and where its page is."""
    response = jsonify(
        message=message,
        record=record_json(client.public(record)),
        tasks=[task_spec(t) for t in tasks],
        page=url_for("pages.record", name=record["name"]),
    )
    response.status_code = 201
    response.headers["Location"] = url_for(".record", name=record["name"])
    return response
