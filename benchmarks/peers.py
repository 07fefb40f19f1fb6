"""Scenario 4, peers: the same workload (latency samples, then 2,000 trivial tasks with 16 at a
time) through rq and through Buildbot, started and stopped here on 127.0.0.1.

- rq 3 with a local redis-server (Debian's) on a free port, 16 `rq worker` processes (rq's
  default Worker: one forked work horse per job), jobs enqueued with enqueue_many.
- Buildbot 4: a master (SQLite) and 8 local workers with max_builds=2 each, one builder
  whose one step runs the same Python snippet as a shell command, builds forced through the
  REST API (JSON-RPC `force` on the force scheduler), completion read from the REST API.

The task each runs writes the same 'start'/'end' lines as dirt's bench task.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PEERS_VENV,
    Deadline,
    Fatal,
    free_port,
    peer_python,
    percentiles,
    tree_cpu_seconds,
    wait_for,
)
from benchmarks.context import Context

NAME = "peers"
TITLE = "peers: rq (Redis) and Buildbot, same workload"

STAMP = """
import os, sys, time
def line(path, task, what):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, ("%s %s %d %.6f\\n" % (task, what, os.getpid(), time.time())).encode())
    os.close(fd)
line(sys.argv[2], sys.argv[1], "start")
line(sys.argv[2], sys.argv[1], "end")
"""

RQ_JOBS = '''"""The rq job: the same two lines as dirt's bench task."""
import os
import time


def line(path, task, what):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, ("%s %s %d %.6f\\n" % (task, what, os.getpid(), time.time())).encode())
    os.close(fd)


def stamp(task, path):
    line(path, task, "start")
    line(path, task, "end")
    return True
'''

MASTER_CFG = '''# Buildbot master for dirt's benchmarks (written by benchmarks/peers.py)
from buildbot.plugins import schedulers, steps, util, worker

WORKERS = [f"w{{i}}" for i in range({workers})]
c = BuildmasterConfig = {{}}
c["workers"] = [worker.Worker(name, "pass", max_builds={slots}) for name in WORKERS]
c["protocols"] = {{"pb": {{"port": "tcp:{pb}:interface=127.0.0.1"}}}}
c["change_source"] = []
c["schedulers"] = [schedulers.ForceScheduler(
    name="force", builderNames=["trivial"],
    properties=[util.StringParameter(name="bench_id", default="x")])]
factory = util.BuildFactory()
factory.addStep(steps.ShellCommand(
    name="stamp", command=[{python!r}, "-c", {stamp!r}, util.Property("bench_id"), {runs!r}],
    logEnviron=False))
c["builders"] = [util.BuilderConfig(name="trivial", workernames=WORKERS, factory=factory,
                                    collapseRequests=False)]
c["title"] = "dirt bench"
c["buildbotURL"] = "http://127.0.0.1:{www}/"
c["www"] = {{"port": "tcp:{www}:interface=127.0.0.1", "plugins": {{}}}}
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["buildbotNetUsageData"] = None
'''


def run(ctx: Context) -> dict:
    figures: dict[str, Any] = {}
    python = peer_python()
    for name, function in (("rq", run_rq), ("buildbot", run_buildbot)):
        print(f"    peers: {name}", flush=True)
        if python is None:
            figures[name] = {"error": f"no {PEERS_VENV} (bin/bench installs rq and Buildbot)"}
            continue
        try:
            figures[name] = function(ctx)
        except Exception as exc:
            figures[name] = {"error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()}
    return {"figures": figures}


def stamp_runs(path: Path) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:
                out.setdefault(parts[0], {"start": [], "end": []})[parts[1]].append(
                    float(parts[3]))
    return out


def summarize(samples: list[dict[str, float]], runs: dict, t0: float, submitted: float,
              end: float, done: int, planned: int) -> dict[str, Any]:
    return {
        "samples": len(samples),
        "submit_ms": percentiles([s["submitted"] - s["t0"] for s in samples]),
        "to_start_ms": percentiles([runs[s["id"]]["start"][0] - s["t0"] for s in samples
                                    if s["id"] in runs]),
        "to_result_ms": percentiles([s["result"] - s["t0"] for s in samples]),
        "planned": planned,
        "tasks": done,
        "seconds": round(end - t0, 2),
        "submit_s": round(submitted - t0, 2),
        "tasks_per_s": round(done / (end - t0), 1) if end > t0 else None,
        "ran_twice": sum(1 for r in runs.values() if len(r["end"]) > 1),
    }


# -- rq -------------------------------------------------------------------------------------


def run_rq(ctx: Context) -> dict[str, Any]:
    tasks, samples = ctx.size(2000, 300), ctx.size(200, 30)
    deadline = Deadline(ctx.size(420, 180), "rq")
    folder = ctx.workdir / "rq"
    folder.mkdir()
    (folder / "bench_jobs.py").write_text(RQ_JOBS)
    runs = folder / "runs.txt"
    port = free_port()
    redis = ctx.procs.start(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder), "--protected-mode", "yes"],
        folder / "redis.log")
    workers = []
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: "Ready to accept" in (folder / "redis.log").read_text(), deadline,
                 "redis-server")
        rq = str(PEERS_VENV / "bin" / "rq")
        for i in range(16):
            workers.append(ctx.procs.start(
                [rq, "worker", "--url", url, "--path", str(folder), "--quiet",
                 "--name", f"w{i}", "bench"], folder / f"worker-{i}.log", cwd=folder))
        done = subprocess.run(
            [str(peer_python()), str(Path(__file__).parent / "peer_rq.py"), "--url", url,
             "--file", str(runs), "--tasks", str(tasks), "--samples", str(samples),
             "--workers", "16", "--timeout", str(int(deadline.left))],
            capture_output=True, text=True, timeout=deadline.left + 30)
        if done.returncode != 0:
            raise RuntimeError(f"rq driver: {done.stderr.strip().splitlines()[-1:]}")
        data = json.loads(done.stdout)
    finally:
        for worker in workers:
            ctx.procs.stop(worker, timeout=5)
        ctx.procs.stop(redis)
    through = data["throughput"]
    return summarize(data["latency"], stamp_runs(runs), through["t0"], through["submitted"],
                     through["end"], through["finished"], tasks) | {
        "failed": through["failed"], "workers": 16}


# -- Buildbot -------------------------------------------------------------------------------


class Rest:
    """Buildbot's REST API (v2) on 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v2"

    def get(self, path: str) -> dict[str, Any]:
        for attempt in range(3):  # a read cut short by the server is asked again
            try:
                with urllib.request.urlopen(f"{self.base}/{path}", timeout=30) as response:
                    return json.loads(response.read())
            except http.client.IncompleteRead:
                if attempt == 2:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def force(self, bench_id: str) -> int:
        """Force one build; returns its build request id."""
        body = json.dumps({"jsonrpc": "2.0", "method": "force", "id": 1,
                           "params": {"builderid": "1", "bench_id": bench_id}}).encode()
        request = urllib.request.Request(f"{self.base}/forceschedulers/force", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        if "error" in answer:
            raise RuntimeError(f"force: {answer['error']}")
        _, brids = answer["result"]
        return int(next(iter(brids.values())))

    def complete(self, brid: int) -> bool:
        return bool(self.get(f"buildrequests/{brid}")["buildrequests"][0]["complete"])

    def completed_ids(self) -> set[int]:
        rows = self.get("buildrequests?complete=true&field=buildrequestid&field=complete")
        return {row["buildrequestid"] for row in rows["buildrequests"]}


def run_buildbot(ctx: Context) -> dict[str, Any]:
    tasks, samples = ctx.size(2000, 300), ctx.size(200, 30)
    deadline = Deadline(ctx.size(480, 240), "buildbot")
    folder = ctx.workdir / "buildbot"
    folder.mkdir()
    runs = folder / "runs.txt"
    bin_dir = PEERS_VENV / "bin"
    pb, www = free_port(), free_port()
    master_dir = folder / "master"
    subprocess.run([str(bin_dir / "buildbot"), "create-master", "-r", str(master_dir)],
                   check=True, capture_output=True, timeout=120)
    (master_dir / "master.cfg").write_text(MASTER_CFG.format(
        workers=8, slots=2, pb=pb, www=www, python=sys.executable, stamp=STAMP,
        runs=str(runs)))
    procs = [ctx.procs.start([str(bin_dir / "buildbot"), "start", "--nodaemon",
                              str(master_dir)], folder / "master.out")]
    try:
        rest = Rest(www)
        wait_for(lambda: up(rest, procs[0], master_dir), deadline, "the Buildbot master",
                 interval=0.5)
        for i in range(8):
            worker_dir = folder / f"w{i}"
            subprocess.run([str(bin_dir / "buildbot-worker"), "create-worker", str(worker_dir),
                            f"127.0.0.1:{pb}", f"w{i}", "pass"],
                           check=True, capture_output=True, timeout=120)
            procs.append(ctx.procs.start([str(bin_dir / "buildbot-worker"), "start",
                                          "--nodaemon", str(worker_dir)],
                                         folder / f"w{i}.out"))
        wait_for(lambda: sum(bool(w["connected_to"]) for w in rest.get("workers")["workers"])
                 == 8, deadline, "8 Buildbot workers connected", interval=0.5)
        latency = buildbot_latency(rest, samples, deadline)
        cpu = [tree_cpu_seconds(p.pid) for p in procs]
        through = buildbot_throughput(rest, tasks, deadline)
        cpu = [tree_cpu_seconds(p.pid) - c for p, c in zip(procs, cpu, strict=True)]
    finally:
        for process in reversed(procs):
            ctx.procs.stop(process, timeout=10)
    result = summarize(latency, stamp_runs(runs), through["t0"], through["submitted"],
                       through["end"], through["finished"], tasks)
    result["forced"] = through["forced"]
    if through["finished"] < tasks:
        result["note"] = (f"stopped at its time limit: {through['finished']} of {tasks} builds "
                          "complete; the rate is over those")
    return result | {"workers": 8, "max_builds": 2, "poll_ms": 20,
                     "cpu_s": {"master": round(cpu[0], 1), "workers": round(sum(cpu[1:]), 1)}}


def up(rest: Rest, master: subprocess.Popen, folder: Path) -> bool:
    """Whether the master answers; a master that exited says why (the end of its log)."""
    if master.poll() is not None:
        lines = (folder / "twistd.log").read_text(errors="replace").splitlines()
        errors = [ln.strip() for ln in lines if "Error" in ln or "error" in ln]
        raise Fatal(f"the Buildbot master exited: {(errors or lines or ['?'])[-1]}")
    return bool(rest.get("builders"))


def buildbot_latency(rest: Rest, samples: int, deadline: Deadline) -> list[dict[str, float]]:
    out = []
    for i in range(samples + 3):
        t0 = time.time()
        brid = rest.force(f"lat{i}")
        t1 = time.time()
        while not rest.complete(brid):
            deadline.check("Buildbot latency samples")
            time.sleep(0.02)
        if i >= 3:
            out.append({"id": f"lat{i}", "t0": t0, "submitted": t1, "result": time.time()})
        time.sleep(0.05)
    return out


def buildbot_throughput(rest: Rest, tasks: int, deadline: Deadline) -> dict[str, Any]:
    """Force `tasks` builds from 4 threads, then wait for them all to complete (or the time
    limit: then the rate is over the builds that completed)."""
    brids: list[int] = []
    lock = threading.Lock()
    todo = iter(range(tasks))

    def submit() -> None:
        while deadline.left > 30:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            brid = rest.force(f"t{i}")
            with lock:
                brids.append(brid)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    t0 = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    submitted = time.time()
    wanted = set(brids)
    finished = 0
    while deadline.left > 5:
        finished = len(wanted & rest.completed_ids())
        if finished == len(wanted):
            break
        time.sleep(0.5)
    return {"t0": t0, "submitted": submitted, "end": time.time(), "finished": finished,
            "forced": len(wanted)}
