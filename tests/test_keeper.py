"""A finished task leaves nothing running on its host: a child it never waited for, a daemon
that forked twice and left its session, whatever it started ends when the task ends (its end,
its timeout, a kept worker's run, its gateway going away). Real execnet popen gateways and a
real sshd host; the leftovers are real processes, looked up in /proc by pid and start time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_master import Farm
from test_remote import Runs, gateway  # noqa: F401 (the fixture)

from dirt import client

LEFTOVERS_TASK = '''
import json, os, subprocess, sys, time

DAEMON = """
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(313)
"""


def identity(pid):
    """pid and start time: a pid used again later is not the same process"""
    with open("/proc/%d/stat" % pid) as f:
        return [pid, f.read().rsplit(")", 1)[1].split()[19]]


def execute(ctx):
    sleeper = subprocess.Popen(["sleep", "313"])  # never waited for; holds the log's pipe
    pid_file = os.path.join(ctx.workdir, "daemon.pid")
    subprocess.run([sys.executable, "-c", DAEMON, pid_file], check=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(pid_file):
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon did not start")
        time.sleep(0.01)
    with open(pid_file) as f:
        daemon = int(f.read())
    print("leftovers " + json.dumps([identity(sleeper.pid), identity(daemon)]), flush=True)
    if ctx.args.get("sleep"):
        time.sleep(ctx.args["sleep"])
    return {"success": True, "reason": "left two processes behind", "pid": os.getpid()}
'''


def running(pid: int, started: str) -> bool:
    """Is the process with this pid and start time still there (and not a zombie)?"""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] not in ("Z", "X")


def leftovers(log: str) -> list[list]:
    (line,) = [ln for ln in log.splitlines() if ln.startswith("leftovers ")]
    found = json.loads(line.split(" ", 1)[1])
    assert len(found) == 2
    return found


def wait_gone(processes: list[list], timeout: float) -> list[list]:
    """The processes still running after `timeout` seconds (at once when none is)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in processes if running(*p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


class LeftoverRuns(Runs):
    def start(self, n: int, reuse: int, timeout: float | None = None, **args) -> None:
        from dirt.remote import Job

        job = Job(
            task_id=f"task:r:leftovers:linux:{n}",
            task="leftovers",
            platform="linux",
            source=LEFTOVERS_TASK,
            record={"name": "r"},
            args={"n": n, **args},
            timeout=timeout,
            attempt=1,
            reuse=reuse,
        )
        self.messages[n] = []
        self.channels[n] = self.gateway.start(job, self.events, n)

    def wait_log(self, n: int, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while what not in self.log(n):
            key, message = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            self.messages[key].append(message)


@pytest.mark.parametrize("reuse", [1, 5], ids=["own process", "kept worker"])
def test_a_finished_task_leaves_nothing_running(gateway, reuse):  # noqa: F811
    runs = LeftoverRuns(gateway)
    ended = runs.run(0, reuse=reuse)
    assert ended[0] == "result", ended
    # gone when the host says the task ended, not some time later
    assert [p for p in leftovers(runs.log(0)) if running(*p)] == []
    if reuse > 1:  # the kept worker itself lives on for the next run, which does the same
        again = runs.run(1, reuse=reuse)
        assert again[0] == "result" and again[1]["pid"] == ended[1]["pid"]
        assert [p for p in leftovers(runs.log(1)) if running(*p)] == []


@pytest.mark.parametrize("reuse", [1, 5], ids=["own process", "kept worker"])
def test_a_task_that_times_out_leaves_nothing_running(gateway, reuse):  # noqa: F811
    runs = LeftoverRuns(gateway)
    ended = runs.run(0, reuse=reuse, timeout=5, sleep=60)
    assert ended == ("timeout", 5)
    assert [p for p in leftovers(runs.log(0)) if running(*p)] == []


def test_the_masters_kill_leaves_nothing_running(gateway):  # noqa: F811
    runs = LeftoverRuns(gateway)
    runs.start(0, reuse=1, sleep=60)
    runs.wait_log(0, "leftovers ")
    runs.channels[0].send("kill")
    ended = runs.wait(0)
    assert ended[0] == "lost" and "SIGKILL" in ended[1]
    assert [p for p in leftovers(runs.log(0)) if running(*p)] == []


def test_a_task_whose_gateway_goes_away_leaves_nothing_running(gateway):  # noqa: F811
    # the master dies or the connection to the host breaks: the gateway process ends, and
    # with it the task and all it started (checked twice a second on the host)
    runs = LeftoverRuns(gateway)
    runs.start(0, reuse=1, sleep=60)
    runs.wait_log(0, "leftovers ")
    processes = leftovers(runs.log(0))
    gateway.kill()
    assert wait_gone(processes, timeout=10) == []


def test_without_a_subreaper_what_stayed_in_the_tasks_session_ends(gateway):  # noqa: F811
    # a host where a process cannot adopt its orphans (not Linux): the task's session is
    # ended with it; a daemon that made a session of its own may outlive it (docs/security.md)
    gateway.gateway.remote_exec(
        "import sys\nsys.modules['dirt_remote_runner'].KEEPER = False"
    ).waitclose(10)
    runs = LeftoverRuns(gateway)
    ended = runs.run(0, reuse=1)
    assert ended[0] == "result", ended
    sleeper, daemon = leftovers(runs.log(0))
    assert not running(*sleeper)
    if running(*daemon):  # not this test's business: end it
        import os
        import signal

        os.kill(daemon[0], signal.SIGKILL)


@pytest.mark.ssh
def test_a_task_on_an_ssh_host_leaves_nothing_running(project, sshd):
    farm = Farm(project)
    try:
        farm.task("leftovers", LEFTOVERS_TASK)
        client.add_host(
            farm.couch, "box", "linux", ssh=sshd.destination, port=sshd.port, key=str(sshd.key)
        )
        farm.submit("r1", "leftovers")
        master = farm.master()
        farm.drain(master, timeout=90)
        doc = farm.doc("task:r1:leftovers:linux")
        assert doc["state"] == "success", doc
        log = farm.couch.get_attachment(doc["_id"], "log.txt").decode()
        assert [p for p in leftovers(log) if running(*p)] == []
    finally:
        farm.close()
