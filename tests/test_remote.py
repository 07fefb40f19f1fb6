"""remote.py and the runner on the host: tasks run in a process of their own, or, for a task
module with REUSE_PROCESS, in a kept worker process. Real execnet popen gateways."""

from __future__ import annotations

import gc
import os
import queue
import time

import execnet
import pytest

from dirt.remote import Gateway, Job

ENDINGS = ("result", "error", "timeout", "lost")

PID_TASK = """
import os, sys, time
LOADED = time.time()  # a fresh module for every run, also in a kept worker
COUNTER = []


def execute(ctx):
    COUNTER.append(1)
    print("run", ctx.args["n"])
    sys.stderr.write("stderr of run %s\\n" % ctx.args["n"])
    if ctx.args.get("sleep"):
        time.sleep(ctx.args["sleep"])
    if ctx.args.get("exit"):
        os._exit(ctx.args["exit"])
    if ctx.args.get("raise"):
        raise RuntimeError("asked to fail")
    with open("scratch.txt", "w") as f:  # the run's own work directory
        f.write("x")
    return {"success": True, "reason": "", "pid": os.getpid(), "runs": len(COUNTER),
            "cwd": os.getcwd()}
"""


@pytest.fixture
def gateway():
    group = execnet.Group()
    gw = Gateway("local", "popen//id=local", group)
    gw.open()
    yield gw
    gw.shutdown()
    group.terminate(5)


class Runs:
    """Start jobs on a gateway and collect every message of each, by job number."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.events: queue.Queue = queue.Queue()
        self.channels: dict[int, object] = {}
        self.messages: dict[int, list[tuple]] = {}

    def start(self, n: int, reuse: int, timeout: float | None = None, **args) -> None:
        job = Job(task_id=f"task:r:pid:linux:{n}", task="pid", platform="linux",
                  source=PID_TASK, record={"name": "r"}, args={"n": n, **args},
                  timeout=timeout, attempt=1, reuse=reuse)
        self.messages[n] = []
        self.channels[n] = self.gateway.start(job, self.events, n)

    def attempt(self, n: int, key: str) -> Job:
        """Start run `n` as the master does, named by its claim (documents.attempt_id)."""
        job = Job(task_id=f"task:r:pid:linux:{key}", task="pid", platform="linux",
                  source=PID_TASK, record={"name": "r"}, args={"n": n}, timeout=None,
                  attempt=1, reuse=1,
                  attempt_id=f"task:r:pid:linux:{key}:1:master-a:{time.time()}")
        self.messages[n] = []
        self.channels[n] = self.gateway.start(job, self.events, n)
        return job

    def wait(self, n: int, timeout: float = 30.0) -> tuple:
        """The run's last message (how it ended); its channel is let go, as the master
        does."""
        end = time.monotonic() + timeout
        while not (self.messages[n] and self.messages[n][-1][0] in ENDINGS):
            key, message = self.events.get(timeout=max(end - time.monotonic(), 0.01))
            self.messages[key].append(message)
        self.channels.pop(n, None)
        return self.messages[n][-1]

    def log(self, n: int) -> str:
        return "\n".join(m[1] for m in self.messages[n] if m[0] == "log")

    def run(self, n: int, reuse: int, **args) -> tuple:
        self.start(n, reuse, **args)
        return self.wait(n)


def test_a_fresh_process_for_every_run_by_default(gateway):
    runs = Runs(gateway)
    results = [runs.run(n, reuse=1)[1] for n in range(3)]
    assert len({r["pid"] for r in results}) == 3
    assert all(r["runs"] == 1 for r in results)


def test_a_kept_worker_serves_reuse_runs_then_a_new_one(gateway):
    runs = Runs(gateway)
    results = [runs.run(n, reuse=3) for n in range(5)]
    assert [r[0] for r in results] == ["result"] * 5
    pids = [r[1]["pid"] for r in results]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4]
    # each run gets a fresh module, its own work directory, and only its own output
    assert all(r[1]["runs"] == 1 for r in results)
    assert len({r[1]["cwd"] for r in results}) == 5
    for n in range(5):
        assert f"run {n}" in runs.log(n) and f"stderr of run {n}" in runs.log(n)
        assert all(f"run {m}" not in runs.log(n) for m in range(5) if m != n)


def test_a_task_error_keeps_the_worker(gateway):
    runs = Runs(gateway)
    first = runs.run(0, reuse=5)
    failed = runs.run(1, reuse=5, **{"raise": True})
    after = runs.run(2, reuse=5)
    assert failed[0] == "error" and "asked to fail" in failed[1]
    assert first[1]["pid"] == after[1]["pid"]


def test_a_timeout_ends_the_worker_and_the_next_run_gets_a_new_one(gateway):
    runs = Runs(gateway)
    first = runs.run(0, reuse=5)
    timed_out = runs.run(1, reuse=5, timeout=0.5, sleep=30)
    after = runs.run(2, reuse=5)
    assert timed_out[0] == "timeout"
    assert after[0] == "result" and after[1]["pid"] != first[1]["pid"]


def test_a_task_that_exits_its_worker_is_an_error_and_the_next_run_gets_a_new_one(gateway):
    runs = Runs(gateway)
    first = runs.run(0, reuse=5)
    exited = runs.run(1, reuse=5, exit=3)
    after = runs.run(2, reuse=5)
    assert exited == ("error", "task process exited with code 3 without a result")
    assert after[0] == "result" and after[1]["pid"] != first[1]["pid"]


def test_the_masters_kill_ends_the_run_and_its_worker(gateway):
    runs = Runs(gateway)
    first = runs.run(0, reuse=5)
    runs.start(1, reuse=5, sleep=30)
    end = time.monotonic() + 10
    while not runs.log(1) and time.monotonic() < end:  # it runs: its first line came
        key, message = runs.events.get(timeout=10)
        runs.messages[key].append(message)
    runs.channels[1].send("kill")
    killed = runs.wait(1)
    after = runs.run(2, reuse=5)
    assert killed[0] == "lost" and "SIGKILL" in killed[1]
    assert after[0] == "result" and after[1]["pid"] != first[1]["pid"]


def test_a_channel_closing_after_its_run_ended_spares_the_workers_next_run(gateway):
    # a run's channel closing (the master let it go) ends the run's process; once the run
    # is over, that must not touch the worker's next run
    runs = Runs(gateway)
    runs.start(0, reuse=5)
    channel = runs.channels[0]
    first = runs.wait(0)
    runs.start(1, reuse=5, sleep=1)
    channel.close()
    del channel
    gc.collect()
    second = runs.wait(1)
    assert second[0] == "result" and second[1]["pid"] == first[1]["pid"]


def test_concurrent_runs_get_workers_of_their_own(gateway):
    runs = Runs(gateway)
    for n in range(4):
        runs.start(n, reuse=10, sleep=0.5)
    results = [runs.wait(n) for n in range(4)]
    assert [r[0] for r in results] == ["result"] * 4
    assert len({r[1]["pid"] for r in results}) == 4


def test_an_outcome_is_kept_by_its_attempt_id_only(gateway):
    # a master taking over asks the host how an attempt ended; an attempt with the same task
    # id and number from another claim (a re-created record, another database) is not it
    runs = Runs(gateway)
    job = runs.attempt(0, "k")
    ended = runs.wait(0)
    assert ended[0] == "result"
    assert gateway.collect(job.attempt_id) == ended
    assert gateway.collect(job.attempt_id.replace("master-a", "master-b")) is None


def test_kept_outcomes_are_let_go_a_day_at_a_time(gateway, tmp_path):
    results = tmp_path / "results"
    runner = "import sys\nrunner = sys.modules['dirt_remote_runner']\n"
    gateway.gateway.remote_exec(runner + "runner.RESULTS = channel.receive()").send(str(results))
    runs = Runs(gateway)
    job = runs.attempt(0, "d")
    ended = runs.wait(0)
    (today,) = [p for p in results.iterdir() if p.is_dir()]
    assert [p.suffix for p in today.iterdir()] == [".json"]
    old_day = results / "2000-01-01"
    old_day.mkdir()
    (old_day / "x.json").write_text('["result", {}]')
    name = gateway.gateway.remote_exec(runner + "channel.send(runner.result_name('legacy'))")
    flat = results / name.receive(10)  # kept by an earlier runner, without a day's folder
    flat.write_text('["result", {"success": true, "reason": "kept flat"}]')
    stale = results / ("0" * 64 + ".json")
    stale.write_text('["result", {}]')
    week_ago = time.time() - 8 * 86400
    os.utime(stale, (week_ago, week_ago))

    gateway.gateway.remote_exec(runner + "runner.prune_results()").waitclose(10)
    assert not old_day.exists() and not stale.exists()
    assert today.exists() and flat.exists()
    assert gateway.collect(job.attempt_id) == ended
    assert gateway.collect("legacy") == ("result", {"success": True, "reason": "kept flat"})
    assert gateway.collect("never ran here") is None


# -- long lines ---------------------------------------------------------------------------------

LONG_LINES_TASK = r'''
import os, sys


def execute(ctx):
    # the 2 bytes of "é" straddle the 64 KiB mark: the cut comes before them
    os.write(1, b"a" * 65535 + "é".encode() + b"b" * 131072 + b"\nend of output\n")
    ctx.log("c" * 100000)
    ctx.run([sys.executable, "-c", "import sys; sys.stdout.write('d' * 70000 + '\\nafter\\n')"])
    return {"success": True, "reason": ""}
'''
CUT_NOTE = " [dirt: line cut at 64 KiB, it goes on in the next]"


def log_of(gateway, source: str, **args) -> tuple[tuple, list[str]]:
    runs = Runs(gateway)
    job = Job(task_id="task:r:long:linux", task="long", platform="linux", source=source,
              record={"name": "r"}, args=args, timeout=120)
    runs.messages[0] = []
    runs.channels[0] = gateway.start(job, runs.events, 0)
    ended = runs.wait(0, timeout=120)
    return ended, runs.log(0).split("\n")


def unwrap(lines: list[str]) -> list[str]:
    """The lines as the task wrote them: each cut piece joined to the rest."""
    whole, piece = [], ""
    for line in lines:
        if line.endswith(CUT_NOTE):
            piece += line[: -len(CUT_NOTE)]
        else:
            whole.append(piece + line)
            piece = ""
    return whole


def test_a_line_longer_than_64_kib_comes_in_marked_pieces_with_nothing_lost(gateway):
    ended, lines = log_of(gateway, LONG_LINES_TASK)
    assert ended[0] == "result", ended
    assert max(len(ln.encode()) for ln in lines) <= 65536 + len(CUT_NOTE)
    # cut before the "é" whose 2 bytes straddle the 64 KiB mark, not in its middle; the
    # last piece ends the line, without a note
    assert [ln for ln in lines if ln.startswith(("aaaa", "é", "bb"))] == [
        "a" * 65535 + CUT_NOTE, "é" + "b" * 65534 + CUT_NOTE, "b" * 65536 + CUT_NOTE, "bb"]
    assert [ln for ln in lines if ln.startswith("c")] == [
        "c" * 65536 + CUT_NOTE, "c" * (100000 - 65536)]
    assert [ln for ln in lines if ln.startswith("d")] == [
        "d" * 65536 + CUT_NOTE, "d" * (70000 - 65536)]
    whole = unwrap(lines)
    assert "a" * 65535 + "é" + "b" * 131072 in whole
    assert "c" * 100000 in whole
    assert "d" * 70000 in whole
    assert whole.index("end of output") > whole.index("a" * 65535 + "é" + "b" * 131072)
    assert whole.index("after") > whole.index("d" * 70000)


NO_NEWLINE_TASK = '''
import os


def execute(ctx):
    chunk = b"x" * (1 << 20)
    for _ in range(ctx.args["mb"]):
        os.write(ctx.args["fd"], chunk)
    if ctx.args["fd"] == 3:  # the end of that message
        os.write(3, b"\\n")
    return {"success": True, "reason": "wrote %d MB" % ctx.args["mb"]}
'''


def gateway_peak(gateway) -> int:
    """The gateway process's peak memory (VmHWM), in bytes."""
    status = gateway.gateway.remote_exec(
        "channel.send(open('/proc/self/status').read())").receive(10)
    (line,) = [ln for ln in status.splitlines() if ln.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def test_output_without_newlines_keeps_the_hosts_memory_bounded(gateway):
    before = gateway_peak(gateway)
    ended, lines = log_of(gateway, NO_NEWLINE_TASK, mb=48, fd=1)
    assert ended == ("result", {"success": True, "reason": "wrote 48 MB"})
    assert gateway_peak(gateway) - before < 16 << 20
    assert len(lines) == 48 * 16 and all(ln.endswith(CUT_NOTE) for ln in lines[:-1])
    assert sum(len(ln) for ln in unwrap(lines)) == 48 << 20


def test_a_message_over_32_mb_is_dropped_with_a_note(gateway):
    # the messages pipe (fd 3) carries artifacts of up to 16 MB in all, base64-encoded
    before = gateway_peak(gateway)
    ended, lines = log_of(gateway, NO_NEWLINE_TASK, mb=48, fd=3)
    assert ended == ("result", {"success": True, "reason": "wrote 48 MB"})
    assert gateway_peak(gateway) - before < 48 << 20
    assert lines == [f"[dirt: a message of {48 << 20} bytes from the task dropped: the most "
                     f"is {32 << 20}]"]
