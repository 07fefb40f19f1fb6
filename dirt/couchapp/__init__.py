"""The design document `_design/dirt`, built from the files in this folder.

views/<name>/map.js (+ reduce.js), validate_doc_update.js, and _attachments/ (the read-only
page served by CouchDB itself). `push()` writes it when its content changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import threading
from pathlib import Path
from typing import Any

from dirt.couch import INDEX_TIMEOUT, Couch
from dirt.errors import Conflict, DirtError

FOLDER = Path(__file__).parent
DESIGN_ID = "_design/dirt"


def build() -> dict[str, Any]:
    """The design document as it should be, with a hash of its content."""
    views: dict[str, dict[str, str]] = {}
    for view in sorted((FOLDER / "views").iterdir()):
        if (view / "map.js").is_file():
            views[view.name] = {"map": (view / "map.js").read_text().strip()}
            if (view / "reduce.js").is_file():
                views[view.name]["reduce"] = (view / "reduce.js").read_text().strip()
    attachments = {}
    for path in sorted((FOLDER / "_attachments").rglob("*")):
        if path.is_file():
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            attachments[path.relative_to(FOLDER / "_attachments").as_posix()] = {
                "content_type": kind,
                "data": base64.b64encode(path.read_bytes()).decode("ascii"),
            }
    doc = {
        "_id": DESIGN_ID,
        "language": "javascript",
        "views": views,
        "validate_doc_update": (FOLDER / "validate_doc_update.js").read_text().strip(),
        "_attachments": attachments,
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    doc["dirt_hash"] = digest
    return doc


def push(couch: Couch) -> bool:
    """Write the design document if it is missing or different; True when it was written."""
    wanted = build()
    for _ in range(3):
        current = couch.get_or_none(DESIGN_ID)
        if current and current.get("dirt_hash") == wanted["dirt_hash"]:
            return False
        if current:
            wanted["_rev"] = current["_rev"]
        try:
            couch.put(wanted)
            return True
        except Conflict:
            continue
    raise Conflict(f"{DESIGN_ID}: kept changing while dirt tried to update it")


def warm(couch: Couch) -> threading.Thread:
    """Build every view's index in a background thread, so that the first page or CLI
    call after a restart (or a new view) does not wait for it (minutes on a large database)."""

    views = build()["views"]

    def query_each() -> None:
        for name, view in views.items():
            params: dict[str, Any] = {"limit": 0, "read_timeout": INDEX_TIMEOUT}
            if "reduce" in view:
                params["reduce"] = False
            try:
                couch.view("dirt", name, **params)
            except DirtError:
                return  # the database went away: nothing to warm

    thread = threading.Thread(target=query_each, name="dirt view warmer", daemon=True)
    thread.start()
    return thread
