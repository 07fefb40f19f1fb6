"""py-spy on a running master: a flame graph (profile.svg) and collapsed stacks (profile.txt),
then the functions that cost the most, by own time and by time including callees."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import PEERS_VENV
from benchmarks.context import Context

OUT = Path(__file__).parent


def py_spy() -> str | None:
    found = PEERS_VENV / "bin" / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


def start(ctx: Context, pid: int, rate: int = 100) -> list[subprocess.Popen]:
    """Two samplers on one process: one writes the flame graph of every active thread, the
    other the raw stacks of the thread holding the GIL (where the master's CPU goes)."""
    program = py_spy()
    if program is None:
        return []
    spies = []
    for fmt, out, extra in (("flamegraph", "profile.svg", []), ("raw", "profile.txt", ["--gil"])):
        argv = [program, "record", "--pid", str(pid), "--rate", str(rate), "--format", fmt,
                "--output", str(OUT / out), "--nonblocking", *extra]
        spies.append(ctx.procs.start(argv, ctx.workdir / f"py-spy-{fmt}.log"))
    time.sleep(1.0)  # let them attach before the work starts
    return spies


def stop(ctx: Context, spies: list[subprocess.Popen]) -> dict[str, Any] | None:
    """Stop the samplers (SIGINT: they write their files) and read the raw stacks."""
    for spy in spies:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
    for spy in spies:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            pass
        ctx.procs.stop(spy)
    raw = OUT / "profile.txt"
    if not raw.exists():
        return {"error": "py-spy wrote no profile (see its log in the work folder)"}
    return analyse(raw.read_text())


def frame_name(frame: str) -> str:
    """`function (path/to/file.py:123)` -> `function (file.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


def analyse(text: str, top: int = 15) -> dict[str, Any]:
    """Own and inclusive sample shares per function, and per thread kind."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    dirt: Counter = Counter()
    threads: Counter = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
            if "(dirt/" in name and not name.startswith(("main ", "dispatch ", "cmd_serve ")):
                dirt[name] += count
        threads[thread_kind(frames)] += count
    def share(counter: Counter) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)]
    return {"samples": total, "own_pct": share(own), "inclusive_pct": share(inclusive),
            "dirt_inclusive_pct": share(dirt), "threads_pct": share(threads)}


def thread_kind(frames: list[str]) -> str:
    text = ";".join(frames)
    for marker, kind in (("loop_once", "master loop"), ("follow_changes", "changes feed"),
                         ("_pump", "task channel pumps"), ("_check_host", "host checks"),
                         ("_reap", "gateway reaping"), ("execnet", "execnet I/O threads")):
        if marker in text:
            return kind
    return "other"
