"""A farm for fault tests: a project whose `runlog` task writes a line per run to a file, masters
run as real `dirt serve` processes, and checks that every task ended exactly once.

All hosts are this machine, so one append-only file (lines under PIPE_BUF are atomic) sees
every run of every host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from dirt import client, scaffold
from dirt.couch import Couch
from dirt.documents import FINAL, State
from dirt.tasks import Registry

DIRT = str(Path(sys.executable).parent / "dirt")

RUNLOG_TASK = '''"""Append 'start' and 'end' lines per run to args.file, args.seconds apart."""

import os
import socket
import time


def line(ctx, what):
    text = "%s %s %d %s\\n" % (ctx.args["id"], what, os.getpid(), time.time())
    fd = os.open(ctx.args["file"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, text.encode())
    os.close(fd)


def execute(ctx):
    line(ctx, "start")
    for _ in range(int(ctx.args.get("lines", 0))):
        print("x" * 99)
    time.sleep(float(ctx.args.get("seconds", 0)))
    line(ctx, "end")
    return {"success": True, "reason": "ran"}
'''


def configure(project: Path, **master: Any) -> None:
    """Set [master] settings in the project's dirt.toml (short leases and checks for tests)."""
    text = (project / "dirt.toml").read_text()
    for key, value in master.items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} ")]
        text = "\n".join(lines) + "\n"
        text = text.replace("[master]\n", f"[master]\n{key} = {value}\n")
    (project / "dirt.toml").write_text(text)


def add_runlog_task(project: Path) -> None:
    (project / "tasks" / "runlog.py").write_text(RUNLOG_TASK)


def runlog_tasks(count: int, runs_file: Path, seconds: float = 0.0, platform: str = "linux",
                 **args: Any) -> list[dict[str, Any]]:
    """A record's task list: `count` runlog tasks, told apart by their keys."""
    return [{"name": "runlog", "platform": platform, "key": f"t{i}",
             "args": {"id": f"t{i}", "file": str(runs_file), "seconds": seconds, **args}}
            for i in range(count)]


class MasterProcess:
    """`dirt serve` as a child process, with its log in a file."""

    def __init__(self, project: Path, log: Path, *extra: str, env: dict | None = None):
        self.log_path = log
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
        environ.update(env or {})
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [DIRT, "--project", str(project), "serve", *extra],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environ,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """kill -9: no cleanup at all."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def task_docs(couch: Couch) -> list[dict[str, Any]]:
    return couch.docs_by_prefix("task:")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # the database may be restarting in a fault test
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def all_final(couch: Couch) -> bool:
    docs = task_docs(couch)
    return bool(docs) and all(State(d["state"]) in FINAL for d in docs)


def runs(runs_file: Path) -> tuple[Counter, Counter]:
    """How often each task id started and ended, from the runs file."""
    starts, ends = Counter(), Counter()
    if runs_file.exists():
        for line in runs_file.read_text().splitlines():
            task, what = line.split()[:2]
            (starts if what == "start" else ends)[task] += 1
    return starts, ends


def assert_exactly_once(couch: Couch, runs_file: Path, expected: int) -> list[dict[str, Any]]:
    """Every task ended `success` with one recorded result, and ran to its end exactly once
    (an attempt that was lost may have started, but never two ends, and never two attempts at
    the same time)."""
    docs = task_docs(couch)
    assert len(docs) == expected
    states = Counter(d["state"] for d in docs)
    assert states == {"success": expected}, states
    starts, ends = runs(runs_file)
    twice = {t: n for t, n in ends.items() if n != 1}
    assert not twice, f"tasks that ran to the end more than once: {twice}"
    assert len(ends) == expected
    for doc in docs:
        finished = [a for a in doc["attempts"] if a["outcome"] == "success"]
        assert len(finished) == 1, doc["attempts"]
        assert all(a["ended"] for a in doc["attempts"]), doc["attempts"]
    return docs


def make_farm(tmp_path: Path, couch_url: str, hosts: int = 2, slots: int = 2, **master: Any):
    """A project with the runlog task, short leases and checks, and `hosts` local hosts."""
    settings = scaffold.create(tmp_path / "farm", f"faults-{uuid.uuid4().hex[:10]}", couch_url,
                               environ={})
    add_runlog_task(settings.project)
    configure(settings.project, **{"lease_seconds": 4, "health_interval": 1,
                                   "tick_seconds": 0.1, "grace_seconds": 5, **master})
    couch = Couch(couch_url, settings.database)
    for i in range(hosts):
        client.add_host(couch, f"h{i}", "linux", local=True, slots=slots)
    return settings, couch


def submit(settings, couch: Couch, count: int, runs_file: Path, **args: Any) -> str:
    """A record of `count` runlog tasks; returns its name."""
    name = f"rec-{uuid.uuid4().hex[:6]}"
    client.submit(couch, Registry(settings.tasks_dir), name, runlog_tasks(count, runs_file, **args))
    return name
