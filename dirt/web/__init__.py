"""The results web page: a Flask application factory, the pages and the JSON API.

    app = create_app(settings, couch)       # what `dirt web` serves
    app = create_app(settings, couch, POLL_MS=500)   # tests override config values

The database client is passed in (never global); templates hold the HTML, static/ the CSS
and the small script that keeps pages live. Write actions (cancel, re-run, submit) need the
token of settings.web.token; without one the site is read-only.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from dirt import couchapp
from dirt.couch import Couch, safe_url
from dirt.errors import DatabaseError, DatabaseUnavailable, DirtError
from dirt.settings import Settings
from dirt.web import format as fmt
from dirt.web.queries import Missing

# Pages load only their own scripts and styles; artifacts never run on this origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def create_app(settings: Settings, couch: Couch, **overrides: Any) -> Flask:
    """The web application over `couch`; `overrides` set Flask config values."""
    from dirt.web import api, guards, integrations, moved, pages

    app = Flask(__name__)
    app.config.update(
        DIRT_TOKEN=settings.web.token,
        POLL_MS=2000,  # how often pages ask whether the database changed
        LOG_POLL_MS=1000,  # how often a running task's log is fetched
        PAGE_SIZE=25,
        TOTALS_SECONDS=30.0,  # how long the records page reuses its counts of all tasks
        VIEW_BYTES=512 * 1024,  # how much of a text file the task page shows inline
        ZIP_BYTES=256 * 1024 * 1024,  # how much one zip of a record's files may hold
        COUCHAPP_STYLESHEET=couchapp.FOLDER / "_attachments" / "dirt.css",
        MAX_CONTENT_LENGTH=settings.web.max_body_bytes,  # checked by guards.py
        DIRT_HOST_NAMES=settings.web.host_names,
    )
    app.config.update(overrides)
    guards.init_app(app)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # answers keep their order
    app.extensions["dirt"] = {"settings": settings, "couch": couch}
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp, url_prefix="/api/v1")
    app.register_blueprint(integrations.bp)
    app.register_blueprint(moved.bp)
    app.jinja_env.filters.update(age=fmt.age, duration=fmt.duration, size=fmt.size)
    app.jinja_env.globals.update(
        database=f"{safe_url(couch.url)} / {couch.database}",
        writes_enabled=bool(settings.web.token),
    )
    register_errors(app)
    app.after_request(secure_headers)
    return app


def secure_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def wants_json() -> bool:
    return request.path.startswith("/api/")


def error_response(status: int, message: str) -> tuple[Any, int]:
    """One line for the user: JSON under /api/, else the error page."""
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", status=status, message=message), status


def register_errors(app: Flask) -> None:
    @app.errorhandler(DatabaseUnavailable)
    def unavailable(exc: DatabaseUnavailable) -> tuple[Any, int]:
        app.logger.warning("web: %s", exc)
        return error_response(503, f"The database is unavailable: {exc}")

    @app.errorhandler(Missing)
    def missing(exc: Missing) -> tuple[Any, int]:
        return error_response(404, str(exc))

    @app.errorhandler(DatabaseError)
    def database_error(exc: DatabaseError) -> tuple[Any, int]:
        app.logger.warning("web: %s", exc)
        return error_response(502, f"The database refused the request: {exc}")

    @app.errorhandler(DirtError)
    def dirt_error(exc: DirtError) -> tuple[Any, int]:
        return error_response(400, str(exc))

    @app.errorhandler(404)
    def not_found(exc: Exception) -> tuple[Any, int]:
        return error_response(404, f"No page at {request.path}")

    @app.errorhandler(405)
    def not_allowed(exc: Exception) -> tuple[Any, int]:
        return error_response(405, f"{request.method} is not allowed on {request.path}")

    @app.errorhandler(HTTPException)
    def refused(exc: HTTPException) -> tuple[Any, int]:
        """Any other refusal (a body that is not JSON, or too large): its one line."""
        return error_response(exc.code or 500, (exc.description or exc.name).splitlines()[0])

    @app.errorhandler(500)
    def internal(exc: Exception) -> tuple[Any, int]:
        return error_response(500, "Internal error in dirt's web page (see the server log)")
