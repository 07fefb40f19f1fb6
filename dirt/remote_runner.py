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


def relay_output(process, channel):
    for raw in process.stdout:
        channel.send(("log", raw.decode("utf-8", "replace").rstrip("\n")))


def relay_messages(pipe, channel, outcome):
    for line in pipe:
        message = json.loads(line)
        if message[0] in ("result", "error"):
            outcome.append(tuple(message))
        else:
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
    workdir = tempfile.mkdtemp(prefix="dirt-%s-" % job["task"])
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
    pipe = os.fdopen(read_end, "r")
    threads = [
        threading.Thread(target=relay_output, args=(process, channel), daemon=True),
        threading.Thread(target=relay_messages, args=(pipe, channel, outcome), daemon=True),
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
    shutil.rmtree(workdir, ignore_errors=True)
    if timed_out:
        channel.send(("timeout", job["timeout"]))
    elif outcome:
        channel.send(outcome[0])
    elif process.returncode < 0:
        name = signal.Signals(-process.returncode).name
        kind = "error" if name in ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE", "SIGILL") else "lost"
        channel.send((kind, "task process killed by %s without a result" % name))
    else:
        channel.send(("error", "task process exited with code %d without a result"
                      % process.returncode))


if __name__ == "__channelexec__":
    run(channel, channel.receive())  # noqa: F821 (execnet provides `channel`)
