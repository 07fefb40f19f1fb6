"""The rq side of the peers scenario; runs in benchmarks/.peers (rq is not a dirt dependency).

    python peer_rq.py --url redis://127.0.0.1:PORT --file RUNS --tasks 2000 --samples 200
        --workers 16 --timeout 300

Waits for the workers, then measures latency (one job at a time: enqueue, then block on the
job's result stream) and throughput (enqueue_many, then poll the finished registry), and
prints one JSON object. The job (bench_jobs.stamp, written by the harness) appends the same
'start'/'end' lines as dirt's bench task, so the harness reads start times the same way.
"""

import argparse
import json
import sys
import time

from redis import Redis
from rq import Queue, Worker


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("url", "file"):
        parser.add_argument(f"--{name}", required=True)
    for name in ("tasks", "samples", "workers", "timeout"):
        parser.add_argument(f"--{name}", type=int, required=True)
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    connection = Redis.from_url(args.url)
    queue = Queue("bench", connection=connection)
    while len(Worker.all(queue=queue)) < args.workers:
        if time.monotonic() > deadline:
            sys.exit(f"only {len(Worker.all(queue=queue))} of {args.workers} rq workers came up")
        time.sleep(0.2)
    out = {"latency": [], "throughput": None}
    for i in range(args.samples + 3):
        t0 = time.time()
        job = queue.enqueue("bench_jobs.stamp", f"lat{i}", args.file, result_ttl=3600)
        t1 = time.time()
        result = job.latest_result(timeout=30)
        t2 = time.time()
        if result is None or result.type != result.Type.SUCCESSFUL:
            sys.exit(f"rq job lat{i} did not succeed: {result and result.exc_string}")
        if i >= 3:
            out["latency"].append({"id": f"lat{i}", "t0": t0, "submitted": t1, "result": t2})
        time.sleep(0.05)
        if time.monotonic() > deadline:
            sys.exit("rq latency samples ran past the time limit")
    finished = queue.finished_job_registry
    before = finished.count
    data = [Queue.prepare_data("bench_jobs.stamp", args=(f"t{i}", args.file), result_ttl=3600)
            for i in range(args.tasks)]
    t0 = time.time()
    queue.enqueue_many(data)
    submitted = time.time()
    while finished.count - before < args.tasks and time.monotonic() < deadline:
        time.sleep(0.01)
    t_end = time.time()
    out["throughput"] = {"t0": t0, "submitted": submitted, "end": t_end,
                         "finished": finished.count - before,
                         "failed": queue.failed_job_registry.count}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
