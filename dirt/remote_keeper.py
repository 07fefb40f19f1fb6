"""The keeper of task processes on a host: whatever a task starts ends with it. Standard
library only.

On Linux a keeper is forked from the gateway; it makes itself a child subreaper (prctl
PR_SET_CHILD_SUBREAPER) and forks the task processes: one for each run it is given (`serve`,
the default), or one kept worker that serves the runs of a REUSE_PROCESS module (`keep`).
Every process a task starts then stays below the keeper, whatever it does: a process whose
parent ends is adopted by the keeper, not by init, also after a double fork into a session of
its own. The keeper reaps those as they end. At the end of each run, before the master hears
how it ended, the task process ends everything below its keeper but itself (`sweep`); the
keeper does the same when the task process ended (a crash, or threads of the task that were
still starting processes). It ends the task process, then the rest, and itself, when the
runner asks (SIGTERM: a timeout, the master's kill) or when the gateway goes away. It exits as
its last task process ended (its exit code, or killed by its signal), so the runner reads the
keeper's exit as the task's.

A keeper serves one run at a time, and many runs one after the other: a run costs one fork,
as it did without keepers, not two. It is a fork of the gateway, and every Python object a
fork touches costs it a copied page: the keeper waits with sigtimedwait, both read /proc with
plain os calls, and the task process sweeps by itself instead of asking the keeper.

Where a process cannot adopt its orphans (not Linux), `can_keep()` says so and there are no
keepers: remote_runner.py ends the task process's session instead.
"""

import fcntl
import os
import select
import signal
import socket
import sys
import time

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
PR_GET_CHILD_SUBREAPER = 37
POLL_SECONDS = 0.2  # how often the keeper looks whether its gateway is still there
SWEEP_SECONDS = 10.0  # a process that cannot die (stuck in the kernel) is left after this
# signals as plain numbers: the enum's members would be more objects touched in the keeper
STOP = (int(signal.SIGTERM), int(signal.SIGINT), int(signal.SIGHUP))  # end the task
WAITED = (int(signal.SIGCHLD), *STOP)  # blocked in the keeper, for sigtimedwait
MAX_FD = max(os.sysconf("SC_OPEN_MAX"), 65536) if hasattr(os, "sysconf") else 65536
LIBC = []  # the C library, once loaded (in the gateway: forks inherit it)


def prctl(option, value=0):
    """prctl(2) through ctypes: True if it worked (with value None: the value it read);
    None where there is no such call."""
    try:
        import ctypes

        if not LIBC:
            LIBC.append(ctypes.CDLL(None, use_errno=True))  # the C library Python runs on
        if value is None:
            answer = ctypes.c_int(0)
            worked = LIBC[0].prctl(option, ctypes.byref(answer), 0, 0, 0) == 0
            return answer.value if worked else None
        return LIBC[0].prctl(option, value, 0, 0, 0) == 0
    except (ImportError, OSError, AttributeError):
        return None


def can_keep():
    """Can a keeper adopt its task's orphans on this host, and find them? (Linux 3.5 on: a
    child subreaper, and each process's children listed in /proc.) Loads what the keepers
    need, once, in the gateway."""
    if not sys.platform.startswith("linux") or not hasattr(signal, "sigtimedwait"):
        return False
    listed = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return listed and prctl(PR_GET_CHILD_SUBREAPER, None) is not None


def read(path):
    """A small file of /proc, b"" when it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
    finally:
        os.close(fd)


def children(pid):
    """The pids of the children of `pid` (each of its threads has its own)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    return [int(p) for tid in threads for p in read(f"/proc/{pid}/task/{tid}/children").split()]


def alive(pid):
    """Is the process there, and not a zombie?"""
    stat = read(f"/proc/{pid}/stat")
    return bool(stat) and stat.rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")


def below(pid, spare=None):
    """Every live process below `pid`, but `spare` itself (its children count)."""
    found = []
    todo = children(pid)
    while todo:
        child = todo.pop()
        todo += children(child)
        if child != spare and alive(child):
            found.append(child)
    return found


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Keeper:
    """A keeper (see the module's docstring), in the process forked for it."""

    def __init__(self, parent):
        self.parent = parent  # the gateway: when it goes away, the tasks end
        self.child = None  # the task process now running
        self.status = None  # how the last one ended (a wait status)
        self.stopping = False

    def keep(self, start_child):
        """Fork one task process, which runs `start_child(keeper pid)` and never returns,
        and keep it until it ends. Never returns."""
        try:
            self.begin()
            self.fork(start_child, os.getpid())
            keep_only()
            self.watch()
        finally:
            self.exit()

    def serve(self, sock, receive, start_run, runs, idle):
        """Serve up to `runs` runs received on `sock` (`receive(sock)`: a job, its output
        and messages pipes, or None), each in a task process of its own, which runs
        `start_run(job, output, messages, keeper pid)` and never returns. Ends when the
        gateway lets it go or when idle for `idle` seconds. Never returns."""
        try:
            self.begin()
            (fd,) = keep_only(sock.detach())
            sock = socket.socket(fileno=fd)
            me = os.getpid()
            for _ in range(runs):
                received = self.next_run(sock, receive, idle)
                if received is None:
                    return
                job, output, messages = received
                self.fork(start_run, job, output, messages, me)
                os.close(output)
                os.close(messages)
                self.watch()
                if self.stopping:
                    return
        finally:
            self.exit()

    def begin(self):
        """Become a child subreaper, with the signals it waits for blocked."""
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)

    def fork(self, start, *args):
        """Fork a task process, which runs `start(*args)`."""
        self.status = None
        self.child = os.fork()
        if self.child == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WAITED)
            start(*args)  # never returns
            os._exit(1)

    def next_run(self, sock, receive, idle):
        """The next run from the gateway, or None: let go, idle too long, asked to stop (a
        late kill of the run before) or the gateway is gone."""
        give_up = time.monotonic() + idle
        while True:
            if signal.sigtimedwait(STOP, 0) is not None or os.getppid() != self.parent:
                self.stopping = True
                return None
            self.reap()
            if select.select([sock], [], [], POLL_SECONDS)[0]:
                return receive(sock)
            if time.monotonic() > give_up:
                return None

    def watch(self):
        """Until the task process ended: reap what ends, end it when asked to or when the
        gateway is gone. Then end all it left."""
        while self.status is None:
            got = signal.sigtimedwait(WAITED, POLL_SECONDS)
            if got is not None and got.si_signo in STOP:
                self.stopping = True
            self.reap()
            if self.status is None and (self.stopping or os.getppid() != self.parent):
                self.stopping = True
                kill(self.child)
        self.sweep()

    def reap(self):
        """Reap every child that ended: adopted leftovers, and the task process."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.status = status

    def sweep(self):
        """End every process below the keeper, reaping them."""
        end_all(os.getpid(), reap=self.reap)

    def exit(self):
        """End as the last task process ended: its exit code, or killed by its signal."""
        status = self.status
        if status is None:
            os._exit(0 if self.child is None else 1)
        if not os.WIFSIGNALED(status):
            os._exit(os.waitstatus_to_exitcode(status))
        number = os.WTERMSIG(status)
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the task dumped its own
            signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [number])
        except (ImportError, OSError, ValueError):
            pass  # SIGKILL cannot be caught or blocked anyway
        os.kill(os.getpid(), number)
        os._exit(128 + number)


def keep_only(*fds):
    """In the keeper: its standard streams to /dev/null and every inherited descriptor
    closed (the task's pipes, the gateway's connection) so that only the task holds them,
    but `fds`, which it returns as 3, 4..."""
    null = os.open(os.devnull, os.O_RDWR)
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]  # out of the way of 0..n
    for target in (0, 1, 2):
        os.dup2(null, target)
    for target, fd in enumerate(high, start=3):
        os.dup2(fd, target)
    os.closerange(3 + len(fds), MAX_FD)  # one close_range(2) on Linux 5.9 on
    return list(range(3, 3 + len(fds)))


def end_all(keeper, spare=None, reap=None):
    """SIGKILL every process below `keeper` but `spare`, until none is left: the child of a
    process that forks meanwhile is found in the next round, and the children of the killed
    come to the keeper, which reaps them (`reap`, in the keeper)."""
    give_up = time.monotonic() + SWEEP_SECONDS
    while True:
        left = below(keeper, spare)
        for pid in left:
            kill(pid)
        if reap is not None:
            reap()
        if not left or time.monotonic() > give_up:
            return
        time.sleep(0.001)


def sweep(keeper):
    """In a task process, at the end of a run: end everything its keeper (pid `keeper`) has
    below it but this process, then reap what were its own children."""
    if os.getppid() != keeper:
        return  # the keeper is gone: this process ends too (remote_child.watch_parent)
    end_all(keeper, spare=os.getpid())
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
