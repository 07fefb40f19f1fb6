"""Scenario 3, the limits under dirt on this machine, measured in the same run:

- bare execnet: the same 2,000 trivial calls (the bench task's two file lines) over 8 popen
  gateways, 2 at a time each, by remote_exec on open gateways, no dirt;
- bare execnet plus one forked process per call (how dirt's runner isolates a task where the
  host can fork), and plus one fresh Python process per call (where it cannot);
- the database: 2,000 task documents written with `_bulk_docs` (batches of 1,000 and of 100)
  and with single PUTs from one client;
- the database alone, as dirt uses it: each task's three writes (created with its record's
  others, claimed, ended), batched the way a master batches them, with no master or host
  running; and the five requests a one-task record needs before its result is in, in a row
  (the floor under dirt's latency on this database).
"""

from __future__ import annotations

import threading
import time
import uuid

import execnet

from benchmarks.common import BENCH_TASK, Deadline, percentiles
from benchmarks.context import Context
from dirt import client, couchapp, documents
from dirt.couch import Couch
from dirt.documents import State, now_iso
from dirt.tasks import Registry

NAME = "limits"
TITLE = "the limits: bare execnet, the database's write rate"

CALL = """
import os, time
def line(path, task, what):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, ("%s %s %d %.6f\\n" % (task, what, os.getpid(), time.time())).encode())
    os.close(fd)
task, path = channel.receive()
line(path, task, "start")
line(path, task, "end")
channel.send(time.time())
"""

CALL_IN_PROCESS = """
import subprocess, sys, time
task, path = channel.receive()
code = '''
import os, sys, time
def line(path, task, what):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, ("%s %s %d %.6f\\\\n" % (task, what, os.getpid(), time.time())).encode())
    os.close(fd)
line(sys.argv[2], sys.argv[1], "start")
line(sys.argv[2], sys.argv[1], "end")
'''
subprocess.run([sys.executable, "-u", "-c", code, task, path], check=True)
channel.send(time.time())
"""

CALL_FORKED = """
import os, time
task, path = channel.receive()
pid = os.fork()
if pid == 0:
    try:
        for what in ("start", "end"):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, ("%s %s %d %.6f\\n" % (task, what, os.getpid(), time.time())).encode())
            os.close(fd)
    finally:
        os._exit(0)
os.waitpid(pid, 0)
channel.send(time.time())
"""


def run(ctx: Context) -> dict:
    count = ctx.size(2000, 300)
    deadline = Deadline(ctx.size(300, 120), NAME)
    figures = {
        "execnet_calls_per_s": execnet_rate(ctx, CALL, count, deadline, "bare"),
        "execnet_fork_calls_per_s": execnet_rate(ctx, CALL_FORKED, count, deadline, "fork"),
        "execnet_process_calls_per_s": execnet_rate(ctx, CALL_IN_PROCESS, count, deadline,
                                                    "process"),
    }
    figures.update(database_rates(ctx.server.url, count, deadline))
    figures["db_task_writes_tasks_per_s"] = task_writes_rate(ctx.server.url, count, deadline)
    figures["db_round_trips_ms"] = round_trips(ctx, ctx.size(200, 30), deadline)
    return {"figures": figures}


def execnet_rate(ctx: Context, source: str, count: int, deadline: Deadline, kind: str,
                 gateways: int = 8, slots: int = 2) -> float:
    """Calls per second: `count` remote_exec calls over open gateways, `slots` at a time each."""
    group = execnet.Group()
    path = ctx.workdir / f"execnet-{kind}.txt"
    try:
        opened = [group.makegateway(f"popen//id=g{i}") for i in range(gateways)]
        for gateway in opened:  # warm: the gateway's interpreter is up before timing
            gateway.remote_exec("channel.send(1)").receive()
        todo = iter(range(count))
        lock = threading.Lock()
        errors: list[BaseException] = []

        def worker(gateway: execnet.Gateway) -> None:
            while deadline.left > 0:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                try:
                    channel = gateway.remote_exec(source)
                    channel.send((f"x{i}", str(path)))
                    channel.receive(60)
                except BaseException as exc:
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=worker, args=(g,)) for g in opened
                   for _ in range(slots)]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        deadline.check(f"execnet {kind} calls")
        done = sum(1 for line in path.read_text().splitlines() if " end " in line)
        return round(done / elapsed, 1)
    finally:
        group.terminate(timeout=5)


def database_rates(url: str, count: int, deadline: Deadline) -> dict:
    """Documents per second written to a fresh database with dirt's design document."""
    out = {}
    for label, batch in (("bulk_docs_1000", 1000), ("bulk_docs_100", 100), ("put", 1)):
        couch = Couch(url, f"bench-limits-{uuid.uuid4().hex[:6]}")
        couch.create()
        couchapp.push(couch)
        record = documents.new_record(f"limits-{label}")
        docs = [documents.new_task(record, "bench", "linux", i, key=f"t{i}",
                                   args={"id": f"t{i}", "file": "/tmp/x"})
                for i in range(count)]
        t0 = time.perf_counter()
        if batch == 1:
            for doc in docs:
                couch.put(doc)
        else:
            for i in range(0, count, batch):
                answers = couch.bulk_docs(docs[i:i + batch])
                assert not any(a.get("error") for a in answers), answers[:3]
        elapsed = time.perf_counter() - t0
        out[f"db_{label}_docs_per_s"] = round(count / elapsed, 1)
        couch.drop()
        deadline.check(f"database writes ({label})")
    return out


def fresh_database(url: str, label: str) -> Couch:
    couch = Couch(url, f"bench-limits-{label}-{uuid.uuid4().hex[:6]}")
    couch.create()
    couchapp.push(couch)
    return couch


def task_writes_rate(url: str, count: int, deadline: Deadline, batch: int = 16) -> float:
    """Tasks per second when the database is all there is: the `count` tasks are created in one
    `_bulk_docs` (as a submission writes them), then each request claims the next `batch`
    (dirt's free slots here) and ends the batch claimed before, as a master's pass does; one
    request at a time, as a master writes."""
    couch = fresh_database(url, "writes")
    record = documents.new_record("limits-writes")
    docs = [documents.new_task(record, "bench", "linux", i, key=f"t{i}") for i in range(count)]
    t0 = time.perf_counter()
    write(couch, docs)
    claimed: list[dict] = []
    for i in range(0, count + batch, batch):
        at = now_iso()
        ending = claimed
        for doc in ending:
            documents.end_task(doc, State.SUCCESS, "", {"success": True}, at)
        claimed = [dict(doc) for doc in docs[i:i + batch]]
        for doc in claimed:
            documents.start_attempt(doc, "h0", "limits", at, time.time() + 60)
        write(couch, ending + claimed)
    elapsed = time.perf_counter() - t0
    couch.drop()
    deadline.check("the database's writes per task")
    return round(count / elapsed, 1)


def write(couch: Couch, docs: list[dict]) -> None:
    if not docs:
        return
    failed = [answer for answer in couch.bulk_docs(docs) if answer.get("error")]
    assert not failed, failed[:3]  # a written document gets its new _rev (couch.bulk_docs)


def round_trips(ctx: Context, samples: int, deadline: Deadline) -> dict:
    """The requests a one-task record needs before its result is in, made in a row by one
    client with nothing else running: its submission (`client.submit`, as `dirt submit` and
    the latency scenario make it: the host list, the record, its task), the claim and the
    result. p50/p95/p99 in ms; the first three samples warm up and are dropped."""
    couch = fresh_database(ctx.server.url, "trips")
    couch.put(documents.new_host("h0", "linux", local=True))
    tasks = ctx.workdir / "limits-tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "bench.py").write_text(BENCH_TASK)
    registry = Registry(tasks)
    took = []
    for i in range(samples + 3):
        t0 = time.perf_counter()
        _, (doc,) = client.submit(couch, registry, f"trip-{i}", [
            {"name": "bench", "platform": "linux", "args": {"id": f"t{i}", "file": "/dev/null"}}])
        documents.start_attempt(doc, "h0", "limits", now_iso(), time.time() + 60)
        write(couch, [doc])
        documents.end_task(doc, State.SUCCESS, "", {"success": True}, now_iso())
        write(couch, [doc])
        if i >= 3:
            took.append(time.perf_counter() - t0)
        deadline.check("the database round trips of one task")
    couch.drop()
    return percentiles(took)
