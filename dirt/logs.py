"""How dirt logs: text lines for people, or JSON lines (`--log-format=json`) for collectors.

A JSON line holds `time`, `level`, `logger` and `message`, plus `record`, `task` and `host`
when the message is about one (passed as `extra={"task": ..., "host": ...}`; a task's record is
read from its id), and `exception` with the traceback when there is one.

A message often carries what a task or a host said (a reason, an error): both formats show
its control characters escaped (a task cannot move the cursor or fake a log line) and cut it
to MESSAGE_LIMIT characters.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from dirt.printable import printable, printable_lines

FORMATS = ("text", "json")
FIELDS = ("record", "task", "host")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
MESSAGE_LIMIT = 2000  # characters of one message; a longer reason is cut with a note


def message_of(record: logging.LogRecord) -> str:
    """The record's message with its control characters escaped, cut to MESSAGE_LIMIT."""
    return printable(record.getMessage(), MESSAGE_LIMIT)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT lines whose message and traceback show no control characters."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = message_of(record)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return printable_lines(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message_of(record),
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
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
