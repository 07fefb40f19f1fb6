"""Scenario 1, dispatch latency: an idle farm of 4 local hosts (execnet popen gateways), then
the same with 4 hosts on private sshds on 127.0.0.2-5; one one-task record at a time.

For each sample: submit (client.submit, as `dirt submit` does), then the time until the master
claimed it (attempts[0].started), until the task starts on its host (the task's own
time.time() in its 'start' line) and until its result is in the database (the first change
of the feed that shows it final). All from the moment before the submit call.
"""

from __future__ import annotations

import time
import uuid

from benchmarks.common import Deadline, Farm, FinalWatcher, SshHost, percentiles, wait_for
from benchmarks.context import Context
from dirt.documents import parse_iso

NAME = "latency"
TITLE = "dispatch latency, idle farm of 4 local hosts"


def run(ctx: Context) -> dict:
    samples = ctx.size(200, 30)
    deadline = Deadline(ctx.size(420, 120), NAME)
    figures = sample(ctx, "latency", samples, deadline, local=4)
    figures["reuse"] = sample(ctx, "latency-reuse", samples, deadline, local=4,
                              task="bench_reuse")
    try:  # the same over 4 private sshds on 127.0.0.2-5 (tests/sshd.py)
        servers = [SshHost(ctx.procs, ctx.workdir / f"sshd-{i}", f"127.0.0.{i + 2}")
                   for i in range(4)]
    except Exception as exc:
        figures["ssh"] = {"error": f"sshd hosts could not start: {exc}"}
        return {"figures": figures}
    try:
        figures["ssh"] = sample(ctx, "latency-ssh", samples, deadline, local=0, ssh=servers)
    finally:
        for server in servers:
            server.stop()
    return {"figures": figures}


def sample(ctx: Context, name: str, samples: int, deadline: Deadline, local: int,
           ssh: list[SshHost] | None = None, task: str = "bench") -> dict:
    farm = Farm(ctx.procs, ctx.workdir, ctx.server.url, name, hosts=local, slots=2, ssh=ssh)
    master = farm.start_master()
    try:
        wait_for(farm.hosts_alive, deadline, "4 hosts alive")
        watcher = FinalWatcher(farm.couch)
        figures = measure(farm, watcher, samples, deadline, task)
        watcher.close()
    finally:
        ctx.procs.stop(master)
    return figures


def measure(farm: Farm, watcher: FinalWatcher, samples: int, deadline: Deadline,
            task_name: str) -> dict:
    submit, start, result = [], [], []
    prefix = uuid.uuid4().hex[:4]
    for i in range(samples + 3):  # the first three warm up the caches and are dropped
        record = f"lat-{prefix}-{i}"
        task = farm.tasks(1, prefix=f"{record}-", task=task_name)
        t0 = time.time()
        (task_id,) = farm.submit(record, task)
        t1 = time.time()
        ended = watcher.wait_final([task_id], deadline)[task_id]
        if i >= 3:
            submit.append((t1 - t0, task[0]["args"]["id"], t0, ended, task_id))
        time.sleep(0.05)
    runs = farm.runs()
    docs = {d["_id"]: d for d in farm.task_docs()}
    claim = []
    for _took, run_id, t0, ended, task_id in submit:
        start.append(runs[run_id]["start"][0][1] - t0)
        result.append(ended - t0)
        claim.append(parse_iso(docs[task_id]["attempts"][0]["started"]) - t0)
    return {
        "samples": len(submit),
        "submit_ms": percentiles([s[0] for s in submit]),
        "to_claim_ms": percentiles(claim),
        "to_start_ms": percentiles(start),
        "to_result_ms": percentiles(result),
    }
