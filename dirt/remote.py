"""execnet gateways to hosts: opening them from host documents, host facts, and running tasks.

A host is an execnet spec string (`popen//python=...` or `ssh=... user@host//python=python3`), so
local hosts in tests go through the same dispatch code as SSH hosts. One gateway per host,
opened once and reused; each running task is one channel on it.
"""

from __future__ import annotations

import logging
import queue
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import execnet

from dirt import remote_runner
from dirt.errors import HostUnreachable
from dirt.shapes import Host

log = logging.getLogger("dirt.remote")

CHILD_SOURCE = (Path(__file__).parent / "remote_child.py").read_text()
KEEPER_SOURCE = (Path(__file__).parent / "remote_keeper.py").read_text()
RUNNER_SOURCE = Path(remote_runner.__file__).read_text()

# The runner is installed once per gateway as a module; each task then costs a two-line
# remote_exec instead of compiling the runner again.
INSTALL_RUNNER = """
import sys, threading, types
source, child, keeper = channel.receive()
module = types.ModuleType("dirt_remote_runner")
module.CHILD_SOURCE = child
module.KEEPER_SOURCE = keeper
exec(compile(source, "dirt/remote_runner.py", "exec"), module.__dict__)
sys.modules["dirt_remote_runner"] = module
threading.Thread(target=module.prune_results, daemon=True).start()
channel.send("installed")
"""
RUN_TASK = "import sys\nsys.modules['dirt_remote_runner'].run(channel, channel.receive())\n"
COLLECT = ("import sys\n"
           "channel.send(sys.modules['dirt_remote_runner'].collect(channel.receive()))\n")

FACTS_SOURCE = """
import os, platform, socket, sys
def memory():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
channel.send({
    "os": platform.system().lower(),
    "arch": platform.machine(),
    "python": platform.python_version(),
    "cpus": os.cpu_count() or 1,
    "memory": memory(),
    "hostname": socket.gethostname(),
})
"""


def gateway_spec(host: Host, known_hosts: Path | None = None) -> str:
    """The execnet spec for a host (its document read by shapes.parse_host)."""
    name = host.name
    if host.local is not None:
        python = host.local.get("python")
        return f"popen//id={name}" + (f"//python={python}" if python else "")
    assert host.ssh is not None  # parse_host: a host is local or ssh
    ssh = host.ssh
    options = ["-o BatchMode=yes", "-o LogLevel=ERROR", "-o ConnectTimeout=10",
               "-o ServerAliveInterval=5",
               "-o ServerAliveCountMax=3", "-o StrictHostKeyChecking=accept-new"]
    if known_hosts:
        # ssh cannot keep the host keys it accepts in a folder that does not exist
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        options.append(f"-o UserKnownHostsFile={known_hosts}")
    if ssh.port:
        options.append(f"-p {ssh.port}")
    if ssh.key:
        options += [f"-i {ssh.key}", "-o IdentitiesOnly=yes"]
    python = ssh.python or "python3"
    return f"ssh={' '.join(options)} {ssh.destination}//id={name}//python={python}"


@dataclass
class Job:
    """What the master sends to run one task on a host."""

    task_id: str
    task: str
    platform: str
    source: str
    record: dict[str, Any]
    args: dict[str, Any]
    timeout: float | None
    attempt: int = 1
    reuse: int = 1  # runs one task process may serve (the module's REUSE_PROCESS)
    # documents.attempt_id: the host keeps the outcome by it (the master always names it)
    attempt_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # attempts whose results are in the database: the host may let their kept outcomes go
    forget: list[str] = field(default_factory=list)

    def to_message(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "task": self.task,
            "platform": self.platform,
            "source": self.source,
            "record": self.record,
            "args": self.args,
            "timeout": self.timeout,
            "attempt": self.attempt,
            "reuse": self.reuse,
            "attempt_id": self.attempt_id,
            "forget": self.forget,
        }


@dataclass
class Gateway:
    """One open execnet gateway to one host."""

    name: str
    spec: str
    group: execnet.Group = field(repr=False)
    gateway: Any = field(default=None, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    stopped: bool = False  # shut down for good: a gateway opened meanwhile is let go at once

    def open(self) -> None:
        """Open the gateway unless it is open; a dead one is let go first."""
        with self.lock:
            if self.gateway is not None:
                if self.gateway.hasreceiver():
                    return
                _discard(self.gateway, kill=True)
                self.gateway = None
            if self.stopped:
                raise HostUnreachable(f"host {self.name}: the master is stopping")
            try:
                self.gateway = self.group.makegateway(self.spec)
            except Exception as exc:  # execnet raises bare errors for every transport fault
                self.gateway = None
                _release_failed_io(exc)
                raise HostUnreachable(
                    f"host {self.name}: cannot open gateway: {describe(exc)}"
                ) from None
        if self.stopped:  # shut down while it was opening
            self.close()
            raise HostUnreachable(f"host {self.name}: the master is stopping")
        self.install_runner()

    def install_runner(self, timeout: float = 20.0) -> None:
        gateway = self.gateway
        try:
            channel = gateway.remote_exec(INSTALL_RUNNER)
            channel.send((RUNNER_SOURCE, CHILD_SOURCE, KEEPER_SOURCE))
            channel.receive(timeout=timeout)
        except Exception as exc:
            self.close()
            raise HostUnreachable(
                f"host {self.name}: cannot install dirt's runner: {describe(exc)}"
            ) from None

    def is_open(self) -> bool:
        gateway = self.gateway
        return gateway is not None and gateway.hasreceiver()

    def facts(self, timeout: float = 20.0) -> dict[str, Any]:
        """Ask the host what it is (OS, arch, Python, CPUs, memory, hostname)."""
        self.open()
        try:
            return self.gateway.remote_exec(FACTS_SOURCE).receive(timeout=timeout)
        except Exception as exc:
            self.close()
            raise HostUnreachable(f"host {self.name}: does not answer: {describe(exc)}") from None

    def start(self, job: Job, events: queue.Queue, key: Any) -> Any:
        """Start one task; its messages arrive on `events` as (key, message) until it ends.

        Never opens a gateway (that may take seconds: the health check does it in the
        background); a closed one raises HostUnreachable at once.
        """
        gateway = self.gateway
        if gateway is None or not gateway.hasreceiver():
            raise HostUnreachable(f"host {self.name}: its gateway is closed")
        try:
            channel = gateway.remote_exec(RUN_TASK)
            channel.setcallback(Relay(events, key), endmarker=Relay.CLOSED)
            channel.send(job.to_message())
        except Exception as exc:
            self.close()
            raise HostUnreachable(f"host {self.name}: cannot start task: {describe(exc)}") from None
        return channel

    def collect(self, attempt_id: str, timeout: float = 15.0) -> Any:
        """How an attempt (documents.attempt_id) ended on this host, if it ended here (see
        remote_runner), as the host answered: shapes.parse_ending reads it."""
        self.open()
        try:
            channel = self.gateway.remote_exec(COLLECT)
            channel.send(attempt_id)
            kept = channel.receive(timeout=timeout)
        except Exception as exc:
            raise HostUnreachable(f"host {self.name}: does not answer: {describe(exc)}") from None
        return tuple(kept) if isinstance(kept, list) else kept or None

    def shutdown(self) -> None:
        """Close for good: the master is exiting."""
        self.stopped = True
        self.close()

    def close(self) -> None:
        """Ask the gateway to exit (its running tasks end with it)."""
        with self.lock:
            gateway, self.gateway = self.gateway, None
        if gateway is not None:
            _discard(gateway, kill=False)

    def kill(self) -> None:
        """End the host's gateway process and everything it started (task processes watch it)."""
        with self.lock:
            gateway, self.gateway = self.gateway, None
        if gateway is not None:
            _discard(gateway, kill=True)


def _discard(gateway: Any, kill: bool) -> None:
    """Let a gateway go: unregister it from its group (so a new one may take its id), end its
    local process (python or ssh), and reap that process in the background."""
    try:
        gateway.exit()
    except Exception:  # the connection is already broken
        pass
    if kill:
        try:
            gateway._io.kill()
        except Exception:
            pass
    threading.Thread(target=_reap, args=(gateway,), daemon=True).start()


def _release_failed_io(exc: BaseException) -> None:
    """Close the pipes and reap the process (python or ssh) of a gateway that failed to start:
    execnet drops them with the exception, and they linger (a ResourceWarning) until the
    garbage collector finds the cycle."""
    tb = exc.__traceback__
    while tb is not None:
        popen = getattr(tb.tb_frame.f_locals.get("io"), "popen", None)
        if isinstance(popen, subprocess.Popen):
            for pipe in (popen.stdin, popen.stdout):
                if pipe is not None:
                    pipe.close()
            try:
                popen.wait(5)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            return
        tb = tb.tb_next


def _reap(gateway: Any, timeout: float = 5.0) -> None:
    """Wait for a closed gateway's local process (python or ssh), killing it if it lingers:
    execnet's Group.terminate() no longer waits for a gateway that exit() unregistered."""
    try:
        gateway.join(timeout)
    except Exception:
        pass
    popen = getattr(gateway._io, "popen", None)
    if popen is None:
        return
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()


class Relay:
    """Moves a task's messages from its channel to the master's event queue, in execnet's
    receiver thread (no thread per task). A channel that closes before the task said how it
    ended means the connection to the host was lost."""

    CLOSED = object()
    ENDINGS = ("result", "error", "timeout", "lost")

    def __init__(self, events: queue.Queue, key: Any) -> None:
        self.events = events
        self.key = key
        self.ended = False

    def __call__(self, message: Any) -> None:
        if message is Relay.CLOSED:
            if not self.ended:
                self.events.put((self.key, ("lost", "connection to the host closed while the "
                                                    "task ran")))
            return
        # the master reads every message (shapes.parse_message); here it is only passed on
        ending = isinstance(message, tuple | list) and bool(message) and message[0] in self.ENDINGS
        self.ended = self.ended or ending
        self.events.put((self.key, message))


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__
