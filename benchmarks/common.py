"""What every scenario uses: processes started and ended by PID, deadlines, a PouchDB Server,
a dirt farm (project, local hosts, `dirt serve` as a process), a reader of the changes feed,
the benchmark task, percentiles, and facts about the machine.

Everything listens on 127.0.0.1 and every process started here is ended here, by its PID.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from dirt import client, embedded, scaffold
from dirt.couch import Couch, wait_until_up
from dirt.documents import FINAL, State
from dirt.settings import load
from dirt.tasks import Registry

REPO = Path(__file__).resolve().parent.parent
# the harness reuses the test suite's helpers: the sshd host, the dirt.toml editor, /proc walking
sys.path.insert(0, str(REPO / "tests"))
from farm import configure  # noqa: E402
from sshd import Sshd, descendants  # noqa: E402

DIRT = str(Path(sys.executable).parent / "dirt")
PEERS_VENV = REPO / "benchmarks" / ".peers"
FINAL_STATES = {s.value for s in FINAL}

# The benchmark task: one 'start' and one 'end' line per run, appended to args.file (lines
# under PIPE_BUF are atomic), so the harness knows when each run started on its host and
# whether any task ran to its end twice.
BENCH_TASK = '''"""Benchmark task: appends '<id> start|end <pid> <time>' lines to args.file."""

import os
import time


def line(path, task, what):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, ("%s %s %d %.6f\\n" % (task, what, os.getpid(), time.time())).encode())
    os.close(fd)


def execute(ctx):
    line(ctx.args["file"], ctx.args["id"], "start")
    if ctx.args.get("seconds"):
        time.sleep(float(ctx.args["seconds"]))
    line(ctx.args["file"], ctx.args["id"], "end")
    return {"success": True, "reason": "ok"}
'''


# The same task with its runs served by kept worker processes (REUSE_PROCESS, docs/tasks.md).
BENCH_REUSE_TASK = BENCH_TASK.replace("import time\n", "import time\n\nREUSE_PROCESS = 1000\n", 1)


class Fatal(Exception):
    """Something the scenario waits for can never happen (a server exited): stop waiting."""


class ScenarioTimeout(Exception):
    """A scenario ran past its time limit: it stops, and says how far it got."""


@dataclass
class Deadline:
    seconds: float
    what: str
    start: float = field(default_factory=time.monotonic)

    @property
    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def check(self, doing: str = "") -> None:
        if self.left <= 0:
            raise ScenarioTimeout(f"{self.what}: time limit of {self.seconds:g} s reached"
                                  + (f" while {doing}" if doing else ""))


def wait_for(predicate: Callable[[], Any], deadline: Deadline, what: str,
             interval: float = 0.1) -> Any:
    while True:
        try:
            value = predicate()
        except Fatal:
            raise
        except Exception:  # the database may be restarting
            value = None
        if value:
            return value
        deadline.check(f"waiting for {what}")
        time.sleep(interval)


# -- processes ----------------------------------------------------------------------------


class Processes:
    """Every process the harness starts, each in a session of its own, ended by its PID (the
    process group it leads holds only what it started)."""

    def __init__(self) -> None:
        self.running: dict[int, subprocess.Popen] = {}

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
        environ.update(env or {})
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=environ, cwd=cwd,
                                       start_new_session=True)
        self.running[process.pid] = process
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 15.0,
             sig: int = signal.SIGTERM) -> int | None:
        """End one process (SIGTERM, then SIGKILL after `timeout`) and what it started."""
        if process.poll() is None:
            try:
                os.kill(process.pid, sig)
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        self._kill_group(process.pid)
        if process.poll() is None:
            process.kill()
            process.wait()
        self.running.pop(process.pid, None)
        return process.returncode

    def kill9(self, process: subprocess.Popen) -> None:
        """kill -9 the process alone (its children are left to notice, as in a crash)."""
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        self.running.pop(process.pid, None)

    def _kill_group(self, pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop_all(self) -> None:
        for process in list(self.running.values()):
            self.stop(process, timeout=5.0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (itself only)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants (the dead ones' time is in cutime
    of their reaped parents: included through fields cutime/cstime)."""
    total = 0.0
    for child in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return {"rss_mb": values.get("VmRSS", 0.0), "peak_rss_mb": values.get("VmHWM", 0.0)}


# -- the database server --------------------------------------------------------------------


class CouchServer:
    """A PouchDB Server (LevelDB storage) on a free loopback port; restartable on that port."""

    def __init__(self, procs: Processes, data: Path, port: int | None = None) -> None:
        self.procs = procs
        self.data = data
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        program = embedded.install(load(environ=dict(os.environ), cwd=Path("/")))
        self.data.mkdir(parents=True, exist_ok=True)
        self.process = self.procs.start(embedded.command(program, self.data, self.port),
                                        self.data / "server.log", cwd=self.data)
        wait_until_up(Couch(self.url, "_users"), time.monotonic() + 30)

    def stop(self) -> None:
        if self.process is not None:
            self.procs.stop(self.process)
        self.process = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


# -- a dirt farm ----------------------------------------------------------------------------


class SshHost:
    """A private sshd on a 127.x address (tests/sshd.py, reused), as a dirt host; its
    process is in the harness's registry, so it is ended with everything else."""

    def __init__(self, procs: Processes, folder: Path, address: str) -> None:
        self.procs = procs
        self.sshd = Sshd(folder, address=address)
        self.start()

    def start(self) -> None:
        self.sshd.start()
        self.procs.running[self.sshd.process.pid] = self.sshd.process

    def kill_all(self) -> None:
        """The host dies: sshd and everything under it (gateway, task processes), kill -9."""
        if self.sshd.process is not None:
            self.procs.running.pop(self.sshd.process.pid, None)
        self.sshd.kill_all()

    def stop(self) -> None:
        if self.sshd.process is not None:
            self.procs.running.pop(self.sshd.process.pid, None)
        self.sshd.stop()


class Farm:
    """A dirt project on the server, with the bench task, hosts (local, or on private sshds)
    and master processes."""

    def __init__(self, procs: Processes, workdir: Path, couch_url: str, name: str,
                 hosts: int, slots: int, ssh: list[SshHost] | None = None,
                 **master: Any) -> None:
        self.procs = procs
        self.dir = workdir / name
        self.database = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        self.settings = scaffold.create(self.dir, self.database, couch_url, environ={})
        (self.settings.tasks_dir / "bench.py").write_text(BENCH_TASK)
        (self.settings.tasks_dir / "bench_reuse.py").write_text(BENCH_REUSE_TASK)
        configure(self.dir, **master)
        self.couch = Couch(couch_url, self.database)
        self.registry = Registry(self.settings.tasks_dir)
        self.runs_file = self.dir / "runs.txt"
        self.host_names = [f"h{i}" for i in range(hosts)]
        for host in self.host_names:
            client.add_host(self.couch, host, "linux", local=True, slots=slots)
        for index, server in enumerate(ssh or []):
            name = f"ssh{index}"
            self.host_names.append(name)
            client.add_host(self.couch, name, "linux", ssh=server.sshd.destination,
                            port=server.sshd.port, key=str(server.sshd.key), slots=slots)
        self.masters: list[subprocess.Popen] = []

    def start_master(self, *extra: str) -> subprocess.Popen:
        log = self.dir / f"master-{len(self.masters)}.log"
        process = self.procs.start([DIRT, "--project", str(self.dir), "serve", *extra], log)
        self.masters.append(process)
        return process

    def hosts_alive(self) -> bool:
        docs = self.couch.docs_by_prefix("host:")
        return len(docs) == len(self.host_names) and all(d.get("alive") is True for d in docs)

    def tasks(self, count: int, prefix: str = "t", task: str = "bench",
              **args: Any) -> list[dict[str, Any]]:
        return [{"name": task, "platform": "linux", "key": f"{prefix}{i}",
                 "args": {"id": f"{prefix}{i}", "file": str(self.runs_file), **args}}
                for i in range(count)]

    def submit(self, record: str, tasks: list[dict[str, Any]]) -> list[str]:
        _, docs = client.submit(self.couch, self.registry, record, tasks)
        return [d["_id"] for d in docs]

    def runs(self) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """Per task id: its 'start' and 'end' lines as (pid, time)."""
        out: dict[str, dict[str, list[tuple[int, float]]]] = {}
        if not self.runs_file.exists():
            return out
        for line in self.runs_file.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue
            entry = out.setdefault(parts[0], {"start": [], "end": []})
            entry[parts[1]].append((int(parts[2]), float(parts[3])))
        return out

    def task_docs(self) -> list[dict[str, Any]]:
        return self.couch.docs_by_prefix("task:")


# -- the changes feed, read cheaply ---------------------------------------------------------


class FinalWatcher:
    """Follows a database's continuous changes feed (resuming after outages) and notes the
    first moment each task document is seen in a final state: its result is in the database.

    Reads lines with http.client (buffered), so following thousands of changes costs the
    harness little CPU next to the master it measures.
    """

    def __init__(self, couch: Couch) -> None:
        self.couch = couch
        self.final_at: dict[str, float] = {}
        self.states: dict[str, str] = {}
        self.condition = threading.Condition()
        self.stop_flag = threading.Event()
        self.since: str | int = couch.info()["update_seq"]
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _loop(self) -> None:
        parts = urlsplit(self.couch.url)
        while not self.stop_flag.is_set():
            try:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
                path = (f"/{quote(self.couch.database, safe='')}/_changes?feed=continuous"
                        f"&include_docs=true&heartbeat=2000&since={quote(str(self.since))}")
                conn.request("GET", path, headers={"Accept-Encoding": "identity"})
                response = conn.getresponse()
                self.ready.set()
                while not self.stop_flag.is_set():
                    line = response.readline()
                    if not line:
                        break
                    if line.strip():
                        self._apply(json.loads(line))
                conn.close()
            except (OSError, http.client.HTTPException, ValueError):
                pass
            self.ready.set()
            self.stop_flag.wait(0.2)

    def _apply(self, change: dict[str, Any]) -> None:
        if "seq" in change:
            self.since = change["seq"]
        doc = change.get("doc") or {}
        if doc.get("type") != "task":
            return
        with self.condition:
            self.states[doc["_id"]] = doc["state"]
            if doc["state"] in FINAL_STATES and doc["_id"] not in self.final_at:
                self.final_at[doc["_id"]] = time.time()
                self.condition.notify_all()

    def wait_final(self, ids: list[str], deadline: Deadline) -> dict[str, float]:
        with self.condition:
            while True:
                if all(i in self.final_at for i in ids):
                    return {i: self.final_at[i] for i in ids}
                deadline.check(f"waiting for {sum(i in self.final_at for i in ids)}/"
                               f"{len(ids)} results")
                self.condition.wait(min(1.0, max(deadline.left, 0.01)))

    def count_final(self, ids: list[str]) -> int:
        with self.condition:
            return sum(i in self.final_at for i in ids)

    def close(self) -> None:
        self.stop_flag.set()


# -- figures --------------------------------------------------------------------------------


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """p50/p95/p99/min/max/mean of `values` (seconds), in milliseconds by default."""
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return round(ordered[index] * scale, 1)

    return {"n": len(ordered), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99),
            "min": at(0.0), "max": at(1.0),
            "mean": round(sum(ordered) / len(ordered) * scale, 1)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) * 1024
    return {"cores": os.cpu_count(), "memory_gb": round(memory / 2**30, 1), "cpu": model,
            "os": platform.platform(), "hostname_hash": uuid.uuid5(
                uuid.NAMESPACE_DNS, platform.node()).hex[:8]}


def versions() -> dict[str, Any]:
    from importlib import metadata

    out: dict[str, Any] = {"python": platform.python_version()}
    for name in ("dirt", "execnet", "requests", "flask"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["pouchdb-server"] = embedded.VERSION
    try:
        out["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True,
                                     timeout=10).stdout.strip()
    except OSError:
        out["node"] = None
    try:
        out["dirt_commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=10).stdout.strip()
    except OSError:
        pass
    out.update(peer_versions())
    return out


def peer_python() -> Path | None:
    python = PEERS_VENV / "bin" / "python"
    return python if python.exists() else None


def peer_versions() -> dict[str, Any]:
    python = peer_python()
    out: dict[str, Any] = {}
    if python:
        code = ("import json, importlib.metadata as m\nout = {}\n"
                "for n in ('rq', 'redis', 'buildbot', 'buildbot-worker', 'twisted', 'py-spy'):\n"
                "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: out[n] = None\n"
                "print(json.dumps(out))")
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                              timeout=60)
        if done.returncode == 0:
            out.update(json.loads(done.stdout))
    try:
        text = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                              timeout=10).stdout
        out["redis-server"] = text.split("v=")[1].split()[0] if "v=" in text else None
    except OSError:
        out["redis-server"] = None
    return out


def wait_state(couch: Couch, doc_id: str, states: set[str], deadline: Deadline) -> dict:
    return wait_for(lambda: (d := couch.get(doc_id))["state"] in states and d, deadline,
                    f"{doc_id} to be {'/'.join(sorted(states))}")


__all__ = ["State"]
