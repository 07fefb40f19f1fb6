"""Scenario 2, throughput: 2,000 trivial tasks in one record over 8 local hosts (2 slots each),
from submit to the last result in the database. Also where the CPU went (master, hosts, database)
and, with --profile, a py-spy profile of the master while it works.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from benchmarks import profile
from benchmarks.common import (
    Deadline,
    Farm,
    FinalWatcher,
    cpu_seconds,
    rss_mb,
    tree_cpu_seconds,
    wait_for,
)
from benchmarks.context import Context

NAME = "throughput"
TITLE = "2,000 trivial tasks over 8 local hosts x 2 slots, end to end"


def run(ctx: Context) -> dict:
    count = ctx.size(2000, 300)
    figures = measure(ctx, count, "throughput", profiled=False)[0]
    # the same with the task's runs served by kept worker processes (REUSE_PROCESS)
    figures["reuse"] = measure(ctx, count, "throughput-reuse", profiled=False,
                               task="bench_reuse")[0]
    out: dict = {"figures": figures}
    if ctx.profile:  # a second pass under py-spy, so the profiler does not slow the first
        profiled, out["profile"] = measure(ctx, count, "throughput-profiled", profiled=True)
        out["profiled_pass_tasks_per_s"] = profiled["tasks_per_s"]
    return out


def measure(ctx: Context, count: int, name: str, profiled: bool,
            task: str = "bench") -> tuple[dict, dict | None]:
    deadline = Deadline(ctx.size(600, 180), NAME)
    farm = Farm(ctx.procs, ctx.workdir, ctx.server.url, name, hosts=8, slots=2)
    master = farm.start_master()
    spies: list[subprocess.Popen] = []
    profiled_result = None
    try:
        wait_for(farm.hosts_alive, deadline, "8 hosts alive")
        watcher = FinalWatcher(farm.couch)
        if profiled:
            spies = profile.start(ctx, master.pid)
        cpu = {"master": cpu_seconds(master.pid), "master_tree": tree_cpu_seconds(master.pid),
               "database": cpu_seconds(ctx.server.pid)}
        t0 = time.time()
        ids = farm.submit("throughput", farm.tasks(count, task=task))
        submitted = time.time()
        final = watcher.wait_final(ids, deadline)
        cpu = {"master": cpu_seconds(master.pid) - cpu["master"],
               "master_tree": tree_cpu_seconds(master.pid) - cpu["master_tree"],
               "database": cpu_seconds(ctx.server.pid) - cpu["database"]}
        memory = rss_mb(master.pid)
        watcher.close()
    finally:
        if spies:
            profiled_result = profile.stop(ctx, spies)
        ctx.procs.stop(master)
    return summarize(farm, ids, t0, submitted, final, cpu, memory), profiled_result


def summarize(farm: Farm, ids: list[str], t0: float, submitted: float,
              final: dict[str, float], cpu: dict[str, float], memory: dict) -> dict:
    runs = farm.runs()
    count = len(ids)
    ends = sorted(final.values())
    elapsed = ends[-1] - t0
    lo, hi = ends[count // 10], ends[count * 9 // 10]
    starts = sorted(r["start"][0][1] for r in runs.values() if r["start"])
    states = Counter(d["state"] for d in farm.task_docs())
    hosts_cpu = max(cpu["master_tree"] - cpu["master"], 0.0)
    return {
        "tasks": count,
        "seconds": round(elapsed, 2),
        "tasks_per_s": round(count / elapsed, 1),
        "steady_tasks_per_s": round((count * 8 // 10) / (hi - lo), 1) if hi > lo else None,
        "submit_s": round(submitted - t0, 2),
        "first_start_s": round(starts[0] - t0, 3) if starts else None,
        "states": dict(states),
        "ran_twice": sum(1 for r in runs.values() if len(r["end"]) > 1),
        "cpu_s": {"master": round(cpu["master"], 1), "hosts": round(hosts_cpu, 1),
                  "database": round(cpu["database"], 1)},
        "cpu_ms_per_task": {"master": round(cpu["master"] / count * 1000, 2),
                            "hosts": round(hosts_cpu / count * 1000, 2),
                            "database": round(cpu["database"] / count * 1000, 2)},
        "master_memory": memory,
    }


def stop_spy(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)


__all__ = ["Path"]
