"""The gateway side of one task, on the host. Standard library only.

Installed once per gateway as the module `dirt_remote_runner` (remote.py sends this source and
remote_child.py's with it), then each task is `run(channel, job)` in execnet's execution
thread: it starts the task process (remote_child.py) in a session of its own, relays its output
and messages to the master over the channel from one select loop, and ends it on a timeout,
on the master's "kill", or when the master goes away (the channel closes).

Messages sent: ("started", pid), ("log", lines), ("attach", name, b64, type),
("result", dict), ("error", traceback), ("timeout", seconds), ("lost", reason).
"""

import hashlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

CHILD_SOURCE = globals().get("CHILD_SOURCE", "")  # set by the installer (remote.py)
CHILD = None  # remote_child.py's namespace, loaded once in the gateway: forks inherit it
KEEPER_SOURCE = globals().get("KEEPER_SOURCE", "")  # set by the installer too
KEEPER = None  # remote_keeper.py's namespace where this host can keep task processes, else False
FLUSH_SECONDS = 0.1  # how often log lines go to the master, batched
FLUSH_BYTES = 256 * 1024
LINE_BYTES = 64 * 1024  # a longer log line is cut into lines of this size (remote_child's too)
CUT_NOTE = " [dirt: line cut at 64 KiB, it goes on in the next]"  # remote_child's too
MESSAGE_BYTES = 32 * 1024 * 1024  # a longer message is dropped (artifacts: 16 MB in all)
AFTER_EXIT_SECONDS = 1.0  # a task's own background processes may hold its pipes: stop then
KEEP_RESULTS_SECONDS = 7 * 24 * 3600
RESULTS = os.path.join(tempfile.gettempdir(), "dirt-results-{}".format(
    os.getuid() if hasattr(os, "getuid") else "user"))


def result_name(attempt_id):
    return hashlib.sha256(attempt_id.encode("utf-8")).hexdigest() + ".json"


def day(ts=None):
    """The folder of the outcomes kept on one (UTC) day: a day's are let go at once."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def keep_result(job, message):
    """Keep how an attempt ended on the host, so that a master taking over from one that
    died after the task ended (before it wrote the result) records it instead of running the
    task again. Kept in a folder per day, for KEEP_RESULTS_SECONDS."""
    folder = os.path.join(RESULTS, day())
    path = os.path.join(folder, result_name(job["attempt_id"]))
    try:
        data = json.dumps(list(message)).encode("utf-8")
        try:
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except FileNotFoundError:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(path + ".tmp", path)
    except (OSError, TypeError, ValueError):
        pass  # the master is told anyway: only the take-over case needs the file


def collect(attempt_id):
    """How attempt `attempt_id` (documents.attempt_id) ended on this host, or None if it
    never ended here (or longer ago than KEEP_RESULTS_SECONDS)."""
    name = result_name(attempt_id)
    now = time.time()
    days = sorted({day(now - back * 86400) for back in range(KEEP_RESULTS_SECONDS // 86400 + 2)},
                  reverse=True)
    for path in [os.path.join(RESULTS, d, name) for d in days] + [os.path.join(RESULTS, name)]:
        try:
            with open(path) as kept:  # the last path: where earlier runners kept them
                return transportable(json.load(kept))
        except (OSError, ValueError):
            continue
    return None


def forget_results(attempt_ids):
    """Let go of kept outcomes whose results the master has written (told with a later
    task): a busy host keeps a few files, not one per task of the last week."""
    now = time.time()
    days = {day(now), day(now - 86400)}  # written seconds after they were kept
    for attempt_id in attempt_ids:
        name = result_name(attempt_id)
        for folder in days:
            try:
                os.remove(os.path.join(RESULTS, folder, name))
                break
            except OSError:
                continue


def prune_results():
    """Forget the days of kept outcomes older than KEEP_RESULTS_SECONDS. Started in a thread
    when the runner is installed: a busy host keeps an outcome per task, and a gateway's
    start must not wait for a walk over them."""
    try:
        names = os.listdir(RESULTS)
    except OSError:
        return
    oldest = day(time.time() - KEEP_RESULTS_SECONDS)
    for name in names:
        path = os.path.join(RESULTS, name)
        if len(name) == 10 and name[4] == "-" and name[7] == "-":  # a day's folder
            if name < oldest:
                shutil.rmtree(path, ignore_errors=True)
            continue
        try:  # an outcome kept flat, by an earlier runner
            if os.path.getmtime(path) < time.time() - KEEP_RESULTS_SECONDS:
                os.remove(path)
        except OSError:
            pass


def close_inherited_fds(keep):
    """In a forked task: close every descriptor above `keep` (the gateway's own pipes among
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


def load_child():
    """remote_child.py's namespace, loaded once in the gateway so that forks inherit it."""
    global CHILD
    if CHILD is None:  # two threads may both load it: either copy serves
        namespace = {"__name__": "dirt_task_process"}
        exec(compile(CHILD_SOURCE, "remote_child.py", "exec"), namespace)
        CHILD = namespace
    return CHILD


def keeper():
    """remote_keeper.py's namespace where this host can keep a task's processes (Linux),
    loaded once in the gateway; None where it cannot."""
    global KEEPER
    if KEEPER is None:
        namespace = {"__name__": "dirt_task_keeper"}
        exec(compile(KEEPER_SOURCE, "remote_keeper.py", "exec"), namespace)
        KEEPER = namespace if namespace["can_keep"]() else False
    return KEEPER or None


def kept(parent, start):
    """In a process just forked from the gateway: where the host can keep a task's
    processes, become the keeper (remote_keeper.py) of a new process that runs
    `start(keeper pid)`; else run `start(None)` in this one. Never returns."""
    keeping = keeper()
    if keeping is None:
        start(None)
    os.setsid()  # the keeper's own, away from the gateway's terminal
    keeping["Keeper"](parent).keep(start)


def end_process(pid, keeping):
    """End a task process and everything it started: through its keeper (SIGTERM), or
    SIGKILL its session where it has none."""
    if keeping:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    else:
        kill_session(pid)


def become_task_process(out_write, msg_write, keep=()):
    """In a forked child: a session of its own, stdin from /dev/null, stdout and stderr to
    the log pipe, the messages pipe as fd 3, the descriptors `keep` as fd 4, 5..., nothing
    else of the gateway's inherited."""
    import fcntl  # where a host can fork, it has fcntl

    os.setsid()
    sources = [out_write, msg_write, *keep]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in sources]  # out of the way of 0..n
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(high[0], 1)
    os.dup2(high[0], 2)
    for target, fd in enumerate(high[1:], start=3):
        os.dup2(fd, target)
    close_inherited_fds(keep=2 + len(high))
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="replace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="replace")


class TaskProcess:
    """The task's process where the host has no keepers (remote_keeper.py): `pid`, the read
    ends of its output and of its messages pipe.

    Forked from this gateway process where the host can fork (about a millisecond instead of a
    new interpreter's tens); else started as a new interpreter.
    """

    def __init__(self, job):
        out_read, out_write = os.pipe()
        msg_read, msg_write = os.pipe()
        self.returncode = None
        self.process = None
        if hasattr(os, "fork"):
            try:
                load_child()["compiled"](job)  # once here, not in every forked process
            except SyntaxError:
                pass  # the task process reports it, with the task's traceback
            self.pid = os.fork()
            if self.pid == 0:
                try:
                    run_task(job, out_write, msg_write, None)
                finally:
                    os._exit(1)
        else:
            self.process = subprocess.Popen(
                [sys.executable, "-u", "-c", CHILD_SOURCE],
                stdin=subprocess.PIPE, stdout=out_write, stderr=out_write,
                pass_fds=(msg_write,), start_new_session=True, cwd=job["workdir"],
            )
            self.pid = self.process.pid
            self.process.stdin.write((json.dumps(dict(job, message_fd=msg_write)) + "\n")
                                     .encode("utf-8"))
            self.process.stdin.close()
        os.close(out_write)
        os.close(msg_write)
        self.output = out_read
        self.messages = msg_read

    def poll(self):
        """The exit code (negative: the signal) once the process ended, else None."""
        if self.returncode is None:
            if self.process is not None:
                self.returncode = self.process.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self):
        if self.returncode is None:
            if self.process is not None:
                self.returncode = self.process.wait()
            else:
                self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def kill(self):
        """Kill the task and everything it started (its session)."""
        if self.returncode is None:
            kill_session(self.pid)

    def done(self, outcome):
        """After the run: nothing to keep (see WorkerRun.done)."""


def run_task(job, out_write, msg_write, keeper_pid):
    """In a task process forked from its keeper, or from the gateway where the host has
    none (`keeper_pid` None): set up, run the task, end what it started, exit. Never
    returns."""
    code = 1
    try:
        become_task_process(out_write, msg_write)
        CHILD["run_job"](dict(job, message_fd=3, parent=keeper_pid or job["parent"]))
        sys.stdout.flush()
        sys.stderr.flush()
        if keeper_pid is None:  # end what stayed in its session, and itself
            os.killpg(0, signal.SIGKILL)
        KEEPER["sweep"](keeper_pid)
        os.closerange(0, 4)  # the runner sees the run end now, not when the exit is done
        code = 0
    except BaseException:  # dirt's own fault before the task ran: into the task's log
        traceback.print_exc()
    finally:
        os._exit(code)


def kill_session(pid):
    """SIGKILL a task process and everything it started (its session)."""
    for kill_one in (os.killpg, os.kill):  # killpg fails until the child ran setsid()
        try:
            kill_one(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Worker:
    """A process that serves runs, forked once: it gets each run's job, and that run's output
    and messages pipes, over a unix socket. Either a task process kept for further runs of one
    task module (its REUSE_PROCESS), which runs them itself (remote_child.serve) under its
    keeper where the host has keepers; or (`fresh`) a keeper that runs each in a task process
    forked for it (remote_keeper.Keeper.serve). Ending a run closes the pipes; the process
    waits for the next. A run that is killed (timeout, fence) ends the worker with it."""

    IDLE_SECONDS = 60.0  # an idle worker is let go after this
    FRESH_RUNS = 1000  # then a keeper is let go: it caches the code of the modules it ran

    def __init__(self, key, runs, parent, fresh=False):
        load_child()
        mine, theirs = socket.socketpair()
        self.kept = keeper() is not None
        self.pid = os.fork()
        if self.pid == 0:
            try:
                mine.close()
                if fresh:
                    os.setsid()  # the keeper's own, away from the gateway's terminal
                    KEEPER["Keeper"](parent).serve(theirs, Worker._receive, run_task, runs,
                                                   idle=Worker.IDLE_SECONDS + 30)
                kept(parent, lambda keeper_pid: Worker._serve(theirs, keeper_pid or parent,
                                                               keeper_pid is not None, runs))
            finally:
                os._exit(1)
        theirs.close()
        self.lock = threading.Lock()
        self.key = key
        self.sock = mine
        self.runs_left = runs
        self.idle_since = None
        self.returncode = None

    @staticmethod
    def _serve(sock, parent, kept, runs):
        """In the worker process: serve runs until let go. Never returns. Under a keeper
        (`kept`: it is the `parent`), each run ends what it started."""
        code = 1
        try:
            null = os.open(os.devnull, os.O_WRONLY)  # between runs
            become_task_process(null, null, keep=(sock.fileno(),))  # as fd 4
            sock.detach()
            end_run = (lambda: KEEPER["sweep"](parent)) if kept else None
            CHILD["serve"](socket.socket(fileno=4), parent, runs,
                           idle=Worker.IDLE_SECONDS + 30,  # the runner lets go first
                           end_run=end_run)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    @staticmethod
    def _receive(sock):
        """In a keeper serving fresh task processes: the next run, its module compiled here
        so that the task processes forked for its later runs find it compiled."""
        received = CHILD["receive"](sock)
        if received is not None:
            try:
                CHILD["compiled"](received[0])
            except SyntaxError:
                pass  # the task process reports it, with the task's traceback
        return received

    def poll(self):
        return self.wait(os.WNOHANG)

    def wait(self, flags=0):
        """The exit code once the worker ended (else None with WNOHANG); threads may ask at
        once (the run's pump, the master's kill)."""
        with self.lock:
            if self.returncode is None:
                pid, status = os.waitpid(self.pid, flags)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def give(self, job, out_write, msg_write):
        """Send a run to the worker: the job and its two pipes. False if it is gone."""
        body = json.dumps(job).encode("utf-8")
        try:
            socket.send_fds(self.sock, [len(body).to_bytes(8, "big")], [out_write, msg_write])
            self.sock.sendall(body)
        except OSError:
            return False
        self.runs_left -= 1
        return True

    def retire(self):
        """Let the worker go: it exits when its socket closes; reaped later."""
        self.sock.close()
        with WORKERS_LOCK:
            RETIRED.append(self)


WORKERS = {}  # (task, source digest) or FRESH -> idle workers
FRESH = ("", "keepers")  # the pool of keepers that run each run in a fresh task process
RETIRED = []  # let go, not reaped yet
WORKERS_LOCK = threading.Lock()


def take_worker(job):
    """An idle worker for this task module (REUSE_PROCESS), or an idle keeper to run it in a
    task process of its own; or a new one."""
    fresh = job.get("reuse", 1) <= 1
    key = FRESH if fresh else (job["task"],
                               hashlib.sha256(job["source"].encode("utf-8")).hexdigest())
    now = time.monotonic()
    expired = []
    with WORKERS_LOCK:
        for pool_key, idle in list(WORKERS.items()):
            gone = [w for w in idle
                    if now - w.idle_since > Worker.IDLE_SECONDS or w.poll() is not None]
            expired += gone
            idle[:] = [w for w in idle if w not in gone]
            if not idle:
                del WORKERS[pool_key]
        RETIRED[:] = [w for w in RETIRED if w.poll() is None]
        idle = WORKERS.get(key)
        worker = idle.pop() if idle else None
    for w in expired:
        w.retire()
    if worker is None:
        runs = Worker.FRESH_RUNS if fresh else job["reuse"]
        worker = Worker(key, runs, job["parent"], fresh=fresh)
    return worker


def keep_worker(worker):
    worker.idle_since = time.monotonic()
    with WORKERS_LOCK:
        WORKERS.setdefault(worker.key, []).append(worker)


class WorkerRun:
    """One run of a task in a kept worker, with the interface of TaskProcess."""

    def __init__(self, worker, job):
        self.worker = worker
        self.pid = worker.pid
        self.killed = False
        self.ended = False  # the run is over: a late kill must not hit the worker's next run
        self.lock = threading.Lock()
        out_read, out_write = os.pipe()
        msg_read, msg_write = os.pipe()
        given = worker.give(dict(job, message_fd=3), out_write, msg_write)
        os.close(out_write)
        os.close(msg_write)
        self.output = out_read
        self.messages = msg_read
        if not given:
            self.kill()

    def poll(self):
        return self.worker.poll()

    def wait(self):
        """The worker's exit code if it ended with the run, else 0 (it waits for the next)."""
        code = self.worker.poll()
        return 0 if code is None else code

    def kill(self):
        with self.lock:
            if not self.ended:
                self.killed = True
                self._signal()

    def _signal(self):
        if self.worker.poll() is None:
            end_process(self.pid, self.worker.kept)

    def done(self, outcome):
        """The run's pipes closed: keep the worker for the next run, or let it go. A run that
        did not say how it ended took its worker with it (or the worker is lost): it is ended
        and reaped, so that wait() tells its exit code."""
        with self.lock:
            self.ended = True
            if outcome is None:
                self._signal()
        if self.killed or outcome is None or self.worker.poll() is not None:
            self.worker.wait()
            self.worker.sock.close()
        elif self.worker.runs_left > 0:
            keep_worker(self.worker)
        else:
            self.worker.retire()


def start_process(job):
    """The process for one run: where the host can fork and pass descriptors, a kept worker
    if the task module asks for reuse, else a process of its own forked by a keeper where
    the host has keepers; else a process of its own."""
    if hasattr(os, "fork") and hasattr(socket, "send_fds") and (
            job.get("reuse", 1) > 1 or keeper() is not None):
        return WorkerRun(take_worker(job), job)
    return TaskProcess(job)


class Killer:
    """The channel's callback: the master's "kill", or the channel closing because the master
    went away, ends the task."""

    CLOSED = object()

    def __init__(self, process):
        self.process = process

    def __call__(self, message):
        if message == "kill" or message is Killer.CLOSED:
            self.process.kill()


class Lines:
    """Splits what a pipe gives into lines, in time linear in its size, keeping at most
    `limit` bytes of an unfinished line: a longer line comes out in pieces of `limit` bytes
    (cut at a character's start), or with `drop`, not at all."""

    def __init__(self, limit, drop=False):
        self.limit = limit
        self.drop = drop
        self.pending = []  # the unfinished line's chunks: joined once, when it ends
        self.size = 0
        self.dropped = 0  # bytes of the line being dropped

    def feed(self, data):
        """The lines `data` ends, as (bytes, cut) pairs; a dropped line is (None, its
        size). Empty `data` is the end: an unfinished line comes out as it is."""
        out = []
        if not data:
            if self.pending or self.dropped:
                self.finish(out)
            return out
        parts = data.split(b"\n")
        for part in parts[:-1]:
            if self.pending or self.dropped or len(part) > self.limit:
                self.add(part, out)
                self.finish(out)
            else:
                out.append((part, False))
        self.add(parts[-1], out)
        return out

    def add(self, chunk, out):
        if not chunk:
            return
        if self.dropped:
            self.dropped += len(chunk)
            return
        self.pending.append(chunk)
        self.size += len(chunk)
        if self.size <= self.limit:
            return
        if self.drop:
            self.pending, self.size, self.dropped = [], 0, self.size
            return
        line = b"".join(self.pending)
        *cut, rest = pieces(line, self.limit)
        out += [(piece, True) for piece in cut]
        self.pending, self.size = [rest], len(rest)

    def finish(self, out):
        """The line ends (at a newline, or at the end of the pipe)."""
        if self.dropped:
            out.append((None, self.dropped))
        else:
            out.append((b"".join(self.pending), False))
        self.pending, self.size, self.dropped = [], 0, 0


def pieces(data, limit):
    """`data` in pieces of at most `limit` bytes, each cut where a UTF-8 character starts
    (so that both sides decode whole), unless it is not UTF-8."""
    out, start = [], 0
    while len(data) - start > limit:
        end = start + limit
        for back in range(end, end - 4, -1):
            if data[back] & 0xC0 != 0x80:  # not a continuation byte
                end = back
                break
        out.append(data[start:end])
        start = end
    out.append(data[start:])
    return out


class Relay:
    """The task's output and messages, read from its two pipes, sent on to the master."""

    def __init__(self, channel):
        self.channel = channel
        self.lines = []
        self.size = 0
        self.pipes = {"output": Lines(LINE_BYTES), "messages": Lines(MESSAGE_BYTES, drop=True)}
        self.outcome = None

    def feed(self, name, data):
        """Bytes from pipe `name` ("output" or "messages"); empty at its end."""
        for raw, cut in self.pipes[name].feed(data):
            if name == "output":
                self.log(raw.decode("utf-8", "replace"), cut)
            elif raw is None:
                self.log(f"[dirt: a message of {cut} bytes from the task dropped: the most is "
                         f"{MESSAGE_BYTES}]")
            else:
                try:
                    message = json.loads(raw)
                except ValueError:  # the task process died in the middle of a message
                    continue
                self.message(message)

    def message(self, message):
        """One message the task wrote (any JSON: the task may write anything on fd 3). Its
        outcome is kept, to be sent last (run()); everything else goes on to the master as it
        is, which checks every message and ends the task `error` on a malformed one."""
        if not isinstance(message, list):
            message = [message]
        kind = message[0] if message else None
        if kind in ("result", "error") and len(message) == 2:
            self.outcome = (kind, message[1])
        elif kind == "log" and len(message) == 2 and isinstance(message[1], str):
            self.log(message[1])
        else:
            self.flush()
            self.channel.send(transportable(tuple(message)))

    def log(self, line, cut=False):
        """A line of the log; one longer than LINE_BYTES and its note (a ctx.log: ctx.run
        cuts its lines itself) goes in pieces. `cut`: the line goes on in the next."""
        if len(line) > LINE_BYTES // 4:  # in UTF-8, it may be longer than LINE_BYTES
            data = line.encode("utf-8", "replace")
            if len(data) > LINE_BYTES + len(CUT_NOTE):
                *first, line = [raw.decode("utf-8", "replace") for raw in
                                pieces(data, LINE_BYTES)]
                for piece in first:
                    self.add(piece + CUT_NOTE)
        self.add(line + CUT_NOTE if cut else line)

    def add(self, line):
        self.lines.append(line)
        self.size += len(line) + 1
        if self.size >= FLUSH_BYTES:
            self.flush()

    def flush(self):
        if self.lines:
            self.channel.send(("log", "\n".join(self.lines)))
            self.lines, self.size = [], 0


def pump(process, relay, timeout):
    """Relay until the task's pipes close (or a second after it exited); end it at its
    timeout. Returns True when it timed out."""
    selector = selectors.DefaultSelector()
    selector.register(process.output, selectors.EVENT_READ, "output")
    selector.register(process.messages, selectors.EVENT_READ, "messages")
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    exited = None
    next_flush = time.monotonic() + FLUSH_SECONDS
    while selector.get_map():
        for key, _ in selector.select(FLUSH_SECONDS):
            data = os.read(key.fd, 65536)
            relay.feed(key.data, data)
            if not data:
                selector.unregister(key.fd)
        now = time.monotonic()
        if now >= next_flush:
            relay.flush()
            next_flush = now + FLUSH_SECONDS
        if deadline is not None and now > deadline and not timed_out:
            timed_out = True
            process.kill()
        if exited is None and process.poll() is not None:
            exited = now
        if exited is not None and now - exited > AFTER_EXIT_SECONDS:
            break
    for key in list(selector.get_map().values()):
        relay.feed(key.data, b"")
    selector.close()
    os.close(process.output)
    os.close(process.messages)
    relay.flush()
    return timed_out


def run(channel, job):
    workdir = tempfile.mkdtemp(prefix="dirt-{}-".format(job["task"]))
    job = dict(job, workdir=workdir, parent=os.getpid())
    process = start_process(job)
    killer = Killer(process)
    channel.setcallback(killer, endmarker=Killer.CLOSED)
    channel.send(("started", process.pid))
    relay = Relay(channel)
    timed_out = pump(process, relay, job["timeout"])
    process.done(relay.outcome)  # a kept worker goes back before the master hears of it
    told = relay.outcome is not None and not timed_out
    if told:  # the task said how it ended and its pipes closed: no need to wait for its exit
        finish(channel, job, relay.outcome)
    returncode = process.wait()
    remove_workdir(workdir)
    if not told:
        finish(channel, job, ending(timed_out, relay.outcome, returncode, job["timeout"]))
    forget_results(job.get("forget") or ())


def finish(channel, job, final):
    """The attempt's last message, kept on the host first (see keep_result)."""
    keep_result(job, final)
    channel.send(transportable(final))


def transportable(value):
    """`value` as execnet can send it: a string that is not UTF-8 (a file name's bytes read
    as lone surrogates) goes as its bytes, so nothing is lost or fails on the way; the master
    decides what such text becomes (shapes.plain, shapes.artifact_name)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape" if all(
                not 0xD800 <= ord(ch) < 0xDC80 and not 0xDD00 <= ord(ch) <= 0xDFFF
                for ch in value) else "surrogatepass")
    if isinstance(value, (list, tuple)):
        return type(value)(transportable(v) for v in value)
    if isinstance(value, dict):
        return {transportable(k): transportable(v) for k, v in value.items()}
    return value


def remove_workdir(workdir):
    try:
        os.rmdir(workdir)  # most tasks leave it empty: one call instead of a tree walk
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)


def ending(timed_out, outcome, returncode, timeout):
    """The attempt's last message: how it ended."""
    if timed_out:
        return ("timeout", timeout)
    if outcome:
        return outcome
    if returncode < 0:
        name = signal.Signals(-returncode).name
        kind = "error" if name in ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE", "SIGILL") else "lost"
        return (kind, f"task process killed by {name} without a result")
    return ("error", f"task process exited with code {returncode} without a result")
