"""The keeper of a task process on a host: whatever a task starts ends with it. Standard library
only.

On Linux the process forked from the gateway for a task (or for a kept worker) makes itself a
child subreaper (prctl PR_SET_CHILD_SUBREAPER) and forks the task process. Every process the
task starts then stays below the keeper, whatever it does: a process whose parent ends is
adopted by the keeper, not by init, also after a double fork into a session of its own. The
keeper reaps those as they end; it ends them all when the task process asks (`sweep`, at the
end of each run, before the master hears how the run ended) and when the task process ends;
and it ends the task process, then the rest, when the runner asks (SIGTERM: a timeout, the
master's kill) or when the gateway goes away. It ends as the task process ended (its exit code,
or killed by its signal), so the runner reads the keeper's exit as the task's.

Where a process cannot adopt its orphans (not Linux), `can_keep()` says so and there is no
keeper: remote_runner.py ends the task process's session instead.
"""

import os
import selectors
import signal
import socket
import sys
import time

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
PR_GET_CHILD_SUBREAPER = 37
POLL_SECONDS = 0.2  # how often the keeper looks whether its gateway is still there
SWEEP_SECONDS = 10.0  # a process that cannot die (stuck in the kernel) is left after this
HANDLED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)


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
    child subreaper, and each process's children listed in /proc.)"""
    if not sys.platform.startswith("linux"):
        return False
    listed = os.path.exists("/proc/{0}/task/{0}/children".format(os.getpid()))
    return listed and prctl(PR_GET_CHILD_SUBREAPER, None) is not None


def children(pid):
    """The pids of the children of `pid` (each of its threads has its own)."""
    found = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            continue
    return found


def alive(pid):
    """Is the process there, and not a zombie?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


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
    """Keeps one task process (see the module's docstring), in the process forked for it."""

    def __init__(self, parent):
        self.parent = parent  # the gateway: when it goes away, the task ends
        self.child = None
        self.status = None  # the task process's wait status, once it ended
        self.stopping = False

    def run(self, start_child):
        """Fork the task process, which runs `start_child(control)` (a socket to `sweep`
        on) and never returns, then keep it. Never returns: exits as the task process
        did."""
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        wake_read, wake_write = os.pipe()
        mine, theirs = socket.socketpair()
        selector = selectors.DefaultSelector()
        selector.register(wake_read, selectors.EVENT_READ)
        selector.register(mine, selectors.EVENT_READ)
        previous = {number: signal.getsignal(number) for number in HANDLED}
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.child = os.fork()
        if self.child == 0:
            signal.set_wakeup_fd(-1)
            for number, handler in previous.items():
                signal.signal(number, handler)
            start_child(theirs)  # closes what it does not need; never returns
            os._exit(1)
        keep_only(selector, wake_read, wake_write, mine)
        try:
            self.loop(selector, wake_read, mine)
            self.sweep()
        finally:
            self.exit()

    def stop(self, *_):
        """SIGTERM: the runner ends the task (its timeout, the master's kill)."""
        self.stopping = True

    def loop(self, selector, wake, control):
        """Until the task process ended: reap what ends, answer the task's sweeps, end it
        when asked to or when the gateway is gone."""
        while True:
            for key, _ in selector.select(POLL_SECONDS):
                if key.fileobj is control:
                    if not self.answer(control):
                        selector.unregister(control)
                    continue
                try:
                    os.read(wake, 512)
                except BlockingIOError:
                    pass
            self.reap()
            if self.status is not None:
                return
            if self.stopping or os.getppid() != self.parent:
                kill(self.child)

    def answer(self, control):
        """End everything below but the task process, then say so. False once the task
        process closed its end."""
        try:
            if not control.recv(64):
                return False
            self.sweep(spare=self.child)
            control.sendall(b"k")
        except OSError:
            return False
        return True

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

    def sweep(self, spare=None):
        """SIGKILL every process below the keeper but `spare`, until none is left: the
        child of a process that forks meanwhile is found in the next round, and the children
        of the killed come to the keeper, which reaps them."""
        give_up = time.monotonic() + SWEEP_SECONDS
        while True:
            left = below(os.getpid(), spare)
            for pid in left:
                kill(pid)
            self.reap()
            if not left or time.monotonic() > give_up:
                return
            time.sleep(0.002)

    def exit(self):
        """End as the task process ended: its exit code, or killed by its signal."""
        status = self.status
        if status is None:
            os._exit(1)
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


def keep_only(selector, *fds):
    """In the keeper: its standard streams to /dev/null and every other inherited descriptor
    closed (the task's pipes, the gateway's connection), so that only the task holds them."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    keep = {0, 1, 2, selector.fileno(), *[fd if isinstance(fd, int) else fd.fileno() for fd in fds]}
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def sweep(control):
    """In the task process, at the end of a run: ask its keeper to end everything the run
    started, and wait until it has."""
    try:
        control.setblocking(False)
        try:
            while control.recv(64):  # answers to sweeps the task's own code asked for
                pass
        except BlockingIOError:
            pass
        control.setblocking(True)
        control.sendall(b"s")
        control.recv(1)
    except OSError:
        pass  # the keeper is gone: nothing to ask
