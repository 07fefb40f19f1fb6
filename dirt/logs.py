"""How dirt logs: text lines for people, or JSON lines (`--log-format=json`) for collectors.

A JSON line holds `time`, `level`, `logger` and `message`, plus `record`, `task` and `host`
when the message is about one (passed as `extra={"task": ..., "host": ...}`; a task's record is
read from its id), and `exception` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

FORMATS = ("text", "json")
FIELDS = ("record", "task", "host")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value:
                line[field] = value
        task = line.get("task")
        if isinstance(task, str) and "record" not in line and task.startswith("task:"):
            line["record"] = task.split(":")[1]  # task:<record>:<name>:<platform>[:<key>]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup(level: int, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send log lines to `stream` (stderr) in `fmt` (text or json), at `level`."""
    if fmt not in FORMATS:
        raise ValueError(f"--log-format is text or json, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
