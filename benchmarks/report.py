"""The table: dirt's figures, the limits and the peers, and dirt's figures as ratios of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- results: written by bin/bench -->", "<!-- end of results -->"


def scenario_lines(name: str, entry: dict[str, Any]) -> str:
    if entry.get("error"):
        head = f"    {name}: STOPPED: {entry['error']}"
    else:
        head = f"    {name}: done in {entry.get('seconds')} s (load {entry.get('load_after')})"
    figures = json.dumps(entry.get("figures", {}), indent=1)
    return head + "\n" + "\n".join("    " + line for line in figures.splitlines())


def get(results: dict[str, Any], scenario: str, *path: str) -> Any:
    value: Any = (results.get("scenarios") or {}).get(scenario, {}).get("figures", {})
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "-"
    return f"{a / b:.2f}"


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    elif isinstance(value, int):
        value = f"{value:,}"
    return f"{value}{unit}"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, figure, dirt as a ratio of it) rows of the results table."""
    out: list[tuple[str, str, str]] = []
    lat = get(results, "latency") or {}
    for key, label in (("to_claim_ms", "submit -> claimed by the master"),
                       ("to_start_ms", "submit -> task started on host"),
                       ("to_result_ms", "submit -> result in database")):
        p = lat.get(key) or {}
        if p:
            out.append((f"dirt latency, {label} (p50 / p95 / p99)",
                        f"{p['p50']} / {p['p95']} / {p['p99']} ms", ""))
    reuse = lat.get("reuse") or {}
    for key, label in (("to_start_ms", "submit -> started"), ("to_result_ms", "submit -> result")):
        p = reuse.get(key) or {}
        if p:
            out.append((f"dirt latency, task with REUSE_PROCESS (kept worker), {label} "
                         "(p50 / p95 / p99)", f"{p['p50']} / {p['p95']} / {p['p99']} ms", ""))
    ssh = lat.get("ssh") or {}
    if ssh.get("error"):
        out.append(("dirt latency over sshd hosts", "could not run: " + ssh["error"], ""))
    for key, label in (("to_start_ms", "submit -> started"), ("to_result_ms", "submit -> result")):
        p = ssh.get(key) or {}
        if p:
            out.append((f"dirt latency over 4 sshd hosts on 127.0.0.x, {label} "
                        "(p50 / p95 / p99)", f"{p['p50']} / {p['p95']} / {p['p99']} ms", ""))
    tp = get(results, "throughput", "tasks_per_s")
    tp_reuse = get(results, "throughput", "reuse", "tasks_per_s")
    for figures, label in ((get(results, "throughput"), "a process per task (default)"),
                           (get(results, "throughput", "reuse"), "REUSE_PROCESS (kept workers)")):
        if not figures or figures.get("tasks_per_s") is None:
            continue
        out.append((f"dirt throughput, {figures.get('tasks', 2000):,} tasks, 8 hosts x 2 slots, "
                    f"{label}",
                    fmt(figures["tasks_per_s"], " tasks/s"), ""))
        cpu = figures.get("cpu_ms_per_task") or {}
        if cpu:
            out.append((f"dirt CPU per task, {label}: master / hosts (gateway + task "
                        "processes) / database",
                        f"{cpu['master']} / {cpu['hosts']} / {cpu['database']} ms", ""))
    for key, label in (
        ("execnet_calls_per_s", "limit: bare execnet, same calls, 8 gateways x 2"),
        ("execnet_fork_calls_per_s", "limit: bare execnet + 1 forked process per call"),
        ("execnet_process_calls_per_s", "limit: bare execnet + 1 new Python process per call"),
        ("db_bulk_docs_1000_docs_per_s", "limit: database, _bulk_docs of 1,000"),
        ("db_bulk_docs_100_docs_per_s", "limit: database, _bulk_docs of 100"),
        ("db_put_docs_per_s", "limit: database, single PUTs"),
    ):
        value = get(results, "limits", key)
        if value is not None:
            out.append((label, fmt(value, " /s"),
                        f"{ratio(tp, value)} / {ratio(tp_reuse, value)}"))
    value = get(results, "limits", "db_task_writes_tasks_per_s")
    if value is not None:
        out.append(("limit: the database alone, each task's three writes (created, claimed, "
                    "ended) batched as a master does, nothing else running",
                    fmt(value, " tasks/s"), f"{ratio(tp, value)} / {ratio(tp_reuse, value)}"))
    p = get(results, "limits", "db_round_trips_ms") or {}
    if p:
        out.append(("floor: the database requests of a one-task record in a row (host list, "
                    "record, task, claim, result), nothing else running (p50 / p95 / p99)",
                    f"{p['p50']} / {p['p95']} / {p['p99']} ms",
                    f"{ratio((lat.get('to_result_ms') or {}).get('p50'), p['p50'])} / "
                    f"{ratio((reuse.get('to_result_ms') or {}).get('p50'), p['p50'])}"))
    for peer in ("rq", "buildbot"):
        figures = get(results, "peers", peer) or {}
        if figures.get("error"):
            out.append((f"peer {peer}", "could not run: " + figures["error"], ""))
            continue
        value = figures.get("tasks_per_s")
        if value is not None:
            note = figures.get("tasks") if figures.get("tasks") != figures.get("planned") else ""
            label = f"peer {peer}: throughput" + (f" ({note} of {figures.get('planned')} "
                                                    "within its time limit)" if note else "")
            out.append((label, fmt(value, " tasks/s"),
                        f"{ratio(tp, value)} / {ratio(tp_reuse, value)}"))
        for key, label in (("to_start_ms", "to start"), ("to_result_ms", "to result")):
            p = figures.get(key) or {}
            mine = (lat.get(key) or {}).get("p50")
            mine_reuse = (reuse.get(key) or {}).get("p50")
            if p:
                out.append((f"peer {peer}: latency {label} (p50 / p95 / p99)",
                            f"{p['p50']} / {p['p95']} / {p['p99']} ms",
                            f"{ratio(mine, p['p50'])} / {ratio(mine_reuse, p['p50'])}"))
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["| what | figure | dirt / this (default / REUSE_PROCESS) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows(results)]
    lines += scale_table(results) + soak_lines(results)
    return "\n".join(lines)


def scale_table(results: dict[str, Any]) -> list[str]:
    figures = get(results, "scale") or {}
    if not figures:
        return []
    sizes = sorted(figures, key=lambda s: int(s))
    errors = [f"| scale at {int(s):,} tasks | stopped: {figures[s]['error']} |" for s in sizes
              if figures[s].get("error")]
    ops = []
    for size in sizes:
        for op in figures[size].get("ops", {}):
            if op not in ops:
                ops.append(op)
    lines = ["", "| scale: operation | "
             + " | ".join(f"{int(s):,} tasks" for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for op in ops:
        cells = []
        for size in sizes:
            value = figures[size].get("ops", {}).get(op)
            cells.append(value if isinstance(value, str) else fmt(value))
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return lines + errors


def soak_lines(results: dict[str, Any]) -> list[str]:
    figures = get(results, "soak") or {}
    if not figures:
        return []
    return ["", "| soak with faults | figure |", "|---|---|"] + [
        f"| {key} | {value} |" for key, value in figures.items()
        if not isinstance(value, dict | list)]


def header(results: dict[str, Any]) -> str:
    """Where and when: the machine, versions, and each scenario's date, size and load."""
    m, v = results.get("machine", {}), results.get("versions", {})
    lines = [f"Machine: {m.get('cores')} cores, {m.get('memory_gb')} GB, {m.get('cpu')}; "
             f"Python {v.get('python')}, dirt {v.get('dirt')} ({v.get('dirt_commit')}), "
             f"execnet {v.get('execnet')}, pouchdb-server {v.get('pouchdb-server')} "
             f"(node {v.get('node')}), rq {v.get('rq')} + redis-server "
             f"{v.get('redis-server')}, Buildbot {v.get('buildbot')}.", ""]
    for name, entry in (results.get("scenarios") or {}).items():
        size = "quick" if entry.get("quick") else "full size"
        lines.append(f"- {name}: {entry.get('date')}, dirt {entry.get('dirt_commit', '?')}, "
                     f"{size}, {entry.get('seconds')} s, "
                     f"load average before/after {entry.get('load_before')} / "
                     f"{entry.get('load_after')}"
                     + (f"; stopped: {entry['error']}" if entry.get("error") else ""))
    return "\n".join(lines)


def update_readme(path: Path, results: dict[str, Any]) -> bool:
    """Replace the results block of the README (between its markers) with this table."""
    if not path.exists():
        return False
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    block = f"{BEGIN}\n{header(results)}\n\n{table(results)}\n{END}"
    path.write_text(head + block + tail)
    return True
