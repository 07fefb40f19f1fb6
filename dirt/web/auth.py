"""The write token: `Authorization: Bearer <token>`, compared with settings.web.token.

Browsers never send that header on their own, so another site cannot make a visitor's browser
cancel or re-run anything (no cookie carries the token: nothing to forge).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, jsonify, request

DISABLED = (
    "write actions are disabled: this dirt web server has no token "
    "(set [web] token in dirt.toml or DIRT_WEB_TOKEN)"
)


def check() -> tuple[Any, int] | None:
    """None when the request carries the right token, else the error response."""
    token = current_app.config.get("DIRT_TOKEN") or ""
    if not token:
        return jsonify(error=DISABLED), 403
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        return jsonify(error=f"cross-origin write refused (from {origin})"), 403
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        response = jsonify(error="write actions need the header 'Authorization: Bearer <token>'")
        response.headers["WWW-Authenticate"] = 'Bearer realm="dirt"'
        return response, 401
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return jsonify(error="wrong token"), 403
    return None


def token_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Refuse the request unless it carries the right bearer token."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        refused = check()
        return refused if refused is not None else view(*args, **kwargs)

    return guarded
