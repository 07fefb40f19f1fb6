"""Text from outside dirt made safe to show: a task's reason, a host's error, a name read from
a document. Whoever wrote it must not move the cursor, retitle the terminal, fake a line of
the log or fill the screen; the CLI's tables and errors and the master's log pass what they
show through `printable`.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL (terminal escapes start with ESC or the C1 CSI/OSC), the
# bidirectional overrides and isolates (they reorder what is shown), line and paragraph
# separators, and lone surrogates (what undecodable bytes become; no terminal can show them)
CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str, limit: int | None = None) -> str:
    """`text` with control characters escaped as Python writes them (`\\x1b`, `\\n`,
    `\\u202e`), cut to `limit` characters with a note of how many more there were."""
    shown = CONTROL.sub(_escape, text)
    if limit is not None and len(shown) > limit:
        return f"{shown[:limit]}... ({len(shown) - limit} more characters)"
    return shown


def printable_lines(text: str) -> str:
    """`text` kept on its lines (a traceback), each line escaped as `printable` does."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in NAMED:
        return NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
