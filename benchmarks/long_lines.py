"""How long a host takes to relay a task's output without newlines (and, for comparison, the
same bytes in lines of 100): a task writes N MB to its stdout on a local execnet gateway, and
the clock runs from the start of the task to its last message. Also the gateway's peak memory
(VmHWM), which holds the unfinished line.

    .venv/bin/python -m benchmarks.long_lines [MB ...]      (default: 50 100)
"""

from __future__ import annotations

import queue
import sys
import time
from pathlib import Path

import execnet

from dirt.remote import Gateway, Job

WRITER = """
import os


def execute(ctx):
    block = (b"x" * 99 + b"\\n") if ctx.args["lines"] else b"x" * 100
    chunk = block * 10000  # a megabyte
    for _ in range(ctx.args["mb"]):
        os.write(1, chunk)
    return {"success": True, "reason": ""}
"""
ENDINGS = ("result", "error", "timeout", "lost")


def gateway_peak_mb(gateway: Gateway) -> float:
    status = gateway.gateway.remote_exec("channel.send(open('/proc/self/status').read())").receive(
        10
    )
    line = next(ln for ln in status.splitlines() if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def relay(mb: int, lines: bool) -> tuple[float, int, float]:
    """(seconds, bytes of log that came back, the gateway's peak memory in MB)."""
    group = execnet.Group()
    gateway = Gateway("bench", "popen//id=bench", group)
    gateway.open()
    try:
        events: queue.Queue = queue.Queue()
        job = Job(
            task_id="task:bench:writer:linux",
            task="writer",
            platform="linux",
            source=WRITER,
            record={"name": "bench"},
            args={"mb": mb, "lines": lines},
            timeout=600,
        )
        started = time.monotonic()
        channel = gateway.start(job, events, "bench")  # kept: a channel let go ends its task
        size = 0
        while True:
            _, message = events.get(timeout=600)
            if message[0] == "log":
                size += len(message[1]) + 1
            if message[0] in ENDINGS:
                break
        seconds = time.monotonic() - started
        assert message[0] == "result", message
        del channel
        return seconds, size, gateway_peak_mb(gateway)
    finally:
        gateway.shutdown()
        group.terminate(5)


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [50, 100]
    print(f"dirt at {Path(__file__).resolve().parent.parent}")
    for mb in sizes:
        for lines in (True, False):
            seconds, size, peak = relay(mb, lines)
            kind = "lines of 100" if lines else "no newline"
            print(
                f"{mb:4d} MB, {kind:12s}: {seconds:7.2f} s, {size / 1e6:7.1f} MB of log, "
                f"gateway peak {peak:6.1f} MB"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
