"""The gateway side of one task: runs as execnet's `__channelexec__` on the host.

Receives the job, starts the task process (remote_child.py) in its own session, relays its
output and messages to the master over the channel, and ends it on a timeout, on the master's
"kill" or when the master goes away. Standard library only.

Messages sent: ("started", pid), ("log", line), ("attach", name, b64, type),
("result", dict), ("error", traceback), ("timeout", seconds), ("lost", reason).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading


class LogRelay:
    """Collects log lines and sends them in batches (a task printing 50 MB must not become
    millions of channel messages)."""

    def __init__(self, channel, interval=0.1, limit=256 * 1024):
        self.channel = channel
        self.interval = interval
        self.limit = limit
        self.lines = []
        self.size = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def add(self, line):
        with self.lock:
            self.lines.append(line)
            self.size += len(line) + 1
            full = self.size >= self.limit
        if full:
            self.flush()

    def flush(self):
        with self.lock:
            lines, self.lines, self.size = self.lines, [], 0
            if lines:
                self.channel.send(("log", "\n".join(lines)))

    def loop(self):
        while not self.done.wait(self.interval):
            self.flush()

    def close(self):
        self.done.set()
        self.thread.join()
        self.flush()


def relay_output(process, logs):
    for raw in process.stdout:
        logs.add(raw.decode("utf-8", "replace").rstrip("\n"))


def relay_messages(pipe, channel, logs, outcome):
    for line in pipe:
        message = json.loads(line)
        if message[0] in ("result", "error"):
            outcome.append(tuple(message))
        elif message[0] == "log":
            logs.add(message[1])
        else:
            logs.flush()
            channel.send(tuple(message))


def listen(channel, process):
    """Wait for the master's kill, or for the master to go away (the channel closes)."""
    try:
        while True:
            if channel.receive() == "kill":
                break
    except Exception:
        pass
    if not process.ended.is_set():
        process.kill()


def close_inherited_fds(keep):
    """In a forked task: close every descriptor but `keep` (the gateway's own pipes among
    them), so the task holds nothing of the connection to the master."""
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        fds = range(3, 1024)
    for fd in fds:
        if fd > keep:
            try:
                os.close(fd)
            except OSError:
                pass


class TaskProcess:
    """The task's process: `pid`, its output (`stdout`, bytes) and its messages pipe (text).

    Forked from this gateway process where the host can fork, which costs about a millisecond
    instead of a new interpreter's tens; else started as a new interpreter.
    """

    def __init__(self, job, child_source):
        out_read, out_write = os.pipe()
        msg_read, msg_write = os.pipe()
        self.returncode = None
        self.ended = threading.Event()
        if hasattr(os, "fork"):
            self.pid = os.fork()
            if self.pid == 0:
                self._run_forked(job, child_source, out_write, msg_write)
            threading.Thread(target=self._reap, daemon=True).start()
        else:
            self.process = subprocess.Popen(
                [sys.executable, "-u", "-c", child_source],
                stdin=subprocess.PIPE, stdout=out_write, stderr=out_write,
                pass_fds=(msg_write,), start_new_session=True, cwd=job["workdir"],
            )
            self.pid = self.process.pid
            self.process.stdin.write((json.dumps(dict(job, message_fd=msg_write)) + "\n")
                                     .encode("utf-8"))
            self.process.stdin.close()
            threading.Thread(target=self._wait_spawned, daemon=True).start()
        os.close(out_write)
        os.close(msg_write)
        self.stdout = os.fdopen(out_read, "rb")
        self.messages = os.fdopen(msg_read, "r")

    @staticmethod
    def _run_forked(job, child_source, out_write, msg_write):
        """In the forked child: a session of its own, stdout/stderr to the log pipe, the
        messages pipe as fd 3, nothing else inherited; then the task. Never returns."""
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_write, 1)
            os.dup2(out_write, 2)
            os.dup2(msg_write, 3)
            close_inherited_fds(keep=3)
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", buffering=1, closefd=False, errors="replace")
            sys.stderr = open(2, "w", buffering=1, closefd=False, errors="replace")
            namespace = {"__name__": "dirt_task_process"}
            exec(compile(child_source, "remote_child.py", "exec"), namespace)
            namespace["run_job"](dict(job, message_fd=3))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)

    def _reap(self):
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        self.ended.set()

    def _wait_spawned(self):
        self.returncode = self.process.wait()
        self.ended.set()

    def wait(self, timeout=None):
        """True when the process ended within `timeout` seconds."""
        return self.ended.wait(timeout)

    def kill(self):
        """Kill the task and everything it started (its session)."""
        for kill_one in (os.killpg, os.kill):  # killpg fails until the child ran setsid()
            try:
                kill_one(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def run(channel, job):
    workdir = tempfile.mkdtemp(prefix="dirt-{}-".format(job["task"]))
    job = dict(job, workdir=workdir, parent=os.getpid())
    child_source = job.pop("child_source")
    process = TaskProcess(job, child_source)
    channel.send(("started", process.pid))
    outcome = []
    logs = LogRelay(channel)
    threads = [
        threading.Thread(target=relay_output, args=(process, logs), daemon=True),
        threading.Thread(target=relay_messages, args=(process.messages, channel, logs, outcome),
                         daemon=True),
    ]
    for thread in threads:
        thread.start()
    threading.Thread(target=listen, args=(channel, process), daemon=True).start()
    timed_out = not process.wait(timeout=job["timeout"])
    if timed_out:
        process.kill()
        process.wait()
    for thread in threads:
        thread.join(timeout=5)
    logs.close()
    shutil.rmtree(workdir, ignore_errors=True)
    if timed_out:
        channel.send(("timeout", job["timeout"]))
    elif outcome:
        channel.send(outcome[0])
    elif process.returncode < 0:
        name = signal.Signals(-process.returncode).name
        kind = "error" if name in ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE", "SIGILL") else "lost"
        channel.send((kind, f"task process killed by {name} without a result"))
    else:
        code = process.returncode
        channel.send(("error", f"task process exited with code {code} without a result"))


if __name__ == "__channelexec__":
    run(channel, channel.receive())  # noqa: F821 (execnet provides `channel`)
