"""The HTML pages: records, a record, a task, hosts, the history of a task name.

A page asked for with the header `X-Dirt-Fragment: 1` answers with its live part only;
static/live.js swaps that in when the database changed, so pages stay current without a reload.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    render_template,
    request,
    send_file,
    url_for,
)

from dirt import client, documents
from dirt.documents import OVERALL_ORDER, State
from dirt.errors import DirtError
from dirt.web import files, queries
from dirt.web import format as fmt
from dirt.web import history as hist

bp = Blueprint("pages", __name__)

# Left to right in summary bars: what is done, then what is still to come.
BAR_ORDER = [s.value for s in (State.SUCCESS, State.FAILED, State.ERROR, State.UNSCHEDULABLE,
                               State.CANCELLED, State.RUNNING, State.PENDING)]
HISTORY_SIZES = (10, 30, 100)


def couch() -> Any:
    return current_app.extensions["dirt"]["couch"]


def page(template: str, **context: Any) -> Response | str:
    """Render a page, or only its live part for live.js."""
    fragment = request.headers.get("X-Dirt-Fragment") == "1"
    html = render_template(
        template,
        fragment=fragment,
        poll_ms=current_app.config["POLL_MS"],
        bar=lambda counts: fmt.bar(counts, BAR_ORDER),
        states=[s.value for s in OVERALL_ORDER],
        **context,
    )
    response = Response(html, mimetype="text/html")
    response.headers["Vary"] = "X-Dirt-Fragment"
    return response


@bp.get("/dirt.css")
def stylesheet() -> Response:
    """One stylesheet for these pages and the CouchApp (it lives with the CouchApp)."""
    return send_file(current_app.config["COUCHAPP_STYLESHEET"], mimetype="text/css")


@bp.get("/")
def records() -> Response | str:
    text = (request.args.get("q") or "").strip() or None
    state = request.args.get("state") or None
    if state not in {s.value for s in State} | {"empty"}:
        state = None
    result = queries.list_records(
        couch(), limit=current_app.config["PAGE_SIZE"], older=request.args.get("older"),
        newer=request.args.get("newer"), state=state, text=text,
    )
    return page(
        "records.html", page=result, q=text or "", state=state or "",
        totals=totals(),
        older_url=result.older and url_for(".records", older=result.older, q=text, state=state),
        newer_url=result.newer and url_for(".records", newer=result.newer, q=text, state=state),
    )


def totals() -> dict[str, int] | None:
    """Counts of all tasks by state: a grouped reduce over every task (seconds on 100,000
    tasks), so it is refreshed in the background at most every TOTALS_SECONDS and never makes
    a page wait long. None while the first count is still running."""
    cache = current_app.extensions["dirt"]
    at, counts = cache.get("totals", (0.0, None))
    if time.monotonic() - at > current_app.config["TOTALS_SECONDS"]:
        counting = cache.setdefault("totals_lock", threading.Lock())
        if counting.acquire(blocking=False):
            worker = threading.Thread(target=count_totals, args=(couch(), cache, counting),
                                      name="dirt totals", daemon=True)
            worker.start()
            if counts is None:
                worker.join(0.3)  # a small database answers at once
                counts = cache.get("totals", (0.0, None))[1]
    return counts


def count_totals(db: Any, cache: dict[str, Any], counting: threading.Lock) -> None:
    try:
        cache["totals"] = (time.monotonic(), queries.state_counts(db))
    except DirtError:
        pass  # the page goes on without them; the next request tries again
    finally:
        counting.release()


@bp.get("/records/<name>")
def record(name: str) -> Response | str:
    status = queries.record(couch(), name)
    return page("record.html", record=status["record"],
                tasks=documents.attention_order(status["tasks"]))


@bp.get("/records/<name>/artifacts.zip")
def record_zip(name: str) -> Response:
    """Every file of the record's tasks (logs too), at `<spec>/<file>`, streamed."""
    with queries.found():
        docs = client.record_docs(couch(), name)[1]
    entries, left_out = files.zip_plan(docs, current_app.config["ZIP_BYTES"])
    response = Response(files.stream_zip(couch(), entries, left_out), mimetype="application/zip")
    response.headers.set("Content-Disposition", "attachment", filename=f"{name}.zip")
    return response


@bp.get("/records/<record>/tasks/<spec>")
def task(record: str, spec: str) -> Response | str:
    doc = queries.task(couch(), record, spec)
    live_part_only = request.headers.get("X-Dirt-Fragment") == "1"  # the log is not in it
    log = None if live_part_only else queries.task_log(couch(), record, doc["spec"])
    texts = [f for f in doc["files"] if f["name"] != client.LOG
             and files.is_text(f["name"], f["content_type"])]
    return page("task.html", task=doc, log=log, running=not doc["final"], texts=texts,
                log_poll_ms=current_app.config["LOG_POLL_MS"])


@bp.get("/records/<record>/tasks/<spec>/files/<path:file>")
def task_file(record: str, spec: str, file: str) -> Response:
    """A log or artifact. Text is shown as plain text; anything that a browser could run
    (HTML, SVG, scripts) is a download, sandboxed, never a page of this site. `?download`
    makes any file a download."""
    body, info = queries.task_file(couch(), record, spec, file)
    content_type, disposition = files.served_as(info["content_type"], "download" in request.args)
    response = Response(body, mimetype=None, content_type=content_type)
    response.headers.set("Content-Disposition", disposition, filename=file.rsplit("/", 1)[-1])
    response.headers["Content-Security-Policy"] = files.FILE_CSP
    return response


@bp.get("/records/<record>/tasks/<spec>/view/<path:file>")
def task_view(record: str, spec: str, file: str) -> Response:
    """A text file shown escaped in a page where nothing runs (the task page frames it);
    a large one up to VIEW_BYTES, with a note."""
    body, info = queries.task_file(couch(), record, spec, file)
    if not files.is_text(file, info["content_type"]):
        raise queries.Missing(f"{file} of task {info['task']} is not text to show here; "
                              "download it from the task page")
    html = render_template("view.html", record=record, spec=info["task"], file=file,
                           framed="framed" in request.args,
                           part=files.excerpt(body, current_app.config["VIEW_BYTES"]))
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = files.VIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.get("/hosts")
def hosts() -> Response | str:
    return page("hosts.html", hosts=queries.hosts(couch()))


@bp.get("/history/<name>")
def history(name: str) -> Response | str:
    try:
        size = int(request.args.get("records", 30))
    except ValueError:
        size = 30
    size = max(1, min(500, size))
    result = queries.task_history(couch(), name, size)
    return page("history.html", history=result, size=size, sizes=HISTORY_SIZES,
                chart=chart(result))


def chart(history: hist.History) -> dict[str, Any]:
    """Geometry of the pass/fail grid and the duration trend (the template draws them)."""
    cell, label = 16, max([len(p.label) for p in history.series] + [8]) * 7 + 12
    width = label + max(len(history.records), 1) * cell
    trend_width = max((len(history.records) - 1) * cell, 360)
    durations = [r.duration for p in history.series for r in p.runs if r and r.duration]
    top = max(durations) if durations else 0.0
    lines = [
        {"label": p.label, "points": " ".join(
            f"{x + label + cell / 2},{y + 10}" for x, y in hist.trend_points(
                [r.duration if r else None for r in p.runs], trend_width, 100, top))}
        for p in history.series
    ]
    return {"cell": cell, "label": label, "width": width,
            "trend_width": label + trend_width + cell,
            "height": len(history.series) * cell + 4, "lines": lines, "top": top}
