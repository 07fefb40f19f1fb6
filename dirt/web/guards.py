"""What every request passes before a view sees it:

- its Host header names this server ([web] allowed_hosts and the defaults of
  WebSettings.host_names), so a page of another site whose name was pointed at this machine
  (DNS rebinding) reads and writes nothing here;
- its body is no larger than [web] max_body_bytes, checked on the Content-Length before
  anything reads it (waitress refuses a longer one after the headers; see server.py);
- a write outside the hooks sends JSON or no body at all, never a form that a view would read
  as "no task given" (the hooks check their own bodies and signatures).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from flask import Flask, current_app, request

from dirt.web import error_response

WRITES = ("POST", "PUT", "PATCH", "DELETE")
OWN_BODIES = ("integrations",)  # blueprints that read raw bodies themselves (signed hooks)


def init_app(app: Flask) -> None:
    """Check every request against the app's MAX_CONTENT_LENGTH and DIRT_HOST_NAMES."""
    for check in (check_host, check_length, check_json):
        app.before_request(check)


def host_name(host: str) -> str:
    """The name in a Host header, without its port and final dot, in lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.partition(":")[0].rstrip(".")


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_host() -> Any:
    names = current_app.config["DIRT_HOST_NAMES"]
    name = host_name(request.host)
    if "*" in names or name in names or is_address(name):
        return None
    return error_response(
        400,
        f"Host {request.host[:100]!r} is not a name of this dirt web: "
        "add it to [web] allowed_hosts in dirt.toml",
    )


def check_length() -> Any:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    length = request.content_length or 0
    if limit is None or length <= limit:
        return None
    return error_response(
        413,
        f"the request body is {length} bytes; this dirt web takes "
        f"{limit} at most ([web] max_body_bytes)",
    )


def check_json() -> Any:
    if request.method not in WRITES or request.blueprint in OWN_BODIES:
        return None
    has_body = (
        bool(request.content_length)
        or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    )
    if request.is_json or not (has_body or request.mimetype):
        return None
    given = request.mimetype or "no Content-Type"
    return error_response(
        415, f"the body of a write must be JSON (Content-Type: application/json), not {given[:100]}"
    )
