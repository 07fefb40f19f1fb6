"""Run dirt's benchmarks: `bin/bench [--quick] [--only=a,b] [--profile]` (see README.md)."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import latency, limits, peers, report, scale, soak, throughput
from benchmarks.common import Processes, ScenarioTimeout, load_average, machine, versions
from benchmarks.context import Context

SCENARIOS = {m.NAME: m for m in (latency, throughput, limits, peers, scale, soak)}
RESULTS = Path(__file__).parent / "results.json"
QUICK_RESULTS = Path(__file__).parent / "results-quick.json"
README = Path(__file__).parent / "README.md"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bin/bench", description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated scenarios: "
                        + ", ".join(SCENARIOS) + " (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--profile", action="store_true",
                        help="record the throughput master with py-spy (profile.svg, .txt)")
    parser.add_argument("--sizes", default="",
                        help="scale: tasks in the database, e.g. 10000,100000")
    parser.add_argument("--out", default=None,
                        help="results file, merged into (default: results.json, with --quick "
                        "results-quick.json; only results.json updates the README table)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"bin/bench: unknown scenario {unknown[0]!r} (known: {', '.join(SCENARIOS)})",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    out = Path(args.out).resolve() if args.out else QUICK_RESULTS if args.quick else RESULTS
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update(machine=machine(), versions=versions())
    results.setdefault("scenarios", {})
    workdir = Path(tempfile.mkdtemp(prefix="dirt-bench-"))
    procs = Processes()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    ctx = Context(workdir=workdir, procs=procs, quick=args.quick, profile=args.profile,
                  sizes=[int(s) for s in args.sizes.split(",") if s.strip()],
                  results=results["scenarios"])
    try:
        for name in names:
            print(f"==> {name}: {SCENARIOS[name].TITLE}", flush=True)
            entry = run_one(ctx, name)
            merge(results["scenarios"], name, entry)
            out.write_text(json.dumps(results, indent=1) + "\n")
            print(report.scenario_lines(name, results["scenarios"][name]), flush=True)
    except KeyboardInterrupt:
        print("bin/bench: interrupted; stopping what it started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"work folder kept: {workdir}")
        else:
            for _ in range(3):  # a process that is still ending may write one last line
                shutil.rmtree(workdir, ignore_errors=True)
                if not workdir.exists():
                    break
                time.sleep(1.0)
    print()
    print(report.table(results))
    print(f"\nresults written to {out}")
    if out == RESULTS and report.update_readme(README, results):
        print(f"results table updated in {README}")
    return 0


def run_one(ctx: Context, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": ctx.quick, "load_before": load_average(),
        "dirt_commit": results_commit(),
    }
    started = time.monotonic()
    try:
        entry.update(SCENARIOS[name].run(ctx))
    except ScenarioTimeout as exc:
        entry["error"] = str(exc)
    except Exception as exc:  # a scenario that breaks is reported, the others still run
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()
        print(entry["traceback"], file=sys.stderr)
    entry["seconds"] = round(time.monotonic() - started, 1)
    entry["load_after"] = load_average()
    return entry


def results_commit() -> str:
    """The commit of dirt this scenario measures (a '+' when the work tree has changes)."""
    import subprocess

    from benchmarks.common import REPO

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "dirt"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+" if dirty else "")


def merge(scenarios: dict[str, Any], name: str, entry: dict[str, Any]) -> None:
    """Replace a scenario's entry; scale keeps the sizes this run did not measure."""
    old = scenarios.get(name) or {}
    if name == "scale" and "figures" in entry and "figures" in old:
        entry["figures"] = {**old["figures"], **entry["figures"]}
    scenarios[name] = entry


if __name__ == "__main__":
    sys.exit(main())
