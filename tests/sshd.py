"""A private OpenSSH server for the tests: its own host key, key-only login with a generated
client key, on a 127.x loopback address and a free port. Runs as root (see couchdb-notes.md).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"

CONFIG = """\
Port {port}
ListenAddress {address}
HostKey {folder}/host_ed25519_key
PidFile {folder}/sshd.pid
AuthorizedKeysFile {folder}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
"""


class SshdError(RuntimeError):
    """The test sshd could not start: the tests that need it fail."""


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


class Sshd:
    """One sshd process; `destination`, `port` and `key` are what `dirt hosts add` takes."""

    def __init__(self, folder: Path, address: str = "127.0.0.2", user: str = "root") -> None:
        self.folder = folder
        self.address = address
        self.user = user
        self.port = 0
        self.key = folder / "client_ed25519_key"
        self.process: subprocess.Popen | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.address}"

    def start(self, timeout: float = 15.0) -> None:
        if not os.access(SSHD, os.X_OK):
            raise SshdError(f"{SSHD} is not installed (apt-get install openssh-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation dir
        for key in (self.folder / "host_ed25519_key", self.key):
            if not key.exists():
                keygen(key)
        (self.folder / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        self.port = self.port or free_port(self.address)  # a restart keeps its port
        config = self.folder / "sshd_config"
        config.write_text(CONFIG.format(port=self.port, address=self.address, folder=self.folder))
        log = self.folder / "sshd.log"
        check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise SshdError(f"sshd refuses its config: {check.stderr.strip()}")
        self.process = subprocess.Popen(
            [SSHD, "-D", "-f", str(config), "-E", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip()[-500:] if log.exists() else ""
                self.stop()
                raise SshdError(f"sshd on {self.address}:{self.port} did not start: {tail}")
            time.sleep(0.05)

    def answers(self) -> bool:
        """Does the server send its SSH banner?"""
        try:
            with socket.create_connection((self.address, self.port), timeout=1) as sock:
                return sock.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def ssh(self, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
        """Run `command` through this server with the plain ssh client."""
        return subprocess.run(
            ["ssh", "-p", str(self.port), "-i", str(self.key), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "LogLevel=ERROR", self.destination, command],
            capture_output=True, text=True, timeout=timeout,
        )

    def kill_all(self) -> None:
        """The host dies: kill -9 the server and every process it started (the sessions,
        their shells, the execnet gateways and task processes under them)."""
        if self.process is None:
            return
        for pid in [*descendants(self.process.pid), self.process.pid]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dirt-tests",
                    "-f", str(path)], check=True, capture_output=True)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, deepest first, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []

    def walk(p: int) -> None:
        for child in children.get(p, []):
            walk(child)
            found.append(child)

    walk(pid)
    return found
