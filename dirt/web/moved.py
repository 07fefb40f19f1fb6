"""The task URLs from before task specs, `.../tasks/<name>/<platform>...`, answer with a
permanent redirect (308, which keeps the method and body of a POST) to the same place under
the spec `<name>@<platform>`, so links people saved keep working."""

from __future__ import annotations

from functools import partial
from typing import Any

from flask import Blueprint, abort, redirect, request, url_for
from werkzeug.wrappers import Response

from dirt.documents import NAME_RE

bp = Blueprint("moved", __name__)

OLD = "/records/<record>/tasks/<name>/<platform>"
# (the old URL's tail, the endpoint that answers now, its methods)
MOVED = [
    ("", "pages.task", ["GET"]),
    ("/files/<path:file>", "pages.task_file", ["GET"]),
    ("", "api.task", ["GET"]),
    ("/log", "api.task_log", ["GET"]),
    ("/cancel", "api.cancel_task", ["POST"]),
    ("/rerun", "api.rerun_task", ["POST"]),
]


def moved(endpoint: str, record: str, name: str, platform: str, **values: Any) -> Response:
    if not (NAME_RE.match(name) and NAME_RE.match(platform)):
        abort(404)
    url = url_for(endpoint, record=record, spec=f"{name}@{platform}", **values)
    query = request.query_string.decode("ascii", "replace")
    return redirect(f"{url}?{query}" if query else url, 308)


for tail, endpoint, methods in MOVED:
    prefix = "/api/v1" if endpoint.startswith("api.") else ""
    bp.add_url_rule(prefix + OLD + tail, endpoint.replace(".", "_"), partial(moved, endpoint),
                    methods=methods)
