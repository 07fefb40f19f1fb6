"""Scenario 6, soak with faults: 5,000 tasks over 12 local hosts (2 slots each) for a bounded
time while a chaos loop

- kills a running task's process on its host every second (SIGKILL; the pid from the task's
  own 'start' line, checked to be a descendant of the master this harness started),
- restarts the database server every 30 s (first at 20 s; down 2 s, same port and data),
- kills the master with SIGKILL every 35 s (first at 30 s) and starts a new one a second
  later (quick mode: every 12 s and 16 s, first at 4 s and 8 s).

Half of the tasks are the bench task with REUSE_PROCESS, so kept worker processes are killed
too. Then it lets the farm drain and counts: tasks lost (not ended `success`), tasks that ran to
their end twice (from the runs file), and tasks not in a final state. All should be 0.

Settings for the farm: lease 5 s, health checks every 2 s, max_attempts 10 (so that a task
killed several times by chaos is still retried rather than ended `error`). 8 local hosts and
4 hosts on private sshds (tests/sshd.py) on 127.0.0.2-5; the chaos also kills one sshd and
everything under it (kill -9) every 30 s and starts it again 5 s later.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    FINAL_STATES,
    CouchServer,
    Deadline,
    Farm,
    FinalWatcher,
    SshHost,
    wait_for,
)
from benchmarks.context import Context

NAME = "soak"
TITLE = "soak with faults: 5,000 tasks, 12 hosts, chaos (task kills, database restarts, kill -9)"


def run(ctx: Context) -> dict:
    tasks = ctx.size(5000, 400)
    limit = ctx.size(660, 240)
    chaos_seconds = ctx.size(300, 90)
    deadline = Deadline(limit, NAME)
    server = CouchServer(ctx.procs, ctx.workdir / "soak-couch")
    server.start()
    notes = []
    try:
        ssh = [SshHost(ctx.procs, ctx.workdir / f"soak-sshd-{i}", f"127.0.0.{i + 2}")
               for i in range(4)]
    except Exception as exc:
        ssh = []
        notes.append(f"sshd hosts could not start ({exc}): 12 local hosts instead")
    farm = Farm(ctx.procs, ctx.workdir, server.url, "soak", hosts=12 - len(ssh), slots=2,
                ssh=ssh, lease_seconds=5, health_interval=2, max_attempts=10,
                tick_seconds=0.2)
    chaos = Chaos(ctx, farm, server, every_db=ctx.size(30, 12), every_master=ctx.size(35, 16),
                  first_db=ctx.size(20, 4), first_master=ctx.size(30, 8))
    chaos.ssh = ssh
    try:
        # half of them with REUSE_PROCESS: the chaos then also kills kept worker processes
        ids = farm.submit("soak", [
            {**t, "args": {**t["args"], "seconds": round(0.05 * (i % 5), 2)}}
            for i, t in enumerate(farm.tasks(tasks // 2)
                                  + farm.tasks(tasks - tasks // 2, prefix="u",
                                               task="bench_reuse"))])
        watcher = FinalWatcher(farm.couch)
        t0 = time.time()
        chaos.start_master()
        chaos_end = time.monotonic() + chaos_seconds
        while (time.monotonic() < chaos_end and deadline.left > 60
               and watcher.count_final(ids) < len(ids)):
            chaos.step()
            time.sleep(1.0)
        chaos.ensure_master()
        chaos_stopped = time.time()
        try:
            wait_for(lambda: watcher.count_final(ids) == len(ids), deadline,
                     "every task to end", interval=1.0)
            stopped_by = "all tasks ended"
        except Exception as exc:  # the time limit: count what is left
            stopped_by = str(exc)
        finished = time.time()
        watcher.close()
        chaos.stop_master()
        if chaos.down:
            chaos.down[0].start()
        figures = check(farm, ids, chaos, t0, chaos_stopped, finished, stopped_by)
    finally:
        chaos.stop_master()
        server.stop()
        for host in ssh:
            host.stop()
    return {"figures": figures, "events": chaos.events[-200:], "notes": notes}


class Chaos:
    """The faults, one step a second: a task process killed each step, the database
    restarted every `every_db` s, the master killed -9 every `every_master` s."""

    def __init__(self, ctx: Context, farm: Farm, server: CouchServer, every_db: float,
                 every_master: float, first_db: float, first_master: float) -> None:
        self.ctx = ctx
        self.farm = farm
        self.server = server
        self.master: subprocess.Popen | None = None
        self.killed_masters: list[int] = []
        self.begun = time.monotonic()
        self.every_db, self.every_master = every_db, every_master
        self.next_db = self.begun + first_db
        self.next_master = self.begun + first_master
        self.events: list[list[Any]] = []
        self.ssh: list[SshHost] = []
        self.next_sshd = self.begun + first_db + every_db / 2
        self.down: tuple[SshHost, float] | None = None
        self.counts: Counter = Counter()
        self.random = random.Random(6)

    def note(self, what: str, detail: Any = "") -> None:
        self.events.append([round(time.monotonic() - self.begun, 1), what, detail,
                            round(time.time(), 3)])
        self.counts[what] += 1

    def start_master(self) -> None:
        self.master = self.farm.start_master()
        self.note("master started", self.master.pid)

    def ensure_master(self) -> None:
        if self.master is None or self.master.poll() is not None:
            self.start_master()

    def stop_master(self) -> None:
        if self.master is not None:
            self.ctx.procs.stop(self.master, timeout=30)
            self.master = None
        for pgid in self.killed_masters:  # stragglers of killed masters, if any
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def step(self) -> None:
        now = time.monotonic()
        self.kill_task()
        if self.down and now >= self.down[1]:
            self.down[0].start()
            self.note("sshd host back", self.down[0].sshd.address)
            self.down = None
        if self.ssh and self.down is None and now >= self.next_sshd:
            self.next_sshd = now + self.every_db
            host = self.ssh[self.counts["sshd host killed"] % len(self.ssh)]
            host.kill_all()
            self.note("sshd host killed", host.sshd.address)
            self.down = (host, now + 5.0)
        if now >= self.next_db:
            self.next_db = now + self.every_db
            self.server.stop()
            time.sleep(2.0)
            self.server.start()
            self.note("database restarted", "down 2 s")
        if now >= self.next_master and self.master is not None:
            self.next_master = now + self.every_master
            self.killed_masters.append(self.master.pid)
            self.ctx.procs.kill9(self.master)
            self.note("master killed -9", self.master.pid)
            time.sleep(1.0)
            self.start_master()
        self.ensure_master()

    def kill_task(self) -> None:
        """SIGKILL one task process that has started and not ended."""
        runs = self.farm.runs()
        running = [(task, r["start"][-1][0]) for task, r in runs.items()
                   if len(r["start"]) > len(r["end"])]
        self.random.shuffle(running)
        masters = {self.master.pid} if self.master else set()
        masters |= {h.sshd.process.pid for h in self.ssh if h.sshd.process is not None}
        for task, pid in running:
            if not started_by(pid, masters):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.note("task process killed", task)
            return


def started_by(pid: int, masters: set[int], depth: int = 8) -> bool:
    """Whether `pid` descends from one of `masters` or of our sshds (a task of ours)."""
    for _ in range(depth):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid in masters:
            return True
    return False


def check(farm: Farm, ids: list[str], chaos: Chaos, t0: float, chaos_stopped: float,
          finished: float, stopped_by: str) -> dict[str, Any]:
    docs = {d["_id"]: d for d in farm.task_docs()}
    runs = farm.runs()
    states = Counter(docs[i]["state"] if i in docs else "missing" for i in ids)
    run_id = {i: i.rsplit(":", 1)[1] for i in ids}
    twice = [i for i in ids if len(runs.get(run_id[i], {}).get("end", [])) > 1]
    not_final = [i for i in ids if i not in docs or docs[i]["state"] not in FINAL_STATES]
    lost = [i for i in ids if i not in docs or docs[i]["state"] != "success"]
    no_run = [i for i in ids if docs.get(i, {}).get("state") == "success"
              and not runs.get(run_id[i], {}).get("end")]
    attempts = Counter(a.get("outcome") for d in docs.values() for a in d.get("attempts", []))
    starts = sorted(t for r in runs.values() for _, t in r["start"])
    twice_why = Counter("; ".join(sorted({(a.get("reason") or "")[:40] for a in
                                          docs[i].get("attempts", [])
                                          if a.get("outcome") != "success"}))
                        for i in twice)
    gaps = sorted((b - a for a, b in zip(starts, starts[1:], strict=False)), reverse=True)
    return {
        "tasks": len(ids),
        "hosts": len(farm.host_names),
        "stopped_by": stopped_by,
        "seconds": round(finished - t0, 1),
        "chaos_seconds": round(chaos_stopped - t0, 1),
        "tasks_per_s": round(len(ids) / (finished - t0), 1),
        "task_processes_killed": chaos.counts["task process killed"],
        "database_restarts": chaos.counts["database restarted"],
        "masters_killed": chaos.counts["master killed -9"],
        "sshd_hosts_killed": chaos.counts["sshd host killed"],
        "lost": len(lost),
        "ran_twice": len(twice),
        "ran_twice_by_lost_reason": dict(twice_why),
        "ran_twice_ended_before_master_kill": ended_before_kill(twice, run_id, runs, chaos),
        "not_final": len(not_final),
        "success_without_a_run": len(no_run),
        "states": dict(states),
        "attempt_outcomes": {str(k): v for k, v in attempts.items()},
        "longest_gaps_between_starts_s": [round(g, 1) for g in gaps[:5]],
        "master_starts": master_starts(farm, chaos, starts),
        "examples": {
            "lost": [explain(docs.get(i), runs.get(run_id[i])) for i in lost[:3]],
            "ran_twice": [explain(docs.get(i), runs.get(run_id[i])) for i in twice[:5]],
            "success_without_a_run": [explain(docs.get(i), runs.get(run_id[i]))
                                      for i in no_run[:5]],
        },
    }


def ended_before_kill(twice: list[str], run_id: dict[str, str], runs: dict,
                      chaos: Chaos) -> int:
    """How many tasks that ran twice had ended their first run less than 5 s before a master
    was killed -9 (the master died before it wrote their result)."""
    kills = [e[3] for e in chaos.events if e[1] == "master killed -9"]
    count = 0
    for task in twice:
        first_end = runs[run_id[task]]["end"][0][1]
        if any(0 <= kill - first_end < 5 for kill in kills):
            count += 1
    return count


def master_starts(farm: Farm, chaos: Chaos, starts: list[float]) -> list[dict[str, Any]]:
    """For each master started: seconds until it had loaded its tasks (its 'following
    changes' log line) and until the first task started on a host after it."""
    out = []
    started = [e[3] for e in chaos.events if e[1] == "master started"]
    for index, at in enumerate(started):
        log = farm.dir / f"master-{index}.log"
        ready = None
        if log.exists():
            for line in log.read_text(errors="replace").splitlines():
                if "following changes since" in line:
                    ready = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    break
        first = next((t for t in starts if t > at), None)
        out.append({"loaded_s": round(ready - at, 1) if ready else None,
                    "first_task_started_s": round(first - at, 1) if first else None})
    return out


def explain(doc: dict[str, Any] | None, run: dict[str, Any] | None) -> dict[str, Any]:
    """A task's attempts and its runs, to show why it counts as lost or ran twice."""
    if doc is None:
        return {"doc": None}
    return {"id": doc["_id"], "state": doc["state"], "reason": doc.get("reason"),
            "attempts": [[a.get("host"), a.get("started"), a.get("ended"), a.get("outcome"),
                          (a.get("reason") or "")[:100], a.get("note")]
                         for a in doc.get("attempts", [])],
            "runs": run}
