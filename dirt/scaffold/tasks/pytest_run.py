"""Run pytest on the host and report its summary; the test suite's failures fail the task.

args: target (what to test, default "."), cwd (default: the task's work folder), files (a
mapping of file name to content written into the work folder first, for self-contained
suites), options (extra pytest arguments, a list). The JUnit XML report is attached.
"""

import os
import re
import subprocess
import sys


def execute(ctx):
    for name, content in (ctx.args.get("files") or {}).items():
        path = os.path.join(ctx.workdir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as out:
            out.write(content)
    report = os.path.join(ctx.workdir, "pytest-report.xml")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={report}", *ctx.args.get("options", []),
               ctx.args.get("target", ".")]
    lines = []
    ctx.log("$ " + " ".join(command))
    process = subprocess.Popen(command, cwd=ctx.args.get("cwd") or ctx.workdir,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        ctx.log(line.rstrip("\n"))
        lines.append(line.strip())
    code = process.wait()
    if os.path.exists(report):
        with open(report, "rb") as xml:
            ctx.attach("pytest-report.xml", xml.read(), "application/xml")
    if "No module named pytest" in "\n".join(lines):
        return {"success": False, "reason": "pytest is not installed on this host"}
    summary = next((line.strip("= ") for line in reversed(lines)
                    if re.search(r"\d+ (passed|failed|error)", line)), f"exit code {code}")
    return {"success": code == 0, "reason": summary, "exit_code": code}
