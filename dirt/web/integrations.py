"""Routes for other tools: webhooks that submit records, and Prometheus metrics.

The hooks authenticate by their own signatures (dirt/hooks.py), not by the web token, and read
the raw body, since the signature covers its exact bytes.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from dirt import hooks, metrics
from dirt.tasks import Registry

bp = Blueprint("integrations", __name__)


def _hook(handle: Any) -> Any:
    dirt = current_app.extensions["dirt"]
    settings = dirt["settings"]
    status, body = handle(settings, dirt["couch"], Registry(settings.tasks_dir),
                          request.headers, request.get_data())
    return jsonify(body), status


@bp.post("/api/v1/hooks/github")
def github() -> Any:
    """A GitHub push event (X-Hub-Signature-256) submits the configured tasks."""
    return _hook(hooks.handle_github)


@bp.post("/api/v1/hooks/generic")
def generic() -> Any:
    """Any tool POSTs a record as `dirt submit --file` reads it, with the shared secret."""
    return _hook(hooks.handle_generic)


@bp.get("/metrics")
def prometheus() -> Response:
    """Tasks by state and hosts alive, from the database, in Prometheus' text format."""
    data, content_type = metrics.database_metrics(current_app.extensions["dirt"]["couch"])
    return Response(data, content_type=content_type)
