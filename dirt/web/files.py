"""How a task's files reach a browser: one file as plain text or a download, a text file shown
inline (escaped, the first part of a large one), and all files of a record as one zip.

What a task wrote never runs as a page of this site: files are served sandboxed, text is
escaped, and a name that could reach out of a folder never becomes a path in the zip.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dirt import client
from dirt.couch import Couch
from dirt.documents import task_spec
from dirt.errors import DirtError, InvalidRecord, NotFound
from dirt.web.format import size

log = logging.getLogger("dirt.web")

# Shown by the browser itself (as plain text or an image); anything else is a download.
INLINE_TYPES = ("text/", "image/png", "image/jpeg", "image/gif", "application/json")
# Shown inline on the task page, escaped in a <pre>: by type, or by name for the files tasks
# attach as application/octet-stream.
TEXT_TYPES = ("application/json", "application/xml")
TEXT_SUFFIXES = (".txt", ".log", ".csv", ".json", ".xml")

# A file opened on its own: sandboxed (an opaque origin where nothing runs), nothing loaded.
FILE_CSP = "sandbox; default-src 'none'"
# The inline view: dirt's stylesheet and nothing else, no script even if escaping failed; it
# may sit in a frame of the task page, and its download link may download.
VIEW_CSP = ("sandbox allow-downloads; default-src 'none'; style-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'self'")
LEFT_OUT = "LEFT-OUT.txt"  # in a zip: the files that are not in it, and why


def served_as(content_type: str, download: bool) -> tuple[str, str]:
    """The Content-Type and Content-Disposition a file is served with: text as plain text,
    images as themselves, everything else (HTML, SVG, scripts, binaries) as a download."""
    if download or not content_type.startswith(INLINE_TYPES):
        return "application/octet-stream", "attachment"
    if content_type.startswith(("text/", "application/json")):
        return "text/plain; charset=utf-8", "inline"
    return content_type, "inline"


def is_text(name: str, content_type: str) -> bool:
    """Whether a file is text to show inline on the task page."""
    kind = content_type.split(";")[0].strip().lower()
    return kind.startswith("text/") or kind in TEXT_TYPES or name.lower().endswith(TEXT_SUFFIXES)


@dataclass(frozen=True)
class Excerpt:
    """The part of a text file the inline view shows."""

    text: str
    shown: int  # bytes shown
    length: int  # bytes in the file

    @property
    def cut(self) -> bool:
        return self.shown < self.length


def excerpt(body: bytes, limit: int) -> Excerpt:
    """The first `limit` bytes of a file as text (bytes that are not UTF-8 shown as �)."""
    part = body[:limit]
    return Excerpt(part.decode("utf-8", "replace"), len(part), len(body))


# -- a record's files as one zip ------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One file of the zip: which attachment, and its path in the zip."""

    doc_id: str
    name: str
    path: str


def zip_plan(docs: list[dict[str, Any]], limit: int) -> tuple[list[Entry], list[str]]:
    """What the zip of these task documents holds: each file (log and artifacts) at
    `<spec>/<name>`, until `limit` bytes; and a line for each file left out (a name that is
    not a safe path, or over the limit)."""
    entries: list[Entry] = []
    left_out: list[str] = []
    total = 0
    for doc in docs:
        spec = task_spec(doc)
        for file in client.files_of(doc):
            try:
                path = client.safe_path(file["name"])
            except InvalidRecord:
                left_out.append(f"{spec}: {file['name']!r} is not a safe file name")
                continue
            if total + file["length"] > limit:
                left_out.append(f"{spec}/{path.as_posix()}: {size(file['length'])} would pass "
                                f"the {size(limit)} one download may hold")
                continue
            total += file["length"]
            entries.append(Entry(doc["_id"], file["name"], f"{spec}/{path.as_posix()}"))
    return entries, left_out


class _Chunks:
    """A write-only, unseekable file that keeps what was written until it is taken: zipfile
    writes to it, the response sends what it holds after each file."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def stream_zip(couch: Couch, entries: list[Entry], left_out: list[str]) -> Iterator[bytes]:
    """The zip, a file at a time (one file in memory at once). A file removed since the plan
    was made, or a database that stops answering, ends up in LEFT-OUT.txt."""
    out = _Chunks()
    left_out = list(left_out)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in entries:
            try:
                body = couch.get_attachment(entry.doc_id, entry.name)
            except NotFound:
                left_out.append(f"{entry.path}: removed while the zip was made")
                continue
            except DirtError as exc:
                log.warning("web: zip of %s: %s", entry.path, exc)
                left_out.append(f"{entry.path}: {exc}")
                continue
            archive.writestr(entry.path, body)
            yield out.take()
        if left_out:
            archive.writestr(LEFT_OUT, "".join(f"{line}\n" for line in left_out))
    yield out.take()
