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


def kill(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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


def listen(channel, process, ended):
    """Wait for the master's kill, or for the master to go away (the channel closes)."""
    try:
        while True:
            if channel.receive() == "kill":
                break
    except Exception:
        pass
    if not ended.is_set():
        kill(process)


def run(channel, job):
    workdir = tempfile.mkdtemp(prefix="dirt-{}-".format(job["task"]))
    read_end, write_end = os.pipe()
    job = dict(job, workdir=workdir, parent=os.getpid(), message_fd=write_end)
    child_source = job.pop("child_source")
    process = subprocess.Popen(
        [sys.executable, "-u", "-c", child_source],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=(write_end,),
        start_new_session=True,
        cwd=workdir,
    )
    os.close(write_end)
    channel.send(("started", process.pid))
    ended = threading.Event()
    outcome = []
    logs = LogRelay(channel)
    pipe = os.fdopen(read_end, "r")
    threads = [
        threading.Thread(target=relay_output, args=(process, logs), daemon=True),
        threading.Thread(target=relay_messages, args=(pipe, channel, logs, outcome), daemon=True),
    ]
    for thread in threads:
        thread.start()
    threading.Thread(target=listen, args=(channel, process, ended), daemon=True).start()
    process.stdin.write((json.dumps(job) + "\n").encode("utf-8"))
    process.stdin.close()
    timed_out = False
    try:
        process.wait(timeout=job["timeout"])
    except subprocess.TimeoutExpired:
        timed_out = True
        kill(process)
        process.wait()
    ended.set()
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
