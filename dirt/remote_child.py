"""The task process on a host: loads one task module from source and runs `execute(ctx)`.

Started by remote_runner.py in a session of its own, so that ending it ends everything it
started: forked from the gateway process where the host can fork (a millisecond), else as
`python -u -c <this source>` reading the job as one JSON line on stdin. Writes messages as JSON
lines on the pipe the job names; its stdout and stderr become the task's log. Standard library
only: nothing is installed on hosts.
"""

import base64
import codecs
import json
import linecache
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import types

MESSAGES = None
LINE_BYTES = 64 * 1024  # ctx.run reads a line in pieces of at most this (the runner's too)
CUT_NOTE = " [dirt: line cut at 64 KiB, it goes on in the next]"  # the runner's too


def send(kind, *payload):
    line = json.dumps([kind, *payload], default=repr) + "\n"
    MESSAGES.write(line)
    MESSAGES.flush()


class Context:
    """What a task module's execute(ctx) gets."""

    def __init__(self, job):
        self.record = job["record"]
        self.args = job["args"]
        self.task = job["task"]
        self.platform = job["platform"]
        self.workdir = job["workdir"]

    def log(self, line):
        """Add a line to the task's log (streamed to the master while the task runs)."""
        send("log", str(line))

    def attach(self, name, data, content_type="application/octet-stream"):
        """Store `data` (bytes or str) as an artifact of the task. Any file name works (str,
        bytes or a path, UTF-8 or not); the master stores it encoded where CouchDB could not
        take it as it is (a leading '_', bytes that are not UTF-8: see docs/tasks.md)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
            if content_type == "application/octet-stream":
                content_type = "text/plain"
        name = os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else str(name)
        send("attach", name, base64.b64encode(data).decode("ascii"), content_type)

    def run(self, command, shell=None, cwd=None, env=None):
        """Run a command, streaming its output into the log; returns its exit code."""
        shell = isinstance(command, str) if shell is None else shell
        process = subprocess.Popen(
            command,
            shell=shell,
            cwd=cwd or self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for raw in iter(lambda: process.stdout.readline(LINE_BYTES), b""):
            cut = len(raw) == LINE_BYTES and not raw.endswith(b"\n")  # the rest comes next
            text = decoder.decode(raw, final=not cut)  # a cut may split a character
            if cut:
                send("log", text + CUT_NOTE)
            else:
                send("log", text[:-1] if text.endswith("\n") else text)
        return process.wait()


def watch_parent(parent):
    """End this task (and all it started) when the runner that started it goes away."""
    while True:
        if os.getppid() != parent:
            os.killpg(0, signal.SIGKILL)
        time.sleep(0.2)


CODE = {}  # (task, source) -> compiled module code: filled in the gateway, forks inherit it


def compiled(job):
    """The task module's code, compiled once per source (a kept worker's later runs, and
    forks of a gateway that compiled it before forking, find it here)."""
    key = (job["task"], job["source"])
    code = CODE.get(key)
    if code is None:
        if len(CODE) >= 64:
            CODE.clear()
        code = CODE[key] = compile(job["source"], "tasks/{}.py".format(job["task"]), "exec")
    return code


def load(job):
    filename = "tasks/{}.py".format(job["task"])
    source = job["source"]
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType("dirt_task_" + job["task"])
    module.__file__ = filename
    sys.modules[module.__name__] = module
    exec(compiled(job), module.__dict__)
    return module


def run_job(job, watch=True):
    """Run the task module's execute(ctx) and send its result (or its traceback)."""
    global MESSAGES
    MESSAGES = os.fdopen(job["message_fd"], "w", buffering=1)
    if watch:
        threading.Thread(target=watch_parent, args=(job["parent"],), daemon=True).start()
    os.chdir(job["workdir"])
    try:
        module = load(job)
        result = module.execute(Context(job))
    except BaseException as exc:
        sys.stdout.flush()
        # the first frame is this function: the traceback starts at the task's code
        send("error", "".join(traceback.format_exception(exc, exc, exc.__traceback__.tb_next)))
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        json.dumps(result, allow_nan=False)  # NaN and infinity are not JSON
    except (TypeError, ValueError) as exc:
        send("error", f"task returned a result that is not JSON: {exc}")
        return
    send("result", result)


def serve(sock, parent, runs, idle, end_run=None):
    """A kept worker (remote_runner.Worker): up to `runs` runs, each received on `sock` with
    its output and messages pipes, which it closes when the run ends, after `end_run()` (which
    ends what the run started). Ends when idle for `idle` seconds."""
    threading.Thread(target=watch_parent, args=(parent,), daemon=True).start()
    sock.settimeout(idle)
    null = os.open(os.devnull, os.O_WRONLY)
    for _ in range(runs):
        received = receive(sock)
        if received is None:
            return  # the runner let this worker go
        job, output, messages = received
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.dup2(messages, 3)
        os.close(output)
        os.close(messages)
        try:
            run_job(job, watch=False)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            if end_run is not None:
                end_run()
            try:
                MESSAGES.close()  # fd 3: a second file object on it would close it later
            except OSError:
                pass
            for fd in (1, 2, 3):  # the runner sees the run's pipes close: the run ended
                os.dup2(null, fd)
            os.chdir("/")


def receive(sock):
    """One run from the runner: (job, output fd, messages fd), or None at the end."""
    try:
        head, fds, _, _ = socket.recv_fds(sock, 8, 2)
        while head and len(head) < 8:
            more = sock.recv(8 - len(head))
            head = head + more if more else b""
        if len(head) < 8 or len(fds) != 2:
            return None
        size = int.from_bytes(head, "big")
        body = bytearray()
        while len(body) < size:
            chunk = sock.recv(min(size - len(body), 1 << 20))
            if not chunk:
                return None
            body += chunk
    except OSError:
        return None
    return json.loads(body), fds[0], fds[1]


def main():
    """As a new interpreter (`python -u -c <this source>`): the job is one line on stdin."""
    run_job(json.loads(sys.stdin.readline()))


if __name__ == "__main__":
    main()
