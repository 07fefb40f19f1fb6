"""A task's log as the master keeps it: bounded, with its head and its tail.

A task may print gigabytes; the master keeps the first `head` bytes and the last bytes up to
`limit`, with a note where it cut, so its memory stays bounded and the start and the end of
the log (where the errors are) survive.
"""

from __future__ import annotations

from collections import deque


class LogBuffer:
    """A task's log, bounded: the first `head` bytes and the last bytes up to `limit`."""

    def __init__(self, limit: int, head: int = 64 * 1024) -> None:
        self.limit = max(limit, 1024)
        self.head_limit = min(head, self.limit // 2)
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.dropped = 0
        self.dirty = False

    def add(self, text: str) -> None:
        """Add a line (or a batch of lines) of output."""
        data = (text + "\n").encode("utf-8", "replace")
        self.dirty = True
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
            if not data:
                return
        self.tail.append(data)
        self.tail_size += len(data)
        excess = self.tail_size - (self.limit - self.head_limit)
        while excess > 0:
            first = self.tail[0]
            cut = min(len(first), excess)
            if cut == len(first):
                self.tail.popleft()
            else:
                self.tail[0] = first[cut:]
            self.tail_size -= cut
            self.dropped += cut
            excess -= cut

    def render(self) -> bytes:
        note = b""
        if self.dropped:
            note = f"\n[dirt: {self.dropped} bytes of log omitted here]\n\n".encode()
        return bytes(self.head) + note + b"".join(self.tail)
