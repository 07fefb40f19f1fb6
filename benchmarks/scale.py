"""Scenario 5, scale: a database holding N finished tasks (20 per record: 10 task names x 2
platforms), loaded with `_bulk_docs` in batches of 1,000. Then:

- the first query of each view (the server builds its index: what a replica or a changed
  design document costs once; a live farm's indexes are brought up to date as it goes);
- a master started with one new pending task: time from process start to the task running on
  its host, and the master's memory;
- with that master running, a new one-task record: submit to start (median of 5);
- the web app (create_app, Flask's test client): the records page, a record page and the
  history page of a task name, first request and warm (median of 5);
- `dirt status` (client.list_records).

Run at 10,000 and 100,000 tasks: per-operation cost should be flat between the two.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.common import Deadline, Farm, FinalWatcher, rss_mb, wait_for
from benchmarks.context import Context
from dirt import client, couchapp, documents

NAME = "scale"
TITLE = "scale: 10,000 and 100,000 finished tasks in the database"

TASK_NAMES = ["build", "unit", "integration", "lint", "docs", "package", "install",
              "smoke", "perf", "bench"]
PLATFORMS = ["linux", "mac"]
PER_RECORD = len(TASK_NAMES) * len(PLATFORMS)
OUTCOMES = ["success"] * 17 + ["failed", "failed", "error"]


def run(ctx: Context) -> dict:
    sizes = ctx.sizes or ([1_000, 10_000] if ctx.quick else [10_000, 100_000])
    figures: dict[str, Any] = {}
    for size in sizes:
        print(f"    scale: {size:,} tasks", flush=True)
        deadline = Deadline(300.0 + size * 0.02, f"{NAME} at {size:,} tasks")
        try:
            figures[str(size)] = measure(ctx, size, deadline)
        except Exception as exc:  # keep the sizes measured so far
            figures[str(size)] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"figures": figures}


def finished_docs(record_index: int, base: datetime) -> list[dict[str, Any]]:
    """One record and its tasks, every task in a final state with one attempt."""
    created = base + timedelta(minutes=record_index)
    record = documents.new_record(
        f"r{record_index:06d}", created=iso(created), submitter="bench",
        meta={"revision": f"{record_index:x}", "branch": "main"})
    docs: list[dict[str, Any]] = [record]
    for order, (name, platform) in enumerate(
            (n, p) for n in TASK_NAMES for p in PLATFORMS):
        task = documents.new_task(record, name, platform, order, args={"n": order})
        state = OUTCOMES[(record_index * 7 + order) % len(OUTCOMES)]
        started, ended = created + timedelta(seconds=5), created + timedelta(seconds=65)
        reason = "" if state == "success" else f"{name} {state}"
        task.update(host=f"{platform}-1", started=iso(started), ended=iso(ended),
                    duration=60.0, reason=reason, state=state,
                    result={"success": state == "success", "reason": reason},
                    attempts=[{"host": f"{platform}-1", "master": "bench",
                               "started": iso(started), "ended": iso(ended),
                               "outcome": state, "reason": reason}])
        task["history"] += [{"state": "running", "at": iso(started), "reason": ""},
                            {"state": state, "at": iso(ended), "reason": reason}]
        docs.append(task)
    return docs


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def load(farm: Farm, tasks: int, deadline: Deadline) -> dict[str, Any]:
    records = tasks // PER_RECORD
    base = datetime(2026, 1, 1, tzinfo=UTC)
    batch: list[dict[str, Any]] = []
    written = 0
    t0 = time.perf_counter()
    for index in range(records):
        batch += finished_docs(index, base)
        if len(batch) >= 1000 or index == records - 1:
            answers = farm.couch.bulk_docs(batch)
            errors = [a for a in answers if a.get("error")]
            if errors:
                raise RuntimeError(f"load refused: {errors[0]}")
            written += len(batch)
            batch = []
            deadline.check(f"loading ({written:,} documents written)")
    seconds = time.perf_counter() - t0
    return {"records": records, "documents": written, "load_s": round(seconds, 1),
            "load_docs_per_s": round(written / seconds, 1)}


def build_indexes(farm: Farm, pause: float) -> dict[str, float]:
    """Query each view once: the server builds its index (seconds per view). A pause after
    each keeps a large build from holding a core for many minutes on end."""
    out = {}
    for name, view in sorted(couchapp.build()["views"].items()):
        if out and pause:
            time.sleep(pause)
        params = {"limit": "1", **({"reduce": "false"} if "reduce" in view else {})}
        t0 = time.perf_counter()
        # dirt's client gives up reading after 60 s; a first query at 100,000 tasks takes
        # longer than that on PouchDB Server, so this one waits up to 30 minutes
        farm.couch.request("GET", f"_design/dirt/_view/{name}", params=params,
                           timeout=(5.0, 1800.0))
        out[name] = round(time.perf_counter() - t0, 2)
    return out


def timed(function: Any, repeat: int = 5) -> tuple[float, float]:
    """(first call, median of the next `repeat`) in milliseconds."""
    t0 = time.perf_counter()
    function()
    first = (time.perf_counter() - t0) * 1000
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        function()
        times.append((time.perf_counter() - t0) * 1000)
    return round(first, 1), round(statistics.median(times), 1)


def measure(ctx: Context, size: int, deadline: Deadline) -> dict[str, Any]:
    farm = Farm(ctx.procs, ctx.workdir, ctx.server.url, f"scale{size}", hosts=1, slots=2)
    try:
        out = load(farm, size, deadline)
        out["index_build_s"] = build_indexes(farm, pause=30.0 if size >= 50_000 else 0.0)
        deadline.check("building view indexes")
        out.update(master_figures(ctx, farm, deadline))
        out.update(web_figures(farm))
        out["database_rss_mb"] = rss_mb(ctx.server.pid)["rss_mb"]
    finally:
        try:
            farm.couch.drop()
        except Exception:
            pass
    out["ops"] = table_ops(out)
    return out


def master_figures(ctx: Context, farm: Farm, deadline: Deadline) -> dict[str, Any]:
    (first,) = farm.submit("new-0", farm.tasks(1, prefix="new-0-"))
    t0 = time.time()
    master = farm.start_master()
    try:
        start = wait_for(lambda: farm.runs().get("new-0-0"), deadline,
                         "the new task to start")["start"][0][1]
        watcher = FinalWatcher(farm.couch)
        wait_for(lambda: farm.couch.get(first)["state"] == "success", deadline,
                 "the new task's result")
        latencies = []
        for i in range(1, 6):
            s0 = time.time()
            (task_id,) = farm.submit(f"new-{i}", farm.tasks(1, prefix=f"new-{i}-"))
            watcher.wait_final([task_id], deadline)
            latencies.append(farm.runs()[f"new-{i}-0"]["start"][0][1] - s0)
        watcher.close()
        memory = rss_mb(master.pid)
    finally:
        ctx.procs.stop(master)
    return {"master_start_to_dispatch_s": round(start - t0, 2),
            "new_task_to_start_ms": round(statistics.median(latencies) * 1000, 1),
            "master_memory": memory}


def web_figures(farm: Farm) -> dict[str, Any]:
    from dirt.web import create_app

    app = create_app(farm.settings, farm.couch)
    web = app.test_client()
    records = farm.couch.view("dirt", "records_by_time", limit=1, skip=0)["total_rows"]
    middle = f"r{records // 2:06d}"

    def get(path: str) -> Any:
        def call() -> None:
            response = web.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path}: {response.status_code}")
        return call

    return {"web_ms": {
        "records page": timed(get("/")),
        "record page": timed(get(f"/records/{middle}")),
        "history page (30 records)": timed(get("/history/unit")),
        "history page (100 records)": timed(get("/history/unit?records=100")),
    }, "status_ms": timed(lambda: client.list_records(farm.couch, limit=50))}


def table_ops(out: dict[str, Any]) -> dict[str, Any]:
    """The figures as table cells: operation -> 'first / warm' or one value."""
    ops: dict[str, Any] = {
        "load (_bulk_docs of 1,000), docs/s": out["load_docs_per_s"],
        "view index build, all views (first query), s": round(
            sum(out["index_build_s"].values()), 1),
        "master start -> new task running, s": out["master_start_to_dispatch_s"],
        "master RSS, MB": out["master_memory"]["rss_mb"],
        "running master: submit -> start, ms (median of 5)": out["new_task_to_start_ms"],
    }
    for page, (first, warm) in out["web_ms"].items():
        ops[f"web {page}, ms (first / warm)"] = f"{first:,.0f} / {warm:,.0f}"
    first, warm = out["status_ms"]
    ops["dirt status (50 records), ms (first / warm)"] = f"{first:,.0f} / {warm:,.0f}"
    ops["database server RSS, MB"] = out["database_rss_mb"]
    return ops
